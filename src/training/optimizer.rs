//! kiln-nn's optimizers on the runtime's parameter shards: the driver's
//! parameter actors take an [`OptimizerFactory`], executor-hosted shards a
//! registered optimizer named [`NN_OPTIMIZER`].

use std::sync::Arc;

use kiln_nn::optim::{Optimizer, OptimizerConfig, OptimizerState};
use kiln_runtime::train::{OptimizerFactory, OptimizerSpec, ShardOptimizer, ShardPlacement};
use kiln_runtime::{BoxError, Registry};

use crate::jobs::{JobError, Result};

/// Name under which kiln-nn's optimizers are registered for
/// executor-hosted parameter shards.
pub const NN_OPTIMIZER: &str = "kiln.nn_optimizer";

/// One shard's kiln-nn optimizer.
struct NnShardOptimizer {
    optimizer: Box<dyn Optimizer<f32>>,
}

impl ShardOptimizer for NnShardOptimizer {
    fn step(
        &mut self,
        params: &mut [f32],
        grads: &[f32],
        lr: f64,
    ) -> std::result::Result<(), BoxError> {
        self.optimizer.set_learning_rate(lr);
        Ok(self.optimizer.step(params, grads)?)
    }

    fn step_chunked(
        &mut self,
        params: &mut [f32],
        fill: &mut dyn FnMut(usize, &mut [f32]),
        lr: f64,
    ) -> std::result::Result<(), BoxError> {
        self.optimizer.set_learning_rate(lr);
        Ok(self.optimizer.step_chunked(params, fill)?)
    }

    fn state(&self) -> std::result::Result<Vec<u8>, BoxError> {
        Ok(rmp_serde::to_vec(&self.optimizer.state())?)
    }

    fn load_state(&mut self, bytes: &[u8]) -> std::result::Result<(), BoxError> {
        let state: OptimizerState<f32> = rmp_serde::from_slice(bytes)?;
        Ok(self.optimizer.load_state(state)?)
    }
}

/// Builds one kiln-nn optimizer per parameter shard.
pub fn optimizer_factory(config: OptimizerConfig) -> OptimizerFactory {
    Arc::new(move |_range| {
        let optimizer = config.build::<f32>()?;
        Ok(Box::new(NnShardOptimizer { optimizer }) as Box<dyn ShardOptimizer>)
    })
}

/// Where the shards live: `replicas` copies of each on the executors,
/// stepped with `config`, or (0) the driver's parameter actors.
pub fn placement(config: &OptimizerConfig, replicas: usize) -> Result<ShardPlacement> {
    if replicas == 0 {
        return Ok(ShardPlacement::Driver);
    }
    Ok(ShardPlacement::Executors {
        replicas,
        optimizer: OptimizerSpec {
            name: NN_OPTIMIZER.into(),
            // Named fields: the config is an internally tagged enum.
            config: rmp_serde::to_vec_named(config)
                .map_err(|e| JobError::step("encoding the optimizer's settings", e))?,
        },
    })
}

/// Registers kiln-nn's optimizers for executor-hosted shards.
pub(crate) fn register(r: &mut Registry) {
    r.register_optimizer(NN_OPTIMIZER, |config: &OptimizerConfig, range| {
        optimizer_factory(config.clone())(range)
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_nn::optim::SgdConfig;

    #[test]
    fn zero_replicas_keeps_the_driver_actors() {
        let sgd = OptimizerConfig::Sgd(SgdConfig::default());
        assert_eq!(placement(&sgd, 0).unwrap(), ShardPlacement::Driver);
        assert!(matches!(
            placement(&sgd, 2).unwrap(),
            ShardPlacement::Executors { replicas: 2, .. }
        ));
    }
}

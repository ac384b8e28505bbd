//! `--shards-on` and `--shard-replicas`: where a cluster training run keeps
//! its parameter shards (shared by the digits and speech jobs).

use clap::Args;
use kiln_nn::optim::OptimizerConfig;
use kiln_runtime::TrainSpec;

use crate::cluster_train::executor_placement;

/// Where the parameter shards of a training run live.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardsOn {
    /// Hosted by the executors (BigDL's AllReduceParameter placement).
    Executors,
    /// Parameter actors in the driver's process.
    Driver,
}

/// The placement flags of a training command.
#[derive(Args, Debug, Clone)]
pub struct ShardArgs {
    /// Where the parameter shards live: on the executors (each shard on
    /// `--shard-replicas` of them; gradients and weights go executor to
    /// executor) or with the driver (every gradient passes through it).
    #[arg(long, value_enum, default_value_t = ShardsOn::Executors)]
    pub shards_on: ShardsOn,
    /// Copies of each shard with `--shards-on executors` (2 survives the
    /// loss of any one executor; 1 does not).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..))]
    pub shard_replicas: u64,
}

impl ShardArgs {
    /// Copies of each shard on the executors; 0 for driver-held shards
    /// (what a job records, see [`place_shards`]).
    pub fn replicas(&self) -> usize {
        match self.shards_on {
            ShardsOn::Executors => self.shard_replicas as usize,
            ShardsOn::Driver => 0,
        }
    }
}

/// Sets `spec`'s placement: `replicas` copies of each shard on the
/// executors, stepped with `optimizer`, or (0) the driver's actors.
pub fn place_shards(
    spec: &mut TrainSpec,
    replicas: usize,
    optimizer: &OptimizerConfig,
) -> anyhow::Result<()> {
    if replicas > 0 {
        spec.placement = executor_placement(optimizer, replicas)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_nn::optim::SgdConfig;
    use kiln_runtime::train::ShardPlacement;

    #[test]
    fn zero_replicas_keeps_the_driver_actors() {
        let sgd = OptimizerConfig::Sgd(SgdConfig::default());
        let mut spec = TrainSpec::new("t", &(), 4, 1, 1, 0.1).unwrap();
        place_shards(&mut spec, 0, &sgd).unwrap();
        assert_eq!(spec.placement, ShardPlacement::Driver);
        place_shards(&mut spec, 2, &sgd).unwrap();
        assert!(matches!(
            spec.placement,
            ShardPlacement::Executors { replicas: 2, .. }
        ));
        let a = ShardArgs {
            shards_on: ShardsOn::Driver,
            shard_replicas: 3,
        };
        assert_eq!(a.replicas(), 0);
    }
}

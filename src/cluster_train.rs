//! The bridge between kiln-nn and the runtime's distributed training: a
//! [`GradientWorker`] for nn classifiers (flat weights in, summed gradients
//! out) and a [`ShardOptimizer`] over kiln-nn's elementwise optimizers.

use std::sync::Arc;

use kiln_nn::criterion::{ClassNll, Criterion, Reduction};
use kiln_nn::layers::LayerConfig;
use kiln_nn::optim::{Optimizer, OptimizerConfig, OptimizerState};
use kiln_nn::{Module, ModuleExt, Tensor};
use kiln_runtime::train::{
    BatchStats, GradientWorker, OptimizerFactory, OptimizerSpec, ShardOptimizer, ShardPlacement,
};
use kiln_runtime::Registry;
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

/// Name of the nn classifier trainer in the registry.
pub const CLASSIFIER_TRAINER: &str = "kiln.nn_classifier";

/// A labelled sample as datasets hold it: flat features and a class.
pub type Sample = (Vec<f32>, u32);

/// What an executor needs to build the classifier worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClassifierConfig {
    /// The network (ends in log-probabilities, e.g. `LogSoftMax`).
    pub model: LayerConfig,
    /// Shape of one sample's features (e.g. `[1, 8, 8]`).
    pub sample_shape: Vec<usize>,
}

/// A classifier trained with class NLL on log-probabilities.
pub struct ClassifierWorker {
    model: Box<dyn Module<f32>>,
    sample_shape: Vec<usize>,
    params: usize,
}

impl ClassifierWorker {
    /// Builds the network (its initial weights are replaced every task).
    pub fn new(config: &ClassifierConfig) -> Result<Self, String> {
        let model = config
            .model
            .build::<f32>(&mut StdRng::seed_from_u64(0))
            .map_err(|e| e.to_string())?;
        let params = model.num_params();
        Ok(ClassifierWorker {
            model,
            sample_shape: config.sample_shape.clone(),
            params,
        })
    }

    fn batch(&self, samples: &[&Sample]) -> Result<(Tensor<f32>, Tensor<f32>), String> {
        let per: usize = self.sample_shape.iter().product();
        let mut x = Vec::with_capacity(per * samples.len());
        for (i, (features, _)) in samples.iter().enumerate() {
            if features.len() != per {
                return Err(format!(
                    "sample {i} has {} features, the model takes {:?} = {per}",
                    features.len(),
                    self.sample_shape
                ));
            }
            x.extend_from_slice(features);
        }
        let mut shape = vec![samples.len()];
        shape.extend_from_slice(&self.sample_shape);
        let x = Tensor::from_shape_vec(ndarray::IxDyn(&shape), x).map_err(|e| e.to_string())?;
        let y = Tensor::from_shape_vec(
            ndarray::IxDyn(&[samples.len()]),
            samples.iter().map(|(_, c)| *c as f32).collect(),
        )
        .map_err(|e| e.to_string())?;
        Ok((x, y))
    }

    fn forward(
        &mut self,
        params: &[f32],
        samples: &[&Sample],
    ) -> Result<InputTargetOutput, String> {
        self.model
            .set_flat_params(params)
            .map_err(|e| e.to_string())?;
        let (x, y) = self.batch(samples)?;
        let out = self.model.forward(&x).map_err(|e| e.to_string())?;
        Ok((x, y, out))
    }
}

/// A batch's input, its targets and the model output for it.
type InputTargetOutput = (Tensor<f32>, Tensor<f32>, Tensor<f32>);

fn correct(out: &Tensor<f32>, y: &Tensor<f32>) -> u64 {
    kiln_nn::metrics::top_k_correct(out, y, 1).unwrap_or(0) as u64
}

impl GradientWorker<Sample> for ClassifierWorker {
    fn num_params(&self) -> usize {
        self.params
    }

    fn gradients(
        &mut self,
        params: &[f32],
        samples: &[&Sample],
        _seed: u64,
        grads: &mut [f32],
    ) -> Result<BatchStats, String> {
        self.model.train_mode();
        self.model.zero_grad();
        let (x, y, out) = self.forward(params, samples)?;
        let mut nll = ClassNll::<f32>::new().with_reduction(Reduction::Sum);
        let loss = nll.forward(&out, &y).map_err(|e| e.to_string())?;
        let g = nll.backward(&out, &y).map_err(|e| e.to_string())?;
        self.model
            .backward_params(&x, &g)
            .map_err(|e| e.to_string())?;
        let flat = self.model.flat_grads();
        grads.copy_from_slice(&flat);
        Ok(BatchStats {
            loss_sum: loss as f64,
            samples: samples.len() as u64,
            correct: correct(&out, &y),
        })
    }

    fn evaluate(&mut self, params: &[f32], samples: &[&Sample]) -> Result<BatchStats, String> {
        self.model.eval_mode();
        let mut stats = BatchStats::default();
        for chunk in samples.chunks(512) {
            let (_, y, out) = self.forward(params, chunk)?;
            let mut nll = ClassNll::<f32>::new().with_reduction(Reduction::Sum);
            let loss = nll.forward(&out, &y).map_err(|e| e.to_string())?;
            stats.add(&BatchStats {
                loss_sum: loss as f64,
                samples: chunk.len() as u64,
                correct: correct(&out, &y),
            });
        }
        Ok(stats)
    }

    fn num_buffers(&self) -> usize {
        self.model.num_buffers()
    }

    fn buffers(&self) -> Vec<f32> {
        self.model.flat_buffers()
    }

    fn set_buffers(&mut self, buffers: &[f32]) -> Result<(), String> {
        self.model
            .set_flat_buffers(buffers)
            .map_err(|e| e.to_string())
    }
}

/// One shard's kiln-nn optimizer.
struct NnShardOptimizer {
    optimizer: Box<dyn Optimizer<f32>>,
}

impl ShardOptimizer for NnShardOptimizer {
    fn step(&mut self, params: &mut [f32], grads: &[f32], lr: f64) -> Result<(), String> {
        self.optimizer.set_learning_rate(lr);
        self.optimizer
            .step(params, grads)
            .map_err(|e| e.to_string())
    }

    fn step_chunked(
        &mut self,
        params: &mut [f32],
        fill: &mut dyn FnMut(usize, &mut [f32]),
        lr: f64,
    ) -> Result<(), String> {
        self.optimizer.set_learning_rate(lr);
        self.optimizer
            .step_chunked(params, fill)
            .map_err(|e| e.to_string())
    }

    fn state(&self) -> Result<Vec<u8>, String> {
        rmp_serde::to_vec(&self.optimizer.state()).map_err(|e| e.to_string())
    }

    fn load_state(&mut self, bytes: &[u8]) -> Result<(), String> {
        let state: OptimizerState<f32> =
            rmp_serde::from_slice(bytes).map_err(|e| format!("optimizer state: {e}"))?;
        self.optimizer.load_state(state).map_err(|e| e.to_string())
    }
}

/// Builds one kiln-nn optimizer per parameter shard.
pub fn optimizer_factory(config: OptimizerConfig) -> OptimizerFactory {
    Arc::new(move |_range| {
        let optimizer = config.build::<f32>().map_err(|e| e.to_string())?;
        Ok(Box::new(NnShardOptimizer { optimizer }) as Box<dyn ShardOptimizer>)
    })
}

/// Name under which kiln-nn's optimizers are registered for
/// executor-hosted parameter shards.
pub const NN_OPTIMIZER: &str = "kiln.nn_optimizer";

/// Parameter shards hosted by the executors (`replicas` copies of each),
/// stepped with kiln-nn's optimizer `config`.
pub fn executor_placement(
    config: &OptimizerConfig,
    replicas: usize,
) -> anyhow::Result<ShardPlacement> {
    Ok(ShardPlacement::Executors {
        replicas,
        optimizer: OptimizerSpec {
            name: NN_OPTIMIZER.into(),
            // Named fields: the config is an internally tagged enum.
            config: rmp_serde::to_vec_named(config)?,
        },
    })
}

/// Name of the parameter-synchronisation benchmark's trainer.
pub const SYNC_BENCH_TRAINER: &str = "kiln.bench_sync";

/// A model-less worker for measuring parameter synchronisation: `params`
/// weights, a constant gradient, no compute.
pub struct SyncBenchWorker {
    params: usize,
}

impl GradientWorker<u64> for SyncBenchWorker {
    fn num_params(&self) -> usize {
        self.params
    }

    fn gradients(
        &mut self,
        _params: &[f32],
        samples: &[&u64],
        _seed: u64,
        grads: &mut [f32],
    ) -> Result<BatchStats, String> {
        grads.iter_mut().for_each(|g| *g = 1e-3);
        Ok(BatchStats {
            loss_sum: 0.0,
            samples: samples.len() as u64,
            correct: 0,
        })
    }

    fn evaluate(&mut self, _params: &[f32], samples: &[&u64]) -> Result<BatchStats, String> {
        Ok(BatchStats {
            samples: samples.len() as u64,
            ..BatchStats::default()
        })
    }
}

/// Registers the nn trainers (every process of a cluster calls this).
pub fn register(r: &mut Registry) {
    r.register_trainer(CLASSIFIER_TRAINER, ClassifierWorker::new)
        .register_trainer(SYNC_BENCH_TRAINER, |params: &usize| {
            Ok(SyncBenchWorker { params: *params })
        })
        .register_optimizer(NN_OPTIMIZER, |config: &OptimizerConfig, range| {
            optimizer_factory(config.clone())(range)
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_nn::layers::LinearConfig;

    #[test]
    fn summed_gradients_match_the_single_process_mean_times_n() {
        let config = ClassifierConfig {
            model: LayerConfig::Sequential {
                layers: vec![
                    LayerConfig::Linear(LinearConfig::new(3, 4)),
                    LayerConfig::LogSoftMax { dim: 1 },
                ],
            },
            sample_shape: vec![3],
        };
        let mut w = ClassifierWorker::new(&config).unwrap();
        let params: Vec<f32> = (0..w.num_params())
            .map(|i| (i as f32 * 0.37).sin())
            .collect();
        let samples: Vec<Sample> = (0..5)
            .map(|i| (vec![i as f32, 1.0 - i as f32, 0.5], (i % 4) as u32))
            .collect();
        let refs: Vec<&Sample> = samples.iter().collect();
        let mut all = vec![0.0; w.num_params()];
        let s = w.gradients(&params, &refs, 0, &mut all).unwrap();
        assert_eq!(s.samples, 5);
        let mut a = vec![0.0; w.num_params()];
        let mut b = vec![0.0; w.num_params()];
        w.gradients(&params, &refs[..2], 0, &mut a).unwrap();
        w.gradients(&params, &refs[2..], 0, &mut b).unwrap();
        for i in 0..all.len() {
            assert!((all[i] - (a[i] + b[i])).abs() < 1e-5, "{i}");
        }
        let bad = [(vec![1.0], 0u32)];
        let bad_refs: Vec<&Sample> = bad.iter().collect();
        let err = w.gradients(&params, &bad_refs, 0, &mut all).unwrap_err();
        assert!(err.contains("1 features"), "{err}");
    }
}

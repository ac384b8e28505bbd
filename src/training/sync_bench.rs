//! A model-less trainer for measuring parameter synchronisation alone:
//! `params` weights, a constant gradient, no compute.

use kiln_runtime::train::{BatchStats, GradientWorker};
use kiln_runtime::{BoxError, Registry};

/// Name of the parameter-synchronisation benchmark's trainer.
pub const SYNC_BENCH_TRAINER: &str = "kiln.bench_sync";

/// See the module docs.
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
    ) -> Result<BatchStats, BoxError> {
        grads.iter_mut().for_each(|g| *g = 1e-3);
        Ok(BatchStats {
            loss_sum: 0.0,
            samples: samples.len() as u64,
            correct: 0,
        })
    }

    fn evaluate(&mut self, _params: &[f32], samples: &[&u64]) -> Result<BatchStats, BoxError> {
        Ok(BatchStats {
            samples: samples.len() as u64,
            ..BatchStats::default()
        })
    }
}

/// Registers the benchmark's trainer (its configuration: the weight count).
pub(crate) fn register(r: &mut Registry) {
    r.register_trainer(SYNC_BENCH_TRAINER, |params: &usize| {
        Ok(SyncBenchWorker { params: *params })
    });
}

//! Training on the cluster, for every kind: a kind says what it trains
//! ([`TrainingJob`]: its data, model and objective, optimizer and
//! learning-rate schedule, what it evaluates after each epoch and how it
//! writes its model file); [`Training`] turns it into a [`Job`] that runs
//! the one generic loop ([`run_training`]: epochs, evaluation, checkpoint
//! triggers, resume, progress and the `EPOCH`/`CHECKPOINT`/`RESUMED`
//! lines).

mod gradient_worker;
mod optimizer;
pub mod resume;
mod run;
mod settings;
pub mod summaries;
mod sync_bench;

use std::future::Future;
use std::path::Path;

use kiln_nn::optim::schedule::{Counter, LrSchedule};
use kiln_nn::optim::OptimizerConfig;
use kiln_runtime::train::{BatchStats, SortedEpochs};
use kiln_runtime::{Data, Dataset, DistributedTrainer, JobContext, Registry};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::jobs::{Job, JobEnv, Result};

pub use gradient_worker::{register_objective, ObjectiveWorker};
pub use optimizer::{optimizer_factory, placement, NN_OPTIMIZER};
pub use resume::{META_KIND, META_SETTINGS, RESUME_KIND};
pub use run::{run_training, TrainingReport};
pub use settings::{
    fixed_settings, CheckpointSettings, RunSettings, TrainingSettings, KEEP_CHECKPOINTS,
    MAX_KEEP_CHECKPOINTS, MAX_SHARDS, MAX_SHARD_REPLICAS, SHARD_REPLICAS,
};
pub use sync_bench::{SyncBenchWorker, SYNC_BENCH_TRAINER};

/// A learning rate: a base rate and one of kiln-nn's schedules, evaluated
/// at the iteration or the epoch as the schedule counts.
#[derive(Debug, Clone, PartialEq)]
pub struct LearningRate {
    /// The base rate.
    pub base: f64,
    /// How it changes.
    pub schedule: LrSchedule,
}

impl LearningRate {
    /// A constant rate.
    pub fn constant(base: f64) -> Self {
        LearningRate {
            base,
            schedule: LrSchedule::Constant,
        }
    }

    /// The rate of the update after `iteration` updates in `epoch`
    /// completed epochs.
    pub fn at(&self, iteration: u64, epoch: u64) -> f64 {
        let t = match self.schedule.counter() {
            Counter::Iteration => iteration,
            Counter::Epoch => epoch,
        };
        self.schedule.lr_at(self.base, t)
    }
}

/// What a kind hands the loop: everything it trains with.
pub struct TrainingPlan<S, E> {
    /// The training set (one partition per task).
    pub data: Dataset<S>,
    /// The configuration of the kind's trainer (rmp-serde, as
    /// `kiln_runtime::transport::encode` makes it).
    pub worker_config: Vec<u8>,
    /// Initial weights.
    pub params: Vec<f32>,
    /// Initial non-learnable state (batch-norm statistics), if any.
    pub buffers: Vec<f32>,
    /// The optimizer of every parameter shard.
    pub optimizer: OptimizerConfig,
    /// The learning rate.
    pub learning_rate: LearningRate,
    /// Epochs to train (in all, counting those a resumed run did before).
    pub epochs: u64,
    /// Global batch size.
    pub batch_size: usize,
    /// Seed of the data order and of per-share randomness.
    pub seed: u64,
    /// Sorted first epochs (SortaGrad), with one key per training sample.
    pub sorted_epochs: Option<SortedEpochs>,
    /// What the kind keeps on the driver for its evaluations.
    pub eval: E,
}

/// A named value reported after an epoch (`name=value` on the `EPOCH` line).
pub type Metric = (String, f64);

/// One training kind (digits, Deep Speech 2, SSD, or a user's own).
pub trait TrainingJob: Send + Sync + 'static {
    /// The kind's own settings (unknown fields refused).
    type Settings: Serialize + DeserializeOwned + Clone + Send + Sync + 'static;
    /// One element of its training set.
    type Sample: Data;
    /// What it keeps on the driver for its evaluations.
    type Eval: Send + 'static;

    /// The kind's name.
    fn kind(&self) -> &'static str;

    /// The name of its trainer in the registry (see [`register_objective`]).
    fn trainer(&self) -> &'static str;

    /// Fields of its settings a resumed run may change (its length and
    /// learning-rate plan, typically); every other field must match the
    /// checkpoint's.
    fn free_on_resume(&self) -> &'static [&'static str];

    /// Parameter shards unless the run says otherwise.
    fn default_shards(&self) -> usize;

    /// Whether the model file is rewritten after every epoch (else only at
    /// the end).
    fn save_each_epoch(&self) -> bool {
        true
    }

    /// Registers its data sources and trainer.
    fn register(&self, registry: &mut Registry);

    /// Checks its settings on the driver's host; returns a description.
    fn validate(&self, settings: &mut Self::Settings, env: &JobEnv) -> Result<String>;

    /// Builds the datasets, the initial model and what the loop needs.
    fn plan(
        &self,
        settings: &Self::Settings,
        run: &RunSettings,
        partitions: u32,
        ctx: &JobContext,
    ) -> impl Future<Output = Result<TrainingPlan<Self::Sample, Self::Eval>>> + Send;

    /// The metrics after an epoch whose training statistics were `epoch`.
    fn evaluate(
        &self,
        settings: &Self::Settings,
        eval: &mut Self::Eval,
        epoch: &BatchStats,
        trainer: &mut DistributedTrainer<Self::Sample>,
    ) -> impl Future<Output = Result<Vec<Metric>>> + Send;

    /// The closing lines of a finished run (before its trainer stops).
    fn finish(
        &self,
        settings: &Self::Settings,
        eval: &mut Self::Eval,
        report: &TrainingReport,
        trainer: &mut DistributedTrainer<Self::Sample>,
    ) -> impl Future<Output = Result<Vec<String>>> + Send;

    /// Writes the model file of weights `params` and buffers `buffers`.
    fn save_model(
        &self,
        settings: &Self::Settings,
        params: &[f32],
        buffers: &[f32],
        path: &Path,
    ) -> Result<()>;
}

/// A [`TrainingJob`] as a [`Job`]: its settings are
/// [`TrainingSettings`], its run is [`run_training`].
pub struct Training<K>(pub K);

impl<K: TrainingJob> Job for Training<K> {
    type Settings = TrainingSettings<K::Settings>;

    fn kind(&self) -> &'static str {
        self.0.kind()
    }

    fn register(&self, registry: &mut Registry) {
        self.0.register(registry)
    }

    fn validate(&self, settings: &mut Self::Settings, env: &JobEnv) -> Result<String> {
        settings.run.validate(self.0.kind(), env)?;
        let description = self.0.validate(&mut settings.job, env)?;
        Ok(match &settings.run.checkpoint.dir {
            Some(dir) if settings.run.checkpoint.resume => {
                format!("{description}, resuming from {}", dir.display())
            }
            Some(dir) => format!("{description}, checkpoints in {}", dir.display()),
            None => description,
        })
    }

    async fn run(&self, settings: Self::Settings, ctx: JobContext) -> Result<()> {
        run_training(&self.0, &settings, &ctx).await.map(|_| ())
    }

    fn export(
        &self,
        settings: &Self::Settings,
        params: &[f32],
        buffers: &[f32],
        out: &Path,
    ) -> Result<()> {
        self.0.save_model(&settings.job, params, buffers, out)
    }
}

/// Registers the training layer's own functions: kiln-nn's optimizers for
/// executor-hosted shards and the parameter-sync benchmark's trainer.
pub fn register(r: &mut Registry) {
    optimizer::register(r);
    sync_bench::register(r);
}

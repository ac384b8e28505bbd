//! [`DistributedTrainer`]: synchronous (BSP) data-parallel training on the
//! cluster. Each iteration the global batch is split by partition, every
//! executor holding a share computes summed gradients with the current
//! weights, the gradients are reduced into the parameter actors in
//! partition order (so the result does not depend on how many executors
//! there are), each owner applies its optimizer, and the gathered weights
//! go out with the next iteration's tasks. A lost executor's share is
//! recomputed elsewhere by the scheduler (from the cached partition's
//! lineage); the parameter shards live with the driver's actors and are
//! not lost with it.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use tracing::{info, warn};

use crate::checkpoint::{
    write_blob, CheckpointRecord, CheckpointStore, Recovery, Skipped, StoreOwner,
};
use crate::dataset::Dataset;
use crate::error::{Error, Result};
use crate::monitor::{CheckpointCommitted, Event};
use crate::protocol::{Action, TaskOutput};
use crate::registry::{check_type, Data};
use crate::train::batches::{epoch_order, Layout, SortedEpochs};
use crate::train::checkpointing::{
    meta_u64, training_meta, CheckpointPolicy, Position, META_BATCH, META_BATCH_SIZE, META_PARAMS,
    META_SEED, META_SHARDS,
};
use crate::train::executor_shards::{ExecutorShards, PendingStep};
use crate::train::hosted::OptimizerSpec;
use crate::train::iteration_timing::IterationTiming;
use crate::train::shard::{OptimizerFactory, ParameterShards};
use crate::train::worker::{bytes_to_f32, f32_to_bytes, BatchStats, TrainRequest};
use crate::transport::encode;

/// The learning rate at `(iteration, epoch)` (0-based, before the update).
pub type LearningRate = Arc<dyn Fn(u64, u64) -> f64 + Send + Sync>;

/// What to train and how.
#[derive(Clone)]
pub struct TrainSpec {
    /// Trainer registered with [`crate::Registry::register_trainer`].
    pub trainer: String,
    /// The trainer's configuration, rmp-serde encoded.
    pub worker_config: Vec<u8>,
    /// Global batch size (any value works on any cluster shape).
    pub batch_size: usize,
    /// Epochs to train.
    pub epochs: u64,
    /// Seed of the data order and of per-share randomness.
    pub seed: u64,
    /// Number of parameter actors (shards).
    pub shards: usize,
    /// Learning-rate schedule.
    pub learning_rate: LearningRate,
    /// Checkpoints, if any.
    pub checkpoint: Option<CheckpointPolicy>,
    /// Extra entries stored in every checkpoint (the `kiln` binary's jobs
    /// record their kind and settings there, under `job.kind` and
    /// `job.settings`).
    pub job_meta: BTreeMap<String, String>,
    /// Settings a resumed run must share with the checkpoint it resumes
    /// from (e.g. the model preset): stored in every checkpoint like
    /// `job_meta`, and [`DistributedTrainer::resume`] refuses a checkpoint
    /// whose value differs with [`Error::Incompatible`] naming the key (a
    /// key the checkpoint does not record, because an older version wrote
    /// it, is logged and not compared). Leave out what may change between
    /// the runs (the number of epochs, the learning-rate plan).
    pub fixed_meta: BTreeMap<String, String>,
    /// `None`: synchronous (BSP), every update sees every gradient of the
    /// previous one. `Some(s)`: asynchronous, a batch's gradients may be
    /// computed on weights up to `s` updates old (faster when executors
    /// are uneven; not bit-reproducible).
    pub staleness: Option<u32>,
    /// The model's initial non-learnable state (batch-norm running
    /// statistics, see [`crate::train::GradientWorker::buffers`]); empty for
    /// models without any.
    pub init_buffers: Vec<f32>,
    /// Where the parameter shards live.
    pub placement: ShardPlacement,
    /// Sorted first epochs (SortaGrad), if any: its keys must number the
    /// training set's samples.
    pub sorted_epochs: Option<SortedEpochs>,
}

/// Where the parameter shards (weights and optimizer state) live.
#[derive(Debug, Clone, PartialEq)]
pub enum ShardPlacement {
    /// Parameter actors in the driver's process: every gradient and every
    /// weight copy passes through the driver.
    Driver,
    /// Hosted by the executors (BigDL's AllReduceParameter): gradient
    /// slices go executor to executor to each shard's holders, which apply
    /// the optimizer and serve the new weights to the other executors;
    /// the driver only orchestrates. Each shard is kept on `replicas`
    /// executors (when there are that many), so losing one loses no
    /// state. Synchronous training only.
    Executors {
        /// Copies of each shard (2 survives the loss of any one executor).
        replicas: usize,
        /// The optimizer, registered with
        /// [`crate::Registry::register_optimizer`] (the optimizer factory
        /// given to [`DistributedTrainer::start`] is not used).
        optimizer: OptimizerSpec,
    },
}

impl TrainSpec {
    /// A spec with a constant learning rate, 4 shards and no checkpoints.
    pub fn new<C: Serialize>(
        trainer: &str,
        config: &C,
        batch_size: usize,
        epochs: u64,
        seed: u64,
        learning_rate: f64,
    ) -> Result<Self> {
        Ok(TrainSpec {
            trainer: trainer.into(),
            worker_config: encode(config)?,
            batch_size,
            epochs,
            seed,
            shards: 4,
            learning_rate: Arc::new(move |_, _| learning_rate),
            checkpoint: None,
            job_meta: BTreeMap::new(),
            fixed_meta: BTreeMap::new(),
            staleness: None,
            init_buffers: Vec::new(),
            placement: ShardPlacement::Driver,
            sorted_epochs: None,
        })
    }
}

/// One finished iteration.
#[derive(Debug, Clone)]
pub struct IterationReport {
    /// Where the run stands after it.
    pub position: Position,
    /// Loss and counts of its batch.
    pub stats: BatchStats,
    /// The learning rate applied.
    pub learning_rate: f64,
    /// Wall time of the iteration, in seconds.
    pub seconds: f64,
    /// Whether it ended an epoch.
    pub epoch_ended: bool,
    /// The checkpoint written after it, if any.
    pub checkpoint: Option<u64>,
    /// Of `seconds`, the time spent writing that checkpoint (0 without
    /// one): what checkpointing costs the run.
    pub checkpoint_seconds: f64,
    /// How often it was redone after a failure (executor-hosted shards;
    /// with driver-held shards the scheduler retries single tasks instead).
    pub redone: u32,
}

/// Where a resumed run continues from.
#[derive(Debug, Clone)]
pub struct ResumeInfo {
    /// The checkpoint used.
    pub id: u64,
    /// Its position.
    pub position: Position,
    /// Newer checkpoints that failed verification, and why.
    pub skipped: Vec<Skipped>,
}

/// A training run on the cluster (see the module docs).
pub struct DistributedTrainer<T> {
    data: Dataset<T>,
    spec: TrainSpec,
    layout: Layout,
    order: Option<(u64, Vec<u64>)>,
    shards: Shards,
    /// The weights: with driver-held shards always current; with
    /// executor-hosted shards as of the last gather (`params_stale`).
    params: Vec<f32>,
    params_stale: bool,
    /// The model's buffers: the sample-weighted mean of the shares' copies
    /// after the last applied iteration.
    buffers: Vec<f32>,
    /// Updates applied so far in this process (staleness = difference).
    version: u64,
    /// Applied iterations.
    pos: Position,
    /// The next batch to launch (ahead of `pos` in asynchronous mode).
    launched: Position,
    in_flight: VecDeque<InFlight>,
    store: Option<Arc<CheckpointStore>>,
    last_checkpoint: Instant,
    /// Executor-hosted shards held by every executor: the last iteration's
    /// step, applied by the next iteration's training tasks (or by
    /// [`DistributedTrainer::apply_pending`] before anything reads the
    /// shards).
    pending: Option<Pending>,
    /// Where the current iteration's time goes.
    timing: IterationTiming,
}

/// An iteration whose gradients are computed and whose step is not yet
/// applied, with what redoing it takes (its gradients die with an
/// executor that is lost before the step).
struct Pending {
    step: PendingStep,
    batch: Vec<u64>,
    iteration: u64,
}

/// The parameter shards of a run, wherever they live.
enum Shards {
    Driver(ParameterShards),
    Executors(ExecutorShards),
}

impl Shards {
    fn count(&self) -> usize {
        match self {
            Shards::Driver(s) => s.shards(),
            Shards::Executors(s) => s.shards(),
        }
    }
}

/// How often an iteration over executor-hosted shards is redone after a
/// failure (a lost executor) before the error is returned.
const MAX_ITERATION_REDOS: u32 = 5;

/// How often an iteration that failed with `e` is redone: a partition
/// between live executors is retried once (a blip heals), not waited out.
fn redo_limit(e: &Error) -> u32 {
    match e {
        Error::PeersUnreachable { .. } => 1,
        // The same batch gives the same loss again.
        Error::NonFiniteLoss { .. } => 0,
        _ => MAX_ITERATION_REDOS,
    }
}

/// Refuses an iteration whose loss is not finite (`iteration` counts from
/// 0 here, from 1 in the error).
fn check_loss(iteration: u64, stats: &BatchStats) -> Result<()> {
    if stats.loss_sum.is_finite() {
        Ok(())
    } else {
        Err(Error::NonFiniteLoss {
            iteration: iteration + 1,
            loss: stats.loss_sum,
            samples: stats.samples,
        })
    }
}

/// After a failed hosted iteration: drops the holders the driver knows are
/// gone; if none is (the loss not declared yet), waits a little longer on
/// every redo before the next try.
async fn settle_after_failure<T: Data>(
    shards: &mut Shards,
    data: &Dataset<T>,
    redo: u32,
) -> Result<()> {
    if let Shards::Executors(s) = shards {
        if s.drop_lost(data).await? == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(250 * redo as u64)).await;
            s.drop_lost(data).await?;
        }
    }
    Ok(())
}

/// A batch whose gradients are being computed.
struct InFlight {
    iteration: u64,
    epoch: u64,
    version: u64,
    job: tokio::task::JoinHandle<Result<Vec<TaskOutput>>>,
}

impl<T: Data> DistributedTrainer<T> {
    /// Caches `data` on the executors, counts its partitions and spawns the
    /// parameter actors holding `init` (the flattened initial weights).
    pub async fn start(
        data: &Dataset<T>,
        spec: TrainSpec,
        init: Vec<f32>,
        optimizer: OptimizerFactory,
    ) -> Result<Self> {
        let entry = data.registry_ref().trainer(&spec.trainer)?;
        check_type(&spec.trainer, entry.elem, std::any::type_name::<T>())?;
        if spec.batch_size == 0 {
            return Err(Error::SettingOutOfRange {
                setting: "batch_size".into(),
                value: "0".into(),
                range: "it must be at least 1".into(),
            });
        }
        let data = data.cache();
        let layout = Layout::new(&data.partition_counts().await?);
        if layout.total() == 0 {
            return Err(Error::EmptyDataset {
                purpose: "training",
            });
        }
        if let Some(sorted) = &spec.sorted_epochs {
            if sorted.keys.len() as u64 != layout.total() {
                return Err(Error::SortKeys {
                    expected: layout.total(),
                    found: sorted.keys.len(),
                });
            }
        }
        let shards = match &spec.placement {
            ShardPlacement::Driver => {
                Shards::Driver(ParameterShards::spawn(&init, spec.shards, &optimizer).await?)
            }
            ShardPlacement::Executors {
                replicas,
                optimizer,
            } => {
                if spec.staleness.is_some() {
                    return Err(Error::Unsupported {
                        op: "asynchronous training (staleness) with executor-hosted shards".into(),
                        needs: "driver-held shards",
                    });
                }
                let o = optimizer.clone();
                Shards::Executors(
                    ExecutorShards::start(&data, &init, spec.shards, *replicas, o).await?,
                )
            }
        };
        let store = match &spec.checkpoint {
            Some(p) => Some(Arc::new(CheckpointStore::claim(
                &p.dir,
                &p.claim,
                p.keep_last,
            )?)),
            None => None,
        };
        info!(
            samples = layout.total(),
            partitions = data.partitions(),
            params = init.len(),
            shards = shards.count(),
            "distributed training ready"
        );
        let buffers = spec.init_buffers.clone();
        Ok(DistributedTrainer {
            data,
            spec,
            layout,
            order: None,
            shards,
            params: init,
            params_stale: false,
            buffers,
            version: 0,
            pos: Position::default(),
            launched: Position::default(),
            in_flight: VecDeque::new(),
            store,
            last_checkpoint: Instant::now(),
            timing: IterationTiming::default(),
            pending: None,
        })
    }

    /// Continues from the newest checkpoint that verifies, if the store has
    /// one; corrupt newer ones are skipped and reported.
    pub async fn resume(&mut self) -> Result<Option<ResumeInfo>> {
        let Some(store) = &self.store else {
            return Err(Error::NoCheckpointStore { op: "resume" });
        };
        if store.ids()?.is_empty() {
            return Ok(None);
        }
        let (record, skipped) = store.latest_valid()?;
        self.check_compatible(&record)?;
        // The shards are replaced by the checkpoint's: a step computed for
        // the old ones no longer applies.
        if let Some(p) = self.pending.take() {
            self.data.free_blocks(vec![p.step.gradients]);
        }
        let read = |name: &str| -> Result<Vec<u8>> { Ok(store.read(&record, name)?) };
        let params = match &mut self.shards {
            Shards::Driver(s) => s.restore(read).await?,
            Shards::Executors(s) => s.restore(&self.data, read).await?,
        };
        self.params = params;
        self.params_stale = false;
        if record.blobs.iter().any(|b| b.name == BUFFERS_BLOB) {
            let bytes = store.read(&record, BUFFERS_BLOB)?;
            let buffers = bytes_to_f32(&bytes, "checkpointed buffers")?;
            if !self.buffers.is_empty() && buffers.len() != self.buffers.len() {
                return Err(Error::Incompatible {
                    checkpoint: record.id,
                    setting: "the model's buffer values (their count)".into(),
                    in_checkpoint: buffers.len().to_string(),
                    in_run: self.buffers.len().to_string(),
                });
            }
            self.buffers = buffers;
        }
        self.pos = Position {
            iteration: record.iteration,
            epoch: record.epoch,
            batch: meta_u64(&record, META_BATCH)?,
        };
        self.order = None;
        self.abandon_in_flight();
        for s in &skipped {
            warn!(id = s.id, reason = %s.reason, "skipped a corrupt checkpoint");
        }
        info!(
            id = record.id,
            iteration = self.pos.iteration,
            epoch = self.pos.epoch,
            "resumed"
        );
        Ok(Some(ResumeInfo {
            id: record.id,
            position: self.pos,
            skipped,
        }))
    }

    fn check_compatible(&self, record: &CheckpointRecord) -> Result<()> {
        check_compatible(
            record,
            &self.spec.fixed_meta,
            &RunShape {
                seed: self.spec.seed,
                batch_size: self.spec.batch_size,
                shards: self.shards.count(),
                params: self.params.len(),
            },
        )
    }

    /// What was rebuilt when the checkpoint store's manifest was found
    /// corrupt at the start, if it was.
    pub fn store_recovery(&self) -> Option<&Recovery> {
        self.store.as_ref().and_then(|s| s.recovery())
    }

    /// The run the checkpoint store belongs to, if there is a store.
    pub fn store_owner(&self) -> Option<&StoreOwner> {
        self.store.as_ref().and_then(|s| s.owner())
    }

    /// Where the run stands.
    pub fn position(&self) -> Position {
        self.pos
    }

    /// The weights: current with driver-held shards; with
    /// executor-hosted shards as of the last
    /// [`DistributedTrainer::current_params`] (or the start, or a resume).
    pub fn params(&self) -> &[f32] {
        &self.params
    }

    /// The current weights, gathered from the executors first when they
    /// host the shards.
    pub async fn current_params(&mut self) -> Result<&[f32]> {
        self.apply_pending().await?;
        if let (Shards::Executors(s), true) = (&self.shards, self.params_stale) {
            self.params = s.gather(&self.data).await?;
            self.params_stale = false;
        }
        Ok(&self.params)
    }

    /// The current non-learnable state (empty for models without any).
    pub fn buffers(&self) -> &[f32] {
        &self.buffers
    }

    /// Batches per epoch.
    pub fn batches_per_epoch(&self) -> u64 {
        self.layout.total().div_ceil(self.spec.batch_size as u64)
    }

    /// Samples in the training set.
    pub fn samples(&self) -> u64 {
        self.layout.total()
    }

    /// True once every epoch is done.
    pub fn is_done(&self) -> bool {
        self.pos.epoch >= self.spec.epochs
    }

    fn train_request(
        &self,
        indices: Vec<u32>,
        seed: u64,
        evaluate: bool,
        (params, buffers): (&[u8], &[u8]),
    ) -> TrainRequest {
        TrainRequest {
            trainer: self.spec.trainer.clone(),
            config: self.spec.worker_config.clone(),
            params: params.to_vec(),
            indices,
            seed,
            evaluate,
            buffers: buffers.to_vec(),
            weights_from: None,
            gradients_to: None,
            step_first: None,
        }
    }

    /// Starts the computation of the next batch not yet launched, with the
    /// current weights.
    fn launch(&mut self) {
        let epoch = self.launched.epoch;
        let batch = self.next_batch();
        let weights = f32_to_bytes(&self.params);
        let buffers = f32_to_bytes(&self.buffers);
        let iteration = self.launched.iteration;
        let actions: Vec<(u32, Action)> = self
            .layout
            .split(&batch)
            .into_iter()
            .map(|(p, idx)| {
                let seed = share_seed(self.spec.seed, iteration, p);
                let req = self.train_request(idx, seed, false, (&weights, &buffers));
                (p, Action::Train(req))
            })
            .collect();
        let data = self.data.clone();
        let job = tokio::spawn(async move { data.run_partitions(actions).await });
        self.in_flight.push_back(InFlight {
            iteration,
            epoch,
            version: self.version,
            job,
        });
        self.launched.iteration += 1;
        self.launched.batch += 1;
        if self.launched.batch >= self.batches_per_epoch() {
            self.launched.epoch += 1;
            self.launched.batch = 0;
        }
    }

    /// Runs one iteration (and a checkpoint if one is due). Synchronous by
    /// default; with a staleness bound `s`, up to `s` later batches are
    /// already computing (on older weights) while this one is applied.
    pub async fn step(&mut self) -> Result<IterationReport> {
        if self.is_done() {
            return Err(Error::TrainingComplete {
                epochs: self.spec.epochs,
            });
        }
        let started = Instant::now();
        self.timing.reset();
        // Executor-hosted shards run their iterations one at a time, each
        // launched by `step_hosted`: nothing may be launched ahead here (a
        // batch launched with the driver's weights ran beside the first
        // hosted iteration, its result never used).
        if matches!(self.shards, Shards::Executors(_)) {
            return self.step_hosted(started).await;
        }
        let ahead = self.spec.staleness.unwrap_or(0) as usize;
        while self.in_flight.len() <= ahead && self.launched.epoch < self.spec.epochs {
            self.launch();
        }
        let Some(flight) = self.in_flight.pop_front() else {
            return Err(Error::TrainingComplete {
                epochs: self.spec.epochs,
            });
        };
        let (iteration, epoch) = (flight.iteration, flight.epoch);
        let staleness = self.version - flight.version;
        let outs = flight.job.await.map_err(|e| Error::BackgroundTask {
            task: format!("iteration {iteration}'s training tasks"),
            source: e,
        })?;
        let outs = match outs {
            Ok(o) => o,
            Err(e) => {
                self.abandon_in_flight();
                return Err(e);
            }
        };
        let mut stats = BatchStats::default();
        let mut buffers = BufferMean::default();
        let syncing = Instant::now();
        for out in outs {
            let grads = match out {
                TaskOutput::Train {
                    grads,
                    stats: s,
                    buffers: b,
                    timing,
                    ..
                } => {
                    self.timing.task(&timing);
                    stats.add(&s);
                    buffers
                        .add(&b, s.samples)
                        .and_then(|()| bytes_to_f32(&grads, "gradients"))
                }
                _ => Err(Error::UnexpectedTaskOutput {
                    task: format!("iteration {iteration}, a training task"),
                    expected: "gradients",
                }),
            };
            match grads {
                Ok(g) => self.driver_shards()?.accumulate(Arc::new(g))?,
                Err(e) => {
                    self.driver_shards()?.discard()?;
                    self.abandon_in_flight();
                    return Err(e);
                }
            }
        }
        if let Err(e) = check_loss(iteration, &stats) {
            self.driver_shards()?.discard()?;
            self.abandon_in_flight();
            return Err(e);
        }
        let lr = (self.spec.learning_rate)(iteration, epoch);
        let scale = 1.0 / stats.samples.max(1) as f32;
        tracing::debug!(iteration, staleness, "applying the iteration");
        self.params = self.driver_shards()?.step(scale, lr).await?;
        self.timing.driver_sync(syncing.elapsed());
        if let Some(index) = self.params.iter().position(|w| !w.is_finite()) {
            self.abandon_in_flight();
            return Err(Error::NonFiniteWeights {
                iteration: iteration + 1,
                index,
                value: self.params[index],
            });
        }
        if let Some(b) = buffers.mean() {
            self.buffers = b;
        }
        self.version += 1;
        self.finish_iteration(iteration, lr, stats, started).await
    }

    fn driver_shards(&self) -> Result<&ParameterShards> {
        match &self.shards {
            Shards::Driver(s) => Ok(s),
            Shards::Executors(_) => Err(Error::Unsupported {
                op: "a step of the driver's parameter actors".into(),
                needs: "driver-held shards (this run's are hosted by the executors)",
            }),
        }
    }

    /// One synchronous iteration with executor-hosted shards: the tasks
    /// fetch the weights from the holders and leave their gradients in
    /// their executors' stores; the holders fetch and apply them. When
    /// every executor holds every shard, the step is left pending and the
    /// next iteration's training tasks apply it before computing (one task
    /// round per iteration instead of two). A failure (a lost executor)
    /// drops the lost holders and redoes the iteration, two rounds and
    /// the pending step first (the shards that had already stepped only
    /// republish).
    async fn step_hosted(&mut self, started: Instant) -> Result<IterationReport> {
        let (iteration, epoch) = (self.pos.iteration, self.pos.epoch);
        self.launched = self.pos;
        let batch = self.next_batch();
        let lr = (self.spec.learning_rate)(iteration, epoch);
        let publish = self.data.fresh_id();
        let mut redo = 0;
        let (stats, buffers) = loop {
            match self
                .try_hosted_iteration(&batch, iteration, lr, publish, redo == 0)
                .await
            {
                Ok(r) => break r,
                Err(e) if redo < redo_limit(&e) => {
                    redo += 1;
                    warn!(iteration, redo, error = %e, "iteration failed; redoing it");
                    if let Err(lost) =
                        settle_after_failure(&mut self.shards, &self.data, redo).await
                    {
                        self.data.free_blocks(vec![publish]);
                        return Err(lost);
                    }
                }
                Err(e) => {
                    self.data.free_blocks(vec![publish]);
                    return Err(e);
                }
            }
        };
        if let Some(b) = buffers {
            self.buffers = b;
        }
        self.params_stale = true;
        self.version += 1;
        self.replenish().await;
        let mut report = self.finish_iteration(iteration, lr, stats, started).await?;
        report.redone = redo;
        Ok(report)
    }

    /// Copies shards short of replicas to other executors, after applying
    /// a pending step (copies are taken at the current version). Anything
    /// that fails is retried after the next iteration (a step that could
    /// not be applied stays pending, and the next iteration applies it
    /// first).
    async fn replenish(&mut self) {
        let members = match self.data.members().await {
            Ok(m) => m,
            Err(e) => {
                warn!(error = %e, "could not list the executors; replicating the shards later");
                return;
            }
        };
        let Shards::Executors(s) = &mut self.shards else {
            return;
        };
        // Gradient slices may be left on executors that joined since.
        s.set_members(&members);
        if !s.short_of_replicas(members.len()) {
            return;
        }
        if let Err(e) = self.apply_pending().await {
            warn!(error = %e, "could not apply the pending step; replicating the shards later");
            return;
        }
        if let Shards::Executors(s) = &mut self.shards {
            if let Err(e) = s.replenish(&self.data).await {
                warn!(error = %e, "could not replicate the parameter shards; retrying next iteration");
            }
        }
    }

    /// One attempt at an executor-hosted iteration: in one task round
    /// (applying the pending step) when `fused` is allowed and every
    /// member holds every shard, else in two.
    async fn try_hosted_iteration(
        &mut self,
        batch: &[u64],
        iteration: u64,
        lr: f64,
        publish: u64,
        fused: bool,
    ) -> Result<(BatchStats, Option<Vec<f32>>)> {
        let members: Vec<u64> = self
            .data
            .members()
            .await?
            .into_iter()
            .map(|(e, _)| e)
            .collect();
        let fused = fused && matches!(&self.shards, Shards::Executors(s) if s.one_round(&members));
        if !fused {
            self.apply_pending().await?;
            return self
                .two_round_iteration(batch, iteration, lr, publish)
                .await;
        }
        let pending = self.pending.take();
        tracing::debug!(
            iteration,
            applies_pending = pending.is_some(),
            "one-round iteration"
        );
        let round = self
            .training_round(batch, iteration, lr, publish, pending.as_ref())
            .await;
        let round = match (round, &pending, &self.shards) {
            // A holder that ran none of the round's tasks (a batch within
            // fewer partitions than executors, or two partitions on one
            // executor) has not applied the pending step: it steps now.
            (Ok((stats, buffers, step)), Some(p), Shards::Executors(s)) => {
                let ran: Vec<u64> = step.stored_on.iter().map(|&(_, e)| e).collect();
                let syncing = Instant::now();
                let stepped = s.step_holders(&self.data, &p.step, &ran).await;
                self.timing.driver_sync(syncing.elapsed());
                match stepped {
                    Ok(()) => Ok((stats, buffers, step)),
                    Err(e) => {
                        self.data.free_blocks(vec![step.gradients]);
                        Err(e)
                    }
                }
            }
            (round, _, _) => round,
        };
        match round {
            Ok((stats, buffers, step)) => {
                if let (Some(p), Shards::Executors(s)) = (&pending, &mut self.shards) {
                    s.commit_step(&self.data, &p.step);
                    self.data.free_blocks(vec![p.step.gradients]);
                }
                self.pending = Some(Pending {
                    step,
                    batch: batch.to_vec(),
                    iteration,
                });
                Ok((stats, buffers))
            }
            Err(e) => {
                // Applied by some holders or none: redone before the retry.
                self.pending = pending;
                Err(e)
            }
        }
    }

    /// Gradients, then every holder's step, as two task rounds.
    async fn two_round_iteration(
        &mut self,
        batch: &[u64],
        iteration: u64,
        lr: f64,
        publish: u64,
    ) -> Result<(BatchStats, Option<Vec<f32>>)> {
        let (stats, buffers, step) = self
            .training_round(batch, iteration, lr, publish, None)
            .await?;
        let Shards::Executors(shards) = &mut self.shards else {
            return Err(Error::Unsupported {
                op: "a two-round iteration".into(),
                needs: "executor-hosted shards (this run's are held by the driver)",
            });
        };
        let syncing = Instant::now();
        let stepped = shards.step(&self.data, &step).await;
        self.timing.driver_sync(syncing.elapsed());
        self.data.free_blocks(vec![step.gradients]);
        stepped.map(|()| (stats, buffers))
    }

    /// The training tasks of one iteration: each applies `pending` first
    /// (then reads the weights it publishes from its own store) or fetches
    /// the current weights, and leaves its gradient slices in its store.
    /// Returns the batch's statistics, the averaged buffers and the step
    /// the gradients make (its gradient block is freed on failure).
    async fn training_round(
        &self,
        batch: &[u64],
        iteration: u64,
        lr: f64,
        publish: u64,
        pending: Option<&Pending>,
    ) -> Result<(BatchStats, Option<Vec<f32>>, PendingStep)> {
        let Shards::Executors(shards) = &self.shards else {
            return Err(Error::Unsupported {
                op: "a training round with hosted shards".into(),
                needs: "executor-hosted shards (this run's are held by the driver)",
            });
        };
        let gradients = self.data.fresh_id();
        let sink = shards.sink(gradients);
        let (weights, fetches, step_first) = match pending {
            Some(p) => {
                let (op, fetches) = shards.step_everywhere(&p.step)?;
                (p.step.publish, fetches, Some(op))
            }
            None => {
                let (weights, fetch) = shards.weights_fetch()?;
                (weights, vec![fetch], None)
            }
        };
        let buffers = f32_to_bytes(&self.buffers);
        let actions: Vec<(u32, Action, Vec<crate::protocol::ShuffleFetch>)> = self
            .layout
            .split(batch)
            .into_iter()
            .map(|(p, idx)| {
                let seed = share_seed(self.spec.seed, iteration, p);
                let mut req = self.train_request(idx, seed, false, (&[], &buffers));
                req.weights_from = Some(weights);
                req.gradients_to = Some(sink.clone());
                req.step_first = step_first.clone();
                (p, Action::Train(req), fetches.clone())
            })
            .collect();
        let partitions: Vec<u32> = actions.iter().map(|(p, _, _)| *p).collect();
        let outs = self.data.run_partitions_fetching(actions).await;
        let result = (|| {
            let mut stats = BatchStats::default();
            let mut mean = BufferMean::default();
            let mut stored_on = Vec::with_capacity(partitions.len());
            for (p, out) in partitions.iter().zip(outs?) {
                match out {
                    TaskOutput::Train {
                        stats: s,
                        buffers: b,
                        stored_on: Some(e),
                        timing,
                        ..
                    } => {
                        self.timing.task(&timing);
                        stats.add(&s);
                        mean.add(&b, s.samples)?;
                        stored_on.push((*p, e));
                    }
                    _ => {
                        return Err(Error::UnexpectedTaskOutput {
                            task: format!("iteration {iteration}, a training task"),
                            expected: "gradients (stored on its executor)",
                        })
                    }
                }
            }
            check_loss(iteration, &stats)?;
            let step = PendingStep {
                gradients,
                stored_on,
                scale: 1.0 / stats.samples.max(1) as f32,
                lr,
                publish,
            };
            Ok((stats, mean.mean(), step))
        })();
        if result.is_err() {
            self.data.free_blocks(vec![gradients]);
        }
        result
    }

    /// Applies the pending step, if any: every holder fetches the gradient
    /// slices and steps (two-round style). When that fails (an executor
    /// that held some of the slices is gone), the pending iteration is
    /// redone in two rounds on the survivors; the holders that had already
    /// stepped only republish. A step that cannot be applied stays pending
    /// (and the error is returned): nothing may train on the weights
    /// before it.
    async fn apply_pending(&mut self) -> Result<()> {
        let Some(p) = self.pending.take() else {
            return Ok(());
        };
        match self.apply(&p).await {
            Ok(()) => {
                self.data.free_blocks(vec![p.step.gradients]);
                Ok(())
            }
            Err(e) => {
                self.pending = Some(p);
                Err(e)
            }
        }
    }

    async fn apply(&mut self, p: &Pending) -> Result<()> {
        let Shards::Executors(shards) = &mut self.shards else {
            return Err(Error::Unsupported {
                op: "applying a pending hosted step".into(),
                needs: "executor-hosted shards (this run's are held by the driver)",
            });
        };
        let syncing = Instant::now();
        let mut result = shards.step(&self.data, &p.step).await;
        self.timing.driver_sync(syncing.elapsed());
        let mut redo = 0;
        while let Err(e) = result {
            if redo >= redo_limit(&e) {
                return Err(e);
            }
            redo += 1;
            warn!(iteration = p.iteration, redo, error = %e, "pending step failed; redoing its iteration");
            settle_after_failure(&mut self.shards, &self.data, redo).await?;
            result = self
                .two_round_iteration(&p.batch, p.iteration, p.step.lr, p.step.publish)
                .await
                .map(|_| ());
        }
        Ok(())
    }

    /// The element indices of the batch at `self.launched`.
    fn next_batch(&mut self) -> Vec<u64> {
        let epoch = self.launched.epoch;
        if self.order.as_ref().is_none_or(|(e, _)| *e != epoch) {
            // Epochs are numbered from 1 in the order's seed, as kiln-nn's
            // single-process trainer does: same seed, same batches.
            let order = epoch_order(
                self.layout.total(),
                self.spec.seed,
                epoch + 1,
                self.spec.sorted_epochs.as_ref(),
            );
            self.order = Some((epoch, order));
        }
        let bs = self.spec.batch_size as u64;
        let (lo, hi) = (
            self.launched.batch * bs,
            ((self.launched.batch + 1) * bs).min(self.layout.total()),
        );
        match &self.order {
            Some((_, order)) => order[lo as usize..hi as usize].to_vec(),
            None => Vec::new(),
        }
    }

    /// Advances the position past an applied iteration and writes a
    /// checkpoint if one is due.
    async fn finish_iteration(
        &mut self,
        iteration: u64,
        lr: f64,
        stats: BatchStats,
        started: Instant,
    ) -> Result<IterationReport> {
        tracing::debug!(
            iteration,
            seconds = started.elapsed().as_secs_f64(),
            "iteration applied"
        );
        let iteration_epoch = self.pos.epoch;
        self.pos.iteration += 1;
        self.pos.batch += 1;
        let epoch_ended = self.pos.batch >= self.batches_per_epoch();
        if epoch_ended {
            self.pos.epoch += 1;
            self.pos.batch = 0;
        }
        let due = self
            .spec
            .checkpoint
            .as_ref()
            .is_some_and(|p| p.due(self.pos.iteration, epoch_ended, self.last_checkpoint));
        let (checkpoint, checkpoint_seconds) = if due {
            // A pending step is training's cost, not the checkpoint's.
            self.apply_pending().await?;
            let writing = Instant::now();
            let id = self.checkpoint().await?;
            (Some(id), writing.elapsed().as_secs_f64())
        } else {
            (None, 0.0)
        };
        let seconds = started.elapsed().as_secs_f64();
        let mut point = self
            .timing
            .point(seconds, checkpoint_seconds, stats.samples);
        point.iteration = self.pos.iteration;
        point.epoch = iteration_epoch;
        point.loss = stats.mean_loss();
        point.learning_rate = lr;
        self.data.monitor().send(Event::Iteration(point));
        Ok(IterationReport {
            position: self.pos,
            stats,
            learning_rate: lr,
            seconds,
            epoch_ended,
            checkpoint,
            checkpoint_seconds,
            redone: 0,
        })
    }

    /// Drops the batches launched ahead (after an error), so the next step
    /// relaunches from the last applied one.
    fn abandon_in_flight(&mut self) {
        for f in self.in_flight.drain(..) {
            f.job.abort();
        }
        self.launched = self.pos;
    }

    /// Writes a checkpoint now: every shard's blobs go into the store (the
    /// driver-held parameter actors write their own; executor-hosted
    /// shards are staged by their holders and streamed into the store by
    /// the driver, see `blob_pull`), then the commit record goes in last.
    pub async fn checkpoint(&mut self) -> Result<u64> {
        // The checkpoint holds the shards with every computed step applied.
        self.apply_pending().await?;
        let writing = Instant::now();
        let Some(store) = &self.store else {
            return Err(Error::NoCheckpointStore { op: "checkpoint" });
        };
        let id = store.next_id()?;
        let mut blobs = match &self.shards {
            Shards::Driver(s) => s.snapshot(store.dir(), id).await?,
            Shards::Executors(s) => s.snapshot(&self.data, store.dir(), id).await?,
        };
        if !self.buffers.is_empty() {
            let dir = store.dir().to_path_buf();
            let bytes = f32_to_bytes(&self.buffers);
            let blob =
                tokio::task::spawn_blocking(move || write_blob(&dir, id, BUFFERS_BLOB, &bytes))
                    .await
                    .map_err(|e| Error::BackgroundTask {
                        task: format!("writing the buffers blob of checkpoint {id}"),
                        source: e,
                    })??;
            blobs.push(blob);
        }
        let mut record = CheckpointRecord::new(id, self.pos.iteration, self.pos.epoch);
        let bytes = blobs.iter().map(|b| b.len).sum();
        let blob_refs = blobs.clone();
        record.blobs = blobs;
        record.meta = training_meta(
            self.pos,
            self.spec.seed,
            self.spec.batch_size,
            self.shards.count(),
            self.params.len(),
            &self.spec.job_meta,
        );
        record.meta.extend(
            self.spec
                .fixed_meta
                .iter()
                .map(|(k, v)| (k.clone(), v.clone())),
        );
        // Verifying the blobs and flushing the manifest block: off the
        // async threads.
        let store = store.clone();
        let store_dir = store.dir().display().to_string();
        let removed = tokio::task::spawn_blocking(move || store.commit(&record))
            .await
            .map_err(|e| Error::BackgroundTask {
                task: format!("committing checkpoint {id}"),
                source: e,
            })??;
        self.last_checkpoint = Instant::now();
        info!(id, iteration = self.pos.iteration, epoch = self.pos.epoch, removed = ?removed, "checkpoint committed");
        self.data
            .monitor()
            .send(Event::Checkpoint(CheckpointCommitted {
                store: store_dir,
                id,
                iteration: self.pos.iteration,
                epoch: self.pos.epoch,
                bytes,
                write_seconds: writing.elapsed().as_secs_f64(),
                removed,
                blobs: blob_refs,
            }));
        Ok(id)
    }

    /// With executor-hosted shards: the size of the blocks holders stage
    /// checkpoint blobs in (tests make blobs span several).
    #[cfg(test)]
    pub(crate) fn set_stage_block_bytes(&mut self, bytes: u64) {
        if let Shards::Executors(s) = &mut self.shards {
            s.set_stage_block_bytes(bytes);
        }
    }

    /// Loss and accuracy of the current weights on `data`, computed on the
    /// executors. With executor-hosted shards, a lost holder is dropped and
    /// the evaluation redone (as an iteration is).
    pub async fn evaluate(&mut self, data: &Dataset<T>) -> Result<BatchStats> {
        self.apply_pending().await?;
        let mut redo = 0;
        loop {
            match self.evaluate_once(data).await {
                Err(e) if redo < redo_limit(&e) && matches!(self.shards, Shards::Executors(_)) => {
                    redo += 1;
                    warn!(redo, error = %e, "evaluation failed; redoing it");
                    settle_after_failure(&mut self.shards, &self.data, redo).await?;
                }
                r => return r,
            }
        }
    }

    async fn evaluate_once(&self, data: &Dataset<T>) -> Result<BatchStats> {
        let buffers = f32_to_bytes(&self.buffers);
        let hosted = match &self.shards {
            Shards::Driver(_) => None,
            Shards::Executors(s) => Some(s.weights_fetch()?),
        };
        let weights = match hosted {
            None => f32_to_bytes(&self.params),
            Some(_) => Vec::new(),
        };
        let actions = (0..data.partitions())
            .map(|p| {
                let mut req = self.train_request(Vec::new(), 0, true, (&weights, &buffers));
                let fetches = match &hosted {
                    None => Vec::new(),
                    Some((id, fetch)) => {
                        req.weights_from = Some(*id);
                        vec![fetch.clone()]
                    }
                };
                (p, Action::Train(req), fetches)
            })
            .collect();
        let mut stats = BatchStats::default();
        for out in data.run_partitions_fetching(actions).await? {
            if let TaskOutput::Train { stats: s, .. } = out {
                stats.add(&s);
            }
        }
        Ok(stats)
    }

    /// Stops the parameter actors (or has the executors drop the shards
    /// they host) and returns the final weights.
    pub async fn finish(mut self) -> Result<Vec<f32>> {
        self.abandon_in_flight();
        self.current_params().await?;
        match self.shards {
            Shards::Driver(s) => s.stop().await,
            Shards::Executors(s) => s.stop(&self.data).await,
        }
        Ok(self.params)
    }
}

/// What a resumed run's checkpoint must agree with besides the job's fixed
/// settings: the data order, the batch, the parameter layout.
struct RunShape {
    seed: u64,
    batch_size: usize,
    shards: usize,
    params: usize,
}

/// Checks that `record` was written by a run with the same `fixed` job
/// settings (compared first: they name the cause, e.g. another model
/// preset, better than the parameter count it changes; one the record
/// lacks is logged and skipped, so checkpoints written before a setting was
/// fixed still resume) and the same [`RunShape`].
fn check_compatible(
    record: &CheckpointRecord,
    fixed: &BTreeMap<String, String>,
    run: &RunShape,
) -> Result<()> {
    let incompatible = |setting: String, in_checkpoint: String, in_run: String| {
        Err(Error::Incompatible {
            checkpoint: record.id,
            setting,
            in_checkpoint,
            in_run,
        })
    };
    for (key, want) in fixed {
        match record.meta.get(key) {
            Some(got) if got == want => {}
            Some(got) => return incompatible(key.clone(), got.clone(), want.clone()),
            None => warn!(
                checkpoint = record.id,
                setting = %key,
                "the checkpoint does not record this setting (an older version wrote it): not compared"
            ),
        }
    }
    let expect = [
        ("the seed", META_SEED, run.seed),
        ("the batch size", META_BATCH_SIZE, run.batch_size as u64),
        (
            "the number of parameter shards",
            META_SHARDS,
            run.shards as u64,
        ),
        (
            "the model size in parameters",
            META_PARAMS,
            run.params as u64,
        ),
    ];
    for (what, key, want) in expect {
        let got = meta_u64(record, key)?;
        if got != want {
            return incompatible(format!("{what} ({key})"), got.to_string(), want.to_string());
        }
    }
    Ok(())
}

/// Name of the checkpoint blob holding the model's buffers.
pub const BUFFERS_BLOB: &str = "buffers";

/// Sample-weighted mean of the shares' buffers, summed in partition order
/// (so the result does not depend on the number of executors).
#[derive(Default)]
struct BufferMean {
    sum: Vec<f64>,
    weight: f64,
}

impl BufferMean {
    fn add(&mut self, bytes: &[u8], samples: u64) -> Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        let b = bytes_to_f32(bytes, "buffers")?;
        if self.sum.is_empty() {
            self.sum = vec![0.0; b.len()];
        } else if self.sum.len() != b.len() {
            return Err(Error::ParameterCount {
                what: "buffers of a training share (the first share's count expected)".into(),
                unit: "buffer values",
                expected: self.sum.len(),
                found: b.len(),
            });
        }
        let w = samples.max(1) as f64;
        for (s, x) in self.sum.iter_mut().zip(&b) {
            *s += w * *x as f64;
        }
        self.weight += w;
        Ok(())
    }

    fn mean(&self) -> Option<Vec<f32>> {
        (self.weight > 0.0).then(|| self.sum.iter().map(|s| (s / self.weight) as f32).collect())
    }
}

/// Seed of one share of one iteration: independent of which executor runs it.
fn share_seed(seed: u64, iteration: u64, partition: u32) -> u64 {
    seed.wrapping_mul(0x2545_F491_4F6C_DD1D)
        ^ iteration.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (partition as u64).rotate_left(32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffer_mean_weights_by_samples_and_rejects_ragged_shares() {
        let mut m = BufferMean::default();
        assert_eq!(m.mean(), None);
        m.add(&[], 5).unwrap();
        assert_eq!(m.mean(), None, "shares without buffers change nothing");
        m.add(&f32_to_bytes(&[1.0, 10.0]), 1).unwrap();
        m.add(&f32_to_bytes(&[4.0, 40.0]), 2).unwrap();
        assert_eq!(m.mean(), Some(vec![3.0, 30.0]));
        let err = m.add(&f32_to_bytes(&[1.0]), 1).unwrap_err().to_string();
        assert!(err.contains("1 buffer values, 2 expected"), "{err}");
        assert!(m.add(&[1, 2, 3], 1).is_err());
    }

    const SHAPE: RunShape = RunShape {
        seed: 7,
        batch_size: 32,
        shards: 4,
        params: 1000,
    };

    /// A checkpoint as a run of [`SHAPE`] with `fixed` settings writes it.
    fn record(fixed: &BTreeMap<String, String>) -> CheckpointRecord {
        let mut r = CheckpointRecord::new(5, 90, 2);
        r.meta = training_meta(
            Position {
                iteration: 90,
                epoch: 2,
                batch: 0,
            },
            SHAPE.seed,
            SHAPE.batch_size,
            SHAPE.shards,
            SHAPE.params,
            &BTreeMap::from([("job.config".to_string(), "{}".to_string())]),
        );
        r.meta.extend(fixed.clone());
        r
    }

    fn fixed(preset: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("ssd.preset".to_string(), format!("{preset:?}")),
            ("ssd.split".to_string(), "\"train\"".to_string()),
        ])
    }

    fn incompatible(e: Error) -> (u64, String, String, String) {
        match e {
            Error::Incompatible {
                checkpoint,
                setting,
                in_checkpoint,
                in_run,
            } => (checkpoint, setting, in_checkpoint, in_run),
            other => panic!("expected Incompatible, got {other}"),
        }
    }

    #[test]
    fn a_checkpoint_of_the_same_run_is_compatible() {
        check_compatible(&record(&fixed("tiny")), &fixed("tiny"), &SHAPE).unwrap();
        // Settings the run does not fix (the job's own config, epochs) are
        // free to differ.
        check_compatible(&record(&fixed("tiny")), &BTreeMap::new(), &SHAPE).unwrap();
    }

    #[test]
    fn another_model_size_is_refused_naming_the_parameter_count() {
        let run = RunShape {
            params: 1234,
            ..SHAPE
        };
        let e = check_compatible(&record(&BTreeMap::new()), &BTreeMap::new(), &run).unwrap_err();
        let msg = e.to_string();
        assert_eq!(
            incompatible(e),
            (
                5,
                "the model size in parameters (train.params)".to_string(),
                "1000".to_string(),
                "1234".to_string()
            )
        );
        assert!(
            msg.contains("checkpoint 5")
                && msg.contains("(train.params) = 1000, this run has 1234"),
            "{msg}"
        );
    }

    #[test]
    fn another_seed_batch_size_or_shard_count_is_refused_naming_it() {
        let runs = [
            (RunShape { seed: 8, ..SHAPE }, "train.seed", "7", "8"),
            (
                RunShape {
                    batch_size: 16,
                    ..SHAPE
                },
                "train.batch_size",
                "32",
                "16",
            ),
            (RunShape { shards: 2, ..SHAPE }, "train.shards", "4", "2"),
        ];
        for (run, key, was, now) in runs {
            let (_, setting, a, b) = incompatible(
                check_compatible(&record(&BTreeMap::new()), &BTreeMap::new(), &run).unwrap_err(),
            );
            assert!(setting.ends_with(&format!("({key})")), "{setting}");
            assert_eq!((a.as_str(), b.as_str()), (was, now));
        }
    }

    #[test]
    fn another_job_setting_is_refused_before_the_model_size_it_changes() {
        // Another preset also changes the parameter count; the error names
        // the preset.
        let run = RunShape {
            params: 5000,
            ..SHAPE
        };
        let e = check_compatible(&record(&fixed("tiny")), &fixed("small"), &run).unwrap_err();
        assert!(
            e.to_string()
                .contains("ssd.preset = \"tiny\", this run has \"small\""),
            "{e}"
        );
        let (_, setting, _, _) = incompatible(e);
        assert_eq!(setting, "ssd.preset");
    }

    #[test]
    fn settings_a_checkpoint_predates_are_not_compared_but_training_entries_are_required() {
        // Written before the job fixed any settings: it still resumes, as
        // long as the model size and the data order agree.
        check_compatible(&record(&BTreeMap::new()), &fixed("tiny"), &SHAPE).unwrap();
        let run = RunShape {
            params: 5000,
            ..SHAPE
        };
        let (_, setting, _, _) = incompatible(
            check_compatible(&record(&BTreeMap::new()), &fixed("small"), &run).unwrap_err(),
        );
        assert!(setting.ends_with("(train.params)"), "{setting}");
        // Not a training checkpoint at all.
        let bare = CheckpointRecord::new(9, 0, 0);
        let e = check_compatible(&bare, &BTreeMap::new(), &SHAPE).unwrap_err();
        assert!(
            e.to_string()
                .contains("checkpoint 9, meta entry \"train.seed\": missing"),
            "{e}"
        );
        // A corrupt numeric entry names the key.
        let mut r = record(&BTreeMap::new());
        r.meta.insert("train.params".into(), "many".into());
        let e = check_compatible(&r, &BTreeMap::new(), &SHAPE).unwrap_err();
        assert!(e.to_string().contains("entry \"train.params\""), "{e}");
    }
}

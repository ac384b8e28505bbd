//! The one training loop every kind runs in: the trainer set up from the
//! kind's plan and the run's settings, epochs of synchronous iterations,
//! the kind's evaluation after each epoch, checkpoints, resume, the model
//! file, progress reports, cancellation, and the lines a job prints:
//!
//! ```text
//! TRAINING <kind>: <n> samples, <p> parameters, <b> batches per epoch, <k> partitions
//! RESUMED <id> iteration=<i> epoch=<e>        (or: RESUMED none …; SKIPPED <id> <why>)
//! CHECKPOINT <id> iteration=<i>
//! REDONE iteration=<i> times=<n> (…)
//! EPOCH <e> loss=<mean> lr=<rate> samples_per_s=<s> [<metric>=<value> …]
//! ```
//! followed by the kind's own closing lines and
//! `TIMES training_s=… evaluation_s=… checkpoint_s=… samples_per_s=…
//! iteration_samples_per_s=…`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_runtime::jobs::Progress;
use kiln_runtime::train::{BatchStats, CheckpointPolicy};
use kiln_runtime::{DistributedTrainer, JobContext, TrainSpec};

use super::optimizer::{optimizer_factory, placement};
use super::resume::{META_KIND, META_SETTINGS};
use super::settings::{fixed_settings, TrainingSettings};
use super::summaries::Summaries;
use super::{Metric, TrainingJob};
use crate::jobs::{encode_settings, JobError, Result};

/// How long a training job submitted to a cluster without executors waits
/// for one.
const EXECUTOR_WAIT: Duration = Duration::from_secs(120);

/// Least time between two progress reports.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// What a finished run reached.
#[derive(Debug, Clone, Default)]
pub struct TrainingReport {
    /// Iterations and epochs done (counting a resumed run's earlier ones).
    pub iterations: u64,
    /// Completed epochs.
    pub epochs: u64,
    /// Executors at the end.
    pub executors: usize,
    /// Mean loss of the last epoch trained here.
    pub last_epoch_loss: f64,
    /// The last epoch's metrics.
    pub metrics: Vec<Metric>,
    /// Training samples per second over the epochs run here (their wall
    /// time, evaluations included).
    pub samples_per_second: f64,
    /// Training samples per second of the iterations alone (less the
    /// per-epoch evaluations): the throughput BigDL and PyTorch report.
    pub iteration_samples_per_second: f64,
    /// Wall time of the epochs run here, seconds.
    pub training_seconds: f64,
    /// Of it, the per-epoch evaluations.
    pub evaluation_seconds: f64,
    /// Of it, writing checkpoints.
    pub checkpoint_seconds: f64,
}

/// Runs `kind` with `settings` on `ctx`'s driver to the end (or until the
/// job is cancelled), writing the model file `model.safetensors` into the
/// job's directory (output `model`).
pub async fn run_training<K: TrainingJob>(
    kind: &K,
    settings: &TrainingSettings<K::Settings>,
    ctx: &JobContext,
) -> Result<TrainingReport> {
    let name = kind.kind();
    let driver = ctx.driver();
    let mut settings = settings.clone();
    if driver.status().await?.executors.is_empty() {
        ctx.line(format!(
            "WAITING for an executor to join (at most {} s)",
            EXECUTOR_WAIT.as_secs()
        ));
        driver.wait_for_executors(1, EXECUTOR_WAIT).await?;
    }
    let partitions = match settings.run.partitions {
        Some(p) => p,
        None => {
            let slots: u32 = driver
                .status()
                .await?
                .executors
                .iter()
                .map(|e| e.cores)
                .sum();
            slots.max(1)
        }
    };
    // Recorded, so a resume on another cluster shape splits alike.
    settings.run.partitions = Some(partitions);
    let plan = kind
        .plan(&settings.job, &settings.run, partitions, ctx)
        .await?;
    let mut eval = plan.eval;
    let learning_rate = plan.learning_rate.clone();
    let shards = settings.run.shards.unwrap_or(kind.default_shards());
    let spec = TrainSpec {
        trainer: kind.trainer().to_string(),
        worker_config: plan.worker_config,
        batch_size: plan.batch_size,
        epochs: plan.epochs,
        seed: plan.seed,
        shards,
        learning_rate: Arc::new(move |it, epoch| learning_rate.at(it, epoch)),
        checkpoint: settings
            .run
            .checkpoint
            .dir
            .as_ref()
            .map(|dir| CheckpointPolicy {
                every_iterations: settings.run.checkpoint.every_iterations,
                keep_last: settings.run.checkpoint.keep_last,
                ..CheckpointPolicy::every_epoch(dir, settings.run.checkpoint.claim(name))
            }),
        job_meta: BTreeMap::from([
            (META_KIND.to_string(), name.to_string()),
            (META_SETTINGS.to_string(), encode_settings(name, &settings)?),
        ]),
        fixed_meta: fixed_settings(name, &settings.job, kind.free_on_resume())?,
        staleness: None,
        init_buffers: plan.buffers,
        placement: placement(&plan.optimizer, settings.run.shard_replicas)?,
        sorted_epochs: plan.sorted_epochs,
    };
    // Keep the placement's optimizer and the driver's actors' the same.
    let optimizer = optimizer_factory(plan.optimizer.clone());
    if spec.batch_size == 0 {
        return Err(JobError::invalid(
            name,
            "batch_size",
            0,
            "must be at least 1",
        ));
    }
    let mut trainer = DistributedTrainer::start(&plan.data, spec, plan.params, optimizer).await?;
    if let Some(r) = trainer.store_recovery() {
        ctx.line(format!(
            "RECOVERED the checkpoint manifest was corrupt ({}); rebuilt from the checkpoints' own records: {:?}; left out: {}; the corrupt manifest is kept at {}",
            r.reason,
            r.rebuilt,
            if r.left_out.is_empty() {
                "none".to_string()
            } else {
                r.left_out
                    .iter()
                    .map(|s| format!("{} ({})", s.id, s.reason))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
            r.kept_at
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        ));
    }
    if settings.run.checkpoint.resume {
        match trainer.resume().await? {
            Some(info) => {
                for s in &info.skipped {
                    ctx.line(format!("SKIPPED {} {}", s.id, s.reason));
                }
                ctx.line(format!(
                    "RESUMED {} iteration={} epoch={}",
                    info.id, info.position.iteration, info.position.epoch
                ));
            }
            None => ctx.line("RESUMED none (no checkpoint yet): starting fresh"),
        }
    }
    let total = trainer.batches_per_epoch() * plan.epochs;
    ctx.line(format!(
        "TRAINING {name}: {} samples, {} parameters, {} batches per epoch, {partitions} partitions",
        trainer.samples(),
        trainer.params().len(),
        trainer.batches_per_epoch()
    ));
    let model_path = ctx.dir().join("model.safetensors");
    let say_ctx = ctx.clone();
    let mut summaries = Summaries::open(
        settings.run.tensorboard.as_deref(),
        &format!("{name}-job{}", ctx.id()),
        Box::new(move |line| say_ctx.line(line)),
    );
    let started = Instant::now();
    let mut last_progress = Instant::now() - PROGRESS_EVERY;
    let mut report = TrainingReport::default();
    let mut trained = 0u64;
    let mut epoch_stats = BatchStats::default();
    let mut epoch_start = Instant::now();
    while !trainer.is_done() {
        if ctx.is_cancelled() {
            ctx.line("CANCELLED: stopping the trainer");
            trainer.finish().await?;
            return Err(JobError::Cancelled);
        }
        let it = trainer.step().await.map_err(|e| match e {
            e @ (kiln_runtime::Error::NonFiniteLoss { .. }
            | kiln_runtime::Error::NonFiniteWeights { .. }) => JobError::Runtime(e),
            e => JobError::step(format!("iteration {}", trainer.position().iteration + 1), e),
        })?;
        if trained == 0 && it.stats.samples > 0 && it.stats.loss_sum == 0.0 {
            ctx.line(format!(
                "WARNING the loss of iteration {} is exactly 0 over {} samples: there is nothing to learn \
                 (targets the model already fits exactly, or an objective that ignores its input)",
                it.position.iteration, it.stats.samples
            ));
        }
        trained += it.stats.samples;
        summaries.iteration(
            it.position.iteration,
            it.stats.mean_loss(),
            it.learning_rate,
        );
        report.checkpoint_seconds += it.checkpoint_seconds;
        epoch_stats.add(&it.stats);
        if let Some(id) = it.checkpoint {
            ctx.line(format!(
                "CHECKPOINT {id} iteration={}",
                it.position.iteration
            ));
        }
        if it.redone > 0 {
            ctx.line(format!(
                "REDONE iteration={} times={} (an executor holding parameter shards was lost)",
                it.position.iteration, it.redone
            ));
        }
        if last_progress.elapsed() >= PROGRESS_EVERY || it.epoch_ended {
            last_progress = Instant::now();
            ctx.progress(Progress {
                done: it.position.iteration,
                total,
                message: format!("loss {:.4}", it.stats.mean_loss()),
            });
        }
        if it.epoch_ended {
            let secs = epoch_start.elapsed().as_secs_f64();
            let evaluating = Instant::now();
            let metrics = kind
                .evaluate(&settings.job, &mut eval, &epoch_stats, &mut trainer)
                .await?;
            report.evaluation_seconds += evaluating.elapsed().as_secs_f64();
            let samples_per_second = epoch_stats.samples as f64 / secs.max(1e-9);
            summaries.epoch(
                it.position.iteration,
                epoch_stats.mean_loss(),
                samples_per_second,
                &metrics,
            );
            ctx.record_epoch(kiln_runtime::monitor::view::EpochPoint {
                epoch: it.position.epoch,
                iteration: it.position.iteration,
                loss: epoch_stats.mean_loss(),
                samples_per_second,
                metrics: metrics.iter().cloned().collect(),
                at_ms: 0,
            });
            let mut line = format!(
                "EPOCH {} loss={:.4} lr={:.3e} samples_per_s={:.1}",
                it.position.epoch,
                epoch_stats.mean_loss(),
                it.learning_rate,
                samples_per_second
            );
            for (m, v) in &metrics {
                line.push_str(&format!(" {m}={v:.4}"));
            }
            ctx.line(line);
            if kind.save_each_epoch() {
                save(kind, &settings.job, &mut trainer, &model_path, ctx).await?;
            }
            report.last_epoch_loss = epoch_stats.mean_loss();
            report.metrics = metrics;
            epoch_stats = BatchStats::default();
            epoch_start = Instant::now();
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let position = trainer.position();
    report.iterations = position.iteration;
    report.epochs = position.epoch;
    report.executors = driver.status().await?.executors.len();
    report.training_seconds = seconds;
    report.samples_per_second = trained as f64 / seconds.max(1e-9);
    report.iteration_samples_per_second =
        trained as f64 / (seconds - report.evaluation_seconds).max(1e-9);
    let closing = kind
        .finish(&settings.job, &mut eval, &report, &mut trainer)
        .await?;
    save(kind, &settings.job, &mut trainer, &model_path, ctx).await?;
    trainer.finish().await?;
    for line in closing {
        ctx.line(line);
    }
    ctx.line(format!(
        "TIMES training_s={:.3} evaluation_s={:.3} checkpoint_s={:.3} samples_per_s={:.1} iteration_samples_per_s={:.1}",
        report.training_seconds,
        report.evaluation_seconds,
        report.checkpoint_seconds,
        report.samples_per_second,
        report.iteration_samples_per_second
    ));
    Ok(report)
}

/// Writes the current model into the job's directory and offers it as
/// output `model`.
async fn save<K: TrainingJob>(
    kind: &K,
    settings: &K::Settings,
    trainer: &mut DistributedTrainer<K::Sample>,
    path: &std::path::Path,
    ctx: &JobContext,
) -> Result<()> {
    // Gathered from the executors if they host the shards.
    trainer.current_params().await?;
    kind.save_model(settings, trainer.params(), trainer.buffers(), path)?;
    ctx.add_output("model", path.to_path_buf());
    Ok(())
}

//! The digits job on the cluster: the training and held-out splits become
//! datasets read by the executors themselves (a registered source), the
//! network trains with [`DistributedTrainer`] (parameter actors, BSP) with
//! checkpoints, and accuracy is computed on the executors.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use kiln_nn::layers::LayerConfig;
use kiln_nn::optim::{OptimizerConfig, SgdConfig};
use kiln_nn::ModuleExt;
use kiln_runtime::train::META_JOB;
use kiln_runtime::{Dataset, DistributedTrainer, Driver, Registry, TrainSpec};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::cluster_train::{optimizer_factory, ClassifierConfig, Sample, CLASSIFIER_TRAINER};
use crate::digits_job::{self, DigitsJob, DigitsModel};
use crate::run_checkpoints::CheckpointOptions;
use crate::run_output::{iteration_bar, out_line, report_checkpoint};
use crate::shard_placement::place_shards;

/// Name of the digits source in the registry.
pub const DIGITS_SOURCE: &str = "kiln.digits";
/// Checkpoint meta key holding the network's [`LayerConfig`] (JSON).
pub const META_MODEL: &str = "model.config";

/// Arguments of the digits source: which file, which split, which size.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DigitsSource {
    /// `digits.csv.gz`, readable by every executor.
    pub path: PathBuf,
    /// Decides the image size (LeNet-5 upsamples to 28x28).
    pub model: DigitsModel,
    /// The held-out split instead of the training split.
    pub held_out: bool,
}

/// Registers the digits source (every process of a cluster calls this).
pub fn register(r: &mut Registry) {
    r.register_source(DIGITS_SOURCE, |a: &DigitsSource, p: u32, n: u32| {
        let (train, test) = digits_job::load_split(&a.path, a.model)
            .map_err(|e| format!("{}: {e}", a.path.display()))?;
        let set = if a.held_out { test } else { train };
        let per: usize = set.sample_shape().iter().product();
        let flat = set.features.as_standard_layout();
        let values = flat
            .as_slice()
            .ok_or_else(|| "digits features are not contiguous".to_string())?;
        // Contiguous ranges: global index = the sample's index in the
        // split, so the cluster sees the batches single-process training sees.
        let (n, p) = (n.max(1) as usize, p as usize);
        let (lo, hi) = (p * set.len() / n, (p + 1) * set.len() / n);
        Ok((lo..hi)
            .map(|i| {
                (
                    values[i * per..(i + 1) * per].to_vec(),
                    set.labels[i] as u32,
                )
            })
            .collect::<Vec<Sample>>())
    });
}

/// A digits run on the cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterDigitsJob {
    /// Data, network, epochs, batch size, learning rate, seed.
    pub job: DigitsJob,
    /// Partitions of the training set (fixed, so results do not depend on
    /// the number of executors).
    pub partitions: u32,
    /// Parameter actors.
    pub shards: usize,
    /// Copies of each parameter shard kept by the executors; 0: the
    /// shards live with the driver's parameter actors (checkpoints written
    /// before this option existed ran that way).
    #[serde(default)]
    pub shard_replicas: usize,
}

impl ClusterDigitsJob {
    fn network(&self) -> LayerConfig {
        match self.job.model {
            DigitsModel::Cnn => digits_job::digits_cnn(),
            DigitsModel::Lenet5 => digits_job::lenet5(),
        }
    }

    fn sample_shape(&self) -> Vec<usize> {
        match self.job.model {
            DigitsModel::Cnn => vec![1, 8, 8],
            DigitsModel::Lenet5 => vec![1, 28, 28],
        }
    }
}

/// What a cluster run produced.
#[derive(Debug, Clone)]
pub struct ClusterDigitsReport {
    /// Final weights.
    pub params: Vec<f32>,
    /// The network.
    pub model: LayerConfig,
    /// Held-out accuracy (0..1).
    pub held_out_accuracy: f64,
    /// Training samples per second over the epochs run here (the wall
    /// time of the epochs, their held-out evaluations included).
    pub samples_per_second: f64,
    /// Training samples per second of the training iterations alone (the
    /// epochs' wall time less their held-out evaluations): the throughput
    /// BigDL and PyTorch report.
    pub iteration_samples_per_second: f64,
    /// Wall time of the epochs run here (evaluations included), seconds.
    pub training_seconds: f64,
    /// Of `training_seconds`, the time spent evaluating on the held-out
    /// split after each epoch.
    pub evaluation_seconds: f64,
    /// Of `training_seconds`, the time spent writing checkpoints.
    pub checkpoint_seconds: f64,
}

/// Trains the digits network on the driver's executors and evaluates it.
/// Prints `EPOCH`, `CHECKPOINT`, `RESUMED`, `SKIPPED` and a final
/// `HELD-OUT-ACCURACY` line (the tests and scripts read them).
pub async fn train_on_cluster(
    driver: &Driver,
    run: &ClusterDigitsJob,
    ckpt: &CheckpointOptions,
) -> anyhow::Result<ClusterDigitsReport> {
    let job = &run.job;
    let network = run.network();
    let built = network
        .build::<f32>(&mut StdRng::seed_from_u64(job.seed))
        .context("building the network")?;
    let init = built.flat_params();
    let source = |held_out| DigitsSource {
        path: job.data.clone(),
        model: job.model,
        held_out,
    };
    let train: Dataset<Sample> = driver.source(DIGITS_SOURCE, &source(false), run.partitions)?;
    // Cached on the executors: the held-out split is evaluated after every
    // epoch, and reloading (parse, upsample, split) costs several times the
    // evaluation itself.
    let test: Dataset<Sample> = driver
        .source(DIGITS_SOURCE, &source(true), run.partitions)?
        .cache();
    let config = ClassifierConfig {
        model: network.clone(),
        sample_shape: run.sample_shape(),
    };
    let mut spec = TrainSpec::new(
        CLASSIFIER_TRAINER,
        &config,
        job.batch_size,
        job.epochs,
        job.seed,
        job.learning_rate,
    )?;
    spec.shards = run.shards.max(1);
    spec.init_buffers = built.flat_buffers();
    let mut meta = BTreeMap::new();
    meta.insert(META_JOB.to_string(), serde_json::to_string(run)?);
    meta.insert(META_MODEL.to_string(), serde_json::to_string(&network)?);
    spec.job_meta = meta;
    ckpt.apply(&mut spec)?;
    let sgd = OptimizerConfig::Sgd(SgdConfig {
        lr: job.learning_rate,
        momentum: job.momentum,
        ..SgdConfig::default()
    });
    place_shards(&mut spec, run.shard_replicas, &sgd)?;
    let optimizer = optimizer_factory(sgd);
    let mut trainer = DistributedTrainer::start(&train, spec, init, optimizer).await?;
    ckpt.resume_if_asked(&mut trainer).await?;
    let bar = iteration_bar(&trainer, job.epochs, job.progress);
    let started = Instant::now();
    let mut trained = 0u64;
    let mut checkpoint_seconds = 0.0;
    let mut evaluation_seconds = 0.0;
    let mut epoch_loss = kiln_runtime::train::BatchStats::default();
    let mut epoch_start = Instant::now();
    while !trainer.is_done() {
        let it = trainer.step().await?;
        trained += it.stats.samples;
        checkpoint_seconds += it.checkpoint_seconds;
        epoch_loss.add(&it.stats);
        bar.inc(1);
        bar.set_message(format!("loss {:.4}", it.stats.mean_loss()));
        report_checkpoint(&bar, &it);
        if it.redone > 0 {
            bar.suspend(|| {
                out_line(&format!(
                    "REDONE iteration={} times={} (an executor holding parameter shards was lost)",
                    it.position.iteration, it.redone
                ))
            });
        }
        if it.epoch_ended {
            let evaluating = Instant::now();
            let held = trainer.evaluate(&test).await?;
            evaluation_seconds += evaluating.elapsed().as_secs_f64();
            let secs = epoch_start.elapsed().as_secs_f64();
            bar.suspend(|| {
                out_line(&format!(
                    "EPOCH {} loss={:.4} train_acc={:.4} held_out_acc={:.4} samples_per_s={:.0}",
                    it.position.epoch,
                    epoch_loss.mean_loss(),
                    epoch_loss.accuracy(),
                    held.accuracy(),
                    epoch_loss.samples as f64 / secs.max(1e-9)
                ))
            });
            epoch_loss = Default::default();
            epoch_start = Instant::now();
        }
    }
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    let held = trainer.evaluate(&test).await?;
    let params = trainer.finish().await?;
    out_line(&format!("HELD-OUT-ACCURACY {:.4}", held.accuracy()));
    Ok(ClusterDigitsReport {
        params,
        model: network,
        held_out_accuracy: held.accuracy(),
        samples_per_second: trained as f64 / seconds.max(1e-9),
        iteration_samples_per_second: trained as f64 / (seconds - evaluation_seconds).max(1e-9),
        training_seconds: seconds,
        evaluation_seconds,
        checkpoint_seconds,
    })
}

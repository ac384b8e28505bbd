//! Deep Speech 2 on the cluster: a LibriSpeech-layout split read by the
//! executors themselves (features computed there, bad files skipped and
//! logged), a [`GradientWorker`] for DS2 with the CTC loss whose batch-norm
//! running statistics travel as buffers, and the training loop
//! ([`train_speech_on_cluster`]) with checkpoints, a per-epoch dev WER/CER
//! and the trained model saved for `kiln speech eval|transcribe`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use kiln_nn::optim::{AdamConfig, OptimizerConfig};
use kiln_nn::ModuleExt;
use kiln_runtime::train::{BatchStats, GradientWorker, META_JOB};
use kiln_runtime::{Dataset, DistributedTrainer, Driver, Registry, TrainSpec};
use kiln_speech::audio::read_audio_at;
use kiln_speech::augment::SpecAugment;
use kiln_speech::corpus::list_utterances;
use kiln_speech::ds2::{Ds2, Ds2Config};
use kiln_speech::metrics::{cer, wer};
use kiln_speech::pipeline::{self, Decoder, Example, SAMPLE_RATE};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::cluster_train::optimizer_factory;
use crate::run_checkpoints::{fixed_settings, CheckpointOptions};
use crate::run_output::{iteration_bar, out_line, report_checkpoint};
use crate::shard_placement::place_shards;

/// Name of the speech corpus source in the registry.
pub const SPEECH_SOURCE: &str = "kiln.speech_corpus";
/// Name of the DS2 trainer in the registry.
pub const DS2_TRAINER: &str = "kiln.ds2";

/// Arguments of the speech source: a split directory
/// (`<split>/<speaker>/<chapter>/…`) and the longest utterance kept.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SpeechSource {
    /// The split directory, readable by every executor.
    pub split: PathBuf,
    /// Utterances longer than this many seconds are skipped (logged).
    pub max_seconds: f64,
}

/// Reads partition `p` of `n` of a split: a contiguous range of the
/// utterances sorted by id. Unreadable audio, transcripts with characters
/// outside the alphabet and over-long utterances are skipped with a
/// warning naming the file.
pub fn read_speech_partition(a: &SpeechSource, p: u32, n: u32) -> Result<Vec<Example>, String> {
    let (utts, bad) =
        list_utterances(&a.split, true).map_err(|e| format!("{}: {e}", a.split.display()))?;
    for (path, e) in &bad {
        warn!(file = %path.display(), error = %e, "skipped");
    }
    let (n, p) = (n.max(1) as usize, p as usize);
    let (lo, hi) = (p * utts.len() / n, (p + 1) * utts.len() / n);
    let mut out = Vec::with_capacity(hi - lo);
    for u in &utts[lo..hi] {
        let example = read_audio_at(&u.audio_path, SAMPLE_RATE).and_then(|audio| {
            if audio.duration_s() > a.max_seconds {
                return Ok(None);
            }
            Example::new(&u.id, &u.transcript, &audio).map(Some)
        });
        match example {
            Ok(Some(e)) => out.push(e),
            Ok(None) => {
                warn!(file = %u.audio_path.display(), max_seconds = a.max_seconds, "skipped: too long")
            }
            Err(e) => warn!(file = %u.audio_path.display(), error = %e, "skipped"),
        }
    }
    Ok(out)
}

/// What every executor needs to build the DS2 trainer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ds2WorkerConfig {
    /// The network.
    pub model: Ds2Config,
    /// Feature masking of training utterances, if any.
    pub spec_augment: Option<SpecAugment>,
}

/// Spreads the per-utterance mask seeds of one share (an odd constant,
/// the golden ratio's 64-bit fraction).
const MASK_SEED_STRIDE: u64 = 0x9E37_79B9_7F4A_7C15;

/// DS2 trained with CTC on [`Example`]s.
pub struct Ds2Worker {
    model: Ds2<f32>,
    params: usize,
    spec_augment: Option<SpecAugment>,
}

impl Ds2Worker {
    /// Builds the network (weights and buffers are replaced every task).
    pub fn new(config: &Ds2WorkerConfig) -> Result<Self, String> {
        if let Some(a) = &config.spec_augment {
            a.validate().map_err(|e| e.to_string())?;
        }
        let model = config
            .model
            .init::<f32>(&mut StdRng::seed_from_u64(0))
            .map_err(|e| e.to_string())?;
        let params = model.num_params();
        Ok(Ds2Worker {
            model,
            params,
            spec_augment: config.spec_augment.clone(),
        })
    }
}

impl GradientWorker<Example> for Ds2Worker {
    fn num_params(&self) -> usize {
        self.params
    }

    fn gradients(
        &mut self,
        params: &[f32],
        samples: &[&Example],
        seed: u64,
        grads: &mut [f32],
    ) -> Result<BatchStats, String> {
        self.model
            .set_flat_params(params)
            .map_err(|e| e.to_string())?;
        self.model.zero_grad();
        let loss = match &self.spec_augment {
            None => pipeline::ctc_pass(&mut self.model, samples),
            Some(aug) => {
                // One stream per utterance of the share: the masks depend
                // on the task's seed only, so a redone share masks alike.
                let masked = samples
                    .iter()
                    .enumerate()
                    .map(|(i, e)| {
                        aug.augmented(e, seed ^ (i as u64).wrapping_mul(MASK_SEED_STRIDE))
                    })
                    .collect::<kiln_speech::Result<Vec<_>>>()
                    .map_err(|e| e.to_string())?;
                pipeline::ctc_pass(&mut self.model, &masked.iter().collect::<Vec<_>>())
            }
        }
        .map_err(|e| e.to_string())?;
        grads.copy_from_slice(&self.model.flat_grads());
        Ok(BatchStats {
            loss_sum: loss,
            samples: samples.len() as u64,
            correct: 0,
        })
    }

    fn evaluate(&mut self, params: &[f32], samples: &[&Example]) -> Result<BatchStats, String> {
        self.model
            .set_flat_params(params)
            .map_err(|e| e.to_string())?;
        let loss = pipeline::ctc_loss(&mut self.model, samples).map_err(|e| e.to_string())?;
        Ok(BatchStats {
            loss_sum: loss,
            samples: samples.len() as u64,
            correct: 0,
        })
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

/// Registers the speech source and the DS2 trainer (every process of a
/// cluster calls this).
pub fn register(r: &mut Registry) {
    r.register_source(SPEECH_SOURCE, read_speech_partition)
        .register_trainer(DS2_TRAINER, Ds2Worker::new);
}

/// Fields of [`SpeechJob`] a resumed run may change: its length, its
/// learning-rate plan, the dev split and the progress bar. The others must
/// match the checkpoint's.
const FREE_ON_RESUME: [&str; 6] = [
    "epochs",
    "learning_rate",
    "anneal",
    "dev",
    "progress",
    // Either placement resumes the other's checkpoints.
    "shard_replicas",
];

/// A DS2 training run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SpeechJob {
    /// Training split directory.
    pub train: PathBuf,
    /// Development split directory (WER/CER after every epoch), if any.
    pub dev: Option<PathBuf>,
    /// The network.
    pub model: Ds2Config,
    /// Epochs.
    pub epochs: u64,
    /// Global batch size (utterances).
    pub batch_size: usize,
    /// Adam's initial learning rate.
    pub learning_rate: f64,
    /// The learning rate is divided by this every epoch (DS2's annealing).
    pub anneal: f64,
    /// Seed of the initial weights and the data order.
    pub seed: u64,
    /// Partitions of the training set.
    pub partitions: u32,
    /// Parameter actors.
    pub shards: usize,
    /// Copies of each parameter shard on the executors; 0: the driver's
    /// parameter actors (runs recorded before this option ran that way).
    #[serde(default)]
    pub shard_replicas: usize,
    /// Longest utterance used for training, in seconds.
    pub max_seconds: f64,
    /// Feature masking of training utterances (none in runs recorded
    /// before this option).
    #[serde(default)]
    pub spec_augment: Option<SpecAugment>,
    /// Show a progress bar.
    pub progress: bool,
}

/// What a speech run produced.
pub struct SpeechReport {
    /// The trained model (weights and batch-norm statistics).
    pub model: Ds2<f32>,
    /// Dev WER and CER with the greedy decoder (if a dev split was given).
    pub dev: Option<(f64, f64)>,
    /// Training utterances per second.
    pub utterances_per_second: f64,
}

/// WER and CER of `model` on `examples` with `decoder`.
pub fn score(
    model: &mut Ds2<f32>,
    examples: &[Example],
    decoder: &Decoder<'_>,
) -> anyhow::Result<(f64, f64)> {
    let refs: Vec<&Example> = examples.iter().collect();
    let hyps = pipeline::transcribe(model, &refs, decoder)?;
    let pairs: Vec<(&str, &str)> = examples
        .iter()
        .zip(&hyps)
        .map(|(e, h)| (e.transcript.as_str(), h.as_str()))
        .collect();
    Ok((
        wer(pairs.iter().copied()).rate(),
        cer(pairs.iter().copied()).rate(),
    ))
}

/// Prefix of a speech run's settings in its checkpoints' meta
/// (`speech.<field>`): also what marks a checkpoint as a speech run's.
const SETTINGS_PREFIX: &str = "speech";

/// The DS2 model of a checkpoint written by [`train_speech_on_cluster`],
/// with `params` and `buffers` (batch-norm statistics) loaded; `None` if
/// the checkpoint's settings are not a speech run's.
pub fn ds2_from_checkpoint(
    meta: &BTreeMap<String, String>,
    params: &[f32],
    buffers: &[f32],
) -> anyhow::Result<Option<Ds2<f32>>> {
    let prefix = format!("{SETTINGS_PREFIX}.");
    if !meta.keys().any(|k| k.starts_with(&prefix)) {
        return Ok(None);
    }
    let job = meta
        .get(META_JOB)
        .context("the speech checkpoint does not record its job")?;
    let job: SpeechJob =
        serde_json::from_str(job).context("decoding the checkpoint's speech job")?;
    load_model(&job.model, params, buffers).map(Some)
}

fn load_model(config: &Ds2Config, params: &[f32], buffers: &[f32]) -> anyhow::Result<Ds2<f32>> {
    let mut model = config.init::<f32>(&mut StdRng::seed_from_u64(0))?;
    model.set_flat_params(params)?;
    if !buffers.is_empty() {
        model.set_flat_buffers(buffers)?;
    }
    Ok(model)
}

/// Trains DS2 on the driver's executors. Prints `RESUMED`, `SKIPPED`,
/// `CHECKPOINT`, one `EPOCH` line per epoch and a final `DEV-WER` line.
pub async fn train_speech_on_cluster(
    driver: &Driver,
    job: &SpeechJob,
    ckpt: &CheckpointOptions,
) -> anyhow::Result<SpeechReport> {
    let initial = job
        .model
        .init::<f32>(&mut StdRng::seed_from_u64(job.seed))
        .context("building DS2")?;
    let source = SpeechSource {
        split: job.train.clone(),
        max_seconds: job.max_seconds,
    };
    let train: Dataset<Example> = driver.source(SPEECH_SOURCE, &source, job.partitions)?;
    let dev = match &job.dev {
        Some(split) => read_split(split)?,
        None => Vec::new(),
    };
    let (lr0, anneal) = (job.learning_rate, job.anneal.max(1.0));
    let worker = Ds2WorkerConfig {
        model: job.model.clone(),
        spec_augment: job.spec_augment.clone(),
    };
    let mut spec = TrainSpec::new(
        DS2_TRAINER,
        &worker,
        job.batch_size,
        job.epochs,
        job.seed,
        lr0,
    )?;
    spec.learning_rate = std::sync::Arc::new(move |_, epoch| lr0 / anneal.powi(epoch as i32));
    spec.shards = job.shards.max(1);
    spec.init_buffers = initial.flat_buffers();
    spec.job_meta = BTreeMap::from([(META_JOB.to_string(), serde_json::to_string(job)?)]);
    spec.fixed_meta = fixed_settings(SETTINGS_PREFIX, job, &FREE_ON_RESUME)?;
    ckpt.apply(&mut spec)?;
    let adam = OptimizerConfig::Adam(AdamConfig {
        lr: lr0,
        ..AdamConfig::default()
    });
    place_shards(&mut spec, job.shard_replicas, &adam)?;
    let optimizer = optimizer_factory(adam);
    let mut trainer =
        DistributedTrainer::start(&train, spec, initial.flat_params(), optimizer).await?;
    ckpt.resume_if_asked(&mut trainer).await?;
    out_line(&format!(
        "TRAINING {} utterances, {} parameters, {} batches per epoch",
        trainer.samples(),
        trainer.params().len(),
        trainer.batches_per_epoch()
    ));
    let bar = iteration_bar(&trainer, job.epochs, job.progress);
    let started = Instant::now();
    let mut trained = 0u64;
    let mut epoch_stats = BatchStats::default();
    let mut epoch_start = Instant::now();
    let mut last_dev = None;
    while !trainer.is_done() {
        let it = trainer.step().await?;
        trained += it.stats.samples;
        epoch_stats.add(&it.stats);
        bar.inc(1);
        bar.set_message(format!("ctc {:.3}", it.stats.mean_loss()));
        report_checkpoint(&bar, &it);
        if it.epoch_ended {
            let secs = epoch_start.elapsed().as_secs_f64();
            let mut line = format!(
                "EPOCH {} ctc={:.4} lr={:.2e} utt_per_s={:.1}",
                it.position.epoch,
                epoch_stats.mean_loss(),
                it.learning_rate,
                epoch_stats.samples as f64 / secs.max(1e-9)
            );
            if !dev.is_empty() {
                // Gathered from the executors if they host the shards.
                trainer.current_params().await?;
                let mut model = load_model(&job.model, trainer.params(), trainer.buffers())?;
                let (w, c) = score(&mut model, &dev, &Decoder::Greedy)?;
                line.push_str(&format!(" dev_wer={w:.4} dev_cer={c:.4}"));
                last_dev = Some((w, c));
            }
            bar.suspend(|| out_line(&line));
            epoch_stats = BatchStats::default();
            epoch_start = Instant::now();
        }
    }
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    trainer.current_params().await?;
    let model = load_model(&job.model, trainer.params(), trainer.buffers())?;
    trainer.finish().await?;
    if let Some((w, c)) = last_dev {
        out_line(&format!("DEV-WER {w:.4} DEV-CER {c:.4} (greedy)"));
    }
    Ok(SpeechReport {
        model,
        dev: last_dev,
        utterances_per_second: trained as f64 / seconds.max(1e-9),
    })
}

/// Reads a split into examples on this process (for evaluation),
/// reporting skipped files on stderr.
pub fn read_split(split: &Path) -> anyhow::Result<Vec<Example>> {
    let examples = read_speech_partition(
        &SpeechSource {
            split: split.to_path_buf(),
            max_seconds: f64::INFINITY,
        },
        0,
        1,
    )
    .map_err(anyhow::Error::msg)?;
    if examples.is_empty() {
        bail!("no usable utterance in {}", split.display());
    }
    Ok(examples)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TINY: &str = include_str!("../apps/speech/configs/ds2_tiny.toml");

    fn fixture_split() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("apps/speech/tests/fixtures/librispeech/mini")
    }

    #[test]
    fn partitions_cover_the_split_and_a_pass_yields_gradients() {
        let source = SpeechSource {
            split: fixture_split(),
            max_seconds: 60.0,
        };
        let all = read_speech_partition(&source, 0, 1).unwrap();
        assert_eq!(all.len(), 2);
        let a = read_speech_partition(&source, 0, 2).unwrap();
        let b = read_speech_partition(&source, 1, 2).unwrap();
        assert_eq!([a, b].concat(), all);

        let config = Ds2Config::from_toml_str(TINY).unwrap();
        let mut w = Ds2Worker::new(&Ds2WorkerConfig {
            model: config.clone(),
            spec_augment: None,
        })
        .unwrap();
        let init = config.init::<f32>(&mut StdRng::seed_from_u64(3)).unwrap();
        let params = init.flat_params();
        let refs: Vec<&Example> = all.iter().collect();
        w.set_buffers(&init.flat_buffers()).unwrap();
        let mut g = vec![0.0; w.num_params()];
        let s = w.gradients(&params, &refs, 0, &mut g).unwrap();
        assert_eq!(s.samples, 2);
        assert!(s.loss_sum > 0.0);
        assert!(g.iter().any(|x| *x != 0.0));
        // Training updated the running statistics.
        assert_ne!(w.buffers(), init.flat_buffers());
        assert!(w.set_buffers(&[1.0]).is_err());

        // With masking, the gradient depends on the task's seed only.
        let masked = Ds2WorkerConfig {
            model: config.clone(),
            spec_augment: Some(SpecAugment::default()),
        };
        let grads = |seed: u64| {
            let mut w = Ds2Worker::new(&masked).unwrap();
            w.set_buffers(&init.flat_buffers()).unwrap();
            let mut g = vec![0.0; w.num_params()];
            w.gradients(&params, &refs, seed, &mut g).unwrap();
            g
        };
        assert_eq!(grads(5), grads(5));
        assert_ne!(grads(5), grads(6));
        assert_ne!(grads(0), g, "masking changed nothing");
        let bad = Ds2WorkerConfig {
            model: config,
            spec_augment: Some(SpecAugment {
                max_time_fraction: -1.0,
                ..SpecAugment::default()
            }),
        };
        assert!(Ds2Worker::new(&bad).is_err());
    }
}

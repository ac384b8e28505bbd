//! The command-line form of every built-in job kind, shared by `kiln
//! submit`, `kiln local`, `kiln speech train` and `kiln detect train`:
//! flags become the kind's settings (JSON) plus what the client does with
//! the result (where to write the fetched model, whether to draw a
//! progress bar). Files given on the command line that configure a job
//! (`--config`) are read here, on the client, and travel inside the
//! settings; data paths name files on the driver's host.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::builder::TypedValueParser as _;
use clap::{Args, Subcommand};
use kiln_detection::train::TrainConfig;
use kiln_nn::bounds::open_closed;
use kiln_speech::augment::SpecAugment;
use kiln_speech::ds2::Ds2Config;
use kiln_speech::wave_augment::WaveAugment;

use crate::digits::DigitsModel;
use crate::jobs::detection::DetectionSettings;
use crate::jobs::digits::DigitsSettings;
use crate::jobs::fault_demo::PanicThenCountSettings;
use crate::jobs::speech::{SpeechSettings, DS2_SMALL, MAX_SECONDS};
use crate::jobs::word_count::{WordCountSettings, MAX_SLOW_MS};
use crate::jobs::{
    encode_settings, Result, MAX_BATCH_SIZE, MAX_EPOCHS, MAX_LEARNING_RATE, MAX_PARTITIONS,
};
use crate::training::resume::ResumeSettings;
use crate::training::{
    CheckpointSettings, RunSettings, TrainingSettings, KEEP_CHECKPOINTS, RESUME_KIND,
    SHARD_REPLICAS,
};

/// A finite number (what clap's `f64` parser would let through as NaN or
/// infinity is refused here, naming the value).
pub fn finite(s: &str) -> std::result::Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        Ok(v) => Err(format!("{v} is not a finite number")),
        Err(e) => Err(e.to_string()),
    }
}

/// A clap value parser for a finite number in `range`: NaN, infinities
/// and values outside are refused naming the value and the range (clap
/// adds the flag), e.g. `--lr 0`: `must be a finite number in (0, 10]`.
pub fn finite_in<R>(range: R) -> impl Fn(&str) -> std::result::Result<f64, String> + Clone
where
    R: std::ops::RangeBounds<f64> + Clone + Send + Sync + 'static,
{
    move |s: &str| {
        let v = finite(s)?;
        kiln_nn::bounds::check_number("value", v, range.clone())
            .map_err(|e| format!("must be {}", e.expected))
    }
}

pub use crate::training::{MAX_KEEP_CHECKPOINTS, MAX_SHARDS, MAX_SHARD_REPLICAS};

/// A clap value parser for a global batch size in `[1, 65536]`.
pub fn batch_size(s: &str) -> std::result::Result<usize, String> {
    let n: usize = s.trim().parse().map_err(|e| format!("{e}"))?;
    kiln_nn::bounds::check("value", n, 1..=MAX_BATCH_SIZE)
        .map_err(|e| format!("must be {}", e.expected))
}

/// A job as a client submits it.
#[derive(Debug, Clone)]
pub struct Submission {
    /// The kind.
    pub kind: String,
    /// Its settings (JSON).
    pub settings: String,
    /// Fetch this output of the finished job into this path.
    pub fetch: Option<(String, PathBuf)>,
    /// Draw a progress bar.
    pub progress: bool,
    /// The file the settings were read from (`--settings @FILE`), named
    /// when they are refused.
    pub source: Option<PathBuf>,
}

impl Submission {
    /// Checks, before anything is submitted, that the file the output is
    /// fetched into can be written.
    pub fn check_outputs(&self) -> std::result::Result<(), crate::output_paths::UnwritableOutput> {
        match &self.fetch {
            Some((_, path)) => crate::output_paths::check_output_file("--out", path),
            None => Ok(()),
        }
    }
}

/// Where the parameter shards live.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardsOn {
    /// Hosted by the executors (BigDL's AllReduceParameter placement).
    Executors,
    /// Parameter actors in the driver's process.
    Driver,
}

/// The run flags every training kind takes.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Partitions of the training set (default: the executors' task slots
    /// when the job starts; keep it fixed to reproduce a run on another
    /// cluster shape).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_PARTITIONS)))]
    pub partitions: Option<u32>,
    /// Parameter shards (default: the kind's), at most 4096.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=MAX_SHARDS as u64).map(|n| n as usize))]
    pub shards: Option<usize>,
    /// Where the parameter shards live: on the executors (each shard on
    /// `--shard-replicas` of them; gradients and weights go executor to
    /// executor) or with the driver (every gradient passes through it).
    #[arg(long, value_enum, default_value_t = ShardsOn::Executors)]
    pub shards_on: ShardsOn,
    /// Copies of each shard with `--shards-on executors` (2 survives the
    /// loss of any one executor; 1 does not).
    #[arg(long, default_value_t = SHARD_REPLICAS as u64, value_parser = clap::value_parser!(u64).range(1..=MAX_SHARD_REPLICAS as u64))]
    pub shard_replicas: u64,
    /// Checkpoint store on the driver's host (a checkpoint at every epoch
    /// end).
    #[arg(long, value_name = "DIR")]
    pub checkpoint_dir: Option<PathBuf>,
    /// Also checkpoint every N iterations.
    #[arg(long, value_name = "N", requires = "checkpoint_dir", value_parser = clap::value_parser!(u64).range(1..))]
    pub checkpoint_every: Option<u64>,
    /// Checkpoints to keep (0 keeps all).
    #[arg(long, value_name = "K", default_value_t = KEEP_CHECKPOINTS, value_parser = clap::value_parser!(u64).range(0..=MAX_KEEP_CHECKPOINTS as u64).map(|n| n as usize))]
    pub keep_checkpoints: usize,
    /// Continue from the newest valid checkpoint in --checkpoint-dir (the
    /// run's settings must match the checkpoint's but for its length and
    /// learning-rate plan).
    #[arg(long, requires = "checkpoint_dir")]
    pub resume: bool,
    /// Executors fetch the data from the driver's host (verified, cached
    /// by content) even where they have the path; without it they fetch
    /// only files they lack.
    #[arg(long)]
    pub stage: bool,
    /// Write TensorBoard event files (loss, learning rate, throughput,
    /// evaluation metrics) into a run directory per job under DIR, on the
    /// driver's host.
    #[arg(long, value_name = "DIR")]
    pub tensorboard: Option<PathBuf>,
}

impl RunArgs {
    /// The run's settings.
    pub fn settings(&self) -> RunSettings {
        RunSettings {
            partitions: self.partitions,
            shards: self.shards,
            shard_replicas: match self.shards_on {
                ShardsOn::Executors => self.shard_replicas as usize,
                ShardsOn::Driver => 0,
            },
            checkpoint: CheckpointSettings {
                dir: self.checkpoint_dir.clone(),
                every_iterations: self.checkpoint_every,
                keep_last: self.keep_checkpoints,
                resume: self.resume,
            },
            stage: self.stage,
            tensorboard: self.tensorboard.clone(),
        }
    }
}

/// Options of `digits`.
#[derive(Args, Debug, Clone)]
pub struct DigitsArgs {
    /// Network to train.
    #[arg(long, value_enum, default_value_t = DigitsModel::Cnn)]
    pub model: DigitsModel,
    /// Epochs.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=MAX_EPOCHS as u64))]
    pub epochs: u64,
    /// Global mini-batch size (the same on any number of executors).
    #[arg(long, default_value_t = 32, value_parser = batch_size)]
    pub batch_size: usize,
    /// Learning rate (SGD, momentum 0.9).
    #[arg(long, default_value_t = 0.05, value_parser = finite_in(open_closed(0.0, MAX_LEARNING_RATE)))]
    pub lr: f64,
    /// Seed of the weights and the data order.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// The digits CSV (gzip) on the driver's host; defaults to
    /// data/digits/digits.csv.gz.
    #[arg(long)]
    pub data: Option<PathBuf>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub run: RunArgs,
    /// Fetch the trained model into this file (safetensors).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Hide the progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

/// Options of `speech train`.
#[derive(Args, Debug, Clone)]
pub struct SpeechTrainArgs {
    /// Corpus root holding `train-*` and `dev-*` splits (LibriSpeech
    /// layout), or one split directory, on the driver's host.
    #[arg(long)]
    pub data: PathBuf,
    /// Training split under `--data` (default: the first `train*` directory).
    #[arg(long)]
    pub train_split: Option<String>,
    /// Dev split under `--data` (default: the first `dev*` directory, if any).
    #[arg(long)]
    pub dev_split: Option<String>,
    /// DS2 configuration (TOML, read here); default: the small configuration.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Epochs.
    #[arg(long, default_value_t = 40, value_parser = clap::value_parser!(u64).range(1..=MAX_EPOCHS as u64))]
    pub epochs: u64,
    /// Global batch size (utterances).
    #[arg(long, default_value_t = 8, value_parser = batch_size)]
    pub batch_size: usize,
    /// Adam's initial learning rate.
    #[arg(long, default_value_t = 1e-3, value_parser = finite_in(open_closed(0.0, MAX_LEARNING_RATE)))]
    pub lr: f64,
    /// Divide the learning rate by this after every epoch (1 to 100; 1
    /// keeps it constant).
    #[arg(long, default_value_t = 1.05, value_parser = finite_in(1.0..=100.0))]
    pub anneal: f64,
    /// Seed of the weights and the data order.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Skip training utterances longer than this (seconds, at most 3600).
    #[arg(long, default_value_t = 20.0, value_parser = finite_in(open_closed(0.0, MAX_SECONDS)))]
    pub max_seconds: f64,
    /// Share of each split's files that may be unusable (skipped, each
    /// named) before the run fails, in [0, 1].
    #[arg(long, default_value_t = 0.0, value_parser = finite_in(0.0..=1.0))]
    pub max_bad_share: f64,
    /// Mask bands of frequency bins and runs of frames of every training
    /// utterance (SpecAugment without time warping: two frequency masks of
    /// up to 27 bins, two time masks of up to 40 frames and a fifth of the
    /// utterance).
    #[arg(long)]
    pub spec_augment: bool,
    /// Speed-perturb every training utterance by 0.9, 1 or 1.1 (resampled,
    /// so tempo and pitch change together), drawn afresh every epoch.
    #[arg(long)]
    pub speed_perturb: bool,
    /// Add white, pink or brown noise at 5 to 25 dB SNR to half of the
    /// training utterances, drawn afresh every epoch.
    #[arg(long)]
    pub noise: bool,
    /// SortaGrad: the first epoch goes from the shortest utterance to the
    /// longest, later ones in random order.
    #[arg(long)]
    pub sorta_grad: bool,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub run: RunArgs,
    /// Where to write the trained model.
    #[arg(long, default_value = "ds2.safetensors")]
    pub out: PathBuf,
    /// Hide the progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

/// Options of `detect train` on a cluster.
#[derive(Args, Debug, Clone)]
pub struct DetectTrainArgs {
    /// VOC-layout directory (JPEGImages, Annotations, ImageSets/Main) on
    /// the driver's host.
    #[arg(long)]
    pub voc: PathBuf,
    /// Training settings (JSON, read here; see
    /// `kiln_detection::train::TrainConfig`).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Where to write the model (rewritten after every epoch).
    #[arg(long, default_value = "ssd.safetensors")]
    pub out: PathBuf,
    /// Overrides the config's number of epochs.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=MAX_EPOCHS as u64).map(|n| n as usize))]
    pub epochs: Option<usize>,
    /// Overrides the config's model preset (tiny, small, ssd300, ssd512).
    #[arg(long)]
    pub preset: Option<String>,
    /// Overrides the config's training split.
    #[arg(long)]
    pub split: Option<String>,
    /// Overrides the config's share of unusable images that may be
    /// skipped (each named) before the run fails, in [0, 1].
    #[arg(long, value_parser = finite_in(0.0..=1.0))]
    pub max_bad_share: Option<f64>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub run: RunArgs,
    /// Hide the progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

impl DetectTrainArgs {
    /// The training settings: the config file's, with the overrides.
    pub fn train_config(&self) -> anyhow::Result<TrainConfig> {
        let mut cfg = match &self.config {
            Some(p) => TrainConfig::from_file(p)?,
            None => TrainConfig::default(),
        };
        if let Some(e) = self.epochs {
            cfg.epochs = e;
        }
        if let Some(p) = &self.preset {
            cfg.preset = p.clone();
        }
        if let Some(s) = &self.split {
            cfg.split = s.clone();
        }
        if let Some(share) = self.max_bad_share {
            cfg.max_bad_share = share;
        }
        cfg.validate()
            .context("the training settings with the command line's overrides")?;
        Ok(cfg)
    }
}

/// Options of `word-count`.
#[derive(Args, Debug, Clone)]
pub struct WordCountArgs {
    /// A text file or a directory of them, on the driver's host.
    #[arg(long)]
    pub input: PathBuf,
    /// Partitions.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_PARTITIONS)))]
    pub partitions: u32,
    /// Sleep this long in each source partition (fault-injection demos).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=MAX_SLOW_MS as u64))]
    pub slow_ms: u64,
    /// Fetch the counts (`word<TAB>count` lines, sorted by word) into this
    /// file.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Executors fetch the input from the driver's host even where they
    /// have the path.
    #[arg(long)]
    pub stage: bool,
}

/// Options of `panic-then-count`.
#[derive(Args, Debug, Clone)]
pub struct PanicArgs {
    /// Partitions.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_PARTITIONS)))]
    pub partitions: u32,
}

/// Options of `resume`.
#[derive(Args, Debug, Clone)]
pub struct ResumeArgs {
    /// The run's checkpoint store, on the driver's host.
    #[arg(long)]
    pub dir: PathBuf,
    /// Fetch the trained model into this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Hide the progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

/// Options of a job of any registered kind.
#[derive(Args, Debug, Clone)]
pub struct AnyJobArgs {
    /// The kind's name.
    #[arg(long)]
    pub kind: String,
    /// Its settings: JSON, or `@FILE` to read them from a file.
    #[arg(long)]
    pub settings: String,
    /// Fetch output `model` of the finished job into this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Hide the progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

/// `speech` jobs.
#[derive(Subcommand, Debug, Clone)]
pub enum SpeechJob {
    /// Train Deep Speech 2 with CTC.
    Train(SpeechTrainArgs),
}

/// `detect` jobs.
#[derive(Subcommand, Debug, Clone)]
pub enum DetectJob {
    /// Train SSD with the MultiBox loss.
    Train(DetectTrainArgs),
}

/// A job to run, as subcommands.
#[derive(Subcommand, Debug, Clone)]
pub enum JobCommand {
    /// Train the digits CNN (or LeNet-5) and report held-out accuracy.
    Digits(DigitsArgs),
    /// Deep Speech 2.
    Speech {
        #[command(subcommand)]
        #[allow(missing_docs)]
        command: SpeechJob,
    },
    /// SSD object detection.
    Detect {
        #[command(subcommand)]
        #[allow(missing_docs)]
        command: DetectJob,
    },
    /// Count the words of text files.
    WordCount(WordCountArgs),
    /// Fault-injection demo: a job whose tasks all panic, then a count.
    PanicThenCount(PanicArgs),
    /// Continue a training run from its checkpoint store on the driver's
    /// host (the job and its settings come from the checkpoint).
    Resume(ResumeArgs),
    /// A job of any registered kind, with JSON settings.
    Job(AnyJobArgs),
}

fn training<J: serde::Serialize>(kind: &str, job: J, run: &RunArgs) -> Result<String> {
    encode_settings(
        kind,
        &TrainingSettings {
            job,
            run: run.settings(),
        },
    )
}

fn model_out(out: Option<&Path>) -> Option<(String, PathBuf)> {
    out.map(|p| ("model".to_string(), p.to_path_buf()))
}

impl SpeechTrainArgs {
    /// The job's settings.
    pub fn settings(&self) -> anyhow::Result<SpeechSettings> {
        let model = match &self.config {
            Some(path) => Ds2Config::from_file(path)?,
            None => Ds2Config::from_toml_str(DS2_SMALL)?,
        };
        Ok(SpeechSettings {
            data: self.data.clone(),
            train_split: self.train_split.clone(),
            dev_split: self.dev_split.clone(),
            model,
            epochs: self.epochs,
            batch_size: self.batch_size,
            learning_rate: self.lr,
            anneal: self.anneal,
            seed: self.seed,
            max_seconds: self.max_seconds,
            spec_augment: self.spec_augment.then(SpecAugment::default),
            wave_augment: match (self.speed_perturb, self.noise) {
                (false, false) => None,
                (true, false) => Some(WaveAugment::speed_only()),
                (false, true) => Some(WaveAugment::noise_only()),
                (true, true) => Some(WaveAugment::default()),
            },
            sorta_grad: self.sorta_grad,
            max_bad_share: self.max_bad_share,
        })
    }

    /// The submission.
    pub fn submission(&self) -> anyhow::Result<Submission> {
        Ok(Submission {
            kind: crate::jobs::speech::KIND.into(),
            settings: training(crate::jobs::speech::KIND, self.settings()?, &self.run)?,
            fetch: model_out(Some(&self.out)),
            progress: !self.no_progress,
            source: None,
        })
    }
}

impl DetectTrainArgs {
    /// The submission.
    pub fn submission(&self) -> anyhow::Result<Submission> {
        let settings = DetectionSettings {
            voc: self.voc.clone(),
            classes: None,
            train: self.train_config()?,
        };
        Ok(Submission {
            kind: crate::jobs::detection::KIND.into(),
            settings: training(crate::jobs::detection::KIND, settings, &self.run)?,
            fetch: model_out(Some(&self.out)),
            progress: !self.no_progress,
            source: None,
        })
    }
}

impl DigitsArgs {
    /// The job's settings.
    pub fn settings(&self) -> DigitsSettings {
        DigitsSettings {
            data: self
                .data
                .clone()
                .unwrap_or_else(crate::digits::default_data_path),
            model: self.model,
            epochs: self.epochs,
            batch_size: self.batch_size,
            learning_rate: self.lr,
            seed: self.seed,
            ..DigitsSettings::default()
        }
    }
}

impl JobCommand {
    /// What the client submits.
    pub fn submission(&self) -> anyhow::Result<Submission> {
        Ok(match self {
            JobCommand::Digits(a) => Submission {
                kind: crate::jobs::digits::KIND.into(),
                settings: training(crate::jobs::digits::KIND, a.settings(), &a.run)?,
                fetch: model_out(a.out.as_deref()),
                progress: !a.no_progress,
                source: None,
            },
            JobCommand::Speech {
                command: SpeechJob::Train(a),
            } => a.submission()?,
            JobCommand::Detect {
                command: DetectJob::Train(a),
            } => a.submission()?,
            JobCommand::WordCount(a) => Submission {
                kind: crate::jobs::word_count::KIND.into(),
                settings: encode_settings(
                    crate::jobs::word_count::KIND,
                    &WordCountSettings {
                        input: a.input.clone(),
                        partitions: a.partitions,
                        slow_ms: a.slow_ms,
                        stage: a.stage,
                    },
                )?,
                fetch: a.output.clone().map(|p| ("counts".to_string(), p)),
                progress: false,
                source: None,
            },
            JobCommand::PanicThenCount(a) => Submission {
                kind: crate::jobs::fault_demo::KIND.into(),
                settings: encode_settings(
                    crate::jobs::fault_demo::KIND,
                    &PanicThenCountSettings {
                        partitions: a.partitions,
                    },
                )?,
                fetch: None,
                progress: false,
                source: None,
            },
            JobCommand::Resume(a) => Submission {
                kind: RESUME_KIND.into(),
                settings: encode_settings(
                    RESUME_KIND,
                    &ResumeSettings {
                        checkpoint_dir: a.dir.clone(),
                    },
                )?,
                fetch: model_out(a.out.as_deref()),
                progress: !a.no_progress,
                source: None,
            },
            JobCommand::Job(a) => {
                let source = a.settings.strip_prefix('@').map(PathBuf::from);
                let settings = match &source {
                    Some(file) => std::fs::read_to_string(file)
                        .with_context(|| format!("reading the settings file {}", file.display()))?,
                    None => a.settings.clone(),
                };
                Submission {
                    kind: a.kind.clone(),
                    settings,
                    fetch: model_out(a.out.as_deref()),
                    progress: !a.no_progress,
                    source,
                }
            }
        })
    }
}

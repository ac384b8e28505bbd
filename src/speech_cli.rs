//! `kiln speech …`: the Deep Speech 2 commands: training on a local
//! cluster, evaluation (WER/CER), transcription, scoring transcripts and
//! building an n-gram language model.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use kiln_runtime::{LocalCluster, Registry};
use kiln_speech::augment::SpecAugment;
use kiln_speech::ds2::{Ds2, Ds2Config};
use kiln_speech::lm::NgramLm;
use kiln_speech::pipeline::{self, Decoder, Example};

use crate::run_checkpoints::CheckpointArgs;
use crate::shard_placement::ShardArgs;
use crate::speech_cluster::{read_split, score, train_speech_on_cluster, SpeechJob};

/// `kiln speech` subcommands.
#[derive(Debug, Subcommand)]
pub enum SpeechCommand {
    /// Train DS2 with CTC on a local cluster (executor processes on
    /// 127.0.0.1); prints a line per epoch with the dev WER/CER.
    Train(TrainArgs),
    /// WER and CER of a trained model on a LibriSpeech-layout split.
    Eval(EvalArgs),
    /// Print `<utterance-id> TEXT` for audio files or LibriSpeech
    /// directories.
    Transcribe(TranscribeArgs),
    /// Score hypothesis transcripts against references (both in LibriSpeech
    /// trans.txt format: `<utterance-id> TEXT` per line); prints WER and CER.
    Score(ScoreArgs),
    /// Build an ARPA n-gram language model (interpolated Witten-Bell) from
    /// trans.txt files, for the prefix beam-search decoder.
    Lm(LmArgs),
}

/// The small CPU-friendly DS2 (apps/speech/configs/ds2_small.toml).
const DS2_SMALL: &str = include_str!("../apps/speech/configs/ds2_small.toml");

/// Arguments of `kiln speech train`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Corpus root holding `train-*` and `dev-*` splits (LibriSpeech
    /// layout), or one split directory.
    #[arg(long)]
    pub data: PathBuf,
    /// Training split under `--data` (default: the first `train*` directory).
    #[arg(long)]
    pub train_split: Option<String>,
    /// Dev split under `--data` (default: the first `dev*` directory, if any).
    #[arg(long)]
    pub dev_split: Option<String>,
    /// Executor processes of the local cluster.
    #[arg(long, default_value_t = 2)]
    pub executors: usize,
    /// Executors as tasks in this process (tests, debugging).
    #[arg(long)]
    pub in_process: bool,
    /// Default: all cores for each executor.
    #[command(flatten)]
    pub threads: crate::local_run::ExecutorThreadsArgs,
    /// DS2 configuration (TOML); default: the small configuration.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Epochs.
    #[arg(long, default_value_t = 40)]
    pub epochs: u64,
    /// Global batch size (utterances).
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Adam's initial learning rate.
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// Divide the learning rate by this after every epoch.
    #[arg(long, default_value_t = 1.05)]
    pub anneal: f64,
    /// Seed of the weights and the data order.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Partitions of the training set (default: the executor count; keep it
    /// fixed to reproduce a run on a different cluster).
    #[arg(long)]
    pub partitions: Option<u32>,
    /// Parameter actors.
    #[arg(long, default_value_t = 2)]
    pub shards: usize,
    /// Where the parameter shards live.
    #[command(flatten)]
    pub placement: ShardArgs,
    /// Skip training utterances longer than this (seconds).
    #[arg(long, default_value_t = 20.0)]
    pub max_seconds: f64,
    /// Mask bands of frequency bins and runs of frames of every training
    /// utterance (SpecAugment without time warping: two frequency masks of
    /// up to 27 bins, two time masks of up to 40 frames and a fifth of the
    /// utterance).
    #[arg(long)]
    pub spec_augment: bool,
    /// Checkpoints and resume.
    #[command(flatten)]
    pub checkpoints: CheckpointArgs,
    /// Where to save the trained model.
    #[arg(long, default_value = "ds2.safetensors")]
    pub out: PathBuf,
    /// Hide the progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

/// Decoder options shared by `eval` and `transcribe`.
#[derive(Debug, Args)]
pub struct DecodeArgs {
    /// ARPA language model: prefix beam search with it (greedy without).
    #[arg(long)]
    pub lm: Option<PathBuf>,
    /// LM weight.
    #[arg(long, default_value_t = 0.8)]
    pub alpha: f64,
    /// Word insertion bonus.
    #[arg(long, default_value_t = 1.0)]
    pub beta: f64,
    /// Beam width.
    #[arg(long, default_value_t = 32)]
    pub beam: usize,
}

/// Arguments of `kiln speech eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// A split directory, or a corpus root (its first `dev*` split).
    #[arg(long)]
    pub data: PathBuf,
    /// Model saved by `kiln speech train`.
    #[arg(long)]
    pub model: PathBuf,
    /// Decoder options.
    #[command(flatten)]
    pub decode: DecodeArgs,
    /// Print one JSON line instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `kiln speech transcribe`.
#[derive(Debug, Args)]
pub struct TranscribeArgs {
    /// Model saved by `kiln speech train`.
    #[arg(long)]
    pub model: PathBuf,
    /// Decoder options.
    #[command(flatten)]
    pub decode: DecodeArgs,
    /// Audio files (WAV/FLAC; the id is the file stem) or LibriSpeech
    /// split directories.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
}

/// Arguments of `kiln speech score`.
#[derive(Debug, Args)]
pub struct ScoreArgs {
    /// Reference transcripts.
    #[arg(long)]
    pub reference: PathBuf,
    /// Hypothesis transcripts.
    #[arg(long)]
    pub hypothesis: PathBuf,
    /// Print one JSON line instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `kiln speech lm`.
#[derive(Debug, Args)]
pub struct LmArgs {
    /// N-gram order.
    #[arg(long, default_value_t = 3)]
    pub order: usize,
    /// Output ARPA file.
    #[arg(long)]
    pub out: PathBuf,
    /// trans.txt files to learn from.
    #[arg(required = true)]
    pub transcripts: Vec<PathBuf>,
}

/// Runs a `kiln speech` subcommand; `registry` gives the named functions
/// every process of a cluster registers (the binary's).
pub fn run(cmd: &SpeechCommand, registry: fn() -> Arc<Registry>) -> anyhow::Result<()> {
    match cmd {
        SpeechCommand::Train(a) => train(a, registry),
        SpeechCommand::Eval(a) => eval(a),
        SpeechCommand::Transcribe(a) => transcribe(a),
        SpeechCommand::Score(a) => {
            let report = kiln_speech::score::score_files(&a.reference, &a.hypothesis)
                .with_context(|| {
                    format!(
                        "scoring {} against {}",
                        a.hypothesis.display(),
                        a.reference.display()
                    )
                })?;
            if a.json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!("{}", report.summary());
            }
            Ok(())
        }
        SpeechCommand::Lm(a) => {
            let files: Vec<&std::path::Path> = a.transcripts.iter().map(PathBuf::as_path).collect();
            kiln_speech::lm::build_arpa_from_transcripts(&files, a.order, &a.out)
                .with_context(|| format!("building {}", a.out.display()))?;
            println!("wrote {}-gram model to {}", a.order, a.out.display());
            Ok(())
        }
    }
}

/// The first subdirectory of `root` whose name starts with `prefix`.
fn find_split(root: &Path, prefix: &str) -> anyhow::Result<Option<PathBuf>> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root)
        .with_context(|| format!("reading {}", root.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_dir()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(prefix))
        })
        .collect();
    dirs.sort();
    Ok(dirs.into_iter().next())
}

fn split_dir(root: &Path, name: &Option<String>, prefix: &str) -> anyhow::Result<Option<PathBuf>> {
    match name {
        Some(n) => {
            let dir = root.join(n);
            if !dir.is_dir() {
                bail!("split {} does not exist", dir.display());
            }
            Ok(Some(dir))
        }
        None => find_split(root, prefix),
    }
}

fn train(a: &TrainArgs, registry: fn() -> Arc<Registry>) -> anyhow::Result<()> {
    let config = crate::local_run::local_config(a.executors, a.in_process, a.threads.or(None))?;
    let model = match &a.config {
        Some(path) => Ds2Config::from_file(path)?,
        None => Ds2Config::from_toml_str(DS2_SMALL)?,
    };
    let train_dir = split_dir(&a.data, &a.train_split, "train")?.unwrap_or_else(|| a.data.clone());
    let dev = split_dir(&a.data, &a.dev_split, "dev")?;
    let job = SpeechJob {
        train: train_dir,
        dev,
        model,
        epochs: a.epochs,
        batch_size: a.batch_size,
        learning_rate: a.lr,
        anneal: a.anneal,
        seed: a.seed,
        partitions: a.partitions.unwrap_or(a.executors as u32).max(1),
        shards: a.shards,
        shard_replicas: a.placement.replicas(),
        max_seconds: a.max_seconds,
        spec_augment: a.spec_augment.then(SpecAugment::default),
        progress: !a.no_progress,
    };
    let ckpt = a.checkpoints.options();
    let rt = crate::local_run::tokio_runtime()?;
    rt.block_on(async {
        let cluster = LocalCluster::start(config, registry()).await?;
        let result = async {
            let report = train_speech_on_cluster(cluster.driver()?, &job, &ckpt).await?;
            report
                .model
                .save(&a.out)
                .with_context(|| format!("saving {}", a.out.display()))?;
            println!(
                "MODEL {} ({:.1} utterances/s)",
                a.out.display(),
                report.utterances_per_second
            );
            anyhow::Ok(())
        }
        .await;
        cluster.shutdown().await;
        result
    })
}

fn load_lm(d: &DecodeArgs) -> anyhow::Result<Option<NgramLm>> {
    d.lm.as_ref()
        .map(|p| NgramLm::read_arpa(p).with_context(|| format!("reading {}", p.display())))
        .transpose()
}

fn decoder<'a>(d: &DecodeArgs, lm: &'a Option<NgramLm>) -> Decoder<'a> {
    match lm {
        Some(lm) => pipeline::lm_decoder(lm, d.beam.max(1), d.alpha, d.beta),
        None => Decoder::Greedy,
    }
}

fn load_model(path: &Path) -> anyhow::Result<Ds2<f32>> {
    Ds2::<f32>::load(path).with_context(|| format!("loading {}", path.display()))
}

fn eval(a: &EvalArgs) -> anyhow::Result<()> {
    let split = if a.data.is_dir() && list_is_split(&a.data) {
        a.data.clone()
    } else {
        find_split(&a.data, "dev")?
            .with_context(|| format!("{} has no dev* split", a.data.display()))?
    };
    let mut model = load_model(&a.model)?;
    let examples = read_split(&split)?;
    let lm = load_lm(&a.decode)?;
    let (w, c) = score(&mut model, &examples, &decoder(&a.decode, &lm))?;
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "split": split.display().to_string(),
                "utterances": examples.len(),
                "wer": w,
                "cer": c,
                "lm": a.decode.lm.as_ref().map(|p| p.display().to_string()),
            })
        );
    } else {
        println!(
            "WER {:.2}% CER {:.2}% on {} utterances of {}",
            100.0 * w,
            100.0 * c,
            examples.len(),
            split.display()
        );
    }
    Ok(())
}

/// True when `dir` looks like a split (holds `.trans.txt` files two levels
/// down) rather than a corpus root.
fn list_is_split(dir: &Path) -> bool {
    kiln_speech::corpus::list_utterances(dir, true).is_ok_and(|(u, _)| !u.is_empty())
}

fn transcribe(a: &TranscribeArgs) -> anyhow::Result<()> {
    let mut model = load_model(&a.model)?;
    let lm = load_lm(&a.decode)?;
    let dec = decoder(&a.decode, &lm);
    for path in &a.paths {
        let examples = if path.is_dir() {
            read_split(path)?
        } else {
            let id = path
                .file_stem()
                .and_then(|s| s.to_str())
                .with_context(|| format!("{}: no file name", path.display()))?;
            vec![Example::from_file(id, path)
                .with_context(|| format!("reading {}", path.display()))?]
        };
        let refs: Vec<&Example> = examples.iter().collect();
        let texts = pipeline::transcribe(&mut model, &refs, &dec)?;
        for (e, t) in examples.iter().zip(texts) {
            println!("{} {t}", e.id);
        }
    }
    Ok(())
}

//! `kiln speech …`: the Deep Speech 2 commands: training on a local
//! cluster (the `speech` job kind through the submission path),
//! evaluation (WER/CER), transcription, scoring transcripts and building
//! an n-gram language model.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::builder::TypedValueParser as _;
use clap::{Args, Subcommand};
use kiln_nn::bad_files::BadFiles;
use kiln_speech::decoder::{LmWeights, MAX_BEAM, MAX_WEIGHT};
use kiln_speech::ds2::Ds2;
use kiln_speech::lm::{NgramLm, MAX_ORDER};
use kiln_speech::pipeline::{self, Decoder, Example};
use kiln_speech::tune::{TuneGrid, TunedDecoder};

use super::cluster::{run_local, LocalClusterArgs};
use super::job_args::{finite_in, SpeechTrainArgs};
use crate::jobs::speech::{find_split, read_split, score};
use crate::jobs::JobKinds;

/// `kiln speech` subcommands.
#[derive(Debug, Subcommand)]
pub enum SpeechCommand {
    /// Train DS2 with CTC on a local cluster (executor processes on
    /// 127.0.0.1); prints a line per epoch with the dev WER/CER.
    Train(Box<TrainArgs>),
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
    /// Choose the LM decoder's weights (alpha, beta, unknown-word offset
    /// and letter score) on a development split by a grid search; writes
    /// them beside the model (`<model>.decoder.json`), where `eval` and
    /// `transcribe` find them.
    Tune(TuneArgs),
}

/// Arguments of `kiln speech tune`.
#[derive(Debug, Args)]
pub struct TuneArgs {
    /// A split directory, or a corpus root (its first `dev*` split). Use
    /// voices and words the model was not trained on.
    #[arg(long)]
    pub data: PathBuf,
    /// Model saved by `kiln speech train`.
    #[arg(long)]
    pub model: PathBuf,
    /// The ARPA language model to tune for.
    #[arg(long)]
    pub lm: PathBuf,
    /// Beam width of every decode, in [1, 10000].
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=MAX_BEAM as u64).map(|n| n as usize))]
    pub beam: usize,
    /// LM weights to try (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = TuneGrid::default().alphas, value_parser = finite_in(0.0..=MAX_WEIGHT))]
    pub alphas: Vec<f64>,
    /// Word bonuses to try.
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true, default_values_t = TuneGrid::default().betas, value_parser = finite_in(-MAX_WEIGHT..=MAX_WEIGHT))]
    pub betas: Vec<f64>,
    /// Unknown-word offsets to try.
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true, default_values_t = TuneGrid::default().unk_offsets, value_parser = finite_in(-MAX_WEIGHT..=MAX_WEIGHT))]
    pub unk_offsets: Vec<f64>,
    /// Unknown-word letter scores to try.
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true, default_values_t = TuneGrid::default().unk_letter_scores, value_parser = finite_in(-MAX_WEIGHT..=0.0))]
    pub unk_letter_scores: Vec<f64>,
    /// Where to write the result (default: `<model>.decoder.json`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Share of the split's files that may be unusable, in [0, 1].
    #[arg(long, default_value_t = 0.0, value_parser = finite_in(0.0..=1.0))]
    pub max_bad_share: f64,
}

/// Arguments of `kiln speech train`: a local cluster and the job.
#[derive(Debug, Args)]
pub struct TrainArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub cluster: LocalClusterArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub job: SpeechTrainArgs,
}

/// Decoder options shared by `eval` and `transcribe`.
#[derive(Debug, Args)]
pub struct DecodeArgs {
    /// ARPA language model: prefix beam search with it (greedy without).
    #[arg(long)]
    pub lm: Option<PathBuf>,
    /// LM weight, in [0, 1000]. Each weight not given comes from the
    /// model's tuned decoder (`<model>.decoder.json`, `kiln speech tune`)
    /// if there is one, else from the defaults (alpha 0.8, beta 1,
    /// unk offset 0, unk letter score -1.5, beam 32).
    #[arg(long, value_parser = finite_in(0.0..=MAX_WEIGHT))]
    pub alpha: Option<f64>,
    /// Word insertion bonus, in [-1000, 1000].
    #[arg(long, allow_negative_numbers = true, value_parser = finite_in(-MAX_WEIGHT..=MAX_WEIGHT))]
    pub beta: Option<f64>,
    /// Beam width, in [1, 10000].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=MAX_BEAM as u64).map(|n| n as usize))]
    pub beam: Option<usize>,
    /// Added to the score of a word the LM does not know (natural log), in
    /// [-1000, 1000]; negative values favour the LM's words.
    #[arg(long, allow_negative_numbers = true, value_parser = finite_in(-MAX_WEIGHT..=MAX_WEIGHT))]
    pub unk_offset: Option<f64>,
    /// Score of each letter of a word the LM does not know (natural log),
    /// in [-1000, 0]: long unknown words cost more, so words are never
    /// glued into one.
    #[arg(long, allow_negative_numbers = true, value_parser = finite_in(-MAX_WEIGHT..=0.0))]
    pub unk_letter_score: Option<f64>,
}

/// The beam width and weights of an LM decode: the flags given, else the
/// model's tuned decoder, else the defaults; says on stderr where a tuned
/// decoder came from.
fn lm_settings(d: &DecodeArgs, model: &Path) -> anyhow::Result<(usize, LmWeights)> {
    let path = TunedDecoder::path_for(model);
    let tuned = if path.exists() {
        let t = TunedDecoder::read(&path).with_context(|| format!("reading {}", path.display()))?;
        eprintln!(
            "using the tuned decoder weights of {} (chosen on {}; flags override them)",
            path.display(),
            t.split
        );
        Some(t)
    } else {
        None
    };
    let base = tuned
        .as_ref()
        .map_or_else(LmWeights::default, |t| t.weights);
    let beam = d
        .beam
        .or(tuned.as_ref().map(|t| t.beam_width))
        .unwrap_or(32);
    Ok((
        beam,
        LmWeights {
            alpha: d.alpha.unwrap_or(base.alpha),
            beta: d.beta.unwrap_or(base.beta),
            unk_offset: d.unk_offset.unwrap_or(base.unk_offset),
            unk_letter_score: d.unk_letter_score.unwrap_or(base.unk_letter_score),
        },
    ))
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
    /// Share of the split's files that may be unusable (skipped, each
    /// named) before the command fails, in [0, 1].
    #[arg(long, default_value_t = 0.0, value_parser = finite_in(0.0..=1.0))]
    pub max_bad_share: f64,
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
    /// Share of the files that may be unusable (skipped, each named)
    /// before the command fails, in [0, 1]; counted per split directory
    /// and over the audio files given.
    #[arg(long, default_value_t = 0.0, value_parser = finite_in(0.0..=1.0))]
    pub max_bad_share: f64,
    /// Audio files (WAV/FLAC; the id is the file stem), LibriSpeech split
    /// directories, or corpus roots (every split in them).
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
    /// N-gram order, in [1, 10].
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=MAX_ORDER as u64).map(|n| n as usize))]
    pub order: usize,
    /// Output ARPA file.
    #[arg(long)]
    pub out: PathBuf,
    /// trans.txt files to learn from.
    #[arg(required = true)]
    pub transcripts: Vec<PathBuf>,
}

/// Runs a `kiln speech` subcommand; training runs `kinds`' speech job.
pub fn run(cmd: &SpeechCommand, kinds: &JobKinds) -> anyhow::Result<()> {
    match cmd {
        SpeechCommand::Train(a) => {
            // Each executor gets all cores by default: DS2's convolutions
            // and GRUs gain from them.
            run_local(&a.cluster, None, Some(a.job.submission()?), kinds)
        }
        SpeechCommand::Eval(a) => eval(a),
        SpeechCommand::Transcribe(a) => transcribe(a),
        SpeechCommand::Tune(a) => tune(a),
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
            crate::output_paths::check_output_file("--out", &a.out)?;
            kiln_speech::lm::build_arpa_from_transcripts(&files, a.order, &a.out)
                .with_context(|| format!("building {}", a.out.display()))?;
            println!("wrote {}-gram model to {}", a.order, a.out.display());
            Ok(())
        }
    }
}

fn load_lm(d: &DecodeArgs) -> anyhow::Result<Option<NgramLm>> {
    d.lm.as_ref()
        .map(|p| NgramLm::read_arpa(p).with_context(|| format!("reading {}", p.display())))
        .transpose()
}

fn decoder<'a>(
    d: &DecodeArgs,
    lm: &'a Option<NgramLm>,
    model: &Path,
) -> anyhow::Result<Decoder<'a>> {
    Ok(match lm {
        Some(lm) => {
            let (beam, weights) = lm_settings(d, model)?;
            pipeline::lm_decoder(lm, beam, weights)
        }
        None => Decoder::Greedy,
    })
}

/// The split `data` names: itself, or a corpus root's first `dev*` split.
fn dev_split(data: &Path) -> anyhow::Result<PathBuf> {
    if data.is_dir() && list_is_split(data) {
        return Ok(data.to_path_buf());
    }
    find_split(data, "dev")
        .with_context(|| format!("reading {}", data.display()))?
        .map(|name| data.join(name))
        .with_context(|| format!("{} has no dev* split", data.display()))
}

fn tune(a: &TuneArgs) -> anyhow::Result<()> {
    let split = dev_split(&a.data)?;
    let grid = TuneGrid {
        alphas: a.alphas.clone(),
        betas: a.betas.clone(),
        unk_offsets: a.unk_offsets.clone(),
        unk_letter_scores: a.unk_letter_scores.clone(),
        beam_width: a.beam,
    };
    grid.points().context("the tuning grid")?;
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| TunedDecoder::path_for(&a.model));
    crate::output_paths::check_output_file("--out", &out)?;
    let lm = NgramLm::read_arpa(&a.lm).with_context(|| format!("reading {}", a.lm.display()))?;
    let mut model = load_model(&a.model)?;
    let (examples, skipped) = read_split(&split, a.max_bad_share, "--max-bad-share")?;
    if let Some(line) = skipped {
        eprintln!("{line}");
    }
    let refs: Vec<&Example> = examples.iter().collect();
    let log_probs = pipeline::log_probs(&mut model, &refs)?;
    let references: Vec<String> = examples.iter().map(|e| e.transcript.clone()).collect();
    let report = kiln_speech::tune::tune(&log_probs, &references, &lm, &grid)?;
    let b = &report.best;
    println!(
        "GREEDY WER {:.2}% on {} utterances of {}",
        100.0 * report.greedy.rate(),
        examples.len(),
        split.display()
    );
    println!(
        "BEST WER {:.2}% alpha={} beta={} unk_offset={} unk_letter_score={} beam={} ({} words for {} reference words; {} grid points)",
        100.0 * b.wer.rate(),
        b.weights.alpha,
        b.weights.beta,
        b.weights.unk_offset,
        b.weights.unk_letter_score,
        report.beam_width,
        b.hypothesis_words,
        report.reference_words,
        report.points.len()
    );
    TunedDecoder {
        weights: b.weights,
        beam_width: report.beam_width,
        lm: a.lm.display().to_string(),
        split: split.display().to_string(),
        greedy_wer: report.greedy.rate(),
        wer: b.wer.rate(),
    }
    .write(&out)?;
    println!("TUNED {}", out.display());
    Ok(())
}

fn load_model(path: &Path) -> anyhow::Result<Ds2<f32>> {
    crate::model_files::expect_kind(path, crate::model_files::ModelKind::Ds2)?;
    Ds2::<f32>::load(path).with_context(|| format!("loading {}", path.display()))
}

fn eval(a: &EvalArgs) -> anyhow::Result<()> {
    let split = dev_split(&a.data)?;
    // The small inputs first: a bad LM file is reported before the
    // model and the audio are read.
    let lm = load_lm(&a.decode)?;
    let mut model = load_model(&a.model)?;
    let (examples, skipped) = read_split(&split, a.max_bad_share, "--max-bad-share")?;
    if let Some(line) = skipped {
        eprintln!("{line}");
    }
    let (w, c) = score(&mut model, &examples, &decoder(&a.decode, &lm, &a.model)?)?;
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
/// down) rather than a corpus root; whether its entries are usable is
/// checked when it is read.
fn list_is_split(dir: &Path) -> bool {
    let subdirs = |d: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(d)
            .map(|it| it.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default()
    };
    subdirs(dir)
        .iter()
        .filter(|p| p.is_dir())
        .flat_map(|speaker| subdirs(speaker))
        .filter(|p| p.is_dir())
        .flat_map(|chapter| subdirs(&chapter))
        .any(|f| f.to_string_lossy().ends_with(".trans.txt"))
}

fn transcribe(a: &TranscribeArgs) -> anyhow::Result<()> {
    let lm = load_lm(&a.decode)?;
    let mut model = load_model(&a.model)?;
    let dec = decoder(&a.decode, &lm, &a.model)?;
    // Named files are checked together first, so a bad share among them
    // fails before any work; outputs keep the order of the paths.
    let files: Vec<&PathBuf> = a.paths.iter().filter(|p| !p.is_dir()).collect();
    let mut file_examples = if files.is_empty() {
        Vec::new()
    } else {
        read_audio_files(&files, a.max_bad_share)?
    };
    for path in &a.paths {
        let batches = if path.is_dir() {
            let mut batches = Vec::new();
            for split in splits_of(path)? {
                let (examples, skipped) = read_split(&split, a.max_bad_share, "--max-bad-share")?;
                if let Some(line) = skipped {
                    eprintln!("{line}");
                }
                batches.push(examples);
            }
            batches
        } else {
            // Skipped when it was unusable (and within the share).
            match file_examples.iter().position(|(p, _)| *p == path) {
                Some(i) => vec![vec![file_examples.swap_remove(i).1]],
                None => continue,
            }
        };
        for examples in batches {
            let refs: Vec<&Example> = examples.iter().collect();
            let texts = pipeline::transcribe(&mut model, &refs, &dec)?;
            for (e, t) in examples.iter().zip(texts) {
                println!("{} {t}", e.id);
            }
        }
    }
    Ok(())
}

/// The splits a directory given to `transcribe` stands for: itself when it
/// is a split, else the splits in it (a corpus root), sorted.
fn splits_of(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if list_is_split(dir) {
        return Ok(vec![dir.to_path_buf()]);
    }
    let mut splits: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir() && list_is_split(p))
        .collect();
    splits.sort();
    if splits.is_empty() {
        bail!(
            "{} is neither a LibriSpeech split (<speaker>/<chapter>/*.trans.txt with audio) nor a corpus root holding splits",
            dir.display()
        );
    }
    Ok(splits)
}

/// Audio files given by name, as examples without a transcript (the id
/// is the file stem), their unusable ones held to `max_bad_share`.
fn read_audio_files<'a>(
    files: &[&'a PathBuf],
    max_bad_share: f64,
) -> anyhow::Result<Vec<(&'a PathBuf, Example)>> {
    use rayon::prelude::*;
    let read: Vec<anyhow::Result<Example>> = files
        .par_iter()
        .map(|path| {
            let id = path
                .file_stem()
                .and_then(|s| s.to_str())
                .with_context(|| format!("{}: no file name", path.display()))?;
            Ok(Example::from_file(id, path)?)
        })
        .collect();
    let mut bad = BadFiles::new("the audio files given", files.len());
    let mut examples = Vec::with_capacity(files.len());
    for (path, r) in files.iter().zip(read) {
        match r {
            Ok(e) => examples.push((*path, e)),
            Err(e) => bad.push(path, format!("{e:#}")),
        }
    }
    if let Some(line) = bad.check(max_bad_share, "--max-bad-share")? {
        eprintln!("{line}");
    }
    if examples.is_empty() {
        bail!("none of the audio files given is usable");
    }
    Ok(examples)
}

//! `kiln detect …`: SSD training (one process, or a local cluster with
//! `--executors N`), evaluation and prediction, and scoring a detections
//! file with the VOC devkit's rules.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::builder::TypedValueParser as _;
use clap::{Args, Subcommand};
use kiln_detection::draw::{draw_detections, save_image, Labelled};
use kiln_detection::eval::{self, Metric};
use kiln_detection::image_file::{load_rgb, verify_images};
use kiln_detection::infer;
use kiln_detection::model::Ssd;
use kiln_detection::voc::VocDataset;

use super::cluster::{run_local, threads, LocalClusterArgs};
use super::job_args::{finite_in, DetectTrainArgs};
use crate::jobs::JobKinds;

/// A clap value parser for images per forward pass, in `[1, 1024]`.
pub fn images_per_pass(s: &str) -> std::result::Result<usize, String> {
    let n: usize = s.trim().parse().map_err(|e| format!("{e}"))?;
    kiln_nn::bounds::check("value", n, 1..=kiln_detection::train::MAX_BATCH_SIZE)
        .map_err(|e| format!("must be {}", e.expected))
}

/// `kiln detect` subcommands.
#[derive(Debug, Subcommand)]
pub enum DetectCommand {
    /// Train an SSD model on a VOC-layout split (in this process, or on a
    /// local cluster with --executors N, with checkpoints and resume).
    Train(Box<TrainArgs>),
    /// Per-class AP and mAP of a model on a VOC split.
    Eval(EvalArgs),
    /// Detect objects in images: writes the images with labelled boxes and
    /// a detections file that `kiln detect score` reads.
    Predict(PredictArgs),
    /// Score a detections file (`<image-id> <class> <score> <xmin> <ymin>
    /// <xmax> <ymax>` per line, VOC 1-based pixels) against a VOC split:
    /// per-class AP and mAP.
    Score(ScoreArgs),
}

/// Arguments of `kiln detect train`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Train on a local cluster of this many executor processes (on
    /// 127.0.0.1; data-parallel, with checkpoints and resume); without it,
    /// train in this process.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1024).map(|n| n as usize))]
    pub executors: Option<usize>,
    /// With `--executors`: executors as tasks in this process (tests).
    #[arg(long, requires = "executors")]
    pub in_process: bool,
    /// With `--executors`: compute threads of each executor (default: all
    /// cores; 0: all cores; at most 1024).
    #[arg(long, requires = "executors", value_parser = threads)]
    pub executor_threads: Option<usize>,
    /// The dashboard (needs --executors: it is the cluster driver's).
    #[command(flatten)]
    pub ui: super::ui::UiArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub job: DetectTrainArgs,
}

/// Arguments of `kiln detect eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// VOC-layout directory.
    #[arg(long)]
    pub voc: PathBuf,
    /// The model file.
    #[arg(long)]
    pub model: PathBuf,
    /// Image set to evaluate on.
    #[arg(long, default_value = "test")]
    pub split: String,
    /// `voc07` (11-point) or `area` (VOC2010+).
    #[arg(long, default_value = "voc07")]
    pub metric: String,
    /// Images per forward pass, in [1, 1024].
    #[arg(long, default_value_t = 16, value_parser = images_per_pass)]
    pub batch_size: usize,
    /// Share of the split's images that may be unusable (skipped, each
    /// named) before the command fails, in [0, 1].
    #[arg(long, default_value_t = 0.0, value_parser = finite_in(0.0..=1.0))]
    pub max_bad_share: f64,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `kiln detect predict`.
#[derive(Debug, Args)]
pub struct PredictArgs {
    /// The model file.
    #[arg(long)]
    pub model: PathBuf,
    /// Output directory: `<id>.png` per image and `detections.txt`.
    #[arg(long)]
    pub out: PathBuf,
    /// Detections below this score are neither drawn nor written (in [0, 1]).
    #[arg(long, default_value_t = 0.3, value_parser = finite_in(0.0..=1.0).map(|v| v as f32))]
    pub threshold: f32,
    /// Images per forward pass, in [1, 1024].
    #[arg(long, default_value_t = 16, value_parser = images_per_pass)]
    pub batch_size: usize,
    /// Share of the images that may be unusable (skipped, each named)
    /// before the command fails, in [0, 1].
    #[arg(long, default_value_t = 0.0, value_parser = finite_in(0.0..=1.0))]
    pub max_bad_share: f64,
    /// Image files (JPEG or PNG).
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
}

/// Arguments of `kiln detect score`.
#[derive(Debug, Args)]
pub struct ScoreArgs {
    /// VOC-layout directory (JPEGImages, Annotations, ImageSets/Main).
    #[arg(long)]
    pub voc: PathBuf,
    /// The detections file.
    #[arg(long)]
    pub detections: PathBuf,
    /// Image set to score against (`ImageSets/Main/<split>.txt`).
    #[arg(long, default_value = "test")]
    pub split: String,
    /// `voc07` (11-point) or `area` (VOC2010+).
    #[arg(long, default_value = "voc07")]
    pub metric: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Runs a `kiln detect` subcommand; cluster training runs `kinds`'
/// detection job.
pub fn run(cmd: &DetectCommand, kinds: &JobKinds) -> anyhow::Result<()> {
    match cmd {
        DetectCommand::Train(a) => train(a, kinds),
        DetectCommand::Eval(a) => {
            let report = evaluate(a)?;
            if a.json {
                println!("{}", report.to_json()?);
            } else {
                print!("{report}");
            }
            Ok(())
        }
        DetectCommand::Predict(a) => {
            let n = predict(a)?;
            println!(
                "{n} detections written to {}",
                a.out.join("detections.txt").display()
            );
            Ok(())
        }
        DetectCommand::Score(a) => {
            let metric: Metric = a.metric.parse()?;
            let report = eval::score(&a.voc, &a.split, &a.detections, metric)
                .with_context(|| format!("scoring {}", a.detections.display()))?;
            if a.json {
                println!("{}", report.to_json()?);
            } else {
                print!("{report}");
            }
            Ok(())
        }
    }
}

/// `kiln detect train`: trains (in this process, or with `--executors N`
/// on a local cluster) and writes the model.
pub fn train(a: &TrainArgs, kinds: &JobKinds) -> anyhow::Result<()> {
    if let Some(n) = a.executors {
        let mut cluster = LocalClusterArgs::with_executors(n);
        cluster.in_process = a.in_process;
        cluster.executor_threads = a.executor_threads;
        cluster.ui = a.ui.clone();
        // Each executor gets all cores by default: SSD trains ~19 % faster.
        return run_local(&cluster, None, Some(a.job.submission()?), kinds);
    }
    let run = &a.job.run;
    if run.checkpoint_dir.is_some()
        || run.resume
        || run.partitions.is_some()
        || run.stage
        || run.tensorboard.is_some()
        || a.ui.ui.is_some()
    {
        bail!("--checkpoint-dir, --resume, --partitions, --stage, --tensorboard and --ui need --executors N: only cluster training writes checkpoints and summaries and has a dashboard");
    }
    let cfg = a.job.train_config()?;
    crate::output_paths::check_output_file("--out", &a.job.out)?;
    let (_, summary) = kiln_detection::train::train(&a.job.voc, &cfg, &a.job.out)
        .with_context(|| format!("training on {}", a.job.voc.display()))?;
    if let Some(line) = &summary.skipped {
        eprintln!("{line}");
    }
    println!(
        "trained {} epochs ({} iterations) in {:.1} s, last epoch loss {:.4}; model written to {}",
        summary.epochs,
        summary.iterations,
        summary.seconds,
        summary.last_epoch_loss,
        a.job.out.display()
    );
    Ok(())
}

/// `kiln detect eval`: the model's per-class AP and mAP on a split.
pub fn evaluate(a: &EvalArgs) -> anyhow::Result<eval::Report> {
    let metric: Metric = a.metric.parse()?;
    let mut model = load_model(&a.model)?;
    let split =
        VocDataset::open(&a.voc, &a.split, None)?.verify(a.max_bad_share, "--max-bad-share")?;
    if let Some(line) = &split.skipped {
        eprintln!("{line}");
    }
    let cfg = infer::detect_config(&model);
    let report = infer::evaluate(&mut model, &split, metric, &cfg, a.batch_size)
        .with_context(|| format!("evaluating {} on {}", a.model.display(), a.voc.display()))?;
    Ok(report)
}

fn load_model(path: &Path) -> anyhow::Result<Ssd<f32>> {
    crate::model_files::expect_kind(path, crate::model_files::ModelKind::Ssd)?;
    Ssd::<f32>::load(path).with_context(|| format!("loading model {}", path.display()))
}

/// `kiln detect predict`: draws and writes detections; returns how many
/// were written.
pub fn predict(a: &PredictArgs) -> anyhow::Result<usize> {
    crate::output_paths::check_output_dir("--out", &a.out)?;
    let mut model = load_model(&a.model)?;
    let mut cfg = infer::detect_config(&model);
    cfg.conf_threshold = a.threshold;
    let (images, skipped) = verify_images(&a.images, a.max_bad_share, "--max-bad-share")?;
    if let Some(line) = &skipped {
        eprintln!("{line}");
    }
    let preds = infer::predict(&mut model, &images, &cfg, a.batch_size)?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let mut all = Vec::new();
    for p in preds {
        let mut img = load_rgb(&p.path)?;
        let labelled: Vec<Labelled> = p
            .detections
            .iter()
            .map(|d| Labelled {
                bbox: d.bbox,
                class: model
                    .config()
                    .classes
                    .iter()
                    .position(|c| *c == d.class)
                    .unwrap_or(0),
                name: d.class.clone(),
                score: d.score,
            })
            .collect();
        draw_detections(&mut img, &labelled);
        save_image(&img, &a.out.join(format!("{}.png", p.id)))?;
        all.extend(p.detections);
    }
    let path = a.out.join("detections.txt");
    eval::write_detections(&path, &all)?;
    Ok(all.len())
}

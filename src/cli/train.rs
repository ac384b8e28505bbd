//! `kiln train` and `kiln eval`: the single-process digits job. `kiln
//! train --resume DIR` instead continues a cluster run from its checkpoint
//! store (the binary runs it as `kiln checkpoint resume --dir DIR`).

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::Context;
use clap::builder::TypedValueParser as _;
use clap::Args;
use kiln_nn::bounds::open_closed;

use super::checkpoint::ResumeArgs;
use super::cluster::{DEFAULT_EXECUTORS, MAX_EXECUTORS};
use super::job_args::{batch_size, finite_in};
use crate::digits::{self as digits_job, DigitsModel, DigitsSettings};
use crate::jobs::{MAX_EPOCHS, MAX_LEARNING_RATE};
use crate::training::summaries::Summaries;

/// Arguments of `kiln train`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Continue the cluster training run whose checkpoint store is DIR
    /// (`kiln local digits --checkpoint-dir DIR`) from its newest
    /// valid checkpoint on a local cluster, as `kiln checkpoint resume
    /// --dir DIR` does. The job's settings (data, model, epochs, batch
    /// size, learning rate, seed) come from the checkpoint, so those flags
    /// conflict with it.
    #[arg(
        long,
        value_name = "DIR",
        conflicts_with_all = ["data", "model", "epochs", "batch_size", "lr", "seed"]
    )]
    pub resume: Option<PathBuf>,
    /// With --resume: executor processes of the local cluster.
    #[arg(long, default_value_t = DEFAULT_EXECUTORS, requires = "resume", value_parser = clap::value_parser!(u64).range(1..=MAX_EXECUTORS as u64).map(|n| n as usize))]
    pub executors: usize,
    /// The digits CSV (gzip); defaults to data/digits/digits.csv.gz.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Network to train.
    #[arg(long, value_enum, default_value_t = DigitsModel::Cnn)]
    pub model: DigitsModel,
    /// Epochs.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=MAX_EPOCHS as u64))]
    pub epochs: u64,
    /// Mini-batch size.
    #[arg(long, default_value_t = 32, value_parser = batch_size)]
    pub batch_size: usize,
    /// Learning rate.
    #[arg(long, default_value_t = 0.05, value_parser = finite_in(open_closed(0.0, MAX_LEARNING_RATE)))]
    pub lr: f64,
    /// Seed for weights and batch order.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Where to save the trained model (safetensors).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Hide the progress bar.
    #[arg(long)]
    pub no_progress: bool,
    /// Write TensorBoard event files (batch loss and learning rate per
    /// iteration; epoch loss, samples/s and held-out loss and accuracy per
    /// epoch) into a run directory `digits-<unix seconds>` under DIR.
    #[arg(long, value_name = "DIR", conflicts_with = "resume")]
    pub tensorboard: Option<PathBuf>,
}

/// Arguments of `kiln eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// A model saved by `kiln train --out`.
    #[arg(long)]
    pub model: PathBuf,
    /// The digits CSV (gzip); defaults to data/digits/digits.csv.gz.
    #[arg(long)]
    pub data: Option<PathBuf>,
}

impl TrainArgs {
    /// `kiln train --resume DIR` as `kiln checkpoint resume --dir DIR`.
    pub fn resume_args(&self) -> Option<ResumeArgs> {
        self.resume.as_ref().map(|dir| ResumeArgs {
            dir: dir.clone(),
            cluster: None,
            executors: self.executors,
            out: self.out.clone(),
            no_progress: self.no_progress,
            ui: Default::default(),
        })
    }
}

/// Runs `kiln train`: trains, prints the held-out accuracy, optionally saves the model.
pub fn train(args: &TrainArgs) -> anyhow::Result<()> {
    let job = DigitsSettings {
        data: args
            .data
            .clone()
            .unwrap_or_else(digits_job::default_data_path),
        model: args.model,
        epochs: args.epochs,
        batch_size: args.batch_size,
        learning_rate: args.lr,
        seed: args.seed,
        ..DigitsSettings::default()
    };
    job.check("digits", "")?;
    if let Some(out) = &args.out {
        crate::output_paths::check_output_file("--out", out)?;
    }
    let summaries = match &args.tensorboard {
        Some(dir) => {
            crate::output_paths::check_output_dir("--tensorboard", dir)?;
            Some(Summaries::open(
                Some(dir),
                "digits",
                Box::new(|line| super::out_line(&line)),
            ))
        }
        None => None,
    };
    let (model, report) = digits_job::run_summarised(&job, !args.no_progress, summaries)
        .context("digits training failed")?;
    println!(
        "trained {:?} for {} epochs ({} iterations) in {:.1} s, {:.0} samples/s",
        job.model,
        report.summary.state.epoch,
        report.summary.state.iteration,
        report.summary.seconds,
        report.summary.samples_per_second
    );
    println!("held-out: {}", report.held_out);
    println!("held-out accuracy: {:.2}%", report.held_out.top1 * 100.0);
    if let Some(out) = &args.out {
        let mut meta = HashMap::new();
        meta.insert("kiln.digits_model".to_string(), format!("{:?}", job.model));
        kiln_nn::serialize::save(model.as_ref(), out, &meta)
            .with_context(|| format!("saving {}", out.display()))?;
        println!("model saved to {}", out.display());
    }
    Ok(())
}

/// Runs `kiln eval`: loads a model and prints its held-out accuracy.
pub fn eval(args: &EvalArgs) -> anyhow::Result<()> {
    crate::model_files::expect_kind(&args.model, crate::model_files::ModelKind::Digits)?;
    let bytes =
        std::fs::read(&args.model).with_context(|| format!("reading {}", args.model.display()))?;
    let meta = kiln_nn::serialize::metadata_of(&bytes, &args.model)?;
    let kind = match meta.get("kiln.digits_model").map(String::as_str) {
        Some("Lenet5") => DigitsModel::Lenet5,
        _ => DigitsModel::Cnn,
    };
    let mut model = kiln_nn::serialize::load::<f32>(&args.model)?;
    let data = args
        .data
        .clone()
        .unwrap_or_else(digits_job::default_data_path);
    let (_, test) = digits_job::load_split(&data, kind)?;
    let e = kiln_nn::train::evaluate(
        model.as_mut(),
        &mut kiln_nn::criterion::ClassNll::default(),
        &test,
        512,
    )?;
    println!("held-out: {e}");
    println!("held-out accuracy: {:.2}%", e.top1 * 100.0);
    Ok(())
}

//! `kiln detect …`: the SSD commands that work without a trained model
//! (scoring a detections file with the VOC devkit's rules).

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use kiln_detection::eval::Metric;

/// `kiln detect` subcommands.
#[derive(Debug, Subcommand)]
pub enum DetectCommand {
    /// Score a detections file (`<image-id> <class> <score> <xmin> <ymin>
    /// <xmax> <ymax>` per line, VOC 1-based pixels) against a VOC split:
    /// per-class AP and mAP.
    Score(ScoreArgs),
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
    /// Image set to score against (ImageSets/Main/<split>.txt).
    #[arg(long, default_value = "test")]
    pub split: String,
    /// `voc07` (11-point) or `area` (VOC2010+).
    #[arg(long, default_value = "voc07")]
    pub metric: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Runs a `kiln detect` subcommand.
pub fn run(cmd: &DetectCommand) -> anyhow::Result<()> {
    match cmd {
        DetectCommand::Score(a) => {
            let metric: Metric = a.metric.parse()?;
            let report = kiln_detection::eval::score(&a.voc, &a.split, &a.detections, metric)
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

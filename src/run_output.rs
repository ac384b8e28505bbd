//! What the cluster training jobs print while they run: result lines on
//! stdout (tests and scripts read them), the resume report and the
//! progress bar.

use std::io::Write;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use kiln_runtime::train::IterationReport;
use kiln_runtime::Data;
use kiln_runtime::DistributedTrainer;

/// Prints one result line on stdout and flushes it.
pub fn out_line(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Resumes `trainer` from its store and prints `SKIPPED` lines for corrupt
/// newer checkpoints and a `RESUMED` line.
pub async fn resume_and_report<T: Data>(
    trainer: &mut DistributedTrainer<T>,
) -> kiln_runtime::Result<()> {
    match trainer.resume().await? {
        Some(info) => {
            for s in &info.skipped {
                out_line(&format!("SKIPPED {} {}", s.id, s.reason));
            }
            out_line(&format!(
                "RESUMED {} iteration={} epoch={}",
                info.id, info.position.iteration, info.position.epoch
            ));
        }
        None => out_line("RESUMED none (no checkpoint yet): starting fresh"),
    }
    Ok(())
}

/// Prints the `CHECKPOINT` line of an iteration that wrote one (above
/// `bar`).
pub fn report_checkpoint(bar: &ProgressBar, it: &IterationReport) {
    if let Some(id) = it.checkpoint {
        bar.suspend(|| {
            out_line(&format!(
                "CHECKPOINT {id} iteration={}",
                it.position.iteration
            ))
        });
    }
}

/// A progress bar over the run's iterations (hidden unless `visible`),
/// starting at the trainer's position.
pub fn iteration_bar<T: Data>(
    trainer: &DistributedTrainer<T>,
    epochs: u64,
    visible: bool,
) -> ProgressBar {
    let total = trainer.batches_per_epoch() * epochs;
    let bar = if visible {
        ProgressBar::new(total)
    } else {
        ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::hidden())
    };
    if let Ok(style) =
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} it {msg}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_position(trainer.position().iteration);
    bar
}

//! A training run's TensorBoard scalars (`run.tensorboard`, the
//! `--tensorboard DIR` flag): one run directory per job under the
//! directory given, `<kind>-job<id>-<unix seconds>`, with per iteration
//! `train/loss` and `train/learning_rate` and per epoch `epoch/loss`,
//! `epoch/samples_per_second` and every evaluation metric as
//! `eval/<name>`, all at the global iteration as their step.
//!
//! A write that fails is said once on a `WARNING` line and the summaries
//! stop; training goes on (the directory was checked writable before the
//! job started).

use std::path::Path;

use kiln_runtime::JobContext;

use crate::tensorboard::EventWriter;

/// The summaries of one run, or none.
#[derive(Debug, Default)]
pub(super) struct Summaries {
    writer: Option<EventWriter>,
}

impl Summaries {
    /// Opens the run directory of job `ctx` of kind `kind` under `dir`, or
    /// nothing without a directory.
    pub(super) fn open(dir: Option<&Path>, kind: &str, ctx: &JobContext) -> Self {
        let Some(dir) = dir else {
            return Summaries::default();
        };
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let run = dir.join(format!("{kind}-job{}-{secs}", ctx.id()));
        match EventWriter::create(&run) {
            Ok(writer) => {
                ctx.line(format!("TENSORBOARD {}", writer.path().display()));
                Summaries {
                    writer: Some(writer),
                }
            }
            Err(e) => {
                ctx.line(format!("WARNING tensorboard summaries are off: {e}"));
                Summaries::default()
            }
        }
    }

    /// One iteration's mean loss and learning rate.
    pub(super) fn iteration(&mut self, ctx: &JobContext, step: u64, loss: f64, learning_rate: f64) {
        self.write(
            ctx,
            step,
            &[("train/loss", loss), ("train/learning_rate", learning_rate)],
            false,
        );
    }

    /// One epoch's mean loss, throughput and evaluation metrics; flushes.
    pub(super) fn epoch(
        &mut self,
        ctx: &JobContext,
        step: u64,
        loss: f64,
        samples_per_second: f64,
        metrics: &[(String, f64)],
    ) {
        let tags: Vec<String> = metrics.iter().map(|(m, _)| format!("eval/{m}")).collect();
        let mut values = vec![
            ("epoch/loss", loss),
            ("epoch/samples_per_second", samples_per_second),
        ];
        values.extend(
            tags.iter()
                .map(String::as_str)
                .zip(metrics.iter().map(|(_, v)| *v)),
        );
        self.write(ctx, step, &values, true);
    }

    fn write(&mut self, ctx: &JobContext, step: u64, values: &[(&str, f64)], flush: bool) {
        let Some(w) = self.writer.as_mut() else {
            return;
        };
        let written = w
            .scalars(step, values)
            .and_then(|()| if flush { w.flush() } else { Ok(()) });
        if let Err(e) = written {
            ctx.line(format!("WARNING tensorboard summaries stop: {e}"));
            self.writer = None;
        }
    }
}

//! A training run's TensorBoard scalars (`--tensorboard DIR`): one run
//! directory per run under the directory given (a cluster job's is
//! `<kind>-job<id>-<unix seconds>`, `kiln train`'s `digits-<unix
//! seconds>`), with per iteration `train/loss` and `train/learning_rate`
//! and per epoch `epoch/loss`, `epoch/samples_per_second` and every
//! evaluation metric as `eval/<name>`, all at the global iteration as
//! their step.
//!
//! A write that fails is said once on a `WARNING` line and the summaries
//! stop; training goes on (the directory was checked writable before the
//! run started).

use std::path::Path;

use crate::tensorboard::EventWriter;

/// How the summaries say something (a job's output line, stderr).
pub type Say = Box<dyn Fn(String) + Send + Sync>;

/// The summaries of one run, or none.
pub struct Summaries {
    writer: Option<EventWriter>,
    say: Say,
}

impl std::fmt::Debug for Summaries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Summaries")
            .field("writer", &self.writer)
            .finish_non_exhaustive()
    }
}

impl Summaries {
    /// Opens run directory `<run>-<unix seconds>` under `dir` and says
    /// `TENSORBOARD <path>`; nothing without a directory.
    pub fn open(dir: Option<&Path>, run: &str, say: Say) -> Self {
        let Some(dir) = dir else {
            return Summaries { writer: None, say };
        };
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let path = dir.join(format!("{run}-{secs}"));
        match EventWriter::create(&path) {
            Ok(writer) => {
                say(format!("TENSORBOARD {}", writer.path().display()));
                Summaries {
                    writer: Some(writer),
                    say,
                }
            }
            Err(e) => {
                say(format!("WARNING tensorboard summaries are off: {e}"));
                Summaries { writer: None, say }
            }
        }
    }

    /// One iteration's mean loss and learning rate.
    pub fn iteration(&mut self, step: u64, loss: f64, learning_rate: f64) {
        self.write(
            step,
            &[("train/loss", loss), ("train/learning_rate", learning_rate)],
            false,
        );
    }

    /// One epoch's mean loss, throughput and evaluation metrics; flushes.
    pub fn epoch(
        &mut self,
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
        self.write(step, &values, true);
    }

    fn write(&mut self, step: u64, values: &[(&str, f64)], flush: bool) {
        let Some(w) = self.writer.as_mut() else {
            return;
        };
        let written = w
            .scalars(step, values)
            .and_then(|()| if flush { w.flush() } else { Ok(()) });
        if let Err(e) = written {
            (self.say)(format!("WARNING tensorboard summaries stop: {e}"));
            self.writer = None;
        }
    }
}

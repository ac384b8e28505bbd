//! Checkpoints and resume for the cluster training jobs (digits, speech,
//! SSD): the command-line flags they share, and how those become the
//! trainer's [`CheckpointPolicy`] and a resumed position.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::bail;
use clap::Args;
use kiln_runtime::train::CheckpointPolicy;
use kiln_runtime::{Data, DistributedTrainer, TrainSpec};
use serde::Serialize;

use crate::run_output::resume_and_report;

/// Checkpoints a run keeps unless told otherwise.
pub const KEEP_CHECKPOINTS: usize = 3;

/// The checkpoint flags of the cluster training commands.
#[derive(Args, Debug, Clone)]
pub struct CheckpointArgs {
    /// Checkpoint store directory (a checkpoint at every epoch end).
    #[arg(long, value_name = "DIR")]
    pub checkpoint_dir: Option<PathBuf>,
    /// Also checkpoint every N iterations.
    #[arg(long, value_name = "N", requires = "checkpoint_dir")]
    pub checkpoint_every: Option<u64>,
    /// Checkpoints to keep (0 keeps all).
    #[arg(long, value_name = "K", default_value_t = KEEP_CHECKPOINTS)]
    pub keep_checkpoints: usize,
    /// Continue from the newest valid checkpoint in --checkpoint-dir (the
    /// run's settings must match the checkpoint's).
    #[arg(long, requires = "checkpoint_dir")]
    pub resume: bool,
}

impl CheckpointArgs {
    /// The options these flags ask for.
    pub fn options(&self) -> CheckpointOptions {
        CheckpointOptions {
            dir: self.checkpoint_dir.clone(),
            every_iterations: self.checkpoint_every,
            keep_last: self.keep_checkpoints,
            resume: self.resume,
        }
    }
}

/// Checkpointing and resume settings of a run.
#[derive(Debug, Clone, Default)]
pub struct CheckpointOptions {
    /// Store directory; no checkpoints without it.
    pub dir: Option<PathBuf>,
    /// Also every N iterations (always at every epoch end).
    pub every_iterations: Option<u64>,
    /// Keep the last K (0 keeps all).
    pub keep_last: usize,
    /// Continue from the newest valid checkpoint in `dir`.
    pub resume: bool,
}

impl CheckpointOptions {
    /// Sets `spec`'s checkpoint policy: every epoch end (and every
    /// `every_iterations`) into `dir`, keeping the last `keep_last`. Resume
    /// without a directory is an error.
    pub fn apply(&self, spec: &mut TrainSpec) -> anyhow::Result<()> {
        match &self.dir {
            Some(dir) => {
                spec.checkpoint = Some(CheckpointPolicy {
                    every_iterations: self.every_iterations,
                    keep_last: self.keep_last,
                    ..CheckpointPolicy::every_epoch(dir)
                });
            }
            None if self.resume => bail!("--resume needs --checkpoint-dir"),
            None => spec.checkpoint = None,
        }
        Ok(())
    }

    /// With `resume`, moves `trainer` to its newest valid checkpoint and
    /// prints the resume report (`SKIPPED`, `RESUMED` lines).
    pub async fn resume_if_asked<T: Data>(
        &self,
        trainer: &mut DistributedTrainer<T>,
    ) -> anyhow::Result<()> {
        if self.resume {
            resume_and_report(trainer).await?;
        }
        Ok(())
    }
}

/// The settings a run resuming from a checkpoint must share with the run
/// that wrote it ([`TrainSpec::fixed_meta`]): one entry per field of the
/// job's `config` (`<prefix>.<field>` = the field's JSON), except the
/// fields in `free` (those a resumed run may change, such as the number of
/// epochs), so that a mismatch names the field.
pub fn fixed_settings<C: Serialize>(
    prefix: &str,
    config: &C,
    free: &[&str],
) -> anyhow::Result<BTreeMap<String, String>> {
    let serde_json::Value::Object(fields) = serde_json::to_value(config)? else {
        bail!("the {prefix} job's settings do not serialise to a JSON object");
    };
    Ok(fields
        .into_iter()
        .filter(|(k, _)| !free.contains(&k.as_str()))
        .map(|(k, v)| (format!("{prefix}.{k}"), v.to_string()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_settings_are_the_fields_a_resumed_run_may_not_change() {
        #[derive(Serialize)]
        struct Job {
            epochs: u64,
            preset: String,
            lr: f64,
        }
        let job = Job {
            epochs: 3,
            preset: "tiny".into(),
            lr: 0.5,
        };
        let fixed = fixed_settings("x", &job, &["epochs", "lr"]).unwrap();
        assert_eq!(
            fixed,
            BTreeMap::from([("x.preset".to_string(), "\"tiny\"".to_string())])
        );
        assert!(fixed_settings("x", &7u32, &[]).is_err());
    }

    fn spec() -> TrainSpec {
        TrainSpec::new("t", &0u8, 4, 1, 0, 0.1).unwrap()
    }

    #[test]
    fn a_directory_gives_an_every_epoch_policy_and_resume_needs_one() {
        let mut s = spec();
        let opts = CheckpointOptions {
            dir: Some("ck".into()),
            every_iterations: Some(7),
            keep_last: 2,
            resume: true,
        };
        opts.apply(&mut s).unwrap();
        let p = s.checkpoint.expect("a policy");
        assert!(p.every_epoch);
        assert_eq!((p.every_iterations, p.keep_last), (Some(7), 2));
        let mut s = spec();
        let err = CheckpointOptions {
            resume: true,
            ..CheckpointOptions::default()
        }
        .apply(&mut s)
        .unwrap_err();
        assert!(err.to_string().contains("--checkpoint-dir"), "{err}");
        CheckpointOptions::default().apply(&mut s).unwrap();
        assert!(s.checkpoint.is_none());
    }
}

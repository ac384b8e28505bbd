//! What every training kind's settings share: the layout of the run on the
//! cluster (partitions, parameter shards and where they live), its
//! checkpoints, and data staging. A training job's settings are
//! [`TrainingSettings`]: the kind's own (`job`) and these (`run`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use kiln_runtime::checkpoint::{check_claim, StoreClaim};
use serde::{Deserialize, Serialize};

use crate::jobs::{bounded, positive, JobEnv, JobError, Result, MAX_PARTITIONS};
use crate::output_paths::check_output_dir;

/// Checkpoints a run keeps unless told otherwise.
pub const KEEP_CHECKPOINTS: usize = 3;

/// Copies of each parameter shard on the executors unless told otherwise
/// (2 survives the loss of any one executor).
pub const SHARD_REPLICAS: usize = 2;

/// A training job's settings: the kind's own and the run's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingSettings<J> {
    /// The kind's settings (data, model, epochs, batch size, …).
    pub job: J,
    /// The run's layout, checkpoints and staging.
    #[serde(default)]
    pub run: RunSettings,
}

/// How a training run is laid out on the cluster and checkpointed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunSettings {
    /// Partitions of the training set. Default: the executors' task slots
    /// when the job starts (recorded in the checkpoints). Fix it to get
    /// bit-identical weights on any number of executors.
    pub partitions: Option<u32>,
    /// Parameter shards (default: the kind's).
    pub shards: Option<usize>,
    /// Copies of each shard hosted by the executors; 0 keeps the shards in
    /// the driver's parameter actors.
    pub shard_replicas: usize,
    /// Checkpoints.
    pub checkpoint: CheckpointSettings,
    /// Executors fetch the data files from the driver's host (verified by
    /// size and SHA-256, cached by content) even where the path exists
    /// locally. Without it they read a path they have and fetch only what
    /// they lack.
    pub stage: bool,
    /// TensorBoard event files: a run directory per job under this
    /// directory, on the driver's host; none: no summaries.
    pub tensorboard: Option<PathBuf>,
}

impl Default for RunSettings {
    fn default() -> Self {
        RunSettings {
            partitions: None,
            shards: None,
            shard_replicas: SHARD_REPLICAS,
            checkpoint: CheckpointSettings::default(),
            stage: false,
            tensorboard: None,
        }
    }
}

/// Where and how often a run checkpoints, and whether it resumes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointSettings {
    /// The store, on the driver's host (a checkpoint at every epoch end);
    /// none: no checkpoints.
    pub dir: Option<PathBuf>,
    /// Also every this many iterations.
    pub every_iterations: Option<u64>,
    /// Checkpoints kept (0 keeps all).
    pub keep_last: usize,
    /// Continue from the newest valid checkpoint in `dir` (whose settings
    /// must match but for the kind's free ones).
    pub resume: bool,
}

impl Default for CheckpointSettings {
    fn default() -> Self {
        CheckpointSettings {
            dir: None,
            every_iterations: None,
            keep_last: KEEP_CHECKPOINTS,
            resume: false,
        }
    }
}

impl CheckpointSettings {
    /// How a run of `kind` with these settings uses its store: it
    /// continues the run that owns it when resuming, else it is a new run
    /// (and the store must not exist yet).
    pub fn claim(&self, kind: &str) -> StoreClaim {
        let kind = kind.to_string();
        if self.resume {
            StoreClaim::Continue { kind }
        } else {
            StoreClaim::NewRun { kind }
        }
    }
}

/// Most parameter shards a run may ask for.
pub const MAX_SHARDS: u64 = 4096;
/// Most copies of each parameter shard (0: the driver holds them).
pub const MAX_SHARD_REPLICAS: u64 = 64;
/// Most checkpoints a run may keep (0 keeps all).
pub const MAX_KEEP_CHECKPOINTS: u64 = 100_000;

impl RunSettings {
    /// Checks the settings of a run of `kind` and resolves the store's path.
    pub fn validate(&mut self, kind: &str, env: &JobEnv) -> Result<()> {
        if let Some(p) = self.partitions {
            bounded(kind, "run.partitions", p, 1..=MAX_PARTITIONS)?;
        }
        if let Some(s) = self.shards {
            bounded(kind, "run.shards", s as u64, 1..=MAX_SHARDS)?;
        }
        bounded(
            kind,
            "run.shard_replicas",
            self.shard_replicas as u64,
            0..=MAX_SHARD_REPLICAS,
        )?;
        bounded(
            kind,
            "run.checkpoint.keep_last",
            self.checkpoint.keep_last as u64,
            0..=MAX_KEEP_CHECKPOINTS,
        )?;
        if let Some(n) = self.checkpoint.every_iterations {
            positive(kind, "run.checkpoint.every_iterations", n)?;
        }
        if let Some(dir) = &self.tensorboard {
            let dir = env.resolve(dir);
            check_output_dir("run.tensorboard", &dir).map_err(|source| JobError::Unwritable {
                kind: kind.to_string(),
                source: Box::new(source),
            })?;
            self.tensorboard = Some(dir);
        }
        match &self.checkpoint.dir {
            Some(dir) => {
                let dir = env.resolve(dir);
                let store_err = |source| JobError::StoreSetting {
                    kind: kind.to_string(),
                    setting: "run.checkpoint.dir".into(),
                    source: Box::new(source),
                };
                check_claim(&dir, &self.checkpoint.claim(kind)).map_err(store_err)?;
                check_output_dir("run.checkpoint.dir", &dir).map_err(|source| {
                    JobError::Unwritable {
                        kind: kind.to_string(),
                        source: Box::new(source),
                    }
                })?;
                self.checkpoint.dir = Some(dir);
            }
            None if self.checkpoint.resume => {
                return Err(JobError::invalid(
                    kind,
                    "run.checkpoint.resume",
                    "true",
                    "resuming needs run.checkpoint.dir",
                ))
            }
            None if self.checkpoint.every_iterations.is_some() => {
                return Err(JobError::invalid(
                    kind,
                    "run.checkpoint.every_iterations",
                    self.checkpoint.every_iterations.unwrap_or(0),
                    "needs run.checkpoint.dir",
                ))
            }
            None => {}
        }
        Ok(())
    }
}

/// The settings a run resuming from a checkpoint must share with the run
/// that wrote it: one entry per field of `settings`, nested objects
/// flattened (`<kind>.<field>[.<field>…]` = the value's JSON), except the
/// fields named in `free` (what a resumed run may change, such as the
/// number of epochs; a name frees its nested fields too), so a mismatch
/// names the field.
pub fn fixed_settings<S: Serialize>(
    kind: &str,
    settings: &S,
    free: &[&str],
) -> Result<BTreeMap<String, String>> {
    let value = serde_json::to_value(settings).map_err(|e| JobError::Settings {
        kind: kind.to_string(),
        reason: e.to_string(),
    })?;
    let serde_json::Value::Object(fields) = value else {
        return Err(JobError::Settings {
            kind: kind.to_string(),
            reason: "the settings do not serialise to a JSON object".into(),
        });
    };
    let mut out = BTreeMap::new();
    flatten(kind, "", fields, free, &mut out);
    Ok(out)
}

fn flatten(
    kind: &str,
    prefix: &str,
    fields: serde_json::Map<String, serde_json::Value>,
    free: &[&str],
    out: &mut BTreeMap<String, String>,
) {
    for (k, v) in fields {
        let name = if prefix.is_empty() {
            k
        } else {
            format!("{prefix}.{k}")
        };
        if free.contains(&name.as_str()) {
            continue;
        }
        match v {
            serde_json::Value::Object(inner) if !inner.is_empty() => {
                flatten(kind, &name, inner, free, out)
            }
            v => {
                out.insert(format!("{kind}.{name}"), v.to_string());
            }
        }
    }
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
        // Nested settings are compared field by field.
        let nested = serde_json::json!({"a": 1, "train": {"lr": 0.1, "preset": "small"}});
        let fixed = fixed_settings("k", &nested, &["train.lr"]).unwrap();
        assert_eq!(fixed.keys().collect::<Vec<_>>(), ["k.a", "k.train.preset"]);
        assert!(fixed_settings("k", &nested, &["train"]).unwrap().len() == 1);
    }

    #[test]
    fn run_settings_are_checked_and_unknown_ones_refused() {
        let env = JobEnv {
            base: PathBuf::from("/base"),
        };
        let mut ok = RunSettings::default();
        ok.checkpoint.dir = Some("ck".into());
        ok.validate("k", &env).unwrap();
        assert_eq!(ok.checkpoint.dir, Some(PathBuf::from("/base/ck")));
        for (bad, setting) in [
            (
                RunSettings {
                    shards: Some(0),
                    ..RunSettings::default()
                },
                "run.shards",
            ),
            (
                RunSettings {
                    partitions: Some(0),
                    ..RunSettings::default()
                },
                "run.partitions",
            ),
            (
                RunSettings {
                    checkpoint: CheckpointSettings {
                        resume: true,
                        ..CheckpointSettings::default()
                    },
                    ..RunSettings::default()
                },
                "run.checkpoint.resume",
            ),
        ] {
            let err = bad.clone().validate("k", &env).unwrap_err().to_string();
            assert!(err.contains(setting), "{err}");
        }
        let unknown = serde_json::from_str::<RunSettings>(r#"{"shardz": 3}"#).unwrap_err();
        assert!(unknown.to_string().contains("shardz"), "{unknown}");
    }
}

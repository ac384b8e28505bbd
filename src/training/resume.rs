//! What a checkpoint records of its job (its kind and settings, under
//! [`META_KIND`] and [`META_SETTINGS`]), and resuming a run from its store
//! alone: the `resume` submission, whose only setting is the store.

use std::path::{Path, PathBuf};

use kiln_runtime::checkpoint::{CheckpointRecord, CheckpointStore};
use kiln_runtime::jobs::Accepted;
use serde::{Deserialize, Serialize};

use crate::jobs::{decode_settings, JobEnv, JobError, JobKinds, Result};

/// Checkpoint meta entry holding the job kind's name.
pub const META_KIND: &str = "job.kind";
/// Checkpoint meta entry holding the job's settings (JSON).
pub const META_SETTINGS: &str = "job.settings";
/// The submission that resumes a run from its checkpoint store.
pub const RESUME_KIND: &str = "resume";

/// Settings of a `resume` submission.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResumeSettings {
    /// The run's checkpoint store, on the driver's host.
    pub checkpoint_dir: PathBuf,
}

/// An accepted resume: the checkpointed job to run.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ResolvedResume {
    kind: String,
    settings: String,
}

/// The kind and settings (JSON) a checkpoint's job ran with.
pub fn checkpointed_job(dir: &Path, record: &CheckpointRecord) -> Result<(String, String)> {
    let get = |key: &str| {
        record
            .meta
            .get(key)
            .cloned()
            .ok_or_else(|| JobError::Checkpoint {
                dir: dir.to_path_buf(),
                id: record.id,
                reason: format!(
                    "it records no {key} (written by a Kiln from before job kinds were recorded: \
                 resume it with that version)"
                ),
            })
    };
    Ok((get(META_KIND)?, get(META_SETTINGS)?))
}

/// The newest valid checkpoint of the store at `dir` (read-only: nothing is
/// created) and its job.
pub fn newest_job(dir: &Path) -> Result<(CheckpointRecord, String, String)> {
    let store = CheckpointStore::open_for_reading(dir)?;
    let (record, _) = store.latest_valid()?;
    let (kind, settings) = checkpointed_job(dir, &record)?;
    Ok((record, kind, settings))
}

/// Checks a `resume` submission: the store exists on this host and its
/// newest valid checkpoint names a known kind whose settings (with the
/// store set to resume from) are accepted.
pub fn accept(kinds: &JobKinds, settings: &str, env: &JobEnv) -> Result<Accepted> {
    let s: ResumeSettings = decode_settings(RESUME_KIND, settings)?;
    let dir = env.existing(RESUME_KIND, "checkpoint_dir", &s.checkpoint_dir)?;
    let (record, kind, job_settings) = newest_job(&dir)?;
    let mut value: serde_json::Value =
        serde_json::from_str(&job_settings).map_err(|e| JobError::Checkpoint {
            dir: dir.clone(),
            id: record.id,
            reason: format!("its job settings do not decode: {e}"),
        })?;
    let checkpoint = value
        .get_mut("run")
        .and_then(|r| r.get_mut("checkpoint"))
        .and_then(|c| c.as_object_mut())
        .ok_or_else(|| JobError::Checkpoint {
            dir: dir.clone(),
            id: record.id,
            reason: "its job settings have no run.checkpoint".into(),
        })?;
    checkpoint.insert(
        "dir".into(),
        serde_json::Value::String(dir.display().to_string()),
    );
    checkpoint.insert("resume".into(), serde_json::Value::Bool(true));
    let accepted = kinds.get(&kind)?.accept(&value.to_string(), env)?;
    let resolved = ResolvedResume {
        kind: kind.clone(),
        settings: accepted.settings,
    };
    Ok(Accepted {
        settings: serde_json::to_string(&resolved).map_err(|e| JobError::Settings {
            kind: RESUME_KIND.into(),
            reason: e.to_string(),
        })?,
        description: format!(
            "resume {kind} from checkpoint {} (iteration {}, epoch {}): {}",
            record.id, record.iteration, record.epoch, accepted.description
        ),
    })
}

/// The kind and settings an accepted resume runs.
pub fn resolve(settings: &str) -> Result<(String, String)> {
    let r: ResolvedResume = decode_settings(RESUME_KIND, settings)?;
    Ok((r.kind, r.settings))
}

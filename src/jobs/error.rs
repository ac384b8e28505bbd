//! The job layer's error type: every variant names the job kind, the
//! setting or the path at fault.

use std::path::PathBuf;

/// What can go wrong checking or running a job.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// No kind of this name is registered.
    #[error("no job kind {kind:?} (known: {known})")]
    UnknownKind {
        /// The name asked for.
        kind: String,
        /// The registered names.
        known: String,
    },
    /// The settings do not decode (malformed JSON, an unknown setting, a
    /// value of the wrong type).
    #[error("{kind} settings: {reason}")]
    Settings {
        /// The job kind.
        kind: String,
        /// The decoder's message (it names the setting).
        reason: String,
    },
    /// A setting is out of range or inconsistent.
    #[error("{kind} setting {setting} = {value}: {reason}")]
    InvalidSetting {
        /// The job kind.
        kind: String,
        /// The setting (its path in the settings, e.g. `run.shards`).
        setting: String,
        /// Its value.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A path a job reads does not exist on the driver's host.
    #[error("{kind} setting {setting}: {} does not exist on the driver's host", path.display())]
    MissingPath {
        /// The job kind.
        kind: String,
        /// The setting naming it.
        setting: String,
        /// The path, as resolved on the driver's host.
        path: PathBuf,
    },
    /// An I/O error on a named file.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The job kind does not train a model (no checkpoint to export).
    #[error("job kind {kind:?} trains no model")]
    NotTraining {
        /// The job kind.
        kind: String,
    },
    /// A checkpoint lacks what resuming or exporting it needs.
    #[error("checkpoint {id} in {}: {reason}", dir.display())]
    Checkpoint {
        /// The store.
        dir: PathBuf,
        /// The checkpoint.
        id: u64,
        /// What is missing or wrong.
        reason: String,
    },
    /// A checkpoint store setting cannot be used (another run's store, a
    /// store of another kind, a directory that is neither free nor a
    /// store).
    #[error("{kind} setting {setting}: {source}")]
    StoreSetting {
        /// The job kind.
        kind: String,
        /// The setting (e.g. `run.checkpoint.dir`).
        setting: String,
        /// Why.
        #[source]
        source: Box<kiln_runtime::checkpoint::CheckpointError>,
    },
    /// An output path cannot be written.
    #[error("{kind}: {source}")]
    Unwritable {
        /// The job kind.
        kind: String,
        /// The path and why.
        #[source]
        source: Box<crate::output_paths::UnwritableOutput>,
    },
    /// The job was cancelled.
    #[error("cancelled")]
    Cancelled,
    /// A step of the job failed (what it was doing, and why).
    #[error("{what}: {reason}")]
    Step {
        /// What the job was doing.
        what: String,
        /// The error.
        reason: String,
    },
    /// The cluster runtime failed.
    #[error(transparent)]
    Runtime(#[from] kiln_runtime::Error),
    /// A checkpoint store failed.
    #[error(transparent)]
    Store(#[from] kiln_runtime::checkpoint::CheckpointError),
    /// The nn library failed.
    #[error(transparent)]
    Nn(#[from] kiln_nn::Error),
    /// The speech application failed.
    #[error(transparent)]
    Speech(#[from] kiln_speech::Error),
    /// The detection application failed.
    #[error(transparent)]
    Detection(#[from] kiln_detection::error::Error),
}

impl JobError {
    /// A failed step: `what` the job was doing and the error's text.
    pub fn step(what: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        JobError::Step {
            what: what.into(),
            reason: reason.to_string(),
        }
    }

    /// An invalid setting.
    pub fn invalid(
        kind: &str,
        setting: &str,
        value: impl std::fmt::Display,
        reason: impl Into<String>,
    ) -> Self {
        JobError::InvalidSetting {
            kind: kind.to_string(),
            setting: setting.to_string(),
            value: value.to_string(),
            reason: reason.into(),
        }
    }
}

/// The job layer's result type.
pub type Result<T> = std::result::Result<T, JobError>;

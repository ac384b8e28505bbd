//! Errors of the checkpoint store.

use std::path::PathBuf;

/// What went wrong with a checkpoint, and where.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// An I/O error on a named file or directory.
    #[error("checkpoint I/O on {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The sled manifest failed.
    #[error("checkpoint manifest {path}: {reason}")]
    Manifest {
        /// The manifest directory.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// A blob does not match its record (truncated, bit-flipped, missing).
    #[error("checkpoint {id} blob {name:?}: {reason}")]
    CorruptBlob {
        /// Checkpoint id.
        id: u64,
        /// Blob name.
        name: String,
        /// What does not match.
        reason: String,
    },
    /// A blob being written does not match the length or checksum its
    /// writer was told (a stream cut short, extra or changed bytes); no
    /// blob file was left behind.
    #[error("checkpoint {id} blob {name:?}: {reason}")]
    BlobMismatch {
        /// Checkpoint id.
        id: u64,
        /// Blob name.
        name: String,
        /// What does not match.
        reason: String,
    },
    /// A commit record cannot be decoded or fails its checksum.
    #[error("checkpoint {id} record: {reason}")]
    CorruptRecord {
        /// Checkpoint id.
        id: u64,
        /// What is wrong.
        reason: String,
    },
    /// No such checkpoint.
    #[error("checkpoint {id} not found in {dir}")]
    NotFound {
        /// Checkpoint id.
        id: u64,
        /// The store's directory.
        dir: PathBuf,
    },
    /// The store holds no checkpoint that verifies.
    #[error("no valid checkpoint in {dir} ({skipped} skipped as corrupt)")]
    NoValidCheckpoint {
        /// The store's directory.
        dir: PathBuf,
        /// How many committed checkpoints failed verification.
        skipped: usize,
    },
    /// An invalid argument (bad blob name, duplicate id, ...).
    #[error("checkpoint: {0}")]
    Invalid(String),
}

impl CheckpointError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        CheckpointError::Io {
            path: path.into(),
            source,
        }
    }
}

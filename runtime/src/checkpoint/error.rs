//! Errors of the checkpoint store.

use std::path::PathBuf;

use super::owner::StoreOwner;

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
    /// A directory that cannot be used as asked: not a store where one is
    /// needed, or not empty where a new store would go.
    #[error("{dir} cannot be used as a checkpoint store: {reason}")]
    NotAStore {
        /// The directory.
        dir: PathBuf,
        /// Why.
        reason: String,
    },
    /// A new run was pointed at a store another run owns.
    #[error(
        "checkpoint store {dir} belongs to {owner}: a new {claimant} run may neither append to it nor delete its checkpoints; \
         give the new run another directory, or continue that run (run.checkpoint.resume, or `kiln checkpoint resume --dir {dir}`)"
    )]
    OwnedByAnotherRun {
        /// The store.
        dir: PathBuf,
        /// Whose it is.
        owner: StoreOwner,
        /// The kind of the run that was refused.
        claimant: String,
    },
    /// A new run was pointed at a store written before stores recorded
    /// their owner.
    #[error(
        "{dir} holds a checkpoint store of an earlier run (written before stores recorded their owner): \
         a new {claimant} run may neither append to it nor delete its checkpoints; give it another directory"
    )]
    UnownedStore {
        /// The store.
        dir: PathBuf,
        /// The kind of the run that was refused.
        claimant: String,
    },
    /// A run tried to continue a store that belongs to another kind of job.
    #[error("checkpoint store {dir} belongs to {owner}, not to a {claimant} run: it cannot be continued as one")]
    KindMismatch {
        /// The store.
        dir: PathBuf,
        /// Whose it is.
        owner: StoreOwner,
        /// The kind of the run that was refused.
        claimant: String,
    },
    /// The owner file does not decode or fails its checksum.
    #[error("checkpoint store owner file {path}: {reason}")]
    CorruptOwner {
        /// The owner file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The manifest is corrupt and cannot be rebuilt from the checkpoints'
    /// own records.
    #[error("checkpoint manifest {path} is corrupt ({reason}) and cannot be rebuilt: {intact}")]
    ManifestUnrecoverable {
        /// The manifest directory.
        path: PathBuf,
        /// What sled reported.
        reason: String,
        /// What is intact and what to do about it.
        intact: String,
    },
    /// A blob name that is not a safe file name.
    #[error("checkpoint blob name {name:?}: use ASCII letters, digits, '.', '_' or '-'")]
    BadBlobName {
        /// The name given.
        name: String,
    },
    /// A blob whose recorded length does not fit this machine's memory.
    #[error("checkpoint blob {name:?} is too large ({len} bytes) to read here")]
    BlobTooLarge {
        /// The blob.
        name: String,
        /// Its recorded length.
        len: u64,
    },
    /// A write to a store opened only for reading.
    #[error("cannot {action} in {}: it is open read-only", dir.display())]
    ReadOnly {
        /// The store.
        dir: PathBuf,
        /// What was asked.
        action: String,
    },
    /// A commit of a checkpoint id the store already holds.
    #[error("checkpoint {id} is already committed")]
    AlreadyCommitted {
        /// The id.
        id: u64,
    },
    /// A commit record could not be encoded.
    #[error("encoding the record of checkpoint {id}: {source}")]
    EncodeRecord {
        /// The checkpoint.
        id: u64,
        /// The encoder's error.
        #[source]
        source: rmp_serde::encode::Error,
    },
}

impl CheckpointError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        CheckpointError::Io {
            path: path.into(),
            source,
        }
    }
}

//! Checkpoints: a sled manifest of commit records plus checksummed blob
//! files, written so that a torn or corrupted checkpoint is detected and
//! skipped rather than trusted.
//!
//! Layout of a checkpoint directory:
//! ```text
//! DIR/owner                the run the store belongs to (job kind, run id)
//! DIR/manifest/            sled database: one commit record per checkpoint
//! DIR/blobs/<id>/<name>    blob files (header with magic, version, length, CRC32)
//! DIR/blobs/<id>/.record   a copy of the checkpoint's commit record
//! ```
//! A store belongs to the one run that created it ([`StoreOwner`],
//! [`StoreClaim`]): a new run never appends to another's store nor deletes
//! its checkpoints, and readers never change anything.
//! Protocol: blobs are written with [`write_blob`] (a payload in memory)
//! or [`BlobWriter`] (a payload streamed in, a chunk at a time), which
//! write a temporary file, sync it and rename it into place, and return a
//! [`BlobRef`] (name, length, checksum). In data-parallel training the
//! driver writes every blob: driver-held parameter actors hand it their
//! payloads in memory, executor-hosted shards are streamed from the
//! executors (see `docs/runtime-protocol.md`), so the store lives on the
//! driver's host only. When all blobs of a checkpoint are written, one
//! process (the driver) calls [`CheckpointStore::commit`] with the record
//! listing every blob; the record is inserted and flushed last, so a
//! checkpoint exists only once all of its data is durable. Readers verify
//! each blob against the record (length and CRC32) and the record against
//! its own checksum; [`CheckpointStore::latest_valid`] returns the newest
//! checkpoint that verifies and says which newer ones it skipped and why.
//! Retention keeps the last K committed checkpoints and removes blob
//! directories that no record references (a run killed mid-write). The
//! record is also written beside the blobs before the manifest insert, so
//! a corrupt manifest is rebuilt from the checkpoints themselves.

mod blob;
mod crash_points;
mod error;
mod owner;
mod record;
mod store;

pub use blob::{read_blob, verify_blob, write_blob, BlobRef, BlobWriter, BLOB_MAGIC};
pub use crash_points::{CRASH_AT_ENV, CRASH_POINTS};
pub use error::CheckpointError;
pub use owner::{
    check_claim, decode_owner, dir_state, read_owner, DirState, StoreClaim, StoreOwner, OWNER_FILE,
};
pub use record::{CheckpointRecord, FORMAT_VERSION};
pub use store::{CheckpointStore, Recovery, Skipped, RECORD_FILE};

//! Commit records: everything a checkpoint holds besides its blobs, stored
//! in the manifest as rmp-serde bytes followed by their CRC32.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::blob::BlobRef;
use super::error::CheckpointError;

/// Version of the record format; a record of another version is refused.
pub const FORMAT_VERSION: u32 = 1;

/// One committed checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointRecord {
    /// Identifier; increases with every checkpoint of a store.
    pub id: u64,
    /// Record format version ([`FORMAT_VERSION`]).
    pub format_version: u32,
    /// Wall-clock time of the commit, milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
    /// Training iteration the checkpoint was taken after.
    pub iteration: u64,
    /// Completed epochs.
    pub epoch: u64,
    /// The blobs, all verified on read.
    pub blobs: Vec<BlobRef>,
    /// Free-form small values: job config, RNG and data-order state, model layout (JSON strings).
    pub meta: BTreeMap<String, String>,
}

impl CheckpointRecord {
    /// A record for checkpoint `id` at the given counters.
    pub fn new(id: u64, iteration: u64, epoch: u64) -> Self {
        let created_unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        CheckpointRecord {
            id,
            format_version: FORMAT_VERSION,
            created_unix_ms,
            iteration,
            epoch,
            blobs: Vec::new(),
            meta: BTreeMap::new(),
        }
    }

    /// The blob named `name`.
    pub fn blob(&self, name: &str) -> Option<&BlobRef> {
        self.blobs.iter().find(|b| b.name == name)
    }

    /// Total payload bytes.
    pub fn total_bytes(&self) -> u64 {
        self.blobs.iter().map(|b| b.len).sum()
    }

    pub(crate) fn encode(&self) -> Result<Vec<u8>, CheckpointError> {
        let mut bytes =
            rmp_serde::to_vec_named(self).map_err(|source| CheckpointError::EncodeRecord {
                id: self.id,
                source,
            })?;
        let crc = crc32fast::hash(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        Ok(bytes)
    }

    /// Decodes checkpoint `id`'s record from `bytes` (as the manifest or
    /// its record file holds it), checking its checksum, version and id.
    pub fn decode(id: u64, bytes: &[u8]) -> Result<Self, CheckpointError> {
        let corrupt = |reason: String| CheckpointError::CorruptRecord { id, reason };
        if bytes.len() < 4 {
            return Err(corrupt("record shorter than its checksum".into()));
        }
        let (body, tail) = bytes.split_at(bytes.len() - 4);
        let crc = u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]);
        if crc32fast::hash(body) != crc {
            return Err(corrupt("record checksum mismatch".into()));
        }
        let r: CheckpointRecord =
            rmp_serde::from_slice(body).map_err(|e| corrupt(format!("undecodable: {e}")))?;
        if r.format_version != FORMAT_VERSION {
            return Err(corrupt(format!(
                "format version {}, this build reads {FORMAT_VERSION}",
                r.format_version
            )));
        }
        if r.id != id {
            return Err(corrupt(format!("record says id {}", r.id)));
        }
        Ok(r)
    }
}

//! Blob files: a fixed header (magic, format version, payload length,
//! CRC32 of the payload) then the payload, written atomically.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::CheckpointError;

/// First bytes of every blob file.
pub const BLOB_MAGIC: [u8; 8] = *b"KILNBLB1";
const HEADER_LEN: usize = 8 + 4 + 8 + 4;
const BLOB_VERSION: u32 = 1;

/// What a commit record knows about one blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRef {
    /// Name, unique within the checkpoint (e.g. `params.shard.0`).
    pub name: String,
    /// Payload length in bytes.
    pub len: u64,
    /// CRC32 (IEEE) of the payload.
    pub crc32: u32,
}

/// The directory holding checkpoint `id`'s blobs under store directory `dir`.
pub(crate) fn blob_dir(dir: &Path, id: u64) -> PathBuf {
    dir.join("blobs").join(format!("{id:020}"))
}

fn check_name(name: &str) -> Result<(), CheckpointError> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(CheckpointError::Invalid(format!(
            "blob name {name:?}: use ASCII letters, digits, '.', '_' or '-'"
        )))
    }
}

/// Writes blob `name` of checkpoint `id` under store directory `dir`:
/// temporary file, fsync, rename, fsync of the directory. Any process that
/// can reach `dir` may call it; nothing is visible to readers until the
/// checkpoint's record is committed.
pub fn write_blob(
    dir: &Path,
    id: u64,
    name: &str,
    payload: &[u8],
) -> Result<BlobRef, CheckpointError> {
    check_name(name)?;
    let bdir = blob_dir(dir, id);
    std::fs::create_dir_all(&bdir).map_err(|e| CheckpointError::io(&bdir, e))?;
    let crc32 = crc32fast::hash(payload);
    let path = bdir.join(name);
    let tmp = bdir.join(format!(".{name}.tmp"));
    {
        let mut f = std::fs::File::create(&tmp).map_err(|e| CheckpointError::io(&tmp, e))?;
        let mut header = Vec::with_capacity(HEADER_LEN);
        header.extend_from_slice(&BLOB_MAGIC);
        header.extend_from_slice(&BLOB_VERSION.to_le_bytes());
        header.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        header.extend_from_slice(&crc32.to_le_bytes());
        f.write_all(&header)
            .map_err(|e| CheckpointError::io(&tmp, e))?;
        f.write_all(payload)
            .map_err(|e| CheckpointError::io(&tmp, e))?;
        f.sync_all().map_err(|e| CheckpointError::io(&tmp, e))?;
    }
    std::fs::rename(&tmp, &path).map_err(|e| CheckpointError::io(&path, e))?;
    if let Ok(d) = std::fs::File::open(&bdir) {
        let _ = d.sync_all();
    }
    Ok(BlobRef {
        name: name.to_string(),
        len: payload.len() as u64,
        crc32,
    })
}

/// Reads blob `r` of checkpoint `id` and verifies header, length and checksum.
pub fn read_blob(dir: &Path, id: u64, r: &BlobRef) -> Result<Vec<u8>, CheckpointError> {
    let corrupt = |reason: String| CheckpointError::CorruptBlob {
        id,
        name: r.name.clone(),
        reason,
    };
    check_name(&r.name)?;
    let path = blob_dir(dir, id).join(&r.name);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(corrupt(format!("file {} is missing", path.display())))
        }
        Err(e) => return Err(CheckpointError::io(&path, e)),
    };
    if bytes.len() < HEADER_LEN || bytes[..8] != BLOB_MAGIC {
        return Err(corrupt("bad header (not a kiln blob, or cut off)".into()));
    }
    let version = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    if version != BLOB_VERSION {
        return Err(corrupt(format!(
            "blob format version {version}, expected {BLOB_VERSION}"
        )));
    }
    let mut len8 = [0u8; 8];
    len8.copy_from_slice(&bytes[12..20]);
    let len = u64::from_le_bytes(len8);
    let crc = u32::from_le_bytes([bytes[20], bytes[21], bytes[22], bytes[23]]);
    let payload = &bytes[HEADER_LEN..];
    if len != r.len || payload.len() as u64 != r.len {
        return Err(corrupt(format!(
            "length {} on disk (header says {len}), record says {} (truncated?)",
            payload.len(),
            r.len
        )));
    }
    let actual = crc32fast::hash(payload);
    if crc != r.crc32 || actual != r.crc32 {
        return Err(corrupt(format!(
            "checksum {actual:08x}, record says {:08x} (bit flip?)",
            r.crc32
        )));
    }
    Ok(payload.to_vec())
}

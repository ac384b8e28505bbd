//! Blob files: a fixed header (magic, format version, payload length,
//! CRC32 of the payload) then the payload, written atomically.
//!
//! A blob is written either from a payload in memory ([`write_blob`]) or
//! as it arrives, a chunk at a time ([`BlobWriter`]: the driver streams
//! the blobs of executor-hosted shards from the network into its store
//! without ever holding one whole). Either way the file is a temporary
//! one until it is complete, synced and renamed into place, and readers
//! verify the length and checksum the commit record lists
//! ([`read_blob`], or [`verify_blob`] without keeping the payload).

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::CheckpointError;

/// First bytes of every blob file.
pub const BLOB_MAGIC: [u8; 8] = *b"KILNBLB1";
const HEADER_LEN: usize = 8 + 4 + 8 + 4;
const BLOB_VERSION: u32 = 1;
/// Bytes a streaming writer gathers before a write system call (network
/// chunks are a datagram or less), and a verifying reader reads at once.
const IO_CHUNK: usize = 1 << 20;

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
        Err(CheckpointError::BadBlobName {
            name: name.to_string(),
        })
    }
}

fn header(len: u64, crc32: u32) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(&BLOB_MAGIC);
    h[8..12].copy_from_slice(&BLOB_VERSION.to_le_bytes());
    h[12..20].copy_from_slice(&len.to_le_bytes());
    h[20..24].copy_from_slice(&crc32.to_le_bytes());
    h
}

/// Writes one blob as its payload arrives, a chunk at a time, so a blob
/// of any size passes through memory [`IO_CHUNK`] bytes at a time.
///
/// The writer is told the payload's length and CRC32 up front (the
/// executor that staged the blob reports them) and writes them into the
/// header first, so nothing is rewritten in place; it checks the bytes it
/// is given against both before the blob becomes visible. Until
/// [`BlobWriter::finish`] succeeds the bytes sit in a temporary file
/// (`.NAME.tmp` beside the blob), which is removed if the writer is
/// dropped unfinished or a check fails: a short stream, extra bytes or a
/// changed byte never leave a blob file behind.
#[derive(Debug)]
pub struct BlobWriter {
    id: u64,
    name: String,
    bdir: PathBuf,
    path: PathBuf,
    tmp: PathBuf,
    file: BufWriter<File>,
    hasher: crc32fast::Hasher,
    written: u64,
    len: u64,
    crc32: u32,
    /// Renamed into place (the temporary file is gone).
    done: bool,
}

impl BlobWriter {
    /// Starts blob `name` of checkpoint `id` under store directory `dir`,
    /// whose payload will be `len` bytes with CRC32 `crc32`.
    pub fn create(
        dir: &Path,
        id: u64,
        name: &str,
        len: u64,
        crc32: u32,
    ) -> Result<Self, CheckpointError> {
        check_name(name)?;
        let bdir = blob_dir(dir, id);
        std::fs::create_dir_all(&bdir).map_err(|e| CheckpointError::io(&bdir, e))?;
        let path = bdir.join(name);
        let tmp = bdir.join(format!(".{name}.tmp"));
        let f = File::create(&tmp).map_err(|e| CheckpointError::io(&tmp, e))?;
        let mut w = BlobWriter {
            id,
            name: name.to_string(),
            bdir,
            path,
            tmp,
            file: BufWriter::with_capacity(IO_CHUNK, f),
            hasher: crc32fast::Hasher::new(),
            written: 0,
            len,
            crc32,
            done: false,
        };
        let h = header(len, crc32);
        w.file
            .write_all(&h)
            .map_err(|e| CheckpointError::io(&w.tmp, e))?;
        Ok(w)
    }

    fn mismatch(&self, reason: String) -> CheckpointError {
        CheckpointError::BlobMismatch {
            id: self.id,
            name: self.name.clone(),
            reason,
        }
    }

    /// Appends the next `chunk` of the payload. More bytes than announced
    /// are an error.
    pub fn write(&mut self, chunk: &[u8]) -> Result<(), CheckpointError> {
        let end = self.written + chunk.len() as u64;
        if end > self.len {
            return Err(self.mismatch(format!("{end} bytes received, {} announced", self.len)));
        }
        self.hasher.update(chunk);
        self.file
            .write_all(chunk)
            .map_err(|e| CheckpointError::io(&self.tmp, e))?;
        let half = self.len / 2;
        if self.written < half && end >= half {
            super::crash_points::crash_point("blob-partial");
        }
        self.written = end;
        Ok(())
    }

    /// Payload bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Checks that the whole payload arrived with the announced checksum,
    /// then syncs the file, renames it into place and syncs the directory.
    pub fn finish(mut self) -> Result<BlobRef, CheckpointError> {
        if self.written != self.len {
            return Err(self.mismatch(format!(
                "the payload ended after {} of its {} announced bytes",
                self.written, self.len
            )));
        }
        let actual = std::mem::take(&mut self.hasher).finalize();
        if actual != self.crc32 {
            return Err(self.mismatch(format!(
                "the bytes received have checksum {actual:08x}, {:08x} was announced",
                self.crc32
            )));
        }
        self.file
            .flush()
            .map_err(|e| CheckpointError::io(&self.tmp, e))?;
        self.file
            .get_ref()
            .sync_all()
            .map_err(|e| CheckpointError::io(&self.tmp, e))?;
        std::fs::rename(&self.tmp, &self.path).map_err(|e| CheckpointError::io(&self.path, e))?;
        self.done = true;
        if let Ok(d) = File::open(&self.bdir) {
            let _ = d.sync_all();
        }
        Ok(BlobRef {
            name: self.name.clone(),
            len: self.len,
            crc32: self.crc32,
        })
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if !self.done {
            // Unfinished or refused: leave nothing behind (best effort; a
            // leftover temporary file is never read as a blob).
            let _ = std::fs::remove_file(&self.tmp);
        }
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
    let mut w = BlobWriter::create(
        dir,
        id,
        name,
        payload.len() as u64,
        crc32fast::hash(payload),
    )?;
    let half = payload.len() / 2;
    w.write(&payload[..half])?;
    w.write(&payload[half..])?;
    w.finish()
}

/// Opens blob `r` of checkpoint `id` and checks its header and size
/// against the record; returns the file positioned at the payload.
fn open_blob(dir: &Path, id: u64, r: &BlobRef) -> Result<File, CheckpointError> {
    let corrupt = |reason: String| CheckpointError::CorruptBlob {
        id,
        name: r.name.clone(),
        reason,
    };
    check_name(&r.name)?;
    let path = blob_dir(dir, id).join(&r.name);
    let mut f = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(corrupt(format!("file {} is missing", path.display())))
        }
        Err(e) => return Err(CheckpointError::io(&path, e)),
    };
    let size = f
        .metadata()
        .map_err(|e| CheckpointError::io(&path, e))?
        .len();
    let mut h = [0u8; HEADER_LEN];
    if size < HEADER_LEN as u64 {
        return Err(corrupt("bad header (not a kiln blob, or cut off)".into()));
    }
    f.read_exact(&mut h)
        .map_err(|e| CheckpointError::io(&path, e))?;
    if h[..8] != BLOB_MAGIC {
        return Err(corrupt("bad header (not a kiln blob, or cut off)".into()));
    }
    let version = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
    if version != BLOB_VERSION {
        return Err(corrupt(format!(
            "blob format version {version}, expected {BLOB_VERSION}"
        )));
    }
    let mut len8 = [0u8; 8];
    len8.copy_from_slice(&h[12..20]);
    let len = u64::from_le_bytes(len8);
    let crc = u32::from_le_bytes([h[20], h[21], h[22], h[23]]);
    let on_disk = size - HEADER_LEN as u64;
    if len != r.len || on_disk != r.len {
        return Err(corrupt(format!(
            "length {on_disk} on disk (header says {len}), record says {} (truncated?)",
            r.len
        )));
    }
    if crc != r.crc32 {
        return Err(corrupt(format!(
            "header checksum {crc:08x}, record says {:08x} (bit flip?)",
            r.crc32
        )));
    }
    Ok(f)
}

fn checksum_mismatch(id: u64, r: &BlobRef, actual: u32) -> CheckpointError {
    CheckpointError::CorruptBlob {
        id,
        name: r.name.clone(),
        reason: format!(
            "checksum {actual:08x}, record says {:08x} (bit flip?)",
            r.crc32
        ),
    }
}

/// Reads blob `r` of checkpoint `id` and verifies header, length and checksum.
pub fn read_blob(dir: &Path, id: u64, r: &BlobRef) -> Result<Vec<u8>, CheckpointError> {
    let mut f = open_blob(dir, id, r)?;
    let len = usize::try_from(r.len).map_err(|_| CheckpointError::BlobTooLarge {
        name: r.name.clone(),
        len: r.len,
    })?;
    let mut payload = vec![0u8; len];
    f.read_exact(&mut payload)
        .map_err(|e| CheckpointError::io(blob_dir(dir, id).join(&r.name), e))?;
    let actual = crc32fast::hash(&payload);
    if actual != r.crc32 {
        return Err(checksum_mismatch(id, r, actual));
    }
    Ok(payload)
}

/// Verifies blob `r` of checkpoint `id` as [`read_blob`] does, reading it
/// [`IO_CHUNK`] bytes at a time (nothing of it is kept): what committing
/// and resuming check every blob with.
pub fn verify_blob(dir: &Path, id: u64, r: &BlobRef) -> Result<(), CheckpointError> {
    let mut f = open_blob(dir, id, r)?;
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = vec![0u8; IO_CHUNK.min(r.len as usize)];
    let mut left = r.len;
    while left > 0 {
        let n = buf.len().min(left as usize);
        f.read_exact(&mut buf[..n])
            .map_err(|e| CheckpointError::io(blob_dir(dir, id).join(&r.name), e))?;
        hasher.update(&buf[..n]);
        left -= n as u64;
    }
    let actual = hasher.finalize();
    if actual != r.crc32 {
        return Err(checksum_mismatch(id, r, actual));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 + i / 7) as u8).collect()
    }

    /// Nothing but the given blobs in checkpoint `id`'s directory: no
    /// temporary files left.
    fn files(dir: &Path, id: u64) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(blob_dir(dir, id))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    #[test]
    fn a_blob_streamed_in_chunks_reads_back_as_write_blob_writes_it() {
        let dir = tempfile::tempdir().unwrap();
        for n in [0, 1, 4095, IO_CHUNK + 17] {
            let data = payload(n);
            let crc = crc32fast::hash(&data);
            let mut w = BlobWriter::create(dir.path(), 1, "streamed", n as u64, crc).unwrap();
            // Uneven chunks, an empty one among them, as a network delivers.
            for chunk in data
                .chunks(1000)
                .flat_map(|c| [&c[..c.len() / 3], &[], &c[c.len() / 3..]])
            {
                w.write(chunk).unwrap();
            }
            assert_eq!(w.written(), n as u64);
            let r = w.finish().unwrap();
            assert_eq!(
                r,
                BlobRef {
                    name: "streamed".into(),
                    len: n as u64,
                    crc32: crc
                }
            );
            assert_eq!(read_blob(dir.path(), 1, &r).unwrap(), data, "n = {n}");
            verify_blob(dir.path(), 1, &r).unwrap();
            // Byte for byte the file write_blob makes.
            let whole = write_blob(dir.path(), 2, "streamed", &data).unwrap();
            assert_eq!(whole, r);
            assert_eq!(
                std::fs::read(blob_dir(dir.path(), 1).join("streamed")).unwrap(),
                std::fs::read(blob_dir(dir.path(), 2).join("streamed")).unwrap()
            );
            assert_eq!(files(dir.path(), 1), vec!["streamed".to_string()]);
        }
    }

    #[test]
    fn a_wrong_checksum_short_or_long_stream_leaves_no_blob_and_says_which() {
        let dir = tempfile::tempdir().unwrap();
        let data = payload(3000);
        let crc = crc32fast::hash(&data);
        // A changed byte: the checksum announced does not match.
        let mut w = BlobWriter::create(dir.path(), 7, "params.shard.1", 3000, crc).unwrap();
        let mut flipped = data.clone();
        flipped[1234] ^= 0x04;
        w.write(&flipped).unwrap();
        let err = w.finish().unwrap_err().to_string();
        assert!(
            err.contains("checkpoint 7")
                && err.contains("params.shard.1")
                && err.contains("checksum"),
            "{err}"
        );
        assert!(
            files(dir.path(), 7).is_empty(),
            "{:?}",
            files(dir.path(), 7)
        );
        // A stream that ends early.
        let mut w = BlobWriter::create(dir.path(), 7, "params.shard.1", 3000, crc).unwrap();
        w.write(&data[..2999]).unwrap();
        let err = w.finish().unwrap_err().to_string();
        assert!(err.contains("2999 of its 3000"), "{err}");
        assert!(files(dir.path(), 7).is_empty());
        // More bytes than announced.
        let mut w = BlobWriter::create(dir.path(), 7, "params.shard.1", 10, crc).unwrap();
        let err = w.write(&data[..11]).unwrap_err().to_string();
        assert!(err.contains("11 bytes received, 10 announced"), "{err}");
        drop(w);
        // A writer dropped half way (a transfer that failed).
        let mut w = BlobWriter::create(dir.path(), 7, "params.shard.1", 3000, crc).unwrap();
        w.write(&data[..100]).unwrap();
        drop(w);
        assert!(files(dir.path(), 7).is_empty());
        // A blob already there is not replaced by a failed one.
        let good = write_blob(dir.path(), 7, "params.shard.1", &data).unwrap();
        let mut w = BlobWriter::create(dir.path(), 7, "params.shard.1", 3000, crc ^ 1).unwrap();
        w.write(&data).unwrap();
        assert!(w.finish().is_err());
        assert_eq!(read_blob(dir.path(), 7, &good).unwrap(), data);
        assert_eq!(files(dir.path(), 7), vec!["params.shard.1".to_string()]);
        // Names are checked before anything is created.
        assert!(BlobWriter::create(dir.path(), 8, "../x", 1, 0).is_err());
        assert!(!blob_dir(dir.path(), 8).exists());
    }

    #[test]
    fn verification_reads_in_chunks_and_catches_a_flip_anywhere() {
        let dir = tempfile::tempdir().unwrap();
        let data = payload(2 * IO_CHUNK + 5);
        let r = write_blob(dir.path(), 3, "big", &data).unwrap();
        verify_blob(dir.path(), 3, &r).unwrap();
        let path = blob_dir(dir.path(), 3).join("big");
        let mut bytes = std::fs::read(&path).unwrap();
        let at = HEADER_LEN + IO_CHUNK + 3;
        bytes[at] ^= 0x80;
        std::fs::write(&path, &bytes).unwrap();
        let err = verify_blob(dir.path(), 3, &r).unwrap_err().to_string();
        assert!(err.contains("checksum"), "{err}");
        assert!(read_blob(dir.path(), 3, &r).is_err());
    }
}

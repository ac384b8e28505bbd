//! [`CheckpointStore`]: the manifest (sled) of commit records, retention,
//! verification and the newest-valid lookup used on resume.

use std::path::{Path, PathBuf};

use super::blob::{blob_dir, read_blob, verify_blob};
use super::error::CheckpointError;
use super::record::CheckpointRecord;

/// A committed checkpoint that failed verification, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// Its id.
    pub id: u64,
    /// What failed (e.g. `blob "params.shard.1": checksum ...`).
    pub reason: String,
}

/// A directory of checkpoints. Only one process opens the manifest at a
/// time (the driver, or a `kiln checkpoint` command); blob writers need only
/// the directory path ([`super::write_blob`]). A reader may look at a store
/// a running job holds through a snapshot of its manifest
/// ([`CheckpointStore::open_for_reading`]).
pub struct CheckpointStore {
    dir: PathBuf,
    db: sled::Db,
    commits: sled::Tree,
    keep_last: usize,
    /// The temporary copy of the manifest a snapshot reads (removed when
    /// the store is dropped); `None` for the store itself.
    snapshot: Option<tempfile::TempDir>,
}

impl std::fmt::Debug for CheckpointStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointStore")
            .field("dir", &self.dir)
            .field("keep_last", &self.keep_last)
            .finish()
    }
}

impl CheckpointStore {
    /// Opens (or creates) the store in `dir`, keeping the last `keep_last`
    /// committed checkpoints (0 keeps all).
    pub fn open(dir: &Path, keep_last: usize) -> Result<Self, CheckpointError> {
        std::fs::create_dir_all(dir).map_err(|e| CheckpointError::io(dir, e))?;
        let manifest = dir.join("manifest");
        let manifest_err = |e: sled::Error| CheckpointError::Manifest {
            path: manifest.clone(),
            reason: e.to_string(),
        };
        let db = sled::Config::new()
            .path(&manifest)
            .open()
            .map_err(manifest_err)?;
        let commits = db.open_tree("commits").map_err(manifest_err)?;
        Ok(CheckpointStore {
            dir: dir.to_path_buf(),
            db,
            commits,
            keep_last,
            snapshot: None,
        })
    }

    /// Opens an existing store to read it (list, verify, read blobs; it
    /// keeps everything). While another process holds the manifest (a
    /// running job), reads a snapshot instead: a copy of the manifest taken
    /// now, with the blobs read in place. Checkpoints committed after the
    /// copy are not in it; one that retention removes meanwhile fails
    /// verification like any missing blob. A snapshot refuses to commit or
    /// delete.
    pub fn open_for_reading(dir: &Path) -> Result<Self, CheckpointError> {
        let manifest = dir.join("manifest");
        if !manifest.is_dir() {
            return Err(CheckpointError::Invalid(format!(
                "{} is not a checkpoint store (no manifest)",
                dir.display()
            )));
        }
        match Self::open(dir, 0) {
            Err(CheckpointError::Manifest { reason, .. }) if is_lock_held(&reason) => {
                Self::open_snapshot(dir)
            }
            other => other,
        }
    }

    fn open_snapshot(dir: &Path) -> Result<Self, CheckpointError> {
        let manifest = dir.join("manifest");
        let copy = tempfile::Builder::new()
            .prefix("kiln-manifest-")
            .tempdir()
            .map_err(|e| CheckpointError::io(std::env::temp_dir(), e))?;
        let copied = copy.path().join("manifest");
        copy_dir(&manifest, &copied)?;
        let manifest_err = |e: sled::Error| CheckpointError::Manifest {
            path: manifest.clone(),
            reason: format!("snapshot copy: {e}"),
        };
        let db = sled::Config::new()
            .path(&copied)
            .open()
            .map_err(manifest_err)?;
        let commits = db.open_tree("commits").map_err(manifest_err)?;
        tracing::debug!(dir = %dir.display(), "store in use: reading a snapshot of its manifest");
        Ok(CheckpointStore {
            dir: dir.to_path_buf(),
            db,
            commits,
            keep_last: 0,
            snapshot: Some(copy),
        })
    }

    /// Whether this is a snapshot of a store another process holds
    /// ([`CheckpointStore::open_for_reading`]).
    pub fn is_snapshot(&self) -> bool {
        self.snapshot.is_some()
    }

    fn refuse_if_snapshot(&self, what: &str) -> Result<(), CheckpointError> {
        if self.is_snapshot() {
            return Err(CheckpointError::Invalid(format!(
                "cannot {what} in {}: it is open as a read-only snapshot (another process holds the store)",
                self.dir.display()
            )));
        }
        Ok(())
    }

    /// The store's directory (what blob writers need).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn manifest_err(&self, e: sled::Error) -> CheckpointError {
        CheckpointError::Manifest {
            path: self.dir.join("manifest"),
            reason: e.to_string(),
        }
    }

    /// The id to use for the next checkpoint (one past the newest committed
    /// one, and past any blob directory already on disk).
    pub fn next_id(&self) -> Result<u64, CheckpointError> {
        let committed = self
            .commits
            .last()
            .map_err(|e| self.manifest_err(e))?
            .map(|(k, _)| key_id(&k) + 1)
            .unwrap_or(1);
        let on_disk = self
            .blob_dir_ids()?
            .into_iter()
            .max()
            .map(|m| m + 1)
            .unwrap_or(1);
        Ok(committed.max(on_disk))
    }

    /// Commits a checkpoint whose blobs have all been written: verifies each
    /// blob, then inserts the record and flushes the manifest (the commit
    /// point), then applies retention. Returns the ids retention removed.
    pub fn commit(&self, record: &CheckpointRecord) -> Result<Vec<u64>, CheckpointError> {
        self.refuse_if_snapshot("commit a checkpoint")?;
        if self
            .commits
            .contains_key(record.id.to_be_bytes())
            .map_err(|e| self.manifest_err(e))?
        {
            return Err(CheckpointError::Invalid(format!(
                "checkpoint {} already committed",
                record.id
            )));
        }
        for b in &record.blobs {
            verify_blob(&self.dir, record.id, b)?;
        }
        let bytes = record.encode()?;
        self.commits
            .insert(record.id.to_be_bytes(), bytes)
            .map_err(|e| self.manifest_err(e))?;
        self.db.flush().map_err(|e| self.manifest_err(e))?;
        tracing::info!(
            id = record.id,
            iteration = record.iteration,
            bytes = record.total_bytes(),
            "checkpoint committed"
        );
        self.apply_retention()
    }

    /// Ids of all committed checkpoints, oldest first.
    pub fn ids(&self) -> Result<Vec<u64>, CheckpointError> {
        self.commits
            .iter()
            .keys()
            .map(|k| k.map(|k| key_id(&k)).map_err(|e| self.manifest_err(e)))
            .collect()
    }

    /// The record of checkpoint `id` (decoded and checksum-verified, blobs not read).
    pub fn record(&self, id: u64) -> Result<CheckpointRecord, CheckpointError> {
        let bytes = self
            .commits
            .get(id.to_be_bytes())
            .map_err(|e| self.manifest_err(e))?
            .ok_or_else(|| CheckpointError::NotFound {
                id,
                dir: self.dir.clone(),
            })?;
        CheckpointRecord::decode(id, &bytes)
    }

    /// Verifies checkpoint `id` completely (record and every blob).
    pub fn verify(&self, id: u64) -> Result<CheckpointRecord, CheckpointError> {
        let r = self.record(id)?;
        for b in &r.blobs {
            verify_blob(&self.dir, id, b)?;
        }
        Ok(r)
    }

    /// The newest checkpoint that verifies, and the newer ones skipped with the reason.
    pub fn latest_valid(&self) -> Result<(CheckpointRecord, Vec<Skipped>), CheckpointError> {
        let mut skipped = Vec::new();
        for id in self.ids()?.into_iter().rev() {
            match self.verify(id) {
                Ok(r) => {
                    for s in &skipped {
                        let s: &Skipped = s;
                        tracing::warn!(id = s.id, reason = %s.reason, "skipped corrupt checkpoint");
                    }
                    return Ok((r, skipped));
                }
                Err(
                    e @ (CheckpointError::CorruptBlob { .. }
                    | CheckpointError::CorruptRecord { .. }),
                ) => {
                    skipped.push(Skipped {
                        id,
                        reason: e.to_string(),
                    });
                }
                Err(e) => return Err(e),
            }
        }
        Err(CheckpointError::NoValidCheckpoint {
            dir: self.dir.clone(),
            skipped: skipped.len(),
        })
    }

    /// Reads and verifies blob `name` of a committed checkpoint.
    pub fn read(&self, record: &CheckpointRecord, name: &str) -> Result<Vec<u8>, CheckpointError> {
        let b = record
            .blob(name)
            .ok_or_else(|| CheckpointError::CorruptBlob {
                id: record.id,
                name: name.to_string(),
                reason: "not listed in the record".into(),
            })?;
        read_blob(&self.dir, record.id, b)
    }

    /// Removes checkpoint `id` (record first, then its blobs).
    pub fn delete(&self, id: u64) -> Result<(), CheckpointError> {
        self.refuse_if_snapshot("delete a checkpoint")?;
        self.commits
            .remove(id.to_be_bytes())
            .map_err(|e| self.manifest_err(e))?;
        self.db.flush().map_err(|e| self.manifest_err(e))?;
        remove_dir(&blob_dir(&self.dir, id))
    }

    fn blob_dir_ids(&self) -> Result<Vec<u64>, CheckpointError> {
        let root = self.dir.join("blobs");
        let entries = match std::fs::read_dir(&root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(CheckpointError::io(&root, e)),
        };
        Ok(entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u64>().ok()))
            .collect())
    }

    /// Keeps the newest `keep_last` records; removes older ones and blob
    /// directories no record references that are older than the newest
    /// commit (left by a writer that died before its commit).
    fn apply_retention(&self) -> Result<Vec<u64>, CheckpointError> {
        let ids = self.ids()?;
        let mut removed = Vec::new();
        if self.keep_last > 0 && ids.len() > self.keep_last {
            for &id in &ids[..ids.len() - self.keep_last] {
                self.delete(id)?;
                removed.push(id);
            }
        }
        let kept = self.ids()?;
        if let Some(&newest) = kept.last() {
            for id in self.blob_dir_ids()? {
                if id < newest && !kept.contains(&id) {
                    remove_dir(&blob_dir(&self.dir, id))?;
                    tracing::debug!(id, "removed blobs of an uncommitted checkpoint");
                }
            }
        }
        Ok(removed)
    }
}

/// Whether sled failed to open a manifest because another process holds
/// its lock (sled 0.34 reports it only as this message).
fn is_lock_held(reason: &str) -> bool {
    reason.contains("could not acquire lock")
}

/// Copies directory `from` (files and subdirectories) to `to`.
fn copy_dir(from: &Path, to: &Path) -> Result<(), CheckpointError> {
    std::fs::create_dir_all(to).map_err(|e| CheckpointError::io(to, e))?;
    for entry in std::fs::read_dir(from).map_err(|e| CheckpointError::io(from, e))? {
        let entry = entry.map_err(|e| CheckpointError::io(from, e))?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let kind = entry
            .file_type()
            .map_err(|e| CheckpointError::io(&src, e))?;
        if kind.is_dir() {
            copy_dir(&src, &dst)?;
        } else {
            std::fs::copy(&src, &dst).map_err(|e| CheckpointError::io(&src, e))?;
        }
    }
    Ok(())
}

fn key_id(k: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = k.len().min(8);
    b[8 - n..].copy_from_slice(&k[k.len() - n..]);
    u64::from_be_bytes(b)
}

fn remove_dir(path: &Path) -> Result<(), CheckpointError> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(CheckpointError::io(path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::write_blob;

    fn checkpoint(
        store: &CheckpointStore,
        iteration: u64,
        payloads: &[(&str, Vec<u8>)],
    ) -> CheckpointRecord {
        let id = store.next_id().unwrap();
        let mut r = CheckpointRecord::new(id, iteration, 0);
        for (name, p) in payloads {
            r.blobs.push(write_blob(store.dir(), id, name, p).unwrap());
        }
        r.meta.insert("job".into(), "{\"lr\":0.1}".into());
        store.commit(&r).unwrap();
        r
    }

    #[test]
    fn commit_read_and_keep_last_k() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path(), 2).unwrap();
        for it in 1..=4u64 {
            checkpoint(
                &store,
                it * 10,
                &[("params.shard.0", vec![it as u8; 100]), ("rng", vec![7; 3])],
            );
        }
        assert_eq!(store.ids().unwrap(), vec![3, 4]);
        assert!(!blob_dir(dir.path(), 1).exists());
        let (r, skipped) = store.latest_valid().unwrap();
        assert!(skipped.is_empty());
        assert_eq!((r.id, r.iteration), (4, 40));
        assert_eq!(store.read(&r, "params.shard.0").unwrap(), vec![4u8; 100]);
        assert_eq!(r.meta["job"], "{\"lr\":0.1}");
    }

    #[test]
    fn a_store_in_use_is_read_through_a_snapshot_of_its_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let writer = CheckpointStore::open(dir.path(), 0).unwrap();
        checkpoint(&writer, 10, &[("params.shard.0", vec![1u8; 64])]);
        // The writer holds the manifest: a plain open fails, a reader gets
        // a snapshot with the committed checkpoint and its blobs.
        assert!(CheckpointStore::open(dir.path(), 0).is_err());
        let reader = CheckpointStore::open_for_reading(dir.path()).unwrap();
        assert!(reader.is_snapshot());
        let (r, _) = reader.latest_valid().unwrap();
        assert_eq!(r.iteration, 10);
        assert_eq!(reader.read(&r, "params.shard.0").unwrap(), vec![1u8; 64]);
        // Later commits are not in the snapshot; it changes nothing.
        checkpoint(&writer, 20, &[("params.shard.0", vec![2u8; 64])]);
        assert_eq!(reader.ids().unwrap(), vec![1]);
        assert!(
            matches!(reader.delete(1), Err(CheckpointError::Invalid(m)) if m.contains("read-only"))
        );
        assert!(reader.commit(&r).is_err());
        assert_eq!(writer.ids().unwrap(), vec![1, 2]);
        drop(reader);
        // With no other holder the reader opens the store itself.
        drop(writer);
        let reader = CheckpointStore::open_for_reading(dir.path()).unwrap();
        assert!(!reader.is_snapshot());
        assert_eq!(reader.ids().unwrap(), vec![1, 2]);
        let empty = tempfile::tempdir().unwrap();
        let err = CheckpointStore::open_for_reading(empty.path()).unwrap_err();
        assert!(err.to_string().contains("not a checkpoint store"), "{err}");
    }

    #[test]
    fn truncated_or_flipped_blob_falls_back_to_previous_and_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path(), 0).unwrap();
        checkpoint(&store, 1, &[("a", vec![1; 1000])]);
        checkpoint(&store, 2, &[("a", vec![2; 1000])]);
        checkpoint(&store, 3, &[("a", vec![3; 1000])]);
        // bit flip in checkpoint 3, truncation in checkpoint 2
        let p3 = blob_dir(dir.path(), 3).join("a");
        let mut bytes = std::fs::read(&p3).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x10;
        std::fs::write(&p3, bytes).unwrap();
        let p2 = blob_dir(dir.path(), 2).join("a");
        let bytes = std::fs::read(&p2).unwrap();
        std::fs::write(&p2, &bytes[..bytes.len() / 2]).unwrap();

        let (r, skipped) = store.latest_valid().unwrap();
        assert_eq!(r.id, 1);
        assert_eq!(skipped.iter().map(|s| s.id).collect::<Vec<_>>(), vec![3, 2]);
        assert!(
            skipped[0].reason.contains("checksum"),
            "{}",
            skipped[0].reason
        );
        assert!(
            skipped[1].reason.contains("truncated"),
            "{}",
            skipped[1].reason
        );
        std::fs::remove_file(blob_dir(dir.path(), 1).join("a")).unwrap();
        assert!(matches!(
            store.latest_valid(),
            Err(CheckpointError::NoValidCheckpoint { skipped: 3, .. })
        ));
    }

    #[test]
    fn uncommitted_blobs_are_invisible_and_cleaned_up() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = CheckpointStore::open(dir.path(), 3).unwrap();
            checkpoint(&store, 1, &[("a", vec![1; 10])]);
            // a writer dies after writing blobs of checkpoint 2, before the commit
            write_blob(store.dir(), 2, "a", &[9; 10]).unwrap();
            let (r, _) = store.latest_valid().unwrap();
            assert_eq!(r.id, 1);
            assert_eq!(store.next_id().unwrap(), 3);
        }
        // reopen (as after a driver restart): the torn checkpoint is still not visible
        let store = CheckpointStore::open(dir.path(), 3).unwrap();
        assert_eq!(store.ids().unwrap(), vec![1]);
        checkpoint(&store, 3, &[("a", vec![3; 10])]);
        assert!(!blob_dir(dir.path(), 2).exists(), "orphaned blobs removed");
        assert_eq!(store.ids().unwrap(), vec![1, 3]);
    }

    #[test]
    fn commit_refuses_missing_or_bad_blobs_and_bad_names() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path(), 0).unwrap();
        let mut r = CheckpointRecord::new(1, 0, 0);
        r.blobs.push(crate::checkpoint::BlobRef {
            name: "nothing".into(),
            len: 3,
            crc32: 0,
        });
        assert!(store.commit(&r).is_err());
        assert!(store.ids().unwrap().is_empty());
        assert!(write_blob(dir.path(), 1, "../escape", b"x").is_err());
        assert!(write_blob(dir.path(), 1, "", b"x").is_err());
    }

    #[test]
    fn corrupt_record_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path(), 0).unwrap();
        checkpoint(&store, 1, &[("a", vec![1; 10])]);
        let r = checkpoint(&store, 2, &[("a", vec![2; 10])]);
        let mut bytes = r.encode().unwrap();
        bytes[5] ^= 0xff;
        store.commits.insert(2u64.to_be_bytes(), bytes).unwrap();
        let (good, skipped) = store.latest_valid().unwrap();
        assert_eq!(good.id, 1);
        assert!(
            skipped[0].reason.contains("record"),
            "{}",
            skipped[0].reason
        );
    }
}

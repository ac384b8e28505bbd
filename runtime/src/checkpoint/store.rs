//! [`CheckpointStore`]: the manifest (sled) of commit records, retention,
//! verification and the newest-valid lookup used on resume.

use std::path::{Path, PathBuf};

use super::blob::{blob_dir, read_blob, verify_blob};
use super::crash_points::crash_point;
use super::error::CheckpointError;
use super::owner::{
    check_claim, now_unix_ms, read_owner, write_owner, write_unsynced, DirState, StoreClaim,
    StoreOwner,
};
use super::record::CheckpointRecord;

/// Name of the copy of its commit record each checkpoint keeps beside its
/// blobs (blob names never start with a dot): what a corrupt manifest is
/// rebuilt from.
pub const RECORD_FILE: &str = ".record";

/// A committed checkpoint that failed verification, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// Its id.
    pub id: u64,
    /// What failed (e.g. `blob "params.shard.1": checksum ...`).
    pub reason: String,
}

/// What rebuilding a corrupt manifest from the checkpoints' own records
/// found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// What sled reported about the manifest.
    pub reason: String,
    /// Where the corrupt manifest was moved (kept, never deleted); `None`
    /// for a reader, which rebuilds a temporary copy and moves nothing.
    pub kept_at: Option<PathBuf>,
    /// Checkpoints rebuilt: their record and every blob verified.
    pub rebuilt: Vec<u64>,
    /// Checkpoints left out, and why (a blob or the record failed).
    pub left_out: Vec<Skipped>,
}

/// A directory of checkpoints, owned by one run ([`StoreOwner`]). Only one
/// process opens the manifest at a time (the driver); blob writers need
/// only the directory path ([`super::write_blob`]). Readers never open the
/// store itself: they read a copy of its manifest
/// ([`CheckpointStore::open_for_reading`]), so reading changes nothing and
/// works while a job holds the store.
pub struct CheckpointStore {
    dir: PathBuf,
    db: sled::Db,
    commits: sled::Tree,
    keep_last: usize,
    owner: Option<StoreOwner>,
    recovery: Option<Recovery>,
    /// The temporary copy of the manifest a reader reads (removed when
    /// the store is dropped); `None` for the store itself.
    snapshot: Option<tempfile::TempDir>,
}

impl std::fmt::Debug for CheckpointStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointStore")
            .field("dir", &self.dir)
            .field("keep_last", &self.keep_last)
            .field("owner", &self.owner)
            .finish()
    }
}

impl CheckpointStore {
    /// Opens the store in `dir` for a run, keeping the last `keep_last`
    /// committed checkpoints (0 keeps all). A new run
    /// ([`StoreClaim::NewRun`]) creates the store in a missing or empty
    /// directory and records itself as its owner; a run that continues one
    /// ([`StoreClaim::Continue`]) must be of its owner's kind. Anything
    /// else is refused before anything is written ([`check_claim`]).
    ///
    /// A corrupt manifest is rebuilt from the records every checkpoint
    /// carries beside its blobs (each one verified); the corrupt manifest
    /// is kept beside it ([`CheckpointStore::recovery`] says what was
    /// done). Where nothing can be rebuilt, the error says what is intact.
    pub fn claim(
        dir: &Path,
        claim: &StoreClaim,
        keep_last: usize,
    ) -> Result<Self, CheckpointError> {
        let state = check_claim(dir, claim)?;
        if matches!(state, DirState::Free) {
            std::fs::create_dir_all(dir).map_err(|e| CheckpointError::io(dir, e))?;
        }
        // The manifest's lock is taken before the owner file is written: a
        // store a running job holds is never re-owned, even one without a
        // checkpoint yet.
        let manifest = dir.join("manifest");
        let (db, recovery) = match open_sled(&manifest) {
            Ok(db) => (db, None),
            Err(reason) if is_lock_held(&reason) => {
                return Err(CheckpointError::Manifest {
                    path: manifest,
                    reason: format!("{reason} (another process, a running job, holds this store)"),
                })
            }
            Err(reason) if manifest.exists() => {
                let (db, recovery) = rebuild_manifest(dir, &reason)?;
                (db, Some(recovery))
            }
            Err(reason) => {
                return Err(CheckpointError::Manifest {
                    path: manifest,
                    reason,
                })
            }
        };
        let owner = match state {
            DirState::Empty(owner) if matches!(claim, StoreClaim::Continue { .. }) => owner,
            DirState::Free | DirState::Empty(_) => {
                let owner = StoreOwner::new_run(claim.kind());
                write_owner(dir, &owner)?;
                tracing::info!(dir = %dir.display(), run_id = %owner.run_id, kind = %owner.kind, "checkpoint store created");
                owner
            }
            DirState::Owned(owner) => owner,
            DirState::Unowned => {
                // A store from before owners were recorded, continued: it
                // becomes this run's.
                let owner = StoreOwner::new_run(claim.kind());
                write_owner(dir, &owner)?;
                tracing::warn!(dir = %dir.display(), run_id = %owner.run_id, "a store without an owner record is continued: recorded its owner");
                owner
            }
        };
        let commits = db
            .open_tree("commits")
            .map_err(|e| CheckpointError::Manifest {
                path: dir.join("manifest"),
                reason: e.to_string(),
            })?;
        adopt_complete(dir, &db, &commits)?;
        Ok(CheckpointStore {
            dir: dir.to_path_buf(),
            db,
            commits,
            keep_last,
            owner: Some(owner),
            recovery,
            snapshot: None,
        })
    }

    /// Opens an existing store to read it (list, verify, read blobs),
    /// changing nothing: it reads a copy of the manifest taken now, with
    /// the blobs read in place, so it also works while a running job holds
    /// the store. Checkpoints committed after the copy are not in it; one
    /// that retention removes meanwhile fails verification like any
    /// missing blob. A reader refuses to commit or delete. A corrupt
    /// manifest is rebuilt in the copy from the checkpoints' own records
    /// ([`CheckpointStore::recovery`]).
    pub fn open_for_reading(dir: &Path) -> Result<Self, CheckpointError> {
        let manifest = dir.join("manifest");
        if !manifest.is_dir() {
            return Err(CheckpointError::NotAStore {
                dir: dir.to_path_buf(),
                reason: "it holds no checkpoint store (no manifest)".into(),
            });
        }
        let owner = read_owner(dir)?;
        let copy = tempfile::Builder::new()
            .prefix("kiln-manifest-")
            .tempdir()
            .map_err(|e| CheckpointError::io(std::env::temp_dir(), e))?;
        let copied = copy.path().join("manifest");
        copy_dir(&manifest, &copied)?;
        let (db, recovery) = match open_sled(&copied) {
            Ok(db) => (db, None),
            Err(reason) => {
                let db = sled::Config::new()
                    .path(copy.path().join("rebuilt"))
                    .open()
                    .map_err(|e| CheckpointError::Manifest {
                        path: manifest.clone(),
                        reason: format!("a temporary manifest for reading: {e}"),
                    })?;
                let recovery = fill_from_records(dir, &db, &reason)?;
                (db, Some(recovery))
            }
        };
        let commits = db
            .open_tree("commits")
            .map_err(|e| CheckpointError::Manifest {
                path: manifest.clone(),
                reason: format!("copy: {e}"),
            })?;
        adopt_complete(dir, &db, &commits)?;
        Ok(CheckpointStore {
            dir: dir.to_path_buf(),
            db,
            commits,
            keep_last: 0,
            owner,
            recovery,
            snapshot: Some(copy),
        })
    }

    /// Whether this store was opened for reading only
    /// ([`CheckpointStore::open_for_reading`]).
    pub fn is_snapshot(&self) -> bool {
        self.snapshot.is_some()
    }

    /// The run the store belongs to (`None` for a store written before
    /// owners were recorded, opened for reading).
    pub fn owner(&self) -> Option<&StoreOwner> {
        self.owner.as_ref()
    }

    /// What was rebuilt when the manifest was found corrupt, if it was.
    pub fn recovery(&self) -> Option<&Recovery> {
        self.recovery.as_ref()
    }

    fn refuse_if_snapshot(&self, what: &str) -> Result<(), CheckpointError> {
        if self.is_snapshot() {
            return Err(CheckpointError::ReadOnly {
                dir: self.dir.clone(),
                action: what.to_string(),
            });
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
            return Err(CheckpointError::AlreadyCommitted { id: record.id });
        }
        for b in &record.blobs {
            verify_blob(&self.dir, record.id, b)?;
        }
        let bytes = record.encode()?;
        crash_point("blobs-written");
        // The record's own copy beside the blobs: the manifest insert below
        // is the durable commit; this copy rebuilds a corrupt manifest and
        // is checksummed, so it is written without waiting for the disk.
        write_unsynced(&blob_dir(&self.dir, record.id).join(RECORD_FILE), &bytes)?;
        crash_point("record-written");
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
        crash_point("committed");
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
        match CheckpointRecord::decode(id, &bytes) {
            Ok(r) => Ok(r),
            Err(e) => {
                // The copy the checkpoint keeps beside its blobs, if that
                // one is intact.
                let path = blob_dir(&self.dir, id).join(RECORD_FILE);
                match std::fs::read(&path).map(|b| CheckpointRecord::decode(id, &b)) {
                    Ok(Ok(r)) => {
                        tracing::warn!(id, error = %e, "manifest record corrupt: read the checkpoint's own record file");
                        Ok(r)
                    }
                    _ => Err(e),
                }
            }
        }
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
        // The record file goes first: a checkpoint cut short here is
        // still listed by the manifest, and its directory is never taken
        // for a checkpoint the manifest lost (see `adopt_complete`).
        let record = blob_dir(&self.dir, id).join(RECORD_FILE);
        match std::fs::remove_file(&record) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(CheckpointError::io(&record, e)),
        }
        self.commits
            .remove(id.to_be_bytes())
            .map_err(|e| self.manifest_err(e))?;
        self.db.flush().map_err(|e| self.manifest_err(e))?;
        crash_point("retention");
        remove_dir(&blob_dir(&self.dir, id))
    }

    fn blob_dir_ids(&self) -> Result<Vec<u64>, CheckpointError> {
        blob_dir_ids_in(&self.dir)
    }

    /// Keeps the newest `keep_last` records; removes older ones and blob
    /// directories without a record file that are older than the newest
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
                // A directory with a record file holds a checkpoint that
                // was complete (one a rebuild left out, or whose removal
                // was cut short): it is left for the user, never deleted.
                if id < newest
                    && !kept.contains(&id)
                    && !blob_dir(&self.dir, id).join(RECORD_FILE).exists()
                {
                    remove_dir(&blob_dir(&self.dir, id))?;
                    tracing::debug!(id, "removed blobs of an uncommitted checkpoint");
                }
            }
        }
        Ok(removed)
    }
}

/// Opens the sled manifest at `path` (creating it if missing); the error
/// is sled's message.
fn open_sled(path: &Path) -> Result<sled::Db, String> {
    sled::Config::new()
        .path(path)
        .open()
        .map_err(|e| e.to_string())
}

/// Ids of the checkpoint directories under `dir/blobs`.
fn blob_dir_ids_in(dir: &Path) -> Result<Vec<u64>, CheckpointError> {
    let root = dir.join("blobs");
    let entries = match std::fs::read_dir(&root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(CheckpointError::io(&root, e)),
    };
    let mut ids: Vec<u64> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u64>().ok()))
        .collect();
    ids.sort_unstable();
    Ok(ids)
}

/// Adds to the manifest the checkpoints newer than its newest commit whose
/// record file and blobs verify: a writer stopped after writing a
/// checkpoint's record file but before its manifest insert had finished
/// the checkpoint (its record file is written only once every blob is in
/// place). Returns their ids.
fn adopt_complete(
    dir: &Path,
    db: &sled::Db,
    commits: &sled::Tree,
) -> Result<Vec<u64>, CheckpointError> {
    let sled_err = |e: sled::Error| CheckpointError::Manifest {
        path: dir.join("manifest"),
        reason: e.to_string(),
    };
    let newest = commits
        .last()
        .map_err(sled_err)?
        .map(|(k, _)| key_id(&k))
        .unwrap_or(0);
    let mut adopted = Vec::new();
    for id in blob_dir_ids_in(dir)?.into_iter().filter(|&id| id > newest) {
        let Ok(bytes) = std::fs::read(blob_dir(dir, id).join(RECORD_FILE)) else {
            continue;
        };
        let Ok(record) = CheckpointRecord::decode(id, &bytes) else {
            continue;
        };
        if record.blobs.iter().all(|b| verify_blob(dir, id, b).is_ok()) {
            commits.insert(id.to_be_bytes(), bytes).map_err(sled_err)?;
            adopted.push(id);
        }
    }
    if !adopted.is_empty() {
        db.flush().map_err(sled_err)?;
        tracing::warn!(dir = %dir.display(), ids = ?adopted, "checkpoints finished but missing from the manifest (a writer stopped before its commit): added");
    }
    Ok(adopted)
}

/// Inserts into `db` the record of every checkpoint in `dir` whose record
/// file and blobs verify; says which were left out. Refuses (changing
/// nothing of the store) when not one checkpoint can be rebuilt although
/// checkpoint directories exist.
fn fill_from_records(dir: &Path, db: &sled::Db, reason: &str) -> Result<Recovery, CheckpointError> {
    let manifest = dir.join("manifest");
    let sled_err = |e: sled::Error| CheckpointError::Manifest {
        path: manifest.clone(),
        reason: format!("rebuilding: {e}"),
    };
    let commits = db.open_tree("commits").map_err(sled_err)?;
    let ids = blob_dir_ids_in(dir)?;
    let mut rebuilt = Vec::new();
    let mut left_out = Vec::new();
    for &id in &ids {
        let path = blob_dir(dir, id).join(RECORD_FILE);
        let verified = std::fs::read(&path)
            .map_err(|e| format!("record file {}: {e}", path.display()))
            .and_then(|bytes| {
                let r = CheckpointRecord::decode(id, &bytes).map_err(|e| e.to_string())?;
                for b in &r.blobs {
                    verify_blob(dir, id, b).map_err(|e| e.to_string())?;
                }
                Ok(bytes)
            });
        match verified {
            Ok(bytes) => {
                commits.insert(id.to_be_bytes(), bytes).map_err(sled_err)?;
                rebuilt.push(id);
            }
            Err(reason) => left_out.push(Skipped { id, reason }),
        }
    }
    if rebuilt.is_empty() && !ids.is_empty() {
        let listing = left_out
            .iter()
            .map(|s| format!("{}: {}", s.id, s.reason))
            .collect::<Vec<_>>()
            .join("; ");
        return Err(CheckpointError::ManifestUnrecoverable {
            path: manifest,
            reason: reason.to_string(),
            intact: format!(
                "{} checkpoint directories under {} ({}), none with a record file and blobs that verify ({listing}); \
                 nothing was changed: the blob files are the checkpoints' data, keep them",
                ids.len(),
                dir.join("blobs").display(),
                ids.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")
            ),
        });
    }
    db.flush().map_err(sled_err)?;
    Ok(Recovery {
        reason: reason.to_string(),
        kept_at: None,
        rebuilt,
        left_out,
    })
}

/// Rebuilds the corrupt manifest of the store in `dir` from the records
/// its checkpoints carry: the new manifest is built beside it, then the
/// corrupt one is moved to `manifest.corrupt-<ms>` (kept) and the new one
/// takes its place.
fn rebuild_manifest(dir: &Path, reason: &str) -> Result<(sled::Db, Recovery), CheckpointError> {
    let manifest = dir.join("manifest");
    let building = dir.join(".manifest.rebuild");
    if building.exists() {
        std::fs::remove_dir_all(&building).map_err(|e| CheckpointError::io(&building, e))?;
    }
    let mut recovery =
        {
            let db = sled::Config::new().path(&building).open().map_err(|e| {
                CheckpointError::Manifest {
                    path: building.clone(),
                    reason: e.to_string(),
                }
            })?;
            let r = fill_from_records(dir, &db, reason);
            drop(db);
            match r {
                Ok(r) => r,
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&building);
                    return Err(e);
                }
            }
        };
    let kept = dir.join(format!("manifest.corrupt-{}", now_unix_ms()));
    std::fs::rename(&manifest, &kept).map_err(|e| CheckpointError::io(&manifest, e))?;
    std::fs::rename(&building, &manifest).map_err(|e| CheckpointError::io(&building, e))?;
    tracing::warn!(
        dir = %dir.display(),
        rebuilt = ?recovery.rebuilt,
        left_out = recovery.left_out.len(),
        kept = %kept.display(),
        "corrupt checkpoint manifest rebuilt from the checkpoints' records"
    );
    recovery.kept_at = Some(kept);
    let db = open_sled(&manifest).map_err(|reason| CheckpointError::Manifest {
        path: manifest.clone(),
        reason: format!("rebuilt manifest: {reason}"),
    })?;
    Ok((db, recovery))
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

    fn new_run(dir: &Path, keep_last: usize) -> CheckpointStore {
        CheckpointStore::claim(
            dir,
            &StoreClaim::NewRun {
                kind: "test".into(),
            },
            keep_last,
        )
        .unwrap()
    }

    fn continued(dir: &Path, keep_last: usize) -> CheckpointStore {
        CheckpointStore::claim(
            dir,
            &StoreClaim::Continue {
                kind: "test".into(),
            },
            keep_last,
        )
        .unwrap()
    }

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
        let store = new_run(dir.path(), 2);
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
        let writer = CheckpointStore::claim(
            dir.path(),
            &StoreClaim::NewRun {
                kind: "test".into(),
            },
            0,
        )
        .unwrap();
        checkpoint(&writer, 10, &[("params.shard.0", vec![1u8; 64])]);
        // The writer holds the manifest: another writer is refused, a
        // reader gets a snapshot with the committed checkpoint and its blobs.
        let err = CheckpointStore::claim(
            dir.path(),
            &StoreClaim::Continue {
                kind: "test".into(),
            },
            0,
        )
        .unwrap_err();
        assert!(err.to_string().contains("another process"), "{err}");
        let reader = CheckpointStore::open_for_reading(dir.path()).unwrap();
        assert!(reader.is_snapshot());
        assert_eq!(reader.owner(), writer.owner());
        let (r, _) = reader.latest_valid().unwrap();
        assert_eq!(r.iteration, 10);
        assert_eq!(reader.read(&r, "params.shard.0").unwrap(), vec![1u8; 64]);
        // Later commits are not in the snapshot; it changes nothing.
        checkpoint(&writer, 20, &[("params.shard.0", vec![2u8; 64])]);
        assert_eq!(reader.ids().unwrap(), vec![1]);
        assert!(matches!(
            reader.delete(1),
            Err(CheckpointError::ReadOnly { .. })
        ));
        assert!(reader.commit(&r).is_err());
        assert_eq!(writer.ids().unwrap(), vec![1, 2]);
        drop(reader);
        drop(writer);
        let reader = CheckpointStore::open_for_reading(dir.path()).unwrap();
        assert_eq!(reader.ids().unwrap(), vec![1, 2]);
        let empty = tempfile::tempdir().unwrap();
        let err = CheckpointStore::open_for_reading(empty.path()).unwrap_err();
        assert!(err.to_string().contains("no checkpoint store"), "{err}");
    }

    /// Every file under `dir` with its length and modification time.
    fn listing(dir: &Path) -> Vec<(PathBuf, u64, std::time::SystemTime)> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let e = e.unwrap();
                let m = e.metadata().unwrap();
                if m.is_dir() {
                    stack.push(e.path());
                }
                out.push((e.path(), m.len(), m.modified().unwrap()));
            }
        }
        out.sort();
        out
    }

    #[test]
    fn reading_changes_nothing_and_reading_nothing_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = new_run(dir.path(), 0);
            checkpoint(&store, 1, &[("a", vec![1; 10])]);
        }
        let before = listing(dir.path());
        let reader = CheckpointStore::open_for_reading(dir.path()).unwrap();
        reader.latest_valid().unwrap();
        drop(reader);
        assert_eq!(listing(dir.path()), before);
        let missing = dir.path().join("not-here");
        assert!(CheckpointStore::open_for_reading(&missing).is_err());
        assert!(!missing.exists());
    }

    #[test]
    fn a_store_belongs_to_one_run() {
        let dir = tempfile::tempdir().unwrap();
        let store_dir = dir.path().join("ck");
        let first = new_run(&store_dir, 1);
        checkpoint(&first, 1, &[("a", vec![1; 10])]);
        let owner = first.owner().unwrap().clone();
        assert_eq!(owner.kind, "test");
        drop(first);
        let before = listing(&store_dir);
        // A new run of any kind, or a run of another kind continuing it,
        // is refused naming the owner, and nothing changes.
        for claim in [
            StoreClaim::NewRun {
                kind: "test".into(),
            },
            StoreClaim::NewRun {
                kind: "speech".into(),
            },
            StoreClaim::Continue {
                kind: "speech".into(),
            },
        ] {
            let err = CheckpointStore::claim(&store_dir, &claim, 1).unwrap_err();
            let msg = err.to_string();
            assert!(
                msg.contains(&owner.run_id) && msg.contains("a test run"),
                "{msg}"
            );
            assert!(
                matches!(
                    err,
                    CheckpointError::OwnedByAnotherRun { .. }
                        | CheckpointError::KindMismatch { .. }
                ),
                "{err:?}"
            );
        }
        assert_eq!(listing(&store_dir), before);
        // The owner's kind continues it, keeping its run id.
        let again = continued(&store_dir, 1);
        assert_eq!(again.owner(), Some(&owner));
        checkpoint(&again, 2, &[("a", vec![2; 10])]);
        assert_eq!(again.ids().unwrap(), vec![2]);
        // A new store goes only where there is nothing: not into a
        // directory holding other files, not onto a file; continuing
        // needs a store.
        let other = dir.path().join("other");
        std::fs::create_dir(&other).unwrap();
        std::fs::write(other.join("notes.txt"), "mine").unwrap();
        let err = CheckpointStore::claim(
            &other,
            &StoreClaim::NewRun {
                kind: "test".into(),
            },
            1,
        )
        .unwrap_err();
        assert!(err.to_string().contains("notes.txt"), "{err}");
        let file = other.join("notes.txt");
        assert!(CheckpointStore::claim(
            &file,
            &StoreClaim::NewRun {
                kind: "test".into()
            },
            1
        )
        .is_err());
        let missing = dir.path().join("missing");
        let err = CheckpointStore::claim(
            &missing,
            &StoreClaim::Continue {
                kind: "test".into(),
            },
            1,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("no checkpoint store there"),
            "{err}"
        );
        assert!(!missing.exists());
        assert_eq!(std::fs::read_dir(&other).unwrap().count(), 1);
    }

    #[test]
    fn a_store_that_never_got_a_checkpoint_may_be_taken_by_a_new_run() {
        let dir = tempfile::tempdir().unwrap();
        let first = new_run(dir.path(), 0).owner().unwrap().clone();
        // Blobs of a first checkpoint cut short: still no checkpoint.
        write_blob(dir.path(), 1, "a", &[1; 10]).unwrap();
        let store = CheckpointStore::claim(
            dir.path(),
            &StoreClaim::NewRun {
                kind: "other".into(),
            },
            0,
        )
        .unwrap();
        let second = store.owner().unwrap().clone();
        assert_ne!(second.run_id, first.run_id);
        assert_eq!(second.kind, "other");
        checkpoint(&store, 1, &[("a", vec![2; 10])]);
        drop(store);
        let err = CheckpointStore::claim(
            dir.path(),
            &StoreClaim::NewRun {
                kind: "other".into(),
            },
            0,
        )
        .unwrap_err();
        assert!(err.to_string().contains(&second.run_id), "{err}");
    }

    #[test]
    fn a_checkpoint_finished_but_missing_from_the_manifest_is_added_one_cut_short_is_not() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = new_run(dir.path(), 0);
            checkpoint(&store, 1, &[("a", vec![1; 10])]);
            // Checkpoint 2: blobs and record file written, then the writer
            // stopped before the manifest insert.
            let mut r = CheckpointRecord::new(2, 2, 0);
            r.blobs
                .push(write_blob(store.dir(), 2, "a", &[2; 10]).unwrap());
            write_unsynced(
                &blob_dir(dir.path(), 2).join(RECORD_FILE),
                &r.encode().unwrap(),
            )
            .unwrap();
            // Checkpoint 3: blobs only.
            write_blob(store.dir(), 3, "a", &[3; 10]).unwrap();
        }
        let reader = CheckpointStore::open_for_reading(dir.path()).unwrap();
        assert_eq!(reader.ids().unwrap(), vec![1, 2]);
        drop(reader);
        let store = continued(dir.path(), 0);
        assert_eq!(store.ids().unwrap(), vec![1, 2]);
        assert_eq!(store.latest_valid().unwrap().0.iteration, 2);
        assert_eq!(store.next_id().unwrap(), 4);
    }

    #[test]
    fn a_store_a_running_job_holds_is_never_re_owned_even_before_its_first_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let running = new_run(dir.path(), 0);
        let owner = running.owner().unwrap().clone();
        let err = CheckpointStore::claim(
            dir.path(),
            &StoreClaim::NewRun {
                kind: "other".into(),
            },
            0,
        )
        .unwrap_err();
        assert!(err.to_string().contains("another process"), "{err}");
        assert_eq!(read_owner(dir.path()).unwrap(), Some(owner));
        checkpoint(&running, 1, &[("a", vec![1; 10])]);
    }

    /// Overwrites the middle of every file of the sled manifest.
    fn corrupt_manifest(dir: &Path) {
        for e in std::fs::read_dir(dir.join("manifest")).unwrap() {
            let p = e.unwrap().path();
            if p.is_file() {
                let mut bytes = std::fs::read(&p).unwrap();
                let n = bytes.len();
                for b in &mut bytes[n / 4..n * 3 / 4] {
                    *b = 0xa5;
                }
                std::fs::write(&p, bytes).unwrap();
            }
        }
    }

    #[test]
    fn a_corrupt_manifest_is_rebuilt_from_the_checkpoints_records() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = new_run(dir.path(), 0);
            checkpoint(&store, 1, &[("a", vec![1; 1000])]);
            checkpoint(&store, 2, &[("a", vec![2; 1000])]);
            checkpoint(&store, 3, &[("a", vec![3; 1000])]);
        }
        corrupt_manifest(dir.path());
        // A damaged blob: that checkpoint is left out, and said so.
        let p3 = blob_dir(dir.path(), 3).join("a");
        let mut bytes = std::fs::read(&p3).unwrap();
        bytes[100] ^= 1;
        std::fs::write(&p3, bytes).unwrap();
        let before = listing(dir.path());
        // A reader rebuilds in its copy and changes nothing.
        let reader = CheckpointStore::open_for_reading(dir.path()).unwrap();
        let rec = reader.recovery().expect("the manifest was rebuilt").clone();
        assert_eq!(rec.rebuilt, vec![1, 2]);
        assert_eq!(rec.left_out.len(), 1);
        assert_eq!(rec.left_out[0].id, 3);
        assert!(rec.kept_at.is_none());
        let (r, _) = reader.latest_valid().unwrap();
        assert_eq!(reader.read(&r, "a").unwrap(), vec![2; 1000]);
        drop(reader);
        assert_eq!(listing(dir.path()), before);
        // The run continuing the store rebuilds its manifest and keeps the
        // corrupt one; nothing is deleted, not even the damaged checkpoint.
        let store = continued(dir.path(), 1);
        let rec = store.recovery().unwrap().clone();
        assert_eq!(rec.rebuilt, vec![1, 2]);
        let kept = rec.kept_at.unwrap();
        assert!(kept.is_dir(), "{}", kept.display());
        assert_eq!(store.ids().unwrap(), vec![1, 2]);
        assert!(blob_dir(dir.path(), 3).join("a").exists());
        checkpoint(&store, 4, &[("a", vec![4; 1000])]);
        assert_eq!(store.ids().unwrap(), vec![4]);
        assert!(blob_dir(dir.path(), 3).join("a").exists());
        drop(store);
        let store = continued(dir.path(), 1);
        assert!(store.recovery().is_none());
        assert_eq!(store.latest_valid().unwrap().0.iteration, 4);
    }

    #[test]
    fn a_manifest_that_cannot_be_rebuilt_says_what_is_intact_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = new_run(dir.path(), 0);
            checkpoint(&store, 1, &[("a", vec![1; 1000])]);
            checkpoint(&store, 2, &[("a", vec![2; 1000])]);
        }
        corrupt_manifest(dir.path());
        for id in [1, 2] {
            std::fs::remove_file(blob_dir(dir.path(), id).join(RECORD_FILE)).unwrap();
        }
        let before = listing(dir.path());
        for err in [
            CheckpointStore::open_for_reading(dir.path()).unwrap_err(),
            CheckpointStore::claim(
                dir.path(),
                &StoreClaim::Continue {
                    kind: "test".into(),
                },
                1,
            )
            .unwrap_err(),
        ] {
            let msg = err.to_string();
            assert!(
                matches!(err, CheckpointError::ManifestUnrecoverable { .. }),
                "{err:?}"
            );
            assert!(
                msg.contains("2 checkpoint directories") && msg.contains("1, 2"),
                "{msg}"
            );
        }
        assert_eq!(listing(dir.path()), before);
    }

    #[test]
    fn truncated_or_flipped_blob_falls_back_to_previous_and_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let store = new_run(dir.path(), 0);
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
            let store = new_run(dir.path(), 3);
            checkpoint(&store, 1, &[("a", vec![1; 10])]);
            // a writer dies after writing blobs of checkpoint 2, before the commit
            write_blob(store.dir(), 2, "a", &[9; 10]).unwrap();
            let (r, _) = store.latest_valid().unwrap();
            assert_eq!(r.id, 1);
            assert_eq!(store.next_id().unwrap(), 3);
        }
        // reopen (as after a driver restart): the torn checkpoint is still not visible
        let store = continued(dir.path(), 3);
        assert_eq!(store.ids().unwrap(), vec![1]);
        checkpoint(&store, 3, &[("a", vec![3; 10])]);
        assert!(!blob_dir(dir.path(), 2).exists(), "orphaned blobs removed");
        assert_eq!(store.ids().unwrap(), vec![1, 3]);
    }

    #[test]
    fn commit_refuses_missing_or_bad_blobs_and_bad_names() {
        let dir = tempfile::tempdir().unwrap();
        let store = new_run(dir.path(), 0);
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
    fn a_corrupt_record_falls_back_to_the_checkpoints_own_copy_or_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let store = new_run(dir.path(), 0);
        checkpoint(&store, 1, &[("a", vec![1; 10])]);
        let r = checkpoint(&store, 2, &[("a", vec![2; 10])]);
        let mut bytes = r.encode().unwrap();
        bytes[5] ^= 0xff;
        store
            .commits
            .insert(2u64.to_be_bytes(), bytes.clone())
            .unwrap();
        // The copy beside the blobs is intact: the checkpoint is still good.
        let (good, skipped) = store.latest_valid().unwrap();
        assert_eq!((good.id, skipped.len()), (2, 0));
        // Both copies damaged: skipped, saying why.
        std::fs::write(blob_dir(dir.path(), 2).join(RECORD_FILE), bytes).unwrap();
        let (good, skipped) = store.latest_valid().unwrap();
        assert_eq!(good.id, 1);
        assert!(
            skipped[0].reason.contains("record"),
            "{}",
            skipped[0].reason
        );
    }
}

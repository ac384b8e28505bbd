//! Who a checkpoint store belongs to: the one run (its job kind and a run
//! id) that created it, recorded in `DIR/owner` when the store is created.
//!
//! A store is never shared: a new run is given a store only where there is
//! none yet (a missing or empty directory), and a run that continues one
//! ([`StoreClaim::Continue`]) must be of the owner's kind. Anything else is
//! refused with an error naming the owner, before anything is written, so
//! one run's retention can never delete another's checkpoints.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::CheckpointError;

/// Name of the owner file in a store's directory.
pub const OWNER_FILE: &str = "owner";

/// The run a store belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreOwner {
    /// The job kind (e.g. `speech`, `digits`).
    pub kind: String,
    /// The run's id: random, made when the run created the store, kept by
    /// every run that continues it.
    pub run_id: String,
    /// When the store was created, milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
}

impl StoreOwner {
    /// A new run of `kind`, with a fresh random run id.
    pub fn new_run(kind: &str) -> Self {
        let id: u128 = rand::random();
        StoreOwner {
            kind: kind.to_string(),
            run_id: format!("{id:032x}"),
            created_unix_ms: now_unix_ms(),
        }
    }
}

impl std::fmt::Display for StoreOwner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "a {} run (run id {}, created at {} ms since the Unix epoch)",
            self.kind, self.run_id, self.created_unix_ms
        )
    }
}

/// How a run means to use a checkpoint store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreClaim {
    /// A new run of this kind: the directory must be missing or empty; the
    /// store is created there and owned by the new run.
    NewRun {
        /// The job kind.
        kind: String,
    },
    /// Continue the run that owns the store: it must exist and belong to
    /// this kind.
    Continue {
        /// The job kind.
        kind: String,
    },
}

impl StoreClaim {
    /// The job kind claiming the store.
    pub fn kind(&self) -> &str {
        match self {
            StoreClaim::NewRun { kind } | StoreClaim::Continue { kind } => kind,
        }
    }
}

/// What a directory holds, as far as stores go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirState {
    /// Missing, or an empty directory: a new store may go there.
    Free,
    /// A store with its owner.
    Owned(StoreOwner),
    /// A store from before owners were recorded (a manifest, no owner
    /// file).
    Unowned,
    /// A store that never got a checkpoint (its run was stopped before
    /// the first one): nothing in it to lose, so a new run may take it.
    Empty(StoreOwner),
}

/// Looks at `dir` without changing anything: free, a store (and whose), or
/// an error when it is neither (a file, or a directory holding other
/// things).
pub fn dir_state(dir: &Path) -> Result<DirState, CheckpointError> {
    match std::fs::metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(DirState::Free),
        Err(e) => return Err(CheckpointError::io(dir, e)),
        Ok(m) if !m.is_dir() => {
            return Err(CheckpointError::NotAStore {
                dir: dir.to_path_buf(),
                reason: "it is a file, not a directory".into(),
            })
        }
        Ok(_) => {}
    }
    if let Some(owner) = read_owner(dir)? {
        return Ok(if holds_checkpoint_data(dir)? {
            DirState::Owned(owner)
        } else {
            DirState::Empty(owner)
        });
    }
    if dir.join("manifest").is_dir() {
        // A manifest and no blobs: a store whose creation stopped before
        // its owner file, or that never wrote anything. Nothing to lose.
        let blobs = std::fs::read_dir(dir.join("blobs"))
            .map(|mut e| e.next().is_some())
            .unwrap_or(false);
        return Ok(if blobs {
            DirState::Unowned
        } else {
            DirState::Free
        });
    }
    let mut entries = std::fs::read_dir(dir).map_err(|e| CheckpointError::io(dir, e))?;
    match entries.next() {
        None => Ok(DirState::Free),
        Some(entry) => {
            let entry = entry.map_err(|e| CheckpointError::io(dir, e))?;
            Err(CheckpointError::NotAStore {
                dir: dir.to_path_buf(),
                reason: format!(
                    "it is not empty (it holds {:?}, and no checkpoint store): a new store goes into a missing or empty directory",
                    entry.file_name()
                ),
            })
        }
    }
}

/// Checks, without changing anything, that `claim` may use the store at
/// `dir`: what a job checks before it starts. [`super::CheckpointStore::claim`]
/// checks again when it opens the store.
pub fn check_claim(dir: &Path, claim: &StoreClaim) -> Result<DirState, CheckpointError> {
    let state = dir_state(dir)?;
    match (claim, &state) {
        (StoreClaim::NewRun { .. }, DirState::Free | DirState::Empty(_)) => Ok(state),
        (StoreClaim::NewRun { kind }, DirState::Owned(owner)) => {
            Err(CheckpointError::OwnedByAnotherRun {
                dir: dir.to_path_buf(),
                owner: owner.clone(),
                claimant: kind.clone(),
            })
        }
        (StoreClaim::NewRun { kind }, DirState::Unowned) => Err(CheckpointError::UnownedStore {
            dir: dir.to_path_buf(),
            claimant: kind.clone(),
        }),
        (StoreClaim::Continue { .. }, DirState::Free) => Err(CheckpointError::NotAStore {
            dir: dir.to_path_buf(),
            reason: "there is no checkpoint store there to continue".into(),
        }),
        (StoreClaim::Continue { kind }, DirState::Owned(owner) | DirState::Empty(owner))
            if owner.kind != *kind =>
        {
            Err(CheckpointError::KindMismatch {
                dir: dir.to_path_buf(),
                owner: owner.clone(),
                claimant: kind.clone(),
            })
        }
        (StoreClaim::Continue { .. }, _) => Ok(state),
    }
}

/// Whether a checkpoint was ever committed in the store at `dir`: every
/// commit writes the checkpoint's record file beside its blobs before the
/// manifest insert, so a store without one holds no checkpoint (at most
/// the blobs of one cut short).
fn holds_checkpoint_data(dir: &Path) -> Result<bool, CheckpointError> {
    let blobs = dir.join("blobs");
    let entries = match std::fs::read_dir(&blobs) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(CheckpointError::io(&blobs, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| CheckpointError::io(&blobs, e))?;
        if entry.path().join(super::store::RECORD_FILE).exists() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The owner recorded in `dir`, if there is an owner file.
pub fn read_owner(dir: &Path) -> Result<Option<StoreOwner>, CheckpointError> {
    let path = dir.join(OWNER_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(CheckpointError::io(&path, e)),
    };
    decode_owner(&path, &bytes).map(Some)
}

/// Decodes an owner file's bytes (`path` names it in errors).
pub fn decode_owner(path: &Path, bytes: &[u8]) -> Result<StoreOwner, CheckpointError> {
    let corrupt = |reason: String| CheckpointError::CorruptOwner {
        path: path.to_path_buf(),
        reason,
    };
    if bytes.len() < 4 {
        return Err(corrupt("shorter than its checksum".into()));
    }
    let (body, tail) = bytes.split_at(bytes.len() - 4);
    if crc32fast::hash(body).to_le_bytes() != tail {
        return Err(corrupt("checksum mismatch".into()));
    }
    rmp_serde::from_slice(body).map_err(|e| corrupt(format!("undecodable: {e}")))
}

/// Writes the owner file of a store being created (temporary file, fsync,
/// rename, fsync of the directory).
pub(crate) fn write_owner(dir: &Path, owner: &StoreOwner) -> Result<(), CheckpointError> {
    let mut bytes = rmp_serde::to_vec_named(owner).map_err(|e| CheckpointError::CorruptOwner {
        path: dir.join(OWNER_FILE),
        reason: format!("cannot encode: {e}"),
    })?;
    let crc = crc32fast::hash(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    write_atomically(&dir.join(OWNER_FILE), &bytes)
}

/// Writes `bytes` to `path` so that readers see all of it or nothing: a
/// temporary file beside it, synced, renamed into place, and the directory
/// synced.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    write_via_rename(path, bytes, true)
}

/// Writes `path` as [`write_atomically`] does but without waiting for the
/// disk: a process killed at any moment leaves the old file or the new
/// one, never a mix (the page cache outlives the process), while after a
/// power loss the file may be missing or torn. For copies whose loss is
/// detected (a checksum) and costs nothing the manifest does not hold, such
/// as a checkpoint's own record: its fsyncs were most of a small
/// checkpoint's commit time.
pub(crate) fn write_unsynced(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    write_via_rename(path, bytes, false)
}

fn write_via_rename(path: &Path, bytes: &[u8], durable: bool) -> Result<(), CheckpointError> {
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp: PathBuf = dir.join(format!(".{name}.tmp"));
    let mut f = std::fs::File::create(&tmp).map_err(|e| CheckpointError::io(&tmp, e))?;
    f.write_all(bytes)
        .and_then(|()| if durable { f.sync_all() } else { Ok(()) })
        .map_err(|e| CheckpointError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| CheckpointError::io(path, e))?;
    if durable {
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

pub(crate) fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

//! Data staging: files that travel from the driver's host to the
//! executors, so a cluster needs no shared filesystem.
//!
//! A job names its data by path on the driver's host. On the driver it
//! *publishes* the files its partitions read ([`crate::Driver::publish`]):
//! each becomes a [`FileRef`] (path, length, SHA-256), and the driver
//! serves exactly the published contents to authenticated executors, by
//! hash (nothing else of its disk). On an executor, a source function
//! turns a [`FileRef`] into a readable local path with [`local_path`]:
//!
//! * without `stage`, a path that exists there with the right length is
//!   read in place (as on one machine or a shared filesystem);
//! * otherwise the file comes from the executor's cache directory, keyed
//!   by content (`<cache>/sha256/<hex>/<name>`), which later jobs reuse;
//! * a miss fetches it from the driver over the authenticated QUIC data
//!   plane into a temporary file, checks its length and SHA-256 (a
//!   mismatch is fetched once more, then an error naming the file), and
//!   renames it into the cache.
//!
//! Only the files a partition's source asks for travel. The executor's
//! [`Stager`] is in scope (a thread-local) while it computes a task.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use crate::error::{Error, Result};
use crate::jobs::ClusterClient;
use crate::transport::JoinToken;

/// Bytes read per call while hashing.
const HASH_CHUNK: usize = 1 << 20;

/// How long one staging request may wait for the driver.
const STAGE_TIMEOUT: Duration = Duration::from_secs(60);

/// A file on the driver's host that executors may read: its path there,
/// its length and the SHA-256 of its contents.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FileRef {
    /// The path on the driver's host.
    pub path: PathBuf,
    /// Length in bytes.
    pub len: u64,
    /// SHA-256 of the contents.
    pub sha256: [u8; 32],
}

impl FileRef {
    /// The hash as lower-case hex.
    pub fn hex(&self) -> String {
        hex(&self.sha256)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Length and SHA-256 of the file at `path`, read in chunks.
pub fn hash_file(path: &Path) -> std::io::Result<(u64, [u8; 32])> {
    let mut file = std::fs::File::open(path)?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; HASH_CHUNK];
    let mut len = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
        len += n as u64;
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    Ok((len, out))
}

/// What the driver knows of a file it hashed: its length and modification
/// time then, and the hash.
#[derive(Clone, Copy)]
struct Hashed {
    len: u64,
    modified: Option<SystemTime>,
    sha256: [u8; 32],
}

/// The driver's published files: what executors may fetch, by hash, and a
/// cache of hashes by path (rehashed when a file's length or modification
/// time changes).
#[derive(Default)]
pub(crate) struct Published {
    by_hash: Mutex<HashMap<[u8; 32], PathBuf>>,
    hashes: Mutex<HashMap<PathBuf, Hashed>>,
    /// Bytes served to executors so far.
    pub(crate) served: AtomicU64,
}

fn poisoned() -> Error {
    Error::Poisoned {
        lock: "staging table",
    }
}

impl Published {
    /// Hashes (or finds the hash of) `path` and publishes it.
    pub(crate) fn publish(&self, path: &Path) -> Result<FileRef> {
        let io = |e: std::io::Error| Error::Io {
            path: path.display().to_string(),
            source: e,
        };
        let meta = std::fs::metadata(path).map_err(io)?;
        if !meta.is_file() {
            return Err(Error::Staging {
                path: path.to_path_buf(),
                reason: "not a regular file".into(),
            });
        }
        let modified = meta.modified().ok();
        let known = self
            .hashes
            .lock()
            .map_err(|_| poisoned())?
            .get(path)
            .copied()
            .filter(|h| h.len == meta.len() && h.modified == modified && modified.is_some());
        let hashed = match known {
            Some(h) => h,
            None => {
                let (len, sha256) = hash_file(path).map_err(io)?;
                let h = Hashed {
                    len,
                    modified,
                    sha256,
                };
                self.hashes
                    .lock()
                    .map_err(|_| poisoned())?
                    .insert(path.to_path_buf(), h);
                h
            }
        };
        self.by_hash
            .lock()
            .map_err(|_| poisoned())?
            .insert(hashed.sha256, path.to_path_buf());
        Ok(FileRef {
            path: path.to_path_buf(),
            len: hashed.len,
            sha256: hashed.sha256,
        })
    }

    /// The published file with this hash.
    pub(crate) fn lookup(&self, sha256: &[u8; 32]) -> Option<PathBuf> {
        self.by_hash.lock().ok()?.get(sha256).cloned()
    }

    /// The file's length and hash now: from the cache when its length and
    /// modification time are unchanged, else hashed again (a file that
    /// changed since it was published is served as it is now, and the
    /// executor, which checks against the published hash, refuses it).
    pub(crate) fn current(&self, path: &Path) -> std::io::Result<(u64, [u8; 32])> {
        let meta = std::fs::metadata(path)?;
        let modified = meta.modified().ok();
        if let Ok(hashes) = self.hashes.lock() {
            if let Some(h) = hashes.get(path) {
                if h.len == meta.len() && h.modified == modified && modified.is_some() {
                    return Ok((h.len, h.sha256));
                }
            }
        }
        hash_file(path)
    }
}

/// The default cache directory of staged files: `$KILN_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/kiln/staged`, else `$HOME/.cache/kiln/staged`, else
/// `kiln-cache` in the working directory.
pub fn default_cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("KILN_CACHE_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("kiln/staged");
    }
    if let Some(h) = std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(h).join(".cache/kiln/staged");
    }
    PathBuf::from("kiln-cache")
}

/// An executor's side of staging: where its cache is and how it reaches
/// the driver.
pub struct Stager {
    driver: SocketAddr,
    token: JoinToken,
    cache: PathBuf,
    runtime: tokio::runtime::Handle,
    client: tokio::sync::Mutex<Option<ClusterClient>>,
    fetched: AtomicU64,
}

impl std::fmt::Debug for Stager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stager")
            .field("driver", &self.driver)
            .field("cache", &self.cache)
            .finish()
    }
}

thread_local! {
    static CURRENT: RefCell<Option<Arc<Stager>>> = const { RefCell::new(None) };
}

impl Stager {
    /// A stager fetching from the driver at `driver` into `cache`; its
    /// network work runs on `runtime`.
    pub fn new(
        driver: SocketAddr,
        token: JoinToken,
        cache: PathBuf,
        runtime: tokio::runtime::Handle,
    ) -> Self {
        Stager {
            driver,
            token,
            cache,
            runtime,
            client: tokio::sync::Mutex::new(None),
            fetched: AtomicU64::new(0),
        }
    }

    /// Runs `f` with this stager in scope on this thread (what
    /// [`local_path`] uses).
    pub fn scope<R>(self: &Arc<Self>, f: impl FnOnce() -> R) -> R {
        let previous = CURRENT.with(|c| c.replace(Some(self.clone())));
        struct Restore(Option<Arc<Stager>>);
        impl Drop for Restore {
            fn drop(&mut self) {
                let previous = self.0.take();
                CURRENT.with(|c| *c.borrow_mut() = previous);
            }
        }
        let _restore = Restore(previous);
        f()
    }

    /// Bytes this stager fetched from the driver so far.
    pub fn fetched_bytes(&self) -> u64 {
        self.fetched.load(Ordering::Relaxed)
    }

    /// `<cache>/sha256/<hex>/<file name>`: keyed by content, under the
    /// file's own name (readers look at extensions: `.gz`, `.flac`).
    fn cached(&self, file: &FileRef) -> PathBuf {
        let name = file
            .path
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_else(|| "data".into());
        self.cache.join("sha256").join(file.hex()).join(name)
    }

    /// `file`'s bytes in the cache: found there, or fetched and checked.
    pub fn fetch(&self, file: &FileRef) -> Result<PathBuf> {
        let dest = self.cached(file);
        if std::fs::metadata(&dest).is_ok_and(|m| m.is_file() && m.len() == file.len) {
            return Ok(dest);
        }
        let mut last = String::new();
        for attempt in 1..=2 {
            match self.fetch_once(file, &dest) {
                Ok(()) => return Ok(dest),
                Err(e) => {
                    warn!(file = %file.path.display(), attempt, error = %e, "staging a file failed");
                    last = e.to_string();
                }
            }
        }
        Err(Error::Staging {
            path: file.path.clone(),
            reason: format!("fetched twice from the driver, both failed: {last}"),
        })
    }

    fn fetch_once(&self, file: &FileRef, dest: &Path) -> Result<()> {
        let io = |p: &Path, e: std::io::Error| Error::Io {
            path: p.display().to_string(),
            source: e,
        };
        let dir = dest
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| self.cache.clone());
        std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
        let tmp = tempfile::Builder::new()
            .prefix(".staging-")
            .tempfile_in(&dir)
            .map_err(|e| io(&dir, e))?;
        let got = self.runtime.block_on(async {
            let mut client = self.client.lock().await;
            if client.is_none() {
                *client =
                    Some(ClusterClient::connect(self.driver, &self.token, STAGE_TIMEOUT).await?);
            }
            let Some(c) = client.as_ref() else {
                return Err(Error::DriverGone("no connection to the driver".into()));
            };
            let r = c.stage(&file.sha256, &file.path, tmp.path()).await;
            if let Err(Error::Connection { .. } | Error::Timeout { .. }) = &r {
                // A broken connection is made anew on the next request.
                *client = None;
            }
            r
        })?;
        if got.len != file.len || got.sha256 != file.sha256 {
            return Err(Error::Staging {
                path: file.path.clone(),
                reason: format!(
                    "the driver sent {} bytes with SHA-256 {}, expected {} bytes with {} (the file changed on the driver's host since the job started?)",
                    got.len,
                    hex(&got.sha256),
                    file.len,
                    file.hex()
                ),
            });
        }
        tmp.persist(dest).map_err(|e| io(dest, e.error))?;
        self.fetched.fetch_add(got.len, Ordering::Relaxed);
        debug!(file = %file.path.display(), bytes = got.len, "staged");
        Ok(())
    }
}

/// A local path holding `file`'s contents (see the module docs): with
/// `stage` always from the cache (fetched if missing), without it the path
/// itself where it exists with the file's length. Called by source
/// functions on executors; outside a task (no stager in scope) a missing
/// file is an error naming it.
pub fn local_path(file: &FileRef, stage: bool) -> Result<PathBuf> {
    if !stage && std::fs::metadata(&file.path).is_ok_and(|m| m.is_file() && m.len() == file.len) {
        return Ok(file.path.clone());
    }
    let stager = CURRENT.with(|c| c.borrow().clone());
    match stager {
        Some(s) => s.fetch(file),
        None if stage => Err(Error::Staging {
            path: file.path.clone(),
            reason: "staging asked for outside an executor's task".into(),
        }),
        None => Err(Error::Staging {
            path: file.path.clone(),
            reason: "not here (or another length), and no driver to fetch it from".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_published_by_hash_and_rehashed_when_they_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.bin");
        std::fs::write(&path, b"hello").unwrap();
        let p = Published::default();
        let f = p.publish(&path).unwrap();
        assert_eq!(f.len, 5);
        assert_eq!(
            f.hex(),
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(p.lookup(&f.sha256), Some(path.clone()));
        assert_eq!(p.current(&path).unwrap(), (5, f.sha256));
        std::fs::write(&path, b"hello, world").unwrap();
        let (len, sha) = p.current(&path).unwrap();
        assert_eq!(len, 12);
        assert_ne!(sha, f.sha256);
        assert!(p.publish(dir.path()).is_err());
        assert!(p.publish(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn a_local_file_of_the_right_length_is_read_in_place_unless_staging() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.bin");
        std::fs::write(&path, b"hello").unwrap();
        let (len, sha256) = hash_file(&path).unwrap();
        let f = FileRef {
            path: path.clone(),
            len,
            sha256,
        };
        assert_eq!(local_path(&f, false).unwrap(), path);
        // Staging needs an executor's stager; a missing file too.
        let err = local_path(&f, true).unwrap_err().to_string();
        assert!(err.contains("a.bin"), "{err}");
        let missing = FileRef {
            path: dir.path().join("gone.bin"),
            ..f
        };
        let err = local_path(&missing, false).unwrap_err().to_string();
        assert!(
            err.contains("gone.bin") && err.contains("no driver"),
            "{err}"
        );
    }
}

//! What job kinds share to read their data without a shared filesystem:
//! publishing files on the driver (in parallel: hashing dominates) and
//! *manifests* (a kind's list of what its partitions read, with every
//! file's hash), which travel to the executors as a staged file of their
//! own, so a task's lineage stays small whatever the dataset's size.

use std::path::PathBuf;

use kiln_runtime::staging::{local_path, FileRef};
use kiln_runtime::{BoxError, JobContext};
use rayon::prelude::*;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::jobs::{JobError, Result};

/// Publishes `paths` on the job's driver for its executors to stage
/// (hashed in parallel, off the async threads).
pub async fn publish_all(ctx: &JobContext, paths: Vec<PathBuf>) -> Result<Vec<FileRef>> {
    let driver = ctx.driver().clone();
    tokio::task::spawn_blocking(move || {
        paths
            .par_iter()
            .map(|p| driver.publish(p).map_err(JobError::from))
            .collect::<Result<Vec<_>>>()
    })
    .await
    .map_err(|e| JobError::step("publishing the data files", e))?
}

/// Writes `value` (rmp-serde) as `name` into the job's directory and
/// publishes it.
pub async fn publish_manifest<T: Serialize>(
    ctx: &JobContext,
    name: &str,
    value: &T,
) -> Result<FileRef> {
    let bytes = rmp_serde::to_vec(value)
        .map_err(|e| JobError::step(format!("encoding the manifest {name}"), e))?;
    let path = ctx.dir().join(name);
    std::fs::write(&path, bytes).map_err(|e| JobError::Io {
        path: path.clone(),
        source: e,
    })?;
    Ok(ctx.driver().publish(&path)?)
}

/// On an executor: the manifest `file` (staged if need be), decoded.
pub fn read_manifest<T: DeserializeOwned>(
    file: &FileRef,
    stage: bool,
) -> std::result::Result<T, BoxError> {
    let path = local_path(file, stage)?;
    let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    rmp_serde::from_slice(&bytes)
        .map_err(|e| format!("manifest {} does not decode: {e}", file.path.display()).into())
}

/// On an executor: a local path of `file` (see
/// [`kiln_runtime::staging::local_path`]), the error naming it.
pub fn local(file: &FileRef, stage: bool) -> kiln_runtime::Result<PathBuf> {
    local_path(file, stage)
}

/// The contiguous range of `len` items partition `p` of `n` reads.
pub fn partition_range(len: usize, p: u32, n: u32) -> std::ops::Range<usize> {
    let (n, p) = (n.max(1) as usize, p as usize);
    (p * len / n)..((p + 1) * len / n)
}

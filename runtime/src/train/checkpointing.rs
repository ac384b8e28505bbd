//! When and how a training run writes checkpoints, and what it stores
//! besides the shards: the position in the data order and the job config.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::checkpoint::{CheckpointRecord, StoreClaim};
use crate::error::{Error, Result};

/// Checkpoint triggers and retention of a training run.
#[derive(Debug, Clone)]
pub struct CheckpointPolicy {
    /// The store directory (sled manifest + blob folders).
    pub dir: PathBuf,
    /// Write every this many iterations.
    pub every_iterations: Option<u64>,
    /// Write at the end of every epoch.
    pub every_epoch: bool,
    /// Write when this much time has passed since the last one.
    pub every: Option<Duration>,
    /// Keep the last K committed checkpoints (0 keeps all).
    pub keep_last: usize,
    /// Whose store it is: a new run's, or the run being continued
    /// (checked before the trainer starts).
    pub claim: StoreClaim,
}

impl CheckpointPolicy {
    /// Every epoch, keeping the last 3, in `dir`, used as `claim` says.
    pub fn every_epoch(dir: impl Into<PathBuf>, claim: StoreClaim) -> Self {
        CheckpointPolicy {
            dir: dir.into(),
            every_iterations: None,
            every_epoch: true,
            every: None,
            keep_last: 3,
            claim,
        }
    }

    /// Whether a checkpoint is due after `iteration` (1-based count of
    /// iterations done), given whether an epoch just ended.
    pub(crate) fn due(&self, iteration: u64, epoch_ended: bool, last: Instant) -> bool {
        (self.every_epoch && epoch_ended)
            || self
                .every_iterations
                .is_some_and(|n| n > 0 && iteration.is_multiple_of(n))
            || self.every.is_some_and(|t| last.elapsed() >= t)
    }
}

/// Where a run stands: enough to continue it exactly.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Position {
    /// Iterations done.
    pub iteration: u64,
    /// Epochs done.
    pub epoch: u64,
    /// Batches done in the current epoch.
    pub batch: u64,
}

/// Meta keys of a training checkpoint.
pub(crate) const META_BATCH: &str = "train.batch_in_epoch";
pub(crate) const META_SEED: &str = "train.seed";
pub(crate) const META_BATCH_SIZE: &str = "train.batch_size";
pub(crate) const META_SHARDS: &str = "train.shards";
pub(crate) const META_PARAMS: &str = "train.params";

/// Reads a numeric meta entry of a record.
pub(crate) fn meta_u64(record: &CheckpointRecord, key: &str) -> Result<u64> {
    record
        .meta
        .get(key)
        .ok_or_else(|| Error::CheckpointMeta {
            checkpoint: record.id,
            key: key.into(),
            reason: "missing: not a training checkpoint".into(),
        })?
        .parse()
        .map_err(|e| Error::CheckpointMeta {
            checkpoint: record.id,
            key: key.into(),
            reason: format!("not a whole number: {e}"),
        })
}

/// The meta entries a training checkpoint carries.
pub(crate) fn training_meta(
    pos: Position,
    seed: u64,
    batch_size: usize,
    shards: usize,
    params: usize,
    job: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut meta = job.clone();
    meta.insert(META_BATCH.into(), pos.batch.to_string());
    meta.insert(META_SEED.into(), seed.to_string());
    meta.insert(META_BATCH_SIZE.into(), batch_size.to_string());
    meta.insert(META_SHARDS.into(), shards.to_string());
    meta.insert(META_PARAMS.into(), params.to_string());
    meta
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn triggers() {
        let p = CheckpointPolicy {
            every_iterations: Some(5),
            ..CheckpointPolicy::every_epoch(
                "x",
                StoreClaim::NewRun {
                    kind: "test".into(),
                },
            )
        };
        let now = Instant::now();
        assert!(p.due(10, false, now));
        assert!(!p.due(11, false, now));
        assert!(p.due(11, true, now));
        let t = CheckpointPolicy {
            every: Some(Duration::ZERO),
            every_epoch: false,
            ..CheckpointPolicy::every_epoch(
                "x",
                StoreClaim::NewRun {
                    kind: "test".into(),
                },
            )
        };
        assert!(t.due(1, false, now));
    }
}

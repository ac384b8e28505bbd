//! Parameter shards hosted by executors (BigDL's AllReduceParameter
//! placement): each executor keeps the shards the driver assigned to it —
//! weights, optimizer state and version — and serves them to its peers.
//!
//! Data moves executor to executor through the shuffle block store and
//! peer endpoints ([`crate::shuffle`]): a training task fetches the current
//! weights (block `(weights id, shard)` from each shard's owner), stores
//! its gradient cut into one slice per shard (block `(gradient id,
//! partition, shard)`), and each owner's step task fetches its slice from
//! every partition, sums them in partition order (so the result does not
//! depend on where the partitions ran), applies the optimizer and
//! publishes the new weights as block `(next weights id, shard)`. The
//! driver only orchestrates; no tensor of an iteration passes through
//! it. For a checkpoint the primary stages the shard's blobs as blocks
//! ([`ShardOp::Stage`]) and the driver streams them into its store.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::buffers::Pooled;
use crate::checkpoint::BlobRef;
use crate::error::{BoxError, Error, Result};
use crate::protocol::{Inputs, TaskOutput};
use crate::registry::Registry;
use crate::shuffle::{Block, ShuffleStore};
use crate::train::shard::{shard_blobs, ShardOptimizer};
use crate::train::worker::{add_le_f32, bytes_to_f32, f32_to_bytes, f32_to_shared_bytes};
use crate::transport::encode;

/// Builds a shard's optimizer from its rmp-serde configuration, on any
/// process (registered under a name, as trainers are).
pub type OptimizerMaker = Arc<
    dyn Fn(&[u8], Range<usize>) -> std::result::Result<Box<dyn ShardOptimizer>, BoxError>
        + Send
        + Sync,
>;

/// The optimizer of executor-hosted shards: a name registered with
/// [`Registry::register_optimizer`] and its configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OptimizerSpec {
    /// Registered name.
    pub name: String,
    /// rmp-serde configuration.
    #[serde(with = "serde_bytes")]
    pub config: Vec<u8>,
}

impl Registry {
    /// Register an optimizer for executor-hosted parameter shards:
    /// `make(config, range)` builds the optimizer of the shard covering
    /// `range` of the flat parameters. It may fail with any error (a
    /// `String` converts with `.into()` or `?`); the shard's install fails
    /// with [`Error::Optimizer`].
    pub fn register_optimizer<C: serde::de::DeserializeOwned>(
        &mut self,
        name: &str,
        make: impl Fn(&C, Range<usize>) -> std::result::Result<Box<dyn ShardOptimizer>, BoxError>
            + Send
            + Sync
            + 'static,
    ) -> &mut Self {
        let n = name.to_owned();
        let maker: OptimizerMaker = Arc::new(move |bytes, range| {
            let c: C = rmp_serde::from_slice(bytes).map_err(|e| Error::Payload {
                what: format!("the configuration of optimizer {n:?}"),
                source: e,
            })?;
            make(&c, range)
        });
        self.optimizers.insert(name.to_owned(), maker);
        self
    }

    pub(crate) fn optimizer(&self, name: &str) -> Result<&OptimizerMaker> {
        self.optimizers
            .get(name)
            .ok_or_else(|| Error::UnknownFunction {
                kind: "optimizer",
                name: name.into(),
            })
    }
}

/// What the driver asks of a shard's host.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum ShardOp {
    /// Take over shard `shard` of run `run` at `version` (initial weights, a
    /// checkpoint, or a copy from another holder) and publish its weights
    /// as block `(publish, shard)`.
    Install {
        run: u64,
        shard: u32,
        version: u64,
        range: Range<usize>,
        optimizer: OptimizerSpec,
        #[serde(with = "serde_bytes")]
        params: Vec<u8>,
        /// The optimizer state; `None`: fresh.
        state: Option<Vec<u8>>,
        publish: u64,
    },
    /// Step each of `shards` (all hosted here: one task per holder, not per
    /// shard) from version `from` with the gradient slices fetched as input
    /// `(gradients, shard)` (one per partition, in partition order), then
    /// publish its new weights as `(publish, shard)`. A shard already at
    /// `from + 1` (an iteration redone after a failure) only republishes.
    Step {
        run: u64,
        shards: Vec<u32>,
        from: u64,
        gradients: u64,
        scale: f32,
        lr: f64,
        publish: u64,
    },
    /// The shard's version, weights and (if asked) optimizer state.
    Get { run: u64, shard: u32, state: bool },
    /// Stage the shard's checkpoint blobs for the driver to fetch
    /// (version 7; `Snapshot { dir, id }`, which wrote them into a
    /// directory on the holder's own file system, before): the blobs
    /// [`shard_blobs`] makes, cut into blocks of at most `block_bytes`,
    /// left in this executor's store as `(block, shard, k)` for `k` =
    /// 0, 1, … (each blob's blocks in payload order, the blobs one after
    /// the other). Replies with a [`StagedBlob`] per blob. The holder is
    /// not told where or under which id the checkpoint is stored; the
    /// driver fetches the blocks over the peer endpoint, writes them into
    /// its store and frees them (`FreeShuffle { block }`).
    Stage {
        run: u64,
        shard: u32,
        block: u64,
        block_bytes: u64,
    },
    /// Forget every shard of `run`.
    Drop { run: u64 },
}

/// One checkpoint blob as [`ShardOp::Stage`] left it in the holder's
/// store: its name, length and CRC32, and its blocks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StagedBlob {
    /// Name, length and CRC32 (IEEE) of the whole payload.
    pub(crate) blob: BlobRef,
    /// Its first block: its blocks are reduce partitions `first..first +
    /// blocks` of `(block, shard)`, in payload order; each holds
    /// `block_bytes` bytes but the last, which holds the rest.
    pub(crate) first: u32,
    /// How many blocks it takes (none for an empty blob).
    pub(crate) blocks: u32,
}

/// Cuts `blobs` into blocks of at most `block_bytes` (views of each
/// payload, not copies), keeps them in `store` as `(block, shard, k)` and
/// describes them.
pub(crate) fn stage_blobs(
    store: &ShuffleStore,
    block: u64,
    shard: u32,
    blobs: [(String, Vec<u8>); 2],
    block_bytes: u64,
) -> Result<Vec<StagedBlob>> {
    let piece = usize::try_from(block_bytes)
        .ok()
        .filter(|&b| b > 0)
        .ok_or_else(|| Error::SettingOutOfRange {
            setting: format!("checkpoint staging block size of parameter shard {shard}"),
            value: format!("{block_bytes} bytes"),
            range: "it must be at least 1 byte and fit this host's address space".into(),
        })?;
    let mut pieces = Vec::new();
    let mut staged = Vec::with_capacity(blobs.len());
    let count = |n: usize| {
        u32::try_from(n).map_err(|_| Error::SettingOutOfRange {
            setting: format!("checkpoint staging block size of parameter shard {shard}"),
            value: format!("{block_bytes} bytes"),
            range: format!(
                "it must be large enough for at most {} blocks; {n} are needed",
                u32::MAX
            ),
        })
    };
    for (name, payload) in blobs {
        let crc32 = crc32fast::hash(&payload);
        let len = payload.len();
        let first = count(pieces.len())?;
        let bytes = Bytes::from(payload);
        let mut at = 0;
        while at < len {
            let end = len.min(at + piece);
            pieces.push(bytes.slice(at..end));
            at = end;
        }
        staged.push(StagedBlob {
            blob: BlobRef {
                name,
                len: len as u64,
                crc32,
            },
            first,
            blocks: count(pieces.len())? - first,
        });
    }
    store.put_shared(block, shard, pieces)?;
    Ok(staged)
}

/// A shard as [`ShardOp::Get`] returns it.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ShardCopy {
    pub(crate) version: u64,
    #[serde(with = "serde_bytes")]
    pub(crate) params: Vec<u8>,
    pub(crate) state: Option<Vec<u8>>,
}

struct HostedShard {
    version: u64,
    params: Vec<f32>,
    optimizer: Box<dyn ShardOptimizer>,
}

impl HostedShard {
    /// Applies one iteration's gradient slices (summed in partition order,
    /// then scaled) to the shard at version `from`; a shard already at
    /// `from + 1` (the iteration redone) is left as it is.
    fn step(
        &mut self,
        shard: u32,
        from: u64,
        slices: Option<&Vec<Block>>,
        scale: f32,
        lr: f64,
    ) -> Result<()> {
        if self.version == from + 1 {
            return Ok(());
        }
        if self.version != from {
            return Err(Error::ShardVersion {
                shard,
                at: self.version,
                expected: from,
            });
        }
        let slices = slices.ok_or_else(|| Error::MissingInput {
            input: format!("the gradient slices of parameter shard {shard}"),
            reason: "were not fetched for its step",
        })?;
        let bytes = self.params.len() * 4;
        for (p, s) in slices.iter().enumerate() {
            if s.len() != bytes {
                return Err(Error::ParameterCount {
                    what: format!("parameter shard {shard}: the gradient slice of partition {p}"),
                    unit: "bytes",
                    expected: bytes,
                    found: s.len(),
                });
            }
        }
        let mut in_range = true;
        self.optimizer
            .step_chunked(
                &mut self.params,
                &mut |offset, out| in_range &= sum_scaled(out, offset, slices, scale),
                lr,
            )
            .map_err(|e| Error::Optimizer {
                shard: shard as usize,
                op: "step",
                source: e,
            })?;
        if !in_range {
            return Err(Error::Optimizer {
                shard: shard as usize,
                op: "step",
                source: "it asked for gradients past the shard's end".into(),
            });
        }
        self.version = from + 1;
        Ok(())
    }
}

/// Writes `(0 + s_0 + s_1 + …) · scale` of the gradient values
/// `offset..offset + out.len()` of the little-endian `f32` slices into
/// `out`, adding in the order given (the order every replica of a shard
/// uses, so their steps stay bit-identical). Called chunk by chunk from the
/// optimizer's step: zeroing, each addition and the scaling used to be
/// separate passes over a whole-shard accumulator, then the optimizer read
/// it once more. Returns false (leaving `out` zeroed) for a range past a
/// slice's end.
fn sum_scaled(out: &mut [f32], offset: usize, slices: &[Block], scale: f32) -> bool {
    let (lo, hi) = (offset * 4, (offset + out.len()) * 4);
    out.fill(0.0);
    for s in slices {
        // Read from the pieces the slice arrived in. Added to zeros, not
        // copied in: -0.0 + 0.0 is 0.0, as in the driver's sums.
        if !s.for_each_f32_run(lo..hi, |at, bytes| add_le_f32(&mut out[at..], bytes)) {
            out.fill(0.0);
            return false;
        }
    }
    for a in out.iter_mut() {
        *a *= scale;
    }
    true
}

/// Every [`ShardOp::Stage`] the executors of this test binary ran, as
/// they received it: tests check what a holder is told.
#[cfg(test)]
pub(crate) static STAGED_OPS: Mutex<Vec<ShardOp>> = Mutex::new(Vec::new());

/// Gradient bytes above which one task's shards step on threads of their
/// own (below it, thread start-up costs more than the step).
const CONCURRENT_STEP_BYTES: usize = 8 << 20;

/// The shards one executor hosts. Cheap to clone (shared).
#[derive(Clone, Default)]
pub(crate) struct ParamHost {
    shards: Arc<Mutex<HashMap<(u64, u32), SharedShard>>>,
}

/// One hosted shard behind its own lock.
type SharedShard = Arc<Mutex<HostedShard>>;

fn poisoned() -> Error {
    Error::Poisoned {
        lock: "parameter host",
    }
}

impl ParamHost {
    /// One hosted shard (its own lock: shards step concurrently).
    fn shard(&self, run: u64, shard: u32) -> Result<SharedShard> {
        self.shards
            .lock()
            .map_err(|_| poisoned())?
            .get(&(run, shard))
            .cloned()
            .ok_or_else(|| Error::MissingInput {
                input: format!("parameter shard {shard} of run {run}"),
                reason: "is not hosted by this executor",
            })
    }

    /// Runs one operation (on a blocking thread: steps compute, stages
    /// serialise and checksum).
    pub(crate) fn run(
        &self,
        registry: &Registry,
        store: &ShuffleStore,
        inputs: &Inputs,
        op: &ShardOp,
    ) -> Result<TaskOutput> {
        #[cfg(test)]
        if let (ShardOp::Stage { .. }, Ok(mut seen)) = (op, STAGED_OPS.lock()) {
            seen.push(op.clone());
        }
        match op {
            ShardOp::Install {
                run,
                shard,
                version,
                range,
                optimizer,
                params,
                state,
                publish,
            } => {
                let weights = bytes_to_f32(params, "shard weights")?;
                if weights.len() != range.len() {
                    return Err(Error::ParameterCount {
                        what: format!(
                            "parameter shard {shard}: the weights installed for range {range:?}"
                        ),
                        unit: "weights",
                        expected: range.len(),
                        found: weights.len(),
                    });
                }
                let make = registry.optimizer(&optimizer.name)?;
                let mut opt =
                    make(&optimizer.config, range.clone()).map_err(|e| Error::Optimizer {
                        shard: *shard as usize,
                        op: "creation",
                        source: e,
                    })?;
                if let Some(s) = state {
                    opt.load_state(s).map_err(|e| Error::Optimizer {
                        shard: *shard as usize,
                        op: "loading its state",
                        source: e,
                    })?;
                }
                store.put(*publish, *shard, vec![params.clone()])?;
                self.shards.lock().map_err(|_| poisoned())?.insert(
                    (*run, *shard),
                    Arc::new(Mutex::new(HostedShard {
                        version: *version,
                        params: weights,
                        optimizer: opt,
                    })),
                );
                Ok(TaskOutput::Done)
            }
            ShardOp::Step {
                run,
                shards,
                from,
                gradients,
                scale,
                lr,
                publish,
            } => {
                let step_one = |shard: u32| -> Result<()> {
                    let hosted = self.shard(*run, shard)?;
                    let mut guard = hosted.lock().map_err(|_| poisoned())?;
                    let slices = inputs.get(&(*gradients, shard));
                    guard.step(shard, *from, slices, *scale, *lr)?;
                    store.put_shared(*publish, shard, vec![f32_to_shared_bytes(&guard.params)])
                };
                let bytes: usize = shards
                    .iter()
                    .filter_map(|s| inputs.get(&(*gradients, *s)))
                    .flat_map(|slices| slices.iter().map(|b| b.len()))
                    .sum();
                if shards.len() > 1 && bytes >= CONCURRENT_STEP_BYTES {
                    // Large shards step side by side, as separate tasks did.
                    std::thread::scope(|scope| {
                        let running: Vec<_> = shards
                            .iter()
                            .map(|&shard| (shard, scope.spawn(move || step_one(shard))))
                            .collect();
                        running.into_iter().try_for_each(|(shard, r)| {
                            r.join().map_err(|_| Error::ActorFailed {
                                actor: format!("the step thread of parameter shard {shard}"),
                                reason: "it panicked".into(),
                            })?
                        })
                    })?;
                } else {
                    shards.iter().try_for_each(|&shard| step_one(shard))?;
                }
                Ok(TaskOutput::Done)
            }
            ShardOp::Get { run, shard, state } => {
                let hosted = self.shard(*run, *shard)?;
                let h = hosted.lock().map_err(|_| poisoned())?;
                let state = if *state {
                    Some(h.optimizer.state().map_err(|e| Error::Optimizer {
                        shard: *shard as usize,
                        op: "saving its state",
                        source: e,
                    })?)
                } else {
                    None
                };
                let copy = ShardCopy {
                    version: h.version,
                    params: f32_to_bytes(&h.params),
                    state,
                };
                Ok(TaskOutput::Data(encode(&copy)?))
            }
            ShardOp::Stage {
                run,
                shard,
                block,
                block_bytes,
            } => {
                // Serialised under the shard's lock (one consistent
                // version), cut and checksummed after it.
                let blobs = {
                    let hosted = self.shard(*run, *shard)?;
                    let h = hosted.lock().map_err(|_| poisoned())?;
                    let state = h.optimizer.state().map_err(|e| Error::Optimizer {
                        shard: *shard as usize,
                        op: "saving its state",
                        source: e,
                    })?;
                    shard_blobs(*shard as usize, &h.params, state)
                };
                let staged = stage_blobs(store, *block, *shard, blobs, *block_bytes)?;
                Ok(TaskOutput::Data(encode(&staged)?))
            }
            ShardOp::Drop { run } => {
                self.shards
                    .lock()
                    .map_err(|_| poisoned())?
                    .retain(|(r, _), _| r != run);
                // The run's buffers need not be kept for its next iteration.
                crate::buffers::pool().clear();
                Ok(TaskOutput::Done)
            }
        }
    }
}

/// Cuts a gradient into one little-endian byte block per shard range. The
/// blocks share the gradient's buffer (no copy: a 256 MB gradient used to
/// be copied into fresh, page-faulting slices every iteration), which goes
/// back to the buffer pool once every block is freed.
pub(crate) fn slice_by_shard(mut grads: Vec<f32>, ranges: &[Range<usize>]) -> Result<Vec<Bytes>> {
    if let Some(r) = ranges.iter().find(|r| grads.get((*r).clone()).is_none()) {
        return Err(Error::ParameterCount {
            what: format!("a gradient cut by shard range {r:?} (at least its end expected)"),
            unit: "values",
            expected: r.end,
            found: grads.len(),
        });
    }
    // The values become their little-endian bit patterns, so the buffer's
    // bytes are the wire format (nothing to do on little-endian machines).
    if cfg!(target_endian = "big") {
        for g in &mut grads {
            *g = f32::from_bits(g.to_bits().to_le());
        }
    }
    let shared = Arc::new(Pooled::new(grads));
    Ok(ranges
        .iter()
        .map(|r| {
            Bytes::from_owner(F32Range {
                values: shared.clone(),
                range: r.clone(),
            })
        })
        .collect())
}

/// A range of a shared `f32` buffer viewed as its bytes.
struct F32Range {
    values: Arc<Pooled>,
    range: Range<usize>,
}

impl AsRef<[u8]> for F32Range {
    fn as_ref(&self) -> &[u8] {
        bytemuck::cast_slice(&self.values.values()[self.range.clone()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::train::shard::{Overreaching, Plain};

    fn registry() -> Registry {
        let mut r = Registry::new();
        r.register_optimizer("plain", |_: &(), _| {
            Ok(Box::new(Plain) as Box<dyn ShardOptimizer>)
        });
        r
    }

    /// Step shard 0 of run 1 from `from` with gradients 20, publishing 11.
    fn step(from: u64, scale: f32) -> ShardOp {
        ShardOp::Step {
            run: 1,
            shards: vec![0],
            from,
            gradients: 20,
            scale,
            lr: 1.0,
            publish: 11,
        }
    }

    fn install(run: u64, shard: u32, params: &[f32], publish: u64) -> ShardOp {
        ShardOp::Install {
            run,
            shard,
            version: 0,
            range: 0..params.len(),
            optimizer: OptimizerSpec {
                name: "plain".into(),
                config: encode(&()).unwrap(),
            },
            params: f32_to_bytes(params),
            state: None,
            publish,
        }
    }

    #[test]
    fn install_step_in_partition_order_get_and_redo() {
        let (r, store, host) = (registry(), ShuffleStore::default(), ParamHost::default());
        let none = Inputs::new();
        host.run(&r, &store, &none, &install(1, 0, &[1.0, 2.0], 10))
            .unwrap();
        assert_eq!(
            store.block(10, 0, 0).unwrap().as_deref(),
            Some(&f32_to_bytes(&[1.0, 2.0])[..])
        );
        let mut inputs = Inputs::new();
        inputs.insert(
            (20, 0),
            vec![
                f32_to_bytes(&[1.0, 1.0]).into(),
                f32_to_bytes(&[3.0, 5.0]).into(),
            ],
        );
        let step = step(0, 0.5);
        host.run(&r, &store, &inputs, &step).unwrap();
        let want = f32_to_bytes(&[-1.0, -1.0]);
        assert_eq!(store.block(11, 0, 0).unwrap().as_deref(), Some(&want[..]));
        // Redoing the same step (after a failure elsewhere) does not apply
        // it twice.
        store.free(11).unwrap();
        host.run(&r, &store, &none, &step).unwrap();
        assert_eq!(store.block(11, 0, 0).unwrap().as_deref(), Some(&want[..]));
        let TaskOutput::Data(bytes) = host
            .run(
                &r,
                &store,
                &none,
                &ShardOp::Get {
                    run: 1,
                    shard: 0,
                    state: true,
                },
            )
            .unwrap()
        else {
            panic!("Get returns data");
        };
        let copy: ShardCopy = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(
            (copy.version, copy.params, copy.state),
            (1, want, Some(vec![7]))
        );
        // A step from a version the shard is not at is refused.
        let err = host
            .run(&r, &store, &inputs, &self::step(5, 0.5))
            .unwrap_err()
            .to_string();
        assert!(err.contains("is at version 1, 5 expected"), "{err}");
    }

    #[test]
    fn one_task_steps_every_shard_it_names_sequentially_or_side_by_side() {
        // Small shards step one after the other; shards whose slices add up
        // to CONCURRENT_STEP_BYTES or more step on threads of their own.
        for n in [3usize, CONCURRENT_STEP_BYTES / 16] {
            let (r, store, host) = (registry(), ShuffleStore::default(), ParamHost::default());
            let none = Inputs::new();
            for shard in 0..2u32 {
                let params = vec![shard as f32; n];
                host.run(&r, &store, &none, &install(1, shard, &params, 10))
                    .unwrap();
            }
            let mut inputs = Inputs::new();
            for shard in 0..2u32 {
                // Two partitions' slices: 1 and 3 for shard 0, 2 and 4 for 1.
                let g = |p: f32| f32_to_bytes(&vec![p + shard as f32; n]).into();
                inputs.insert((20, shard), vec![g(1.0), g(3.0)]);
            }
            let mut op = step(0, 0.5);
            if let ShardOp::Step { shards, .. } = &mut op {
                *shards = vec![0, 1];
            }
            host.run(&r, &store, &inputs, &op).unwrap();
            // shard 0: 0 - (1 + 3) / 2 = -2; shard 1: 1 - (2 + 4) / 2 = -2.
            for shard in 0..2u32 {
                let b = store.block(11, shard, 0).unwrap().unwrap();
                assert_eq!(&b[..], &f32_to_bytes(&vec![-2.0; n])[..], "shard {shard}");
            }
            // A shard that is missing its slices fails the task, naming it.
            inputs.remove(&(20, 1));
            let mut redo = step(1, 0.5);
            if let ShardOp::Step { shards, .. } = &mut redo {
                *shards = vec![0, 1];
            }
            let err = host
                .run(&r, &store, &inputs, &redo)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("the gradient slices of parameter shard 1 were not fetched"),
                "{err}"
            );
        }
    }

    /// A staged shard's blocks, joined, are the payloads write_shard_blobs
    /// writes (same names, bytes and checksums), so stores written before
    /// staging existed and after read alike.
    #[test]
    fn staged_blobs_are_the_blobs_the_holder_used_to_write() {
        let (r, store, host) = (registry(), ShuffleStore::default(), ParamHost::default());
        let none = Inputs::new();
        let weights: Vec<f32> = (0..7).map(|i| i as f32 * 0.5 - 1.0).collect();
        host.run(&r, &store, &none, &install(3, 2, &weights, 10))
            .unwrap();
        let stage = |block, block_bytes| ShardOp::Stage {
            run: 3,
            shard: 2,
            block,
            block_bytes,
        };
        let dir = tempfile::tempdir().unwrap();
        let written =
            crate::train::shard::write_shard_blobs(dir.path(), 1, 2, &weights, vec![7]).unwrap();
        // Blocks of 5 bytes: 28 bytes of weights in 6 blocks, the state in 1.
        for (block, block_bytes) in [(40u64, 5u64), (41, 1 << 20)] {
            let TaskOutput::Data(bytes) = host
                .run(&r, &store, &none, &stage(block, block_bytes))
                .unwrap()
            else {
                panic!("Stage returns data");
            };
            let staged: Vec<StagedBlob> = rmp_serde::from_slice(&bytes).unwrap();
            assert_eq!(
                staged.iter().map(|s| s.blob.clone()).collect::<Vec<_>>(),
                written
            );
            let mut k = 0;
            for s in &staged {
                assert_eq!(s.first, k);
                let mut joined = Vec::new();
                for b in s.first..s.first + s.blocks {
                    let piece = store.block(block, 2, b).unwrap().unwrap();
                    assert!(piece.len() as u64 <= block_bytes);
                    joined.extend_from_slice(&piece);
                }
                k += s.blocks;
                let on_disk = crate::checkpoint::read_blob(dir.path(), 1, &s.blob).unwrap();
                assert_eq!(joined, on_disk, "{}", s.blob.name);
            }
            assert_eq!(store.block(block, 2, k).unwrap(), None);
            if block_bytes == 5 {
                assert_eq!((staged[0].blocks, staged[1].blocks), (6, 1));
            }
        }
        // Nothing staged for a shard not hosted here, or with empty blocks.
        let err = host.run(
            &r,
            &store,
            &none,
            &ShardOp::Stage {
                run: 3,
                shard: 0,
                block: 42,
                block_bytes: 5,
            },
        );
        assert!(err
            .unwrap_err()
            .to_string()
            .contains("is not hosted by this executor"));
        let err = host
            .run(&r, &store, &none, &stage(43, 0))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("staging block size of parameter shard 2 = 0 bytes"),
            "{err}"
        );
        assert_eq!(store.block(43, 2, 0).unwrap(), None);
    }

    #[test]
    fn bad_inputs_are_errors_naming_the_shard() {
        let (r, store, host) = (registry(), ShuffleStore::default(), ParamHost::default());
        let none = Inputs::new();
        let mut op = install(1, 3, &[1.0], 10);
        if let ShardOp::Install { range, .. } = &mut op {
            *range = 0..2;
        }
        let err = host.run(&r, &store, &none, &op).unwrap_err().to_string();
        assert!(err.contains("shard 3"), "{err}");
        host.run(&r, &store, &none, &install(1, 0, &[1.0], 10))
            .unwrap();
        let mut inputs = Inputs::new();
        inputs.insert((20, 0), vec![Bytes::from_static(&[1, 2, 3]).into()]);
        let step = step(0, 1.0);
        let err = host
            .run(&r, &store, &inputs, &step)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("gradient slice of partition 0: 3 bytes, 4 expected"),
            "{err}"
        );
        let err = host
            .run(
                &r,
                &store,
                &none,
                &ShardOp::Get {
                    run: 2,
                    shard: 0,
                    state: false,
                },
            )
            .unwrap_err()
            .to_string();
        assert!(err.contains("is not hosted by this executor"), "{err}");
        host.run(&r, &store, &none, &ShardOp::Drop { run: 1 })
            .unwrap();
        assert!(host
            .run(
                &r,
                &store,
                &none,
                &ShardOp::Get {
                    run: 1,
                    shard: 0,
                    state: false
                }
            )
            .is_err());
    }

    #[test]
    fn chunked_sum_matches_whole_passes_bit_for_bit() {
        // Values with signed zeros, so a sum that skipped the zero start
        // would show; chunks of uneven sizes.
        for n in [1, 4095, 4096, 2 * 4096 + 3] {
            let slices: Vec<Vec<f32>> = (0..3)
                .map(|k| {
                    (0..n)
                        .map(|i| match (i + k) % 5 {
                            0 => -0.0,
                            1 => 1e-3 * i as f32,
                            2 => -7.25 / (1 + i + k) as f32,
                            _ => (i as f32).sin() * 1e4,
                        })
                        .collect()
                })
                .collect();
            let mut expected = vec![0.0f32; n];
            for s in &slices {
                for (e, x) in expected.iter_mut().zip(s) {
                    *e += x;
                }
            }
            for e in &mut expected {
                *e *= 0.125;
            }
            // An aligned slice, and one read from an odd address (the
            // byte-wise path).
            let aligned = Bytes::from(f32_to_bytes(&slices[0])).into();
            let mut shifted = vec![0u8];
            shifted.extend(f32_to_bytes(&slices[1]));
            let shifted = Bytes::from(shifted).slice(1..).into();
            // The third as a transfer delivers it: pieces of odd sizes,
            // values split between pieces.
            let bytes = Bytes::from(f32_to_bytes(&slices[2]));
            let cuts = [0, 3, 7, 4000, 4001, 4002, 9999, bytes.len()];
            let pieces = cuts
                .windows(2)
                .map(|w| bytes.slice(w[0].min(bytes.len())..w[1].min(bytes.len())))
                .collect();
            let third = Block::from_pieces(pieces);
            let slices = [aligned, shifted, third];
            let mut acc = vec![f32::NAN; n];
            let mut offset = 0;
            for (k, chunk) in acc.chunks_mut(1000).enumerate() {
                assert!(sum_scaled(chunk, offset, &slices, 0.125), "chunk {k}");
                offset += chunk.len();
            }
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&acc), bits(&expected), "n = {n}");
            // A range past the slices' end is refused, not a panic.
            assert!(!sum_scaled(&mut [0.0; 2], n - 1, &slices, 1.0));
        }
    }

    #[test]
    fn an_optimizer_reading_past_the_shard_is_an_error() {
        let mut shard = HostedShard {
            version: 0,
            params: vec![1.0; 3],
            optimizer: Box::new(Overreaching),
        };
        let slices = vec![Bytes::from(f32_to_bytes(&[1.0; 3])).into()];
        let err = shard.step(0, 0, Some(&slices), 1.0, 0.1).unwrap_err();
        assert!(err.to_string().contains("past the shard's end"), "{err}");
    }

    #[test]
    fn gradients_are_cut_by_shard_range() {
        let s = slice_by_shard(vec![1.0, 2.0, -3.5], &[0..1, 1..3]).unwrap();
        assert_eq!(s[0], f32_to_bytes(&[1.0]));
        assert_eq!(s[1], f32_to_bytes(&[2.0, -3.5]));
        // Both are views of the one gradient.
        assert_eq!(s[1].as_ptr() as usize - s[0].as_ptr() as usize, 4);
        let err = slice_by_shard(vec![1.0], &[0..1, 1..2]).unwrap_err();
        assert!(
            matches!(
                err,
                Error::ParameterCount {
                    expected: 2,
                    found: 1,
                    ..
                }
            ) && err.to_string().contains("shard range 1..2"),
            "{err}"
        );
    }
}

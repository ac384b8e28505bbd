//! The executor side of training: a registered [`GradientWorker`] computes
//! summed gradients of the elements a task names, with the weights the task
//! carries. Workers are pooled per executor so a model is built once, not
//! every iteration.

use std::any::type_name;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::buffers::Pooled;
use crate::error::{BoxError, Error, Result};
use crate::protocol::TaskOutput;
use crate::registry::{Data, Part, Registry};
use crate::shuffle::Block;
use crate::train::hosted::{ParamHost, ShardOp};

/// Loss and counts of one batch share.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct BatchStats {
    /// Sum of the per-sample losses.
    pub loss_sum: f64,
    /// Samples seen.
    pub samples: u64,
    /// Samples predicted correctly (classification; 0 when meaningless).
    pub correct: u64,
}

impl BatchStats {
    /// Adds another share's statistics.
    pub fn add(&mut self, other: &BatchStats) {
        self.loss_sum += other.loss_sum;
        self.samples += other.samples;
        self.correct += other.correct;
    }

    /// Mean loss (0 for no samples).
    pub fn mean_loss(&self) -> f64 {
        if self.samples == 0 {
            0.0
        } else {
            self.loss_sum / self.samples as f64
        }
    }

    /// Share of correct predictions (0 for no samples).
    pub fn accuracy(&self) -> f64 {
        if self.samples == 0 {
            0.0
        } else {
            self.correct as f64 / self.samples as f64
        }
    }
}

/// Where a training task's time went on its executor, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskTiming {
    /// Forward and backward passes (or the evaluation).
    pub compute_us: u64,
    /// Parameter synchronisation: fetching the weights from their holders,
    /// applying a pending shard step first, assembling the weights, and
    /// leaving the gradient slices in the block store.
    pub sync_us: u64,
}

/// What a model must do for distributed training: the bridge between the
/// runtime (flat `f32` buffers) and a model library. Implemented by the
/// root crate for kiln-nn models; the runtime knows nothing of layers.
///
/// Its methods fail with any error ([`BoxError`]; a `String` converts with
/// `.into()` or `?`): the task fails with [`Error::Trainer`], the error's
/// source chain kept (and rendered whole when it is sent to the driver).
pub trait GradientWorker<T>: Send + 'static {
    /// Length of the flat parameter vector.
    fn num_params(&self) -> usize;

    /// Loads `params`, runs forward and backward on `samples` and writes the
    /// gradient of the **sum** of their losses into `grads` (zeroed by the
    /// caller, `num_params` long). The driver divides by the global batch
    /// size, so any split of a batch over executors gives the same update.
    /// `seed` drives any randomness (dropout) deterministically.
    fn gradients(
        &mut self,
        params: &[f32],
        samples: &[&T],
        seed: u64,
        grads: &mut [f32],
    ) -> std::result::Result<BatchStats, BoxError>;

    /// Loss and accuracy of `params` on `samples`, in evaluation mode.
    fn evaluate(
        &mut self,
        params: &[f32],
        samples: &[&T],
    ) -> std::result::Result<BatchStats, BoxError>;

    /// Length of the model's non-learnable state (batch-norm running
    /// statistics); 0 (the default) for models without any.
    fn num_buffers(&self) -> usize {
        0
    }

    /// The non-learnable state, `num_buffers` long. After
    /// [`GradientWorker::gradients`] it holds what that pass updated; the
    /// driver averages the shares' copies (weighted by samples) and sends
    /// the result with the next task, as DDP keeps buffers in sync.
    fn buffers(&self) -> Vec<f32> {
        Vec::new()
    }

    /// Loads the non-learnable state before `gradients` or `evaluate`.
    fn set_buffers(&mut self, buffers: &[f32]) -> std::result::Result<(), BoxError> {
        if buffers.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{} buffer values sent to a model without buffers",
                buffers.len()
            )
            .into())
        }
    }
}

/// One training task's instructions, shipped with the partition's plan.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct TrainRequest {
    /// Registered trainer name.
    pub(crate) trainer: String,
    /// The trainer's rmp-serde configuration (model and loss settings).
    #[serde(with = "serde_bytes")]
    pub(crate) config: Vec<u8>,
    /// Current weights, little-endian `f32`.
    #[serde(with = "serde_bytes")]
    pub(crate) params: Vec<u8>,
    /// Element indices within the partition, in batch order; for an
    /// evaluation an empty list means every element.
    pub(crate) indices: Vec<u32>,
    /// Randomness for this share (dropout).
    pub(crate) seed: u64,
    /// Evaluate instead of computing gradients.
    pub(crate) evaluate: bool,
    /// The model's non-learnable state (little-endian `f32`); empty: keep
    /// the worker's own.
    #[serde(with = "serde_bytes", default)]
    pub(crate) buffers: Vec<u8>,
    /// With executor-hosted shards: the weights are not in `params` but in
    /// the fetched input `(id, 0)`, one block per shard in shard order.
    #[serde(default)]
    pub(crate) weights_from: Option<u64>,
    /// With executor-hosted shards: keep the gradient in the executor's
    /// block store, cut by shard, instead of returning it.
    #[serde(default)]
    pub(crate) gradients_to: Option<GradientSink>,
    /// With executor-hosted shards all held by this executor: the previous
    /// iteration's step of every shard (a [`ShardOp::Step`], its gradient
    /// slices among the fetched inputs), applied before computing; the
    /// weights `weights_from` it publishes are then read from this
    /// executor's store (one task round per iteration instead of two).
    #[serde(default)]
    pub(crate) step_first: Option<ShardOp>,
}

/// Where a training task leaves its gradient: block `(id, partition,
/// shard)` of the executor's store, one per shard range.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct GradientSink {
    pub(crate) id: u64,
    pub(crate) ranges: Vec<std::ops::Range<usize>>,
}

/// `f32`s as little-endian bytes (the wire format of weights and gradients).
pub(crate) fn f32_to_bytes(v: &[f32]) -> Vec<u8> {
    let mut out = vec![0u8; v.len() * 4];
    write_le_f32(v, &mut out);
    out
}

/// `f32`s as little-endian bytes in a shared buffer of the data plane's
/// pool (for blocks left in the shuffle store: the buffer is reused once
/// the block is freed).
pub(crate) fn f32_to_shared_bytes(v: &[f32]) -> bytes::Bytes {
    let len = v.len() * 4;
    let mut buf = crate::buffers::Pooled::with_bytes(len);
    write_le_f32(v, &mut buf.bytes_mut()[..len]);
    buf.into_bytes(len)
}

/// Writes `values` into `out` as little-endian bytes (as many as `out`
/// holds; extra bytes are left alone).
pub(crate) fn write_le_f32(values: &[f32], out: &mut [u8]) {
    let n = values.len().min(out.len() / 4);
    let (values, out) = (&values[..n], &mut out[..n * 4]);
    if cfg!(target_endian = "little") {
        if let Ok(o) = bytemuck::try_cast_slice_mut::<u8, f32>(out) {
            o.copy_from_slice(values);
            return;
        }
    }
    // Fixed-size chunks of a sized buffer: this compiles to a vectorised
    // copy, where pushing four bytes at a time did not.
    for (o, x) in out.chunks_exact_mut(4).zip(values) {
        o.copy_from_slice(&x.to_le_bytes());
    }
}

/// The values of little-endian `f32` bytes, viewed in place when the
/// machine is little-endian and the bytes are aligned (pooled buffers
/// are), else `None`.
fn le_f32_view(bytes: &[u8]) -> Option<&[f32]> {
    if cfg!(target_endian = "little") {
        bytemuck::try_cast_slice(bytes).ok()
    } else {
        None
    }
}

/// Decodes the little-endian `f32`s of `bytes` into `out` (as many as
/// both hold).
pub(crate) fn read_le_f32(bytes: &[u8], out: &mut [f32]) {
    let n = out.len().min(bytes.len() / 4);
    match le_f32_view(&bytes[..n * 4]) {
        Some(v) => out[..n].copy_from_slice(v),
        None => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
    }
}

/// Adds the little-endian `f32`s of `bytes` to `acc` element-wise (as many
/// as both hold).
pub(crate) fn add_le_f32(acc: &mut [f32], bytes: &[u8]) {
    let n = acc.len().min(bytes.len() / 4);
    match le_f32_view(&bytes[..n * 4]) {
        Some(v) => {
            for (a, x) in acc.iter_mut().zip(v) {
                *a += x;
            }
        }
        None => {
            for (a, c) in acc.iter_mut().zip(bytes.chunks_exact(4)) {
                *a += f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
    }
}

/// The little-endian f32 values of `b` (the inverse of `f32_to_bytes`); an
/// error naming `what` if `b` is not a whole number of them.
pub fn bytes_to_f32(b: &[u8], what: &str) -> Result<Vec<f32>> {
    if !b.len().is_multiple_of(4) {
        return Err(Error::F32Bytes {
            what: what.into(),
            bytes: b.len(),
        });
    }
    let mut out = vec![0.0; b.len() / 4];
    read_le_f32(b, &mut out);
    Ok(out)
}

type ErasedRun =
    dyn Fn(&mut dyn std::any::Any, &TrainRequest, &[f32], &dyn Part) -> Result<Share> + Send + Sync;
type MakeFn = dyn Fn(&[u8]) -> Result<Box<dyn std::any::Any + Send>> + Send + Sync;

/// A registered trainer: how to build a worker from its configuration and
/// how to run one on a partition, plus the executor's pool of idle workers.
pub(crate) struct TrainerEntry {
    pub(crate) elem: &'static str,
    make: Arc<MakeFn>,
    run: Arc<ErasedRun>,
    pool: Mutex<Vec<(u64, Box<dyn std::any::Any + Send>)>>,
}

fn config_key(config: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    config.hash(&mut h);
    h.finish()
}

impl Registry {
    /// Register a trainer for [`crate::DistributedTrainer`]: `make` builds a
    /// worker from the rmp-serde configuration `C` the driver sends. It
    /// may fail with any error (a `String` converts with `.into()` or `?`);
    /// the task fails with [`Error::Trainer`].
    pub fn register_trainer<T, C, W>(
        &mut self,
        name: &str,
        make: impl Fn(&C) -> std::result::Result<W, BoxError> + Send + Sync + 'static,
    ) -> &mut Self
    where
        T: Data,
        C: DeserializeOwned,
        W: GradientWorker<T>,
    {
        self.register_type::<T>();
        let n = name.to_owned();
        let make: Arc<MakeFn> = Arc::new(move |bytes| {
            let c: C = rmp_serde::from_slice(bytes).map_err(|e| Error::Payload {
                what: format!("the configuration of trainer {n:?}"),
                source: e,
            })?;
            let worker = make(&c).map_err(|e| Error::Trainer {
                trainer: n.clone(),
                op: "building a worker",
                source: e,
            })?;
            Ok(Box::new(worker) as Box<dyn std::any::Any + Send>)
        });
        let n = name.to_owned();
        let run: Arc<ErasedRun> = Arc::new(move |worker, req, params, part| {
            let worker = worker.downcast_mut::<W>().ok_or_else(|| Error::Trainer {
                trainer: n.clone(),
                op: "reusing a pooled worker",
                source: format!("it is not a {}", type_name::<W>()).into(),
            })?;
            run_typed::<T, W>(&n, worker, req, params, part, PhantomData)
        });
        self.trainers.insert(
            name.to_owned(),
            TrainerEntry {
                elem: type_name::<T>(),
                make,
                run,
                pool: Mutex::new(Vec::new()),
            },
        );
        self
    }

    pub(crate) fn trainer(&self, name: &str) -> Result<&TrainerEntry> {
        self.trainers
            .get(name)
            .ok_or_else(|| Error::UnknownFunction {
                kind: "trainer",
                name: name.into(),
            })
    }
}

/// What one task computed: summed gradients (empty for an evaluation),
/// statistics and the model's buffers after the pass (empty if none).
type Share = (Vec<f32>, BatchStats, Vec<f32>);

fn run_typed<T: Data, W: GradientWorker<T>>(
    name: &str,
    worker: &mut W,
    req: &TrainRequest,
    params: &[f32],
    part: &dyn Part,
    _t: PhantomData<T>,
) -> Result<Share> {
    let elems = part
        .as_any()
        .downcast_ref::<Vec<T>>()
        .ok_or_else(|| Error::TypeMismatch {
            name: name.into(),
            expected: type_name::<T>(),
            found: part.elem_type(),
        })?;
    if params.len() != worker.num_params() {
        return Err(Error::ParameterCount {
            what: format!("trainer {name:?}: the weights sent (the model's count expected)"),
            unit: "weights",
            expected: worker.num_params(),
            found: params.len(),
        });
    }
    let samples: Vec<&T> = if req.evaluate && req.indices.is_empty() {
        elems.iter().collect()
    } else {
        req.indices
            .iter()
            .map(|&i| {
                elems.get(i as usize).ok_or_else(|| Error::OutOfBounds {
                    what: format!("trainer {name:?}: the task's partition"),
                    item: "element",
                    index: u64::from(i),
                    len: elems.len() as u64,
                })
            })
            .collect::<Result<_>>()?
    };
    let fail = |op: &'static str| {
        move |source: BoxError| Error::Trainer {
            trainer: name.into(),
            op,
            source,
        }
    };
    if !req.buffers.is_empty() {
        let buffers = bytes_to_f32(&req.buffers, "buffers")?;
        if buffers.len() != worker.num_buffers() {
            return Err(Error::ParameterCount {
                what: format!("trainer {name:?}: the buffers sent (the model's count expected)"),
                unit: "buffer values",
                expected: worker.num_buffers(),
                found: buffers.len(),
            });
        }
        worker
            .set_buffers(&buffers)
            .map_err(fail("loading buffers"))?;
    }
    if req.evaluate {
        let stats = worker
            .evaluate(params, &samples)
            .map_err(fail("evaluating"))?;
        return Ok((Vec::new(), stats, Vec::new()));
    }
    let mut grads = crate::buffers::pool().take_zeroed(params.len());
    let stats = worker
        .gradients(params, &samples, req.seed, &mut grads)
        .map_err(fail("computing gradients"))?;
    let buffers = if worker.num_buffers() > 0 {
        worker.buffers()
    } else {
        Vec::new()
    };
    Ok((grads, stats, buffers))
}

/// Run one training task on an executor: take a pooled worker for the
/// configuration (or build one), compute, return the worker to the pool.
pub(crate) fn run_request(
    registry: &Registry,
    req: &TrainRequest,
    part: &dyn Part,
    side: &TaskSide<'_>,
) -> Result<TaskOutput> {
    let entry = registry.trainer(&req.trainer)?;
    crate::registry::check_type(&req.trainer, entry.elem, part.elem_type())?;
    let syncing = std::time::Instant::now();
    let params = match (req.weights_from, &req.step_first) {
        (None, None) => Pooled::new(bytes_to_f32(&req.params, "weights")?),
        (Some(id), None) => {
            let blocks = side
                .inputs
                .get(&(id, 0))
                .ok_or_else(|| Error::MissingInput {
                    input: format!("weights {id}"),
                    reason: "were not fetched for the training task",
                })?;
            gather_weights(blocks)?
        }
        (Some(id), Some(step)) => {
            side.host.run(registry, side.store, side.inputs, step)?;
            let shards = req.gradients_to.as_ref().map_or(0, |s| s.ranges.len());
            let blocks = (0..shards)
                .map(|shard| {
                    let held = side.store.block(id, shard as u32, 0)?;
                    held.map(Block::from).ok_or_else(|| Error::MissingInput {
                        input: format!("parameter shard {shard}'s weights {id}"),
                        reason: "are not held by this executor",
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            gather_weights(&blocks)?
        }
        (None, Some(_)) => {
            return Err(Error::MissingInput {
                input: "the id of the weights a shard step before training publishes".into(),
                reason: "was not sent with the training task",
            })
        }
    };
    let key = config_key(&req.config);
    let lock_err = || Error::Poisoned {
        lock: "trainer pool",
    };
    let pooled = {
        let mut pool = entry.pool.lock().map_err(|_| lock_err())?;
        pool.iter()
            .position(|(k, _)| *k == key)
            .map(|i| pool.swap_remove(i).1)
    };
    let mut worker = match pooled {
        Some(w) => w,
        None => (entry.make)(&req.config)?,
    };
    // With a one-thread compute pool, the whole computation runs on that
    // thread: each of the model's parallel operations entered the pool
    // from this blocking thread (a wake-up and a wait per layer call),
    // which cost LeNet-5's step 15-28 % (5.7 -> 4.8 ms). Larger pools are
    // entered per operation as before: nn runs an operation sequentially
    // when called from inside the pool, so wrapping would lose its
    // parallelism (3.9 -> 4.7 ms with 2 threads).
    let run = &entry.run;
    let worker_ref = worker.as_mut();
    let values = params.values();
    let mut sync = syncing.elapsed() + side.fetched_in;
    let computing = std::time::Instant::now();
    let result = if rayon::current_num_threads() == 1 {
        rayon::scope(|_| run(worker_ref, req, values, part))
    } else {
        run(worker_ref, req, values, part)
    };
    drop(params);
    entry
        .pool
        .lock()
        .map_err(|_| lock_err())?
        .push((key, worker));
    let compute = computing.elapsed();
    let (grads, stats, buffers) = result?;
    let buffers = f32_to_bytes(&buffers);
    let storing = std::time::Instant::now();
    let timing = |sync: std::time::Duration| TaskTiming {
        compute_us: compute.as_micros() as u64,
        sync_us: sync.as_micros() as u64,
    };
    match &req.gradients_to {
        Some(sink) if !req.evaluate => {
            let slices = crate::train::slice_by_shard(grads, &sink.ranges)?;
            side.store.put_shared(sink.id, side.partition, slices)?;
            sync += storing.elapsed();
            Ok(TaskOutput::Train {
                grads: Vec::new(),
                stats,
                buffers,
                stored_on: Some(side.executor),
                timing: timing(sync),
            })
        }
        _ => Ok(TaskOutput::Train {
            grads: f32_to_bytes(Pooled::new(grads).values()),
            stats,
            buffers,
            stored_on: None,
            timing: timing(sync),
        }),
    }
}

/// What a training task sees of its executor besides the partition.
pub(crate) struct TaskSide<'a> {
    /// The task's fetched blocks (weights of executor-hosted shards).
    pub(crate) inputs: &'a crate::protocol::Inputs,
    /// The executor's block store (where gradient slices are left).
    pub(crate) store: &'a crate::shuffle::ShuffleStore,
    /// The parameter shards this executor hosts (stepped first when the
    /// request says so).
    pub(crate) host: &'a ParamHost,
    /// The data partition the task computes.
    pub(crate) partition: u32,
    /// The executor's id.
    pub(crate) executor: u64,
    /// How long fetching the task's blocks (the weights) took.
    pub(crate) fetched_in: std::time::Duration,
}

/// The full weight vector from the shards' weight blocks (in shard order),
/// in a pooled buffer.
fn gather_weights(blocks: &[Block]) -> Result<Pooled> {
    if let Some((shard, b)) = blocks
        .iter()
        .enumerate()
        .find(|(_, b)| !b.len().is_multiple_of(4))
    {
        return Err(Error::F32Bytes {
            what: format!("the weights of parameter shard {shard}"),
            bytes: b.len(),
        });
    }
    let total: usize = blocks.iter().map(|b| b.len() / 4).sum();
    let mut out = Pooled::new(crate::buffers::pool().take(total));
    let mut at = 0;
    for b in blocks {
        let n = b.len() / 4;
        let to = &mut out.values_mut()[at..at + n];
        // Whole values (checked above), so every run is inside `to`.
        b.for_each_f32_run(0..b.len(), |i, bytes| read_le_f32(bytes, &mut to[i..]));
        at += n;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f32_bytes_round_trip_and_reject_ragged_input() {
        let v = vec![1.5f32, -0.0, f32::MAX, 3.25e-9];
        assert_eq!(bytes_to_f32(&f32_to_bytes(&v), "x").unwrap(), v);
        assert!(bytes_to_f32(&[1, 2, 3], "x").is_err());
    }

    #[test]
    fn le_helpers_agree_on_aligned_and_unaligned_bytes() {
        let v: Vec<f32> = (0..37).map(|i| i as f32 * -1.25 + 0.1).collect();
        let want: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        // A buffer read at offsets 0 (aligned when the allocation is) and
        // 1 (never aligned): the in-place view and the byte-wise path.
        let mut raw = vec![0u32; v.len() + 1];
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut raw);
        for off in [0, 1] {
            let b = &mut bytes[off..off + v.len() * 4];
            write_le_f32(&v, b);
            assert_eq!(&b[..], &want[..]);
            let mut back = vec![0.0; v.len()];
            read_le_f32(b, &mut back);
            assert_eq!(back, v);
            let mut acc = vec![1.0f32; v.len()];
            add_le_f32(&mut acc, b);
            let sum: Vec<f32> = v.iter().map(|x| 1.0 + x).collect();
            assert_eq!(acc, sum);
        }
        assert_eq!(&f32_to_shared_bytes(&v)[..], &want[..]);
    }
}

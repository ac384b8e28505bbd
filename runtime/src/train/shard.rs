//! Parameter actors: each owns one contiguous shard of the flattened
//! parameters and that shard's optimizer state (BigDL's AllReduceParameter
//! split). Gradients are reduced into the owners (reduce-scatter), each
//! owner applies the optimizer to its shard, and the updated shards are
//! gathered back (all-gather). Owners write their own checkpoint blobs.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::oneshot;

use crate::checkpoint::{write_blob, BlobRef};
use crate::error::{BoxError, Error, Result};
use crate::train::worker::{bytes_to_f32, f32_to_bytes};

/// The optimizer of one shard: elementwise, so a shard updates on its own.
/// Implemented by the root crate over kiln-nn's optimizers. Its methods
/// fail with any error ([`BoxError`]; a `String` converts with `.into()` or
/// `?`), reported as [`Error::Optimizer`] naming the shard.
pub trait ShardOptimizer: Send + 'static {
    /// Applies one update with learning rate `lr` to `params` from `grads`
    /// (already averaged over the global batch).
    fn step(
        &mut self,
        params: &mut [f32],
        grads: &[f32],
        lr: f64,
    ) -> std::result::Result<(), BoxError>;
    /// [`ShardOptimizer::step`] with the gradient produced a chunk at a
    /// time: `fill(offset, out)` writes the gradient of `params[offset..
    /// offset + out.len()]` into `out` (chunks in order). An elementwise
    /// optimizer applies each chunk while it is in cache, so the summed
    /// gradient of a large shard never goes through memory (kiln-nn's
    /// `Optimizer::step_chunked`); the default builds it whole first.
    fn step_chunked(
        &mut self,
        params: &mut [f32],
        fill: &mut dyn FnMut(usize, &mut [f32]),
        lr: f64,
    ) -> std::result::Result<(), BoxError> {
        let mut grads = vec![0.0; params.len()];
        fill(0, &mut grads);
        self.step(params, &grads, lr)
    }
    /// The shard's optimizer state, serialized (goes into checkpoints).
    fn state(&self) -> std::result::Result<Vec<u8>, BoxError>;
    /// Restores a state produced by [`ShardOptimizer::state`].
    fn load_state(&mut self, bytes: &[u8]) -> std::result::Result<(), BoxError>;
}

/// Builds the optimizer of the shard covering a parameter range.
/// It may fail with any error (a `String` converts with `.into()` or `?`).
pub type OptimizerFactory = Arc<
    dyn Fn(Range<usize>) -> std::result::Result<Box<dyn ShardOptimizer>, BoxError> + Send + Sync,
>;

/// Splits `n` parameters into `shards` contiguous ranges whose lengths
/// differ by at most one.
pub fn shard_ranges(n: usize, shards: usize) -> Vec<Range<usize>> {
    let shards = shards.clamp(1, n.max(1));
    let (base, extra) = (n / shards, n % shards);
    let mut start = 0;
    (0..shards)
        .map(|i| {
            let len = base + usize::from(i < extra);
            let r = start..start + len;
            start += len;
            r
        })
        .collect()
}

type Reply<T> = oneshot::Sender<Result<T>>;

/// Messages of a parameter actor.
pub(crate) enum ShardMsg {
    /// Add this shard's slice of a gradient (reduce-scatter).
    Accumulate(Arc<Vec<f32>>),
    /// Scale the accumulated gradient, apply the optimizer, reply with the
    /// updated shard.
    Step {
        scale: f32,
        lr: f64,
        reply: Reply<Arc<Vec<f32>>>,
    },
    /// Drop the accumulated gradient (an iteration abandoned).
    Discard,
    /// Write this shard's blobs of checkpoint `id`.
    Snapshot {
        dir: PathBuf,
        id: u64,
        reply: Reply<Vec<BlobRef>>,
    },
    /// Replace the shard's parameters and optimizer state.
    Restore {
        params: Vec<f32>,
        state: Vec<u8>,
        reply: Reply<()>,
    },
}

struct ShardActor;

/// Shards of at least this many parameters sum and step with the async
/// worker handed over to blocking work ([`tokio::task::block_in_place`]),
/// so a large model's arithmetic does not hold up the driver's other
/// tasks (heartbeats, task traffic) queued behind it.
const BLOCKING_ABOVE: usize = 1 << 20;

/// Runs `f`, as blocking work when the shard is large and the runtime
/// can spare the worker (multi-threaded).
fn heavy<R>(len: usize, f: impl FnOnce() -> R) -> R {
    let multi = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if len >= BLOCKING_ABOVE && multi {
        tokio::task::block_in_place(f)
    } else {
        f()
    }
}

struct ShardState {
    index: usize,
    range: Range<usize>,
    params: Arc<Vec<f32>>,
    acc: Vec<f32>,
    optimizer: Box<dyn ShardOptimizer>,
}

impl ShardState {
    /// Applies the accumulated gradient times `scale` and zeroes it, a
    /// chunk at a time (one pass over the accumulator instead of three).
    fn step(&mut self, scale: f32, lr: f64) -> Result<Arc<Vec<f32>>> {
        let params = Arc::make_mut(&mut self.params);
        let acc = &mut self.acc;
        let (mut in_range, mut zeroed) = (true, 0);
        let result = self.optimizer.step_chunked(
            params,
            &mut |offset, out| match acc.get_mut(offset..offset + out.len()) {
                Some(a) => {
                    for (o, g) in out.iter_mut().zip(a.iter_mut()) {
                        *o = *g * scale;
                        *g = 0.0;
                    }
                    zeroed += a.len();
                }
                None => in_range = false,
            },
            lr,
        );
        if zeroed != acc.len() {
            // The optimizer failed or skipped chunks: whatever it read, the
            // next iteration starts from zero.
            acc.iter_mut().for_each(|g| *g = 0.0);
        }
        let failed = |source: BoxError| Error::Optimizer {
            shard: self.index,
            op: "step",
            source,
        };
        result.map_err(failed)?;
        if !in_range {
            return Err(failed("it asked for gradients past the shard's end".into()));
        }
        Ok(self.params.clone())
    }
}

/// One shard's checkpoint blobs, named and laid out as every placement
/// stores them (so either placement resumes the other's checkpoints):
/// `params.shard.i` (the weights, little-endian `f32`) then
/// `optim.shard.i` (the optimizer's state as it serialises it).
pub(crate) fn shard_blobs(index: usize, params: &[f32], state: Vec<u8>) -> [(String, Vec<u8>); 2] {
    [
        (params_blob(index), f32_to_bytes(params)),
        (optim_blob(index), state),
    ]
}

/// Writes one shard's weight and optimizer-state blobs
/// ([`shard_blobs`]; blocking: temp file, fsync, rename).
pub(crate) fn write_shard_blobs(
    dir: &Path,
    id: u64,
    index: usize,
    params: &[f32],
    state: Vec<u8>,
) -> Result<Vec<BlobRef>> {
    shard_blobs(index, params, state)
        .iter()
        .map(|(name, payload)| Ok(write_blob(dir, id, name, payload)?))
        .collect()
}

/// Name of shard `index`'s weights blob.
pub(crate) fn params_blob(index: usize) -> String {
    format!("params.shard.{index}")
}

/// Name of shard `index`'s optimizer-state blob.
pub(crate) fn optim_blob(index: usize) -> String {
    format!("optim.shard.{index}")
}

/// One shard of a checkpoint, as [`write_shard_blobs`] wrote it.
pub(crate) struct ShardBlobs {
    pub(crate) params: Vec<f32>,
    pub(crate) state: Vec<u8>,
}

/// Reads shard `i`'s blobs through `read(name)`, checking them against
/// this run's shard range `range` (whichever placement wrote them). The
/// weights come back as the blob's bytes (little-endian `f32`).
pub(crate) fn read_shard_blob_bytes(
    i: usize,
    range: &Range<usize>,
    read: impl Fn(&str) -> Result<Vec<u8>>,
) -> Result<(Vec<u8>, Vec<u8>)> {
    let params = read(&params_blob(i))?;
    if params.len() != range.len() * 4 {
        return Err(Error::ParameterCount {
            what: format!(
                "the checkpoint's weights of parameter shard {i}: this run's shard needs {} parameters \
                 (the shard count or model differs)",
                range.len()
            ),
            unit: "bytes",
            expected: range.len() * 4,
            found: params.len(),
        });
    }
    let state = read(&optim_blob(i))?;
    Ok((params, state))
}

/// [`read_shard_blob_bytes`] with the weights as `f32`.
pub(crate) fn read_shard_blobs(
    i: usize,
    range: &Range<usize>,
    read: impl Fn(&str) -> Result<Vec<u8>>,
) -> Result<ShardBlobs> {
    let (params, state) = read_shard_blob_bytes(i, range, read)?;
    let params = bytes_to_f32(&params, "shard parameters")?;
    Ok(ShardBlobs { params, state })
}

impl Actor for ShardActor {
    type Msg = ShardMsg;
    type State = ShardState;
    type Arguments = ShardState;

    async fn pre_start(
        &self,
        _myself: ActorRef<ShardMsg>,
        state: ShardState,
    ) -> std::result::Result<ShardState, ActorProcessingErr> {
        Ok(state)
    }

    async fn handle(
        &self,
        _myself: ActorRef<ShardMsg>,
        msg: ShardMsg,
        st: &mut ShardState,
    ) -> std::result::Result<(), ActorProcessingErr> {
        match msg {
            ShardMsg::Accumulate(grads) => heavy(st.range.len(), || {
                if let Some(slice) = grads.get(st.range.clone()) {
                    for (a, g) in st.acc.iter_mut().zip(slice) {
                        *a += *g;
                    }
                }
            }),
            ShardMsg::Step { scale, lr, reply } => {
                let stepped = heavy(st.range.len(), || st.step(scale, lr));
                let _ = reply.send(stepped);
            }
            ShardMsg::Discard => st.acc.iter_mut().for_each(|g| *g = 0.0),
            ShardMsg::Snapshot { dir, id, reply } => match st.optimizer.state() {
                Err(e) => {
                    let _ = reply.send(Err(Error::Optimizer {
                        shard: st.index,
                        op: "saving its state",
                        source: e,
                    }));
                }
                Ok(state) => {
                    // The file I/O (fsync) runs off the actor's thread; the
                    // snapshot holds this version of the weights (a later
                    // step copies on write).
                    let (index, params) = (st.index, st.params.clone());
                    tokio::task::spawn_blocking(move || {
                        let _ = reply.send(write_shard_blobs(&dir, id, index, &params, state));
                    });
                }
            },
            ShardMsg::Restore {
                params,
                state,
                reply,
            } => {
                let r = if params.len() != st.range.len() {
                    Err(Error::ParameterCount {
                        what: format!("parameter shard {}: the checkpoint's weights", st.index),
                        unit: "weights",
                        expected: st.range.len(),
                        found: params.len(),
                    })
                } else {
                    st.params = Arc::new(params);
                    st.optimizer
                        .load_state(&state)
                        .map_err(|e| Error::Optimizer {
                            shard: st.index,
                            op: "loading its state",
                            source: e,
                        })
                };
                let _ = reply.send(r);
            }
        }
        Ok(())
    }
}

/// The parameter actors of one training run, in shard order.
pub struct ParameterShards {
    actors: Vec<(ActorRef<ShardMsg>, tokio::task::JoinHandle<()>)>,
    ranges: Vec<Range<usize>>,
    len: usize,
}

async fn answer<T>(rx: oneshot::Receiver<Result<T>>, shard: usize) -> Result<T> {
    rx.await.map_err(|_| Error::ActorFailed {
        actor: format!("parameter actor {shard}"),
        reason: "it stopped before answering".into(),
    })?
}

impl ParameterShards {
    /// Spawns `shards` parameter actors owning `init` split by
    /// [`shard_ranges`], each with an optimizer from `factory`.
    pub async fn spawn(init: &[f32], shards: usize, factory: &OptimizerFactory) -> Result<Self> {
        let ranges = shard_ranges(init.len(), shards);
        let mut actors = Vec::with_capacity(ranges.len());
        for (index, range) in ranges.iter().enumerate() {
            let optimizer = factory(range.clone()).map_err(|e| Error::Optimizer {
                shard: index,
                op: "creation",
                source: e,
            })?;
            let state = ShardState {
                index,
                range: range.clone(),
                params: Arc::new(init[range.clone()].to_vec()),
                acc: vec![0.0; range.len()],
                optimizer,
            };
            let (actor, handle) =
                Actor::spawn(None, ShardActor, state)
                    .await
                    .map_err(|e| Error::ActorSpawn {
                        actor: format!("parameter actor {index}"),
                        source: e,
                    })?;
            actors.push((actor, handle));
        }
        Ok(ParameterShards {
            actors,
            ranges,
            len: init.len(),
        })
    }

    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.actors.len()
    }

    /// Total number of parameters.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when there are no parameters.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn send(&self, i: usize, msg: ShardMsg) -> Result<()> {
        self.actors[i].0.cast(msg).map_err(|e| Error::ActorFailed {
            actor: format!("parameter actor {i}"),
            reason: format!("it is unreachable: {e}"),
        })
    }

    /// Reduce-scatter one gradient: every owner adds its slice. Calls are
    /// applied in order, so the sum order is the caller's.
    pub fn accumulate(&self, grads: Arc<Vec<f32>>) -> Result<()> {
        if grads.len() != self.len {
            return Err(Error::ParameterCount {
                what: "a gradient reduced into the parameter actors".into(),
                unit: "values",
                expected: self.len,
                found: grads.len(),
            });
        }
        for i in 0..self.actors.len() {
            self.send(i, ShardMsg::Accumulate(grads.clone()))?;
        }
        Ok(())
    }

    /// Forget the gradients accumulated since the last step.
    pub fn discard(&self) -> Result<()> {
        for i in 0..self.actors.len() {
            self.send(i, ShardMsg::Discard)?;
        }
        Ok(())
    }

    /// Every owner scales its accumulated gradient by `scale` and applies
    /// its optimizer at learning rate `lr`; the updated shards are gathered
    /// (all-gather) into the full parameter vector.
    pub async fn step(&self, scale: f32, lr: f64) -> Result<Vec<f32>> {
        let mut waits = Vec::with_capacity(self.actors.len());
        for i in 0..self.actors.len() {
            let (tx, rx) = oneshot::channel();
            self.send(
                i,
                ShardMsg::Step {
                    scale,
                    lr,
                    reply: tx,
                },
            )?;
            waits.push(rx);
        }
        let mut out = Vec::with_capacity(self.len);
        for (i, rx) in waits.into_iter().enumerate() {
            out.extend_from_slice(&answer(rx, i).await?);
        }
        Ok(out)
    }

    /// Every owner writes its own blobs of checkpoint `id` under `dir`.
    pub async fn snapshot(&self, dir: &Path, id: u64) -> Result<Vec<BlobRef>> {
        let mut waits = Vec::with_capacity(self.actors.len());
        for i in 0..self.actors.len() {
            let (tx, rx) = oneshot::channel();
            self.send(
                i,
                ShardMsg::Snapshot {
                    dir: dir.to_path_buf(),
                    id,
                    reply: tx,
                },
            )?;
            waits.push(rx);
        }
        let mut blobs = Vec::new();
        for (i, rx) in waits.into_iter().enumerate() {
            blobs.extend(answer(rx, i).await?);
        }
        Ok(blobs)
    }

    /// Restores every shard from blobs read by `read(name)` (as written by
    /// [`ParameterShards::snapshot`] with the same shard count), one shard
    /// at a time.
    pub async fn restore(&self, read: impl Fn(&str) -> Result<Vec<u8>>) -> Result<Vec<f32>> {
        let mut full = Vec::with_capacity(self.len);
        for (i, range) in self.ranges.iter().enumerate() {
            let ShardBlobs { params, state } = read_shard_blobs(i, range, &read)?;
            full.extend_from_slice(&params);
            let (tx, rx) = oneshot::channel();
            self.send(
                i,
                ShardMsg::Restore {
                    params,
                    state,
                    reply: tx,
                },
            )?;
            answer(rx, i).await?;
        }
        Ok(full)
    }

    /// Stops the actors.
    pub async fn stop(self) {
        for (actor, handle) in self.actors {
            actor.stop(None);
            let _ = handle.await;
        }
    }
}

/// A shard optimizer whose chunked step asks for one value too many (unit
/// tests of both placements' gradient sources).
#[cfg(test)]
pub(crate) struct Overreaching;

#[cfg(test)]
impl ShardOptimizer for Overreaching {
    fn step(&mut self, _: &mut [f32], _: &[f32], _: f64) -> std::result::Result<(), BoxError> {
        Ok(())
    }
    fn step_chunked(
        &mut self,
        params: &mut [f32],
        fill: &mut dyn FnMut(usize, &mut [f32]),
        _: f64,
    ) -> std::result::Result<(), BoxError> {
        fill(0, &mut vec![0.0; params.len() + 1]);
        Ok(())
    }
    fn state(&self) -> std::result::Result<Vec<u8>, BoxError> {
        Ok(Vec::new())
    }
    fn load_state(&mut self, _: &[u8]) -> std::result::Result<(), BoxError> {
        Ok(())
    }
}

/// A momentum-free SGD with a fixed one-byte state, for unit tests of
/// either shard placement.
#[cfg(test)]
pub(crate) struct Plain;

#[cfg(test)]
impl ShardOptimizer for Plain {
    fn step(&mut self, p: &mut [f32], g: &[f32], lr: f64) -> std::result::Result<(), BoxError> {
        for (p, g) in p.iter_mut().zip(g) {
            *p -= lr as f32 * g;
        }
        Ok(())
    }
    fn state(&self) -> std::result::Result<Vec<u8>, BoxError> {
        Ok(vec![7])
    }
    fn load_state(&mut self, b: &[u8]) -> std::result::Result<(), BoxError> {
        if b == [7] {
            Ok(())
        } else {
            Err("bad state".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_reading_past_the_shard_is_an_error_and_clears_the_gradient() {
        let mut st = ShardState {
            index: 0,
            range: 0..3,
            params: Arc::new(vec![1.0; 3]),
            acc: vec![2.0; 3],
            optimizer: Box::new(Overreaching),
        };
        let err = st.step(0.5, 0.1).unwrap_err();
        assert!(
            matches!(
                &err,
                Error::Optimizer {
                    shard: 0,
                    op: "step",
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("past the shard's end"), "{err}");
        assert_eq!(st.acc, vec![0.0; 3]);
        // A well-behaved optimizer gets the scaled sum and leaves zeros.
        st.optimizer = Box::new(Plain);
        st.acc = vec![2.0, 4.0, -6.0];
        let params = st.step(0.5, 0.1).unwrap();
        assert_eq!(*params, vec![0.9, 0.8, 1.3]);
        assert_eq!(st.acc, vec![0.0; 3]);
    }

    #[test]
    fn ranges_cover_everything_and_differ_by_at_most_one() {
        for (n, s) in [(10, 3), (3, 5), (0, 2), (7, 1), (1000, 7)] {
            let r = shard_ranges(n, s);
            assert_eq!(r.first().map(|r| r.start), Some(0));
            assert_eq!(r.last().map(|r| r.end), Some(n));
            for w in r.windows(2) {
                assert_eq!(w[0].end, w[1].start);
            }
            let lens: Vec<usize> = r.iter().map(|r| r.len()).collect();
            let (lo, hi) = (lens.iter().min().unwrap(), lens.iter().max().unwrap());
            assert!(hi - lo <= 1, "{lens:?}");
        }
    }

    #[tokio::test]
    async fn reduce_scatter_step_all_gather_and_snapshot_restore() {
        let factory: OptimizerFactory =
            Arc::new(|_| Ok(Box::new(Plain) as Box<dyn ShardOptimizer>));
        let init: Vec<f32> = (0..10).map(|i| i as f32).collect();
        let shards = ParameterShards::spawn(&init, 3, &factory).await.unwrap();
        shards.accumulate(Arc::new(vec![1.0; 10])).unwrap();
        shards.accumulate(Arc::new(vec![3.0; 10])).unwrap();
        let p = shards.step(0.5, 0.1).await.unwrap();
        let want: Vec<f32> = (0..10).map(|i| i as f32 - 0.2).collect();
        assert_eq!(p, want);
        assert!(shards.accumulate(Arc::new(vec![1.0; 9])).is_err());
        let dir = tempfile::tempdir().unwrap();
        let blobs = shards.snapshot(dir.path(), 1).await.unwrap();
        assert_eq!(blobs.len(), 6);
        shards.accumulate(Arc::new(vec![1.0; 10])).unwrap();
        shards.step(1.0, 1.0).await.unwrap();
        let restored = shards
            .restore(|name| {
                let r = blobs.iter().find(|b| b.name == name).unwrap();
                crate::checkpoint::read_blob(dir.path(), 1, r).map_err(Into::into)
            })
            .await
            .unwrap();
        assert_eq!(restored, want);
        shards.stop().await;
    }

    /// Shards above [`BLOCKING_ABOVE`] sum and step as blocking work on a
    /// multi-threaded runtime (and inline on a current-thread one) with
    /// the same result.
    #[test]
    fn large_shards_step_alike_on_either_runtime() {
        let n = 2 * BLOCKING_ABOVE + 3;
        let run = |rt: tokio::runtime::Runtime| {
            rt.block_on(async {
                let factory: OptimizerFactory =
                    Arc::new(|_| Ok(Box::new(Plain) as Box<dyn ShardOptimizer>));
                let shards = ParameterShards::spawn(&vec![1.0; n], 2, &factory)
                    .await
                    .unwrap();
                shards.accumulate(Arc::new(vec![2.0; n])).unwrap();
                shards.accumulate(Arc::new(vec![4.0; n])).unwrap();
                let p = shards.step(0.5, 0.25).await.unwrap();
                shards.stop().await;
                p
            })
        };
        let multi = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        let single = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let (a, b) = (run(multi), run(single));
        assert_eq!(a.len(), n);
        assert!(a.iter().all(|&x| x == 0.25), "{:?}", &a[..4]);
        assert_eq!(a, b);
    }
}

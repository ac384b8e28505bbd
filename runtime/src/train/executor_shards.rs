//! The driver's side of executor-hosted parameter shards
//! ([`crate::train::ShardPlacement::Executors`]): which executors hold
//! which shard, and the stages that install, step, copy, checkpoint and
//! gather them (the data itself moves between executors, see
//! [`super::hosted`]).
//!
//! Every shard has a primary holder and, when the cluster has more than
//! one executor, replicas that apply the same steps to the same gradients
//! (so their state is bit-identical). A lost holder is dropped; a shard
//! that lost every holder is an error (resume from a checkpoint). After
//! each successful step, shards short of replicas get a copy on another
//! executor.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::Path;
use std::sync::{Arc, Mutex};

use tracing::{info, warn};

use crate::checkpoint::BlobRef;
use crate::dataset::Dataset;
use crate::error::{Error, Result};
use crate::protocol::{Action, MapLoc, PeerAddr, ShuffleFetch, TaskOutput};
use crate::registry::Data;
use crate::train::blob_pull::{BlobPuller, StagedShard, STAGE_BLOCK_BYTES};
use crate::train::hosted::{OptimizerSpec, ShardCopy, ShardOp, StagedBlob};
use crate::train::shard::{read_shard_blob_bytes, shard_ranges};
use crate::train::worker::{bytes_to_f32, f32_to_bytes, read_le_f32, GradientSink};

/// Placement of every shard of one training run on the executors.
pub(crate) struct ExecutorShards {
    run: u64,
    ranges: Vec<Range<usize>>,
    /// Per shard: the executors holding it, primary first.
    holders: Vec<Vec<u64>>,
    peers: HashMap<u64, PeerAddr>,
    replicas: usize,
    optimizer: OptimizerSpec,
    /// Updates applied to the hosted shards.
    version: u64,
    /// Block id under which the holders publish the current weights.
    weights: u64,
    len: usize,
    /// Size of the blocks holders stage checkpoint blobs in
    /// ([`STAGE_BLOCK_BYTES`]).
    stage_block_bytes: u64,
}

/// The blocks holders staged a checkpoint's blobs in, until freed: one
/// by one as transfers end ([`StagedBlocks::free`]), the rest when
/// dropped (an error, or the checkpoint abandoned).
struct StagedBlocks<'a, T: Data> {
    data: &'a Dataset<T>,
    left: Mutex<Vec<u64>>,
}

impl<T: Data> StagedBlocks<'_, T> {
    /// Holders drop staged block `block` now.
    fn free(&self, block: u64) {
        if let Ok(mut left) = self.left.lock() {
            left.retain(|&b| b != block);
        }
        self.data.free_blocks(vec![block]);
    }
}

impl<T: Data> Drop for StagedBlocks<'_, T> {
    fn drop(&mut self) {
        let left = match self.left.get_mut() {
            Ok(left) => std::mem::take(left),
            Err(poisoned) => std::mem::take(poisoned.into_inner()),
        };
        self.data.free_blocks(left);
    }
}

/// Largest weight vector trained in one task round per iteration. The
/// round saves a task round trip (~1 ms on loopback: a tenth of a LeNet-5
/// iteration) but keeps the previous iteration's gradient and weight
/// blocks alive until the next round ends (twice the model's size more
/// per executor). For large models the round trip is noise (the sync
/// bench with 2 copies, one round against two, alternating: 64 MB
/// 0.103-0.120 against 0.105-0.111 s, 256 MB 0.53-0.81 against
/// 0.53-0.57 s), so they keep the memory.
pub(crate) const ONE_ROUND_MAX_BYTES: usize = 32 << 20;

/// One iteration's step of every shard: its gradient slices (block
/// `gradients`, left by partition `p` on executor `stored_on[p]`), their
/// scale, the learning rate and the id the new weights are published under.
#[derive(Debug, Clone)]
pub(crate) struct PendingStep {
    pub(crate) gradients: u64,
    pub(crate) stored_on: Vec<(u32, u64)>,
    pub(crate) scale: f32,
    pub(crate) lr: f64,
    pub(crate) publish: u64,
}

fn expect_data(out: TaskOutput, what: &str) -> Result<Vec<u8>> {
    match out {
        TaskOutput::Data(b) => Ok(b),
        _ => Err(Error::UnexpectedTaskOutput {
            task: what.into(),
            expected: "data",
        }),
    }
}

impl ExecutorShards {
    /// Spreads `shards` shards of `init` over the live executors (shard `i`
    /// on executor `i mod n`, replicas on the following ones) and installs
    /// them.
    pub(crate) async fn start<T: Data>(
        data: &Dataset<T>,
        init: &[f32],
        shards: usize,
        replicas: usize,
        optimizer: OptimizerSpec,
    ) -> Result<Self> {
        let members = data.members().await?;
        if members.is_empty() {
            return Err(Error::NoExecutor {
                what: "hosting the parameter shards".into(),
                reason: "(none has joined the cluster)".into(),
            });
        }
        let ranges = shard_ranges(init.len(), shards);
        let copies = replicas.max(1).min(members.len());
        let holders = (0..ranges.len())
            .map(|i| {
                (0..copies)
                    .map(|k| members[(i + k) % members.len()].0)
                    .collect()
            })
            .collect();
        let mut s = ExecutorShards {
            run: data.fresh_id(),
            ranges,
            holders,
            peers: members.into_iter().collect(),
            replicas: replicas.max(1),
            optimizer,
            version: 0,
            weights: data.fresh_id(),
            len: init.len(),
            stage_block_bytes: STAGE_BLOCK_BYTES,
        };
        let params: Vec<Vec<u8>> = s
            .ranges
            .iter()
            .map(|r| f32_to_bytes(&init[r.clone()]))
            .collect();
        let states = vec![None; s.ranges.len()];
        s.install_all(data, params, states).await?;
        info!(
            run = s.run,
            shards = s.ranges.len(),
            copies,
            "parameter shards hosted by the executors"
        );
        Ok(s)
    }

    /// Number of shards.
    pub(crate) fn shards(&self) -> usize {
        self.ranges.len()
    }

    /// Installs every shard (weights, optional optimizer state) on all its
    /// holders at the current version, published under `self.weights`.
    async fn install_all<T: Data>(
        &mut self,
        data: &Dataset<T>,
        params: Vec<Vec<u8>>,
        states: Vec<Option<Vec<u8>>>,
    ) -> Result<()> {
        let mut tasks = Vec::new();
        for (i, (p, st)) in params.into_iter().zip(states).enumerate() {
            tasks.extend(self.install_on_holders(i, p, st));
        }
        data.run_on_executors(tasks).await.map(|_| ())
    }

    /// The tasks installing shard `shard` on each of its holders (the
    /// last one takes `params` and `state`, the others copies).
    fn install_on_holders(
        &self,
        shard: usize,
        params: Vec<u8>,
        state: Option<Vec<u8>>,
    ) -> Vec<(u64, Action, Vec<ShuffleFetch>)> {
        let Some((&last, others)) = self.holders[shard].split_last() else {
            return Vec::new();
        };
        let mut tasks: Vec<_> = others
            .iter()
            .map(|&h| {
                (
                    h,
                    self.install(shard, params.clone(), state.clone()),
                    Vec::new(),
                )
            })
            .collect();
        tasks.push((last, self.install(shard, params, state), Vec::new()));
        tasks
    }

    fn install(&self, shard: usize, params: Vec<u8>, state: Option<Vec<u8>>) -> Action {
        Action::Shard(ShardOp::Install {
            run: self.run,
            shard: shard as u32,
            version: self.version,
            range: self.ranges[shard].clone(),
            optimizer: self.optimizer.clone(),
            params,
            state,
            publish: self.weights,
        })
    }

    /// Where a task gets the current weights: block `(weights, 0)` of
    /// each shard's primary, in shard order.
    pub(crate) fn weights_fetch(&self) -> Result<(u64, ShuffleFetch)> {
        let maps = self
            .ranges
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let holder = *self.holders[i].first().ok_or_else(|| Error::ShardLost {
                    shard: i,
                    executors: Vec::new(),
                })?;
                self.loc(i as u32, holder, r.len())
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((
            self.weights,
            ShuffleFetch {
                shuffle: self.weights,
                reduce: 0,
                maps,
            },
        ))
    }

    fn loc(&self, map: u32, executor: u64, values: usize) -> Result<MapLoc> {
        let peer = *self
            .peers
            .get(&executor)
            .ok_or_else(|| Error::UnknownExecutor {
                id: executor,
                context: format!("among the members (the holder of block {map})"),
            })?;
        Ok(MapLoc {
            map,
            executor,
            peer,
            size: (values * 4) as u64,
        })
    }

    /// Where training tasks leave their gradients.
    pub(crate) fn sink(&self, id: u64) -> GradientSink {
        GradientSink {
            id,
            ranges: self.ranges.clone(),
        }
    }

    /// The fetch of shard `shard`'s gradient slices of block `gradients`,
    /// which partition `p` left on executor `stored_on[p]` (in that order).
    fn gradient_fetch(
        &self,
        gradients: u64,
        stored_on: &[(u32, u64)],
        shard: usize,
    ) -> Result<ShuffleFetch> {
        let len = self.ranges[shard].len();
        let maps = stored_on
            .iter()
            .map(|&(p, e)| self.loc(p, e, len))
            .collect::<Result<Vec<_>>>()?;
        Ok(ShuffleFetch {
            shuffle: gradients,
            reduce: shard as u32,
            maps,
        })
    }

    fn step_op(&self, shards: Vec<u32>, step: &PendingStep) -> ShardOp {
        ShardOp::Step {
            run: self.run,
            shards,
            from: self.version,
            gradients: step.gradients,
            scale: step.scale,
            lr: step.lr,
            publish: step.publish,
        }
    }

    /// Every holder steps its shards with `step`'s gradient slices (one
    /// task per holder), then the new weights become current.
    pub(crate) async fn step<T: Data>(
        &mut self,
        data: &Dataset<T>,
        step: &PendingStep,
    ) -> Result<()> {
        self.step_holders(data, step, &[]).await?;
        self.commit_step(data, step);
        Ok(())
    }

    /// The holders other than `done` step their shards with `step`'s
    /// gradient slices (one task per holder); nothing is committed.
    pub(crate) async fn step_holders<T: Data>(
        &self,
        data: &Dataset<T>,
        step: &PendingStep,
        done: &[u64],
    ) -> Result<()> {
        let mut by_holder: BTreeMap<u64, (Vec<u32>, Vec<ShuffleFetch>)> = BTreeMap::new();
        for i in 0..self.ranges.len() {
            let fetch = self.gradient_fetch(step.gradients, &step.stored_on, i)?;
            for &h in self.holders[i].iter().filter(|h| !done.contains(h)) {
                let (shards, fetches) = by_holder.entry(h).or_default();
                shards.push(i as u32);
                fetches.push(fetch.clone());
            }
        }
        if by_holder.is_empty() {
            return Ok(());
        }
        let tasks = by_holder
            .into_iter()
            .map(|(h, (shards, fetches))| (h, Action::Shard(self.step_op(shards, step)), fetches))
            .collect();
        data.run_on_executors(tasks).await.map(|_| ())
    }

    /// True when iterations may take one task round: the model is small
    /// (at most [`ONE_ROUND_MAX_BYTES`] of weights) and every one of
    /// `members` holds every shard, so a training task anywhere can apply
    /// the pending step itself and read the new weights from its own store
    /// ([`ExecutorShards::step_everywhere`]).
    pub(crate) fn one_round(&self, members: &[u64]) -> bool {
        self.len * 4 <= ONE_ROUND_MAX_BYTES
            && !members.is_empty()
            && self
                .holders
                .iter()
                .all(|h| members.iter().all(|m| h.contains(m)))
    }

    /// `step` for every shard as one operation, with the fetches of its
    /// gradient slices, for training tasks to apply before computing
    /// (when [`ExecutorShards::one_round`]); then the holders that ran no
    /// task step on their own ([`ExecutorShards::step_holders`]) and
    /// [`ExecutorShards::commit_step`].
    pub(crate) fn step_everywhere(
        &self,
        step: &PendingStep,
    ) -> Result<(ShardOp, Vec<ShuffleFetch>)> {
        let fetches = (0..self.ranges.len())
            .map(|i| self.gradient_fetch(step.gradients, &step.stored_on, i))
            .collect::<Result<Vec<_>>>()?;
        let shards = (0..self.ranges.len() as u32).collect();
        Ok((self.step_op(shards, step), fetches))
    }

    /// Records that every holder applied `step`: its weights are current
    /// (the previous ones are freed).
    pub(crate) fn commit_step<T: Data>(&mut self, data: &Dataset<T>, step: &PendingStep) {
        data.free_blocks(vec![self.weights]);
        self.weights = step.publish;
        self.version += 1;
    }

    /// Records the current members (where training tasks may leave their
    /// gradient slices).
    pub(crate) fn set_members(&mut self, members: &[(u64, PeerAddr)]) {
        self.peers = members.iter().copied().collect();
    }

    /// True when some shard has fewer holders than asked for and a member
    /// that could take a copy.
    pub(crate) fn short_of_replicas(&self, members: usize) -> bool {
        let want = self.replicas.min(members);
        self.holders.iter().any(|h| h.len() < want)
    }

    /// After a failed iteration: forget holders that are gone (returns how
    /// many). Fails if a shard has no holder left.
    pub(crate) async fn drop_lost<T: Data>(&mut self, data: &Dataset<T>) -> Result<usize> {
        let mut dropped = 0;
        let members = data.members().await?;
        self.peers = members.into_iter().collect();
        for (i, h) in self.holders.iter_mut().enumerate() {
            let before = h.clone();
            h.retain(|e| self.peers.contains_key(e));
            if h.is_empty() {
                return Err(Error::ShardLost {
                    shard: i,
                    executors: before,
                });
            }
            if h.len() < before.len() {
                dropped += before.len() - h.len();
                warn!(
                    shard = i,
                    lost = ?before.iter().filter(|e| !h.contains(e)).collect::<Vec<_>>(),
                    now = ?h,
                    "parameter shard holder lost; a replica takes over"
                );
            }
        }
        Ok(dropped)
    }

    /// Gives shards short of replicas a copy (weights and optimizer state
    /// from their primary) on the executors holding the fewest shards.
    pub(crate) async fn replenish<T: Data>(&mut self, data: &Dataset<T>) -> Result<()> {
        let members = data.members().await?;
        self.set_members(&members);
        let want = self.replicas.min(members.len());
        let short: Vec<usize> = (0..self.ranges.len())
            .filter(|&i| self.holders[i].len() < want)
            .collect();
        if short.is_empty() {
            return Ok(());
        }
        let copies = self.fetch(data, &short, true).await?;
        let mut tasks = Vec::new();
        let mut added = Vec::new();
        for (i, copy) in short.into_iter().zip(copies) {
            while self.holders[i].len() < want {
                let load = |e: &u64| self.holders.iter().filter(|h| h.contains(e)).count();
                let Some(target) = members
                    .iter()
                    .map(|(e, _)| *e)
                    .filter(|e| !self.holders[i].contains(e))
                    .min_by_key(load)
                else {
                    break;
                };
                if copy.version != self.version {
                    return Err(Error::ShardVersion {
                        shard: i as u32,
                        at: copy.version,
                        expected: self.version,
                    });
                }
                tasks.push((
                    target,
                    self.install(i, copy.params.clone(), copy.state.clone()),
                    Vec::new(),
                ));
                self.holders[i].push(target);
                added.push((i, target));
            }
        }
        let result = data.run_on_executors(tasks).await;
        if let Err(e) = result {
            // Keep only the holders known to be good.
            for (i, t) in &added {
                self.holders[*i].retain(|h| h != t);
            }
            return Err(e);
        }
        info!(copies = ?added, "parameter shards replicated");
        Ok(())
    }

    /// The given shards as their primaries hold them.
    async fn fetch<T: Data>(
        &self,
        data: &Dataset<T>,
        shards: &[usize],
        state: bool,
    ) -> Result<Vec<ShardCopy>> {
        let tasks = shards
            .iter()
            .map(|&i| {
                let op = ShardOp::Get {
                    run: self.run,
                    shard: i as u32,
                    state,
                };
                (self.holders[i][0], Action::Shard(op), Vec::new())
            })
            .collect();
        data.run_on_executors(tasks)
            .await?
            .into_iter()
            .map(|out| {
                let bytes = expect_data(out, "parameter shard copy")?;
                rmp_serde::from_slice(&bytes).map_err(|e| Error::Payload {
                    what: "a parameter shard copy".into(),
                    source: e,
                })
            })
            .collect()
    }

    /// The full weight vector, gathered from the primaries.
    pub(crate) async fn gather<T: Data>(&self, data: &Dataset<T>) -> Result<Vec<f32>> {
        let all: Vec<usize> = (0..self.ranges.len()).collect();
        let mut out = Vec::with_capacity(self.len);
        for (i, copy) in self.fetch(data, &all, false).await?.into_iter().enumerate() {
            let p = bytes_to_f32(&copy.params, "shard weights")?;
            if p.len() != self.ranges[i].len() {
                return Err(Error::ParameterCount {
                    what: format!("parameter shard {i}: the weights its primary returned"),
                    unit: "weights",
                    expected: self.ranges[i].len(),
                    found: p.len(),
                });
            }
            out.extend_from_slice(&p);
        }
        Ok(out)
    }

    /// Writes every shard's blobs into checkpoint `id` of the driver's
    /// store in `dir`: each primary stages its shard's blobs as blocks
    /// of its own store ([`ShardOp::Stage`]: the holder is told neither
    /// the directory nor the id), then the driver pulls them from the
    /// holders' peer endpoints and writes them as they arrive
    /// ([`BlobPuller`]; no whole blob passes through its memory). The
    /// staged blocks are freed on the holders as each shard's transfer
    /// ends, and whatever is left when this returns or is dropped.
    pub(crate) async fn snapshot<T: Data>(
        &self,
        data: &Dataset<T>,
        dir: &Path,
        id: u64,
    ) -> Result<Vec<BlobRef>> {
        let blocks: Vec<u64> = self.ranges.iter().map(|_| data.fresh_id()).collect();
        let staging = StagedBlocks {
            data,
            left: Mutex::new(blocks.clone()),
        };
        let tasks = blocks
            .iter()
            .enumerate()
            .map(|(i, &block)| {
                let op = ShardOp::Stage {
                    run: self.run,
                    shard: i as u32,
                    block,
                    block_bytes: self.stage_block_bytes,
                };
                (self.holders[i][0], Action::Shard(op), Vec::new())
            })
            .collect();
        let outs = data.run_on_executors(tasks).await?;
        let mut staged = Vec::with_capacity(outs.len());
        for ((i, out), block) in outs.into_iter().enumerate().zip(blocks) {
            let bytes = expect_data(out, "staged checkpoint blobs")?;
            let blobs: Vec<StagedBlob> =
                rmp_serde::from_slice(&bytes).map_err(|e| Error::Payload {
                    what: format!("the staged checkpoint blobs of parameter shard {i}"),
                    source: e,
                })?;
            let executor = self.holders[i][0];
            let peer = *self
                .peers
                .get(&executor)
                .ok_or_else(|| Error::UnknownExecutor {
                    id: executor,
                    context: format!("among the members (the holder of parameter shard {i})"),
                })?;
            staged.push(StagedShard {
                shard: i as u32,
                executor,
                peer,
                block,
                block_bytes: self.stage_block_bytes,
                blobs,
            });
        }
        let (endpoint, secret) = data.peer_dialer();
        let puller = Arc::new(
            BlobPuller::new(endpoint, secret, dir, id).reporting_to(data.monitor().clone()),
        );
        puller.pull_all(staged, &|block| staging.free(block)).await
    }

    /// Blocks in which holders stage checkpoint blobs (tests use small
    /// ones, so that a blob spans several).
    #[cfg(test)]
    pub(crate) fn set_stage_block_bytes(&mut self, bytes: u64) {
        self.stage_block_bytes = bytes;
    }

    /// Replaces every shard with the blobs read by `read(name)` (as
    /// written by a checkpoint with the same shard count); returns the
    /// full weights. One shard at a time: its blobs are read, installed
    /// on all its holders (one stage) and dropped before the next shard's
    /// are read, so the driver holds one shard's blobs at most (plus the
    /// full weight vector it returns).
    pub(crate) async fn restore<T: Data>(
        &mut self,
        data: &Dataset<T>,
        read: impl Fn(&str) -> Result<Vec<u8>>,
    ) -> Result<Vec<f32>> {
        let mut full = Vec::with_capacity(self.len);
        let old = self.weights;
        self.weights = data.fresh_id();
        for (i, range) in self.ranges.iter().enumerate() {
            let (params, state) = read_shard_blob_bytes(i, range, &read)?;
            let at = full.len();
            full.resize(at + range.len(), 0.0);
            read_le_f32(&params, &mut full[at..]);
            let tasks = self.install_on_holders(i, params, Some(state));
            data.run_on_executors(tasks).await?;
        }
        data.free_blocks(vec![old]);
        Ok(full)
    }

    /// Every holder forgets the run's shards; their weight blocks go.
    pub(crate) async fn stop<T: Data>(self, data: &Dataset<T>) {
        let mut holders: Vec<u64> = self.holders.iter().flatten().copied().collect();
        holders.sort_unstable();
        holders.dedup();
        let tasks = holders
            .into_iter()
            .map(|h| {
                (
                    h,
                    Action::Shard(ShardOp::Drop { run: self.run }),
                    Vec::new(),
                )
            })
            .collect();
        if let Err(e) = data.run_on_executors(tasks).await {
            warn!(error = %e, "could not drop the hosted parameter shards");
        }
        data.free_blocks(vec![self.weights]);
    }
}

//! The driver's side of checkpointing executor-hosted parameter shards:
//! each shard's primary holder stages the shard's blobs as blocks of its
//! own store ([`ShardOp::Stage`](super::hosted::ShardOp)), and the driver
//! pulls them from the holder's peer endpoint and writes them into its
//! checkpoint store as they arrive ([`BlobWriter`]). The store lives on
//! the driver's host only: holders are never told where it is, and they
//! need no shared file system.
//!
//! Memory: no whole blob passes through the driver. For one transfer,
//! quinn buffers at most one stream window
//! ([`transport::CHECKPOINT_STREAM_WINDOW`], 8 MiB) of bytes the driver
//! has not read yet; between the network and the disk at most
//! [`WRITE_QUEUE`] chunks of at most [`CHUNK_BYTES`] wait for the writer
//! thread, which gathers up to 1 MiB per write; and at most
//! [`MAX_CONCURRENT_PULLS`] shards transfer at a time. A checkpoint of any
//! size therefore holds at most about 4 × (8 + 8 + 1) = 68 MiB of driver
//! memory (on loopback quinn's chunks are single datagrams, far below
//! [`CHUNK_BYTES`], so far less in practice).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tracing::debug;

use crate::checkpoint::{BlobRef, BlobWriter, CheckpointError};
use crate::error::{Error, Result};
use crate::protocol::{FetchReply, FetchRequest, PeerAddr};
use crate::shuffle::{request_block, BLOCK_TIMEOUT, HANDSHAKE_TIMEOUT};
use crate::train::hosted::StagedBlob;
use crate::train::shard::{optim_blob, params_blob};
use crate::transport::{self, with_timeout};

/// Shards whose blobs transfer at the same time (each from its holder,
/// blobs and blocks of one shard one after the other).
pub(crate) const MAX_CONCURRENT_PULLS: usize = 4;
/// Largest piece read from a stream at once (quinn hands over what it
/// has received, up to this).
const CHUNK_BYTES: usize = 1 << 20;
/// Pieces received and not yet written that one transfer may hold; when
/// the disk is slower the transfer waits, and quinn's flow control
/// pauses the holder.
const WRITE_QUEUE: usize = 8;
/// Size of the blocks a holder stages a blob in: small enough for any
/// executor's bulk limit, large enough that a request per block costs
/// nothing next to its transfer.
pub(crate) const STAGE_BLOCK_BYTES: u64 = 16 << 20;

/// One shard's blobs as its holder staged them, and where to get them.
#[derive(Debug, Clone)]
pub(crate) struct StagedShard {
    /// The shard (the staged blocks' map partition).
    pub(crate) shard: u32,
    /// The executor holding the blocks.
    pub(crate) executor: u64,
    /// Its peer endpoint (address and certificate fingerprint).
    pub(crate) peer: PeerAddr,
    /// The staged blocks' id (their shuffle id in the holder's store).
    pub(crate) block: u64,
    /// The size of every block but a blob's last.
    pub(crate) block_bytes: u64,
    /// The blobs, as the holder described them.
    pub(crate) blobs: Vec<StagedBlob>,
}

impl StagedShard {
    /// Checks that the holder staged exactly this shard's two blobs, each
    /// in the blocks its length takes, one after the other.
    fn check_layout(&self, id: u64) -> Result<()> {
        let shard = self.shard as usize;
        let names = [params_blob(shard), optim_blob(shard)];
        let fail = |blob: &str, reason: String| Error::CheckpointTransfer {
            id,
            shard: self.shard,
            blob: blob.to_string(),
            executor: self.executor,
            reason,
        };
        let got: Vec<&str> = self.blobs.iter().map(|b| b.blob.name.as_str()).collect();
        if got != names {
            return Err(fail(
                &names[0],
                format!("the holder staged blobs {got:?}, expected {names:?}"),
            ));
        }
        let mut next = 0u32;
        for b in &self.blobs {
            let want = b.blob.len.div_ceil(self.block_bytes.max(1));
            if b.first != next || u64::from(b.blocks) != want {
                return Err(fail(
                    &b.blob.name,
                    format!(
                        "staged as blocks {}..{} for {} bytes in blocks of {}, expected {next}..{}",
                        b.first,
                        u64::from(b.first) + u64::from(b.blocks),
                        b.blob.len,
                        self.block_bytes,
                        u64::from(next) + want
                    ),
                ));
            }
            next = b.first + b.blocks;
        }
        Ok(())
    }
}

/// What a transfer hands the blob writer thread.
enum Piece {
    /// The next bytes of the payload.
    Bytes(Bytes),
    /// Every byte arrived: check and commit the blob.
    End,
}

/// One holder's connection, opened by the first transfer that needs it.
type Slot = Arc<tokio::sync::Mutex<Option<quinn::Connection>>>;

/// Pulls staged shards into checkpoint `id` of the store in `dir`, over
/// connections from the driver's endpoint (one per holder, closed when
/// the pull ends).
pub(crate) struct BlobPuller {
    endpoint: quinn::Endpoint,
    secret: [u8; 32],
    dir: PathBuf,
    id: u64,
    conns: Mutex<HashMap<(SocketAddr, [u8; 32]), Slot>>,
    /// Where the bytes of the closed connections are reported.
    monitor: crate::monitor::MonitorSink,
}

impl BlobPuller {
    /// A puller connecting from `endpoint` with the cluster's `secret`.
    pub(crate) fn new(endpoint: quinn::Endpoint, secret: [u8; 32], dir: &Path, id: u64) -> Self {
        BlobPuller {
            endpoint,
            secret,
            dir: dir.to_path_buf(),
            id,
            conns: Mutex::new(HashMap::new()),
            monitor: crate::monitor::MonitorSink::default(),
        }
    }

    /// Reports the bytes of its connections to `monitor` when it closes them.
    pub(crate) fn reporting_to(mut self, monitor: crate::monitor::MonitorSink) -> Self {
        self.monitor = monitor;
        self
    }

    /// Pulls every shard's blobs (at most [`MAX_CONCURRENT_PULLS`] shards
    /// at a time) and returns their [`BlobRef`]s in the order of
    /// `shards`. `done(block)` is called as each shard's transfer ends,
    /// whether it succeeded or not (its staged blocks can go). On the
    /// first failure the other transfers stop, leaving no blob file of
    /// theirs; blobs already written stay uncommitted (retention removes
    /// them).
    pub(crate) async fn pull_all(
        self: &Arc<Self>,
        shards: Vec<StagedShard>,
        done: &(dyn Fn(u64) + Sync),
    ) -> Result<Vec<BlobRef>> {
        let result = self.pull_each(shards, done).await;
        self.close();
        result
    }

    async fn pull_each(
        self: &Arc<Self>,
        shards: Vec<StagedShard>,
        done: &(dyn Fn(u64) + Sync),
    ) -> Result<Vec<BlobRef>> {
        for s in &shards {
            s.check_layout(self.id)?;
        }
        let limit = Arc::new(Semaphore::new(MAX_CONCURRENT_PULLS));
        let mut running = JoinSet::new();
        let n = shards.len();
        for (slot, s) in shards.into_iter().enumerate() {
            let (me, limit) = (self.clone(), limit.clone());
            running.spawn(async move {
                let r = match limit.acquire_owned().await {
                    Ok(_permit) => me.pull_shard(&s).await,
                    Err(_) => Err(Error::Shutdown {
                        what: "the checkpoint transfer limiter",
                    }),
                };
                (slot, s.block, r)
            });
        }
        let mut out: Vec<Vec<BlobRef>> = vec![Vec::new(); n];
        while let Some(joined) = running.join_next().await {
            let (slot, block, r) = joined.map_err(|e| Error::BackgroundTask {
                task: format!("pulling the blobs of checkpoint {}", self.id),
                source: e,
            })?;
            done(block);
            // An error returns at once: dropping the set stops the others.
            out[slot] = r?;
        }
        Ok(out.into_iter().flatten().collect())
    }

    /// Closes the connections this puller opened.
    fn close(&self) {
        if let Ok(mut conns) = self.conns.lock() {
            for slot in conns.values() {
                if let Ok(guard) = slot.try_lock() {
                    if let Some(c) = guard.as_ref() {
                        self.monitor
                            .connection_closed(crate::monitor::WireKind::CheckpointPull, c);
                        c.close(transport::CLOSE_NORMAL.into(), b"checkpoint pulled");
                    }
                }
            }
            conns.clear();
        }
    }

    /// The connection to `peer`, opened on first use: the driver's
    /// endpoint as a client, the peer's certificate pinned, the cluster
    /// secret in the preamble, small flow-control windows.
    async fn connection(&self, peer: &PeerAddr) -> Result<quinn::Connection> {
        let slot = {
            let mut conns = self.conns.lock().map_err(|_| Error::Poisoned {
                lock: "checkpoint connection table",
            })?;
            conns
                .entry((peer.addr, peer.fingerprint))
                .or_default()
                .clone()
        };
        let mut guard = slot.lock().await;
        if let Some(c) = guard.as_ref() {
            if c.close_reason().is_none() {
                return Ok(c.clone());
            }
        }
        let config = transport::checkpoint_client_config(
            &peer.fingerprint,
            peer.addr,
            MAX_CONCURRENT_PULLS as u32,
        )?;
        let c = transport::connect_peer_with(
            &self.endpoint,
            config,
            peer.addr,
            &self.secret,
            HANDSHAKE_TIMEOUT,
        )
        .await?;
        *guard = Some(c.clone());
        Ok(c)
    }

    /// Pulls one shard's blobs, one after the other.
    async fn pull_shard(&self, s: &StagedShard) -> Result<Vec<BlobRef>> {
        let mut refs = Vec::with_capacity(s.blobs.len());
        for b in &s.blobs {
            let fail = |reason: String| Error::CheckpointTransfer {
                id: self.id,
                shard: s.shard,
                blob: b.blob.name.clone(),
                executor: s.executor,
                reason,
            };
            let conn = self
                .connection(&s.peer)
                .await
                .map_err(|e| fail(e.to_string()))?;
            refs.push(self.pull_blob(&conn, s, b).await.map_err(fail)?);
        }
        debug!(
            shard = s.shard,
            executor = s.executor,
            bytes = refs.iter().map(|r| r.len).sum::<u64>(),
            "checkpoint shard pulled"
        );
        Ok(refs)
    }

    /// Streams one blob's blocks into a [`BlobWriter`] on a blocking
    /// thread; the reason it failed otherwise.
    async fn pull_blob(
        &self,
        conn: &quinn::Connection,
        s: &StagedShard,
        b: &StagedBlob,
    ) -> std::result::Result<BlobRef, String> {
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        let (dir, id, r) = (self.dir.clone(), self.id, b.blob.clone());
        let writer = tokio::task::spawn_blocking(move || write_streamed(rx, &dir, id, &r));
        let streamed = stream_blocks(conn, s, b, &tx).await;
        if let Ok(true) = streamed {
            // Every byte is queued: the writer checks and commits.
            let _ = tx.send(Piece::End).await;
        }
        // Dropped without `End` (a failed transfer): the writer discards
        // its temporary file.
        drop(tx);
        let written = writer
            .await
            .map_err(|e| format!("the blob writer thread failed: {e}"))?;
        match (streamed, written) {
            (Err(e), _) => Err(e.to_string()),
            // The writer stopped taking bytes: its error is the cause.
            (Ok(_), Err(e)) => Err(e.to_string()),
            (Ok(false), Ok(_)) => Err("the blob writer stopped early".into()),
            (Ok(true), Ok(r)) => Ok(r),
        }
    }
}

/// Requests `b`'s blocks from the holder one after the other and queues
/// their bytes for the writer as they arrive. Returns false if the writer
/// stopped taking them (it failed; its error says why).
async fn stream_blocks(
    conn: &quinn::Connection,
    s: &StagedShard,
    b: &StagedBlob,
    tx: &mpsc::Sender<Piece>,
) -> Result<bool> {
    let addr = s.peer.addr;
    for k in 0..b.blocks {
        let offset = u64::from(k) * s.block_bytes;
        let expect = s.block_bytes.min(b.blob.len.saturating_sub(offset));
        let req = FetchRequest {
            shuffle: s.block,
            map: s.shard,
            reduce: b.first + k,
        };
        let (reply, mut recv) = with_timeout(
            addr,
            "checkpoint block reply",
            BLOCK_TIMEOUT,
            request_block(conn, addr, &req),
        )
        .await?;
        match reply {
            Some(FetchReply::Block(n)) if n == expect => {}
            Some(FetchReply::Block(n)) => {
                return Err(Error::BlockTransfer {
                    peer: addr,
                    block: k,
                    reason: format!("announced {n} bytes, {expect} expected"),
                })
            }
            Some(FetchReply::Missing) => {
                return Err(Error::BlockTransfer {
                    peer: addr,
                    block: k,
                    reason: "the holder no longer holds it".into(),
                })
            }
            None => {
                return Err(Error::BlockTransfer {
                    peer: addr,
                    block: k,
                    reason: "the holder closed its stream without a reply".into(),
                })
            }
        }
        let mut got = 0u64;
        while got < expect {
            let want = usize::try_from(expect - got).map_or(CHUNK_BYTES, |w| w.min(CHUNK_BYTES));
            let chunk = with_timeout(addr, "checkpoint block bytes", BLOCK_TIMEOUT, async {
                recv.read_chunk(want, true)
                    .await
                    .map_err(|e| transport::conn_err(addr, e))
            })
            .await?;
            let Some(chunk) = chunk else {
                return Err(Error::BlockTransfer {
                    peer: addr,
                    block: k,
                    reason: format!("the stream ended after {got} of its {expect} bytes"),
                });
            };
            got += chunk.bytes.len() as u64;
            if tx.send(Piece::Bytes(chunk.bytes)).await.is_err() {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// The writer thread of one blob: writes the pieces as they come and
/// commits the blob at [`Piece::End`] (if its length and checksum are
/// those announced); a queue closed before the end discards it.
fn write_streamed(
    mut rx: mpsc::Receiver<Piece>,
    dir: &Path,
    id: u64,
    r: &BlobRef,
) -> std::result::Result<BlobRef, CheckpointError> {
    let mut w = BlobWriter::create(dir, id, &r.name, r.len, r.crc32)?;
    while let Some(piece) = rx.blocking_recv() {
        match piece {
            Piece::Bytes(b) => w.write(&b)?,
            Piece::End => return w.finish(),
        }
    }
    Err(CheckpointError::BlobMismatch {
        id,
        name: r.name.clone(),
        reason: format!(
            "the transfer stopped after {} of {} bytes",
            w.written(),
            r.len
        ),
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::checkpoint::{read_blob, CheckpointStore, StoreClaim};
    use crate::error::BoxError;
    use crate::local::{LocalCluster, LocalConfig};
    use crate::registry::Registry;
    use crate::shuffle::{bind_peer_endpoint, serve_peers, ShuffleStore};
    use crate::train::hosted::{stage_blobs, ShardOp, STAGED_OPS};
    use crate::train::{
        BatchStats, CheckpointPolicy, DistributedTrainer, GradientWorker, OptimizerSpec,
        ShardOptimizer, ShardPlacement, TrainSpec,
    };
    use crate::transport::{encode, PeerIdentity};

    /// A peer endpoint on 127.0.0.1 and the address others dial it at.
    fn endpoint() -> (quinn::Endpoint, PeerAddr) {
        let towards: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let id = PeerIdentity::generate().unwrap();
        let (ep, addr) = bind_peer_endpoint(&id, towards).unwrap();
        let peer = PeerAddr {
            addr,
            fingerprint: id.fingerprint(),
        };
        (ep, peer)
    }

    /// Blob files (and leftovers) of checkpoint `id` in `dir`.
    fn files(dir: &Path, id: u64) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir.join("blobs").join(format!("{id:020}")))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// Shard 3's blobs (`len` bytes of weights, 5 of state) staged on a
    /// holder in blocks of `block_bytes`, served on its peer endpoint.
    fn holder(
        secret: [u8; 32],
        len: usize,
        block_bytes: u64,
    ) -> (
        ShuffleStore,
        StagedShard,
        Vec<Vec<u8>>,
        tokio::task::JoinHandle<Result<()>>,
    ) {
        let (ep, peer) = endpoint();
        let store = ShuffleStore::default();
        let weights: Vec<u8> = (0..len).map(|i| (i * 13 + i / 256) as u8).collect();
        let state = b"state".to_vec();
        let payloads = vec![weights.clone(), state.clone()];
        let blobs = [(params_blob(3), weights), (optim_blob(3), state)];
        let staged = stage_blobs(&store, 77, 3, blobs, block_bytes).unwrap();
        let server = tokio::spawn(serve_peers(
            ep,
            store.clone(),
            secret,
            1 << 30,
            Default::default(),
        ));
        let shard = StagedShard {
            shard: 3,
            executor: 9,
            peer,
            block: 77,
            block_bytes,
            blobs: staged,
        };
        (store, shard, payloads, server)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn staged_blobs_stream_into_the_store_block_by_block() {
        let secret = [3u8; 32];
        // Several blocks per blob, each many datagrams, the last one short.
        let block_bytes = 300_000;
        let (_store, shard, payloads, server) = holder(secret, 1_000_003, block_bytes);
        assert_eq!(shard.blobs[0].blocks, 4);
        let dir = tempfile::tempdir().unwrap();
        let (driver, _) = endpoint();
        let puller = Arc::new(BlobPuller::new(driver, secret, dir.path(), 5));
        let done = Mutex::new(Vec::new());
        let refs = puller
            .pull_all(vec![shard.clone()], &|b| done.lock().unwrap().push(b))
            .await
            .unwrap();
        assert_eq!(*done.lock().unwrap(), vec![77]);
        assert_eq!(
            refs,
            shard
                .blobs
                .iter()
                .map(|b| b.blob.clone())
                .collect::<Vec<_>>()
        );
        for (r, p) in refs.iter().zip(&payloads) {
            assert!(read_blob(dir.path(), 5, r).unwrap() == *p, "{}", r.name);
        }
        assert_eq!(
            files(dir.path(), 5),
            vec!["optim.shard.3", "params.shard.3"]
        );
        server.abort();
    }

    /// Every way a transfer can go wrong is an error naming the shard, the
    /// blob and the executor, and leaves no blob file of it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_bad_transfer_names_shard_blob_and_executor_and_leaves_no_file() {
        let secret = [4u8; 32];
        let (store, shard, _, server) = holder(secret, 10, 4);
        let dir = tempfile::tempdir().unwrap();
        let (driver, _) = endpoint();
        let pull = |s: StagedShard, secret: [u8; 32], id: u64| {
            let puller = Arc::new(BlobPuller::new(driver.clone(), secret, dir.path(), id));
            async move {
                let done = Mutex::new(Vec::new());
                let r = puller
                    .pull_all(vec![s], &|b| done.lock().unwrap().push(b))
                    .await;
                (r.map_err(|e| e.to_string()), done.into_inner().unwrap())
            }
        };
        let named = |err: &str, blob: &str| {
            assert!(
                err.contains("parameter shard 3")
                    && err.contains(&format!("{blob:?}"))
                    && err.contains("executor 9"),
                "{err}"
            );
        };
        // A checksum the bytes do not have.
        let mut bad = shard.clone();
        bad.blobs[0].blob.crc32 ^= 1;
        let (r, done) = pull(bad, secret, 1).await;
        let err = r.unwrap_err();
        named(&err, "params.shard.3");
        assert!(err.contains("checksum"), "{err}");
        assert_eq!(done, vec![77], "the staged blocks go after a failure too");
        assert!(
            files(dir.path(), 1).is_empty(),
            "{:?}",
            files(dir.path(), 1)
        );
        // A length the blocks do not have (its last block is 2 bytes, not 3).
        let mut bad = shard.clone();
        bad.blobs[0].blob.len = 11;
        let (r, _) = pull(bad, secret, 2).await;
        let err = r.unwrap_err();
        named(&err, "params.shard.3");
        assert!(
            err.contains("block 2 of a checkpoint blob from 127.0.0.1:")
                && err.contains("announced 2 bytes, 3 expected"),
            "{err}"
        );
        assert!(files(dir.path(), 2).is_empty());
        // Blocks that do not add up to the length.
        let mut bad = shard.clone();
        bad.blobs[1].blocks = 3;
        let (r, _) = pull(bad, secret, 3).await;
        named(&r.unwrap_err(), "optim.shard.3");
        // Other blobs than the shard's.
        let mut bad = shard.clone();
        bad.blobs[1].blob.name = "optim.shard.4".into();
        let (r, _) = pull(bad, secret, 3).await;
        assert!(r.unwrap_err().contains("staged blobs"));
        // A driver without the cluster secret is refused by the holder.
        let (r, _) = pull(shard.clone(), [5u8; 32], 3).await;
        let err = r.unwrap_err();
        named(&err, "params.shard.3");
        assert!(err.contains("invalid join token"), "{err}");
        assert!(files(dir.path(), 3).is_empty());
        // The holder no longer has the blocks.
        store.free(77).unwrap();
        let (r, _) = pull(shard.clone(), secret, 4).await;
        let err = r.unwrap_err();
        named(&err, "params.shard.3");
        assert!(
            err.contains("block 0 of a checkpoint blob") && err.contains("no longer holds it"),
            "{err}"
        );
        assert!(files(dir.path(), 4).is_empty());
        server.abort();
    }

    /// y = w·x + b with squared loss; samples are `(x0, x1, y)`.
    struct Linear;

    impl GradientWorker<(f32, f32, f32)> for Linear {
        fn num_params(&self) -> usize {
            3
        }
        fn gradients(
            &mut self,
            p: &[f32],
            samples: &[&(f32, f32, f32)],
            _seed: u64,
            g: &mut [f32],
        ) -> std::result::Result<BatchStats, BoxError> {
            let mut loss = 0.0;
            for (x0, x1, y) in samples.iter().copied() {
                let e = p[0] * x0 + p[1] * x1 + p[2] - y;
                loss += 0.5 * (e * e) as f64;
                g[0] += e * x0;
                g[1] += e * x1;
                g[2] += e;
            }
            Ok(BatchStats {
                loss_sum: loss,
                samples: samples.len() as u64,
                correct: 0,
            })
        }
        fn evaluate(
            &mut self,
            p: &[f32],
            s: &[&(f32, f32, f32)],
        ) -> std::result::Result<BatchStats, BoxError> {
            self.gradients(p, s, 0, &mut [0.0; 3])
        }
    }

    /// SGD with momentum 0.9: state a resume must restore.
    struct Momentum(Vec<f32>);

    impl ShardOptimizer for Momentum {
        fn step(&mut self, p: &mut [f32], g: &[f32], lr: f64) -> std::result::Result<(), BoxError> {
            self.0.resize(p.len(), 0.0);
            for ((p, g), b) in p.iter_mut().zip(g).zip(&mut self.0) {
                *b = 0.9 * *b + g;
                *p -= lr as f32 * *b;
            }
            Ok(())
        }
        fn state(&self) -> std::result::Result<Vec<u8>, BoxError> {
            Ok(self.0.iter().flat_map(|x| x.to_le_bytes()).collect())
        }
        fn load_state(&mut self, b: &[u8]) -> std::result::Result<(), BoxError> {
            self.0 = crate::train::bytes_to_f32(b, "momentum")?;
            Ok(())
        }
    }

    fn registry() -> Arc<Registry> {
        let mut r = Registry::new();
        r.register_trainer("linear", |_: &()| Ok(Linear))
            .register_optimizer("momentum", |_: &(), _| {
                Ok(Box::new(Momentum(Vec::new())) as Box<dyn ShardOptimizer>)
            })
            .register_source("points", |n: &u64, p: u32, parts: u32| {
                Ok((0..*n)
                    .filter(|i| i % parts as u64 == p as u64)
                    .map(|i| {
                        let x0 = (i % 17) as f32 / 17.0;
                        let x1 = (i % 5) as f32 / 5.0 - 0.5;
                        (x0, x1, 2.0 * x0 - 3.0 * x1 + 0.5)
                    })
                    .collect::<Vec<(f32, f32, f32)>>())
            });
        Arc::new(r)
    }

    /// Block size of the staging in [`train`]'s checkpoints: a few bytes,
    /// so that every blob spans several blocks (and no other test's
    /// staging looks the same).
    const TINY_BLOCKS: u64 = 3;

    /// A new run where `dir` holds no store yet, else the run continued.
    fn claim_for(dir: &Path) -> StoreClaim {
        let kind = "test".to_string();
        match crate::checkpoint::dir_state(dir).unwrap() {
            crate::checkpoint::DirState::Free => StoreClaim::NewRun { kind },
            _ => StoreClaim::Continue { kind },
        }
    }

    /// Trains 4 epochs on 2 in-process executors (over QUIC), stopping
    /// after `stop_at`; checkpoints every epoch into `dir` if given,
    /// resuming from it first.
    async fn train(dir: Option<&Path>, stop_at: u64, hosted: bool) -> Vec<f32> {
        let cluster = LocalCluster::start(LocalConfig::in_process(2), registry())
            .await
            .unwrap();
        let d = cluster.driver().unwrap();
        let data = d.source::<u64, (f32, f32, f32)>("points", &200, 4).unwrap();
        let mut s = TrainSpec::new("linear", &(), 16, 4, 9, 0.1).unwrap();
        s.shards = 2;
        if hosted {
            s.placement = ShardPlacement::Executors {
                replicas: 2,
                optimizer: OptimizerSpec {
                    name: "momentum".into(),
                    config: encode(&()).unwrap(),
                },
            };
        }
        s.checkpoint = dir.map(|d| CheckpointPolicy::every_epoch(d, claim_for(d)));
        let optimizer: crate::train::OptimizerFactory =
            Arc::new(|_| Ok(Box::new(Momentum(Vec::new())) as Box<dyn ShardOptimizer>));
        let mut t = DistributedTrainer::start(&data, s, vec![0.0; 3], optimizer)
            .await
            .unwrap();
        t.set_stage_block_bytes(TINY_BLOCKS);
        if dir.is_some() {
            t.resume().await.unwrap();
        }
        let seen_before = STAGED_OPS.lock().unwrap().len();
        while !t.is_done() && t.position().epoch < stop_at {
            t.step().await.unwrap();
        }
        if hosted {
            let staged = STAGED_OPS.lock().unwrap()[seen_before..].to_vec();
            assert_staged_blocks_freed(&data, &staged).await;
        }
        let p = t.finish().await.unwrap();
        cluster.shutdown().await;
        p
    }

    /// No executor holds the blocks of the `staged` checkpoint blobs any
    /// more (their first blocks are asked for until every peer says it
    /// does not hold them: `FreeShuffle` travels on the control streams,
    /// so it may arrive after the checkpoint returned).
    async fn assert_staged_blocks_freed(
        data: &crate::Dataset<(f32, f32, f32)>,
        staged: &[ShardOp],
    ) {
        let (_, secret) = data.peer_dialer();
        let members = data.members().await.unwrap();
        for op in staged {
            let ShardOp::Stage {
                shard,
                block,
                block_bytes: TINY_BLOCKS,
                ..
            } = op
            else {
                continue;
            };
            for (executor, peer) in &members {
                let conn = transport::connect_peer(
                    peer.addr,
                    &peer.fingerprint,
                    &secret,
                    HANDSHAKE_TIMEOUT,
                )
                .await
                .unwrap();
                let req = FetchRequest {
                    shuffle: *block,
                    map: *shard,
                    reduce: 0,
                };
                let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
                loop {
                    match request_block(&conn, peer.addr, &req).await.unwrap().0 {
                        Some(FetchReply::Missing) => break,
                        _ if tokio::time::Instant::now() < deadline => {
                            tokio::time::sleep(Duration::from_millis(20)).await
                        }
                        other => panic!("executor {executor} still holds {req:?}: {other:?}"),
                    }
                }
            }
        }
    }

    /// Executor-hosted shards checkpoint into the driver's store without
    /// the executors being told where it is, and the run resumes from it
    /// bit-exactly (with either placement: the blobs are those the
    /// holders used to write).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hosted_shards_checkpoint_through_the_driver_and_resume_bit_exact() {
        let test = async {
            let uninterrupted = train(None, 4, true).await;
            let dir = tempfile::tempdir().unwrap();
            // Stops after 2 of 4 epochs, a checkpoint after each.
            train(Some(dir.path()), 2, true).await;
            let store = CheckpointStore::open_for_reading(dir.path()).unwrap();
            let (record, skipped) = store.latest_valid().unwrap();
            assert!(skipped.is_empty());
            assert_eq!((record.id, record.epoch), (2, 2));
            let mut names: Vec<&str> = record.blobs.iter().map(|b| b.name.as_str()).collect();
            names.sort_unstable();
            assert_eq!(
                names,
                [
                    "optim.shard.0",
                    "optim.shard.1",
                    "params.shard.0",
                    "params.shard.1"
                ]
            );
            drop(store);
            // What the holders were told: stage the shard in blocks, with
            // no path and no checkpoint id.
            let path = dir.path().to_string_lossy().into_owned();
            let ops: Vec<ShardOp> = STAGED_OPS
                .lock()
                .unwrap()
                .iter()
                .filter(|op| {
                    matches!(op, ShardOp::Stage { block_bytes, .. } if *block_bytes == TINY_BLOCKS)
                })
                .cloned()
                .collect();
            assert_eq!(ops.len(), 2 * 2, "a stage per shard and checkpoint");
            for op in &ops {
                let bytes = encode(op).unwrap();
                assert!(
                    !bytes.windows(path.len()).any(|w| w == path.as_bytes()),
                    "{op:?} carries the store's path"
                );
                assert!(!format!("{op:?}").contains(&path));
            }
            // A new cluster resumes from it.
            let resumed = train(Some(dir.path()), 4, true).await;
            assert_eq!(resumed, uninterrupted);
            // Driver-held shards read the same blobs (the final checkpoint).
            let driver_held = train(Some(dir.path()), 4, false).await;
            assert_eq!(driver_held, uninterrupted);
        };
        tokio::time::timeout(Duration::from_secs(120), test)
            .await
            .expect("test timed out");
    }
}

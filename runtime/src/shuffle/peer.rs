//! Peer links between executors: the block server and the fetcher.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{debug, warn};

use super::{Block, ShuffleStore};
use crate::error::{Error, Result};
use crate::protocol::{FetchReply, FetchRequest, Inputs, LostBlock, MapLoc, ShuffleFetch};
use crate::supervise::panic_message;
use crate::transport::{
    self, read_frame, with_timeout, write_frame, PeerIdentity, Role, DEFAULT_MAX_CONTROL_FRAME,
};

/// Time allowed for a peer's TLS handshake and preamble.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Time allowed for one block to arrive once requested.
pub(crate) const BLOCK_TIMEOUT: Duration = Duration::from_secs(120);
/// Block fetches in flight per executor, over all its tasks.
pub(crate) const MAX_CONCURRENT_FETCHES: usize = 16;

/// The local address this host uses to reach `driver`: peers listen on the
/// interface the driver link uses. No packet is sent.
fn local_ip_towards(driver: SocketAddr) -> Result<IpAddr> {
    let bind: SocketAddr = if driver.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    let err = |e: std::io::Error| Error::Endpoint {
        addr: driver,
        reason: format!("finding the local interface towards the driver: {e}"),
    };
    let probe = std::net::UdpSocket::bind(bind).map_err(err)?;
    probe.connect(driver).map_err(err)?;
    Ok(probe.local_addr().map_err(err)?.ip())
}

/// Bind an executor's peer endpoint (port 0) on the interface it uses to
/// reach `driver`; returns it with its address.
pub(crate) fn bind_peer_endpoint(
    identity: &PeerIdentity,
    driver: SocketAddr,
) -> Result<(quinn::Endpoint, SocketAddr)> {
    let ip = local_ip_towards(driver)?;
    let ep = transport::peer_endpoint(identity, SocketAddr::new(ip, 0))?;
    let addr = ep.local_addr().map_err(|e| Error::Endpoint {
        addr: SocketAddr::new(ip, 0),
        reason: e.to_string(),
    })?;
    Ok((ep, addr))
}

/// Serve `store` to authenticated peers until the endpoint closes. Every
/// connection task lives in this future's [`JoinSet`], so dropping the
/// future (executor exit or abort) ends them all.
///
/// A peer that passed the handshake and then breaks the protocol (a
/// garbage, oversized or truncated request frame, no request within
/// [`HANDSHAKE_TIMEOUT`] on a stream it opened, a unidirectional stream,
/// which this service never reads) has its connection closed with
/// [`CLOSE_PROTOCOL`](transport::CLOSE_PROTOCOL), logged with its address
/// and counted in `dropped`; the other peers' connections and fetches go
/// on undisturbed.
pub(crate) async fn serve_peers(
    endpoint: quinn::Endpoint,
    store: ShuffleStore,
    secret: [u8; 32],
    max_bulk: u64,
    dropped: Arc<AtomicU64>,
) -> Result<()> {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                let server = PeerServer {
                    store: store.clone(),
                    max_bulk,
                    dropped: dropped.clone(),
                };
                conns.spawn(server.serve(incoming, secret));
            }
            Some(done) = conns.join_next(), if !conns.is_empty() => {
                if let Ok(Err(e)) = done {
                    debug!(error = %e, "peer connection ended");
                }
            }
        }
    }
    Err(Error::Shutdown {
        what: "the peer (shuffle) endpoint",
    })
}

/// How serving one block request went wrong.
enum StreamFailure {
    /// The peer broke the protocol: its link is dropped and counted.
    Breach(Error),
    /// Anything else (the peer went away, the block is above this
    /// holder's limit, the store failed): only that stream ends.
    Failed(Error),
}

/// What serving one peer connection needs.
struct PeerServer {
    store: ShuffleStore,
    max_bulk: u64,
    /// Links dropped for breaking the protocol, on the whole endpoint.
    dropped: Arc<AtomicU64>,
}

impl PeerServer {
    /// The handshake, then each block request on a bidirectional stream of
    /// its own until the peer closes the connection or breaks the
    /// protocol.
    async fn serve(self, incoming: quinn::Incoming, secret: [u8; 32]) -> Result<()> {
        let peer = incoming.remote_address();
        let conn = match transport::accept_handshake(incoming, &secret, HANDSHAKE_TIMEOUT).await {
            Ok((conn, Role::Executor)) => conn,
            Ok((conn, role)) => {
                conn.close(
                    transport::CLOSE_REFUSED.into(),
                    b"only executors fetch blocks",
                );
                warn!(%peer, ?role, "peer link refused: not an executor");
                return Ok(());
            }
            Err(e) => {
                warn!(%peer, error = %e, "peer link refused");
                return Err(e);
            }
        };
        let mut streams = JoinSet::new();
        let breach = loop {
            tokio::select! {
                s = conn.accept_bi() => {
                    let Ok((send, recv)) = s else { break None };
                    streams.spawn(serve_block(peer, send, recv, self.store.clone(), self.max_bulk));
                }
                s = conn.accept_uni() => {
                    if s.is_err() {
                        break None;
                    }
                    break Some(Error::ProtocolViolation {
                        peer,
                        what: "opened a unidirectional stream on the peer service, which answers block requests on bidirectional streams only".into(),
                    });
                }
                Some(done) = streams.join_next(), if !streams.is_empty() => match done {
                    Ok(Ok(())) => {}
                    Ok(Err(StreamFailure::Breach(e))) => break Some(e),
                    Ok(Err(StreamFailure::Failed(e))) => {
                        warn!(%peer, error = %e, "serving a shuffle block failed; its stream ends");
                    }
                    Err(e) => {
                        warn!(%peer, error = %panic_message(e), "serving a shuffle block panicked; its stream ends");
                    }
                }
            }
        };
        if let Some(e) = breach {
            let total = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            warn!(%peer, error = %e, dropped_peer_links = total, "peer broke the protocol; dropping its link");
            conn.close(transport::CLOSE_PROTOCOL.into(), b"bad block request");
        }
        Ok(())
    }
}

/// Reads one block request from a stream and answers it.
async fn serve_block(
    peer: SocketAddr,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    store: ShuffleStore,
    max_bulk: u64,
) -> std::result::Result<(), StreamFailure> {
    let req: Option<FetchRequest> = with_timeout(peer, "block request", HANDSHAKE_TIMEOUT, async {
        read_frame(&mut recv, peer, DEFAULT_MAX_CONTROL_FRAME).await
    })
    .await
    .map_err(|e| {
        // A stream opened and left without a request holds the holder's
        // resources as surely as garbage does.
        if e.breaks_protocol() || matches!(e, Error::Timeout { .. }) {
            StreamFailure::Breach(e)
        } else {
            StreamFailure::Failed(e)
        }
    })?;
    let Some(req) = req else { return Ok(()) };
    let block = store
        .block(req.shuffle, req.map, req.reduce)
        .map_err(StreamFailure::Failed)?;
    if let Some(b) = &block {
        if b.len() as u64 > max_bulk {
            return Err(StreamFailure::Failed(Error::FrameTooLarge {
                peer,
                len: b.len() as u64,
                max: max_bulk,
            }));
        }
    }
    let reply = match &block {
        Some(b) => FetchReply::Block(b.len() as u64),
        None => FetchReply::Missing,
    };
    with_timeout(peer, "block reply", BLOCK_TIMEOUT, async {
        write_frame(&mut send, peer, &reply, DEFAULT_MAX_CONTROL_FRAME).await?;
        if let Some(b) = block {
            // The store's buffer goes to quinn as is: no copy.
            send.write_chunk(b)
                .await
                .map_err(|e| transport::conn_err(peer, e))?;
        }
        Ok(())
    })
    .await
    .map_err(StreamFailure::Failed)?;
    let _ = send.finish();
    Ok(())
}

/// Reads the `len` raw bytes of a block that follow its reply frame, as
/// quinn's received chunks (slices of the decrypted datagrams: not copied).
async fn read_block(recv: &mut quinn::RecvStream, peer: SocketAddr, len: u64) -> Result<Block> {
    let len = usize::try_from(len).map_err(|_| Error::FrameTooLarge {
        peer,
        len,
        max: usize::MAX as u64,
    })?;
    let mut pieces = Vec::new();
    let mut filled = 0;
    while filled < len {
        let chunk = recv
            .read_chunk(len - filled, true)
            .await
            .map_err(|e| transport::conn_err(peer, e))?;
        match chunk {
            Some(c) => {
                let end = filled + c.bytes.len();
                if end > len {
                    return Err(transport::conn_err(
                        peer,
                        format!("stream sent {end} bytes of a {len}-byte block"),
                    ));
                }
                pieces.push(c.bytes);
                filled = end;
            }
            None => {
                return Err(transport::conn_err(
                    peer,
                    format!("stream finished after {filled} of the block's {len} bytes"),
                ))
            }
        }
    }
    Ok(Block::from_pieces(pieces))
}

/// Asks the peer at `addr` for one block on a bidirectional stream of
/// its own: writes the request, then reads the reply frame. Returns the
/// reply (`None`: the peer closed the stream without one) and the stream
/// on which a [`FetchReply::Block`]'s bytes follow.
pub(crate) async fn request_block(
    conn: &quinn::Connection,
    addr: SocketAddr,
    req: &FetchRequest,
) -> Result<(Option<FetchReply>, quinn::RecvStream)> {
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|e| transport::conn_err(addr, e))?;
    write_frame(&mut send, addr, req, DEFAULT_MAX_CONTROL_FRAME).await?;
    let _ = send.finish();
    let reply = read_frame::<FetchReply>(&mut recv, addr, DEFAULT_MAX_CONTROL_FRAME).await?;
    Ok((reply, recv))
}

type Slot = Arc<tokio::sync::Mutex<SlotState>>;

/// A peer connection, or the recent failure to make one.
#[derive(Default)]
enum SlotState {
    #[default]
    Empty,
    Connected(quinn::Connection),
    /// Connecting failed at this instant: fetches waiting for the same
    /// peer fail at once with the same error (a task's blocks are fetched
    /// side by side, and an unreachable peer must not cost each of them a
    /// handshake timeout in turn) until [`FAILURE_MEMORY`] has passed.
    Failed(std::time::Instant, String),
}

/// How long a failed connection attempt answers for its peer.
const FAILURE_MEMORY: Duration = Duration::from_secs(2);

/// Fetches shuffle blocks for this executor's tasks: one reused
/// connection per peer, at most [`MAX_CONCURRENT_FETCHES`] blocks in
/// flight, blocks held here read from the local store.
pub(crate) struct PeerFetcher {
    endpoint: quinn::Endpoint,
    secret: [u8; 32],
    max_bulk: u64,
    me: u64,
    store: ShuffleStore,
    conns: Mutex<HashMap<(SocketAddr, [u8; 32]), Slot>>,
    limit: Semaphore,
}

impl PeerFetcher {
    /// A fetcher for executor `me`, connecting out from `endpoint`.
    pub(crate) fn new(
        endpoint: quinn::Endpoint,
        secret: [u8; 32],
        max_bulk: u64,
        me: u64,
        store: ShuffleStore,
    ) -> Self {
        PeerFetcher {
            endpoint,
            secret,
            max_bulk,
            me,
            store,
            conns: Mutex::new(HashMap::new()),
            limit: Semaphore::new(MAX_CONCURRENT_FETCHES),
        }
    }

    /// Get every block of `fetches` as task inputs keyed by
    /// `(shuffle, reduce)`, blobs in map order. On failure, every block
    /// that could not be had and the first reason.
    pub(crate) async fn fetch_all(
        self: &Arc<Self>,
        fetches: &[ShuffleFetch],
    ) -> std::result::Result<Inputs, (Vec<LostBlock>, String)> {
        let mut out: Inputs = HashMap::new();
        let mut lost = Vec::new();
        let mut first_error = None;
        let mut remote = JoinSet::new();
        for f in fetches {
            let mut blobs = vec![Block::default(); f.maps.len()];
            for (i, loc) in f.maps.iter().enumerate() {
                if loc.executor == self.me {
                    match self.store.block(f.shuffle, loc.map, f.reduce) {
                        // Shared with the store, not copied.
                        Ok(Some(b)) => blobs[i] = b.into(),
                        Ok(None) => {
                            first_error.get_or_insert_with(|| {
                                format!(
                                    "map {} of shuffle {} is not in the local store",
                                    loc.map, f.shuffle
                                )
                            });
                            lost.push(lost_block(f.shuffle, loc));
                        }
                        Err(e) => {
                            first_error.get_or_insert_with(|| e.to_string());
                            lost.push(lost_block(f.shuffle, loc));
                        }
                    }
                } else if let Some(b) = self.held_copy(f.shuffle, f.reduce, loc) {
                    blobs[i] = b.into();
                } else {
                    let me = self.clone();
                    let (shuffle, reduce, loc, slot) = (f.shuffle, f.reduce, loc.clone(), i);
                    remote.spawn(async move {
                        let r = me.fetch_remote(shuffle, reduce, &loc).await;
                        (shuffle, reduce, slot, loc, r)
                    });
                }
            }
            out.insert((f.shuffle, f.reduce), blobs);
        }
        while let Some(done) = remote.join_next().await {
            let (shuffle, reduce, slot, loc, r) = match done {
                Ok(x) => x,
                Err(e) => return Err((Vec::new(), format!("block fetch task failed: {e}"))),
            };
            match r {
                Ok(b) => {
                    if let Some(s) = out
                        .get_mut(&(shuffle, reduce))
                        .and_then(|v| v.get_mut(slot))
                    {
                        *s = b;
                    }
                }
                Err(e) => {
                    first_error.get_or_insert_with(|| e.to_string());
                    lost.push(lost_block(shuffle, &loc));
                }
            }
        }
        match first_error {
            None => Ok(out),
            Some(reason) => Err((lost, reason)),
        }
    }

    /// A copy of a block named on another executor that this executor
    /// holds itself, of the reported size: the weights of a replicated
    /// parameter shard are published by every holder (identically, as
    /// each steps the same shard with the same gradients), and any other
    /// block here with the same id is the same task's output. Saves a
    /// transfer from the named holder.
    fn held_copy(&self, shuffle: u64, reduce: u32, loc: &MapLoc) -> Option<Bytes> {
        match self.store.block(shuffle, loc.map, reduce) {
            Ok(Some(b)) if b.len() as u64 == loc.size => Some(b),
            _ => None,
        }
    }

    async fn fetch_remote(&self, shuffle: u64, reduce: u32, loc: &MapLoc) -> Result<Block> {
        let _permit = self.limit.acquire().await.map_err(|_| Error::Shutdown {
            what: "the shuffle fetch limiter",
        })?;
        let addr = loc.peer.addr;
        let fail = |reason: String| Error::FetchFailed {
            shuffle,
            map: loc.map,
            executor: loc.executor,
            reason,
        };
        let conn = self
            .connection(addr, &loc.peer.fingerprint)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let req = FetchRequest {
            shuffle,
            map: loc.map,
            reduce,
        };
        let max = self.max_bulk;
        with_timeout(addr, "shuffle block", BLOCK_TIMEOUT, async {
            let (reply, mut recv) = request_block(&conn, addr, &req).await?;
            match reply {
                Some(FetchReply::Block(len)) if len == loc.size && len <= max => {
                    read_block(&mut recv, addr, len).await
                }
                Some(FetchReply::Block(len)) if len != loc.size => Err(fail(format!(
                    "block is {len} bytes, the map task reported {}",
                    loc.size
                ))),
                Some(FetchReply::Block(len)) => Err(Error::FrameTooLarge {
                    peer: addr,
                    len,
                    max,
                }),
                Some(FetchReply::Missing) => {
                    Err(fail(format!("peer {addr} does not hold the block")))
                }
                None => Err(fail(format!(
                    "peer {addr} closed the stream without a reply"
                ))),
            }
        })
        .await
        .map_err(|e| match e {
            e @ Error::FetchFailed { .. } => e,
            e => fail(e.to_string()),
        })
    }

    /// Closes every link to the peer at `addr` (declared lost by the
    /// driver): fetches in flight on them fail at once. Returns how many
    /// were closed.
    pub(crate) fn drop_peer(&self, addr: SocketAddr) -> usize {
        let Ok(mut conns) = self.conns.lock() else {
            return 0;
        };
        let mut closed = 0;
        conns.retain(|(a, _), slot| {
            if *a != addr {
                return true;
            }
            if let Ok(state) = slot.try_lock() {
                if let SlotState::Connected(c) = &*state {
                    c.close(transport::CLOSE_NORMAL.into(), b"peer lost");
                    closed += 1;
                }
            }
            false
        });
        closed
    }

    /// The cached connection to a peer, or a new one (TLS pinned to
    /// `fingerprint`, cluster secret in the preamble).
    async fn connection(
        &self,
        addr: SocketAddr,
        fingerprint: &[u8; 32],
    ) -> Result<quinn::Connection> {
        let slot = {
            let mut conns = self.conns.lock().map_err(|_| Error::Poisoned {
                lock: "peer connection table",
            })?;
            conns.entry((addr, *fingerprint)).or_default().clone()
        };
        let mut guard = slot.lock().await;
        match &*guard {
            SlotState::Connected(c) if c.close_reason().is_none() => return Ok(c.clone()),
            SlotState::Failed(at, reason) if at.elapsed() < FAILURE_MEMORY => {
                return Err(Error::Connection {
                    peer: addr,
                    reason: reason.clone(),
                })
            }
            _ => {}
        }
        match transport::connect_peer_on(
            &self.endpoint,
            addr,
            fingerprint,
            &self.secret,
            HANDSHAKE_TIMEOUT,
        )
        .await
        {
            Ok(c) => {
                *guard = SlotState::Connected(c.clone());
                Ok(c)
            }
            Err(e) => {
                *guard = SlotState::Failed(std::time::Instant::now(), e.to_string());
                Err(e)
            }
        }
    }
}

fn lost_block(shuffle: u64, loc: &MapLoc) -> LostBlock {
    LostBlock {
        shuffle,
        map: loc.map,
        executor: loc.executor,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::PeerAddr;

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

    fn contents(blocks: &[Block]) -> Vec<Vec<u8>> {
        blocks.iter().map(|b| b.to_contiguous().to_vec()).collect()
    }

    fn loc(map: u32, executor: u64, peer: PeerAddr, size: u64) -> MapLoc {
        MapLoc {
            map,
            executor,
            peer,
            size,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_large_block_arrives_intact() {
        let secret = [7u8; 32];
        // Many datagrams long (so it arrives in many pieces) and not a
        // whole number of f32.
        let len = 3 * crate::buffers::MIN_POOLED_BYTES + 3;
        let data: Vec<u8> = (0..len).map(|i| (i * 7 + i / 251) as u8).collect();
        let (ep_a, a) = endpoint();
        let store_a = ShuffleStore::default();
        store_a.put(4, 0, vec![data.clone()]).unwrap();
        let server = tokio::spawn(serve_peers(
            ep_a.clone(),
            store_a,
            secret,
            1 << 30,
            Default::default(),
        ));
        let (ep_b, _) = endpoint();
        let fetcher = Arc::new(PeerFetcher::new(
            ep_b,
            secret,
            1 << 30,
            2,
            ShuffleStore::default(),
        ));
        let fetch = ShuffleFetch {
            shuffle: 4,
            reduce: 0,
            maps: vec![loc(0, 1, a, len as u64)],
        };
        // Twice, over the cached connection.
        for _ in 0..2 {
            let got = fetcher
                .fetch_all(std::slice::from_ref(&fetch))
                .await
                .unwrap();
            let block = &got[&(4, 0)][0];
            assert_eq!(block.len(), len);
            assert!(block.slices(0..len).unwrap().count() > 1, "kept in pieces");
            assert!(
                block.to_contiguous()[..] == data[..],
                "block changed on the way"
            );
        }
        server.abort();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_block_held_here_is_not_fetched_from_the_holder_named() {
        let secret = [8u8; 32];
        // Executor 1 is named as the holder but has nothing.
        let (ep_a, a) = endpoint();
        let server = tokio::spawn(serve_peers(
            ep_a.clone(),
            ShuffleStore::default(),
            secret,
            1 << 20,
            Default::default(),
        ));
        // Executor 2 holds a copy itself (a replica's published weights).
        let (ep_b, _) = endpoint();
        let store_b = ShuffleStore::default();
        store_b.put(5, 0, vec![b"wxyz".to_vec()]).unwrap();
        let fetcher = Arc::new(PeerFetcher::new(ep_b, secret, 1 << 20, 2, store_b.clone()));
        let fetch = |size| ShuffleFetch {
            shuffle: 5,
            reduce: 0,
            maps: vec![loc(0, 1, a, size)],
        };
        let got = fetcher.fetch_all(&[fetch(4)]).await.unwrap();
        let held = store_b.block(5, 0, 0).unwrap().unwrap();
        assert_eq!(got[&(5, 0)][0].to_contiguous().as_ptr(), held.as_ptr());
        // A copy of another size than reported is not used: the named
        // holder is asked, and it has no such block.
        let (lost, reason) = fetcher.fetch_all(&[fetch(3)]).await.unwrap_err();
        assert_eq!(lost.len(), 1);
        assert!(reason.contains("does not hold"), "{reason}");
        server.abort();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn blocks_come_from_peers_and_the_local_store_and_losses_are_named() {
        let secret = [5u8; 32];
        // Executor 1 serves map 0 of shuffle 1.
        let (ep_a, a) = endpoint();
        let store_a = ShuffleStore::default();
        store_a
            .put(1, 0, vec![b"abc".to_vec(), b"de".to_vec()])
            .unwrap();
        let server = tokio::spawn(serve_peers(
            ep_a.clone(),
            store_a.clone(),
            secret,
            1 << 20,
            Default::default(),
        ));
        // Executor 2 holds map 1 itself and fetches map 0.
        let (ep_b, b) = endpoint();
        let store_b = ShuffleStore::default();
        store_b
            .put(1, 1, vec![b"x".to_vec(), b"yz".to_vec()])
            .unwrap();
        let fetcher = Arc::new(PeerFetcher::new(
            ep_b.clone(),
            secret,
            1 << 20,
            2,
            store_b.clone(),
        ));
        let fetch = |maps| {
            vec![ShuffleFetch {
                shuffle: 1,
                reduce: 1,
                maps,
            }]
        };
        let got = fetcher
            .fetch_all(&fetch(vec![loc(0, 1, a, 2), loc(1, 2, b, 2)]))
            .await
            .unwrap();
        assert_eq!(
            contents(&got[&(1, 1)]),
            vec![b"de".to_vec(), b"yz".to_vec()]
        );
        // The local block is the store's buffer, not a copy.
        let held = store_b.block(1, 1, 1).unwrap().unwrap();
        assert_eq!(got[&(1, 1)][1].to_contiguous().as_ptr(), held.as_ptr());
        // A block of another size than reported is not trusted.
        let (lost, reason) = fetcher
            .fetch_all(&fetch(vec![loc(0, 1, a, 3), loc(1, 2, b, 2)]))
            .await
            .unwrap_err();
        assert_eq!(
            lost,
            vec![LostBlock {
                shuffle: 1,
                map: 0,
                executor: 1
            }]
        );
        assert!(reason.contains("bytes"), "{reason}");
        // The peer dropped the shuffle: a fetch failure naming it.
        store_a.free(1).unwrap();
        let (lost, reason) = fetcher
            .fetch_all(&fetch(vec![loc(0, 1, a, 2), loc(1, 2, b, 2)]))
            .await
            .unwrap_err();
        assert_eq!(lost.len(), 1);
        assert!(reason.contains("does not hold"), "{reason}");
        // A fetcher without the cluster secret is refused.
        let (ep_c, _) = endpoint();
        let outsider = Arc::new(PeerFetcher::new(
            ep_c,
            [6u8; 32],
            1 << 20,
            3,
            ShuffleStore::default(),
        ));
        let (lost, reason) = outsider
            .fetch_all(&fetch(vec![loc(0, 1, a, 2)]))
            .await
            .unwrap_err();
        assert_eq!(lost.len(), 1);
        assert!(reason.contains("invalid join token"), "{reason}");
        // A peer gone: a fetch failure too, not a hang.
        ep_a.close(0u32.into(), b"gone");
        server.abort();
        let (lost, _) = fetcher
            .fetch_all(&fetch(vec![loc(0, 1, a, 2), loc(1, 2, b, 2)]))
            .await
            .unwrap_err();
        assert_eq!(lost.len(), 1);
    }

    /// A peer that announces a block and then sends less of it, or more
    /// than the fetcher accepts: a fetch failure naming the cause, not a
    /// hang or a short block.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_block_cut_short_or_too_large_is_a_fetch_failure() {
        let secret = [5u8; 32];
        let (ep_a, a) = endpoint();
        let addr_a = a.addr;
        // A dishonest peer: says 10 bytes, sends 3, then finishes.
        async fn dishonest(conn: quinn::Connection, addr: SocketAddr) {
            while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                let _: Option<FetchRequest> = read_frame(&mut recv, addr, 1 << 20).await.unwrap();
                write_frame(&mut send, addr, &FetchReply::Block(10), 1 << 20)
                    .await
                    .unwrap();
                send.write_all(b"abc").await.unwrap();
                send.finish().unwrap();
            }
        }
        let server = tokio::spawn(async move {
            while let Some(incoming) = ep_a.accept().await {
                let (conn, _) = transport::accept_handshake(incoming, &secret, HANDSHAKE_TIMEOUT)
                    .await
                    .unwrap();
                tokio::spawn(dishonest(conn, addr_a));
            }
        });
        let (ep_b, _) = endpoint();
        let fetcher = Arc::new(PeerFetcher::new(
            ep_b.clone(),
            secret,
            1 << 20,
            2,
            ShuffleStore::default(),
        ));
        let fetch = vec![ShuffleFetch {
            shuffle: 1,
            reduce: 0,
            maps: vec![loc(0, 1, a, 10)],
        }];
        let (lost, reason) = fetcher.fetch_all(&fetch).await.unwrap_err();
        assert_eq!(lost.len(), 1);
        assert!(reason.contains("3 of the block's 10 bytes"), "{reason}");
        // A fetcher that accepts at most 8 bytes does not read 10.
        let small = Arc::new(PeerFetcher::new(
            ep_b,
            secret,
            8,
            2,
            ShuffleStore::default(),
        ));
        let (_, reason) = small.fetch_all(&fetch).await.unwrap_err();
        assert!(reason.contains("10") && reason.contains("8"), "{reason}");
        server.abort();
    }

    /// A holder asked for a block above its own bulk limit refuses it (the
    /// stream ends without a reply; the link stays, the fetcher broke no
    /// rule): the fetcher gets a fetch failure, not the block.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_holder_refuses_a_block_above_its_limit() {
        let secret = [5u8; 32];
        let (ep_a, a) = endpoint();
        let store_a = ShuffleStore::default();
        store_a
            .put(1, 0, vec![b"small".to_vec(), b"too large".to_vec()])
            .unwrap();
        // The holder serves at most 8 bytes per block.
        let server = tokio::spawn(serve_peers(ep_a, store_a, secret, 8, Default::default()));
        let (ep_b, _) = endpoint();
        let fetcher = Arc::new(PeerFetcher::new(
            ep_b,
            secret,
            1 << 20,
            2,
            ShuffleStore::default(),
        ));
        let fetch = |reduce, size| {
            vec![ShuffleFetch {
                shuffle: 1,
                reduce,
                maps: vec![loc(0, 1, a, size)],
            }]
        };
        let got = fetcher.fetch_all(&fetch(0, 5)).await.unwrap();
        assert_eq!(contents(&got[&(1, 0)]), vec![b"small".to_vec()]);
        let (lost, reason) = fetcher.fetch_all(&fetch(1, 9)).await.unwrap_err();
        assert_eq!(
            lost,
            vec![LostBlock {
                shuffle: 1,
                map: 0,
                executor: 1
            }]
        );
        assert!(reason.contains("without a reply"), "{reason}");
        // The link is kept: the next fetch on it is served.
        let got = fetcher.fetch_all(&fetch(0, 5)).await.unwrap();
        assert_eq!(contents(&got[&(1, 0)]), vec![b"small".to_vec()]);
        server.abort();
    }

    /// Peers that pass the handshake and then break the protocol (garbage,
    /// oversized, truncated, wrong-kind or stalled requests, a
    /// unidirectional stream): each link is closed with `CLOSE_PROTOCOL`
    /// and counted once, and an honest fetcher's link is served
    /// throughout.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn peers_breaking_the_protocol_are_dropped_counted_and_others_served() {
        let secret = [9u8; 32];
        let (ep_a, a) = endpoint();
        let store_a = ShuffleStore::default();
        store_a.put(1, 0, vec![b"abc".to_vec()]).unwrap();
        let dropped = Arc::new(AtomicU64::new(0));
        let server = tokio::spawn(serve_peers(ep_a, store_a, secret, 1 << 20, dropped.clone()));
        let (ep_b, _) = endpoint();
        let fetcher = Arc::new(PeerFetcher::new(
            ep_b,
            secret,
            1 << 20,
            2,
            ShuffleStore::default(),
        ));
        let fetch = vec![ShuffleFetch {
            shuffle: 1,
            reduce: 0,
            maps: vec![loc(0, 1, a, 3)],
        }];
        fetcher.fetch_all(&fetch).await.unwrap();
        let framed = |body: &[u8]| {
            let mut f = (body.len() as u32).to_be_bytes().to_vec();
            f.extend_from_slice(body);
            f
        };
        let wrong_kind = framed(&transport::encode(&FetchReply::Missing).unwrap());
        let preamble = transport::preamble(transport::PROTOCOL_VERSION, &secret, Role::Executor);
        // (what, bytes, finish the stream after them, on a uni stream)
        let attacks: Vec<(&str, Vec<u8>, bool, bool)> = vec![
            ("garbage", framed(&[0xc1; 5]), true, false),
            ("oversized", u32::MAX.to_be_bytes().to_vec(), false, false),
            ("truncated header", vec![0, 0], true, false),
            ("truncated body", vec![0, 0, 0, 64, 1, 2, 3], true, false),
            ("a reply as request", wrong_kind, true, false),
            ("a second preamble", preamble.to_vec(), true, false),
            ("stalled header", vec![0], false, false),
            ("unidirectional stream", framed(&[0x90]), true, true),
        ];
        let mut runs = JoinSet::new();
        for (what, bytes, finish, uni) in attacks.clone() {
            runs.spawn(async move {
                let t = Duration::from_secs(10);
                let conn = transport::connect_peer(a.addr, &a.fingerprint, &secret, t)
                    .await
                    .unwrap();
                let mut send = if uni {
                    conn.open_uni().await.unwrap()
                } else {
                    conn.open_bi().await.unwrap().0
                };
                send.write_all(&bytes).await.unwrap();
                if finish {
                    send.finish().unwrap();
                }
                let reason = tokio::time::timeout(Duration::from_secs(30), conn.closed())
                    .await
                    .unwrap_or_else(|_| panic!("{what}: the link was not dropped"));
                (what, reason)
            });
        }
        while let Some(done) = runs.join_next().await {
            let (what, reason) = done.unwrap();
            // A close lost on a busy loopback arrives as a stateless
            // reset; the count below says why the link was closed.
            assert!(
                matches!(reason, quinn::ConnectionError::ApplicationClosed(ref c)
                    if c.error_code == transport::CLOSE_PROTOCOL.into())
                    || matches!(reason, quinn::ConnectionError::Reset),
                "{what}: {reason:?}"
            );
        }
        assert_eq!(dropped.load(Ordering::Relaxed), attacks.len() as u64);
        // The honest link was not disturbed and is still served.
        let got = fetcher.fetch_all(&fetch).await.unwrap();
        assert_eq!(contents(&got[&(1, 0)]), vec![b"abc".to_vec()]);
        server.abort();
    }
}

//! Hash shuffle between executors, as in Spark.
//!
//! * A map task (`Action::ShuffleWrite`) buckets its partition and keeps
//!   the buckets in its executor's [`ShuffleStore`]; the driver learns only
//!   the bucket sizes and which executor holds them ([`MapOutputs`]).
//! * Every executor serves its store on a peer endpoint of its own
//!   ([`serve_peers`]): QUIC with a self-signed certificate whose
//!   fingerprint the driver relays, plus the cluster secret in the
//!   preamble, so a peer is as authenticated as the driver link.
//! * A reduce task arrives with the locations of its blocks; the executor
//!   fetches them ([`PeerFetcher`]) before computing, reading its own
//!   blocks locally. A failed fetch is reported as a fetch failure: the
//!   driver forgets the lost outputs, recomputes them from lineage and
//!   reruns the task.

mod block;
mod peer;
mod store;
mod tracker;

pub(crate) use block::Block;
pub(crate) use peer::{
    bind_peer_endpoint, request_block, serve_peers, PeerFetcher, BLOCK_TIMEOUT, HANDSHAKE_TIMEOUT,
};
pub(crate) use store::ShuffleStore;
pub(crate) use tracker::{MapOutputs, Readiness};

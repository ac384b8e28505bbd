//! The driver actor's messages ([`DriverMsg`]) and the stage tasks
//! ([`StageTask`]) that job planners hand it.

use std::time::Instant;

use tokio::sync::oneshot;

use crate::connection::{Connection, RecvHalf, SendHalf};
use crate::error::Result;
use crate::plan::Plan;
use crate::protocol::{Action, ClusterStatus, PeerAddr, ShuffleFetch, TaskOutput, TaskReport};

/// One task of a stage as the job planner hands it to the actor.
#[derive(Clone)]
pub(crate) struct StageTask {
    /// The partition it computes.
    pub(crate) partition: u32,
    /// The lineage that computes it.
    pub(crate) plan: Plan,
    /// What to do with the partition.
    pub(crate) action: Action,
    /// Shipped inputs (parallelized data).
    pub(crate) inputs: crate::protocol::Inputs,
    /// `(dataset, partition)`s it reads: run it where one is cached.
    pub(crate) prefer: Vec<(u64, u32)>,
    /// `(shuffle, reduce partition)` blocks it reads: it runs once they
    /// all have a location, and is told where they are.
    pub(crate) reads: Vec<(u64, u32)>,
    /// Blocks whose locations the caller knows (parameter shards): fetched
    /// as given; a failed fetch fails the stage at once (the caller
    /// recovers), nothing is recomputed.
    pub(crate) fetches: Vec<ShuffleFetch>,
    /// Run only on this executor (the host of a parameter shard); the
    /// stage fails if it is gone.
    pub(crate) pin: Option<u64>,
}

/// Where a stage's outputs (or its failure) go.
pub(crate) type StageReply = oneshot::Sender<Result<Vec<TaskOutput>>>;

/// Messages of the driver actor.
pub(crate) enum DriverMsg {
    /// An executor passed the handshake and sent `Register`: give it an id
    /// and a link actor.
    Joined {
        name: String,
        cores: u32,
        pid: u32,
        peer: PeerAddr,
        conn: Connection,
        send: SendHalf,
        recv: RecvHalf,
    },
    /// Executor `id` heartbeated; its peer endpoint has dropped
    /// `dropped_peer_links` links so far.
    Heartbeat { id: u64, dropped_peer_links: u64 },
    /// Executor `id` reported a task's result.
    Report(u64, TaskReport),
    /// Run a stage: one task per partition.
    RunStage {
        job: u64,
        stage: u32,
        tasks: Vec<StageTask>,
        reply: StageReply,
    },
    /// The map stage of `shuffle`: one task per map partition; only those
    /// without an output (and not being recomputed) run.
    RunMapStage {
        job: u64,
        stage: u32,
        shuffle: u64,
        tasks: Vec<StageTask>,
        reply: StageReply,
    },
    /// No dataset reads `shuffle` any more: forget it, executors drop it.
    FreeShuffle(u64),
    /// Executors drop these untracked blocks (parameter-shard traffic).
    FreeBlocks(Vec<u64>),
    /// Live executors (excluded ones too: they still hold their blocks
    /// and shards), and their peer endpoints.
    Members(oneshot::Sender<Vec<(u64, PeerAddr)>>),
    /// Membership and scheduler counters.
    Status(oneshot::Sender<ClusterStatus>),
    /// A connection failed the handshake (counted).
    Refused,
    /// A peer that passed the handshake broke the protocol (a malformed,
    /// oversized, truncated or unexpected frame: before it was served, on
    /// a client session's request stream, or on a registered executor's
    /// control or report streams): its connection was closed.
    LinkDropped,
    /// Every heartbeat interval: heartbeats out, losses, exclusions
    /// expired, starved stages failed.
    Tick,
    /// Every [`WATCH_PERIOD`](super::membership::WATCH_PERIOD): probe executors whose heartbeat is late.
    Watch,
    /// A probe sent at this instant found nothing listening at executor
    /// `id`'s port any more (its host answered ICMP port unreachable): its
    /// process is gone, unless it heartbeated since.
    Gone(u64, Instant, String),
    /// Another executor's probe of executor `id` was refused (see
    /// [`ToExecutor::Probe`](crate::protocol::ToExecutor::Probe)): as `Gone`, from the driver's last request.
    GoneReported(u64, String),
    /// Shut executors down, then stop.
    Shutdown,
    /// Test hook: make an executor's link actor panic.
    #[cfg(test)]
    CrashLink(u64),
}

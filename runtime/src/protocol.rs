//! Messages exchanged between driver, executors and clients.

use std::collections::HashMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::plan::Plan;

/// Inputs of a task by `(plan node id, partition of that node)`: the
/// driver ships parallelize data; the executor adds the shuffle blocks it
/// fetched (one blob per map partition, in map order), as they arrived.
pub(crate) type Inputs = HashMap<(u64, u32), Vec<crate::shuffle::Block>>;

/// Identifies one attempt of one task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub(crate) struct TaskKey {
    pub(crate) job: u64,
    pub(crate) stage: u32,
    pub(crate) partition: u32,
    pub(crate) attempt: u32,
}

impl std::fmt::Display for TaskKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{}/{}#{}",
            self.job, self.stage, self.partition, self.attempt
        )
    }
}

/// What a task does with its computed partition.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Action {
    Count,
    Collect,
    Take(u64),
    Fold {
        name: String,
        zero: Option<Vec<u8>>,
    },
    Foreach {
        name: String,
        args: Vec<u8>,
    },
    /// Bucket the partition for shuffle `shuffle` into `partitions`
    /// reduce partitions and keep the buckets in the executor's store.
    ShuffleWrite {
        shuffle: u64,
        name: String,
        partitions: u32,
    },
    /// Gradients (or an evaluation) of a registered trainer on some
    /// elements of the partition.
    Train(crate::train::TrainRequest),
    /// An operation on a parameter shard hosted by the executor.
    Shard(crate::train::ShardOp),
}

/// A unit of work: compute one partition of `plan`, then apply `action`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Task {
    pub(crate) key: TaskKey,
    pub(crate) plan: Plan,
    pub(crate) partition: u32,
    pub(crate) action: Action,
    /// Shipped inputs: parallelize data.
    pub(crate) inputs: Inputs,
    /// Shuffle blocks to fetch (from peers or the local store) before
    /// computing.
    pub(crate) fetches: Vec<ShuffleFetch>,
}

/// The blocks of one reduce partition of one shuffle, and where they are.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ShuffleFetch {
    pub(crate) shuffle: u64,
    pub(crate) reduce: u32,
    /// One entry per map partition, in map order.
    pub(crate) maps: Vec<MapLoc>,
}

/// Where map partition `map`'s output lives.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct MapLoc {
    pub(crate) map: u32,
    pub(crate) executor: u64,
    pub(crate) peer: PeerAddr,
    /// Size in bytes of the block for the fetch's reduce partition.
    pub(crate) size: u64,
}

/// How to reach an executor's peer endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PeerAddr {
    pub(crate) addr: SocketAddr,
    /// SHA-256 of the executor's self-signed peer certificate.
    pub(crate) fingerprint: [u8; 32],
}

/// A shuffle block a reduce task could not get.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LostBlock {
    pub(crate) shuffle: u64,
    pub(crate) map: u32,
    pub(crate) executor: u64,
}

/// Why a task failed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum TaskFailure {
    /// The task's own error or panic: counts against its attempts.
    Failed(String),
    /// Shuffle blocks could not be fetched (peer gone, unreachable, block
    /// missing): the map outputs are recomputed and the task rerun.
    FetchFailed {
        lost: Vec<LostBlock>,
        reason: String,
    },
}

impl std::fmt::Display for TaskFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TaskFailure::Failed(m) => f.write_str(m),
            TaskFailure::FetchFailed { lost, reason } => {
                write!(f, "fetch failed ({} blocks): {reason}", lost.len())
            }
        }
    }
}

/// Peer → peer: one shuffle block, on its own bidirectional stream.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct FetchRequest {
    pub(crate) shuffle: u64,
    pub(crate) map: u32,
    pub(crate) reduce: u32,
}

/// The answer to a [`FetchRequest`], on the same stream: a frame, then
/// for [`FetchReply::Block`] that many raw bytes (no re-encoding of the
/// block on either side).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum FetchReply {
    /// The block's length in bytes; the block follows the frame.
    Block(u64),
    Missing,
}

/// A task's result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum TaskOutput {
    Count(u64),
    Data(#[serde(with = "serde_bytes")] Vec<u8>),
    Folded(Option<Vec<u8>>),
    Done,
    /// Map side of a shuffle: the buckets stay on the executor; only their
    /// sizes (by reduce partition) are reported.
    ShuffleWritten {
        sizes: Vec<u64>,
    },
    /// Summed gradients (little-endian f32 bytes, empty for an
    /// evaluation), batch statistics and the model's buffers.
    Train {
        #[serde(with = "serde_bytes")]
        grads: Vec<u8>,
        stats: crate::train::BatchStats,
        /// The model's buffers after the pass (little-endian f32; empty
        /// for models without any and for evaluations).
        #[serde(with = "serde_bytes", default)]
        buffers: Vec<u8>,
        /// With executor-hosted shards: the executor whose block store
        /// holds this share's gradient slices (`grads` is then empty).
        #[serde(default)]
        stored_on: Option<u64>,
        /// Where the task's time went (for the dashboard's split of an
        /// iteration).
        #[serde(default)]
        timing: crate::train::TaskTiming,
    },
}

/// Executor → driver, on the control stream.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ToDriver {
    Register {
        name: String,
        cores: u32,
        pid: u32,
        peer: PeerAddr,
    },
    /// Every heartbeat interval. `dropped_peer_links`: how many links
    /// this executor's peer endpoint has dropped so far for breaking the
    /// protocol (a running total, version 8).
    Heartbeat {
        dropped_peer_links: u64,
    },
    Leave,
    /// A probe of executor `executor` at `addr` (asked with
    /// [`ToExecutor::Probe`]) was refused by its host: its process is gone.
    ProbeRefused {
        executor: u64,
        addr: SocketAddr,
    },
}

/// Executor → driver, each on its own unidirectional stream.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct TaskReport {
    pub(crate) key: TaskKey,
    pub(crate) result: Result<TaskOutput, TaskFailure>,
    pub(crate) cached: Vec<(u64, u32)>,
}

/// Driver → executor, on the control stream.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ToExecutor {
    Registered {
        executor_id: u64,
        heartbeat_ms: u64,
        timeout_ms: u64,
    },
    Heartbeat,
    Shutdown,
    /// Drop the blocks of a shuffle no dataset reads any more.
    FreeShuffle {
        shuffle: u64,
    },
    /// The executor whose peer endpoint is `peer` is lost: close any link
    /// to it, so fetches from it fail now instead of when the link idles
    /// out.
    PeerLost {
        peer: SocketAddr,
    },
    /// Executor `executor`, at `addr`, has gone quiet: probe it (a
    /// datagram on a socket connected to `addr`) and say if its host
    /// refuses it ([`ToDriver::ProbeRefused`]).
    Probe {
        executor: u64,
        addr: SocketAddr,
    },
}

/// Client → driver: the first frame on a client's control stream, and the
/// one frame opening each further bidirectional stream of a
/// [`ClientRequest::Session`].
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ClientRequest {
    /// Answered with a [`ClusterStatus`] on the same stream.
    Status,
    /// Only on the control stream: keep the connection; every further
    /// request comes on a bidirectional stream of its own.
    Session,
    /// Queue a job: answered with `Result<JobInfo, WireError>`.
    Submit { kind: String, settings: String },
    /// Every job: answered with `Vec<JobInfo>`.
    Jobs,
    /// One job: answered with `Result<JobInfo, WireError>`.
    Job { id: u64 },
    /// The job's output from line `from_line` on, then live: a stream of
    /// `Result<JobEvent, WireError>` frames ending with
    /// [`crate::jobs::JobEvent::Finished`] (or with `follow: false`, once
    /// the lines so far are sent).
    Follow {
        id: u64,
        from_line: u64,
        follow: bool,
    },
    /// Cancel a job: answered with `Result<JobInfo, WireError>`.
    Cancel { id: u64 },
    /// Output `name` of a job: answered with `Result<FileHeader,
    /// WireError>`, then the file's `len` raw bytes.
    Fetch { id: u64, name: String },
    /// A published data file, by SHA-256 (executors staging a job's data):
    /// answered like `Fetch`.
    Stage { sha256: [u8; 32] },
}

/// The header before a fetched file's raw bytes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct FileHeader {
    /// Bytes that follow.
    pub(crate) len: u64,
    /// SHA-256 of those bytes.
    pub(crate) sha256: [u8; 32],
}

/// An error answered to a client request, as the client's
/// [`crate::Error`] variant.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum WireError {
    JobsUnavailable(String),
    SubmissionRefused {
        kind: String,
        reason: String,
    },
    UnknownJob(u64),
    JobFinished {
        id: u64,
        state: String,
    },
    JobOutput {
        id: u64,
        output: String,
        reason: String,
    },
    Other(String),
}

impl From<crate::Error> for WireError {
    fn from(e: crate::Error) -> Self {
        use crate::Error as E;
        match e {
            E::JobsUnavailable { reason } => WireError::JobsUnavailable(reason),
            E::SubmissionRefused { kind, reason } => WireError::SubmissionRefused { kind, reason },
            E::UnknownJob { id } => WireError::UnknownJob(id),
            E::JobFinished { id, state } => WireError::JobFinished { id, state },
            E::JobOutput { id, output, reason } => WireError::JobOutput { id, output, reason },
            other => WireError::Other(crate::error::error_chain(&other)),
        }
    }
}

impl From<WireError> for crate::Error {
    fn from(e: WireError) -> Self {
        use crate::Error as E;
        match e {
            WireError::JobsUnavailable(reason) => E::JobsUnavailable { reason },
            WireError::SubmissionRefused { kind, reason } => E::SubmissionRefused { kind, reason },
            WireError::UnknownJob(id) => E::UnknownJob { id },
            WireError::JobFinished { id, state } => E::JobFinished { id, state },
            WireError::JobOutput { id, output, reason } => E::JobOutput { id, output, reason },
            WireError::Other(reason) => E::DriverAnswer { reason },
        }
    }
}

/// One executor as the driver sees it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ExecutorStatus {
    /// Driver-assigned id.
    pub id: u64,
    /// The executor's name (host/pid unless given).
    pub name: String,
    /// Its address as the driver sees it.
    pub addr: String,
    /// Task slots.
    pub cores: u32,
    /// Tasks running now.
    pub running: u32,
    /// Tasks completed.
    pub completed: u64,
    /// Tasks failed.
    pub failed: u64,
    /// Excluded from scheduling after repeated failures.
    pub excluded: bool,
    /// Milliseconds since the last heartbeat.
    pub last_heartbeat_ms: u64,
    /// Its peer (shuffle) endpoint.
    #[serde(default)]
    pub peer_addr: String,
    /// Hex SHA-256 of its peer certificate.
    #[serde(default)]
    pub peer_fingerprint: String,
    /// Links its peer endpoint dropped so far because the peer (having
    /// passed the handshake) broke the protocol: garbage, oversized or
    /// truncated frames, a request of the wrong kind. As of its last
    /// heartbeat.
    #[serde(default)]
    pub dropped_peer_links: u64,
}

/// The cluster as the driver sees it (`kiln status`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// Live executors.
    pub executors: Vec<ExecutorStatus>,
    /// Executors declared lost so far.
    pub lost: u64,
    /// Executors that left gracefully so far.
    #[serde(default)]
    pub left: u64,
    /// Tasks queued and not yet running.
    pub pending_tasks: u64,
    /// Jobs finished (ok or failed).
    pub jobs_finished: u64,
    /// Connections refused at the handshake.
    pub refused_connections: u64,
    /// Connections to the driver that passed the handshake, then broke
    /// the protocol (garbage, oversized, truncated or unexpected frames,
    /// on the control stream, a bulk stream or a client session's request
    /// stream) and were closed. A registered executor dropped so is also
    /// counted in `lost`.
    #[serde(default)]
    pub dropped_links: u64,
    /// Links the executors' peer endpoints dropped for the same reasons:
    /// the sum of every executor's `dropped_peer_links`, including those
    /// of executors since lost or gone.
    #[serde(default)]
    pub dropped_peer_links: u64,
    /// Shuffles whose map-output locations the driver tracks (freed when
    /// no dataset reads them any more).
    #[serde(default)]
    pub live_shuffles: u64,
}

//! The dashboard's JSON API types: what `GET /api/...` answers (see
//! `docs/dashboard.md`). Every type derives `Serialize` and
//! `Deserialize`, so a program reading the API can decode it with these.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::jobs::JobInfo;

/// `GET /api/cluster`: the executors and the cluster's counters, as of the
/// driver's last published snapshot (every half second).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterView {
    /// When the snapshot was taken, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// Live executors (excluded ones included), by id.
    pub executors: Vec<ExecutorView>,
    /// Executors that were lost or left, newest first (the last 200).
    pub departed: Vec<DepartedView>,
    /// Executors lost since the driver started.
    pub lost: u64,
    /// Executors that left gracefully.
    pub left: u64,
    /// Tasks waiting for a slot.
    pub pending_tasks: u64,
    /// Connections refused at the handshake (bad token, wrong version).
    pub refused_connections: u64,
    /// Links dropped for breaking the protocol (executors and clients).
    pub dropped_links: u64,
    /// Bytes of published data files served to executors.
    pub staged_bytes: u64,
    /// Bytes on the wire by peer kind (`executor`, `client`,
    /// `checkpoint_pull`), sent and received by the driver.
    pub wire: BTreeMap<String, WireBytes>,
    /// The submitted job running now, if any.
    pub running_job: Option<u64>,
    /// Requests the dashboard refused: without the UI token, or (without
    /// a token) not to a loopback name.
    pub unauthorized_requests: u64,
}

/// Bytes sent and received.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct WireBytes {
    /// Sent by the driver.
    pub sent: u64,
    /// Received by the driver.
    pub received: u64,
}

/// One live executor.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExecutorView {
    /// Driver-assigned id.
    pub id: u64,
    /// Its name (`--name`, or host and pid).
    pub name: String,
    /// Where its control connection comes from.
    pub addr: String,
    /// Its peer endpoint (shuffle blocks, parameter shards).
    pub peer_addr: String,
    /// Task slots.
    pub cores: u32,
    /// `live` or `excluded` (after repeated task failures).
    pub state: String,
    /// Tasks running on it now.
    pub running: u32,
    /// Tasks it completed.
    pub completed: u64,
    /// Tasks that failed on it.
    pub failed: u64,
    /// Milliseconds since its last heartbeat, as of `at_ms`.
    pub last_heartbeat_ms: u64,
    /// Bytes the driver sent it on its link (UDP payload, QUIC and TLS
    /// included; 0 for in-memory executors).
    pub bytes_sent: u64,
    /// Bytes the driver received from it.
    pub bytes_received: u64,
    /// Peer links it dropped for breaking the protocol.
    pub dropped_peer_links: u64,
}

/// An executor that is gone.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DepartedView {
    /// Its id.
    pub id: u64,
    /// Its name.
    pub name: String,
    /// `lost` or `left`.
    pub state: String,
    /// Why (a heartbeat timeout, a refused probe, a graceful leave).
    pub reason: String,
    /// When, milliseconds since the Unix epoch.
    pub at_ms: u64,
}

/// `GET /api/jobs`: one line per submitted job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSummary {
    /// The job as its clients see it (state, times, progress, outputs).
    pub info: JobInfo,
    /// Stages started for it.
    pub stages: u64,
    /// Task attempts started for it.
    pub tasks: u64,
    /// Task attempts that failed.
    pub task_failures: u64,
    /// Training iterations recorded.
    pub iterations: u64,
    /// The latest iteration's loss, if it trains.
    pub latest_loss: Option<f64>,
}

/// `GET /api/jobs/{id}`: a job with its stages, tasks and failures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobDetail {
    /// The job as its clients see it.
    pub info: JobInfo,
    /// Counters and recent stages.
    pub activity: JobActivity,
}

/// What the scheduler did for one job.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JobActivity {
    /// Stages started.
    pub stages: u64,
    /// Stages that failed.
    pub stages_failed: u64,
    /// Task attempts started.
    pub tasks: u64,
    /// Task attempts that succeeded.
    pub tasks_succeeded: u64,
    /// Task attempts that failed (their error below).
    pub task_failures: u64,
    /// Attempts beyond a task's first (after a failure or a lost executor).
    pub retries: u64,
    /// Shuffle or parameter block fetches that failed.
    pub fetch_failures: u64,
    /// Stages running now.
    pub running: Vec<StageView>,
    /// The last 20 stages that ended, newest first.
    pub recent: Vec<StageView>,
    /// The last 100 task failures, newest first.
    pub failures: Vec<TaskFailureView>,
    /// Executors excluded while it ran.
    pub exclusions: Vec<ExclusionView>,
}

/// One stage of a job.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StageView {
    /// The action (dataset job) it belongs to.
    pub action: u64,
    /// Its number within the action.
    pub stage: u32,
    /// `running`, `succeeded` or `failed`.
    pub state: String,
    /// When it was queued, milliseconds since the Unix epoch.
    pub started_ms: u64,
    /// When it ended (0: running).
    pub finished_ms: u64,
    /// Why it failed.
    pub error: Option<String>,
    /// Tasks (one per partition) done.
    pub done: u32,
    /// Its tasks, by partition (the first 1000).
    pub tasks: Vec<TaskView>,
}

/// One task (a partition of a stage) over its attempts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskView {
    /// The partition.
    pub partition: u32,
    /// Attempts started.
    pub attempts: u32,
    /// `queued`, `running`, `succeeded`, `failed` (its last attempt; it
    /// may be retried) or `requeued` (its executor was lost).
    pub state: String,
    /// The executor of its last attempt.
    pub executor: Option<u64>,
    /// Duration of its last finished attempt, milliseconds.
    pub duration_ms: u64,
    /// The error of its last failed attempt.
    pub error: Option<String>,
}

/// A failed task attempt.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskFailureView {
    /// The action.
    pub action: u64,
    /// The stage.
    pub stage: u32,
    /// The partition.
    pub partition: u32,
    /// The attempt (0-based).
    pub attempt: u32,
    /// Where it ran.
    pub executor: u64,
    /// `failed` (the task's error) or `fetch_failed` (a peer lost blocks).
    pub kind: String,
    /// The error text, its causes included.
    pub error: String,
    /// When, milliseconds since the Unix epoch.
    pub at_ms: u64,
}

/// An executor excluded after repeated task failures.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExclusionView {
    /// Its id.
    pub executor: u64,
    /// Its name.
    pub name: String,
    /// Consecutive failures that excluded it.
    pub failures: u32,
    /// When, milliseconds since the Unix epoch.
    pub at_ms: u64,
}

/// `GET /api/jobs/{id}/training`: a training job's curves.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainingView {
    /// Iterations recorded in all (the series below keeps at most 2048,
    /// thinned evenly once longer).
    pub iterations_recorded: u64,
    /// One point per kept iteration, oldest first.
    pub iterations: Vec<IterationPoint>,
    /// One point per epoch, oldest first.
    pub epochs: Vec<EpochPoint>,
}

/// One training iteration, as the driver measured it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IterationPoint {
    /// The global iteration number (1-based: after this many updates).
    pub iteration: u64,
    /// The epoch it belongs to (0-based).
    pub epoch: u64,
    /// Mean loss over the batch.
    pub loss: f64,
    /// The learning rate applied.
    pub learning_rate: f64,
    /// Samples in the batch.
    pub samples: u64,
    /// Wall time of the iteration on the driver, seconds.
    pub seconds: f64,
    /// Of `seconds`: forward and backward passes, on the slowest share
    /// (measured on its executor).
    pub compute_seconds: f64,
    /// Of `seconds`: parameter synchronisation (fetching weights, applying
    /// gradient steps on the parameter shards, on the driver or the
    /// holders), on the critical path.
    pub sync_seconds: f64,
    /// Of `seconds`: writing a checkpoint.
    pub checkpoint_seconds: f64,
    /// Of `seconds`: the rest (scheduling, sending tasks and reports,
    /// waiting for slots).
    pub waiting_seconds: f64,
    /// `samples / seconds`.
    pub samples_per_second: f64,
    /// When it ended, milliseconds since the Unix epoch.
    pub at_ms: u64,
}

/// One epoch's summary and evaluation metrics.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EpochPoint {
    /// The epoch (1-based: epochs finished).
    pub epoch: u64,
    /// The global iteration it ended at.
    pub iteration: u64,
    /// Mean training loss over the epoch.
    pub loss: f64,
    /// Training throughput over the epoch.
    pub samples_per_second: f64,
    /// Evaluation metrics by name (accuracy, wer, cer, map, ...).
    pub metrics: BTreeMap<String, f64>,
    /// When it was recorded, milliseconds since the Unix epoch.
    pub at_ms: u64,
}

/// `GET /api/jobs/{id}/checkpoints`: the checkpoints a job wrote.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CheckpointsView {
    /// The store they are in, on the driver's host.
    pub store: Option<String>,
    /// Kept checkpoints, oldest first (retention removes old ones).
    pub kept: Vec<CheckpointView>,
    /// The checkpoint a resume of this store would start from: the
    /// newest kept one whose last check verified.
    pub resume_from: Option<u64>,
    /// Checkpoints written in all.
    pub written: u64,
    /// Checkpoints removed by retention.
    pub removed: u64,
}

/// One checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CheckpointView {
    /// Its id in the store.
    pub id: u64,
    /// The iteration it holds (updates applied).
    pub iteration: u64,
    /// The epoch it holds.
    pub epoch: u64,
    /// Bytes of its blobs.
    pub bytes: u64,
    /// Seconds it took to write.
    pub write_seconds: f64,
    /// Whether its blobs' lengths and checksums verified the last time
    /// they were checked: at commit (a checkpoint that fails there is
    /// never committed) or by `POST …/checkpoints/{id}/verify`, which
    /// reads the files again.
    pub verified: bool,
    /// When they were last checked, milliseconds since the Unix epoch.
    pub verified_ms: u64,
    /// Why the last check failed.
    pub verify_error: Option<String>,
    /// When it was committed, milliseconds since the Unix epoch.
    pub at_ms: u64,
}

/// The body of every error answer (`404`, `401`, `400`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiError {
    /// The HTTP status.
    pub status: u16,
    /// What went wrong, naming the thing asked for.
    pub error: String,
}

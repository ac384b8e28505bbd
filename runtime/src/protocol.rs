//! Messages exchanged between driver, executors and clients.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::plan::Plan;

/// Inputs shipped with a task: parallelize data and shuffle blobs, by plan
/// node id.
pub(crate) type Inputs = HashMap<u64, Vec<Vec<u8>>>;

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
    ShuffleWrite {
        name: String,
        partitions: u32,
    },
    /// Gradients (or an evaluation) of a registered trainer on some
    /// elements of the partition.
    Train(crate::train::TrainRequest),
}

/// A unit of work: compute one partition of `plan`, then apply `action`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Task {
    pub(crate) key: TaskKey,
    pub(crate) plan: Plan,
    pub(crate) partition: u32,
    pub(crate) action: Action,
    /// Shipped inputs: parallelize data and shuffle blobs, by plan node id.
    pub(crate) inputs: Inputs,
}

/// A task's result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum TaskOutput {
    Count(u64),
    Data(#[serde(with = "serde_bytes")] Vec<u8>),
    Folded(Option<Vec<u8>>),
    Done,
    Shuffle(Vec<Vec<u8>>),
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
    },
}

/// Executor → driver, on the control stream.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ToDriver {
    Register { name: String, cores: u32, pid: u32 },
    Heartbeat,
    Leave,
}

/// Executor → driver, each on its own unidirectional stream.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct TaskReport {
    pub(crate) key: TaskKey,
    pub(crate) result: Result<TaskOutput, String>,
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
}

/// Client → driver.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ClientRequest {
    Status,
}

/// One executor as the driver sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
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
}

/// The cluster as the driver sees it (`kiln status`).
#[derive(Debug, Clone, Serialize, Deserialize)]
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
}

//! What the driver's actors and trainers tell the monitor, and the sink
//! they tell it through: an unbounded channel, so sending never waits
//! and never touches the monitor's state (the fold task applies events).

use tokio::sync::mpsc;

use super::view::{EpochPoint, IterationPoint};
use crate::protocol::ClusterStatus;

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Where a task attempt ended.
#[derive(Debug, Clone)]
pub(crate) enum TaskOutcome {
    Succeeded,
    /// The task's error, its causes included.
    Failed(String),
    /// A peer lost blocks it fetched.
    FetchFailed(String),
    /// Its executor was lost; the task goes back to the queue.
    Requeued,
}

/// Identifies one task attempt.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Attempt {
    pub(crate) action: u64,
    pub(crate) stage: u32,
    pub(crate) partition: u32,
    pub(crate) attempt: u32,
    pub(crate) executor: u64,
}

/// A committed checkpoint.
#[derive(Debug, Clone)]
pub(crate) struct CheckpointCommitted {
    pub(crate) store: String,
    pub(crate) id: u64,
    pub(crate) iteration: u64,
    pub(crate) epoch: u64,
    pub(crate) bytes: u64,
    pub(crate) write_seconds: f64,
    /// Older checkpoints retention removed with this commit.
    pub(crate) removed: Vec<u64>,
    /// Its blobs (names, lengths, checksums): what a later verification
    /// checks the files against.
    pub(crate) blobs: Vec<crate::checkpoint::BlobRef>,
}

/// Bytes a finished connection moved, by peer kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum WireKind {
    /// Driver–executor control links.
    Executor,
    /// Clients (submit, follow, status).
    Client,
    /// The driver pulling checkpoint blobs from executors' peer endpoints.
    CheckpointPull,
}

impl WireKind {
    pub(crate) fn label(self) -> &'static str {
        match self {
            WireKind::Executor => "executor",
            WireKind::Client => "client",
            WireKind::CheckpointPull => "checkpoint_pull",
        }
    }
}

/// One thing that happened on the driver.
#[derive(Debug, Clone)]
pub(crate) enum Event {
    /// The driver actor's periodic snapshot of membership and scheduling,
    /// with the bytes of every live executor link `(sent, received)` in
    /// the order of `status.executors`.
    Cluster {
        status: ClusterStatus,
        link_bytes: Vec<(u64, u64)>,
    },
    ExecutorGone {
        id: u64,
        name: String,
        reason: String,
        left: bool,
        /// Bytes its link moved in all.
        bytes: (u64, u64),
    },
    ExecutorExcluded {
        id: u64,
        name: String,
        failures: u32,
    },
    StageQueued {
        action: u64,
        stage: u32,
        partitions: u32,
    },
    TaskStarted(Attempt),
    TaskEnded(Attempt, TaskOutcome),
    StageEnded {
        action: u64,
        stage: u32,
        error: Option<String>,
    },
    JobStarted(u64),
    JobEnded(u64),
    Iteration(IterationPoint),
    Epoch {
        job: u64,
        point: EpochPoint,
    },
    Checkpoint(CheckpointCommitted),
    /// A connection of kind `kind` closed after moving these bytes.
    Wire {
        kind: WireKind,
        sent: u64,
        received: u64,
    },
}

/// Where events go: the monitor's channel, or nowhere (a scheduler in a
/// unit test, a driver whose monitor stopped).
#[derive(Debug, Clone, Default)]
pub(crate) struct MonitorSink(Option<mpsc::UnboundedSender<Event>>);

impl MonitorSink {
    pub(crate) fn new(tx: mpsc::UnboundedSender<Event>) -> Self {
        MonitorSink(Some(tx))
    }

    /// Hands `event` to the monitor; never waits.
    pub(crate) fn send(&self, event: Event) {
        if let Some(tx) = &self.0 {
            let _ = tx.send(event);
        }
    }

    /// Records the bytes a finished QUIC connection of kind `kind` moved.
    pub(crate) fn connection_closed(&self, kind: WireKind, conn: &quinn::Connection) {
        let stats = conn.stats();
        self.send(Event::Wire {
            kind,
            sent: stats.udp_tx.bytes,
            received: stats.udp_rx.bytes,
        });
    }
}

/// Reports a long-lived connection's bytes as it goes: each call sends
/// what moved since the last one (a client that exits without closing its
/// connection is only seen gone after the idle timeout).
#[derive(Debug)]
pub(crate) struct WireMeter {
    kind: WireKind,
    reported: (u64, u64),
}

impl WireMeter {
    /// A meter for a connection of kind `kind`, nothing reported yet.
    pub(crate) fn new(kind: WireKind) -> Self {
        WireMeter {
            kind,
            reported: (0, 0),
        }
    }

    /// Sends the bytes moved since the last report, given the connection's
    /// totals `(sent, received)`.
    pub(crate) fn report(&mut self, sink: &MonitorSink, totals: (u64, u64)) {
        let sent = totals.0.saturating_sub(self.reported.0);
        let received = totals.1.saturating_sub(self.reported.1);
        if sent > 0 || received > 0 {
            self.reported = (self.reported.0.max(totals.0), self.reported.1.max(totals.1));
            sink.send(Event::Wire {
                kind: self.kind,
                sent,
                received,
            });
        }
    }
}

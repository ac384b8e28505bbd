//! Jobs submitted to a standing cluster: the driver queues them in order of
//! submission, runs them one at a time through a [`JobRunner`] the
//! embedding program installs ([`crate::Driver::accept_jobs`]), keeps each
//! job's output lines, progress and output files, and serves clients
//! ([`ClusterClient`]) that submit, follow, list, cancel and fetch.
//!
//! The runtime knows nothing of what a job does: a job is a kind name and
//! its settings as JSON text, and the runner decides (the `kiln` binary's
//! runner trains models). Clients are authenticated like executors (the
//! join token); see `docs/runtime-protocol.md` for the messages.
//!
//! A job keeps running when its client disconnects. Cancelling a running
//! job raises its [`JobContext::cancelled`] flag, which a well-behaved job
//! checks between steps; one still running [`CANCEL_GRACE`] later is
//! aborted.

mod client;
mod serve;
mod service;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use client::{ClusterClient, FetchedOutput};
pub(crate) use serve::{answer, read_request};
pub(crate) use service::JobService;

use crate::driver::Driver;
use crate::error::BoxError;

/// How long a cancelled job may take to stop by itself before its task is
/// aborted.
pub const CANCEL_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

/// Where a job stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobState {
    /// Waiting for the jobs submitted before it.
    Queued,
    /// Running now.
    Running,
    /// Finished without error.
    Succeeded,
    /// Finished with an error (its message).
    Failed(String),
    /// Cancelled before or while running.
    Cancelled,
}

impl JobState {
    /// Whether the job has ended (succeeded, failed or cancelled).
    pub fn is_finished(&self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed(_) | JobState::Cancelled
        )
    }

    /// One lower-case word: `queued`, `running`, `succeeded`, `failed`,
    /// `cancelled`.
    pub fn word(&self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed(_) => "failed",
            JobState::Cancelled => "cancelled",
        }
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JobState::Failed(e) => write!(f, "failed: {e}"),
            other => f.write_str(other.word()),
        }
    }
}

/// How far a running job is (what a client draws as a progress bar).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Steps done.
    pub done: u64,
    /// Steps in all (0: unknown).
    pub total: u64,
    /// A short status, e.g. the latest loss.
    pub message: String,
}

/// A job as the driver reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobInfo {
    /// Driver-assigned id, increasing in submission order.
    pub id: u64,
    /// The job kind.
    pub kind: String,
    /// A one-line description (from the runner).
    pub description: String,
    /// Where it stands.
    pub state: JobState,
    /// Submission, start and end times, milliseconds since the Unix epoch
    /// (0: not yet).
    pub submitted_ms: u64,
    /// When it started running.
    pub started_ms: u64,
    /// When it finished.
    pub finished_ms: u64,
    /// Output lines so far.
    pub lines: u64,
    /// The latest progress report.
    pub progress: Option<Progress>,
    /// Names of the output files a client can fetch (e.g. `model`).
    pub outputs: Vec<String>,
    /// The job's directory on the driver's host.
    pub dir: String,
}

/// What a follower of a job receives, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum JobEvent {
    /// Output line number `n` (0-based).
    Line {
        /// Its number.
        n: u64,
        /// The text.
        text: String,
    },
    /// A progress report.
    Progress(Progress),
    /// The job ended; nothing follows.
    Finished(JobInfo),
}

/// A submission the runner accepted.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// The settings to run with (e.g. with relative paths resolved on the
    /// driver's host), JSON.
    pub settings: String,
    /// A one-line description for listings.
    pub description: String,
}

/// A future returned by a [`JobRunner`]: it fails with any error (a
/// `String` converts with `.into()` or `?`); the job's state shows the
/// error with its whole source chain.
pub type JobFuture = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>>;

/// What runs submitted jobs on a driver (the embedding program's job
/// kinds). Both methods are called on the driver's host.
pub trait JobRunner: Send + Sync + 'static {
    /// Checks a submission before it is queued: the kind exists, its
    /// settings decode (unknown settings are an error) and are valid, and
    /// what it reads exists on this host. The error is shown to the
    /// submitting client (with its whole source chain); nothing has
    /// touched an executor yet.
    fn accept(&self, kind: &str, settings: &str) -> Result<Accepted, BoxError>;

    /// Runs an accepted job to its end.
    fn run(&self, kind: String, settings: String, ctx: JobContext) -> JobFuture;
}

/// What a running job gets from the driver.
#[derive(Clone)]
pub struct JobContext {
    id: u64,
    driver: Driver,
    dir: PathBuf,
    service: Arc<JobService>,
    cancel: tokio::sync::watch::Receiver<bool>,
}

impl JobContext {
    pub(crate) fn new(
        id: u64,
        driver: Driver,
        dir: PathBuf,
        service: Arc<JobService>,
        cancel: tokio::sync::watch::Receiver<bool>,
    ) -> Self {
        JobContext {
            id,
            driver,
            dir,
            service,
            cancel,
        }
    }

    /// The job's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The driver, for building datasets.
    pub fn driver(&self) -> &Driver {
        &self.driver
    }

    /// The job's own directory on the driver's host (created before the
    /// job starts): where its outputs go.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Adds an output line (sent to followers, kept for `logs`).
    pub fn line(&self, text: impl Into<String>) {
        self.service.add_line(self.id, text.into());
    }

    /// Reports progress.
    pub fn progress(&self, progress: Progress) {
        self.service.set_progress(self.id, progress);
    }

    /// Records an epoch of a training job for the dashboard and
    /// `/metrics`: its mean training loss, throughput and evaluation
    /// metrics by name (`accuracy`, `wer`, `map`, ...). The iterations
    /// themselves are recorded by [`crate::DistributedTrainer`].
    pub fn record_epoch(&self, point: crate::monitor::view::EpochPoint) {
        self.service.monitor.send(crate::monitor::Event::Epoch {
            job: self.id,
            point,
        });
    }

    /// Offers `path` (a file the job wrote on the driver's host) to clients
    /// as output `name`; a later call with the same name replaces it.
    pub fn add_output(&self, name: &str, path: PathBuf) {
        self.service.add_output(self.id, name, path);
    }

    /// Whether the job was asked to stop.
    pub fn is_cancelled(&self) -> bool {
        *self.cancel.borrow()
    }

    /// Resolves once the job is asked to stop.
    pub async fn cancelled(&self) {
        let mut rx = self.cancel.clone();
        let _ = rx.wait_for(|c| *c).await;
    }
}

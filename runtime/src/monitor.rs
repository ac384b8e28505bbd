//! The driver's monitor: what the dashboard and `/metrics` show.
//!
//! The driver actor, the scheduler, the job service and trainers send
//! [`event::Event`]s through a [`MonitorSink`] (an unbounded channel:
//! sending never waits). One task folds them into a [`state::MonitorState`]
//! and the Prometheus [`metrics::Metrics`], behind a mutex that only that
//! task and the dashboard's handlers take, each for microseconds. The
//! handlers therefore read a copy of the driver's state, never the
//! actors' own, and a dashboard under load cannot slow scheduling: at
//! worst its view lags.

pub(crate) mod event;
mod metrics;
mod series;
mod state;
pub mod view;

use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::mpsc;
use tracing::warn;

pub(crate) use event::{
    Attempt, CheckpointCommitted, Event, MonitorSink, TaskOutcome, WireKind, WireMeter,
};
use metrics::Metrics;
use state::MonitorState;
use view::{
    CheckpointsView, ClusterView, ExecutorView, JobActivity, JobDetail, JobSummary, TrainingView,
};

use crate::error::{Error, Result};
use crate::jobs::{JobInfo, JobService, JobState};

struct Inner {
    state: MonitorState,
    metrics: Option<Metrics>,
}

/// A driver's monitor (see the module documentation): cheap to clone.
#[derive(Clone)]
pub struct Monitor {
    inner: Arc<Mutex<Inner>>,
    jobs: Arc<JobService>,
}

impl Monitor {
    /// The channel events reach a monitor through: the sink for the
    /// driver's parts, the receiver for [`Monitor::start`].
    pub(crate) fn channel() -> (MonitorSink, mpsc::UnboundedReceiver<Event>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (MonitorSink::new(tx), rx)
    }

    /// Starts the task (inside a tokio runtime) that folds the events of
    /// `rx` into the monitor's state; `jobs` are the driver's jobs.
    pub(crate) fn start(jobs: Arc<JobService>, mut rx: mpsc::UnboundedReceiver<Event>) -> Monitor {
        let metrics = Metrics::new()
            .map_err(|e| warn!(error = %e, "Prometheus metrics are off: the registry refused one"))
            .ok();
        let inner = Arc::new(Mutex::new(Inner {
            state: MonitorState::default(),
            metrics,
        }));
        let fold = inner.clone();
        let service = jobs.clone();
        tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                let Ok(mut g) = fold.lock() else { break };
                let Inner { state, metrics } = &mut *g;
                let job = state.cluster.running_job.unwrap_or(0);
                if let Some(m) = metrics.as_mut() {
                    m.observe(&event, job);
                }
                let snapshot = matches!(event, Event::Cluster { .. });
                state.apply(event);
                if snapshot {
                    let staged = service
                        .staged
                        .served
                        .load(std::sync::atomic::Ordering::Relaxed);
                    state.cluster.staged_bytes = staged;
                    if let Some(m) = metrics.as_mut() {
                        m.cluster(&state.cluster, staged);
                    }
                }
            }
        });
        Monitor { inner, jobs }
    }

    fn lock(&self) -> Result<MutexGuard<'_, Inner>> {
        self.inner
            .lock()
            .map_err(|_| Error::Poisoned { lock: "monitor" })
    }

    /// The cluster as of the last snapshot.
    pub fn cluster(&self) -> Result<ClusterView> {
        let g = self.lock()?;
        let mut view = g.state.cluster.clone();
        view.unauthorized_requests = g.metrics.as_ref().map_or(0, |m| m.unauthorized.get());
        Ok(view)
    }

    /// One live executor, or `None`.
    pub fn executor(&self, id: u64) -> Result<Option<ExecutorView>> {
        Ok(self
            .lock()?
            .state
            .cluster
            .executors
            .iter()
            .find(|e| e.id == id)
            .cloned())
    }

    /// The record of job 0: work run outside any submitted job.
    fn embedded_info() -> JobInfo {
        JobInfo {
            id: 0,
            kind: "embedded".into(),
            description: "work run by the program embedding the driver, outside submitted jobs"
                .into(),
            state: JobState::Running,
            submitted_ms: 0,
            started_ms: 0,
            finished_ms: 0,
            lines: 0,
            progress: None,
            outputs: Vec::new(),
            dir: String::new(),
        }
    }

    fn info(&self, id: u64, has_record: bool) -> Result<Option<JobInfo>> {
        if id == 0 {
            return Ok(has_record.then(Self::embedded_info));
        }
        Ok(self.jobs.list()?.into_iter().find(|j| j.id == id))
    }

    /// Every job, oldest first, with its counters (job 0 first when work
    /// ran outside submitted jobs).
    pub fn jobs(&self) -> Result<Vec<JobSummary>> {
        let mut infos = self.jobs.list()?;
        let g = self.lock()?;
        if g.state.jobs.contains_key(&0) {
            infos.insert(0, Self::embedded_info());
        }
        Ok(infos
            .into_iter()
            .map(|info| {
                let record = g.state.jobs.get(&info.id);
                let a = record.map(|r| &r.activity);
                JobSummary {
                    stages: a.map_or(0, |a| a.stages),
                    tasks: a.map_or(0, |a| a.tasks),
                    task_failures: a.map_or(0, |a| a.task_failures),
                    iterations: record.map_or(0, |r| r.iterations.seen()),
                    latest_loss: record.and_then(|r| r.iterations.last()).map(|p| p.loss),
                    info,
                }
            })
            .collect())
    }

    /// A job with its stages, tasks and failures, or `None` if no job has
    /// that id.
    pub fn job(&self, id: u64) -> Result<Option<JobDetail>> {
        let activity = self.lock()?.state.jobs.get(&id).map(|r| r.activity.clone());
        Ok(self.info(id, activity.is_some())?.map(|info| JobDetail {
            info,
            activity: activity.unwrap_or_else(JobActivity::default),
        }))
    }

    /// A job's training curves (the iterations after iteration `since`
    /// only; 0: all kept), or `None` if no job has that id.
    pub fn training(&self, id: u64, since: u64) -> Result<Option<TrainingView>> {
        let view = self.lock()?.state.jobs.get(&id).map(|r| r.training(since));
        Ok(self
            .info(id, view.is_some())?
            .map(|_| view.unwrap_or_default()))
    }

    /// A job's checkpoints, or `None` if no job has that id.
    pub fn checkpoints(&self, id: u64) -> Result<Option<CheckpointsView>> {
        let view = self
            .lock()?
            .state
            .jobs
            .get(&id)
            .map(|r| r.checkpoints.clone());
        Ok(self
            .info(id, view.is_some())?
            .map(|_| view.unwrap_or_default()))
    }

    /// Checks checkpoint `checkpoint` of job `job` again: reads each of its
    /// blob files and verifies its header, length and checksum against
    /// what the commit recorded (off the async threads), records the
    /// outcome and returns the checkpoint's view; `None` if the job or a
    /// kept checkpoint of that id does not exist.
    pub async fn verify_checkpoint(
        &self,
        job: u64,
        checkpoint: u64,
    ) -> Result<Option<view::CheckpointView>> {
        let found = {
            let g = self.lock()?;
            g.state.jobs.get(&job).and_then(|r| {
                Some((
                    r.checkpoints.store.clone()?,
                    r.blobs.get(&checkpoint)?.clone(),
                ))
            })
        };
        let Some((store, blobs)) = found else {
            return Ok(None);
        };
        let checked = tokio::task::spawn_blocking(move || {
            let dir = std::path::Path::new(&store);
            blobs
                .iter()
                .try_for_each(|b| crate::checkpoint::verify_blob(dir, checkpoint, b))
        })
        .await
        .map_err(|e| Error::BackgroundTask {
            task: format!("verifying checkpoint {checkpoint}"),
            source: e,
        })?;
        let mut g = self.lock()?;
        let Some(record) = g.state.jobs.get_mut(&job) else {
            return Ok(None);
        };
        let view = &mut record.checkpoints;
        let Some(k) = view.kept.iter_mut().find(|k| k.id == checkpoint) else {
            return Ok(None);
        };
        k.verified = checked.is_ok();
        k.verified_ms = event::now_ms();
        k.verify_error = checked.err().map(|e| e.to_string());
        let out = k.clone();
        view.resume_from = state::resume_from(view);
        Ok(Some(out))
    }

    /// Every metric in the Prometheus text exposition format.
    pub fn metrics_text(&self) -> Result<String> {
        match &self.lock()?.metrics {
            Some(m) => m.render().map_err(|e| Error::Metrics {
                reason: e.to_string(),
            }),
            None => Err(Error::Metrics {
                reason: "the metrics registry could not be built".into(),
            }),
        }
    }

    /// Counts a dashboard request refused for want of the token.
    pub(crate) fn unauthorized(&self) {
        if let Ok(g) = self.lock() {
            if let Some(m) = &g.metrics {
                m.unauthorized.inc();
            }
        }
    }
}

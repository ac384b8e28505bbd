//! [`MonitorState`]: the dashboard's picture of the driver, folded from
//! [`Event`]s. It is a copy: the driver's actors never read or lock it,
//! and the dashboard never reads theirs.
//!
//! Work is attributed to the submitted job running when it happened (jobs
//! run one at a time); work outside any submitted job (a program that
//! embeds the driver and runs datasets itself) goes to job 0.

use std::collections::{BTreeMap, HashMap, VecDeque};

use super::event::{now_ms, Attempt, CheckpointCommitted, Event, TaskOutcome, WireKind};
use super::series::Thinned;
use super::view::{
    CheckpointView, CheckpointsView, ClusterView, DepartedView, EpochPoint, ExclusionView,
    ExecutorView, IterationPoint, JobActivity, StageView, TaskFailureView, TaskView, TrainingView,
    WireBytes,
};

/// Departed executors kept.
const DEPARTED_KEPT: usize = 200;
/// Ended stages kept per job, in detail.
const RECENT_STAGES: usize = 20;
/// Task failures kept per job.
const FAILURES_KEPT: usize = 100;
/// Tasks shown per stage.
const TASKS_SHOWN: usize = 1000;
/// Iteration points kept per job.
const ITERATIONS_KEPT: usize = 2048;
/// Epoch points kept per job.
const EPOCHS_KEPT: usize = 10_000;
/// Jobs whose activity and curves are kept (the oldest go first; the
/// driver's job list keeps them, with empty activity).
const JOBS_KEPT: usize = 200;

/// One job's activity and curves.
#[derive(Debug)]
pub(crate) struct JobRecord {
    pub(crate) activity: JobActivity,
    pub(crate) iterations: Thinned<IterationPoint>,
    pub(crate) epochs: VecDeque<EpochPoint>,
    pub(crate) checkpoints: CheckpointsView,
    /// The blobs of each kept checkpoint, by id.
    pub(crate) blobs: HashMap<u64, Vec<crate::checkpoint::BlobRef>>,
}

impl Default for JobRecord {
    fn default() -> Self {
        JobRecord {
            activity: JobActivity::default(),
            iterations: Thinned::new(ITERATIONS_KEPT),
            epochs: VecDeque::new(),
            checkpoints: CheckpointsView::default(),
            blobs: HashMap::new(),
        }
    }
}

impl JobRecord {
    /// The training curves, with the iterations after `since` only.
    pub(crate) fn training(&self, since: u64) -> TrainingView {
        TrainingView {
            iterations_recorded: self.iterations.seen(),
            iterations: self.iterations.points_after(|p| p.iteration > since),
            epochs: self.epochs.iter().cloned().collect(),
        }
    }
}

/// The monitor's picture (see the module documentation).
#[derive(Debug, Default)]
pub(crate) struct MonitorState {
    pub(crate) cluster: ClusterView,
    /// Closed connections' bytes by kind, and live executor links' last
    /// counts by executor.
    closed_wire: BTreeMap<WireKind, WireBytes>,
    live_links: HashMap<u64, (u64, u64)>,
    pub(crate) jobs: BTreeMap<u64, JobRecord>,
    /// Where each running stage's record is: `(action, stage)` to job.
    stage_owner: HashMap<(u64, u32), u64>,
    /// Start times of running attempts.
    started: HashMap<(u64, u32, u32), u64>,
}

impl MonitorState {
    fn current_job(&self) -> u64 {
        self.cluster.running_job.unwrap_or(0)
    }

    fn job_mut(&mut self, id: u64) -> &mut JobRecord {
        self.jobs.entry(id).or_default()
    }

    fn stage_mut(&mut self, action: u64, stage: u32) -> Option<&mut StageView> {
        let job = *self.stage_owner.get(&(action, stage))?;
        self.jobs
            .get_mut(&job)?
            .activity
            .running
            .iter_mut()
            .find(|s| s.action == action && s.stage == stage)
    }

    /// Applies one event.
    pub(crate) fn apply(&mut self, event: Event) {
        let at = now_ms();
        match event {
            Event::Cluster { status, link_bytes } => self.cluster_snapshot(status, link_bytes, at),
            Event::ExecutorGone {
                id,
                name,
                reason,
                left,
                bytes,
            } => {
                self.live_links.remove(&id);
                let w = self.closed_wire.entry(WireKind::Executor).or_default();
                w.sent += bytes.0;
                w.received += bytes.1;
                self.cluster.executors.retain(|e| e.id != id);
                self.cluster.departed.insert(
                    0,
                    DepartedView {
                        id,
                        name,
                        state: if left { "left" } else { "lost" }.into(),
                        reason,
                        at_ms: at,
                    },
                );
                self.cluster.departed.truncate(DEPARTED_KEPT);
            }
            Event::ExecutorExcluded { id, name, failures } => {
                let job = self.current_job();
                self.job_mut(job).activity.exclusions.push(ExclusionView {
                    executor: id,
                    name,
                    failures,
                    at_ms: at,
                });
            }
            Event::StageQueued {
                action,
                stage,
                partitions,
            } => {
                let job = self.current_job();
                self.stage_owner.insert((action, stage), job);
                let a = &mut self.job_mut(job).activity;
                a.stages += 1;
                a.running.push(StageView {
                    action,
                    stage,
                    state: "running".into(),
                    started_ms: at,
                    tasks: (0..partitions.min(TASKS_SHOWN as u32))
                        .map(|partition| TaskView {
                            partition,
                            state: "queued".into(),
                            ..TaskView::default()
                        })
                        .collect(),
                    ..StageView::default()
                });
            }
            Event::TaskStarted(a) => self.task_started(a, at),
            Event::TaskEnded(a, outcome) => self.task_ended(a, outcome, at),
            Event::StageEnded {
                action,
                stage,
                error,
            } => {
                let Some(job) = self.stage_owner.remove(&(action, stage)) else {
                    return;
                };
                self.started
                    .retain(|&(a, s, _), _| !(a == action && s == stage));
                let activity = &mut self.job_mut(job).activity;
                let Some(i) = activity
                    .running
                    .iter()
                    .position(|s| s.action == action && s.stage == stage)
                else {
                    return;
                };
                let mut view = activity.running.remove(i);
                view.state = if error.is_some() {
                    activity.stages_failed += 1;
                    "failed"
                } else {
                    "succeeded"
                }
                .into();
                view.error = error;
                view.finished_ms = at;
                activity.recent.insert(0, view);
                activity.recent.truncate(RECENT_STAGES);
            }
            Event::JobStarted(id) => {
                self.cluster.running_job = Some(id);
                self.job_mut(id);
                while self.jobs.len() > JOBS_KEPT {
                    let Some(oldest) = self.jobs.keys().copied().find(|&j| j != id) else {
                        break;
                    };
                    self.jobs.remove(&oldest);
                    self.stage_owner.retain(|_, j| *j != oldest);
                }
            }
            Event::JobEnded(id) => {
                if self.cluster.running_job == Some(id) {
                    self.cluster.running_job = None;
                }
            }
            Event::Iteration(mut point) => {
                point.at_ms = at;
                let job = self.current_job();
                self.job_mut(job).iterations.push(point);
            }
            Event::Epoch { job, mut point } => {
                point.at_ms = at;
                let epochs = &mut self.job_mut(job).epochs;
                epochs.push_back(point);
                if epochs.len() > EPOCHS_KEPT {
                    epochs.pop_front();
                }
            }
            Event::Checkpoint(c) => {
                let job = self.current_job();
                let record = self.job_mut(job);
                for id in &c.removed {
                    record.blobs.remove(id);
                }
                record.blobs.insert(c.id, c.blobs.clone());
                committed(&mut record.checkpoints, c, at);
            }
            Event::Wire {
                kind,
                sent,
                received,
            } => {
                let w = self.closed_wire.entry(kind).or_default();
                w.sent += sent;
                w.received += received;
                self.refresh_wire();
            }
        }
    }

    /// Bytes by kind: closed connections' plus the live links'.
    fn refresh_wire(&mut self) {
        let mut wire: BTreeMap<String, WireBytes> = self
            .closed_wire
            .iter()
            .map(|(k, w)| (k.label().to_string(), *w))
            .collect();
        let links = wire.entry(WireKind::Executor.label().into()).or_default();
        for (sent, received) in self.live_links.values() {
            links.sent += sent;
            links.received += received;
        }
        self.cluster.wire = wire;
    }

    fn cluster_snapshot(
        &mut self,
        status: crate::protocol::ClusterStatus,
        link_bytes: Vec<(u64, u64)>,
        at: u64,
    ) {
        let c = &mut self.cluster;
        c.at_ms = at;
        c.lost = status.lost;
        c.left = status.left;
        c.pending_tasks = status.pending_tasks;
        c.refused_connections = status.refused_connections;
        c.dropped_links = status.dropped_links;
        self.live_links.clear();
        c.executors = status
            .executors
            .into_iter()
            .zip(link_bytes.into_iter().chain(std::iter::repeat((0, 0))))
            .map(|(e, bytes)| {
                self.live_links.insert(e.id, bytes);
                ExecutorView {
                    id: e.id,
                    name: e.name,
                    addr: e.addr,
                    peer_addr: e.peer_addr,
                    cores: e.cores,
                    state: if e.excluded { "excluded" } else { "live" }.into(),
                    running: e.running,
                    completed: e.completed,
                    failed: e.failed,
                    last_heartbeat_ms: e.last_heartbeat_ms,
                    bytes_sent: bytes.0,
                    bytes_received: bytes.1,
                    dropped_peer_links: e.dropped_peer_links,
                }
            })
            .collect();
        self.refresh_wire();
    }

    fn task_started(&mut self, a: Attempt, at: u64) {
        self.started.insert((a.action, a.stage, a.partition), at);
        let Some(job) = self.stage_owner.get(&(a.action, a.stage)).copied() else {
            return;
        };
        let activity = &mut self.job_mut(job).activity;
        activity.tasks += 1;
        if a.attempt > 0 {
            activity.retries += 1;
        }
        if let Some(t) = self
            .stage_mut(a.action, a.stage)
            .and_then(|s| s.tasks.get_mut(a.partition as usize))
        {
            t.attempts += 1;
            t.state = "running".into();
            t.executor = Some(a.executor);
        }
    }

    fn task_ended(&mut self, a: Attempt, outcome: TaskOutcome, at: u64) {
        let began = self.started.remove(&(a.action, a.stage, a.partition));
        let Some(job) = self.stage_owner.get(&(a.action, a.stage)).copied() else {
            return;
        };
        let failure = |kind: &str, error: &str| TaskFailureView {
            action: a.action,
            stage: a.stage,
            partition: a.partition,
            attempt: a.attempt,
            executor: a.executor,
            kind: kind.into(),
            error: error.into(),
            at_ms: at,
        };
        let (state, error, failed) = match &outcome {
            TaskOutcome::Succeeded => ("succeeded", None, None),
            TaskOutcome::Failed(e) => ("failed", Some(e.clone()), Some(failure("failed", e))),
            TaskOutcome::FetchFailed(e) => {
                ("failed", Some(e.clone()), Some(failure("fetch_failed", e)))
            }
            TaskOutcome::Requeued => ("requeued", None, None),
        };
        let activity = &mut self.job_mut(job).activity;
        match &outcome {
            TaskOutcome::Succeeded => activity.tasks_succeeded += 1,
            TaskOutcome::Failed(_) => activity.task_failures += 1,
            TaskOutcome::FetchFailed(_) => activity.fetch_failures += 1,
            TaskOutcome::Requeued => {}
        }
        if let Some(f) = failed {
            activity.failures.insert(0, f);
            activity.failures.truncate(FAILURES_KEPT);
        }
        if let Some(stage) = self.stage_mut(a.action, a.stage) {
            if matches!(outcome, TaskOutcome::Succeeded) {
                stage.done += 1;
            }
            if let Some(t) = stage.tasks.get_mut(a.partition as usize) {
                t.state = state.into();
                t.executor = Some(a.executor);
                t.duration_ms = began.map_or(0, |b| at.saturating_sub(b));
                if error.is_some() {
                    t.error = error;
                }
            }
        }
    }
}

/// Records a committed checkpoint and what retention removed with it.
fn committed(view: &mut CheckpointsView, c: CheckpointCommitted, at: u64) {
    view.store = Some(c.store);
    view.written += 1;
    view.removed += c.removed.len() as u64;
    view.kept.retain(|k| !c.removed.contains(&k.id));
    view.kept.push(CheckpointView {
        id: c.id,
        iteration: c.iteration,
        epoch: c.epoch,
        bytes: c.bytes,
        write_seconds: c.write_seconds,
        verified: true,
        verified_ms: at,
        verify_error: None,
        at_ms: at,
    });
    view.resume_from = resume_from(view);
}

/// The newest kept checkpoint whose last check verified.
pub(crate) fn resume_from(view: &CheckpointsView) -> Option<u64> {
    view.kept.iter().rev().find(|k| k.verified).map(|k| k.id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(partition: u32, attempt: u32, executor: u64) -> Attempt {
        Attempt {
            action: 7,
            stage: 0,
            partition,
            attempt,
            executor,
        }
    }

    #[test]
    fn stages_tasks_retries_and_failures_go_to_the_running_job() {
        let mut m = MonitorState::default();
        m.apply(Event::JobStarted(3));
        m.apply(Event::StageQueued {
            action: 7,
            stage: 0,
            partitions: 2,
        });
        m.apply(Event::TaskStarted(attempt(0, 0, 1)));
        m.apply(Event::TaskStarted(attempt(1, 0, 2)));
        m.apply(Event::TaskEnded(
            attempt(0, 0, 1),
            TaskOutcome::Failed("boom at x".into()),
        ));
        m.apply(Event::ExecutorExcluded {
            id: 1,
            name: "a".into(),
            failures: 3,
        });
        m.apply(Event::TaskStarted(attempt(0, 1, 2)));
        m.apply(Event::TaskEnded(attempt(1, 0, 2), TaskOutcome::Succeeded));
        {
            let a = &m.jobs[&3].activity;
            assert_eq!((a.tasks, a.retries, a.task_failures), (3, 1, 1));
            assert_eq!(a.running[0].tasks[0].attempts, 2);
            assert_eq!(a.running[0].tasks[0].state, "running");
            assert_eq!(a.running[0].tasks[0].error.as_deref(), Some("boom at x"));
            assert_eq!(a.running[0].done, 1);
            assert_eq!(a.failures[0].executor, 1);
            assert_eq!(a.exclusions[0].executor, 1);
        }
        m.apply(Event::TaskEnded(attempt(0, 1, 2), TaskOutcome::Succeeded));
        m.apply(Event::StageEnded {
            action: 7,
            stage: 0,
            error: None,
        });
        m.apply(Event::JobEnded(3));
        let a = &m.jobs[&3].activity;
        assert!(a.running.is_empty());
        assert_eq!(a.recent[0].state, "succeeded");
        assert_eq!(a.recent[0].done, 2);
        assert_eq!(m.cluster.running_job, None);
        // Work outside a submitted job goes to job 0.
        m.apply(Event::StageQueued {
            action: 9,
            stage: 0,
            partitions: 1,
        });
        assert_eq!(m.jobs[&0].activity.stages, 1);
    }

    #[test]
    fn only_the_newest_jobs_keep_their_records() {
        let mut m = MonitorState::default();
        for id in 1..=(JOBS_KEPT as u64 + 5) {
            m.apply(Event::JobStarted(id));
            m.apply(Event::JobEnded(id));
        }
        assert_eq!(m.jobs.len(), JOBS_KEPT);
        assert_eq!(m.jobs.keys().next(), Some(&6));
    }

    #[test]
    fn retention_removes_checkpoints_and_resume_uses_the_newest_kept() {
        let mut m = MonitorState::default();
        m.apply(Event::JobStarted(1));
        for id in 1..=3 {
            m.apply(Event::Checkpoint(CheckpointCommitted {
                store: "/s".into(),
                id,
                iteration: id * 10,
                epoch: 0,
                bytes: 100,
                write_seconds: 0.1,
                removed: if id == 3 { vec![1] } else { vec![] },
                blobs: Vec::new(),
            }));
        }
        let c = &m.jobs[&1].checkpoints;
        assert_eq!(c.kept.iter().map(|k| k.id).collect::<Vec<_>>(), vec![2, 3]);
        assert_eq!((c.resume_from, c.written, c.removed), (Some(3), 3, 1));
        assert_eq!(
            m.jobs[&1]
                .blobs
                .keys()
                .copied()
                .collect::<std::collections::BTreeSet<_>>(),
            [2, 3].into()
        );
    }

    #[test]
    fn wire_bytes_add_closed_connections_to_live_links() {
        let mut m = MonitorState::default();
        m.apply(Event::Wire {
            kind: WireKind::Client,
            sent: 5,
            received: 6,
        });
        m.apply(Event::ExecutorGone {
            id: 1,
            name: "a".into(),
            reason: "timeout".into(),
            left: false,
            bytes: (100, 200),
        });
        m.apply(Event::Cluster {
            status: crate::protocol::ClusterStatus {
                executors: vec![crate::protocol::ExecutorStatus {
                    id: 2,
                    ..Default::default()
                }],
                ..Default::default()
            },
            link_bytes: vec![(10, 20)],
        });
        assert_eq!(
            m.cluster.wire["client"],
            WireBytes {
                sent: 5,
                received: 6
            }
        );
        assert_eq!(
            m.cluster.wire["executor"],
            WireBytes {
                sent: 110,
                received: 220
            }
        );
        assert_eq!(m.cluster.departed[0].state, "lost");
        assert_eq!(m.cluster.executors[0].bytes_sent, 10);
    }
}

//! [`Scheduler`]: the driver's scheduling state, with no actor and no
//! network: stages and their task queue, placement (pins, locality, least
//! loaded), retry counting, executor exclusion after repeated failures,
//! shuffle fetch failures (lost map outputs recomputed from lineage) and
//! starvation. The driver actor feeds it executors joining and leaving,
//! task reports and the clock, and sends the tasks [`Scheduler::schedule`]
//! places; every decision here is a plain function of that input, so it is
//! unit-tested with synthetic executors and reports.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::Instant;

use tracing::{debug, info, warn};

use super::config::DriverConfig;
use super::messages::{StageReply, StageTask};
use crate::error::Error;
use crate::monitor::{Attempt, Event, MonitorSink, TaskOutcome};
use crate::protocol::{
    Action, MapLoc, PeerAddr, ShuffleFetch, Task, TaskFailure, TaskKey, TaskOutput, TaskReport,
};
use crate::shuffle::{MapOutputs, Readiness};

/// Job ids with this bit set are stages the driver started itself to
/// recompute lost map outputs of shuffle `job & !RECOVERY_JOB`.
pub(crate) const RECOVERY_JOB: u64 = 1 << 63;

/// What the scheduler knows of one live executor.
pub(crate) struct Worker {
    /// Its name (for logs and errors).
    pub(crate) name: String,
    /// Its shuffle peer endpoint (address, certificate).
    pub(crate) peer: PeerAddr,
    /// Task slots.
    pub(crate) cores: u32,
    /// Tasks sent to it and not reported yet.
    pub(crate) running: HashSet<TaskKey>,
    /// Tasks it completed.
    pub(crate) completed: u64,
    /// Tasks that failed on it (fetch failures not counted).
    pub(crate) failed: u64,
    consecutive_failures: u32,
    /// Excluded after repeated failures: it gets no tasks (but pinned ones).
    pub(crate) excluded: bool,
    excluded_at: Option<Instant>,
}

struct TaskState {
    task: StageTask,
    dispatches: u32,
    failures: u32,
    fetch_failures: u32,
    failed_on: HashSet<u64>,
    last_error: String,
    running: Option<(u64, u32)>,
    output: Option<TaskOutput>,
}

struct StageState {
    tasks: Vec<TaskState>,
    remaining: usize,
    reply: Option<StageReply>,
    /// The job's result stage: the job ends with it. A map stage ends its
    /// job only if it fails (the planner stops there); a recovery stage
    /// is no job's.
    ends_job: bool,
}

/// Scheduling state: live executors as the scheduler sees them, stages,
/// the queue of `(job, stage, partition)` waiting to run, cached
/// partitions and map outputs.
pub(crate) struct Scheduler {
    config: DriverConfig,
    workers: BTreeMap<u64, Worker>,
    stages: HashMap<(u64, u32), StageState>,
    pending: VecDeque<(u64, u32, u32)>,
    cache_locs: HashMap<(u64, u32), u64>,
    /// Where each live shuffle's map outputs are (no block data).
    map_outputs: MapOutputs,
    next_recovery: u32,
    /// Jobs whose result stage answered, or whose stage failed with a
    /// caller waiting: the status's `jobs_finished` (ok or failed).
    jobs_finished: u64,
    /// Since when work has been waiting with no usable executor.
    starved_since: Option<Instant>,
    /// Where stages, task attempts and exclusions are reported.
    monitor: MonitorSink,
}

/// The monitor's name for attempt `key` (0-based) on `executor`.
fn attempt_of(key: &TaskKey, executor: u64) -> Attempt {
    Attempt {
        action: key.job,
        stage: key.stage,
        partition: key.partition,
        attempt: key.attempt.saturating_sub(1),
        executor,
    }
}

impl Scheduler {
    /// An empty scheduler with the retry, exclusion and timeout settings
    /// of `config`.
    pub(crate) fn new(config: DriverConfig) -> Self {
        Scheduler {
            config,
            workers: BTreeMap::new(),
            stages: HashMap::new(),
            pending: VecDeque::new(),
            cache_locs: HashMap::new(),
            map_outputs: MapOutputs::default(),
            next_recovery: 0,
            jobs_finished: 0,
            starved_since: None,
            monitor: MonitorSink::default(),
        }
    }

    /// Reports stages, task attempts and exclusions to `monitor` from now on.
    pub(crate) fn report_to(&mut self, monitor: MonitorSink) {
        self.monitor = monitor;
    }

    /// A registered executor starts taking tasks.
    pub(crate) fn add_executor(&mut self, id: u64, name: String, peer: PeerAddr, cores: u32) {
        self.workers.insert(
            id,
            Worker {
                name,
                peer,
                cores: cores.max(1),
                running: HashSet::new(),
                completed: 0,
                failed: 0,
                consecutive_failures: 0,
                excluded: false,
                excluded_at: None,
            },
        );
    }

    /// What the scheduler knows of executor `id`.
    pub(crate) fn worker(&self, id: u64) -> Option<&Worker> {
        self.workers.get(&id)
    }

    /// Tasks waiting to run.
    pub(crate) fn pending_tasks(&self) -> usize {
        self.pending.len()
    }

    /// Jobs finished (reported in the cluster status).
    pub(crate) fn jobs_finished(&self) -> u64 {
        self.jobs_finished
    }

    /// Shuffles whose map outputs are tracked.
    pub(crate) fn live_shuffles(&self) -> usize {
        self.map_outputs.len()
    }

    /// Queue a job's result stage (its last: the job is finished when it
    /// answers); an empty one is answered at once.
    pub(crate) fn add_stage(
        &mut self,
        job: u64,
        stage: u32,
        tasks: Vec<StageTask>,
        reply: Option<StageReply>,
    ) {
        self.queue_stage(job, stage, tasks, reply, true);
    }

    /// Queue a stage; an empty one is answered at once.
    fn queue_stage(
        &mut self,
        job: u64,
        stage: u32,
        tasks: Vec<StageTask>,
        reply: Option<StageReply>,
        ends_job: bool,
    ) {
        if tasks.is_empty() {
            if let Some(r) = reply {
                let _ = r.send(Ok(Vec::new()));
            }
            if ends_job {
                self.jobs_finished += 1;
            }
            return;
        }
        let n = tasks.len();
        for p in 0..n as u32 {
            self.pending.push_back((job, stage, p));
        }
        self.monitor.send(Event::StageQueued {
            action: job,
            stage,
            partitions: n as u32,
        });
        self.stages.insert(
            (job, stage),
            StageState {
                tasks: tasks
                    .into_iter()
                    .map(|task| TaskState {
                        task,
                        dispatches: 0,
                        failures: 0,
                        fetch_failures: 0,
                        failed_on: HashSet::new(),
                        last_error: String::new(),
                        running: None,
                        output: None,
                    })
                    .collect(),
                remaining: n,
                reply,
                ends_job,
            },
        );
    }

    /// The map stage of `shuffle`: one task per map partition; only those
    /// without an output (and not being recomputed) are queued.
    pub(crate) fn add_map_stage(
        &mut self,
        job: u64,
        stage: u32,
        shuffle: u64,
        tasks: Vec<StageTask>,
        reply: Option<StageReply>,
    ) {
        self.map_outputs.register(shuffle, tasks);
        let todo: Vec<StageTask> = self
            .map_outputs
            .unfinished(shuffle)
            .into_iter()
            .filter_map(|m| self.map_outputs.template(shuffle, m))
            .collect();
        debug!(shuffle, job, maps = todo.len(), "map stage");
        self.queue_stage(job, stage, todo, reply, false);
    }

    /// Forget `shuffle` (no dataset reads it). False if it was unknown.
    pub(crate) fn free_shuffle(&mut self, shuffle: u64) -> bool {
        self.map_outputs.free(shuffle)
    }

    /// Recompute lost map outputs of `shuffle` from lineage, in a stage of
    /// the driver's own (maps already being recomputed are skipped).
    fn recover(&mut self, shuffle: u64, maps: &[u32]) {
        let tasks = self.map_outputs.start_recovery(shuffle, maps);
        if tasks.is_empty() {
            return;
        }
        let stage = self.next_recovery;
        self.next_recovery = self.next_recovery.wrapping_add(1);
        info!(shuffle, maps = ?tasks.iter().map(|t| t.partition).collect::<Vec<_>>(), "recomputing lost map outputs");
        self.queue_stage(RECOVERY_JOB | shuffle, stage, tasks, None, false);
    }

    /// Fail a stage: its waiter gets `err`, its queued tasks go. A failed
    /// recovery stage fails every stage waiting for that shuffle.
    fn fail_stage(&mut self, job: u64, stage: u32, err: Error) {
        let mut blamed = HashSet::new();
        if let Some(mut st) = self.stages.remove(&(job, stage)) {
            self.monitor.send(Event::StageEnded {
                action: job,
                stage,
                error: Some(crate::error::error_chain(&err)),
            });
            for t in &st.tasks {
                blamed.extend(t.failed_on.iter().copied());
            }
            if job & RECOVERY_JOB != 0 {
                self.map_outputs
                    .recovery_failed(job & !RECOVERY_JOB, err.to_string());
            }
            if st.ends_job || st.reply.is_some() {
                self.jobs_finished += 1;
            }
            if let Some(r) = st.reply.take() {
                let _ = r.send(Err(err));
            }
        }
        self.forgive(&blamed);
        self.pending.retain(|(j, s, _)| !(*j == job && *s == stage));
    }

    /// Where the blocks of `reads` are, or `None` while any is missing.
    fn fetches_for(&self, reads: &[(u64, u32)]) -> Option<Vec<ShuffleFetch>> {
        reads
            .iter()
            .map(|&(shuffle, reduce)| {
                let maps = self
                    .map_outputs
                    .locations(shuffle, reduce)?
                    .into_iter()
                    .map(|(map, executor, size)| {
                        Some(MapLoc {
                            map,
                            executor,
                            peer: self.workers.get(&executor)?.peer,
                            size,
                        })
                    })
                    .collect::<Option<Vec<_>>>()?;
                Some(ShuffleFetch {
                    shuffle,
                    reduce,
                    maps,
                })
            })
            .collect()
    }

    /// Executor `id` is gone (lost or left; `reason` says which): its
    /// cached partitions and map outputs are forgotten, its running tasks
    /// re-queued without counting a failure, and stages fetching blocks
    /// their caller placed on it (parameter shards) fail.
    pub(crate) fn remove_executor(&mut self, id: u64, reason: &str) {
        let Some(e) = self.workers.remove(&id) else {
            return;
        };
        self.cache_locs.retain(|_, exec| *exec != id);
        let outputs = self.map_outputs.lose_executor(id);
        if outputs > 0 {
            info!(
                executor = id,
                outputs, "forgot the map outputs it held; they are recomputed when needed"
            );
        }
        for key in e.running {
            if let Some(stage) = self.stages.get_mut(&(key.job, key.stage)) {
                if let Some(t) = stage.tasks.get_mut(key.partition as usize) {
                    if t.running == Some((id, key.attempt)) && t.output.is_none() {
                        // Loss of an executor is not the task's fault: no failure counted.
                        t.running = None;
                        self.monitor.send(Event::TaskEnded(
                            attempt_of(&key, id),
                            TaskOutcome::Requeued,
                        ));
                        self.pending.push_front((key.job, key.stage, key.partition));
                    }
                }
            }
        }
        // Stages whose tasks fetch blocks the caller placed on it
        // (parameter shards) cannot finish: they fail now, for the caller
        // to recover (a replica takes over), instead of after a fetch
        // timeout on every task.
        let doomed: Vec<(u64, u32)> = self
            .stages
            .iter()
            .filter(|(_, st)| {
                st.tasks.iter().any(|t| {
                    t.output.is_none()
                        && t.task
                            .fetches
                            .iter()
                            .any(|f| f.maps.iter().any(|m| m.executor == id))
                })
            })
            .map(|(k, _)| *k)
            .collect();
        for (job, stage) in doomed {
            let err = Error::FetchFailed {
                shuffle: 0,
                map: 0,
                executor: id,
                reason: format!("executor {id} ({}) was lost: {reason}", e.name),
            };
            self.fail_stage(job, stage, err);
        }
    }

    /// A task report from executor `exec_id`, received at `now`: counts
    /// the executor's failures (excluding it after too many in a row),
    /// records the output, or retries the task, recomputes lost map
    /// outputs, or fails the stage.
    pub(crate) fn on_report(&mut self, exec_id: u64, report: TaskReport, now: Instant) {
        let key = report.key;
        let (max_attempts, max_exec_failures) = (
            self.config.max_task_attempts,
            self.config.max_executor_failures,
        );
        let usable = self.workers.values().filter(|e| !e.excluded).count();
        if let Some(e) = self.workers.get_mut(&exec_id) {
            e.running.remove(&key);
            match &report.result {
                Ok(_) => {
                    e.completed += 1;
                    e.consecutive_failures = 0;
                }
                // A peer lost blocks: not this executor's fault.
                Err(TaskFailure::FetchFailed { .. }) => {}
                Err(TaskFailure::Failed(_)) => {
                    e.failed += 1;
                    e.consecutive_failures += 1;
                    if e.consecutive_failures >= max_exec_failures && !e.excluded {
                        if usable > 1 {
                            warn!(executor = exec_id, name = %e.name, failures = e.consecutive_failures, "executor excluded after repeated task failures");
                            e.excluded = true;
                            e.excluded_at = Some(now);
                            self.monitor.send(Event::ExecutorExcluded {
                                id: exec_id,
                                name: e.name.clone(),
                                failures: e.consecutive_failures,
                            });
                        } else {
                            warn!(executor = exec_id, name = %e.name, failures = e.consecutive_failures, "executor keeps failing tasks but is the last usable one: not excluded");
                        }
                    }
                }
            }
        }
        for c in &report.cached {
            self.cache_locs.insert(*c, exec_id);
        }
        let Some(stage) = self.stages.get_mut(&(key.job, key.stage)) else {
            debug!(task = %key, "report for a finished stage ignored");
            return;
        };
        let Some(t) = stage.tasks.get_mut(key.partition as usize) else {
            warn!(task = %key, "report for an unknown partition ignored");
            return;
        };
        if t.running != Some((exec_id, key.attempt)) || t.output.is_some() {
            debug!(task = %key, executor = exec_id, "stale task report ignored");
            return;
        }
        t.running = None;
        self.monitor.send(Event::TaskEnded(
            attempt_of(&key, exec_id),
            match &report.result {
                Ok(_) => TaskOutcome::Succeeded,
                Err(TaskFailure::Failed(cause)) => TaskOutcome::Failed(cause.clone()),
                Err(TaskFailure::FetchFailed { reason, .. }) => {
                    TaskOutcome::FetchFailed(reason.clone())
                }
            },
        ));
        match report.result {
            Ok(out) => {
                if let (
                    Action::ShuffleWrite { shuffle, .. },
                    TaskOutput::ShuffleWritten { sizes },
                ) = (&t.task.action, &out)
                {
                    if self.workers.contains_key(&exec_id) {
                        self.map_outputs
                            .record(*shuffle, t.task.partition, exec_id, sizes.clone());
                    }
                }
                t.output = Some(out);
                stage.remaining -= 1;
                if stage.remaining == 0 {
                    if let Some(stage) = self.stages.remove(&(key.job, key.stage)) {
                        self.monitor.send(Event::StageEnded {
                            action: key.job,
                            stage: key.stage,
                            error: None,
                        });
                        if stage.ends_job {
                            self.jobs_finished += 1;
                        }
                        let outs = stage
                            .tasks
                            .into_iter()
                            .map(|t| t.output.unwrap_or(TaskOutput::Done))
                            .collect();
                        if let Some(r) = stage.reply {
                            let _ = r.send(Ok(outs));
                        }
                    }
                }
            }
            Err(TaskFailure::FetchFailed { lost, reason }) => {
                t.fetch_failures += 1;
                let (fetch_failures, partition, failures) =
                    (t.fetch_failures, t.task.partition, t.failures);
                let pinned_blocks = !t.task.fetches.is_empty();
                let forgotten = self.map_outputs.lose_blocks(&lost);
                if pinned_blocks {
                    warn!(task = %key, executor = exec_id, %reason, blocks = lost.len(), "parameter block fetch failed; the stage fails for its caller to recover");
                } else {
                    warn!(task = %key, executor = exec_id, %reason, blocks = lost.len(), forgotten, "shuffle fetch failed; recomputing the lost map outputs");
                }
                if pinned_blocks {
                    let holder = lost.first().map_or(0, |b| b.executor);
                    let err = match (self.workers.get(&exec_id), self.workers.get(&holder)) {
                        // Both alive: a partition between them, not a loss.
                        (Some(from), Some(to)) if holder != exec_id => Error::PeersUnreachable {
                            from: format!("{exec_id} ({})", from.name),
                            to: format!("{holder} ({}) at {}", to.name, to.peer.addr),
                            reason,
                        },
                        _ => Error::FetchFailed {
                            shuffle: lost.first().map_or(0, |b| b.shuffle),
                            map: lost.first().map_or(0, |b| b.map),
                            executor: holder,
                            reason,
                        },
                    };
                    self.fail_stage(key.job, key.stage, err);
                } else if fetch_failures > self.config.max_fetch_failures {
                    let err = Error::JobFailed {
                        job: key.job,
                        task: format!("stage {} partition {partition}", key.stage),
                        attempts: failures + fetch_failures,
                        last_cause: format!(
                            "on executor {exec_id}: shuffle fetch failed {fetch_failures} times: {reason}"
                        ),
                    };
                    self.fail_stage(key.job, key.stage, err);
                } else {
                    // Waits in the queue until the lost outputs are back.
                    self.pending.push_back((key.job, key.stage, key.partition));
                }
            }
            Err(TaskFailure::Failed(cause)) => {
                t.failures += 1;
                t.failed_on.insert(exec_id);
                t.last_error = cause.clone();
                let (failures, partition) = (t.failures, t.task.partition);
                let name = self
                    .workers
                    .get(&exec_id)
                    .map(|e| e.name.clone())
                    .unwrap_or_default();
                warn!(task = %key, executor = exec_id, %name, %cause, "task failed");
                if failures >= max_attempts {
                    let err = Error::JobFailed {
                        job: key.job,
                        task: format!("stage {} partition {partition}", key.stage),
                        attempts: failures,
                        last_cause: format!("on executor {exec_id} ({name}): {cause}"),
                    };
                    self.fail_stage(key.job, key.stage, err);
                } else {
                    self.pending.push_front((key.job, key.stage, key.partition));
                }
            }
        }
    }

    /// Fails every waiting stage once work has waited `no_executor_timeout`
    /// with no usable executor.
    pub(crate) fn fail_if_starved(&mut self, now: Instant) {
        let usable = self.workers.values().any(|e| !e.excluded);
        if usable || self.stages.is_empty() {
            self.starved_since = None;
            return;
        }
        let since = *self.starved_since.get_or_insert(now);
        let waited = now.duration_since(since);
        if waited < self.config.no_executor_timeout {
            return;
        }
        warn!(
            waited_s = waited.as_secs(),
            stages = self.stages.len(),
            "no executors: failing waiting stages"
        );
        self.map_outputs.clear_recovering();
        for ((job, stage), mut st) in self.stages.drain() {
            if st.ends_job || st.reply.is_some() {
                self.jobs_finished += 1;
            }
            if let Some(r) = st.reply.take() {
                let _ = r.send(Err(Error::NoExecutor {
                    what: format!("job {job} stage {stage}"),
                    reason: format!("for {} s (all lost, left or excluded)", waited.as_secs()),
                }));
            }
        }
        self.pending.clear();
        self.starved_since = None;
    }

    /// Lift exclusions older than the configured timeout.
    pub(crate) fn expire_exclusions(&mut self, now: Instant) {
        let timeout = self.config.exclusion_timeout;
        for (id, e) in self.workers.iter_mut() {
            if e.excluded
                && e.excluded_at
                    .is_some_and(|t| now.duration_since(t) >= timeout)
            {
                info!(executor = *id, name = %e.name, "exclusion expired");
                e.excluded = false;
                e.excluded_at = None;
                e.consecutive_failures = 0;
            }
        }
    }

    /// A stage failed because one of its tasks failed on every executor it
    /// tried: its failures say nothing about those executors, so undo what
    /// the stage's failures cost them.
    fn forgive(&mut self, executors: &HashSet<u64>) {
        for id in executors {
            if let Some(e) = self.workers.get_mut(id) {
                if e.excluded {
                    info!(executor = *id, name = %e.name, "exclusion lifted: the failing task failed its job on every executor");
                }
                e.excluded = false;
                e.excluded_at = None;
                e.consecutive_failures = 0;
            }
        }
    }

    /// Pick an executor with a free slot for a task.
    fn pick(&self, t: &TaskState) -> Option<u64> {
        let free = |e: &Worker| !e.excluded && (e.running.len() as u32) < e.cores;
        if let Some(pin) = t.task.pin {
            // Excluded or not: the shard lives there.
            return self
                .workers
                .get(&pin)
                .filter(|e| (e.running.len() as u32) < e.cores)
                .map(|_| pin);
        }
        // Locality: the executor caching an input partition.
        for k in &t.task.prefer {
            if let Some(id) = self.cache_locs.get(k) {
                if self.workers.get(id).is_some_and(free) {
                    return Some(*id);
                }
            }
        }
        let candidates: Vec<(&u64, &Worker)> =
            self.workers.iter().filter(|(_, e)| !e.excluded).collect();
        let fresh: Vec<&(&u64, &Worker)> = candidates
            .iter()
            .filter(|(id, _)| !t.failed_on.contains(id))
            .collect();
        // Retry elsewhere; fall back to a previous executor only if no
        // other one is alive.
        let pool: Vec<&(&u64, &Worker)> = if fresh.is_empty() {
            candidates.iter().collect()
        } else {
            fresh
        };
        pool.into_iter()
            .filter(|(_, e)| free(e))
            .min_by_key(|(_, e)| e.running.len())
            .map(|(id, _)| **id)
    }

    /// Place every queued task that can run now: returns `(executor,
    /// task)` pairs, in order, for the caller to send. Tasks whose shuffle
    /// inputs are missing start their recomputation and wait; tasks with no
    /// free slot wait; stages that cannot run any more fail.
    pub(crate) fn schedule(&mut self) -> Vec<(u64, Task)> {
        let mut sends = Vec::new();
        let mut deferred = VecDeque::new();
        while let Some((job, stage_id, p)) = self.pending.pop_front() {
            let Some(stage) = self.stages.get(&(job, stage_id)) else {
                continue;
            };
            let Some(t) = stage.tasks.get(p as usize) else {
                continue;
            };
            if t.output.is_some() || t.running.is_some() {
                continue;
            }
            if let Some(pin) = t.task.pin {
                if !self.workers.contains_key(&pin) {
                    let err = Error::JobFailed {
                        job,
                        task: format!("stage {stage_id} partition {p}"),
                        attempts: t.dispatches,
                        last_cause: format!(
                            "executor {pin}, the only one that can run it, is gone"
                        ),
                    };
                    self.fail_stage(job, stage_id, err);
                    continue;
                }
            }
            let reads = t.task.reads.clone();
            let mut fetches = t.task.fetches.clone();
            if !reads.is_empty() {
                match self.map_outputs.readiness(&reads) {
                    Readiness::Ready => {}
                    Readiness::Missing(missing) => {
                        for (shuffle, maps) in missing {
                            self.recover(shuffle, &maps);
                        }
                        deferred.push_back((job, stage_id, p));
                        continue;
                    }
                    Readiness::Failed(cause) => {
                        let err = Error::JobFailed {
                            job,
                            task: format!("stage {stage_id} partition {p}"),
                            attempts: 0,
                            last_cause: format!("its shuffle input cannot be recomputed: {cause}"),
                        };
                        self.fail_stage(job, stage_id, err);
                        continue;
                    }
                }
                match self.fetches_for(&reads) {
                    Some(f) => fetches.extend(f),
                    None => {
                        deferred.push_back((job, stage_id, p));
                        continue;
                    }
                }
            }
            let Some(stage) = self.stages.get(&(job, stage_id)) else {
                continue;
            };
            let Some(t) = stage.tasks.get(p as usize) else {
                continue;
            };
            let Some(exec_id) = self.pick(t) else {
                deferred.push_back((job, stage_id, p));
                // No free slot for this one; others may prefer other executors.
                if self
                    .workers
                    .values()
                    .all(|e| e.excluded || e.running.len() as u32 >= e.cores)
                {
                    break;
                }
                continue;
            };
            let Some(stage) = self.stages.get_mut(&(job, stage_id)) else {
                continue;
            };
            let Some(t) = stage.tasks.get_mut(p as usize) else {
                continue;
            };
            t.dispatches += 1;
            let key = TaskKey {
                job,
                stage: stage_id,
                partition: p,
                attempt: t.dispatches,
            };
            t.running = Some((exec_id, key.attempt));
            self.monitor
                .send(Event::TaskStarted(attempt_of(&key, exec_id)));
            let task = Task {
                key,
                plan: t.task.plan.clone(),
                partition: t.task.partition,
                action: t.task.action.clone(),
                inputs: t.task.inputs.clone(),
                fetches,
            };
            let Some(e) = self.workers.get_mut(&exec_id) else {
                continue;
            };
            e.running.insert(key);
            sends.push((exec_id, task));
        }
        deferred.extend(self.pending.drain(..));
        self.pending = deferred;
        sends
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::net::SocketAddr;
    use std::time::Duration;

    use tokio::sync::oneshot;

    use super::*;
    use crate::error::Result;
    use crate::plan::Plan;
    use crate::protocol::LostBlock;

    type Outputs = oneshot::Receiver<Result<Vec<TaskOutput>>>;

    fn config() -> DriverConfig {
        DriverConfig {
            max_task_attempts: 4,
            max_executor_failures: 3,
            exclusion_timeout: Duration::from_secs(60),
            no_executor_timeout: Duration::from_secs(120),
            max_fetch_failures: 4,
            ..DriverConfig::default()
        }
    }

    fn peer(id: u64) -> PeerAddr {
        PeerAddr {
            addr: SocketAddr::from(([127, 0, 0, 1], 9000 + id as u16)),
            fingerprint: [id as u8; 32],
        }
    }

    /// A scheduler with executors `(id, cores)`.
    fn scheduler(config: DriverConfig, executors: &[(u64, u32)]) -> Scheduler {
        let mut s = Scheduler::new(config);
        for &(id, cores) in executors {
            s.add_executor(id, format!("e{id}"), peer(id), cores);
        }
        s
    }

    fn task(partition: u32) -> StageTask {
        StageTask {
            partition,
            plan: Plan::Source {
                name: "s".into(),
                args: Vec::new(),
                partitions: 8,
            },
            action: Action::Count,
            inputs: HashMap::new(),
            prefer: Vec::new(),
            reads: Vec::new(),
            fetches: Vec::new(),
            pin: None,
        }
    }

    fn tasks(n: u32) -> Vec<StageTask> {
        (0..n).map(task).collect()
    }

    fn run(s: &mut Scheduler, job: u64, stage: u32, tasks: Vec<StageTask>) -> Outputs {
        let (tx, rx) = oneshot::channel();
        s.add_stage(job, stage, tasks, Some(tx));
        rx
    }

    /// `(executor, partition, attempt)` of each task placed now.
    fn placed(s: &mut Scheduler) -> Vec<(u64, u32, u32)> {
        s.schedule()
            .into_iter()
            .map(|(e, t)| (e, t.key.partition, t.key.attempt))
            .collect()
    }

    fn key(job: u64, stage: u32, partition: u32, attempt: u32) -> TaskKey {
        TaskKey {
            job,
            stage,
            partition,
            attempt,
        }
    }

    fn report(
        s: &mut Scheduler,
        exec: u64,
        key: TaskKey,
        result: std::result::Result<TaskOutput, TaskFailure>,
        now: Instant,
    ) {
        s.on_report(
            exec,
            TaskReport {
                key,
                result,
                cached: Vec::new(),
            },
            now,
        );
    }

    fn ok(s: &mut Scheduler, exec: u64, key: TaskKey) {
        report(s, exec, key, Ok(TaskOutput::Count(1)), Instant::now());
    }

    fn fail(s: &mut Scheduler, exec: u64, key: TaskKey, now: Instant) {
        report(s, exec, key, Err(TaskFailure::Failed("boom".into())), now);
    }

    fn excluded(s: &Scheduler, id: u64) -> bool {
        s.worker(id).is_some_and(|w| w.excluded)
    }

    /// The stage's answer, if it has one yet.
    fn answer(rx: &mut Outputs) -> Option<Result<Vec<TaskOutput>>> {
        rx.try_recv().ok()
    }

    #[test]
    fn tasks_go_to_the_least_loaded_free_slot_and_wait_for_one() {
        let mut s = scheduler(config(), &[(1, 2), (2, 1)]);
        let mut rx = run(&mut s, 1, 0, tasks(4));
        // 0 -> 1 (both idle, lowest id), 1 -> 2 (less loaded), 2 -> 1
        // (its second core); 3 waits: every slot is taken.
        assert_eq!(placed(&mut s), vec![(1, 0, 1), (2, 1, 1), (1, 2, 1)]);
        assert_eq!(s.pending_tasks(), 1);
        assert!(placed(&mut s).is_empty());
        ok(&mut s, 2, key(1, 0, 1, 1));
        assert_eq!(placed(&mut s), vec![(2, 3, 1)]);
        for (e, p) in [(1, 0), (1, 2), (2, 3)] {
            ok(&mut s, e, key(1, 0, p, 1));
        }
        let outs = answer(&mut rx).expect("stage answered").unwrap();
        assert_eq!(outs.len(), 4);
        assert_eq!(s.worker(1).unwrap().completed, 2);
        assert_eq!(s.worker(2).unwrap().completed, 2);
    }

    #[test]
    fn a_task_goes_where_its_input_partition_is_cached_while_a_slot_is_free() {
        let mut s = scheduler(config(), &[(1, 1), (2, 1), (3, 1)]);
        // Executor 3 reports caching partition 0 of dataset 9.
        run(&mut s, 1, 0, tasks(3));
        assert_eq!(placed(&mut s), vec![(1, 0, 1), (2, 1, 1), (3, 2, 1)]);
        ok(&mut s, 1, key(1, 0, 0, 1));
        ok(&mut s, 2, key(1, 0, 1, 1));
        s.on_report(
            3,
            TaskReport {
                key: key(1, 0, 2, 1),
                result: Ok(TaskOutput::Count(1)),
                cached: vec![(9, 0)],
            },
            Instant::now(),
        );
        let mut t = task(0);
        t.prefer = vec![(9, 0)];
        run(&mut s, 2, 0, vec![t.clone()]);
        // Without the preference it would go to 1 (idle, lowest id).
        assert_eq!(placed(&mut s), vec![(3, 0, 1)]);
        // 3 is busy now: the next such task goes to the least loaded.
        run(&mut s, 3, 0, vec![t.clone()]);
        assert_eq!(placed(&mut s), vec![(1, 0, 1)]);
        // Free again: locality wins over the lowest id once more.
        ok(&mut s, 3, key(2, 0, 0, 1));
        ok(&mut s, 1, key(3, 0, 0, 1));
        run(&mut s, 4, 0, vec![t]);
        assert_eq!(placed(&mut s), vec![(3, 0, 1)]);
    }

    #[test]
    fn a_failed_task_is_retried_on_another_executor_with_the_next_attempt() {
        let mut s = scheduler(config(), &[(1, 1), (2, 1), (3, 1)]);
        let mut rx = run(&mut s, 1, 0, tasks(1));
        let now = Instant::now();
        assert_eq!(placed(&mut s), vec![(1, 0, 1)]);
        fail(&mut s, 1, key(1, 0, 0, 1), now);
        // Executor 1 is idle and lowest, but the task failed there.
        assert_eq!(placed(&mut s), vec![(2, 0, 2)]);
        fail(&mut s, 2, key(1, 0, 0, 2), now);
        assert_eq!(placed(&mut s), vec![(3, 0, 3)]);
        fail(&mut s, 3, key(1, 0, 0, 3), now);
        // Failed everywhere: back to any usable executor.
        assert_eq!(placed(&mut s), vec![(1, 0, 4)]);
        assert!(answer(&mut rx).is_none());
        ok(&mut s, 1, key(1, 0, 0, 4));
        assert_eq!(answer(&mut rx).expect("answered").unwrap().len(), 1);
        assert_eq!(s.worker(1).unwrap().failed, 1);
        assert_eq!(s.worker(2).unwrap().failed, 1);
    }

    #[test]
    fn a_stale_report_of_an_earlier_attempt_is_ignored() {
        let mut s = scheduler(config(), &[(1, 1), (2, 1)]);
        let mut rx = run(&mut s, 1, 0, tasks(1));
        assert_eq!(placed(&mut s), vec![(1, 0, 1)]);
        fail(&mut s, 1, key(1, 0, 0, 1), Instant::now());
        assert_eq!(placed(&mut s), vec![(2, 0, 2)]);
        // Attempt 1 again (duplicate): neither finishes nor fails it.
        ok(&mut s, 1, key(1, 0, 0, 1));
        assert!(answer(&mut rx).is_none());
        ok(&mut s, 2, key(1, 0, 0, 2));
        assert!(answer(&mut rx).expect("answered").is_ok());
    }

    #[test]
    fn a_stage_fails_when_a_task_fails_max_attempts_times() {
        let cfg = DriverConfig {
            max_task_attempts: 3,
            ..config()
        };
        let mut s = scheduler(cfg, &[(1, 1), (2, 1)]);
        let mut rx = run(&mut s, 7, 2, tasks(2));
        let now = Instant::now();
        assert_eq!(placed(&mut s), vec![(1, 0, 1), (2, 1, 1)]);
        fail(&mut s, 1, key(7, 2, 0, 1), now);
        ok(&mut s, 2, key(7, 2, 1, 1));
        assert_eq!(placed(&mut s), vec![(2, 0, 2)]);
        fail(&mut s, 2, key(7, 2, 0, 2), now);
        assert_eq!(placed(&mut s), vec![(1, 0, 3)]);
        assert!(answer(&mut rx).is_none(), "two failures of three allowed");
        fail(&mut s, 1, key(7, 2, 0, 3), now);
        match answer(&mut rx).expect("stage answered") {
            Err(Error::JobFailed {
                job,
                task,
                attempts,
                last_cause,
            }) => {
                assert_eq!((job, attempts), (7, 3));
                assert_eq!(task, "stage 2 partition 0");
                assert!(last_cause.contains("executor 1 (e1)"), "{last_cause}");
                assert!(last_cause.contains("boom"), "{last_cause}");
            }
            other => panic!("expected JobFailed, got {other:?}"),
        }
        assert!(placed(&mut s).is_empty());
        assert_eq!(s.pending_tasks(), 0);
    }

    #[test]
    fn repeated_failures_exclude_an_executor_until_the_timeout_passes() {
        let cfg = DriverConfig {
            max_executor_failures: 2,
            exclusion_timeout: Duration::from_secs(60),
            ..config()
        };
        let mut s = scheduler(cfg, &[(1, 1), (2, 1), (3, 1)]);
        let t0 = Instant::now();
        // Two tasks in a row fail on executor 1.
        run(&mut s, 1, 0, tasks(1));
        assert_eq!(placed(&mut s), vec![(1, 0, 1)]);
        fail(&mut s, 1, key(1, 0, 0, 1), t0);
        assert!(!excluded(&s, 1), "one failure of two");
        assert_eq!(placed(&mut s), vec![(2, 0, 2)]);
        ok(&mut s, 2, key(1, 0, 0, 2));
        run(&mut s, 2, 0, tasks(1));
        assert_eq!(placed(&mut s), vec![(1, 0, 1)]);
        fail(&mut s, 1, key(2, 0, 0, 1), t0);
        assert!(excluded(&s, 1));
        assert_eq!(placed(&mut s), vec![(2, 0, 2)]);
        ok(&mut s, 2, key(2, 0, 0, 2));
        // All idle: executor 1, the lowest id, would get the next task.
        run(&mut s, 3, 0, tasks(3));
        assert_eq!(placed(&mut s), vec![(2, 0, 1), (3, 1, 1)]);
        assert_eq!(s.pending_tasks(), 1, "partition 2 waits: 1 is excluded");
        // Not before the timeout.
        s.expire_exclusions(t0 + Duration::from_secs(60) - Duration::from_millis(1));
        assert!(excluded(&s, 1));
        assert!(placed(&mut s).is_empty());
        s.expire_exclusions(t0 + Duration::from_secs(60));
        assert!(!excluded(&s, 1));
        assert_eq!(placed(&mut s), vec![(1, 2, 1)]);
        // Its failure count starts over: one more failure does not exclude.
        fail(&mut s, 1, key(3, 0, 2, 1), t0 + Duration::from_secs(61));
        assert!(!excluded(&s, 1));
    }

    #[test]
    fn a_success_resets_the_consecutive_failures() {
        let cfg = DriverConfig {
            max_executor_failures: 2,
            ..config()
        };
        let mut s = scheduler(cfg, &[(1, 1), (2, 1)]);
        let now = Instant::now();
        for job in 0..3 {
            run(&mut s, job * 2, 0, tasks(1));
            assert_eq!(placed(&mut s), vec![(1, 0, 1)]);
            fail(&mut s, 1, key(job * 2, 0, 0, 1), now);
            assert_eq!(placed(&mut s), vec![(2, 0, 2)]);
            ok(&mut s, 2, key(job * 2, 0, 0, 2));
            run(&mut s, job * 2 + 1, 0, tasks(1));
            assert_eq!(placed(&mut s), vec![(1, 0, 1)]);
            ok(&mut s, 1, key(job * 2 + 1, 0, 0, 1));
        }
        assert!(!excluded(&s, 1));
        assert_eq!(s.worker(1).unwrap().failed, 3);
    }

    #[test]
    fn the_last_usable_executor_is_never_excluded() {
        let cfg = DriverConfig {
            max_task_attempts: 10,
            max_executor_failures: 2,
            ..config()
        };
        let mut s = scheduler(cfg, &[(1, 1)]);
        let mut rx = run(&mut s, 1, 0, tasks(1));
        let now = Instant::now();
        for attempt in 1..=4 {
            assert_eq!(placed(&mut s), vec![(1, 0, attempt)]);
            fail(&mut s, 1, key(1, 0, 0, attempt), now);
            assert!(!excluded(&s, 1));
        }
        assert_eq!(placed(&mut s), vec![(1, 0, 5)]);
        ok(&mut s, 1, key(1, 0, 0, 5));
        assert!(answer(&mut rx).expect("answered").is_ok());
    }

    #[test]
    fn a_task_failing_its_stage_everywhere_lifts_its_executors_exclusion() {
        let cfg = DriverConfig {
            max_task_attempts: 2,
            max_executor_failures: 1,
            ..config()
        };
        let mut s = scheduler(cfg, &[(1, 1), (2, 1)]);
        let now = Instant::now();
        let mut rx = run(&mut s, 1, 0, tasks(1));
        assert_eq!(placed(&mut s), vec![(1, 0, 1)]);
        fail(&mut s, 1, key(1, 0, 0, 1), now);
        assert!(excluded(&s, 1));
        assert_eq!(placed(&mut s), vec![(2, 0, 2)]);
        // The last usable one: not excluded.
        fail(&mut s, 2, key(1, 0, 0, 2), now);
        assert!(!excluded(&s, 2));
        assert!(matches!(
            answer(&mut rx),
            Some(Err(Error::JobFailed { attempts: 2, .. }))
        ));
        // The task was at fault, not executor 1: it is usable again.
        assert!(!excluded(&s, 1));
        run(&mut s, 2, 0, tasks(2));
        assert_eq!(placed(&mut s), vec![(1, 0, 1), (2, 1, 1)]);
    }

    #[test]
    fn a_lost_executors_tasks_are_requeued_without_counting_an_attempt() {
        // Two failures allowed: were the loss counted, one more failure
        // would fail the stage.
        let cfg = DriverConfig {
            max_task_attempts: 2,
            ..config()
        };
        let mut s = scheduler(cfg, &[(1, 1), (2, 1)]);
        let mut rx = run(&mut s, 1, 0, tasks(2));
        assert_eq!(placed(&mut s), vec![(1, 0, 1), (2, 1, 1)]);
        s.remove_executor(1, "no heartbeat");
        assert!(s.worker(1).is_none());
        // Partition 0 waits for a slot, then runs on 2 as attempt 2.
        assert!(placed(&mut s).is_empty());
        ok(&mut s, 2, key(1, 0, 1, 1));
        assert_eq!(placed(&mut s), vec![(2, 0, 2)]);
        // A late report from the lost executor changes nothing.
        ok(&mut s, 1, key(1, 0, 0, 1));
        assert!(answer(&mut rx).is_none());
        // Its first failure: retried, not the second of two.
        fail(&mut s, 2, key(1, 0, 0, 2), Instant::now());
        assert!(answer(&mut rx).is_none());
        assert_eq!(placed(&mut s), vec![(2, 0, 3)]);
        ok(&mut s, 2, key(1, 0, 0, 3));
        assert_eq!(answer(&mut rx).expect("answered").unwrap().len(), 2);
    }

    #[test]
    fn a_pinned_task_runs_only_on_its_executor_excluded_or_not() {
        let cfg = DriverConfig {
            max_executor_failures: 1,
            ..config()
        };
        let mut s = scheduler(cfg, &[(1, 1), (2, 1)]);
        let now = Instant::now();
        // Exclude executor 2.
        let mut t = task(0);
        t.pin = Some(2);
        run(&mut s, 1, 0, vec![t.clone()]);
        assert_eq!(placed(&mut s), vec![(2, 0, 1)]);
        fail(&mut s, 2, key(1, 0, 0, 1), now);
        assert!(excluded(&s, 2));
        // Retried on its executor, though excluded and 1 is idle.
        assert_eq!(placed(&mut s), vec![(2, 0, 2)]);
        ok(&mut s, 2, key(1, 0, 0, 2));
        // Its executor gone: the stage fails.
        let mut rx = run(&mut s, 2, 0, vec![t]);
        s.remove_executor(2, "lost");
        assert!(placed(&mut s).is_empty());
        match answer(&mut rx) {
            Some(Err(Error::JobFailed { last_cause, .. })) => {
                assert!(last_cause.contains("executor 2"), "{last_cause}")
            }
            other => panic!("expected JobFailed, got {other:?}"),
        }
    }

    fn map_task(shuffle: u64, partition: u32) -> StageTask {
        StageTask {
            action: Action::ShuffleWrite {
                shuffle,
                name: "h".into(),
                partitions: 2,
            },
            ..task(partition)
        }
    }

    fn written(s: &mut Scheduler, exec: u64, key: TaskKey) {
        let out = TaskOutput::ShuffleWritten {
            sizes: vec![10 + exec, 20 + exec],
        };
        report(s, exec, key, Ok(out), Instant::now());
    }

    fn reader(shuffle: u64, reduce: u32) -> StageTask {
        StageTask {
            reads: vec![(shuffle, reduce)],
            ..task(reduce)
        }
    }

    /// `(map, executor)` of each block location a task was sent with.
    fn locations(t: &Task) -> Vec<(u32, u64)> {
        t.fetches
            .iter()
            .flat_map(|f| f.maps.iter().map(|m| (m.map, m.executor)))
            .collect()
    }

    #[test]
    fn a_fetch_failure_recomputes_only_the_lost_map_outputs_and_reruns_the_reader() {
        let mut s = scheduler(config(), &[(1, 1), (2, 1), (3, 1)]);
        let (tx, mut map_rx) = oneshot::channel();
        s.add_map_stage(1, 0, 5, vec![map_task(5, 0), map_task(5, 1)], Some(tx));
        assert_eq!(placed(&mut s), vec![(1, 0, 1), (2, 1, 1)]);
        written(&mut s, 1, key(1, 0, 0, 1));
        written(&mut s, 2, key(1, 0, 1, 1));
        assert!(answer(&mut map_rx).expect("map stage answered").is_ok());
        // A second map stage of the same shuffle has nothing to run.
        let (tx, mut again) = oneshot::channel();
        s.add_map_stage(2, 0, 5, vec![map_task(5, 0), map_task(5, 1)], Some(tx));
        assert!(matches!(answer(&mut again), Some(Ok(v)) if v.is_empty()));

        let mut rx = run(&mut s, 3, 0, vec![reader(5, 1)]);
        let sent = s.schedule();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].0, 1);
        assert_eq!(locations(&sent[0].1), vec![(0, 1), (1, 2)]);
        assert_eq!(sent[0].1.fetches[0].maps[1].size, 22);
        // Executor 1 cannot fetch map 1 from executor 2.
        let lost = vec![LostBlock {
            shuffle: 5,
            map: 1,
            executor: 2,
        }];
        let failure = TaskFailure::FetchFailed {
            lost,
            reason: "peer gone".into(),
        };
        report(&mut s, 1, key(3, 0, 0, 1), Err(failure), Instant::now());
        // Only map 1 is recomputed, by the driver's own recovery stage;
        // the reader waits for it.
        let sent = s.schedule();
        assert_eq!(sent.len(), 1);
        let (exec, recovery) = &sent[0];
        assert_eq!(recovery.key.job, RECOVERY_JOB | 5);
        assert_eq!(recovery.partition, 1);
        assert!(matches!(
            recovery.action,
            Action::ShuffleWrite { shuffle: 5, .. }
        ));
        assert_eq!(*exec, 1, "the least loaded executor, lowest id");
        assert_eq!(s.pending_tasks(), 1);
        written(&mut s, 1, recovery.key);
        // The reader reruns as attempt 2 with map 1's new location.
        let sent = s.schedule();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].1.key, key(3, 0, 0, 2));
        assert_eq!(locations(&sent[0].1), vec![(0, 1), (1, 1)]);
        // A fetch failure is nobody's failure: no executor charged.
        assert_eq!(s.worker(1).unwrap().failed, 0);
        assert_eq!(s.worker(2).unwrap().failed, 0);
        let exec = sent[0].0;
        ok(&mut s, exec, sent[0].1.key);
        assert!(answer(&mut rx).expect("answered").is_ok());
    }

    #[test]
    fn a_lost_executor_takes_its_map_outputs_with_it() {
        let mut s = scheduler(config(), &[(1, 1), (2, 1)]);
        let (tx, _map_rx) = oneshot::channel();
        s.add_map_stage(1, 0, 5, vec![map_task(5, 0), map_task(5, 1)], Some(tx));
        assert_eq!(placed(&mut s), vec![(1, 0, 1), (2, 1, 1)]);
        written(&mut s, 1, key(1, 0, 0, 1));
        written(&mut s, 2, key(1, 0, 1, 1));
        s.remove_executor(2, "lost");
        // A new map stage reruns only map 1.
        let (tx, _rx) = oneshot::channel();
        s.add_map_stage(2, 0, 5, vec![map_task(5, 0), map_task(5, 1)], Some(tx));
        let sent = s.schedule();
        assert_eq!(sent.len(), 1);
        assert_eq!((sent[0].0, sent[0].1.partition), (1, 1));
    }

    #[test]
    fn too_many_fetch_failures_fail_the_stage() {
        let cfg = DriverConfig {
            max_fetch_failures: 1,
            ..config()
        };
        let mut s = scheduler(cfg, &[(1, 1), (2, 1)]);
        let (tx, _map_rx) = oneshot::channel();
        s.add_map_stage(1, 0, 5, vec![map_task(5, 0)], Some(tx));
        assert_eq!(placed(&mut s), vec![(1, 0, 1)]);
        written(&mut s, 1, key(1, 0, 0, 1));
        let mut rx = run(&mut s, 3, 0, vec![reader(5, 0)]);
        let lost = || TaskFailure::FetchFailed {
            lost: vec![LostBlock {
                shuffle: 5,
                map: 0,
                executor: 1,
            }],
            reason: "missing".into(),
        };
        for attempt in 1..=2 {
            // The reader runs, its block is lost, the map is recomputed.
            let sent = s.schedule();
            assert_eq!(sent.len(), 1, "attempt {attempt}");
            let (exec, t) = &sent[0];
            assert_eq!(t.key, key(3, 0, 0, attempt));
            report(&mut s, *exec, t.key, Err(lost()), Instant::now());
            if attempt == 2 {
                break;
            }
            let sent = s.schedule();
            assert_eq!(sent[0].1.key.job, RECOVERY_JOB | 5);
            written(&mut s, sent[0].0, sent[0].1.key);
        }
        match answer(&mut rx) {
            Some(Err(Error::JobFailed {
                attempts,
                last_cause,
                ..
            })) => {
                assert_eq!(attempts, 2);
                assert!(last_cause.contains("fetch failed 2 times"), "{last_cause}");
            }
            other => panic!("expected JobFailed, got {other:?}"),
        }
    }

    #[test]
    fn a_failed_recovery_fails_the_stages_that_wait_for_it() {
        let cfg = DriverConfig {
            max_task_attempts: 1,
            ..config()
        };
        let mut s = scheduler(cfg, &[(1, 1), (2, 1)]);
        let (tx, _map_rx) = oneshot::channel();
        s.add_map_stage(1, 0, 5, vec![map_task(5, 0)], Some(tx));
        assert_eq!(placed(&mut s), vec![(1, 0, 1)]);
        written(&mut s, 1, key(1, 0, 0, 1));
        s.remove_executor(1, "lost");
        let mut rx = run(&mut s, 3, 0, vec![reader(5, 0)]);
        let sent = s.schedule();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].1.key.job, RECOVERY_JOB | 5);
        fail(&mut s, 2, sent[0].1.key, Instant::now());
        assert!(placed(&mut s).is_empty());
        match answer(&mut rx) {
            Some(Err(Error::JobFailed { last_cause, .. })) => {
                assert!(last_cause.contains("cannot be recomputed"), "{last_cause}")
            }
            other => panic!("expected JobFailed, got {other:?}"),
        }
    }

    #[test]
    fn a_parameter_block_fetch_failure_fails_the_stage_at_once() {
        let mut s = scheduler(config(), &[(1, 1), (2, 1)]);
        let mut t = task(0);
        t.fetches = vec![ShuffleFetch {
            shuffle: 40,
            reduce: 0,
            maps: vec![MapLoc {
                map: 0,
                executor: 2,
                peer: peer(2),
                size: 4,
            }],
        }];
        let mut rx = run(&mut s, 1, 0, vec![t.clone()]);
        assert_eq!(placed(&mut s), vec![(1, 0, 1)]);
        let failure = TaskFailure::FetchFailed {
            lost: vec![LostBlock {
                shuffle: 40,
                map: 0,
                executor: 2,
            }],
            reason: "timed out".into(),
        };
        report(&mut s, 1, key(1, 0, 0, 1), Err(failure), Instant::now());
        // Both alive: the peers cannot reach each other.
        match answer(&mut rx) {
            Some(Err(Error::PeersUnreachable { from, to, .. })) => {
                assert_eq!(from, "1 (e1)");
                assert!(to.starts_with("2 (e2) at 127.0.0.1:9002"), "{to}");
            }
            other => panic!("expected PeersUnreachable, got {other:?}"),
        }
        // The holder lost: stages fetching from it fail without waiting.
        let mut rx = run(&mut s, 2, 0, vec![t]);
        assert_eq!(placed(&mut s), vec![(1, 0, 1)]);
        s.remove_executor(2, "lost");
        assert!(matches!(
            answer(&mut rx),
            Some(Err(Error::FetchFailed { executor: 2, .. }))
        ));
    }

    #[test]
    fn jobs_finished_counts_each_ended_job_once_ok_or_failed() {
        let cfg = DriverConfig {
            max_task_attempts: 1,
            no_executor_timeout: Duration::from_secs(10),
            ..config()
        };
        let mut s = scheduler(cfg, &[(1, 1), (2, 1)]);
        assert_eq!(s.jobs_finished(), 0);
        // A job of a map stage then a result stage: the map stage does not
        // end it, the result stage does.
        let (tx, mut map_rx) = oneshot::channel();
        s.add_map_stage(1, 0, 5, vec![map_task(5, 0), map_task(5, 1)], Some(tx));
        assert_eq!(placed(&mut s), vec![(1, 0, 1), (2, 1, 1)]);
        written(&mut s, 1, key(1, 0, 0, 1));
        written(&mut s, 2, key(1, 0, 1, 1));
        assert!(answer(&mut map_rx).expect("map stage answered").is_ok());
        assert_eq!(s.jobs_finished(), 0, "a job's map stage does not end it");
        let mut rx = run(&mut s, 1, 1, vec![reader(5, 0)]);
        assert_eq!(placed(&mut s).len(), 1);
        assert_eq!(s.jobs_finished(), 0, "still running");
        ok(&mut s, 1, key(1, 1, 0, 1));
        assert!(answer(&mut rx).expect("answered").is_ok());
        assert_eq!(s.jobs_finished(), 1);
        // A later report for the finished stage counts nothing.
        ok(&mut s, 1, key(1, 1, 0, 1));
        assert_eq!(s.jobs_finished(), 1);
        // A job whose task fails its last attempt.
        let mut rx = run(&mut s, 2, 0, tasks(1));
        assert_eq!(placed(&mut s), vec![(1, 0, 1)]);
        fail(&mut s, 1, key(2, 0, 0, 1), Instant::now());
        assert!(matches!(
            answer(&mut rx),
            Some(Err(Error::JobFailed { .. }))
        ));
        assert_eq!(s.jobs_finished(), 2);
        // A job with nothing to compute ends at once.
        let mut rx = run(&mut s, 3, 0, Vec::new());
        assert!(matches!(answer(&mut rx), Some(Ok(v)) if v.is_empty()));
        assert_eq!(s.jobs_finished(), 3);
        // A job whose map stage fails ends there (its planner stops).
        let (tx, mut map_rx) = oneshot::channel();
        s.add_map_stage(4, 0, 6, vec![map_task(6, 0)], Some(tx));
        assert_eq!(placed(&mut s), vec![(1, 0, 1)]);
        fail(&mut s, 1, key(4, 0, 0, 1), Instant::now());
        assert!(matches!(answer(&mut map_rx), Some(Err(_))));
        assert_eq!(s.jobs_finished(), 4);
        // Jobs failed for want of an executor.
        s.remove_executor(1, "test");
        s.remove_executor(2, "test");
        let mut a = run(&mut s, 5, 0, tasks(1));
        let mut b = run(&mut s, 6, 0, tasks(2));
        let t0 = Instant::now();
        s.fail_if_starved(t0);
        s.fail_if_starved(t0 + Duration::from_secs(10));
        assert!(matches!(answer(&mut a), Some(Err(_))));
        assert!(matches!(answer(&mut b), Some(Err(_))));
        assert_eq!(s.jobs_finished(), 6);
    }

    #[test]
    fn waiting_stages_fail_after_the_timeout_with_no_usable_executor() {
        let cfg = DriverConfig {
            no_executor_timeout: Duration::from_secs(10),
            ..config()
        };
        let mut s = scheduler(cfg, &[]);
        let mut rx = run(&mut s, 1, 0, tasks(2));
        let t0 = Instant::now();
        assert!(placed(&mut s).is_empty());
        s.fail_if_starved(t0);
        s.fail_if_starved(t0 + Duration::from_secs(9));
        assert!(answer(&mut rx).is_none());
        s.fail_if_starved(t0 + Duration::from_secs(10));
        assert!(matches!(answer(&mut rx), Some(Err(_))));
        assert_eq!(s.pending_tasks(), 0);
    }

    #[test]
    fn an_executor_joining_ends_the_wait_for_one() {
        let cfg = DriverConfig {
            no_executor_timeout: Duration::from_secs(10),
            ..config()
        };
        let mut s = scheduler(cfg, &[]);
        let mut rx = run(&mut s, 1, 0, tasks(1));
        let t0 = Instant::now();
        s.fail_if_starved(t0);
        s.add_executor(1, "late".into(), peer(1), 0);
        s.fail_if_starved(t0 + Duration::from_secs(9));
        // The clock starts over when work is starved again.
        s.remove_executor(1, "lost");
        s.fail_if_starved(t0 + Duration::from_secs(11));
        assert!(answer(&mut rx).is_none());
        s.add_executor(2, "later".into(), peer(2), 0);
        // Zero cores count as one.
        assert_eq!(placed(&mut s), vec![(2, 0, 1)]);
    }
}

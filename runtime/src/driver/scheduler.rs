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
    jobs_finished: u64,
    /// Since when work has been waiting with no usable executor.
    starved_since: Option<Instant>,
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
        }
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

    /// Queue a stage; an empty one is answered at once.
    pub(crate) fn add_stage(
        &mut self,
        job: u64,
        stage: u32,
        tasks: Vec<StageTask>,
        reply: Option<StageReply>,
    ) {
        if tasks.is_empty() {
            if let Some(r) = reply {
                let _ = r.send(Ok(Vec::new()));
            }
            return;
        }
        let n = tasks.len();
        for p in 0..n as u32 {
            self.pending.push_back((job, stage, p));
        }
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
        self.add_stage(job, stage, todo, reply);
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
        self.add_stage(RECOVERY_JOB | shuffle, stage, tasks, None);
    }

    /// Fail a stage: its waiter gets `err`, its queued tasks go. A failed
    /// recovery stage fails every stage waiting for that shuffle.
    fn fail_stage(&mut self, job: u64, stage: u32, err: Error) {
        let mut blamed = HashSet::new();
        if let Some(mut st) = self.stages.remove(&(job, stage)) {
            for t in &st.tasks {
                blamed.extend(t.failed_on.iter().copied());
            }
            if job & RECOVERY_JOB != 0 {
                self.map_outputs
                    .recovery_failed(job & !RECOVERY_JOB, err.to_string());
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
            if let Some(r) = st.reply.take() {
                let _ = r.send(Err(Error::Invalid(format!(
                    "job {job} stage {stage}: no usable executor for {} s (all lost, left or excluded)",
                    waited.as_secs()
                ))));
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


//! The driver: accepts executors over QUIC, tracks membership with
//! heartbeats, and schedules stages of tasks with retry and exclusion.
//!
//! One ractor actor ([`DriverActor`]) owns all scheduling state, so there
//! are no locks around it. It supervises one child actor per registered
//! executor ([`executor_link::ExecutorLink`], spawned linked to it), which
//! owns that executor's connection; a link that stops or fails is reported
//! to the driver as a supervision event and the executor is declared lost
//! (or left), its tasks re-queued. Before registration, a plain task per
//! incoming connection runs the handshake and never decodes anything
//! before the preamble passed.

mod executor_link;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::connection::{memory_pair, Connection, RecvHalf, SendHalf};
use crate::error::{Error, Result};
use crate::jobs::{JobInfo, JobRunner, JobService};
use crate::liveness::probe;
use crate::plan::Plan;
use crate::protocol::{
    Action, ClientRequest, ClusterStatus, ExecutorStatus, MapLoc, PeerAddr, ShuffleFetch, Task,
    TaskFailure, TaskKey, TaskOutput, TaskReport, ToDriver, ToExecutor,
};
use crate::registry::Registry;
use crate::shuffle::{MapOutputs, Readiness};
use crate::transport::{
    self, check_preamble, read_frame, with_timeout, write_frame, CertificateFiles, ClusterIdentity,
    JoinToken, Role, PREAMBLE_LEN, STATUS_OK,
};
use executor_link::{ExecutorLink, LinkArgs, LinkMsg};

/// The reason recorded for an executor that sent `Leave`.
const LEFT_GRACEFULLY: &str = "left gracefully";

/// How often late heartbeats are looked for.
const WATCH_PERIOD: Duration = Duration::from_millis(25);
/// The least lateness that gets an executor probed (a probe costs one
/// datagram, which a live executor drops; only its host's refusal counts).
const MIN_LATE: Duration = Duration::from_millis(50);
/// The least time between two probes of one executor.
const PROBE_EVERY: Duration = Duration::from_millis(150);

/// Job ids with this bit set are stages the driver started itself to
/// recompute lost map outputs of shuffle `job & !RECOVERY_JOB`.
const RECOVERY_JOB: u64 = 1 << 63;

/// Driver settings.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// UDP address to listen on (port 0 picks one).
    pub listen: SocketAddr,
    /// How often executors and driver exchange heartbeats.
    pub heartbeat: Duration,
    /// An executor silent this long is declared lost.
    pub executor_timeout: Duration,
    /// Attempts per task before its job fails.
    pub max_task_attempts: u32,
    /// Consecutive task failures after which an executor is excluded.
    /// The last usable executor is never excluded, and failures of a task
    /// that fails its job everywhere are forgiven (the task, not the
    /// executor, was at fault), as in Spark's `excludeOnFailure`.
    pub max_executor_failures: u32,
    /// How long an exclusion lasts before the executor gets tasks again.
    pub exclusion_timeout: Duration,
    /// Stages waiting this long with no usable executor fail (instead of
    /// waiting forever for one to join).
    pub no_executor_timeout: Duration,
    /// Largest control frame accepted.
    pub max_control_frame: u64,
    /// Largest bulk frame (task or result) accepted.
    pub max_bulk_frame: u64,
    /// Time allowed for the TLS handshake and the preamble.
    pub handshake_timeout: Duration,
    /// Shuffle fetch failures (a peer gone or missing a block) tolerated
    /// per task; each one recomputes the lost map outputs and reruns the
    /// task, without counting against `max_task_attempts`.
    pub max_fetch_failures: u32,
    /// A user-supplied certificate chain and key (PEM) instead of a
    /// generated cluster CA; the join token then pins that leaf.
    pub tls: Option<CertificateFiles>,
}

impl Default for DriverConfig {
    fn default() -> Self {
        DriverConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            heartbeat: Duration::from_millis(200),
            executor_timeout: Duration::from_secs(5),
            max_task_attempts: 4,
            max_executor_failures: 3,
            exclusion_timeout: Duration::from_secs(60),
            no_executor_timeout: Duration::from_secs(120),
            max_control_frame: transport::DEFAULT_MAX_CONTROL_FRAME,
            max_bulk_frame: transport::DEFAULT_MAX_BULK_FRAME,
            handshake_timeout: Duration::from_secs(5),
            max_fetch_failures: 4,
            tls: None,
        }
    }
}

/// One task of a stage as the job planner hands it to the actor.
#[derive(Clone)]
pub(crate) struct StageTask {
    pub(crate) partition: u32,
    pub(crate) plan: Plan,
    pub(crate) action: Action,
    pub(crate) inputs: crate::protocol::Inputs,
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

type StageReply = oneshot::Sender<Result<Vec<TaskOutput>>>;

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
    Heartbeat(u64),
    Report(u64, TaskReport),
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
    Status(oneshot::Sender<ClusterStatus>),
    Refused,
    Tick,
    /// Every [`WATCH_PERIOD`]: probe executors whose heartbeat is late.
    Watch,
    /// A probe sent at this instant found nothing listening at executor
    /// `id`'s port any more (its host answered ICMP port unreachable): its
    /// process is gone, unless it heartbeated since.
    Gone(u64, Instant, String),
    /// Another executor's probe of executor `id` was refused (see
    /// [`ToExecutor::Probe`]): as `Gone`, from the driver's last request.
    GoneReported(u64, String),
    Shutdown,
    /// Test hook: make an executor's link actor panic.
    #[cfg(test)]
    CrashLink(u64),
}

struct Exec {
    name: String,
    /// The executor's shuffle peer endpoint (address, certificate).
    peer: PeerAddr,
    conn: Connection,
    link: ActorRef<LinkMsg>,
    cores: u32,
    last_hb: Instant,
    /// Mean absolute deviation of heartbeat gaps from the interval (an
    /// exponentially weighted average): how late a heartbeat may be before
    /// the executor is probed.
    hb_jitter: Duration,
    /// When it was last probed.
    probed_at: Option<Instant>,
    running: HashSet<TaskKey>,
    completed: u64,
    failed: u64,
    consecutive_failures: u32,
    excluded: bool,
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

/// Scheduling state, owned by the actor.
pub(crate) struct DriverState {
    config: DriverConfig,
    next_exec: u64,
    executors: BTreeMap<u64, Exec>,
    /// Link actor -> executor id, to map supervision events.
    links: HashMap<ActorId, u64>,
    stages: HashMap<(u64, u32), StageState>,
    pending: VecDeque<(u64, u32, u32)>,
    cache_locs: HashMap<(u64, u32), u64>,
    /// Where each live shuffle's map outputs are (no block data).
    map_outputs: MapOutputs,
    next_recovery: u32,
    lost: u64,
    left: u64,
    jobs_finished: u64,
    refused: u64,
    /// Since when work has been waiting with no usable executor.
    starved_since: Option<Instant>,
    /// The actor itself (for probes to report back).
    myself: Option<ActorRef<DriverMsg>>,
}

pub(crate) struct DriverActor;

impl Actor for DriverActor {
    type Msg = DriverMsg;
    type State = DriverState;
    type Arguments = DriverConfig;

    async fn pre_start(
        &self,
        myself: ActorRef<DriverMsg>,
        config: DriverConfig,
    ) -> std::result::Result<DriverState, ActorProcessingErr> {
        let period = config.heartbeat;
        let ticker = myself.clone();
        let myself_for_state = myself.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                if ticker.cast(DriverMsg::Tick).is_err() {
                    break;
                }
            }
        });
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(WATCH_PERIOD).await;
                if myself.cast(DriverMsg::Watch).is_err() {
                    break;
                }
            }
        });
        Ok(DriverState {
            config,
            next_exec: 1,
            executors: BTreeMap::new(),
            links: HashMap::new(),
            stages: HashMap::new(),
            pending: VecDeque::new(),
            cache_locs: HashMap::new(),
            map_outputs: MapOutputs::default(),
            next_recovery: 0,
            lost: 0,
            left: 0,
            jobs_finished: 0,
            refused: 0,
            starved_since: None,
            myself: Some(myself_for_state),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<DriverMsg>,
        msg: DriverMsg,
        st: &mut DriverState,
    ) -> std::result::Result<(), ActorProcessingErr> {
        match msg {
            DriverMsg::Joined {
                name,
                cores,
                pid,
                peer,
                conn,
                send,
                recv,
            } => {
                let id = st.next_exec;
                st.next_exec += 1;
                let remote = conn.peer();
                let args = LinkArgs {
                    id,
                    conn: conn.clone(),
                    send,
                    recv,
                    driver: myself.clone(),
                    max_control: st.config.max_control_frame,
                    max_bulk: st.config.max_bulk_frame,
                    executor_timeout: st.config.executor_timeout,
                };
                let link = match Actor::spawn_linked(None, ExecutorLink, args, myself.get_cell())
                    .await
                {
                    Ok((link, _)) => link,
                    Err(e) => {
                        warn!(peer = %remote, %name, error = %e, "could not start the executor's link; dropping it");
                        conn.close(transport::CLOSE_NORMAL, b"driver could not serve");
                        return Ok(());
                    }
                };
                info!(executor = id, %name, pid, cores, peer = %remote, shuffle_endpoint = %peer.addr, "executor registered");
                // First on the control stream: the link's mailbox is ordered.
                let _ = link.cast(LinkMsg::Control(ToExecutor::Registered {
                    executor_id: id,
                    heartbeat_ms: st.config.heartbeat.as_millis() as u64,
                    timeout_ms: st.config.executor_timeout.as_millis() as u64,
                }));
                st.links.insert(link.get_id(), id);
                st.executors.insert(
                    id,
                    Exec {
                        name,
                        peer,
                        conn,
                        link,
                        cores: cores.max(1),
                        last_hb: Instant::now(),
                        hb_jitter: Duration::ZERO,
                        probed_at: None,
                        running: HashSet::new(),
                        completed: 0,
                        failed: 0,
                        consecutive_failures: 0,
                        excluded: false,
                        excluded_at: None,
                    },
                );
                st.schedule();
            }
            DriverMsg::Heartbeat(id) => {
                let interval = st.config.heartbeat;
                if let Some(e) = st.executors.get_mut(&id) {
                    let now = Instant::now();
                    let gap = now.duration_since(e.last_hb);
                    let deviation = gap.abs_diff(interval);
                    // EWMA with weight 1/8, as TCP's RTT variance.
                    e.hb_jitter = (e.hb_jitter * 7 + deviation) / 8;
                    e.last_hb = now;
                }
            }
            DriverMsg::Watch => st.watch(),
            DriverMsg::GoneReported(id, reason) => {
                let asked = st.executors.get(&id).and_then(|e| e.probed_at);
                if let Some(sent) = asked {
                    let _ = myself.cast(DriverMsg::Gone(id, sent, reason));
                }
            }
            DriverMsg::Gone(id, sent, reason) => {
                // A heartbeat after the probe left proves it alive: a
                // refusal then is not trusted.
                let silent = st.executors.get(&id).is_some_and(|e| e.last_hb < sent);
                if silent {
                    st.remove_executor(id, &reason);
                    st.schedule();
                }
            }
            DriverMsg::Report(id, report) => {
                st.on_report(id, report);
                st.schedule();
            }
            DriverMsg::RunStage {
                job,
                stage,
                tasks,
                reply,
            } => {
                st.add_stage(job, stage, tasks, Some(reply));
                st.schedule();
            }
            DriverMsg::RunMapStage {
                job,
                stage,
                shuffle,
                tasks,
                reply,
            } => {
                st.map_outputs.register(shuffle, tasks);
                let todo: Vec<StageTask> = st
                    .map_outputs
                    .unfinished(shuffle)
                    .into_iter()
                    .filter_map(|m| st.map_outputs.template(shuffle, m))
                    .collect();
                debug!(shuffle, job, maps = todo.len(), "map stage");
                st.add_stage(job, stage, todo, Some(reply));
                st.schedule();
            }
            DriverMsg::FreeShuffle(shuffle) => {
                if st.map_outputs.free(shuffle) {
                    debug!(shuffle, "shuffle freed");
                    for e in st.executors.values() {
                        let _ = e
                            .link
                            .cast(LinkMsg::Control(ToExecutor::FreeShuffle { shuffle }));
                    }
                }
            }
            DriverMsg::FreeBlocks(ids) => {
                for e in st.executors.values() {
                    for &shuffle in &ids {
                        let _ = e
                            .link
                            .cast(LinkMsg::Control(ToExecutor::FreeShuffle { shuffle }));
                    }
                }
            }
            DriverMsg::Members(reply) => {
                let members = st.executors.iter().map(|(id, e)| (*id, e.peer)).collect();
                let _ = reply.send(members);
            }
            DriverMsg::Status(reply) => {
                let _ = reply.send(st.status());
            }
            DriverMsg::Refused => st.refused += 1,
            DriverMsg::Tick => {
                let now = Instant::now();
                let timeout = st.config.executor_timeout;
                let dead: Vec<u64> = st
                    .executors
                    .iter()
                    .filter(|(_, e)| now.duration_since(e.last_hb) > timeout)
                    .map(|(id, _)| *id)
                    .collect();
                for id in dead {
                    st.remove_executor(id, &format!("no heartbeat for {} ms", timeout.as_millis()));
                }
                st.expire_exclusions(now);
                st.fail_if_starved(now);
                let interval = st.config.heartbeat;
                for e in st.executors.values() {
                    // Not to an executor that has gone quiet (until it
                    // heartbeats again; well within its own timeout): if
                    // its process died, every datagram to it draws an ICMP
                    // port unreachable from its host, and hosts rate-limit
                    // those per destination: they are kept for the probes.
                    if now.duration_since(e.last_hb) > interval + MIN_LATE {
                        continue;
                    }
                    let _ = e.link.cast(LinkMsg::Control(ToExecutor::Heartbeat));
                }
                st.schedule();
            }
            DriverMsg::Shutdown => {
                // Links are children: stopping the driver kills them, so
                // first let each deliver its Shutdown frame.
                let mut done = Vec::new();
                for e in st.executors.values() {
                    let (tx, rx) = oneshot::channel();
                    if e.link.cast(LinkMsg::Shutdown(tx)).is_ok() {
                        done.push(rx);
                    }
                }
                for rx in done {
                    let _ = tokio::time::timeout(Duration::from_secs(2), rx).await;
                }
                myself.stop(None);
            }
            #[cfg(test)]
            DriverMsg::CrashLink(id) => {
                if let Some(e) = st.executors.get(&id) {
                    let _ = e.link.cast(LinkMsg::Crash);
                }
            }
        }
        Ok(())
    }

    /// A link actor ended: its executor is lost (or left, if it said so);
    /// the driver itself keeps serving. Events of links the driver already
    /// removed (heartbeat timeout, task send failure) are ignored.
    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<DriverMsg>,
        event: SupervisionEvent,
        st: &mut DriverState,
    ) -> std::result::Result<(), ActorProcessingErr> {
        let (who, reason) = match event {
            SupervisionEvent::ActorTerminated(who, _, reason) => (
                who,
                reason.unwrap_or_else(|| "executor link stopped".into()),
            ),
            SupervisionEvent::ActorFailed(who, err) => {
                (who, format!("executor link failed: {err}"))
            }
            _ => return Ok(()),
        };
        if let Some(id) = st.links.remove(&who.get_id()) {
            st.remove_executor(id, &reason);
            st.schedule();
        }
        Ok(())
    }
}

impl DriverState {
    /// Probes the executors whose heartbeat is late: a heartbeat interval
    /// plus twice its observed jitter (at least [`MIN_LATE`]) without
    /// one. A probe is a datagram to the port the executor's connection
    /// comes from, on a socket connected to it: if its host answers ICMP
    /// port unreachable, nothing listens there any more (the process died:
    /// `kill -9`, a crash) and the executor is lost at once, instead of
    /// after the loss timeout. A host that is down or cut off answers
    /// nothing, and the loss timeout decides.
    fn watch(&mut self) {
        let now = Instant::now();
        let interval = self.config.heartbeat;
        let mut suspects = Vec::new();
        for (&id, e) in self.executors.iter_mut() {
            let Connection::Quic(conn) = &e.conn else {
                continue;
            };
            let late = interval + (e.hb_jitter * 2).max(MIN_LATE);
            let silent = now.duration_since(e.last_hb);
            let recently = e
                .probed_at
                .is_some_and(|t| now.duration_since(t) < PROBE_EVERY);
            if silent <= late || recently {
                continue;
            }
            e.probed_at = Some(now);
            let (addr, me) = (conn.remote_address(), self.myself.clone());
            tokio::spawn(async move {
                if let Some(reason) = probe(addr).await {
                    if let Some(me) = me {
                        let _ = me.cast(DriverMsg::Gone(id, now, reason));
                    }
                }
            });
            suspects.push((id, addr));
        }
        // The other executors probe it too: a host rate-limits its ICMP
        // answers per destination, and the driver's own allowance is often
        // spent by QUIC resending what it had in flight to the dead
        // process; theirs is their own.
        for (id, addr) in suspects {
            for (&other, e) in self.executors.iter() {
                if other != id {
                    let _ = e
                        .link
                        .cast(LinkMsg::Control(ToExecutor::Probe { executor: id, addr }));
                }
            }
        }
    }

    /// Queue a stage; an empty one is answered at once.
    fn add_stage(
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
                            peer: self.executors.get(&executor)?.peer,
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

    fn status(&self) -> ClusterStatus {
        let now = Instant::now();
        ClusterStatus {
            executors: self
                .executors
                .iter()
                .map(|(id, e)| ExecutorStatus {
                    id: *id,
                    name: e.name.clone(),
                    addr: e.conn.describe(),
                    cores: e.cores,
                    running: e.running.len() as u32,
                    completed: e.completed,
                    failed: e.failed,
                    excluded: e.excluded,
                    last_heartbeat_ms: now.duration_since(e.last_hb).as_millis() as u64,
                    peer_addr: e.peer.addr.to_string(),
                    peer_fingerprint: e
                        .peer
                        .fingerprint
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect(),
                })
                .collect(),
            lost: self.lost,
            left: self.left,
            pending_tasks: self.pending.len() as u64,
            jobs_finished: self.jobs_finished,
            refused_connections: self.refused,
            live_shuffles: self.map_outputs.len() as u64,
        }
    }

    fn remove_executor(&mut self, id: u64, reason: &str) {
        let Some(e) = self.executors.remove(&id) else {
            return;
        };
        self.links.remove(&e.link.get_id());
        e.link.stop(Some(reason.to_string()));
        if reason == LEFT_GRACEFULLY {
            info!(executor = id, name = %e.name, requeued = e.running.len(), "executor left; its partitions go to the others");
            self.left += 1;
        } else {
            warn!(executor = id, name = %e.name, reason, requeued = e.running.len(), "executor lost");
            self.lost += 1;
        }
        e.conn
            .close(transport::CLOSE_NORMAL, b"declared lost by driver");
        // Fetches from it on the others fail now, not when their links
        // idle out.
        for other in self.executors.values() {
            let _ = other
                .link
                .cast(LinkMsg::Control(ToExecutor::PeerLost { peer: e.peer.addr }));
        }
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

    fn on_report(&mut self, exec_id: u64, report: TaskReport) {
        let key = report.key;
        let (max_attempts, max_exec_failures) = (
            self.config.max_task_attempts,
            self.config.max_executor_failures,
        );
        let usable = self.executors.values().filter(|e| !e.excluded).count();
        if let Some(e) = self.executors.get_mut(&exec_id) {
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
                            e.excluded_at = Some(Instant::now());
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
                    if self.executors.contains_key(&exec_id) {
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
                    let err = match (self.executors.get(&exec_id), self.executors.get(&holder)) {
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
                    .executors
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
    fn fail_if_starved(&mut self, now: Instant) {
        let usable = self.executors.values().any(|e| !e.excluded);
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
    fn expire_exclusions(&mut self, now: Instant) {
        let timeout = self.config.exclusion_timeout;
        for (id, e) in self.executors.iter_mut() {
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
            if let Some(e) = self.executors.get_mut(id) {
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
        let free = |e: &Exec| !e.excluded && (e.running.len() as u32) < e.cores;
        if let Some(pin) = t.task.pin {
            // Excluded or not: the shard lives there.
            return self
                .executors
                .get(&pin)
                .filter(|e| (e.running.len() as u32) < e.cores)
                .map(|_| pin);
        }
        // Locality: the executor caching an input partition.
        for k in &t.task.prefer {
            if let Some(id) = self.cache_locs.get(k) {
                if self.executors.get(id).is_some_and(free) {
                    return Some(*id);
                }
            }
        }
        let candidates: Vec<(&u64, &Exec)> =
            self.executors.iter().filter(|(_, e)| !e.excluded).collect();
        let fresh: Vec<&(&u64, &Exec)> = candidates
            .iter()
            .filter(|(id, _)| !t.failed_on.contains(id))
            .collect();
        // Retry elsewhere; fall back to a previous executor only if no
        // other one is alive.
        let pool: Vec<&(&u64, &Exec)> = if fresh.is_empty() {
            candidates.iter().collect()
        } else {
            fresh
        };
        pool.into_iter()
            .filter(|(_, e)| free(e))
            .min_by_key(|(_, e)| e.running.len())
            .map(|(id, _)| **id)
    }

    fn schedule(&mut self) {
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
                if !self.executors.contains_key(&pin) {
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
                    .executors
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
            let Some(e) = self.executors.get_mut(&exec_id) else {
                continue;
            };
            e.running.insert(key);
            // A failed send fails the link, which loses the executor.
            let _ = e.link.cast(LinkMsg::Task(Box::new(task)));
        }
        deferred.extend(self.pending.drain(..));
        self.pending = deferred;
    }
}

/// Shared state of a running driver, reachable from [`crate::Dataset`]s.
pub(crate) struct DriverShared {
    pub(crate) actor: ActorRef<DriverMsg>,
    pub(crate) registry: Arc<Registry>,
    pub(crate) next_id: AtomicU64,
    /// Submitted jobs.
    pub(crate) jobs: Arc<JobService>,
    /// The driver's QUIC endpoint. Besides serving executors and clients
    /// it connects out, as a client, to executors' peer endpoints: the
    /// driver pulls the checkpoint blobs of executor-hosted parameter
    /// shards from their holders ([`crate::train`]). One endpoint rather
    /// than a client endpoint of its own: a node keeps to one UDP port
    /// (ARCHITECTURE.md), so a driver host's firewall needs no second
    /// rule and there is no second socket (8 MiB buffers) to bind and
    /// close; quinn routes packets by connection id, so outgoing
    /// connections never reach the accept loop, and each takes its TLS
    /// configuration (the executor's pinned certificate) per connection
    /// (`quinn::Endpoint::connect_with`). The pulls share the socket with
    /// the control streams, but their flow-control windows are small and
    /// their number bounded (`transport::checkpoint_client_config`), and
    /// QUIC recovers a heartbeat datagram lost in a burst.
    pub(crate) endpoint: quinn::Endpoint,
    /// The cluster's join secret: peer links open with it.
    pub(crate) secret: [u8; 32],
}

impl DriverShared {
    pub(crate) fn fresh_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) async fn run_stage(
        &self,
        job: u64,
        stage: u32,
        tasks: Vec<StageTask>,
    ) -> Result<Vec<TaskOutput>> {
        let (tx, rx) = oneshot::channel();
        self.actor
            .cast(DriverMsg::RunStage {
                job,
                stage,
                tasks,
                reply: tx,
            })
            .map_err(|e| Error::DriverGone(e.to_string()))?;
        rx.await
            .map_err(|_| Error::DriverGone("driver actor stopped during a stage".into()))?
    }

    /// Live executors and their peer endpoints.
    pub(crate) async fn members(&self) -> Result<Vec<(u64, PeerAddr)>> {
        let (tx, rx) = oneshot::channel();
        self.actor
            .cast(DriverMsg::Members(tx))
            .map_err(|e| Error::DriverGone(e.to_string()))?;
        rx.await
            .map_err(|_| Error::DriverGone("driver actor stopped".into()))
    }

    /// Executors drop the given untracked blocks.
    pub(crate) fn free_blocks(&self, ids: Vec<u64>) {
        if !ids.is_empty() {
            let _ = self.actor.cast(DriverMsg::FreeBlocks(ids));
        }
    }

    /// Run the map stage of `shuffle` (only map partitions without an
    /// output run); the outputs stay on the executors.
    pub(crate) async fn run_map_stage(
        &self,
        job: u64,
        stage: u32,
        shuffle: u64,
        tasks: Vec<StageTask>,
    ) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.actor
            .cast(DriverMsg::RunMapStage {
                job,
                stage,
                shuffle,
                tasks,
                reply: tx,
            })
            .map_err(|e| Error::DriverGone(e.to_string()))?;
        rx.await
            .map_err(|_| Error::DriverGone("driver actor stopped during a stage".into()))?
            .map(|_| ())
    }
}

/// A running driver: the QUIC endpoint, the actor and the join token.
/// Clones are handles on the same driver (a submitted job gets one); any of
/// them can shut it down.
#[derive(Clone)]
pub struct Driver {
    pub(crate) shared: Arc<DriverShared>,
    endpoint: quinn::Endpoint,
    /// Accepts in-memory connections of in-process executors.
    memory: mpsc::UnboundedSender<ServerEnd>,
    addr: SocketAddr,
    token: JoinToken,
    actor_handle: Arc<std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl Driver {
    /// Bind, create the cluster CA (or load `config.tls`) and the join
    /// token, start the actor and the accept loop. Must be called inside a
    /// tokio runtime.
    pub async fn start(config: DriverConfig, registry: Arc<Registry>) -> Result<Driver> {
        let identity = ClusterIdentity::load_or_generate(config.tls.as_ref())?;
        let endpoint = transport::server_endpoint(&identity, config.listen)?;
        let addr = endpoint.local_addr().map_err(|e| Error::Endpoint {
            addr: config.listen,
            reason: e.to_string(),
        })?;
        let token = identity.token().clone();
        let (actor, handle) = Actor::spawn(None, DriverActor, config.clone())
            .await
            .map_err(|e| Error::DriverGone(e.to_string()))?;
        let jobs = Arc::new(JobService::default());
        let shared = Arc::new(DriverShared {
            actor: actor.clone(),
            registry,
            next_id: AtomicU64::new(1),
            jobs: jobs.clone(),
            endpoint: endpoint.clone(),
            secret: token.secret,
        });
        let ep = endpoint.clone();
        let secret = token.secret;
        let (quic_actor, quic_config, quic_jobs) = (actor.clone(), config.clone(), jobs.clone());
        tokio::spawn(async move {
            while let Some(incoming) = ep.accept().await {
                let actor = quic_actor.clone();
                let config = quic_config.clone();
                let jobs = quic_jobs.clone();
                tokio::spawn(async move {
                    let peer = incoming.remote_address();
                    if let Err(e) = serve_quic(incoming, actor, config, secret, jobs).await {
                        warn!(%peer, error = %e, "connection ended with an error");
                    }
                });
            }
        });
        // The in-process path: the same handshake and link code, with no
        // socket underneath. It ends when the driver is dropped.
        let (memory, mut incoming) = mpsc::unbounded_channel::<ServerEnd>();
        tokio::spawn(async move {
            while let Some((conn, send, recv)) = incoming.recv().await {
                let actor = actor.clone();
                let config = config.clone();
                let jobs = jobs.clone();
                tokio::spawn(async move {
                    let peer = conn.peer();
                    if let Err(e) =
                        serve_connection(conn, send, recv, actor, config, secret, jobs).await
                    {
                        warn!(%peer, error = %e, "in-process connection ended with an error");
                    }
                });
            }
        });
        info!(%addr, "driver listening");
        Ok(Driver {
            shared,
            endpoint,
            memory,
            addr,
            token,
            actor_handle: Arc::new(std::sync::Mutex::new(Some(handle))),
        })
    }

    /// Runs submitted jobs from now on: clients' submissions are checked
    /// and run by `runner`, one at a time in order of submission, each in a
    /// directory of its own under `work_dir/jobs/` on this host. Before
    /// this, submissions are refused. Must be called inside the driver's
    /// tokio runtime; a second call is an error.
    pub fn accept_jobs(&self, runner: Arc<dyn JobRunner>, work_dir: &Path) -> Result<()> {
        self.shared
            .jobs
            .install(self.clone(), runner, work_dir.to_path_buf())
    }

    /// Queues a job as a client's submission would (the same checks).
    pub fn submit(&self, kind: &str, settings: &str) -> Result<JobInfo> {
        self.shared.jobs.submit(kind, settings)
    }

    /// Every submitted job, oldest first.
    pub fn jobs(&self) -> Result<Vec<JobInfo>> {
        self.shared.jobs.list()
    }

    /// Publishes the file at `path` (on this host) for executors to stage:
    /// hashes it (once while it keeps its length and modification time)
    /// and serves its contents by hash. See [`crate::staging`].
    pub fn publish(&self, path: &Path) -> Result<crate::staging::FileRef> {
        self.shared.jobs.staged.publish(path)
    }

    /// Bytes of published files served to executors so far.
    pub fn staged_bytes_served(&self) -> u64 {
        self.shared
            .jobs
            .staged
            .served
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Open an in-memory connection to this driver (for an executor in
    /// this process): the client end and its control stream, before the
    /// preamble.
    pub(crate) fn connect_in_memory(&self) -> Result<(Connection, SendHalf, RecvHalf)> {
        let (client, server) = memory_pair();
        self.memory
            .send(server)
            .map_err(|_| Error::DriverGone("driver no longer accepts connections".into()))?;
        Ok(client)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The join token executors need.
    pub fn token(&self) -> &JoinToken {
        &self.token
    }

    /// `TOKEN@ADDR`, what `kiln executor --join` takes.
    pub fn join_string(&self) -> String {
        format!("{}@{}", self.token, self.addr)
    }

    /// The registry this driver resolves names in.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.shared.registry
    }

    /// Membership and scheduler counters.
    pub async fn status(&self) -> Result<ClusterStatus> {
        let (tx, rx) = oneshot::channel();
        self.shared
            .actor
            .cast(DriverMsg::Status(tx))
            .map_err(|e| Error::DriverGone(e.to_string()))?;
        tokio::time::timeout(Duration::from_secs(10), rx)
            .await
            .map_err(|_| Error::DriverGone("status timed out".into()))?
            .map_err(|_| Error::DriverGone("driver actor stopped".into()))
    }

    /// Wait until at least `n` executors are registered.
    pub async fn wait_for_executors(&self, n: usize, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let live = self.status().await?.executors.len();
            if live >= n {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::Invalid(format!(
                    "only {live} of {n} executors registered after {} ms",
                    timeout.as_millis()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Tell executors to exit, stop the actor and close the endpoint
    /// (for every handle of this driver).
    pub async fn shutdown(self) {
        let _ = self.shared.actor.cast(DriverMsg::Shutdown);
        let handle = self.actor_handle.lock().ok().and_then(|mut h| h.take());
        if let Some(h) = handle {
            let _ = tokio::time::timeout(Duration::from_secs(5), h).await;
        }
        // Let the Shutdown frames leave before closing.
        tokio::time::sleep(Duration::from_millis(100)).await;
        self.endpoint
            .close(transport::CLOSE_NORMAL.into(), b"driver shutdown");
    }
}

/// The server end of a connection, after TLS: the connection and its
/// control stream.
type ServerEnd = (Connection, SendHalf, RecvHalf);

/// TLS handshake and control stream of a QUIC connection, then
/// [`serve_connection`].
async fn serve_quic(
    incoming: quinn::Incoming,
    actor: ActorRef<DriverMsg>,
    config: DriverConfig,
    secret: [u8; 32],
    jobs: Arc<JobService>,
) -> Result<()> {
    let peer = incoming.remote_address();
    let hs = config.handshake_timeout;
    let conn = with_timeout(peer, "TLS handshake", hs, async {
        incoming.await.map_err(|e| transport::conn_err(peer, e))
    })
    .await?;
    let (send, recv) = with_timeout(peer, "control stream", hs, async {
        conn.accept_bi()
            .await
            .map_err(|e| transport::conn_err(peer, e))
    })
    .await?;
    serve_connection(
        Connection::Quic(conn),
        Box::pin(send),
        Box::pin(recv),
        actor,
        config,
        secret,
        jobs,
    )
    .await
}

/// The preamble check, then the client or executor protocol; the same for
/// QUIC and in-memory connections.
async fn serve_connection(
    conn: Connection,
    mut send: SendHalf,
    mut recv: RecvHalf,
    actor: ActorRef<DriverMsg>,
    config: DriverConfig,
    secret: [u8; 32],
    jobs: Arc<JobService>,
) -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let peer = conn.peer();
    let hs = config.handshake_timeout;
    let mut pre = [0u8; PREAMBLE_LEN];
    let read = with_timeout(peer, "preamble", hs, async {
        recv.read_exact(&mut pre)
            .await
            .map(|_| ())
            .map_err(|e| transport::conn_err(peer, e))
    })
    .await;
    let role = match read.map(|()| check_preamble(&pre, &secret)) {
        Ok(Ok(role)) => role,
        Ok(Err(status)) => {
            let _ = actor.cast(DriverMsg::Refused);
            let reason = transport::status_reason(status);
            warn!(%peer, reason, "handshake refused");
            let _ = send.write_all(&[status]).await;
            let _ = send.shutdown().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            conn.close(transport::CLOSE_REFUSED, reason.as_bytes());
            return Ok(());
        }
        Err(e) => {
            let _ = actor.cast(DriverMsg::Refused);
            conn.close(transport::CLOSE_REFUSED, b"no valid preamble");
            return Err(e);
        }
    };
    with_timeout(peer, "handshake status", hs, async {
        send.write_all(&[STATUS_OK])
            .await
            .map_err(|e| transport::conn_err(peer, e))
    })
    .await?;
    match role {
        Role::Client => serve_client(conn, send, recv, actor, config, jobs).await,
        Role::Executor => serve_executor(conn, send, recv, actor, config).await,
    }
}

async fn serve_client(
    conn: Connection,
    mut send: SendHalf,
    mut recv: RecvHalf,
    actor: ActorRef<DriverMsg>,
    config: DriverConfig,
    jobs: Arc<JobService>,
) -> Result<()> {
    use tokio::io::AsyncWriteExt;
    let peer = conn.peer();
    let t = config.handshake_timeout;
    let req: Option<ClientRequest> = with_timeout(peer, "client request", t, async {
        read_frame(&mut recv, peer, config.max_control_frame).await
    })
    .await?;
    match req {
        Some(ClientRequest::Session) => {
            let Connection::Quic(quic) = &conn else {
                return Err(Error::Invalid(format!(
                    "{peer}: client sessions need a QUIC connection"
                )));
            };
            // Each request on a bidirectional stream of its own, until the
            // client closes the connection.
            while let Ok((s, r)) = quic.accept_bi().await {
                let (actor, config, jobs) = (actor.clone(), config.clone(), jobs.clone());
                tokio::spawn(async move {
                    let mut send: SendHalf = Box::pin(s);
                    let mut recv: RecvHalf = Box::pin(r);
                    if let Err(e) = crate::jobs::serve_request(
                        &mut send, &mut recv, peer, &actor, &config, &jobs,
                    )
                    .await
                    {
                        debug!(%peer, error = %e, "client request ended with an error");
                    }
                    let _ = send.shutdown().await;
                });
            }
        }
        Some(request) => {
            crate::jobs::answer(request, &mut send, &mut recv, peer, &actor, &config, &jobs)
                .await?;
            let _ = send.shutdown().await;
            let _ = tokio::time::timeout(t, conn.closed()).await;
        }
        None => {}
    }
    Ok(())
}

async fn serve_executor(
    conn: Connection,
    send: SendHalf,
    mut recv: RecvHalf,
    actor: ActorRef<DriverMsg>,
    config: DriverConfig,
) -> Result<()> {
    let peer = conn.peer();
    let max = config.max_control_frame;
    let first: Option<ToDriver> = with_timeout(peer, "register", config.handshake_timeout, async {
        read_frame(&mut recv, peer, max).await
    })
    .await
    .inspect_err(|_| conn.close(transport::CLOSE_PROTOCOL, b"bad register"))?;
    let Some(ToDriver::Register {
        name,
        cores,
        pid,
        peer: peer_addr,
    }) = first
    else {
        conn.close(transport::CLOSE_PROTOCOL, b"expected register");
        return Err(Error::Invalid(format!(
            "{peer}: first frame was not Register"
        )));
    };
    // From here on the driver's link actor owns the connection.
    actor
        .cast(DriverMsg::Joined {
            name,
            cores,
            pid,
            peer: peer_addr,
            conn,
            send,
            recv,
        })
        .map_err(|e| Error::DriverGone(e.to_string()))
}

/// Ask a driver for its [`ClusterStatus`] (what `kiln status` prints).
pub async fn query_status(
    addr: SocketAddr,
    token: &JoinToken,
    timeout: Duration,
) -> Result<ClusterStatus> {
    let (conn, mut send, mut recv) =
        transport::connect_and_handshake(addr, token, Role::Client, timeout).await?;
    let status = with_timeout(addr, "status", timeout, async {
        write_frame(
            &mut send,
            addr,
            &ClientRequest::Status,
            transport::DEFAULT_MAX_CONTROL_FRAME,
        )
        .await?;
        read_frame::<ClusterStatus>(&mut recv, addr, transport::DEFAULT_MAX_BULK_FRAME).await
    })
    .await?
    .ok_or_else(|| Error::Connection {
        peer: addr,
        reason: "driver closed the stream without a status".into(),
    })?;
    conn.close(transport::CLOSE_NORMAL.into(), b"bye");
    Ok(status)
}

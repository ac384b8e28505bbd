//! The executor: registers with a driver, heartbeats, and runs tasks on a
//! blocking thread pool while its actor owns the partition cache.
//!
//! An executor exits when the driver says so, when its connection closes,
//! or when the driver's heartbeats stop for the configured timeout: it never
//! outlives its driver. Its task runner ([`ExecutorActor`]) is a child of
//! an [`supervisor::ExecutorSupervisor`]; when the runner fails (a panic in
//! its handler, a task report that cannot be sent) the executor exits with
//! [`Error::ActorFailed`] instead of running on without it. It does not
//! reconnect (see the supervisor's docs for why).
//!
//! It also holds the map outputs of the shuffles it ran and serves them to
//! the other executors on a peer endpoint of its own (see
//! [`crate::shuffle`]). That endpoint is always QUIC, also for an executor
//! connected to its driver in memory: only driver traffic skips the
//! network.

mod supervisor;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use crate::connection::{client_handshake, Connection, RecvHalf, SendHalf};
use crate::error::{Error, Result};
use crate::plan::{Cache, EvalCtx};
use crate::protocol::{
    Action, PeerAddr, Task, TaskFailure, TaskOutput, TaskReport, ToDriver, ToExecutor,
};
use crate::registry::Registry;
use crate::shuffle::{bind_peer_endpoint, serve_peers, PeerFetcher, ShuffleStore};
use crate::staging::Stager;
use crate::supervise::{panic_message, payload_message, spawn_watched};
use crate::train::{ParamHost, TaskSide};
use crate::transport::{
    self, read_frame, with_timeout, write_frame, JoinToken, PeerIdentity, Role,
};

/// Executor settings.
#[derive(Debug, Clone)]
pub struct ExecutorConfig {
    /// The driver's address.
    pub driver: SocketAddr,
    /// The join token the driver printed.
    pub token: JoinToken,
    /// A name for logs and `kiln status` (default: `host/pid`).
    pub name: Option<String>,
    /// Concurrent task slots (default: available parallelism).
    pub cores: u32,
    /// Time allowed to connect and register.
    pub connect_timeout: Duration,
    /// Largest bulk frame accepted (tasks).
    pub max_bulk_frame: u64,
    /// When notified, leave gracefully: take no new tasks, finish the
    /// running ones, tell the driver (which hands this executor's
    /// partitions to the others) and return `Ok(())`.
    pub leave: Option<Arc<tokio::sync::Notify>>,
    /// Where data files staged from the driver's host are kept, by
    /// content (see [`crate::staging`]).
    pub cache_dir: PathBuf,
}

impl ExecutorConfig {
    /// Settings for joining `driver` with `token`, other fields defaulted.
    pub fn new(driver: SocketAddr, token: JoinToken) -> Self {
        ExecutorConfig {
            driver,
            token,
            name: None,
            cores: std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1),
            connect_timeout: Duration::from_secs(10),
            max_bulk_frame: transport::DEFAULT_MAX_BULK_FRAME,
            leave: None,
            cache_dir: crate::staging::default_cache_dir(),
        }
    }
}

/// Messages of the executor actor.
pub(crate) enum ExecMsg {
    Run(Box<Task>),
    /// A task's report could not be sent (or its runner task panicked):
    /// the connection is broken, so the runner fails and the executor
    /// exits.
    Failed(String),
}

pub(crate) struct ExecutorActor;

/// What the executor actor is started with.
pub(crate) struct ExecArgs {
    registry: Arc<Registry>,
    conn: Connection,
    max_bulk: u64,
    running: Arc<AtomicUsize>,
    store: ShuffleStore,
    fetcher: Arc<PeerFetcher>,
    host: ParamHost,
    executor_id: u64,
    stager: Arc<Stager>,
}

pub(crate) struct ExecState {
    registry: Arc<Registry>,
    cache: Cache,
    conn: Connection,
    max_bulk: u64,
    running: Arc<AtomicUsize>,
    store: ShuffleStore,
    fetcher: Arc<PeerFetcher>,
    host: ParamHost,
    executor_id: u64,
    stager: Arc<Stager>,
}

impl Actor for ExecutorActor {
    type Msg = ExecMsg;
    type State = ExecState;
    type Arguments = ExecArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<ExecMsg>,
        a: ExecArgs,
    ) -> std::result::Result<ExecState, ActorProcessingErr> {
        Ok(ExecState {
            registry: a.registry,
            cache: Arc::new(Mutex::new(HashMap::new())),
            conn: a.conn,
            max_bulk: a.max_bulk,
            running: a.running,
            store: a.store,
            fetcher: a.fetcher,
            host: a.host,
            executor_id: a.executor_id,
            stager: a.stager,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<ExecMsg>,
        msg: ExecMsg,
        st: &mut ExecState,
    ) -> std::result::Result<(), ActorProcessingErr> {
        match msg {
            ExecMsg::Run(task) => {
                let registry = st.registry.clone();
                let cache = st.cache.clone();
                let conn = st.conn.clone();
                let max = st.max_bulk;
                let running = st.running.clone();
                let (store, fetcher) = (st.store.clone(), st.fetcher.clone());
                let (host, executor_id) = (st.host.clone(), st.executor_id);
                let stager = st.stager.clone();
                running.fetch_add(1, Ordering::SeqCst);
                let (me, on_panic) = (myself.clone(), myself.clone());
                // The actor never blocks: fetches are async, compute goes
                // to the blocking pool.
                spawn_watched(
                    "task report sender",
                    async move {
                        let key = task.key;
                        let mut task = *task;
                        let fetching = std::time::Instant::now();
                        let report = match fetcher.fetch_all(&task.fetches).await {
                            Err((lost, reason)) => {
                                warn!(task = %key, blocks = lost.len(), %reason, "shuffle fetch failed");
                                TaskReport {
                                    key,
                                    result: Err(TaskFailure::FetchFailed { lost, reason }),
                                    cached: Vec::new(),
                                }
                            }
                            Ok(blocks) => {
                                task.inputs.extend(blocks);
                                let fetched_in = fetching.elapsed();
                                let compute = move || {
                                    stager.scope(|| {
                                        run_task(
                                            &registry,
                                            &cache,
                                            &store,
                                            &host,
                                            executor_id,
                                            fetched_in,
                                            task,
                                        )
                                    })
                                };
                                let joined = if rayon::current_num_threads() == 1 {
                                    run_on_compute_thread(compute).await
                                } else {
                                    tokio::task::spawn_blocking(compute)
                                        .await
                                        .map_err(panic_message)
                                };
                                match joined {
                                    Ok(r) => r,
                                    Err(e) => TaskReport {
                                        key,
                                        result: Err(TaskFailure::Failed(format!("task {e}"))),
                                        cached: Vec::new(),
                                    },
                                }
                            }
                        };
                        let sent = conn.send_bulk(&report, max, Duration::from_secs(120)).await;
                        running.fetch_sub(1, Ordering::SeqCst);
                        if let Err(e) = sent {
                            let _ = me.cast(ExecMsg::Failed(format!(
                                "could not send the report of task {key}: {e}"
                            )));
                        }
                    },
                    move |m| {
                        let _ = on_panic.cast(ExecMsg::Failed(m));
                    },
                );
            }
            ExecMsg::Failed(reason) => return Err(reason.into()),
        }
        Ok(())
    }
}

/// Runs `compute` on the rayon pool's one thread and awaits its result (or
/// its panic's message).
///
/// With a one-thread pool (`kiln local` gives each executor of a small
/// model one), a task run on a blocking thread handed every parallel
/// tensor operation to that thread and waited for it: two thread wake-ups
/// per layer, each slow on a virtual machine. Run inside the pool, the
/// layers take their serial paths on the thread itself.
async fn run_on_compute_thread<R: Send + 'static>(
    compute: impl FnOnce() -> R + Send + 'static,
) -> std::result::Result<R, String> {
    let (tx, rx) = oneshot::channel();
    rayon::spawn(move || {
        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(compute))
            .map_err(payload_message);
        let _ = tx.send(out);
    });
    rx.await
        .unwrap_or_else(|_| Err("was dropped by the compute pool".into()))
}

/// Compute one task whose shuffle blocks are already in its inputs. Runs
/// on a blocking thread, or inside a one-thread rayon pool.
pub(crate) fn run_task(
    registry: &Registry,
    cache: &Cache,
    store: &ShuffleStore,
    host: &ParamHost,
    executor: u64,
    fetched_in: std::time::Duration,
    task: Task,
) -> TaskReport {
    let Task {
        key,
        plan,
        partition,
        action,
        inputs,
        fetches: _,
    } = task;
    let mut ctx = EvalCtx {
        registry,
        inputs: &inputs,
        cache,
        newly_cached: Vec::new(),
    };
    let side = TaskSide {
        inputs: &inputs,
        store,
        host,
        partition,
        executor,
        fetched_in,
    };
    let result = match &action {
        // Shard operations compute no partition.
        Action::Shard(op) => host.run(registry, store, &inputs, op),
        Action::Train(request) => ctx
            .eval_shared(&plan, partition)
            .and_then(|part| crate::train::run_request(registry, request, part.as_ref(), &side)),
        _ => ctx
            .eval(&plan, partition)
            .and_then(|part| apply_action(registry, store, partition, &action, part)),
    };
    TaskReport {
        key,
        // The whole source chain (a user function's error and its causes):
        // the wire carries text.
        result: result.map_err(|e| TaskFailure::Failed(crate::error::error_chain(&e))),
        cached: ctx.newly_cached,
    }
}

fn apply_action(
    registry: &Registry,
    store: &ShuffleStore,
    partition: u32,
    action: &Action,
    part: Box<dyn crate::registry::Part>,
) -> Result<TaskOutput> {
    Ok(match action {
        Action::Count => TaskOutput::Count(part.len() as u64),
        Action::Collect => TaskOutput::Data(part.encode()?),
        Action::Take(n) => TaskOutput::Data(part.encode_take(*n as usize)?),
        Action::Fold { name, zero } => {
            let f = registry.fold(name)?;
            crate::registry::check_type(name, f.elem, part.elem_type())?;
            TaskOutput::Folded((f.fold)(zero.as_deref(), part)?)
        }
        Action::Foreach { name, args } => {
            let f = registry.foreach_fn(name)?;
            crate::registry::check_type(name, f.elem, part.elem_type())?;
            (f.f)(args, part)?;
            TaskOutput::Done
        }
        Action::ShuffleWrite {
            shuffle,
            name,
            partitions,
        } => {
            let s = registry.shuffle(name)?;
            crate::registry::check_type(name, s.input, part.elem_type())?;
            let buckets = (s.write)(part, *partitions)?;
            let sizes = buckets.iter().map(|b| b.len() as u64).collect();
            store.put(*shuffle, partition, buckets)?;
            TaskOutput::ShuffleWritten { sizes }
        }
        Action::Train(_) | Action::Shard(_) => {
            return Err(Error::Unsupported {
                op: "a training or shard operation in apply_action".into(),
                needs: "run_task, which runs them",
            })
        }
    })
}

/// Run an executor until the driver shuts it down or is lost.
/// Returns `Ok(())` on an orderly shutdown.
pub async fn run_executor(config: ExecutorConfig, registry: Arc<Registry>) -> Result<()> {
    let (conn, send, recv) = transport::connect_and_handshake(
        config.driver,
        &config.token,
        Role::Executor,
        config.connect_timeout,
    )
    .await?;
    serve(
        Connection::Quic(conn),
        Box::pin(send),
        Box::pin(recv),
        config,
        registry,
    )
    .await
}

/// Run an executor over an in-memory connection to a driver in this
/// process ([`crate::Driver::connect_in_memory`]): the same preamble,
/// registration and protocol as [`run_executor`], without a socket.
pub(crate) async fn run_executor_in_memory(
    (conn, mut send, mut recv): (Connection, SendHalf, RecvHalf),
    config: ExecutorConfig,
    registry: Arc<Registry>,
) -> Result<()> {
    client_handshake(
        &conn,
        &mut send,
        &mut recv,
        &config.token,
        Role::Executor,
        config.connect_timeout,
    )
    .await?;
    serve(conn, send, recv, config, registry).await
}

/// Register on an accepted connection and serve until shut down or lost.
async fn serve(
    conn: Connection,
    mut send: SendHalf,
    mut recv: RecvHalf,
    config: ExecutorConfig,
    registry: Arc<Registry>,
) -> Result<()> {
    let peer = conn.peer();
    // The shuffle peer endpoint (always QUIC, also for an in-memory driver
    // connection) before registering: the driver learns its address and
    // certificate fingerprint from `Register`. It binds on the interface
    // towards the driver's QUIC address.
    let identity = PeerIdentity::generate()?;
    let (peer_ep, peer_addr) = bind_peer_endpoint(&identity, config.driver)?;
    let name = config
        .name
        .clone()
        .unwrap_or_else(|| format!("{}/{}", hostname(), std::process::id()));
    let ctl_max = transport::DEFAULT_MAX_CONTROL_FRAME;
    with_timeout(peer, "register", config.connect_timeout, async {
        write_frame(
            &mut send,
            peer,
            &ToDriver::Register {
                name: name.clone(),
                cores: config.cores,
                pid: std::process::id(),
                peer: PeerAddr {
                    addr: peer_addr,
                    fingerprint: identity.fingerprint(),
                },
            },
            ctl_max,
        )
        .await
    })
    .await?;
    let first: Option<ToExecutor> =
        with_timeout(peer, "registration", config.connect_timeout, async {
            read_frame(&mut recv, peer, ctl_max).await
        })
        .await?;
    let Some(ToExecutor::Registered {
        executor_id,
        heartbeat_ms,
        timeout_ms,
    }) = first
    else {
        return Err(Error::ProtocolViolation {
            peer,
            what: "the driver did not confirm the registration".into(),
        });
    };
    info!(executor = executor_id, %name, driver = %peer, shuffle_endpoint = %peer_addr, "registered");
    let running = Arc::new(AtomicUsize::new(0));
    let draining = Arc::new(AtomicBool::new(false));
    let store = ShuffleStore::default();
    let secret = config.token.secret;
    let fetcher = Arc::new(PeerFetcher::new(
        peer_ep.clone(),
        secret,
        config.max_bulk_frame,
        executor_id,
        store.clone(),
    ));
    let peer_links = fetcher.clone();
    // The supervision tree: the task runner, linked under a supervisor
    // that reports its failure here.
    let (failed_tx, failed_rx) = oneshot::channel();
    let (supervisor, _) = Actor::spawn(None, supervisor::ExecutorSupervisor, failed_tx)
        .await
        .map_err(|e| Error::ActorSpawn {
            actor: "the executor supervisor".into(),
            source: e,
        })?;
    let (actor, actor_handle) = Actor::spawn_linked(
        None,
        ExecutorActor,
        ExecArgs {
            registry,
            conn: conn.clone(),
            max_bulk: config.max_bulk_frame,
            running: running.clone(),
            store: store.clone(),
            fetcher,
            host: ParamHost::default(),
            executor_id,
            stager: Arc::new(Stager::new(
                config.driver,
                config.token.clone(),
                config.cache_dir.clone(),
                tokio::runtime::Handle::current(),
            )),
        },
        supervisor.get_cell(),
    )
    .await
    .map_err(|e| Error::ActorSpawn {
        actor: "the executor actor".into(),
        source: e,
    })?;
    // Closes both endpoints and stops the actors however this function
    // ends, including when its task is aborted (a crash, for in-process
    // tests).
    let _guard = ExitGuard {
        conn: conn.clone(),
        peer_ep: peer_ep.clone(),
        actor: actor.clone(),
        supervisor: supervisor.clone(),
    };
    let runner_failed = async {
        match failed_rx.await {
            Ok(reason) => Err(Error::ActorFailed {
                actor: "task runner".into(),
                reason,
            }),
            // The supervisor stopped without a failure: keep serving.
            Err(_) => std::future::pending().await,
        }
    };

    // Links the peer endpoint dropped for breaking the protocol, reported
    // with every heartbeat.
    let dropped_peer_links = Arc::new(AtomicU64::new(0));
    let dropped = dropped_peer_links.clone();
    let beat = move || ToDriver::Heartbeat {
        dropped_peer_links: dropped.load(Ordering::Relaxed),
    };
    // Refused probes of other executors, reported with the heartbeats.
    let (refused_tx, mut refused_rx) = tokio::sync::mpsc::unbounded_channel::<(u64, SocketAddr)>();
    // Heartbeats on the control stream.
    let hb = Duration::from_millis(heartbeat_ms.max(10));
    let leave = config.leave.clone();
    let (drain_flag, drain_running) = (draining.clone(), running.clone());
    let heartbeat = async move {
        let write_timeout = Duration::from_millis(timeout_ms.max(100));
        let mut next_beat = tokio::time::Instant::now() + hb;
        loop {
            let leaving = tokio::select! {
                _ = tokio::time::sleep_until(next_beat) => false,
                _ = wait_for(leave.as_deref()) => true,
                Some((executor, addr)) = refused_rx.recv() => {
                    with_timeout(peer, "probe report", write_timeout, async {
                        let report = ToDriver::ProbeRefused { executor, addr };
                        write_frame(&mut send, peer, &report, ctl_max).await
                    })
                    .await?;
                    continue;
                }
            };
            next_beat = tokio::time::Instant::now() + hb;
            if leaving {
                // Graceful leave: refuse new tasks, finish the running ones
                // (still heartbeating), then tell the driver.
                drain_flag.store(true, Ordering::SeqCst);
                info!("leaving: finishing running tasks");
                let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
                while drain_running.load(Ordering::SeqCst) > 0
                    && tokio::time::Instant::now() < deadline
                {
                    tokio::time::sleep(hb.min(Duration::from_millis(50))).await;
                    with_timeout(peer, "heartbeat write", write_timeout, async {
                        write_frame(&mut send, peer, &beat(), ctl_max).await
                    })
                    .await?;
                }
                with_timeout(peer, "leave", write_timeout, async {
                    write_frame(&mut send, peer, &ToDriver::Leave, ctl_max).await
                })
                .await?;
                let _ = tokio::io::AsyncWriteExt::shutdown(&mut send).await;
                return Ok::<(), Error>(());
            }
            with_timeout(peer, "heartbeat write", write_timeout, async {
                write_frame(&mut send, peer, &beat(), ctl_max).await
            })
            .await?;
        }
    };
    // Control frames from the driver: its heartbeats, shutdown.
    let control = async {
        loop {
            let r: Option<ToExecutor> = with_timeout(
                peer,
                "driver heartbeat",
                Duration::from_millis(timeout_ms.max(100)),
                conn.until_closed("driver heartbeat", read_frame(&mut recv, peer, ctl_max)),
            )
            .await?;
            match r {
                Some(ToExecutor::Heartbeat) | Some(ToExecutor::Registered { .. }) => {}
                Some(ToExecutor::Shutdown) => return Ok::<(), Error>(()),
                Some(ToExecutor::FreeShuffle { shuffle }) => {
                    let freed = store.free(shuffle)?;
                    debug!(shuffle, freed, "shuffle blocks dropped");
                }
                Some(ToExecutor::Probe { executor, addr }) => {
                    let tx = refused_tx.clone();
                    tokio::spawn(async move {
                        if crate::liveness::probe(addr).await.is_some() {
                            let _ = tx.send((executor, addr));
                        }
                    });
                }
                Some(ToExecutor::PeerLost { peer: lost }) => {
                    let closed = peer_links.drop_peer(lost);
                    debug!(peer = %lost, closed, "peer lost: its links closed");
                }
                None => {
                    return Err(Error::Connection {
                        peer,
                        reason: "driver closed the control stream".into(),
                    })
                }
            }
        }
    };
    // Tasks, each on its own unidirectional stream.
    let tasks = async {
        loop {
            let mut s = conn
                .accept_bulk()
                .await
                .ok_or_else(|| transport::conn_err(peer, "connection closed"))?;
            let task: Option<Task> =
                with_timeout(peer, "task body", Duration::from_secs(120), async {
                    read_frame(&mut s, peer, config.max_bulk_frame).await
                })
                .await?;
            if draining.load(Ordering::SeqCst) {
                // Leaving: the driver requeues it when the leave arrives.
                continue;
            }
            if let Some(task) = task {
                actor
                    .cast(ExecMsg::Run(Box::new(task)))
                    .map_err(|e| Error::ActorFailed {
                        actor: "the executor actor".into(),
                        reason: format!("it is gone: {e}"),
                    })?;
            }
        }
        #[allow(unreachable_code)]
        Ok::<(), Error>(())
    };
    let result = tokio::select! {
        r = heartbeat => {
            if r.is_ok() {
                // Left: give the driver a moment to read the leave and close.
                let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
            }
            r
        }
        r = control => r,
        r = tasks => r,
        r = serve_peers(
            peer_ep.clone(),
            store.clone(),
            secret,
            config.max_bulk_frame,
            dropped_peer_links,
        ) => r,
        r = runner_failed => r,
    };
    // Unlink first so stopping the runner is not reported as a failure.
    actor.unlink(supervisor.get_cell());
    supervisor.stop(None);
    actor.stop(None);
    let _ = tokio::time::timeout(Duration::from_secs(2), actor_handle).await;
    conn.close(transport::CLOSE_NORMAL, b"executor exiting");
    peer_ep.close(transport::CLOSE_NORMAL.into(), b"executor exiting");
    match &result {
        Ok(()) => info!(
            executor = executor_id,
            "left the cluster or shut down by the driver"
        ),
        Err(e) => warn!(executor = executor_id, error = %e, "lost the driver; exiting"),
    }
    result
}

/// Closes an executor's connections when [`run_executor`] ends or is
/// dropped: peers then see it gone at once instead of after an idle
/// timeout.
struct ExitGuard {
    conn: Connection,
    peer_ep: quinn::Endpoint,
    actor: ActorRef<ExecMsg>,
    supervisor: ActorRef<()>,
}

impl Drop for ExitGuard {
    fn drop(&mut self) {
        // Unlinked first: an exit is not a runner failure.
        self.actor.unlink(self.supervisor.get_cell());
        self.supervisor.stop(None);
        self.actor.stop(None);
        self.conn
            .close(transport::CLOSE_NORMAL, b"executor exiting");
        self.peer_ep
            .close(transport::CLOSE_NORMAL.into(), b"executor exiting");
    }
}

/// Resolves when `leave` is notified; never without one.
async fn wait_for(leave: Option<&tokio::sync::Notify>) {
    match leave {
        Some(n) => n.notified().await,
        None => std::future::pending().await,
    }
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|s| s.trim().to_owned())
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_compute_thread_returns_results_and_reports_panics() {
        let inside = run_on_compute_thread(|| rayon::current_thread_index().is_some())
            .await
            .unwrap();
        assert!(inside, "the closure ran outside the rayon pool");
        let err = run_on_compute_thread(|| -> u32 { panic!("boom") })
            .await
            .unwrap_err();
        assert_eq!(err, "panicked: boom");
        // The pool survived the panic.
        assert_eq!(run_on_compute_thread(|| 7).await.unwrap(), 7);
    }
}

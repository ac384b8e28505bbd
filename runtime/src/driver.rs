//! The driver: accepts executors over QUIC, tracks membership with
//! heartbeats, and schedules stages of tasks with retry and exclusion.
//!
//! One ractor actor ([`actor::DriverActor`]) owns all driver state, so
//! there are no locks around it: the [`membership::Membership`] of
//! executors and the [`scheduler::Scheduler`], which is pure state (no
//! actor, no network) and unit-tested on its own. The actor supervises
//! one child actor per registered executor
//! ([`executor_link::ExecutorLink`], spawned linked to it), which owns
//! that executor's connection; a link that stops or fails is reported to
//! the driver as a supervision event and the executor is declared lost
//! (or left), its tasks re-queued. Before registration, a plain task per
//! incoming connection runs the handshake ([`accept`]) and never decodes
//! anything before the preamble passed.
//!
//! This file holds the handles: [`Driver`] (public) and
//! [`DriverShared`] (what datasets and jobs reach the actor through).

mod accept;
mod actor;
mod client;
mod config;
mod executor_link;
mod membership;
mod messages;
mod scheduler;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorRef};
use tokio::sync::{mpsc, oneshot};
use tracing::info;

use crate::connection::{memory_pair, Connection, RecvHalf, SendHalf};
use crate::error::{Error, Result};
use crate::jobs::{JobInfo, JobRunner, JobService};
use crate::monitor::{Monitor, MonitorSink};
use crate::protocol::{ClusterStatus, PeerAddr, TaskOutput};
use crate::registry::Registry;
use crate::transport::{self, ClusterIdentity, JoinToken};
use accept::{spawn_memory_accept, spawn_quic_accept, ServerEnd};
use actor::DriverActor;

pub use client::query_status;
pub use config::DriverConfig;
pub(crate) use messages::{DriverMsg, StageTask};

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
    /// What the dashboard and `/metrics` read.
    pub(crate) monitor: Monitor,
    /// Where the driver's parts report to the monitor.
    pub(crate) sink: MonitorSink,
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
        let (sink, events) = Monitor::channel();
        let jobs = Arc::new(JobService::reporting_to(sink.clone()));
        let monitor = Monitor::start(jobs.clone(), events);
        let (actor, handle) = Actor::spawn(None, DriverActor, (config.clone(), sink.clone()))
            .await
            .map_err(|e| Error::DriverGone(e.to_string()))?;
        let shared = Arc::new(DriverShared {
            actor: actor.clone(),
            registry,
            next_id: AtomicU64::new(1),
            jobs: jobs.clone(),
            endpoint: endpoint.clone(),
            secret: token.secret,
            monitor,
            sink,
        });
        let secret = token.secret;
        spawn_quic_accept(
            endpoint.clone(),
            actor.clone(),
            config.clone(),
            secret,
            jobs.clone(),
        );
        let memory = spawn_memory_accept(actor, config, secret, jobs);
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

    /// The monitor: the driver's state as the dashboard shows it.
    pub fn monitor(&self) -> &Monitor {
        &self.shared.monitor
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
                return Err(Error::TooFewExecutors {
                    live,
                    wanted: n,
                    waited_ms: timeout.as_millis() as u64,
                });
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

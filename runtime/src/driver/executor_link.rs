//! [`ExecutorLink`]: one registered executor's connection, as a child actor
//! linked to the driver actor.
//!
//! The link owns the connection: it writes control frames in order, sends
//! each task on its own bulk stream, and runs two watched reader tasks
//! (control frames, task reports) that forward to the driver. The link
//! ends, and the driver's `handle_supervisor_evt` declares the executor
//! lost or left, when
//! * the executor leaves (`Leave`) or its control stream ends: the link
//!   stops with that reason;
//! * the executor breaks the protocol: a frame on its control stream or a
//!   task report is undecodable, oversized or truncated, or it sends
//!   `Register` again. The link logs it with the peer, counts it as a
//!   dropped link ([`DriverMsg::LinkDropped`], `dropped_links` in the
//!   cluster status), closes the connection with
//!   [`CLOSE_PROTOCOL`](transport::CLOSE_PROTOCOL) and fails;
//! * a write fails, the control stream errs otherwise (silence past the
//!   timeout, a lost connection), or a reader panics: the link logs it
//!   with the peer, closes the connection and fails (not counted as
//!   dropped);
//! * the link itself panics (ractor reports it as a failure).
//!
//! The driver keeps serving in every case; only that executor's running
//! tasks are re-queued.

use std::net::SocketAddr;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::task::JoinSet;
use tracing::{debug, warn};

use super::membership::LEFT_GRACEFULLY;
use super::messages::DriverMsg;
use crate::connection::{Connection, RecvHalf, SendHalf};
use crate::error::{Error, Result};
use crate::protocol::{Task, TaskReport, ToDriver, ToExecutor};
use crate::supervise::{panic_message, spawn_watched, TaskSet};
use crate::transport::{self, read_frame, with_timeout, write_frame};

/// How long one control frame may take to write.
const CONTROL_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a link waits, after writing `Shutdown`, for the executor to
/// close the connection.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(500);
/// How long one task may take to send.
const TASK_SEND_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one task report may take to arrive once its stream opened.
const REPORT_READ_TIMEOUT: Duration = Duration::from_secs(300);

/// Messages of an [`ExecutorLink`].
pub(crate) enum LinkMsg {
    /// Write a control frame to the executor (in order).
    Control(ToExecutor),
    /// Send a task on its own bulk stream.
    Task(Box<Task>),
    /// Write `Shutdown`, give the executor a moment to close, answer,
    /// then stop.
    Shutdown(tokio::sync::oneshot::Sender<()>),
    /// The executor's control stream ended in an orderly way: stop with
    /// this reason.
    Ended(String),
    /// A reader or sender of this link failed: the link fails with it.
    Failed(String),
    /// Test hook: panic inside the link's handler.
    #[cfg(test)]
    Crash,
}

/// What a link needs: the executor's id, its connection and control
/// stream (after a successful handshake and `Register`), the driver.
pub(crate) struct LinkArgs {
    pub(crate) id: u64,
    pub(crate) conn: Connection,
    pub(crate) send: SendHalf,
    pub(crate) recv: RecvHalf,
    pub(crate) driver: ActorRef<DriverMsg>,
    pub(crate) max_control: u64,
    pub(crate) max_bulk: u64,
    /// Silence on the control stream after which the reader gives up.
    pub(crate) executor_timeout: Duration,
}

/// The link's state. Dropping it aborts the readers and closes the
/// connection, also when the actor fails (ractor skips `post_stop` then).
pub(crate) struct LinkState {
    id: u64,
    peer: SocketAddr,
    conn: Connection,
    send: SendHalf,
    max_control: u64,
    max_bulk: u64,
    tasks: TaskSet,
}

impl Drop for LinkState {
    fn drop(&mut self) {
        // A no-op if a reader already closed it with a protocol error.
        self.conn
            .close(transport::CLOSE_NORMAL, b"executor link stopped");
    }
}

/// One executor's connection handler, a child of the driver actor.
pub(crate) struct ExecutorLink;

impl Actor for ExecutorLink {
    type Msg = LinkMsg;
    type State = LinkState;
    type Arguments = LinkArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<LinkMsg>,
        args: LinkArgs,
    ) -> std::result::Result<LinkState, ActorProcessingErr> {
        let LinkArgs {
            id,
            conn,
            send,
            recv,
            driver,
            max_control,
            max_bulk,
            executor_timeout,
        } = args;
        let peer = conn.peer();
        let mut tasks = TaskSet::default();
        let me = myself.clone();
        tasks.push(spawn_watched(
            "control reader",
            read_control(
                id,
                conn.clone(),
                recv,
                driver.clone(),
                myself.clone(),
                max_control,
                executor_timeout,
            ),
            move |m| {
                let _ = me.cast(LinkMsg::Failed(m));
            },
        ));
        let me = myself.clone();
        tasks.push(spawn_watched(
            "report reader",
            read_reports(id, conn.clone(), driver, myself, max_bulk),
            move |m| {
                let _ = me.cast(LinkMsg::Failed(m));
            },
        ));
        Ok(LinkState {
            id,
            peer,
            conn,
            send,
            max_control,
            max_bulk,
            tasks,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<LinkMsg>,
        msg: LinkMsg,
        st: &mut LinkState,
    ) -> std::result::Result<(), ActorProcessingErr> {
        match msg {
            LinkMsg::Control(frame) => st.write_control(&frame).await?,
            LinkMsg::Shutdown(done) => {
                if let Err(e) = st.write_control(&ToExecutor::Shutdown).await {
                    debug!(executor = st.id, error = %e, "could not send shutdown");
                }
                let _ = tokio::io::AsyncWriteExt::shutdown(&mut st.send).await;
                // Let the frame arrive: the executor closes on reading it
                // (closing here first could discard it in flight).
                let _ = tokio::time::timeout(SHUTDOWN_GRACE, st.conn.closed()).await;
                let _ = done.send(());
                myself.stop(Some("driver shutdown".into()));
            }
            LinkMsg::Task(task) => {
                let (conn, max, key, me) = (st.conn.clone(), st.max_bulk, task.key, myself.clone());
                let failed = myself.clone();
                st.tasks.push(spawn_watched(
                    "task sender",
                    async move {
                        if let Err(e) = conn.send_bulk(&*task, max, TASK_SEND_TIMEOUT).await {
                            let _ = me.cast(LinkMsg::Failed(format!("sending task {key}: {e}")));
                        }
                    },
                    move |m| {
                        let _ = failed.cast(LinkMsg::Failed(m));
                    },
                ));
            }
            LinkMsg::Ended(reason) => myself.stop(Some(reason)),
            LinkMsg::Failed(reason) => {
                warn!(executor = st.id, peer = %st.peer, %reason, "executor link failed");
                return Err(reason.into());
            }
            #[cfg(test)]
            LinkMsg::Crash => panic!("injected executor link crash"),
        }
        Ok(())
    }
}

impl LinkState {
    async fn write_control(&mut self, frame: &ToExecutor) -> Result<()> {
        let (peer, max) = (self.peer, self.max_control);
        with_timeout(peer, "control write", CONTROL_WRITE_TIMEOUT, async {
            write_frame(&mut self.send, peer, frame, max).await
        })
        .await
    }
}

/// Control frames from the executor: heartbeats go to the driver; `Leave`
/// or the end of the stream stop the link; anything undecodable fails it.
async fn read_control(
    id: u64,
    conn: Connection,
    mut recv: RecvHalf,
    driver: ActorRef<DriverMsg>,
    link: ActorRef<LinkMsg>,
    max: u64,
    timeout: Duration,
) {
    let peer = conn.peer();
    let end = loop {
        let r: Result<Option<ToDriver>> = with_timeout(peer, "heartbeat", timeout, async {
            conn.until_closed("control frames", read_frame(&mut recv, peer, max))
                .await
        })
        .await;
        match r {
            Ok(Some(ToDriver::Heartbeat { dropped_peer_links })) => {
                let _ = driver.cast(DriverMsg::Heartbeat {
                    id,
                    dropped_peer_links,
                });
            }
            Ok(Some(ToDriver::Leave)) => break LinkMsg::Ended(LEFT_GRACEFULLY.to_string()),
            Ok(Some(ToDriver::ProbeRefused { executor, addr })) => {
                let reason = format!(
                    "its host refuses datagrams at {addr} (probed by executor {id}): the executor's process is gone"
                );
                let _ = driver.cast(DriverMsg::GoneReported(executor, reason));
            }
            Ok(Some(ToDriver::Register { .. })) => {
                // Out of order: dropped as for garbage.
                let e = Error::ProtocolViolation {
                    peer,
                    what: format!("executor {id} sent Register again"),
                };
                break drop_link(id, &conn, &driver, "control stream", &e);
            }
            Ok(None) => break LinkMsg::Ended("control stream closed".to_string()),
            Err(e) if conn.closed_normally() => {
                debug!(executor = id, %peer, "connection closed");
                break LinkMsg::Ended(format!("connection closed: {e}"));
            }
            Err(e) if e.breaks_protocol() => {
                break drop_link(id, &conn, &driver, "control stream", &e)
            }
            Err(e) => {
                warn!(executor = id, %peer, error = %e, "control stream error; closing the connection");
                conn.close(transport::CLOSE_PROTOCOL, b"protocol error");
                break LinkMsg::Failed(format!("control stream: {e}"));
            }
        }
    };
    let _ = link.cast(end);
}

/// Executor `id` broke the protocol on `stream` (`e`): its link is
/// dropped and counted ([`DriverMsg::LinkDropped`]), its connection closed
/// with [`CLOSE_PROTOCOL`](transport::CLOSE_PROTOCOL), and the link fails,
/// so the driver declares it lost and re-queues its tasks.
fn drop_link(
    id: u64,
    conn: &Connection,
    driver: &ActorRef<DriverMsg>,
    stream: &str,
    e: &Error,
) -> LinkMsg {
    let peer = conn.peer();
    warn!(executor = id, %peer, error = %e, stream, "executor broke the protocol; dropping its link");
    let _ = driver.cast(DriverMsg::LinkDropped);
    conn.close(transport::CLOSE_PROTOCOL, b"protocol error");
    LinkMsg::Failed(format!("{stream}: {e}"))
}

/// Task reports, one per unidirectional stream, forwarded to the driver.
/// A bad report (oversized, undecodable) closes the connection and fails
/// the link; per-stream readers live in a `JoinSet` and die with this task.
async fn read_reports(
    id: u64,
    conn: Connection,
    driver: ActorRef<DriverMsg>,
    link: ActorRef<LinkMsg>,
    max: u64,
) {
    let peer = conn.peer();
    let mut readers: JoinSet<Result<()>> = JoinSet::new();
    loop {
        tokio::select! {
            s = conn.accept_bulk() => {
                // The connection ended: the control reader reports why.
                let Some(mut s) = s else { return };
                let driver = driver.clone();
                readers.spawn(async move {
                    let r: Option<TaskReport> =
                        with_timeout(peer, "task report", REPORT_READ_TIMEOUT, async {
                            read_frame(&mut s, peer, max).await
                        })
                        .await?;
                    if let Some(report) = r {
                        let _ = driver.cast(DriverMsg::Report(id, report));
                    }
                    Ok(())
                });
            }
            Some(done) = readers.join_next(), if !readers.is_empty() => {
                let failure = match done {
                    Ok(Ok(())) => continue,
                    Ok(Err(e)) if e.breaks_protocol() => {
                        let _ = link.cast(drop_link(id, &conn, &driver, "task report", &e));
                        return;
                    }
                    Ok(Err(e)) => format!("bad task report: {e}"),
                    Err(e) => format!("task report reader {}", panic_message(e)),
                };
                warn!(executor = id, %peer, error = %failure, "closing the connection");
                conn.close(transport::CLOSE_PROTOCOL, b"bad task report");
                let _ = link.cast(LinkMsg::Failed(failure));
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::super::{DriverConfig, DriverMsg};
    use crate::protocol::{PeerAddr, ToDriver, ToExecutor};
    use crate::transport::{self, read_frame, write_frame, Role};
    use crate::{LocalCluster, LocalConfig, Registry};

    fn registry() -> Arc<Registry> {
        let mut r = Registry::new();
        r.register_map("slow_double", |x: i64| {
            std::thread::sleep(Duration::from_millis(40));
            x * 2
        });
        Arc::new(r)
    }

    fn config(n: usize) -> LocalConfig {
        let mut c = LocalConfig::in_process(n);
        c.driver = DriverConfig {
            heartbeat: Duration::from_millis(100),
            executor_timeout: Duration::from_secs(3),
            ..DriverConfig::default()
        };
        c
    }

    async fn bounded<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(60), f)
            .await
            .expect("test step timed out")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_link_loses_only_its_executor_and_the_job_completes() {
        bounded(async {
            let cluster = LocalCluster::start(config(3), registry()).await.unwrap();
            let d = cluster.driver().unwrap();
            let ds = d.parallelize((0..48i64).collect(), 12).unwrap();
            let job = async { ds.map::<i64>("slow_double").unwrap().collect().await };
            let crash = async {
                tokio::time::sleep(Duration::from_millis(150)).await;
                d.shared.actor.cast(DriverMsg::CrashLink(1)).unwrap();
            };
            let (out, ()) = tokio::join!(job, crash);
            assert_eq!(out.unwrap(), (0..48).map(|x| x * 2).collect::<Vec<i64>>());
            let st = d.status().await.unwrap();
            assert_eq!(st.lost, 1, "{st:?}");
            assert_eq!(st.dropped_links, 0, "a crash is no protocol breach: {st:?}");
            assert_eq!(st.executors.len(), 2, "{st:?}");
            assert!(st.executors.iter().all(|e| e.id != 1), "{st:?}");
            // The driver keeps serving.
            assert_eq!(ds.count().await.unwrap(), 48);
            cluster.shutdown().await;
        })
        .await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn garbage_from_a_registered_executor_loses_only_it() {
        bounded(async {
            let cluster = LocalCluster::start(config(2), registry()).await.unwrap();
            let d = cluster.driver().unwrap();
            let t = Duration::from_secs(10);
            // A fake executor: valid token and Register, then a garbage
            // task report for the first task it is given.
            let (conn, mut send, mut recv) =
                transport::connect_and_handshake(d.addr(), d.token(), Role::Executor, t)
                    .await
                    .unwrap();
            let peer = d.addr();
            let register = ToDriver::Register {
                name: "fake".into(),
                cores: 8,
                pid: 0,
                peer: PeerAddr {
                    addr: peer,
                    fingerprint: [0; 32],
                },
            };
            write_frame(&mut send, peer, &register, 1 << 20)
                .await
                .unwrap();
            let first: Option<ToExecutor> = read_frame(&mut recv, peer, 1 << 20).await.unwrap();
            assert!(matches!(first, Some(ToExecutor::Registered { .. })));
            d.wait_for_executors(3, t).await.unwrap();
            let ds = d.parallelize((0..48i64).collect(), 12).unwrap();
            let job = async { ds.map::<i64>("slow_double").unwrap().collect().await };
            let fake = async {
                let _task = conn.accept_uni().await.unwrap();
                let mut s = conn.open_uni().await.unwrap();
                // 0xc1 is never valid MessagePack.
                s.write_all(&4u32.to_be_bytes()).await.unwrap();
                s.write_all(&[0xc1; 4]).await.unwrap();
                s.finish().unwrap();
                conn.closed().await
            };
            let (out, reason) = tokio::join!(job, fake);
            assert_eq!(out.unwrap(), (0..48).map(|x| x * 2).collect::<Vec<i64>>());
            assert!(
                matches!(reason, quinn::ConnectionError::ApplicationClosed(ref c)
                    if c.error_code == transport::CLOSE_PROTOCOL.into()),
                "{reason:?}"
            );
            let st = d.status().await.unwrap();
            assert_eq!(st.lost, 1, "{st:?}");
            assert_eq!(st.dropped_links, 1, "{st:?}");
            assert_eq!(st.executors.len(), 2, "{st:?}");
            cluster.shutdown().await;
        })
        .await
    }
}

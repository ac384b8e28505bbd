//! The driver's accept loops: QUIC connections and in-memory ones (of
//! in-process executors) go through the same handshake, which decodes
//! nothing before the preamble passed; then a client's requests are
//! served, or an executor's `Register` is handed to the driver actor.

use std::sync::Arc;
use std::time::Duration;

use ractor::ActorRef;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::{debug, warn};

use super::config::DriverConfig;
use super::messages::DriverMsg;
use crate::connection::{Connection, RecvHalf, SendHalf};
use crate::error::{Error, Result};
use crate::jobs::JobService;
use crate::monitor::{WireKind, WireMeter};
use crate::protocol::{ClientRequest, ToDriver};
use crate::transport::{
    self, check_preamble, read_frame, with_timeout, Role, PREAMBLE_LEN, STATUS_OK,
};

/// The server end of a connection, after TLS: the connection and its
/// control stream.
pub(crate) type ServerEnd = (Connection, SendHalf, RecvHalf);

/// Serve every incoming QUIC connection of `endpoint`, each in a task of
/// its own, until the endpoint closes.
pub(crate) fn spawn_quic_accept(
    endpoint: quinn::Endpoint,
    actor: ActorRef<DriverMsg>,
    config: DriverConfig,
    secret: [u8; 32],
    jobs: Arc<JobService>,
) {
    tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            let actor = actor.clone();
            let config = config.clone();
            let jobs = jobs.clone();
            tokio::spawn(async move {
                let peer = incoming.remote_address();
                if let Err(e) = serve_quic(incoming, actor, config, secret, jobs).await {
                    warn!(%peer, error = %e, "connection ended with an error");
                }
            });
        }
    });
}

/// The in-process path: the same handshake and link code, with no socket
/// underneath. Connections sent to the returned channel are served; it
/// ends when the sender (the driver) is dropped.
pub(crate) fn spawn_memory_accept(
    actor: ActorRef<DriverMsg>,
    config: DriverConfig,
    secret: [u8; 32],
    jobs: Arc<JobService>,
) -> mpsc::UnboundedSender<ServerEnd> {
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
    memory
}

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
    let served = match role {
        Role::Client => serve_client(conn, send, recv, actor.clone(), config, jobs).await,
        Role::Executor => serve_executor(conn, send, recv, actor.clone(), config).await,
    };
    if served.is_err() {
        let _ = actor.cast(DriverMsg::LinkDropped);
    }
    served
}

/// A client's request (status, jobs), or a session of them on streams of
/// their own; the bytes it moved go to the monitor as it is served.
async fn serve_client(
    conn: Connection,
    send: SendHalf,
    recv: RecvHalf,
    actor: ActorRef<DriverMsg>,
    config: DriverConfig,
    jobs: Arc<JobService>,
) -> Result<()> {
    let mut meter = WireMeter::new(WireKind::Client);
    let served = serve_client_requests(&conn, send, recv, actor, config, &jobs, &mut meter).await;
    meter.report(&jobs.monitor, conn.wire_bytes());
    served
}

async fn serve_client_requests(
    conn: &Connection,
    mut send: SendHalf,
    mut recv: RecvHalf,
    actor: ActorRef<DriverMsg>,
    config: DriverConfig,
    jobs: &Arc<JobService>,
    meter: &mut WireMeter,
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
                return Err(Error::ProtocolViolation {
                    peer,
                    what: "asked for a client session, which needs a QUIC connection".into(),
                });
            };
            serve_session(quic.clone(), recv, actor, config, jobs.clone(), meter).await;
        }
        Some(request) => {
            crate::jobs::answer(request, &mut send, &mut recv, peer, &actor, &config, jobs).await?;
            let _ = send.shutdown().await;
            let _ = tokio::time::timeout(t, conn.closed()).await;
        }
        None => {}
    }
    Ok(())
}

/// A client session: each request on a bidirectional stream of its own,
/// until the client closes the connection; nothing more may come on the
/// control stream (`control`).
///
/// A client that breaks the protocol there (a garbage, oversized or
/// truncated request frame, no request within the handshake timeout on a
/// stream it opened, `Session` on a request stream, any frame on the
/// control stream) loses the whole connection: it is closed with
/// [`CLOSE_PROTOCOL`](transport::CLOSE_PROTOCOL), logged at warn with the
/// client's address and counted once as a dropped link
/// ([`DriverMsg::LinkDropped`]). Its other requests end with it; other
/// clients and the jobs are not disturbed. A request that fails for
/// another reason (the client went away mid-answer) ends only its stream.
async fn serve_session(
    quic: quinn::Connection,
    mut control: RecvHalf,
    actor: ActorRef<DriverMsg>,
    config: DriverConfig,
    jobs: Arc<JobService>,
    meter: &mut WireMeter,
) {
    use tokio::io::AsyncWriteExt;
    let peer = quic.remote_address();
    let totals = |q: &quinn::Connection| {
        let s = q.stats();
        (s.udp_tx.bytes, s.udp_rx.bytes)
    };
    let max = config.max_control_frame;
    // One future for the control stream's one frame, polled across the
    // loop (a frame read is not cancel-safe).
    let control_read = read_frame::<serde::de::IgnoredAny>(&mut control, peer, max);
    tokio::pin!(control_read);
    let mut control_open = true;
    let mut requests = JoinSet::new();
    let breach = loop {
        tokio::select! {
            s = quic.accept_bi() => {
                let Ok((s, r)) = s else { break None };
                let (actor, config, jobs) = (actor.clone(), config.clone(), jobs.clone());
                requests.spawn(async move {
                    let mut send: SendHalf = Box::pin(s);
                    let mut recv: RecvHalf = Box::pin(r);
                    match crate::jobs::read_request(&mut recv, peer, &config).await {
                        Ok(Some(request)) => {
                            let answered = crate::jobs::answer(
                                request, &mut send, &mut recv, peer, &actor, &config, &jobs,
                            )
                            .await;
                            if let Err(e) = answered {
                                debug!(%peer, error = %e, "client request ended with an error");
                            }
                        }
                        Ok(None) => {}
                        // No request in time holds a stream as garbage does.
                        Err(e) if e.breaks_protocol() || matches!(e, Error::Timeout { .. }) => {
                            return Some(e)
                        }
                        Err(e) => debug!(%peer, error = %e, "client request stream failed"),
                    }
                    let _ = send.shutdown().await;
                    None
                });
            }
            Some(done) = requests.join_next(), if !requests.is_empty() => match done {
                Ok(Some(e)) => break Some(e),
                Ok(None) => meter.report(&jobs.monitor, totals(&quic)),
                Err(e) => warn!(%peer, error = %e, "a client request's task failed"),
            },
            r = &mut control_read, if control_open => {
                control_open = false;
                match r {
                    Ok(Some(_)) => break Some(Error::ProtocolViolation {
                        peer,
                        what: "sent a frame on its control stream after opening a session".into(),
                    }),
                    Err(e) if e.breaks_protocol() => break Some(e),
                    // The client finished its control stream, or the
                    // connection is going: requests are served until it
                    // is gone.
                    Ok(None) | Err(_) => {}
                }
            }
        }
    };
    if let Some(e) = breach {
        warn!(%peer, error = %e, "client broke the protocol in its session; dropping its connection");
        quic.close(transport::CLOSE_PROTOCOL.into(), b"bad request");
        let _ = actor.cast(DriverMsg::LinkDropped);
    }
}

/// An executor's `Register`: the connection goes to the driver actor.
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
        return Err(Error::ProtocolViolation {
            peer,
            what: "its first frame was not Register".into(),
        });
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

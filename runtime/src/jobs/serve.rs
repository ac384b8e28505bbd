//! The driver's answers to client requests: cluster status, and submitting,
//! listing, following, cancelling and fetching jobs. One request per
//! stream; a follower's stream stays open until its job ends.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ractor::ActorRef;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

use super::service::JobService;
use super::{JobEvent, JobInfo};
use crate::connection::{RecvHalf, SendHalf};
use crate::driver::{DriverConfig, DriverMsg};
use crate::error::{Error, Result};
use crate::protocol::{ClientRequest, FileHeader, WireError};
use crate::transport::{conn_err, read_frame, with_timeout, write_frame};

/// Bytes of a fetched file per write.
const FETCH_CHUNK: usize = 1 << 20;

/// How often a follower re-reads its job when nothing was announced (a
/// safety net; changes are announced).
const FOLLOW_POLL: Duration = Duration::from_secs(1);

/// Reads the one request of a fresh stream of a client session (`None`:
/// the stream ended without one). `Session` is refused there
/// ([`Error::ProtocolViolation`]): it opens a session on the control stream
/// only.
pub(crate) async fn read_request(
    recv: &mut RecvHalf,
    peer: SocketAddr,
    config: &DriverConfig,
) -> Result<Option<ClientRequest>> {
    let req: Option<ClientRequest> =
        with_timeout(peer, "client request", config.handshake_timeout, async {
            read_frame(recv, peer, config.max_control_frame).await
        })
        .await?;
    if let Some(ClientRequest::Session) = req {
        return Err(Error::ProtocolViolation {
            peer,
            what: "asked for a session on a request stream (sessions open on the control stream)"
                .into(),
        });
    }
    Ok(req)
}

fn wire<T>(r: Result<T>) -> std::result::Result<T, WireError> {
    r.map_err(WireError::from)
}

/// Answers one request on its stream.
pub(crate) async fn answer(
    request: ClientRequest,
    send: &mut SendHalf,
    _recv: &mut RecvHalf,
    peer: SocketAddr,
    actor: &ActorRef<DriverMsg>,
    config: &DriverConfig,
    jobs: &Arc<JobService>,
) -> Result<()> {
    let max = config.max_bulk_frame;
    match request {
        ClientRequest::Status => {
            let (tx, rx) = oneshot::channel();
            actor
                .cast(DriverMsg::Status(tx))
                .map_err(|e| Error::DriverGone(e.to_string()))?;
            let status = rx
                .await
                .map_err(|_| Error::DriverGone("driver actor stopped".into()))?;
            write_frame(send, peer, &status, max).await
        }
        ClientRequest::Session => Err(Error::ProtocolViolation {
            peer,
            what: "a session is opened on the control stream only".into(),
        }),
        ClientRequest::Submit { kind, settings } => {
            // The runner's checks read the disk: off the async threads.
            let service = jobs.clone();
            let reply = tokio::task::spawn_blocking(move || service.submit(&kind, &settings))
                .await
                .map_err(|e| Error::BackgroundTask {
                    task: "checking a submission".into(),
                    source: e,
                })?;
            write_frame(send, peer, &wire(reply), max).await
        }
        ClientRequest::Jobs => {
            let reply = jobs.list()?;
            write_frame(send, peer, &reply, max).await
        }
        ClientRequest::Job { id } => write_frame(send, peer, &wire(jobs.info(id)), max).await,
        ClientRequest::Cancel { id } => write_frame(send, peer, &wire(jobs.cancel(id)), max).await,
        ClientRequest::Follow {
            id,
            from_line,
            follow,
        } => follow_job(send, peer, jobs, id, from_line, follow, max).await,
        ClientRequest::Fetch { id, name } => fetch(send, peer, jobs, id, &name, max).await,
        ClientRequest::Stage { sha256 } => stage(send, peer, jobs, &sha256, max).await,
    }
}

/// Sends the published data file with this hash (as it is now: an
/// executor checks it against the hash it expects).
async fn stage(
    send: &mut SendHalf,
    peer: SocketAddr,
    jobs: &JobService,
    sha256: &[u8; 32],
    max: u64,
) -> Result<()> {
    let refuse = |reason: String| -> std::result::Result<FileHeader, WireError> {
        Err(WireError::Other(reason))
    };
    let Some(path) = jobs.staged.lookup(sha256) else {
        let hex: String = sha256.iter().map(|b| format!("{b:02x}")).collect();
        return write_frame(
            send,
            peer,
            &refuse(format!("no published file has SHA-256 {hex}")),
            max,
        )
        .await;
    };
    let current = {
        let (staged, p) = (jobs.staged.clone(), path.clone());
        tokio::task::spawn_blocking(move || staged.current(&p))
            .await
            .map_err(|e| Error::BackgroundTask {
                task: format!("hashing staged file {}", path.display()),
                source: e,
            })?
    };
    let (len, sha256) = match current {
        Ok(h) => h,
        Err(e) => {
            return write_frame(send, peer, &refuse(format!("{}: {e}", path.display())), max).await
        }
    };
    let sent = send_file(send, peer, &path, FileHeader { len, sha256 }, max).await;
    if sent.is_ok() {
        jobs.staged
            .served
            .fetch_add(len, std::sync::atomic::Ordering::Relaxed);
    }
    sent
}

/// Streams job `id`'s lines from `from` on, its progress, and its end.
async fn follow_job(
    send: &mut SendHalf,
    peer: SocketAddr,
    jobs: &JobService,
    id: u64,
    from: u64,
    follow: bool,
    max: u64,
) -> Result<()> {
    let mut changes = jobs.watch();
    let mut cursor = from;
    let mut last_progress = None;
    loop {
        changes.borrow_and_update();
        let (lines, info) = match jobs.lines_since(id, cursor) {
            Ok(r) => r,
            Err(e) => {
                let reply: std::result::Result<JobEvent, WireError> = Err(e.into());
                return write_frame(send, peer, &reply, max).await;
            }
        };
        for (n, text) in lines {
            cursor = n + 1;
            let event: std::result::Result<JobEvent, WireError> = Ok(JobEvent::Line { n, text });
            write_frame(send, peer, &event, max).await?;
        }
        if info.progress != last_progress {
            if let Some(p) = &info.progress {
                let event: std::result::Result<JobEvent, WireError> =
                    Ok(JobEvent::Progress(p.clone()));
                write_frame(send, peer, &event, max).await?;
            }
            last_progress = info.progress.clone();
        }
        if info.state.is_finished() || !follow {
            // Lines added between the read and the state change were sent
            // above: the state is read with the lines, under one lock.
            return finish(send, peer, info, max).await;
        }
        let _ = tokio::time::timeout(FOLLOW_POLL, changes.changed()).await;
    }
}

async fn finish(send: &mut SendHalf, peer: SocketAddr, info: JobInfo, max: u64) -> Result<()> {
    let event: std::result::Result<JobEvent, WireError> = Ok(JobEvent::Finished(info));
    write_frame(send, peer, &event, max).await
}

/// Sends output `name` of job `id`: a header with its length and SHA-256,
/// then its bytes in chunks (never whole in memory).
async fn fetch(
    send: &mut SendHalf,
    peer: SocketAddr,
    jobs: &JobService,
    id: u64,
    name: &str,
    max: u64,
) -> Result<()> {
    let path = match jobs.output(id, name) {
        Ok(o) => o.path,
        Err(e) => {
            let reply: std::result::Result<FileHeader, WireError> = Err(e.into());
            return write_frame(send, peer, &reply, max).await;
        }
    };
    let io = |e: std::io::Error| Error::JobOutput {
        id,
        output: name.to_string(),
        reason: format!("{}: {e}", path.display()),
    };
    let hashed = {
        let p = path.clone();
        tokio::task::spawn_blocking(move || crate::staging::hash_file(&p))
            .await
            .map_err(|e| Error::BackgroundTask {
                task: format!("hashing output {}", path.display()),
                source: e,
            })?
    };
    let (len, sha256) = match hashed {
        Ok(h) => h,
        Err(e) => {
            let reply: std::result::Result<FileHeader, WireError> = Err(io(e).into());
            return write_frame(send, peer, &reply, max).await;
        }
    };
    send_file(send, peer, &path, FileHeader { len, sha256 }, max).await
}

/// Sends `header`, then the file's `header.len` bytes in chunks (never
/// whole in memory); an error if it shrank meanwhile.
async fn send_file(
    send: &mut SendHalf,
    peer: SocketAddr,
    path: &std::path::Path,
    header: FileHeader,
    max: u64,
) -> Result<()> {
    let io = |e: std::io::Error| Error::Io {
        path: path.display().to_string(),
        source: e,
    };
    let len = header.len;
    let reply: std::result::Result<FileHeader, WireError> = Ok(header);
    write_frame(send, peer, &reply, max).await?;
    let mut file = tokio::fs::File::open(path).await.map_err(io)?;
    let mut buf = vec![0u8; FETCH_CHUNK];
    let mut sent = 0u64;
    while sent < len {
        let want = ((len - sent) as usize).min(buf.len());
        let n = file.read(&mut buf[..want]).await.map_err(io)?;
        if n == 0 {
            return Err(io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the file shrank while it was sent",
            )));
        }
        send.write_all(&buf[..n])
            .await
            .map_err(|e| conn_err(peer, e))?;
        sent += n as u64;
    }
    Ok(())
}

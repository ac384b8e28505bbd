//! [`ClusterClient`]: a program's connection to a driver as a client
//! (`kiln submit`, `kiln jobs`, `kiln status`), authenticated with the
//! cluster's join token like an executor. Each request travels on a stream
//! of its own, so a follower of one job does not hold up other requests.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use tokio::io::AsyncWriteExt;

use super::{JobEvent, JobInfo};
use crate::error::{Error, Result};
use crate::protocol::{ClientRequest, ClusterStatus, FileHeader, WireError};
use crate::transport::{
    self, conn_err, read_frame, with_timeout, write_frame, JoinToken, Role, DEFAULT_MAX_BULK_FRAME,
    DEFAULT_MAX_CONTROL_FRAME,
};

/// A connection to a driver's client service.
pub struct ClusterClient {
    conn: quinn::Connection,
    addr: SocketAddr,
    timeout: Duration,
    /// The control stream, kept open for the session's lifetime.
    _control: quinn::SendStream,
}

/// A fetched output file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedOutput {
    /// Where it was written.
    pub path: PathBuf,
    /// Its length in bytes.
    pub len: u64,
}

type Reply<T> = std::result::Result<T, WireError>;

/// What [`ClusterClient`] received of a file: its length and SHA-256, and
/// the SHA-256 the driver announced.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Received {
    pub(crate) len: u64,
    pub(crate) sha256: [u8; 32],
    pub(crate) announced: [u8; 32],
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl ClusterClient {
    /// Connects to the driver at `addr` with `token` (every network wait
    /// bounded by `timeout`; following a job waits as long as it runs).
    pub async fn connect(addr: SocketAddr, token: &JoinToken, timeout: Duration) -> Result<Self> {
        let (conn, mut send, _recv) =
            transport::connect_and_handshake(addr, token, Role::Client, timeout).await?;
        with_timeout(addr, "session request", timeout, async {
            write_frame(
                &mut send,
                addr,
                &ClientRequest::Session,
                DEFAULT_MAX_CONTROL_FRAME,
            )
            .await
        })
        .await?;
        Ok(ClusterClient {
            conn,
            addr,
            timeout,
            _control: send,
        })
    }

    /// The driver's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    async fn open(
        &self,
        request: &ClientRequest,
    ) -> Result<(quinn::SendStream, quinn::RecvStream)> {
        let addr = self.addr;
        with_timeout(addr, "request stream", self.timeout, async {
            let (mut send, recv) = self.conn.open_bi().await.map_err(|e| conn_err(addr, e))?;
            write_frame(&mut send, addr, request, DEFAULT_MAX_CONTROL_FRAME).await?;
            send.finish().map_err(|e| conn_err(addr, e))?;
            Ok((send, recv))
        })
        .await
    }

    async fn read<T: DeserializeOwned>(
        &self,
        recv: &mut quinn::RecvStream,
        what: &str,
        timeout: Option<Duration>,
    ) -> Result<T> {
        let addr = self.addr;
        let read = async {
            read_frame::<T>(recv, addr, DEFAULT_MAX_BULK_FRAME)
                .await?
                .ok_or_else(|| {
                    conn_err(addr, format!("the driver closed the stream before {what}"))
                })
        };
        match timeout {
            Some(t) => with_timeout(addr, what, t, read).await,
            None => read.await,
        }
    }

    async fn call<T: DeserializeOwned>(&self, request: ClientRequest, what: &str) -> Result<T> {
        let (_send, mut recv) = self.open(&request).await?;
        let reply: Reply<T> = self.read(&mut recv, what, Some(self.timeout)).await?;
        reply.map_err(Error::from)
    }

    /// The cluster's executors and counters.
    pub async fn status(&self) -> Result<ClusterStatus> {
        let (_send, mut recv) = self.open(&ClientRequest::Status).await?;
        self.read(&mut recv, "the status", Some(self.timeout)).await
    }

    /// Submits a job of `kind` with `settings` (JSON); the driver checks
    /// them before queuing ([`Error::SubmissionRefused`] names what is
    /// wrong).
    pub async fn submit(&self, kind: &str, settings: &str) -> Result<JobInfo> {
        self.call(
            ClientRequest::Submit {
                kind: kind.to_string(),
                settings: settings.to_string(),
            },
            "the submission's answer",
        )
        .await
    }

    /// Every job the driver knows, oldest first.
    pub async fn jobs(&self) -> Result<Vec<JobInfo>> {
        let (_send, mut recv) = self.open(&ClientRequest::Jobs).await?;
        self.read(&mut recv, "the job list", Some(self.timeout))
            .await
    }

    /// One job.
    pub async fn job(&self, id: u64) -> Result<JobInfo> {
        self.call(ClientRequest::Job { id }, "the job").await
    }

    /// Cancels a queued or running job.
    pub async fn cancel(&self, id: u64) -> Result<JobInfo> {
        self.call(ClientRequest::Cancel { id }, "the cancellation")
            .await
    }

    /// Calls `on_event` with job `id`'s lines from `from_line` on and its
    /// progress reports; with `follow`, until the job ends (however long
    /// that takes), else until the lines so far are sent. Returns the job's
    /// record at the end.
    pub async fn follow(
        &self,
        id: u64,
        from_line: u64,
        follow: bool,
        mut on_event: impl FnMut(&JobEvent),
    ) -> Result<JobInfo> {
        let (_send, mut recv) = self
            .open(&ClientRequest::Follow {
                id,
                from_line,
                follow,
            })
            .await?;
        loop {
            let event: Reply<JobEvent> = self.read(&mut recv, "the job's output", None).await?;
            let event = event.map_err(Error::from)?;
            on_event(&event);
            if let JobEvent::Finished(info) = event {
                return Ok(info);
            }
        }
    }

    /// Fetches output `name` of job `id` into `dest` (written to a
    /// temporary file beside it, checked against the driver's length and
    /// SHA-256, then renamed into place).
    pub async fn fetch(&self, id: u64, name: &str, dest: &Path) -> Result<FetchedOutput> {
        let out_err = |reason: String| Error::JobOutput {
            id,
            output: name.to_string(),
            reason,
        };
        let request = ClientRequest::Fetch {
            id,
            name: name.to_string(),
        };
        let dir = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let tmp = tempfile::Builder::new()
            .prefix(".kiln-fetch-")
            .tempfile_in(&dir)
            .map_err(|e| out_err(format!("creating a file in {}: {e}", dir.display())))?;
        let got = self.receive(&request, tmp.path(), &out_err).await?;
        if got.sha256 != got.announced {
            return Err(out_err(
                "the bytes received do not match the driver's SHA-256".into(),
            ));
        }
        tmp.persist(dest)
            .map_err(|e| out_err(format!("renaming into {}: {e}", dest.display())))?;
        Ok(FetchedOutput {
            path: dest.to_path_buf(),
            len: got.len,
        })
    }

    /// Fetches the published data file with hash `sha256` into `dest` (an
    /// existing file, overwritten); returns the length and hash of what
    /// arrived (the caller compares them with what it expected). `path`
    /// is the file's name on the driver's host (for errors).
    pub(crate) async fn stage(
        &self,
        sha256: &[u8; 32],
        path: &Path,
        dest: &Path,
    ) -> Result<Received> {
        let err = |reason: String| Error::Staging {
            path: path.to_path_buf(),
            reason: format!("fetching SHA-256 {} from the driver: {reason}", hex(sha256)),
        };
        self.receive(&ClientRequest::Stage { sha256: *sha256 }, dest, &err)
            .await
    }

    /// Sends `request`, then writes the file that answers it into `dest`
    /// (synced), hashing it on the way.
    async fn receive(
        &self,
        request: &ClientRequest,
        dest: &Path,
        err: &dyn Fn(String) -> Error,
    ) -> Result<Received> {
        let (_send, mut recv) = self.open(request).await?;
        let header: Reply<FileHeader> = self
            .read(&mut recv, "the file's header", Some(self.timeout))
            .await?;
        let header = header.map_err(Error::from)?;
        let mut file = tokio::fs::File::create(dest)
            .await
            .map_err(|e| err(format!("creating {}: {e}", dest.display())))?;
        let mut hasher = ring::digest::Context::new(&ring::digest::SHA256);
        let mut got = 0u64;
        let addr = self.addr;
        while got < header.len {
            let chunk = with_timeout(addr, "file bytes", self.timeout, async {
                recv.read_chunk(1 << 20, true)
                    .await
                    .map_err(|e| conn_err(addr, e))
            })
            .await?
            .ok_or_else(|| {
                err(format!(
                    "the driver sent {got} of {} bytes before closing",
                    header.len
                ))
            })?;
            if got + chunk.bytes.len() as u64 > header.len {
                return Err(err(format!(
                    "the driver sent more than the {} bytes announced",
                    header.len
                )));
            }
            hasher.update(&chunk.bytes);
            file.write_all(&chunk.bytes)
                .await
                .map_err(|e| err(format!("writing {}: {e}", dest.display())))?;
            got += chunk.bytes.len() as u64;
        }
        file.sync_all()
            .await
            .map_err(|e| err(format!("writing {}: {e}", dest.display())))?;
        let mut sha256 = [0u8; 32];
        sha256.copy_from_slice(hasher.finish().as_ref());
        Ok(Received {
            len: got,
            sha256,
            announced: header.sha256,
        })
    }

    /// Closes the connection.
    pub fn close(&self) {
        self.conn
            .close(transport::CLOSE_NORMAL.into(), b"client done");
    }
}

impl Drop for ClusterClient {
    fn drop(&mut self) {
        self.close();
    }
}

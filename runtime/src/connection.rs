//! A connection between the driver and one peer, over QUIC or in memory.
//!
//! Both kinds carry the same things the same way: a control stream
//! (ordered byte stream: the handshake preamble, then length-prefixed
//! rmp-serde frames) and any number of one-frame bulk streams, so the
//! driver and executor code above is identical. The in-memory kind is for
//! executors in the driver's process ([`crate::ExecutorMode::InProcessDirect`]):
//! its control stream is a `tokio::io::duplex` pipe and each bulk stream a
//! finished frame handed over on its own channel, so a large task never
//! sits in front of a heartbeat. There is no TLS in memory (nothing leaves
//! the process), but the preamble with the join secret is still checked.

use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, watch};

use crate::error::{Error, Result};
use crate::transport::{self, conn_err, encode, with_timeout};

/// The sending half of a control stream.
pub(crate) type SendHalf = Pin<Box<dyn AsyncWrite + Send>>;
/// The receiving half of a control or bulk stream.
pub(crate) type RecvHalf = Pin<Box<dyn AsyncRead + Send>>;

/// Buffer of an in-memory control stream (frames larger than this are
/// passed through in pieces, with back-pressure, like on a socket).
const MEM_CONTROL_BUFFER: usize = 256 << 10;

/// A driver–peer connection.
#[derive(Clone)]
pub(crate) enum Connection {
    /// Over QUIC (TLS 1.3), between processes or hosts.
    Quic(quinn::Connection),
    /// In memory, within one process.
    Memory(MemConnection),
}

impl Connection {
    /// The peer's address; in-memory peers show as `0.0.0.0:N`, N counting
    /// the in-memory connections of this process.
    pub(crate) fn peer(&self) -> SocketAddr {
        match self {
            Connection::Quic(c) => c.remote_address(),
            Connection::Memory(m) => m.peer,
        }
    }

    /// The peer for `kiln status`: its address, or `in-process #N`.
    pub(crate) fn describe(&self) -> String {
        match self {
            Connection::Quic(c) => c.remote_address().to_string(),
            Connection::Memory(m) => format!("in-process #{}", m.peer.port()),
        }
    }

    /// Bytes sent and received on the wire so far (UDP payload; 0 for an
    /// in-memory connection).
    pub(crate) fn wire_bytes(&self) -> (u64, u64) {
        match self {
            Connection::Quic(c) => {
                let s = c.stats();
                (s.udp_tx.bytes, s.udp_rx.bytes)
            }
            Connection::Memory(_) => (0, 0),
        }
    }

    /// Send one value as one frame on a fresh bulk stream.
    pub(crate) async fn send_bulk<T: Serialize + ?Sized>(
        &self,
        value: &T,
        max: u64,
        timeout: Duration,
    ) -> Result<()> {
        match self {
            Connection::Quic(c) => transport::send_bulk(c, value, max, timeout).await,
            Connection::Memory(m) => {
                let body = encode(value)?;
                let len = body.len() as u64;
                if len > max || len > u32::MAX as u64 {
                    return Err(Error::FrameTooLarge {
                        peer: m.peer,
                        len,
                        max,
                    });
                }
                let mut frame = Vec::with_capacity(4 + body.len());
                frame.extend_from_slice(&(len as u32).to_be_bytes());
                frame.extend_from_slice(&body);
                if m.is_closed() {
                    return Err(conn_err(m.peer, "connection closed"));
                }
                m.bulk_tx
                    .send(frame)
                    .map_err(|_| conn_err(m.peer, "connection closed"))
            }
        }
    }

    /// The next bulk stream from the peer; `None` once the connection is
    /// closed.
    pub(crate) async fn accept_bulk(&self) -> Option<RecvHalf> {
        match self {
            Connection::Quic(c) => c.accept_uni().await.ok().map(|s| Box::pin(s) as RecvHalf),
            Connection::Memory(m) => {
                let mut closed = m.closed.subscribe();
                // Cancel-safe: a dropped call leaves the receiver in place.
                let next = async {
                    let mut rx = m.bulk_rx.lock().await;
                    rx.recv().await
                };
                tokio::select! {
                    _ = closed.wait_for(Option::is_some) => None,
                    f = next => f.map(|f| Box::pin(std::io::Cursor::new(f)) as RecvHalf),
                }
            }
        }
    }

    /// Close with an application code and reason (QUIC: sent to the peer;
    /// in memory: seen by the peer's [`Connection::closed`]).
    pub(crate) fn close(&self, code: u32, reason: &[u8]) {
        match self {
            Connection::Quic(c) => c.close(code.into(), reason),
            Connection::Memory(m) => {
                let _ = m.closed.send_if_modified(|c| {
                    if c.is_some() {
                        return false;
                    }
                    *c = Some((code, String::from_utf8_lossy(reason).into_owned()));
                    true
                });
            }
        }
    }

    /// Whether the connection was closed in an orderly way (either side,
    /// with code [`transport::CLOSE_NORMAL`]), as opposed to a protocol
    /// error, a refusal or a lost peer.
    pub(crate) fn closed_normally(&self) -> bool {
        match self {
            Connection::Quic(c) => match c.close_reason() {
                Some(quinn::ConnectionError::ApplicationClosed(a)) => {
                    a.error_code == transport::CLOSE_NORMAL.into()
                }
                Some(quinn::ConnectionError::LocallyClosed) => true,
                _ => false,
            },
            Connection::Memory(m) => {
                matches!(*m.closed.borrow(), Some((code, _)) if code == transport::CLOSE_NORMAL)
            }
        }
    }

    /// Resolves when the connection is closed (by either side).
    pub(crate) async fn closed(&self) {
        match self {
            Connection::Quic(c) => {
                c.closed().await;
            }
            Connection::Memory(m) => {
                let mut rx = m.closed.subscribe();
                let _ = rx.wait_for(Option::is_some).await;
            }
        }
    }

    /// Read from a stream of this connection until it is closed: a closed
    /// in-memory connection ends its readers as a closed QUIC one does.
    pub(crate) async fn until_closed<T>(
        &self,
        what: &str,
        fut: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        tokio::select! {
            r = fut => r,
            _ = self.closed() => Err(conn_err(self.peer(), format!("connection closed while reading {what}"))),
        }
    }
}

/// One end of an in-memory connection.
#[derive(Clone)]
pub(crate) struct MemConnection {
    peer: SocketAddr,
    bulk_tx: mpsc::UnboundedSender<Vec<u8>>,
    bulk_rx: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Vec<u8>>>>,
    /// `Some((code, reason))` once either end closed; shared by both ends.
    closed: Arc<watch::Sender<Option<(u32, String)>>>,
}

impl MemConnection {
    fn is_closed(&self) -> bool {
        self.closed.borrow().is_some()
    }
}

/// Both ends of a fresh in-memory connection, each with its control
/// stream halves: `(client end, server end)`.
pub(crate) type MemPair = (
    (Connection, SendHalf, RecvHalf),
    (Connection, SendHalf, RecvHalf),
);

/// Create an in-memory connection.
pub(crate) fn memory_pair() -> MemPair {
    static NEXT: AtomicU16 = AtomicU16::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let peer = SocketAddr::from((Ipv4Addr::UNSPECIFIED, n));
    let (closed, _) = watch::channel(None);
    let closed = Arc::new(closed);
    let (a_tx, a_rx) = mpsc::unbounded_channel();
    let (b_tx, b_rx) = mpsc::unbounded_channel();
    let (a_ctl, b_ctl) = tokio::io::duplex(MEM_CONTROL_BUFFER);
    let (a_read, a_write) = tokio::io::split(a_ctl);
    let (b_read, b_write) = tokio::io::split(b_ctl);
    let client = MemConnection {
        peer,
        bulk_tx: a_tx,
        bulk_rx: Arc::new(tokio::sync::Mutex::new(b_rx)),
        closed: closed.clone(),
    };
    let server = MemConnection {
        peer,
        bulk_tx: b_tx,
        bulk_rx: Arc::new(tokio::sync::Mutex::new(a_rx)),
        closed,
    };
    (
        (
            Connection::Memory(client),
            Box::pin(a_write),
            Box::pin(a_read),
        ),
        (
            Connection::Memory(server),
            Box::pin(b_write),
            Box::pin(b_read),
        ),
    )
}

/// Send the preamble on a control stream and wait for the status byte.
pub(crate) async fn client_handshake(
    conn: &Connection,
    send: &mut SendHalf,
    recv: &mut RecvHalf,
    token: &transport::JoinToken,
    role: transport::Role,
    timeout: Duration,
) -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let peer = conn.peer();
    let p = transport::preamble(transport::PROTOCOL_VERSION, &token.secret, role);
    with_timeout(peer, "preamble write", timeout, async {
        send.write_all(&p).await.map_err(|e| conn_err(peer, e))
    })
    .await?;
    let mut status = [0u8; 1];
    with_timeout(peer, "handshake status", timeout, async {
        recv.read_exact(&mut status)
            .await
            .map_err(|e| Error::Refused {
                peer,
                reason: format!("connection closed during handshake: {e}"),
            })
    })
    .await?;
    if status[0] != transport::STATUS_OK {
        return Err(Error::Refused {
            peer,
            reason: transport::status_reason(status[0]).into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::{read_frame, write_frame};

    #[tokio::test]
    async fn memory_streams_carry_frames_and_close_both_ends() {
        let ((a, mut a_send, _a_recv), (b, _b_send, mut b_recv)) = memory_pair();
        let peer = a.peer();
        write_frame(&mut a_send, peer, &(1u32, "hello"), 1 << 10)
            .await
            .unwrap();
        let got: Option<(u32, String)> = read_frame(&mut b_recv, peer, 1 << 10).await.unwrap();
        assert_eq!(got, Some((1, "hello".to_string())));
        // Bulk frames: size-checked like on QUIC, one stream each.
        a.send_bulk(&vec![7u8; 10], 1 << 10, Duration::from_secs(1))
            .await
            .unwrap();
        let big = a
            .send_bulk(&vec![0u8; 4096], 1 << 10, Duration::from_secs(1))
            .await;
        assert!(matches!(big, Err(Error::FrameTooLarge { .. })), "{big:?}");
        let mut s = b.accept_bulk().await.unwrap();
        let v: Option<Vec<u8>> = read_frame(&mut s, peer, 1 << 10).await.unwrap();
        assert_eq!(v, Some(vec![7u8; 10]));
        // Closing one end ends the other's waits.
        assert!(!b.closed_normally());
        a.close(transport::CLOSE_PROTOCOL, b"bye");
        a.close(transport::CLOSE_NORMAL, b"the first close counts");
        tokio::time::timeout(Duration::from_secs(5), b.closed())
            .await
            .unwrap();
        assert!(b.accept_bulk().await.is_none());
        let r = b
            .until_closed("frames", read_frame::<u32>(&mut b_recv, peer, 1 << 10))
            .await;
        assert!(matches!(r, Err(Error::Connection { .. })), "{r:?}");
        assert!(b
            .send_bulk(&1u8, 1 << 10, Duration::from_secs(1))
            .await
            .is_err());
        assert!(!b.closed_normally());
        let ((c, ..), (d, ..)) = memory_pair();
        c.close(transport::CLOSE_NORMAL, b"bye");
        assert!(d.closed_normally());
    }
}

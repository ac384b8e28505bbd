//! The handshake after TLS: the 39-byte preamble (magic, protocol
//! version, join secret, role) checked byte-wise before any frame is
//! decoded, and the status byte that answers it, for driver links and
//! executor-to-executor (peer) links.

use std::net::SocketAddr;
use std::time::Duration;

use super::endpoint::{connect_tls, endpoint, peer_client_config};
use super::link::Link;
use super::tls::PEER_SERVER_NAME;
use super::token::JoinToken;
use super::{conn_err, with_timeout, CLOSE_REFUSED};
use crate::error::{Error, Result};

/// Protocol version sent in the preamble; a mismatch is refused. Version 2:
/// executor-to-executor shuffle (peer address in `Register`). Version 3:
/// shuffle blocks travel as raw bytes after their reply frame. Version 4:
/// a task's shipped inputs are binary strings. Version 5: one step task per
/// shard holder. Version 6: training tasks may carry the previous
/// iteration's step (`TrainRequest::step_first`). Version 7: holders of
/// executor-hosted shards stage their checkpoint blobs as blocks for the
/// driver to fetch (`ShardOp::Stage`) instead of writing files
/// (`ShardOp::Snapshot`). Version 8: an executor's heartbeat carries how
/// many links its peer endpoint dropped for breaking the protocol.
pub const PROTOCOL_VERSION: u16 = 8;
/// Magic bytes opening every control stream.
pub const MAGIC: &[u8; 4] = b"KILN";
/// Length of the handshake preamble in bytes.
pub const PREAMBLE_LEN: usize = 4 + 2 + 32 + 1;

/// Handshake status byte: accepted.
pub const STATUS_OK: u8 = 0;
/// Handshake status byte: bad magic.
pub const STATUS_BAD_MAGIC: u8 = 1;
/// Handshake status byte: protocol version mismatch.
pub const STATUS_BAD_VERSION: u8 = 2;
/// Handshake status byte: wrong join secret.
pub const STATUS_BAD_TOKEN: u8 = 3;
/// Handshake status byte: unknown role.
pub const STATUS_BAD_ROLE: u8 = 4;

/// What a connecting peer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// An executor that will register and run tasks.
    Executor = 1,
    /// A client (`kiln status`) asking questions.
    Client = 2,
}

impl Role {
    fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(Role::Executor),
            2 => Some(Role::Client),
            _ => None,
        }
    }
}

/// Build the 39-byte preamble.
pub fn preamble(version: u16, secret: &[u8; 32], role: Role) -> [u8; PREAMBLE_LEN] {
    let mut p = [0u8; PREAMBLE_LEN];
    p[..4].copy_from_slice(MAGIC);
    p[4..6].copy_from_slice(&version.to_be_bytes());
    p[6..38].copy_from_slice(secret);
    p[38] = role as u8;
    p
}

/// Constant-time comparison of the presented secret.
pub(super) fn secrets_equal(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Check a preamble; returns the role or the status byte to refuse with.
pub fn check_preamble(p: &[u8; PREAMBLE_LEN], secret: &[u8; 32]) -> std::result::Result<Role, u8> {
    if &p[..4] != MAGIC {
        return Err(STATUS_BAD_MAGIC);
    }
    if u16::from_be_bytes([p[4], p[5]]) != PROTOCOL_VERSION {
        return Err(STATUS_BAD_VERSION);
    }
    if !secrets_equal(&p[6..38], secret) {
        return Err(STATUS_BAD_TOKEN);
    }
    Role::from_byte(p[38]).ok_or(STATUS_BAD_ROLE)
}

/// Explain a refusal status byte.
pub fn status_reason(status: u8) -> &'static str {
    match status {
        STATUS_OK => "accepted",
        STATUS_BAD_MAGIC => "not a kiln peer (bad magic)",
        STATUS_BAD_VERSION => "protocol version mismatch",
        STATUS_BAD_TOKEN => "invalid join token",
        STATUS_BAD_ROLE => "unknown role",
        _ => "unknown status",
    }
}

/// Connect, send the preamble and wait for acceptance. Returns the
/// connection and its control stream.
pub async fn connect_and_handshake(
    addr: SocketAddr,
    token: &JoinToken,
    role: Role,
    timeout: Duration,
) -> Result<(quinn::Connection, quinn::SendStream, quinn::RecvStream)> {
    let conn = connect_tls(addr, token, timeout).await?;
    let (mut send, mut recv) = with_timeout(addr, "control stream", timeout, async {
        conn.open_bi().await.map_err(|e| conn_err(addr, e))
    })
    .await?;
    let p = preamble(PROTOCOL_VERSION, &token.secret, role);
    with_timeout(addr, "preamble write", timeout, async {
        send.write_all(&p).await.map_err(|e| conn_err(addr, e))
    })
    .await?;
    let mut status = [0u8; 1];
    with_timeout(addr, "handshake status", timeout, async {
        recv.read_exact(&mut status)
            .await
            .map_err(|e| Error::Refused {
                peer: addr,
                reason: format!("connection closed during handshake: {e}"),
            })
    })
    .await?;
    if status[0] != STATUS_OK {
        return Err(Error::Refused {
            peer: addr,
            reason: status_reason(status[0]).into(),
        });
    }
    Ok((conn, send, recv))
}

/// Connect to a peer from `ep`, pinning its certificate `fingerprint`, and
/// present the cluster `secret` in the preamble (role executor). Returns
/// the connection once the peer accepted the handshake.
pub async fn connect_peer_on(
    ep: &quinn::Endpoint,
    addr: SocketAddr,
    fingerprint: &[u8; 32],
    secret: &[u8; 32],
    timeout: Duration,
) -> Result<quinn::Connection> {
    let config = peer_client_config(fingerprint, addr)?;
    connect_peer_with(ep, config, addr, secret, timeout).await
}

/// [`connect_peer_on`] with a client configuration of the caller's (one
/// that pins the peer's certificate: [`peer_client_config`],
/// [`checkpoint_client_config`]). `ep` may be any endpoint, a serving one
/// included: the configuration is the connection's own.
pub async fn connect_peer_with(
    ep: &quinn::Endpoint,
    config: quinn::ClientConfig,
    addr: SocketAddr,
    secret: &[u8; 32],
    timeout: Duration,
) -> Result<quinn::Connection> {
    let connecting = ep
        .connect_with(config, addr, PEER_SERVER_NAME)
        .map_err(|e| conn_err(addr, e))?;
    let conn = with_timeout(addr, "peer TLS handshake", timeout, async {
        connecting.await.map_err(|e| conn_err(addr, e))
    })
    .await?;
    let (mut send, mut recv) = with_timeout(addr, "peer handshake stream", timeout, async {
        conn.open_bi().await.map_err(|e| conn_err(addr, e))
    })
    .await?;
    let p = preamble(PROTOCOL_VERSION, secret, Role::Executor);
    let mut status = [0u8; 1];
    with_timeout(addr, "peer handshake", timeout, async {
        send.write_all(&p).await.map_err(|e| conn_err(addr, e))?;
        recv.read_exact(&mut status)
            .await
            .map_err(|e| Error::Refused {
                peer: addr,
                reason: format!("connection closed during handshake: {e}"),
            })
    })
    .await?;
    if status[0] != STATUS_OK {
        return Err(Error::Refused {
            peer: addr,
            reason: status_reason(status[0]).into(),
        });
    }
    let _ = send.finish();
    Ok(conn)
}

/// [`connect_peer_on`] from a fresh client-only endpoint (tools, tests).
pub async fn connect_peer(
    addr: SocketAddr,
    fingerprint: &[u8; 32],
    secret: &[u8; 32],
    timeout: Duration,
) -> Result<quinn::Connection> {
    let bind: SocketAddr = if addr.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    let ep = endpoint(bind, None, Link::of(addr))?;
    connect_peer_on(&ep, addr, fingerprint, secret, timeout).await
}

/// Server side of the handshake on a fresh incoming connection: TLS, the
/// first bidirectional stream, the 39-byte preamble checked against
/// `secret` before anything is decoded. A refused peer gets the status
/// byte, the connection is closed with [`CLOSE_REFUSED`] and the result is
/// [`Error::Refused`].
pub async fn accept_handshake(
    incoming: quinn::Incoming,
    secret: &[u8; 32],
    timeout: Duration,
) -> Result<(quinn::Connection, Role)> {
    let peer = incoming.remote_address();
    let conn = with_timeout(peer, "TLS handshake", timeout, async {
        incoming.await.map_err(|e| conn_err(peer, e))
    })
    .await?;
    let (mut send, mut recv) = with_timeout(peer, "handshake stream", timeout, async {
        conn.accept_bi().await.map_err(|e| conn_err(peer, e))
    })
    .await?;
    let mut pre = [0u8; PREAMBLE_LEN];
    let read = with_timeout(peer, "preamble", timeout, async {
        recv.read_exact(&mut pre)
            .await
            .map_err(|e| conn_err(peer, e))
    })
    .await;
    if let Err(e) = read {
        conn.close(CLOSE_REFUSED.into(), b"no valid preamble");
        return Err(e);
    }
    match check_preamble(&pre, secret) {
        Ok(role) => {
            with_timeout(peer, "handshake status", timeout, async {
                send.write_all(&[STATUS_OK])
                    .await
                    .map_err(|e| conn_err(peer, e))
            })
            .await?;
            let _ = send.finish();
            Ok((conn, role))
        }
        Err(status) => {
            let reason = status_reason(status);
            let _ = send.write_all(&[status]).await;
            let _ = send.finish();
            tokio::time::sleep(Duration::from_millis(50)).await;
            conn.close(CLOSE_REFUSED.into(), reason.as_bytes());
            Err(Error::Refused {
                peer,
                reason: reason.into(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preamble_checks() {
        let secret = [7u8; 32];
        let ok = preamble(PROTOCOL_VERSION, &secret, Role::Executor);
        assert_eq!(check_preamble(&ok, &secret), Ok(Role::Executor));
        let v = preamble(PROTOCOL_VERSION + 1, &secret, Role::Executor);
        assert_eq!(check_preamble(&v, &secret), Err(STATUS_BAD_VERSION));
        let t = preamble(PROTOCOL_VERSION, &[8u8; 32], Role::Executor);
        assert_eq!(check_preamble(&t, &secret), Err(STATUS_BAD_TOKEN));
        let mut m = ok;
        m[0] = b'X';
        assert_eq!(check_preamble(&m, &secret), Err(STATUS_BAD_MAGIC));
    }
}

//! Authenticated QUIC transport: cluster CA, join tokens, the handshake
//! preamble and length-prefixed rmp-serde frames.
//!
//! Wire format (see `docs/runtime-protocol.md`):
//! * TLS 1.3 only, ALPN `kiln/1`. A generated identity's chain is
//!   `[leaf, CA]` and the token pins the CA: a client accepts the chain only
//!   if it holds a certificate with the token's SHA-256 and the leaf
//!   verifies against it. A user-supplied identity ([`ClusterIdentity::from_pem_files`])
//!   pins its leaf certificate exactly.
//! * The client opens the control stream and writes a fixed 39-byte
//!   preamble: `b"KILN"`, protocol version (u16 BE), the 32-byte join secret,
//!   a role byte. The driver checks it byte-wise before decoding any frame
//!   and answers one status byte; on refusal it closes the connection.
//! * Then frames: u32 BE length + rmp-serde body, length checked against a
//!   maximum before any allocation.
//!
//! One concept per module: `token` (join tokens), `tls` (identities and
//! certificate pinning), `endpoint` (QUIC endpoints and client
//! configurations), `handshake` (preamble and status byte), `framing`
//! (length-prefixed frames); everything public is re-exported here.

use std::net::SocketAddr;
use std::time::Duration;

pub use quinn;

use crate::error::{Error, Result};

mod endpoint;
mod framing;
mod handshake;
mod link;
mod tls;
mod token;

pub use endpoint::{
    checkpoint_client_config, client_config, connect_tls, peer_client_config, peer_endpoint,
    server_endpoint, CHECKPOINT_STREAM_WINDOW, PEER_IDLE_TIMEOUT,
};
pub use framing::{
    encode, read_frame, send_bulk, write_frame, write_raw_frame, DEFAULT_MAX_BULK_FRAME,
    DEFAULT_MAX_CONTROL_FRAME,
};
pub use handshake::{
    accept_handshake, check_preamble, connect_and_handshake, connect_peer, connect_peer_on,
    connect_peer_with, preamble, status_reason, Role, MAGIC, PREAMBLE_LEN, PROTOCOL_VERSION,
    STATUS_BAD_MAGIC, STATUS_BAD_ROLE, STATUS_BAD_TOKEN, STATUS_BAD_VERSION, STATUS_OK,
};
pub use tls::{
    CertificateFiles, ClusterIdentity, PeerIdentity, ALPN, PEER_SERVER_NAME, SERVER_NAME,
};
pub use token::{fingerprint, parse_join, JoinToken};

/// QUIC application close code for a refused handshake.
pub const CLOSE_REFUSED: u32 = 0x4b01;
/// QUIC application close code for a protocol violation (oversized or
/// undecodable frame).
pub const CLOSE_PROTOCOL: u32 = 0x4b02;
/// QUIC application close code for an orderly shutdown.
pub const CLOSE_NORMAL: u32 = 0;

/// A connection error with `peer` and what went wrong.
pub(crate) fn conn_err(peer: SocketAddr, e: impl std::fmt::Display) -> Error {
    Error::Connection {
        peer,
        reason: e.to_string(),
    }
}

/// Run `fut` with a timeout, mapping expiry to [`Error::Timeout`].
pub async fn with_timeout<T>(
    peer: SocketAddr,
    what: &str,
    timeout: Duration,
    fut: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(Error::Timeout {
            peer,
            what: what.into(),
            millis: timeout.as_millis() as u64,
        }),
    }
}

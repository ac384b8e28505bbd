//! QUIC endpoints and client configurations: UDP sockets with large
//! buffers, the transport settings of each kind of link (driver control,
//! peer links, checkpoint pulls), binding and connecting.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::QuicClientConfig;

use super::link::Link;
use super::tls::{
    crypto_provider, ClusterIdentity, PeerIdentity, PinnedCaVerifier, PinnedCertVerifier, ALPN,
    SERVER_NAME,
};
use super::token::JoinToken;
use super::with_timeout;
use crate::error::{Error, Result};

/// The transport of a connection over `link`: keep-alives, idle timeout,
/// flow-control windows, datagram sizes ([`Link::apply`]).
pub(super) fn transport_config(link: Link) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(Duration::from_secs(1)));
    if let Ok(idle) = quinn::IdleTimeout::try_from(Duration::from_secs(30)) {
        t.max_idle_timeout(Some(idle));
    }
    t.max_concurrent_uni_streams(1024u32.into());
    // Flow-control windows sized for bulk tensor traffic: quinn's defaults
    // (1.25 MB per stream, tuned for 100 ms WAN paths) cap a loopback or
    // LAN transfer at tens of MB/s because the receiver's window, not the
    // link, paces the sender.
    t.stream_receive_window(quinn::VarInt::from_u32(64 << 20));
    t.receive_window(quinn::VarInt::from_u32(256 << 20));
    t.send_window(256 << 20);
    link.apply(&mut t);
    t
}

/// A quinn client configuration that trusts only the CA pinned by `token`.
pub fn client_config(token: &JoinToken) -> Result<quinn::ClientConfig> {
    let provider = Arc::new(crypto_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCaVerifier {
            ca_fingerprint: token.ca_fingerprint,
            provider,
        }))
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = QuicClientConfig::try_from(tls).map_err(|e| Error::Tls(e.to_string()))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(quic));
    cfg.transport_config(Arc::new(transport_config(Link::Network)));
    Ok(cfg)
}

/// Socket buffer size asked for (the kernel caps it at `net.core.rmem_max`
/// / `wmem_max`). The 208 KiB default overflows during bulk tensor
/// transfers, and every dropped datagram costs QUIC a loss-recovery round.
const UDP_BUFFER: usize = 8 << 20;

/// A UDP socket bound to `addr` with large send and receive buffers.
fn bind_udp(addr: SocketAddr) -> Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let err = |e: std::io::Error| Error::Endpoint {
        addr,
        reason: e.to_string(),
    };
    let socket =
        Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP)).map_err(err)?;
    // Best effort: a smaller buffer still works, only slower.
    let _ = socket.set_recv_buffer_size(UDP_BUFFER);
    let _ = socket.set_send_buffer_size(UDP_BUFFER);
    socket.bind(&addr.into()).map_err(err)?;
    Ok(socket.into())
}

/// An endpoint on a [`bind_udp`] socket, serving when `server` is given,
/// with the datagram sizes of `link`: the link of the bound address for a
/// serving endpoint (its server side gets that link's transport), the
/// link towards the one peer of a client-only endpoint.
pub(super) fn endpoint(
    addr: SocketAddr,
    server: Option<quinn::ServerConfig>,
    link: Link,
) -> Result<quinn::Endpoint> {
    let runtime = quinn::default_runtime().ok_or_else(|| Error::Endpoint {
        addr,
        reason: "no async runtime (call from within tokio)".into(),
    })?;
    let server = server.map(|mut s| {
        s.transport_config(Arc::new(transport_config(link)));
        s
    });
    quinn::Endpoint::new(link.endpoint_config(), server, bind_udp(addr)?, runtime).map_err(|e| {
        Error::Endpoint {
            addr,
            reason: e.to_string(),
        }
    })
}

/// Bind a server endpoint.
pub fn server_endpoint(identity: &ClusterIdentity, addr: SocketAddr) -> Result<quinn::Endpoint> {
    endpoint(addr, Some(identity.server_config()?), Link::of(addr))
}

/// Open a QUIC+TLS connection to the driver (no preamble yet). Public so
/// tests can exercise the handshake checks with malformed preambles.
pub async fn connect_tls(
    addr: SocketAddr,
    token: &JoinToken,
    timeout: Duration,
) -> Result<quinn::Connection> {
    let bind: SocketAddr = if addr.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    let link = Link::of(addr);
    let mut ep = endpoint(bind, None, link)?;
    let mut cfg = client_config(token)?;
    cfg.transport_config(Arc::new(transport_config(link)));
    ep.set_default_client_config(cfg);
    let connecting = ep
        .connect(addr, SERVER_NAME)
        .map_err(|e| Error::Connection {
            peer: addr,
            reason: e.to_string(),
        })?;
    with_timeout(addr, "TLS handshake", timeout, async {
        connecting.await.map_err(|e| Error::Connection {
            peer: addr,
            reason: e.to_string(),
        })
    })
    .await
}

/// Idle timeout of executor-to-executor links (keep-alives every second
/// keep a healthy one open): a peer killed without closing its connections
/// is noticed this fast by the executors fetching from it.
pub const PEER_IDLE_TIMEOUT: Duration = Duration::from_secs(5);

/// A quinn client configuration that trusts exactly one peer certificate,
/// for a peer at `addr` (its datagram sizes follow the link there).
pub fn peer_client_config(fingerprint: &[u8; 32], addr: SocketAddr) -> Result<quinn::ClientConfig> {
    pinned_client_config(fingerprint, addr, |_| {})
}

/// Receive window of one stream on which the driver pulls a checkpoint
/// blob from an executor (see [`checkpoint_client_config`]).
pub const CHECKPOINT_STREAM_WINDOW: u32 = 8 << 20;

/// [`peer_client_config`] for the driver's connections to executors'
/// peer endpoints, on which it pulls checkpoint blobs and writes them to
/// disk as they arrive: flow-control windows of
/// [`CHECKPOINT_STREAM_WINDOW`] per stream and `streams` times that per
/// connection (instead of 64 and 256 MiB), so what quinn buffers ahead of
/// a disk slower than the network stays that small, whatever the blob's
/// size. An 8 MiB window still covers the bandwidth-delay product of a
/// 10 Gbit/s link with a 6 ms round trip.
pub fn checkpoint_client_config(
    fingerprint: &[u8; 32],
    addr: SocketAddr,
    streams: u32,
) -> Result<quinn::ClientConfig> {
    pinned_client_config(fingerprint, addr, |t| {
        t.stream_receive_window(quinn::VarInt::from_u32(CHECKPOINT_STREAM_WINDOW));
        t.receive_window(
            quinn::VarInt::from_u64(
                u64::from(CHECKPOINT_STREAM_WINDOW) * u64::from(streams.max(1)),
            )
            .unwrap_or(quinn::VarInt::MAX),
        );
    })
}

/// A client configuration pinning `fingerprint`, with the peer links'
/// transport (the link towards `addr`, [`PEER_IDLE_TIMEOUT`]) adjusted by
/// `tune`.
fn pinned_client_config(
    fingerprint: &[u8; 32],
    addr: SocketAddr,
    tune: impl FnOnce(&mut quinn::TransportConfig),
) -> Result<quinn::ClientConfig> {
    let provider = Arc::new(crypto_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCertVerifier {
            fingerprint: *fingerprint,
            provider,
        }))
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = QuicClientConfig::try_from(tls).map_err(|e| Error::Tls(e.to_string()))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(quic));
    let mut t = transport_config(Link::of(addr));
    if let Ok(idle) = quinn::IdleTimeout::try_from(PEER_IDLE_TIMEOUT) {
        t.max_idle_timeout(Some(idle));
    }
    tune(&mut t);
    cfg.transport_config(Arc::new(t));
    Ok(cfg)
}

/// Bind an executor's peer endpoint: it serves with `identity` and also
/// connects out to other peers.
pub fn peer_endpoint(identity: &PeerIdentity, addr: SocketAddr) -> Result<quinn::Endpoint> {
    endpoint(addr, Some(identity.server_config()?), Link::of(addr))
}

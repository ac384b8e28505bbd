//! Datagram sizing by the kind of path a QUIC connection runs over.
//!
//! QUIC's per-packet work (encryption, header protection, acknowledgement
//! and stream bookkeeping, all in userspace) dominates a bulk transfer, so
//! the datagram size decides the throughput of a connection more than
//! anything else. On loopback the interface MTU is 64 KiB, and a path
//! between two local processes never drops a datagram for its size, so
//! loopback connections let MTU discovery grow datagrams up to ~64 KiB.
//! They then send without UDP segmentation offload: quinn batches up to
//! ten datagrams into one GSO send, which the kernel refuses once the batch
//! exceeds the 64 KiB a UDP send may carry (every such batch is lost, and
//! the losses make quinn fall back to 1,200-byte datagrams), while with
//! ~60 KiB datagrams one send per datagram costs little. Measured on the
//! 2-core project machine with one stream between two endpoints: ~2x the
//! throughput of 1,452-byte datagrams with offload (BENCHMARKS.md).
//!
//! Every other path keeps quinn's conservative 1,452-byte ceiling with
//! offload on: a LAN's MTU is unknown, and larger datagrams with offload
//! would hit the same 64 KiB batch limit on jumbo-frame networks.

use std::net::SocketAddr;

/// Largest UDP payload a loopback endpoint accepts (RFC 9000's maximum).
const LOOPBACK_MAX_UDP_PAYLOAD: u16 = 65_527;
/// Upper bound of MTU discovery on loopback: below the IPv4 (65,507) and
/// IPv6 (65,487) payload limits of a 64 KiB interface MTU.
const LOOPBACK_MTU_CEILING: u16 = 65_000;
/// quinn's default ceiling of MTU discovery, kept for every other path.
const NETWORK_MTU_CEILING: u16 = 1_452;

/// The kind of path between two endpoints, as far as datagram sizes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Link {
    /// Both ends on this machine's loopback interface.
    Loopback,
    /// Anything else (a LAN, a WAN, or an unspecified bind address).
    Network,
}

impl Link {
    /// The link to (or, for a bound endpoint, on) `addr`.
    pub(crate) fn of(addr: SocketAddr) -> Self {
        if addr.ip().is_loopback() {
            Link::Loopback
        } else {
            Link::Network
        }
    }

    /// The endpoint configuration: on loopback, the largest UDP payload
    /// the endpoint will receive (advertised to peers).
    pub(crate) fn endpoint_config(self) -> quinn::EndpointConfig {
        let mut cfg = quinn::EndpointConfig::default();
        if self == Link::Loopback {
            // 65,527 is within quinn's accepted range (1,200..=65,527).
            let _ = cfg.max_udp_payload_size(LOOPBACK_MAX_UDP_PAYLOAD);
        }
        cfg
    }

    /// Sets MTU discovery's ceiling and segmentation offload for this link.
    pub(crate) fn apply(self, t: &mut quinn::TransportConfig) {
        let mut mtu = quinn::MtuDiscoveryConfig::default();
        match self {
            Link::Loopback => {
                mtu.upper_bound(LOOPBACK_MTU_CEILING);
                t.enable_segmentation_offload(false);
            }
            Link::Network => {
                mtu.upper_bound(NETWORK_MTU_CEILING);
                t.enable_segmentation_offload(true);
            }
        }
        t.mtu_discovery_config(Some(mtu));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::transport::{accept_handshake, connect_peer_on, peer_endpoint, PeerIdentity};

    /// A 16 MiB stream between two peer endpoints on 127.0.0.1 arrives
    /// intact, and the sender's datagrams grow well past the 1,452 bytes
    /// of other links (MTU discovery on loopback, no offload batches).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn loopback_connections_carry_large_datagrams() {
        let secret = [9u8; 32];
        let timeout = Duration::from_secs(10);
        let id = PeerIdentity::generate().unwrap();
        let server = peer_endpoint(&id, "127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = server.local_addr().unwrap();
        let data: Vec<u8> = (0..16u32 << 20).map(|i| (i % 251) as u8).collect();
        let expect = data.clone();
        let receiver = tokio::spawn(async move {
            let incoming = server.accept().await.unwrap();
            let (conn, _) = accept_handshake(incoming, &secret, timeout).await.unwrap();
            let mut recv = conn.accept_uni().await.unwrap();
            let got = recv.read_to_end(32 << 20).await.unwrap();
            (got, conn, server)
        });
        let client = peer_endpoint(
            &PeerIdentity::generate().unwrap(),
            "127.0.0.1:0".parse().unwrap(),
        )
        .unwrap();
        let conn = connect_peer_on(&client, addr, &id.fingerprint(), &secret, timeout)
            .await
            .unwrap();
        let mut send = conn.open_uni().await.unwrap();
        send.write_all(&data).await.unwrap();
        send.finish().unwrap();
        let (got, _server_conn, _server) = tokio::time::timeout(timeout, receiver)
            .await
            .unwrap()
            .unwrap();
        assert!(got == expect, "the stream arrived altered");
        // Discovery runs in the background: give it a few round trips.
        let mut mtu = conn.stats().path.current_mtu;
        for _ in 0..50 {
            if mtu > 8_192 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            mtu = conn.stats().path.current_mtu;
        }
        assert!(mtu > 8_192, "loopback datagrams stayed at {mtu} bytes");
    }

    #[test]
    fn loopback_addresses_are_loopback_links() {
        for a in ["127.0.0.1:9", "127.3.4.5:0", "[::1]:7"] {
            assert_eq!(Link::of(a.parse().unwrap()), Link::Loopback, "{a}");
        }
        for a in ["0.0.0.0:0", "10.0.0.2:9", "[::]:0", "[fe80::1]:4"] {
            assert_eq!(Link::of(a.parse().unwrap()), Link::Network, "{a}");
        }
    }
}

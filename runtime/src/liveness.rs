//! Finding a dead executor process before the loss timeout: a datagram
//! to the port its connection comes from, on a socket connected to it. A
//! live QUIC endpoint drops the byte; the host of a dead process answers
//! ICMP port unreachable, which a connected UDP socket reports as
//! `ConnectionRefused`. The driver probes executors whose heartbeat is
//! late and asks the other executors to probe them too (hosts rate-limit
//! ICMP answers per destination, so more askers see the answer sooner).

use std::net::SocketAddr;
use std::time::Duration;

/// How long a probe waits for its host's answer.
const PROBE_WAIT: Duration = Duration::from_millis(250);

/// Sends a one-byte datagram to `addr` from a socket connected to it and
/// waits [`PROBE_WAIT`] for the host's ICMP port unreachable (reported on
/// a connected UDP socket as `ConnectionRefused`). Returns why the
/// executor is gone, or `None` (something answered or nothing did: a live
/// QUIC endpoint drops the byte silently).
pub(crate) async fn probe(addr: SocketAddr) -> Option<String> {
    let bind: SocketAddr = match addr {
        SocketAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], 0)),
        SocketAddr::V6(_) => SocketAddr::from(([0u16; 8], 0)),
    };
    let socket = tokio::net::UdpSocket::bind(bind).await.ok()?;
    socket.connect(addr).await.ok()?;
    let refused = |e: &std::io::Error| e.kind() == std::io::ErrorKind::ConnectionRefused;
    if let Err(e) = socket.send(&[0]).await {
        return refused(&e).then(|| gone(addr));
    }
    let mut buf = [0u8; 16];
    match tokio::time::timeout(PROBE_WAIT, socket.recv(&mut buf)).await {
        Ok(Err(e)) if refused(&e) => Some(gone(addr)),
        _ => None,
    }
}

fn gone(addr: SocketAddr) -> String {
    format!("its host refuses datagrams at {addr}: the executor's process is gone")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_closed_port_is_refused_and_a_live_one_is_not() {
        let live = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let live_addr = live.local_addr().unwrap();
        assert_eq!(probe(live_addr).await, None);
        // The byte arrived and nothing was answered.
        let mut buf = [0u8; 4];
        let (n, _) = live.recv_from(&mut buf).await.unwrap();
        assert_eq!(n, 1);
        let dead_addr = {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            s.local_addr().unwrap()
        };
        let reason = probe(dead_addr).await.expect("refused");
        assert!(reason.contains(&dead_addr.to_string()), "{reason}");
    }
}

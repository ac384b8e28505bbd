//! [`query_status`]: the status client (what `kiln status` runs).

use std::net::SocketAddr;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::protocol::{ClientRequest, ClusterStatus};
use crate::transport::{self, read_frame, with_timeout, write_frame, JoinToken, Role};

/// Ask a driver for its [`ClusterStatus`] (what `kiln status` prints).
pub async fn query_status(
    addr: SocketAddr,
    token: &JoinToken,
    timeout: Duration,
) -> Result<ClusterStatus> {
    let (conn, mut send, mut recv) =
        transport::connect_and_handshake(addr, token, Role::Client, timeout).await?;
    let status = with_timeout(addr, "status", timeout, async {
        write_frame(
            &mut send,
            addr,
            &ClientRequest::Status,
            transport::DEFAULT_MAX_CONTROL_FRAME,
        )
        .await?;
        read_frame::<ClusterStatus>(&mut recv, addr, transport::DEFAULT_MAX_BULK_FRAME).await
    })
    .await?
    .ok_or_else(|| Error::Connection {
        peer: addr,
        reason: "driver closed the stream without a status".into(),
    })?;
    conn.close(transport::CLOSE_NORMAL.into(), b"bye");
    Ok(status)
}

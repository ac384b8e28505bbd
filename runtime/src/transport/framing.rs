//! Frames: a u32 big-endian length, checked against a maximum before any
//! allocation, then an rmp-serde body; and the bulk path (one value per
//! unidirectional stream).

use std::net::SocketAddr;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{conn_err, with_timeout};
use crate::error::{Error, Result};

/// Default maximum control frame (1 MiB).
pub const DEFAULT_MAX_CONTROL_FRAME: u64 = 1 << 20;
/// Default maximum bulk frame (512 MiB).
pub const DEFAULT_MAX_BULK_FRAME: u64 = 512 << 20;

/// Encode a value as an rmp-serde frame body.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    rmp_serde::to_vec(value).map_err(|e| Error::Encode(e.to_string()))
}

/// Write one frame: u32 BE length, then the body. `send` is any byte
/// stream: a QUIC stream, or an in-memory one for in-process executors.
pub async fn write_frame<T: Serialize + ?Sized>(
    send: &mut (impl AsyncWrite + Unpin + ?Sized),
    peer: SocketAddr,
    value: &T,
    max: u64,
) -> Result<()> {
    let body = encode(value)?;
    write_raw_frame(send, peer, &body, max).await
}

/// Write one already-encoded frame body.
pub async fn write_raw_frame(
    send: &mut (impl AsyncWrite + Unpin + ?Sized),
    peer: SocketAddr,
    body: &[u8],
    max: u64,
) -> Result<()> {
    let len = body.len() as u64;
    if len > max || len > u32::MAX as u64 {
        return Err(Error::FrameTooLarge { peer, len, max });
    }
    send.write_all(&(len as u32).to_be_bytes())
        .await
        .map_err(|e| conn_err(peer, e))?;
    send.write_all(body).await.map_err(|e| conn_err(peer, e))
}

/// Read one frame. `Ok(None)` on a clean end of stream before a header;
/// [`Error::FrameTruncated`] if the stream ends inside a frame.
/// `recv` is any byte stream, like `send` of [`write_frame`].
pub async fn read_frame<T: DeserializeOwned>(
    recv: &mut (impl AsyncRead + Unpin + ?Sized),
    peer: SocketAddr,
    max: u64,
) -> Result<Option<T>> {
    let mut header = [0u8; 4];
    let got = read_full(recv, peer, &mut header).await?;
    if got == 0 {
        return Ok(None);
    }
    if got < header.len() {
        return Err(Error::FrameTruncated {
            peer,
            part: "header",
            got: got as u64,
            expected: header.len() as u64,
        });
    }
    let len = u32::from_be_bytes(header) as u64;
    if len > max {
        return Err(Error::FrameTooLarge { peer, len, max });
    }
    let mut body = vec![0u8; len as usize];
    let got = read_full(recv, peer, &mut body).await?;
    if got < body.len() {
        return Err(Error::FrameTruncated {
            peer,
            part: "body",
            got: got as u64,
            expected: len,
        });
    }
    rmp_serde::from_slice(&body)
        .map(Some)
        .map_err(|e| Error::Decode {
            peer,
            reason: e.to_string(),
        })
}

/// Fills `buf` unless the stream ends first; returns how many bytes
/// arrived (less than `buf.len()` only at the end of the stream).
async fn read_full(
    recv: &mut (impl AsyncRead + Unpin + ?Sized),
    peer: SocketAddr,
    buf: &mut [u8],
) -> Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        let n = recv
            .read(&mut buf[got..])
            .await
            .map_err(|e| conn_err(peer, e))?;
        if n == 0 {
            break;
        }
        got += n;
    }
    Ok(got)
}

/// Send one value on a fresh unidirectional stream (bulk path: task
/// descriptions and results never share a stream with heartbeats).
pub async fn send_bulk<T: Serialize + ?Sized>(
    conn: &quinn::Connection,
    value: &T,
    max: u64,
    timeout: Duration,
) -> Result<()> {
    let peer = conn.remote_address();
    let body = encode(value)?;
    with_timeout(peer, "bulk send", timeout, async {
        let mut s = conn.open_uni().await.map_err(|e| conn_err(peer, e))?;
        write_raw_frame(&mut s, peer, &body, max).await?;
        s.finish().map_err(|e| conn_err(peer, e))?;
        Ok(())
    })
    .await
}

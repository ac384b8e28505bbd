//! The runtime's decoders of outside input as plain functions of a byte
//! slice, for fuzz targets (`fuzz/`) and the tests that replay their
//! corpora. Each runs the decoder the runtime itself uses on bytes from a
//! network peer or a file, and discards the result: what matters is that
//! no input panics, aborts, hangs or allocates without bound.

use std::net::SocketAddr;

use crate::checkpoint::{decode_owner, CheckpointRecord};
use crate::protocol::{
    ClientRequest, FetchReply, FetchRequest, FileHeader, TaskOutput, TaskReport, ToDriver,
    ToExecutor, WireError,
};
use crate::transport::{self, PREAMBLE_LEN};

/// Largest frame the fuzzed reader accepts (the control-stream default).
const MAX_FRAME: u64 = transport::DEFAULT_MAX_CONTROL_FRAME;

fn peer() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 1))
}

thread_local! {
    static RUNTIME: Option<tokio::runtime::Runtime> =
        tokio::runtime::Builder::new_current_thread().build().ok();
}

/// Reads length-prefixed frames from `data` as a control stream carries
/// them, decoding each as every kind of message, until the stream ends or
/// a frame is refused.
pub fn frames(data: &[u8]) {
    RUNTIME.with(|rt| {
        let Some(rt) = rt else {
            return;
        };
        rt.block_on(async {
            let mut stream = data;
            for _ in 0..64 {
                let before = stream.len();
                match transport::read_frame::<ToDriver>(&mut stream, peer(), MAX_FRAME).await {
                    Ok(Some(_)) | Err(crate::Error::Decode { .. }) => {}
                    Ok(None) | Err(_) => break,
                }
                if stream.len() == before {
                    break;
                }
            }
            let mut stream = data;
            let _ = transport::read_frame::<ToExecutor>(&mut stream, peer(), MAX_FRAME).await;
            let mut stream = data;
            let _ = transport::read_frame::<ClientRequest>(&mut stream, peer(), MAX_FRAME).await;
        })
    })
}

/// Decodes `data` as one message body of every kind a peer sends.
pub fn messages(data: &[u8]) {
    let _ = rmp_serde::from_slice::<ToDriver>(data);
    let _ = rmp_serde::from_slice::<ToExecutor>(data);
    let _ = rmp_serde::from_slice::<ClientRequest>(data);
    let _ = rmp_serde::from_slice::<TaskReport>(data);
    let _ = rmp_serde::from_slice::<TaskOutput>(data);
    let _ = rmp_serde::from_slice::<FetchRequest>(data);
    let _ = rmp_serde::from_slice::<FetchReply>(data);
    let _ = rmp_serde::from_slice::<FileHeader>(data);
    let _ = rmp_serde::from_slice::<WireError>(data);
}

/// Checks `data` as a handshake preamble, against a fixed secret and
/// against the secret the preamble itself presents.
pub fn preamble(data: &[u8]) {
    let Some(p) = data.get(..PREAMBLE_LEN) else {
        return;
    };
    let mut bytes = [0u8; PREAMBLE_LEN];
    bytes.copy_from_slice(p);
    let _ = transport::check_preamble(&bytes, &[7u8; 32]);
    let mut presented = [0u8; 32];
    presented.copy_from_slice(&bytes[6..38]);
    let _ = transport::check_preamble(&bytes, &presented);
}

/// Parses `data` as a `TOKEN@HOST:PORT` join string.
pub fn join_string(data: &[u8]) {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = transport::parse_join(s);
    }
}

/// Decodes `data` as a checkpoint commit record and as a store's owner
/// file.
pub fn checkpoint_record(data: &[u8]) {
    let _ = CheckpointRecord::decode(1, data);
    let _ = decode_owner(std::path::Path::new("owner"), data);
}

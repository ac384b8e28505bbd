//! Files that travel from the driver's host to executors (and to clients):
//! content hashes and the content-addressed cache.

use std::io::Read;
use std::path::Path;

/// Bytes read per call while hashing.
const HASH_CHUNK: usize = 1 << 20;

/// Length and SHA-256 of the file at `path`, read in chunks.
pub fn hash_file(path: &Path) -> std::io::Result<(u64, [u8; 32])> {
    let mut file = std::fs::File::open(path)?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; HASH_CHUNK];
    let mut len = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
        len += n as u64;
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    Ok((len, out))
}

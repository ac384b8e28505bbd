//! The join token (cluster secret plus the pinned certificate's
//! SHA-256) and its text form, and certificate fingerprints.

use std::net::SocketAddr;

use crate::error::{Error, Result};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex32(s: &str) -> Result<[u8; 32]> {
    if s.len() != 64 {
        return Err(Error::BadToken(format!(
            "expected 64 hex digits, got {}",
            s.len()
        )));
    }
    // Bytes, not string slices: a multi-byte character must be an error,
    // not a slice off a character boundary.
    let digit = |b: u8| {
        char::from(b)
            .to_digit(16)
            .ok_or_else(|| Error::BadToken(format!("not hex: {:?}", char::from(b))))
    };
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(s.as_bytes().chunks_exact(2)) {
        *o = (digit(pair[0])? * 16 + digit(pair[1])?) as u8;
    }
    Ok(out)
}

/// SHA-256 of a DER certificate.
pub fn fingerprint(der: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, der);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// The join token: the cluster secret plus the CA fingerprint. Its text form
/// is `kiln1-<64 hex secret>-<64 hex fingerprint>`.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// Shared secret an executor presents in the preamble.
    pub secret: [u8; 32],
    /// SHA-256 (of the DER) of the certificate executors pin: the generated
    /// cluster CA, or the leaf of a user-supplied chain.
    pub ca_fingerprint: [u8; 32],
}

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never log the secret.
        write!(f, "JoinToken(ca={})", hex(&self.ca_fingerprint))
    }
}

impl std::fmt::Display for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "kiln1-{}-{}",
            hex(&self.secret),
            hex(&self.ca_fingerprint)
        )
    }
}

impl std::str::FromStr for JoinToken {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let mut parts = s.trim().split('-');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some("kiln1"), Some(secret), Some(fp), None) => Ok(JoinToken {
                secret: unhex32(secret)?,
                ca_fingerprint: unhex32(fp)?,
            }),
            _ => Err(Error::BadToken(
                "expected kiln1-<secret>-<fingerprint>".into(),
            )),
        }
    }
}

/// Parse `TOKEN@HOST:PORT`.
pub fn parse_join(s: &str) -> Result<(JoinToken, SocketAddr)> {
    let (tok, addr) = s
        .rsplit_once('@')
        .ok_or_else(|| Error::BadToken("expected TOKEN@HOST:PORT".into()))?;
    let addr = addr
        .parse()
        .map_err(|e| Error::BadToken(format!("bad address {addr:?}: {e}")))?;
    Ok((tok.parse()?, addr))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::ClusterIdentity;

    #[test]
    fn token_round_trips_and_rejects_garbage() {
        let id = ClusterIdentity::generate().unwrap();
        let s = id.token().to_string();
        let t: JoinToken = s.parse().unwrap();
        assert_eq!(&t, id.token());
        assert!("kiln1-abc-def".parse::<JoinToken>().is_err());
        assert!("nonsense".parse::<JoinToken>().is_err());
        let (t2, addr) = parse_join(&format!("{s}@127.0.0.1:7000")).unwrap();
        assert_eq!(t2, t);
        assert_eq!(addr.port(), 7000);
        // Found by the `join_string` fuzz target: a multi-byte character
        // inside a hex field panicked (a slice off a character boundary).
        let mut bad = "ab".repeat(31);
        bad.push('é');
        assert_eq!(bad.len(), 64);
        let err = format!("kiln1-{bad}-{}", "cd".repeat(32))
            .parse::<JoinToken>()
            .unwrap_err();
        assert!(err.to_string().contains("not hex"), "{err}");
    }
}

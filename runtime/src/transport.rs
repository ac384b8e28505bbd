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

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use quinn;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::{Error, Result};

mod link;

use link::Link;

/// Protocol version sent in the preamble; a mismatch is refused. Version 2:
/// executor-to-executor shuffle (peer address in `Register`). Version 3:
/// shuffle blocks travel as raw bytes after their reply frame. Version 4:
/// a task's shipped inputs are binary strings. Version 5: one step task per
/// shard holder. Version 6: training tasks may carry the previous
/// iteration's step (`TrainRequest::step_first`). Version 7: holders of
/// executor-hosted shards stage their checkpoint blobs as blocks for the
/// driver to fetch (`ShardOp::Stage`) instead of writing files
/// (`ShardOp::Snapshot`).
pub const PROTOCOL_VERSION: u16 = 7;
/// Magic bytes opening every control stream.
pub const MAGIC: &[u8; 4] = b"KILN";
/// ALPN protocol id.
pub const ALPN: &[u8] = b"kiln/1";
/// TLS server name the driver's certificate carries.
pub const SERVER_NAME: &str = "kiln-driver";
/// Length of the handshake preamble in bytes.
pub const PREAMBLE_LEN: usize = 4 + 2 + 32 + 1;
/// Default maximum control frame (1 MiB).
pub const DEFAULT_MAX_CONTROL_FRAME: u64 = 1 << 20;
/// Default maximum bulk frame (512 MiB).
pub const DEFAULT_MAX_BULK_FRAME: u64 = 512 << 20;

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

/// QUIC application close code for a refused handshake.
pub const CLOSE_REFUSED: u32 = 0x4b01;
/// QUIC application close code for a protocol violation (oversized or
/// undecodable frame).
pub const CLOSE_PROTOCOL: u32 = 0x4b02;
/// QUIC application close code for an orderly shutdown.
pub const CLOSE_NORMAL: u32 = 0;

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
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16)
            .map_err(|e| Error::BadToken(format!("not hex: {e}")))?;
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

/// Paths of a user-supplied certificate chain and private key, both PEM
/// (what `kiln driver --cert FILE --key FILE` takes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateFiles {
    /// The certificate chain, leaf first (PEM `CERTIFICATE` blocks).
    pub cert: PathBuf,
    /// The leaf's private key (PEM PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// The driver's TLS identity: a generated cluster CA and a leaf certificate
/// it signed, or a user-supplied chain and key.
pub struct ClusterIdentity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    token: JoinToken,
}

impl ClusterIdentity {
    /// Create a fresh CA, leaf certificate and random join secret.
    pub fn generate() -> Result<Self> {
        let tls = |e: rcgen::Error| Error::Tls(e.to_string());
        let ca_key = rcgen::KeyPair::generate().map_err(tls)?;
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(tls)?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "kiln cluster CA");
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).map_err(tls)?;
        let leaf_key = rcgen::KeyPair::generate().map_err(tls)?;
        let leaf_params =
            rcgen::CertificateParams::new(vec![SERVER_NAME.to_string()]).map_err(tls)?;
        let leaf = leaf_params.signed_by(&leaf_key, &ca).map_err(tls)?;
        let ca_der = ca.der().clone();
        let token = JoinToken {
            secret: rand::random(),
            ca_fingerprint: fingerprint(&ca_der),
        };
        Ok(ClusterIdentity {
            chain: vec![leaf.der().clone(), ca_der],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
            token,
        })
    }

    /// Load a user-supplied identity: the certificate chain (leaf first) and
    /// the leaf's private key, both PEM, with a fresh random join secret.
    /// The join token pins the leaf exactly (its SHA-256), so the leaf's
    /// names and issuer do not matter to executors. Errors name the file
    /// and the problem: unreadable, no PEM certificate (empty chain), no
    /// PEM private key, an unsupported key, or a key that does not match
    /// the leaf.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|source| Error::Io {
                path: p.display().to_string(),
                source,
            })
        };
        let (cert_pem, key_pem) = (read(cert)?, read(key)?);
        let cert_err = |reason: String| Error::Certificate {
            path: cert.display().to_string(),
            reason,
        };
        let key_err = |reason: String| Error::Certificate {
            path: key.display().to_string(),
            reason,
        };
        let chain = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| cert_err(format!("not valid PEM: {e}")))?;
        let Some(leaf) = chain.first() else {
            return Err(cert_err(
                "no PEM CERTIFICATE block found (empty certificate chain)".into(),
            ));
        };
        let fp = fingerprint(leaf);
        let key_der = match PrivateKeyDer::from_pem_slice(&key_pem) {
            Ok(k) => k,
            Err(rustls::pki_types::pem::Error::NoItemsFound) => {
                return Err(key_err(
                    "no PEM private key found (expected PKCS#8, PKCS#1 or SEC1)".into(),
                ))
            }
            Err(e) => return Err(key_err(format!("not valid PEM: {e}"))),
        };
        let provider = rustls::crypto::ring::default_provider();
        let signing = provider
            .key_provider
            .load_private_key(key_der.clone_key())
            .map_err(|e| key_err(format!("unsupported private key: {e}")))?;
        rustls::sign::CertifiedKey::new(chain.clone(), signing)
            .keys_match()
            .map_err(|e| match e {
                rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
                    key_err(format!(
                        "the private key does not match the first certificate in {}",
                        cert.display()
                    ))
                }
                rustls::Error::InconsistentKeys(_) => key_err(format!(
                    "cannot check that the key matches the certificate: {e}"
                )),
                other => cert_err(format!("the first certificate is not valid X.509: {other}")),
            })?;
        Ok(ClusterIdentity {
            chain,
            key: key_der,
            token: JoinToken {
                secret: rand::random(),
                ca_fingerprint: fp,
            },
        })
    }

    /// Load the files of `files` ([`ClusterIdentity::from_pem_files`]), or
    /// generate an identity when none are given.
    pub fn load_or_generate(files: Option<&CertificateFiles>) -> Result<Self> {
        match files {
            Some(f) => Self::from_pem_files(&f.cert, &f.key),
            None => Self::generate(),
        }
    }

    /// The join token executors must present.
    pub fn token(&self) -> &JoinToken {
        &self.token
    }

    /// A quinn server configuration for this identity.
    pub fn server_config(&self) -> Result<quinn::ServerConfig> {
        let provider = Arc::new(crypto_provider());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| Error::Tls(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| Error::Tls(e.to_string()))?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let quic = QuicServerConfig::try_from(tls).map_err(|e| Error::Tls(e.to_string()))?;
        let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(quic));
        cfg.transport_config(Arc::new(transport_config(Link::Network)));
        Ok(cfg)
    }
}

/// The TLS provider of every connection: ring, with AES-128-GCM preferred
/// over AES-256-GCM (rustls's default order). Both are TLS 1.3 suites of
/// the same construction; 10 AES rounds per block instead of 14 make bulk
/// tensor traffic, whose encryption and decryption are a sixth of a
/// parameter sync's CPU time, cheaper. The client's order decides (rustls
/// servers follow it); a peer with another order still connects.
fn crypto_provider() -> rustls::crypto::CryptoProvider {
    let mut provider = rustls::crypto::ring::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|suite| match suite.suite() {
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256 => 0,
            rustls::CipherSuite::TLS13_AES_256_GCM_SHA384 => 1,
            _ => 2,
        });
    provider
}

/// The transport of a connection over `link`: keep-alives, idle timeout,
/// flow-control windows, datagram sizes ([`Link::apply`]).
fn transport_config(link: Link) -> quinn::TransportConfig {
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

/// Accepts the driver's certificate if it is exactly the one pinned by the
/// join token (a user-supplied identity), or if the chain contains the CA
/// pinned by the token and the leaf verifies against that CA for
/// [`SERVER_NAME`] (a generated identity). Either way TLS 1.3 then checks
/// that the driver holds the leaf's private key.
#[derive(Debug)]
struct PinnedCaVerifier {
    ca_fingerprint: [u8; 32],
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        if fingerprint(end_entity) == self.ca_fingerprint {
            return Ok(ServerCertVerified::assertion());
        }
        let ca = intermediates
            .iter()
            .find(|c| fingerprint(c) == self.ca_fingerprint)
            .ok_or_else(|| {
                rustls::Error::General(
                    "driver certificate is neither the pinned one nor from the pinned cluster CA"
                        .into(),
                )
            })?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            self.provider.clone(),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
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
fn endpoint(
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
fn secrets_equal(a: &[u8], b: &[u8]) -> bool {
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

/// Read one frame. `Ok(None)` on a clean end of stream before a header.
/// `recv` is any byte stream, like `send` of [`write_frame`].
pub async fn read_frame<T: DeserializeOwned>(
    recv: &mut (impl AsyncRead + Unpin + ?Sized),
    peer: SocketAddr,
    max: u64,
) -> Result<Option<T>> {
    let mut header = [0u8; 4];
    let mut got = 0;
    while got < header.len() {
        let n = recv
            .read(&mut header[got..])
            .await
            .map_err(|e| conn_err(peer, e))?;
        if n == 0 {
            if got == 0 {
                return Ok(None);
            }
            return Err(conn_err(
                peer,
                format!("stream finished early ({got} bytes of a frame header read)"),
            ));
        }
        got += n;
    }
    let len = u32::from_be_bytes(header) as u64;
    if len > max {
        return Err(Error::FrameTooLarge { peer, len, max });
    }
    let mut body = vec![0u8; len as usize];
    recv.read_exact(&mut body)
        .await
        .map_err(|e| conn_err(peer, e))?;
    rmp_serde::from_slice(&body)
        .map(Some)
        .map_err(|e| Error::Decode {
            peer,
            reason: e.to_string(),
        })
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

// ---------------------------------------------------------------------------
// Executor-to-executor (peer) links, used by the shuffle. Additive: the
// driver's CA and the functions above are untouched.
// ---------------------------------------------------------------------------

/// TLS server name an executor's peer certificate carries.
pub const PEER_SERVER_NAME: &str = "kiln-peer";

/// An executor's own TLS identity for peer links: a fresh self-signed
/// certificate. Its SHA-256 fingerprint travels to the driver over the
/// executor's authenticated control stream, and the driver hands it to the
/// peers that fetch from this executor, which pin it.
pub struct PeerIdentity {
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    fingerprint: [u8; 32],
}

impl PeerIdentity {
    /// Create a fresh key pair and self-signed certificate.
    pub fn generate() -> Result<Self> {
        let tls = |e: rcgen::Error| Error::Tls(e.to_string());
        let certified =
            rcgen::generate_simple_self_signed(vec![PEER_SERVER_NAME.to_string()]).map_err(tls)?;
        let cert = certified.cert.der().clone();
        Ok(PeerIdentity {
            fingerprint: fingerprint(&cert),
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
                certified.signing_key.serialize_der(),
            )),
            cert,
        })
    }

    /// SHA-256 of the certificate (DER), what peers pin.
    pub fn fingerprint(&self) -> [u8; 32] {
        self.fingerprint
    }

    /// A quinn server configuration presenting this certificate.
    pub fn server_config(&self) -> Result<quinn::ServerConfig> {
        let provider = Arc::new(crypto_provider());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| Error::Tls(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(vec![self.cert.clone()], self.key.clone_key())
            .map_err(|e| Error::Tls(e.to_string()))?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let quic = QuicServerConfig::try_from(tls).map_err(|e| Error::Tls(e.to_string()))?;
        let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(quic));
        cfg.transport_config(Arc::new(transport_config(Link::Network)));
        Ok(cfg)
    }
}

/// Accepts a peer only if its leaf certificate has exactly the pinned
/// SHA-256 fingerprint (and the handshake signature verifies with it).
#[derive(Debug)]
struct PinnedCertVerifier {
    fingerprint: [u8; 32],
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for PinnedCertVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        if secrets_equal(&fingerprint(end_entity), &self.fingerprint) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "peer certificate does not match the fingerprint the driver announced".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
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
    }

    /// A self-signed certificate and its key, as PEM.
    fn self_signed() -> (String, String) {
        let ck = rcgen::generate_simple_self_signed(vec!["driver.example".to_string()]).unwrap();
        (ck.cert.pem(), ck.signing_key.serialize_pem())
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn cert_error(r: Result<ClusterIdentity>) -> (String, String) {
        match r {
            Err(Error::Certificate { path, reason }) => (path, reason),
            Err(e) => panic!("expected a certificate error, got {e}"),
            Ok(_) => panic!("expected a certificate error, got an identity"),
        }
    }

    #[test]
    fn user_certificate_is_loaded_and_its_leaf_pinned() {
        let dir = tempfile::tempdir().unwrap();
        // A chain: leaf signed by a CA, both in the file, leaf first.
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["driver.example".into()])
            .unwrap()
            .signed_by(&leaf_key, &ca)
            .unwrap();
        let cert = write(dir.path(), "chain.pem", &(leaf.pem() + &ca.pem()));
        let key = write(dir.path(), "key.pem", &leaf_key.serialize_pem());
        let id = ClusterIdentity::from_pem_files(&cert, &key).unwrap();
        assert_eq!(id.chain.len(), 2);
        assert_eq!(id.token().ca_fingerprint, fingerprint(leaf.der()));
        id.server_config().unwrap();
        // A fresh secret every time, the same pin.
        let again = ClusterIdentity::from_pem_files(&cert, &key).unwrap();
        assert_ne!(again.token().secret, id.token().secret);
        assert_eq!(again.token().ca_fingerprint, id.token().ca_fingerprint);
    }

    #[test]
    fn unusable_certificate_files_are_named_with_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let (cert_pem, key_pem) = self_signed();
        let (_, other_key) = self_signed();
        let cert = write(dir.path(), "cert.pem", &cert_pem);
        let key = write(dir.path(), "key.pem", &key_pem);
        let missing = dir.path().join("missing.pem");
        // Missing files: an I/O error naming the path.
        match ClusterIdentity::from_pem_files(&missing, &key) {
            Err(Error::Io { path, .. }) => assert!(path.ends_with("missing.pem"), "{path}"),
            other => panic!("{:?}", other.err()),
        }
        match ClusterIdentity::from_pem_files(&cert, &missing) {
            Err(Error::Io { path, .. }) => assert!(path.ends_with("missing.pem"), "{path}"),
            other => panic!("{:?}", other.err()),
        }
        // Not PEM at all, and an empty file: an empty chain.
        let text = write(dir.path(), "text.pem", "just some text\n");
        let (path, reason) = cert_error(ClusterIdentity::from_pem_files(&text, &key));
        assert!(
            path.ends_with("text.pem") && reason.contains("empty certificate chain"),
            "{reason}"
        );
        let empty = write(dir.path(), "empty.pem", "");
        let (path, reason) = cert_error(ClusterIdentity::from_pem_files(&empty, &key));
        assert!(
            path.ends_with("empty.pem") && reason.contains("no PEM CERTIFICATE"),
            "{reason}"
        );
        // A truncated PEM block.
        let cut = write(dir.path(), "cut.pem", &cert_pem[..cert_pem.len() / 2]);
        let (path, reason) = cert_error(ClusterIdentity::from_pem_files(&cut, &key));
        assert!(
            path.ends_with("cut.pem") && reason.contains("not valid PEM"),
            "{reason}"
        );
        // A certificate where the key should be.
        let (path, reason) = cert_error(ClusterIdentity::from_pem_files(&cert, &cert));
        assert!(
            path.ends_with("cert.pem") && reason.contains("no PEM private key"),
            "{reason}"
        );
        // A key of another certificate.
        let wrong = write(dir.path(), "wrong.pem", &other_key);
        let (path, reason) = cert_error(ClusterIdentity::from_pem_files(&cert, &wrong));
        assert!(
            path.ends_with("wrong.pem") && reason.contains("does not match"),
            "{reason}"
        );
        // The right pair loads.
        assert!(ClusterIdentity::from_pem_files(&cert, &key).is_ok());
    }

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

    #[test]
    fn peers_negotiate_aes_128_gcm() {
        // The same provider and verifier as the peer links, handshaking in
        // memory.
        let id = PeerIdentity::generate().unwrap();
        let provider = Arc::new(crypto_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![id.cert.clone()], id.key.clone_key())
            .unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedCertVerifier {
                fingerprint: id.fingerprint(),
                provider,
            }))
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from(PEER_SERVER_NAME).unwrap();
        let mut c = rustls::ClientConnection::new(Arc::new(client), name).unwrap();
        let mut s = rustls::ServerConnection::new(Arc::new(server)).unwrap();
        for _ in 0..10 {
            let mut wire = Vec::new();
            c.write_tls(&mut wire).unwrap();
            s.read_tls(&mut &wire[..]).unwrap();
            s.process_new_packets().unwrap();
            wire.clear();
            s.write_tls(&mut wire).unwrap();
            c.read_tls(&mut &wire[..]).unwrap();
            c.process_new_packets().unwrap();
            if !c.is_handshaking() && !s.is_handshaking() {
                break;
            }
        }
        assert!(!c.is_handshaking(), "handshake did not finish");
        let suite = |conn: Option<rustls::SupportedCipherSuite>| conn.map(|s| s.suite());
        assert_eq!(
            suite(c.negotiated_cipher_suite()),
            Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256)
        );
        assert_eq!(
            suite(s.negotiated_cipher_suite()),
            Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256)
        );
    }
}

//! TLS identities and certificate checks: the driver's cluster CA (or a
//! user-supplied chain), executors' self-signed peer certificates, the
//! verifiers that pin them, and the crypto provider of every connection.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use quinn::crypto::rustls::QuicServerConfig;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use super::endpoint::transport_config;
use super::handshake::secrets_equal;
use super::link::Link;
use super::token::{fingerprint, JoinToken};
use crate::error::{Error, Result};

/// ALPN protocol id.
pub const ALPN: &[u8] = b"kiln/1";
/// TLS server name the driver's certificate carries.
pub const SERVER_NAME: &str = "kiln-driver";

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
pub(super) fn crypto_provider() -> rustls::crypto::CryptoProvider {
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

/// The handshake-signature half of a [`ServerCertVerifier`], the same for
/// every pinning verifier: signatures are checked with the algorithms of
/// the verifier's `provider` field.
macro_rules! signatures_with_provider {
    () => {
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
    };
}

/// Accepts the driver's certificate if it is exactly the one pinned by the
/// join token (a user-supplied identity), or if the chain contains the CA
/// pinned by the token and the leaf verifies against that CA for
/// [`SERVER_NAME`] (a generated identity). Either way TLS 1.3 then checks
/// that the driver holds the leaf's private key.
#[derive(Debug)]
pub(super) struct PinnedCaVerifier {
    /// SHA-256 of the pinned CA (or leaf) certificate.
    pub(super) ca_fingerprint: [u8; 32],
    /// The provider whose algorithms verify signatures.
    pub(super) provider: Arc<rustls::crypto::CryptoProvider>,
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

    signatures_with_provider!();
}

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
pub(super) struct PinnedCertVerifier {
    /// SHA-256 of the pinned certificate.
    pub(super) fingerprint: [u8; 32],
    /// The provider whose algorithms verify signatures.
    pub(super) provider: Arc<rustls::crypto::CryptoProvider>,
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

    signatures_with_provider!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

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

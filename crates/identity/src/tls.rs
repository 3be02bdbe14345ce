//! TLS between weft's own components, by SPIFFE identity: a peer is
//! trusted when its certificate chain is an X.509-SVID of the trust bundle
//! (not by host name), and, where one is expected, when it has the right
//! SPIFFE ID. The bundle can change while connections come and go (a root
//! rotation): verifiers read the [`TrustStore`] at every handshake.

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::client::ResolvesClientCert;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};

use crate::{Bundle, IdentityError, SpiffeId, verify_svid};

/// The crypto weft uses everywhere: ring.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Makes ring the process's default crypto for rustls. HTTP clients
/// (reqwest, built without a provider of its own) need one even for plain
/// HTTP: call this first thing in `main` (and in tests that make clients).
pub fn install_provider() {
    // An error only says one is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The current trust bundle, shared by verifiers; empty until set.
#[derive(Default)]
pub struct TrustStore(RwLock<Option<Bundle>>);

impl TrustStore {
    pub fn set(&self, bundle: Bundle) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Some(bundle);
    }

    pub fn get(&self) -> Option<Bundle> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The SPIFFE ID of `chain` (leaf first) if it is an SVID of the
    /// current bundle.
    pub fn verify(&self, chain: &[CertificateDer<'_>]) -> Result<SpiffeId, IdentityError> {
        let bundle = self
            .get()
            .ok_or_else(|| IdentityError::Untrusted("no trust bundle yet".into()))?;
        verify_svid(chain, &bundle, SystemTime::now())
    }
}

fn chain_of<'a>(
    leaf: &CertificateDer<'a>,
    intermediates: &[CertificateDer<'a>],
) -> Vec<CertificateDer<'a>> {
    std::iter::once(leaf.clone())
        .chain(intermediates.iter().cloned())
        .collect()
}

fn refused(e: IdentityError) -> rustls::Error {
    rustls::Error::General(e.to_string())
}

/// Checks handshake signatures the way rustls does, with ring's
/// algorithms: what every certificate verifier needs besides the chain.
#[derive(Debug)]
pub struct Signatures(Arc<CryptoProvider>);

impl Default for Signatures {
    fn default() -> Self {
        Signatures(provider())
    }
}

impl Signatures {
    pub fn tls12(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    pub fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    pub fn schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A server's check of client certificates: any SVID of the bundle, or
/// none at all (a client's first certificate request has none yet); what
/// a connection without one may do is the server's business.
pub struct ClientSvidVerifier {
    trust: Arc<TrustStore>,
    signatures: Signatures,
}

impl std::fmt::Debug for ClientSvidVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientSvidVerifier")
    }
}

impl ClientSvidVerifier {
    pub fn new(trust: Arc<TrustStore>) -> ClientSvidVerifier {
        ClientSvidVerifier {
            trust,
            signatures: Signatures::default(),
        }
    }
}

impl ClientCertVerifier for ClientSvidVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.trust
            .verify(&chain_of(end_entity, intermediates))
            .map(|_| ClientCertVerified::assertion())
            .map_err(refused)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.signatures.schemes()
    }
}

/// A client's check of the server: an SVID of the bundle with exactly the
/// expected SPIFFE ID. The host name plays no part.
pub struct ServerSvidVerifier {
    trust: Arc<TrustStore>,
    expected: Arc<dyn Fn(&Bundle) -> String + Send + Sync>,
    signatures: Signatures,
}

impl std::fmt::Debug for ServerSvidVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerSvidVerifier")
    }
}

impl ServerSvidVerifier {
    /// `expected` names the server's SPIFFE ID in the bundle's trust
    /// domain.
    pub fn new(
        trust: Arc<TrustStore>,
        expected: impl Fn(&Bundle) -> String + Send + Sync + 'static,
    ) -> ServerSvidVerifier {
        ServerSvidVerifier {
            trust,
            expected: Arc::new(expected),
            signatures: Signatures::default(),
        }
    }
}

impl ServerCertVerifier for ServerSvidVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let id = self
            .trust
            .verify(&chain_of(end_entity, intermediates))
            .map_err(refused)?;
        let bundle = self
            .trust
            .get()
            .ok_or_else(|| rustls::Error::General("no trust bundle yet".into()))?;
        let expected = (self.expected)(&bundle);
        if id.to_string() != expected {
            return Err(rustls::Error::General(format!(
                "the server is {id}, not {expected}"
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.signatures.schemes()
    }
}

/// A server certificate that can be replaced while the server runs (it is
/// renewed like any SVID).
#[derive(Debug, Default)]
pub struct ServingCertificate(RwLock<Option<Arc<CertifiedKey>>>);

impl ServingCertificate {
    /// Serves `chain` (leaf first) with `key_pkcs8` (DER) from now on.
    pub fn set(
        &self,
        chain: Vec<CertificateDer<'static>>,
        key_pkcs8: Vec<u8>,
    ) -> Result<(), IdentityError> {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_pkcs8));
        let signing = provider().key_provider.load_private_key(key).map_err(|e| {
            IdentityError::Unreadable {
                what: "the serving key",
                reason: e.to_string(),
            }
        })?;
        *self.0.write().unwrap_or_else(|p| p.into_inner()) =
            Some(Arc::new(CertifiedKey::new(chain, signing)));
        Ok(())
    }

    pub fn is_set(&self) -> bool {
        self.0.read().unwrap_or_else(|p| p.into_inner()).is_some()
    }
}

impl ServingCertificate {
    fn current(&self) -> Option<Arc<CertifiedKey>> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The same certificate as a client's (an edge calling the server).
impl ResolvesClientCert for ServingCertificate {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.current()
    }

    fn has_certs(&self) -> bool {
        self.is_set()
    }
}

impl ResolvesServerCert for ServingCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// A server's TLS settings: `certificate`, and client SVIDs checked
/// against `trust` (optional); HTTP/2 and HTTP/1.1.
pub fn server_config(
    certificate: Arc<ServingCertificate>,
    trust: Arc<TrustStore>,
) -> Result<rustls::ServerConfig, IdentityError> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| IdentityError::Request(e.to_string()))?
        .with_client_cert_verifier(Arc::new(ClientSvidVerifier::new(trust)))
        .with_cert_resolver(certificate);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // No session resumption: a resumed session keeps the identity of the
    // first handshake (none, for a first certificate request; an old
    // certificate, after a renewal). Every connection shows its own.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(config)
}

/// A client's TLS settings: the server must be `expected` in `trust`;
/// the client shows `certificate` once it has one.
pub fn client_config(
    trust: Arc<TrustStore>,
    expected: impl Fn(&Bundle) -> String + Send + Sync + 'static,
    certificate: Option<Arc<ServingCertificate>>,
) -> Result<rustls::ClientConfig, IdentityError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| IdentityError::Request(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ServerSvidVerifier::new(trust, expected)));
    let mut config = match certificate {
        Some(certificate) => builder.with_client_cert_resolver(certificate),
        None => builder.with_no_client_auth(),
    };
    // See `server_config`: every connection shows its current certificate.
    config.resumption = rustls::client::Resumption::disabled();
    Ok(config)
}

/// How long a TLS handshake may take before the connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Checks a server certificate chain and its private key (both PEM) as a
/// TLS server would use them: both readable, and the key the first
/// certificate's.
pub fn check_certificate_and_key(chain_pem: &str, key_pem: &str) -> Result<(), IdentityError> {
    use rustls_pki_types::pem::PemObject;
    let chain = crate::certificates_from_pem("the certificate", chain_pem)?;
    let unreadable = |reason: String| IdentityError::Unreadable {
        what: "the private key",
        reason,
    };
    let key =
        PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| unreadable(e.to_string()))?;
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| unreadable(e.to_string()))?;
    CertifiedKey::new(chain, signing)
        .keys_match()
        .map_err(|e| unreadable(format!("it is not the certificate's key: {e}")))
}

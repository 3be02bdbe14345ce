//! Mutual TLS as a listener's or cluster's configuration asks for it: the
//! proxy's certificate and the trust domain's roots, by SDS secret name,
//! and the peer checked as Envoy checks it: its chain must be an
//! X.509-SVID of the roots (weft-identity's verifier), then its SPIFFE ID
//! (the URI SAN) must be one the configuration accepts (exact or prefix).
//! rustls alone checks DNS names only, hence the verifier here.

use std::collections::BTreeMap;
use std::sync::Arc;

use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DistinguishedName, SignatureScheme};
use weft_identity::tls::{ServingCertificate, Signatures, TrustStore, provider};

use crate::config::{DownstreamTls, PeerCheck, PublicTls, UpstreamTls};

/// The secrets the proxy holds, by the names SDS gives them.
#[derive(Default)]
pub struct Secrets {
    pub certificates: BTreeMap<String, Arc<ServingCertificate>>,
    pub roots: BTreeMap<String, Arc<TrustStore>>,
    /// Each certificate's SPIFFE ID (its URI SAN).
    pub uris: BTreeMap<String, String>,
}

/// Names only: a secret's content is never printed.
impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets")
            .field(
                "certificates",
                &self.certificates.keys().collect::<Vec<_>>(),
            )
            .field("roots", &self.roots.keys().collect::<Vec<_>>())
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("no secret {0:?} is held")]
    NoSecret(String),
    #[error("TLS settings: {0}")]
    Settings(String),
}

impl Secrets {
    fn certificate(&self, name: &str) -> Result<Arc<ServingCertificate>, TlsError> {
        self.certificates
            .get(name)
            .cloned()
            .ok_or_else(|| TlsError::NoSecret(name.to_string()))
    }

    fn roots(&self, name: &str) -> Result<Arc<TrustStore>, TlsError> {
        self.roots
            .get(name)
            .cloned()
            .ok_or_else(|| TlsError::NoSecret(name.to_string()))
    }

    /// A listener's TLS: the certificate shown, a client certificate
    /// required and checked.
    pub fn server_config(&self, tls: &DownstreamTls) -> Result<rustls::ServerConfig, TlsError> {
        let verifier = PeerVerifier::new(self.roots(&tls.trust)?, tls.peers.clone());
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Settings(e.to_string()))?
            .with_client_cert_verifier(Arc::new(verifier))
            .with_cert_resolver(self.certificate(&tls.certificate)?);
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        // Every connection shows its current certificate (a resumed
        // session would keep an old one).
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        Ok(config)
    }

    /// A cluster's TLS: this proxy's certificate shown, the endpoint's
    /// checked.
    pub fn client_config(&self, tls: &UpstreamTls) -> Result<rustls::ClientConfig, TlsError> {
        let verifier = PeerVerifier::new(self.roots(&tls.trust)?, tls.peers.clone());
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Settings(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_cert_resolver(self.certificate(&tls.certificate)?);
        config.alpn_protocols = tls.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        config.resumption = rustls::client::Resumption::disabled();
        Ok(config)
    }
}

/// TLS to a host outside the mesh: the CAs of `tls.ca_file`, the server
/// name checked as any TLS client checks it, no client certificate.
pub fn public_client_config(tls: &PublicTls) -> Result<rustls::ClientConfig, TlsError> {
    let pem = std::fs::read_to_string(&tls.ca_file)
        .map_err(|e| TlsError::Settings(format!("{}: {e}", tls.ca_file.display())))?;
    let mut roots = rustls::RootCertStore::empty();
    let certificates = weft_identity::certificates_from_pem("the trusted CAs", &pem)
        .map_err(|e| TlsError::Settings(format!("{}: {e}", tls.ca_file.display())))?;
    // A bundle may hold a certificate rustls cannot use; the rest serve.
    let (_, _) = roots.add_parsable_certificates(certificates);
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Settings(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = tls.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Ok(config)
}

/// Checks a peer's chain against the roots and its SPIFFE ID against the
/// accepted ones; the same for servers and clients.
pub struct PeerVerifier {
    trust: Arc<TrustStore>,
    peers: PeerCheck,
    signatures: Signatures,
}

impl std::fmt::Debug for PeerVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerVerifier")
            .field("peers", &self.peers)
            .finish()
    }
}

impl PeerVerifier {
    pub fn new(trust: Arc<TrustStore>, peers: PeerCheck) -> PeerVerifier {
        PeerVerifier {
            trust,
            peers,
            signatures: Signatures::default(),
        }
    }

    fn check(
        &self,
        leaf: &CertificateDer<'_>,
        rest: &[CertificateDer<'_>],
    ) -> Result<(), rustls::Error> {
        let chain: Vec<CertificateDer<'_>> = std::iter::once(leaf.clone())
            .chain(rest.iter().cloned())
            .collect();
        let id = self
            .trust
            .verify(&chain)
            .map_err(|e| rustls::Error::General(e.to_string()))?
            .to_string();
        if self.peers.accepts([id.as_str()]) {
            Ok(())
        } else {
            Err(rustls::Error::General(format!(
                "the peer {id} is not one this proxy accepts"
            )))
        }
    }
}

impl ClientCertVerifier for PeerVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
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
        self.check(end_entity, intermediates)
            .map(|()| ClientCertVerified::assertion())
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

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity, intermediates)
            .map(|()| ServerCertVerified::assertion())
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

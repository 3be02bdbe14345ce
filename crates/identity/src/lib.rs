//! Workload identity for weft: SPIFFE IDs, the certificate authorities
//! (the organization's root, and an intermediate per cluster held by its
//! edge), X.509-SVIDs issued from certificate signing requests, and SVID
//! verification against a trust bundle.
//!
//! Keys are ECDSA P-256 and are generated where they are used: a CSR
//! carries only the public key, so an edge's intermediate key never leaves
//! the edge and a workload's key never leaves its sidecar.

mod authority;
mod spiffe;
mod verify;

pub mod tls;
pub mod transport;

pub use authority::{Authority, CertRequest, cluster_of_ca};
pub use spiffe::{
    AUTHSERVICE_ACCOUNT, EASTWEST_ACCOUNT, RATELIMIT_ACCOUNT, RESERVED_NAMESPACE, SpiffeId,
    check_trust_domain,
};
pub use verify::{Bundle, first_uri_san, verify_svid};

pub use rustls_pki_types::CertificateDer;

/// What went wrong, in words an operator can act on.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{value:?} is not a valid SPIFFE ID: {reason}")]
    InvalidId { value: String, reason: String },
    #[error("the certificate signing request is refused: {0}")]
    Request(String),
    #[error("cannot make the certificate: {0}")]
    Issue(String),
    #[error("cannot read {what}: {reason}")]
    Unreadable { what: &'static str, reason: String },
    #[error("not a valid X.509-SVID: {0}")]
    NotAnSvid(String),
    #[error("the certificate is not trusted: {0}")]
    Untrusted(String),
}

/// Certificates in PEM, in order.
pub fn certificates_from_pem(
    what: &'static str,
    pem: &str,
) -> Result<Vec<CertificateDer<'static>>, IdentityError> {
    use rustls_pki_types::pem::PemObject;
    let certificates = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| IdentityError::Unreadable {
            what,
            reason: e.to_string(),
        })?;
    if certificates.is_empty() {
        return Err(IdentityError::Unreadable {
            what,
            reason: "no PEM certificate in it".into(),
        });
    }
    Ok(certificates)
}

/// Certificates as PEM, in order.
pub fn certificates_to_pem(certificates: &[CertificateDer<'_>]) -> String {
    certificates
        .iter()
        .map(|c| pem_block("CERTIFICATE", c.as_ref()))
        .collect()
}

/// A certificate signing request as PEM.
pub fn csr_to_pem(der: &[u8]) -> String {
    pem_block("CERTIFICATE REQUEST", der)
}

/// A certificate signing request from PEM.
pub fn csr_from_pem(text: &str) -> Result<Vec<u8>, IdentityError> {
    let block =
        pem::parse(text).map_err(|e| IdentityError::Request(format!("it is not PEM: {e}")))?;
    if block.tag() != "CERTIFICATE REQUEST" {
        return Err(IdentityError::Request(format!(
            "the PEM block is a {:?}, not a CERTIFICATE REQUEST",
            block.tag()
        )));
    }
    Ok(block.into_contents())
}

/// A certificate's SHA-256 fingerprint, hex: how weft names a root.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(cert.as_ref()))
}

fn pem_block(label: &str, der: &[u8]) -> String {
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new(label, der), config)
}

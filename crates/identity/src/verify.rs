//! Checking an X.509-SVID: its shape (the SPIFFE X.509-SVID rules) and its
//! chain to one of the trust bundle's roots.

use std::time::SystemTime;

use rustls_pki_types::{CertificateDer, UnixTime};
use webpki::{EndEntityCert, KeyUsage, anchor_from_trusted_cert};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

use crate::{IdentityError, SpiffeId, certificates_from_pem, certificates_to_pem};

/// The roots a trust domain accepts. More than one during a root rotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    trust_domain: String,
    roots: Vec<CertificateDer<'static>>,
}

impl Bundle {
    pub fn new(trust_domain: &str, roots: Vec<CertificateDer<'static>>) -> Bundle {
        Bundle {
            trust_domain: trust_domain.to_string(),
            roots,
        }
    }

    pub fn from_pem(trust_domain: &str, pem: &str) -> Result<Bundle, IdentityError> {
        Ok(Bundle::new(
            trust_domain,
            certificates_from_pem("the trust bundle", pem)?,
        ))
    }

    /// A bundle of root certificates (PEM), its trust domain read from
    /// the first one's `spiffe://` URI name.
    pub fn from_roots_pem(pem: &str) -> Result<Bundle, IdentityError> {
        let roots = certificates_from_pem("the trust bundle", pem)?;
        let first = roots.first().ok_or_else(|| IdentityError::Unreadable {
            what: "the trust bundle",
            reason: "it holds no certificate".into(),
        })?;
        let (_, parsed) =
            x509_parser::parse_x509_certificate(first).map_err(|e| IdentityError::Unreadable {
                what: "the trust bundle",
                reason: e.to_string(),
            })?;
        let trust_domain = uri_sans(&parsed)
            .into_iter()
            .find_map(|uri| uri.strip_prefix("spiffe://").map(str::to_string))
            .ok_or_else(|| IdentityError::Unreadable {
                what: "the trust bundle",
                reason: "its first root names no trust domain (spiffe://...)".into(),
            })?;
        drop(parsed);
        Ok(Bundle::new(&trust_domain, roots))
    }

    pub fn to_pem(&self) -> String {
        certificates_to_pem(&self.roots)
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }
}

/// The URI names of a certificate.
/// The first URI SAN of a DER certificate (a SPIFFE ID), if it has one.
pub fn first_uri_san(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    uri_sans(&parsed).first().map(|uri| uri.to_string())
}

pub(crate) fn uri_sans<'a>(cert: &'a X509Certificate<'_>) -> Vec<&'a str> {
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        })
        .collect()
}

/// Checks the leaf against the X.509-SVID rules and returns its ID.
fn svid_id(leaf: &CertificateDer<'_>) -> Result<SpiffeId, IdentityError> {
    let bad = |reason: String| IdentityError::NotAnSvid(reason);
    let (_, cert) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| bad(format!("it cannot be read: {e}")))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| bad(format!("its subject alternative names cannot be read: {e}")))?
        .ok_or_else(|| bad("it has no subject alternative name".into()))?;
    let uris = uri_sans(&cert);
    if uris.len() != 1 {
        return Err(bad(format!(
            "it has {} URI names; an SVID has exactly one",
            uris.len()
        )));
    }
    if san.value.general_names.len() != 1 {
        return Err(bad(
            "it has names besides its SPIFFE ID (weft issues URI names only)".into(),
        ));
    }
    let is_ca = cert
        .basic_constraints()
        .map_err(|e| bad(format!("its basic constraints cannot be read: {e}")))?
        .is_some_and(|b| b.value.ca);
    if is_ca {
        return Err(bad("it is a CA certificate".into()));
    }
    let id = SpiffeId::parse(uris[0])?;
    let usage = cert
        .key_usage()
        .map_err(|e| bad(format!("its key usage cannot be read: {e}")))?
        .ok_or_else(|| bad("it has no key usage".into()))?;
    if !usage.value.digital_signature() {
        return Err(bad("its key usage lacks digitalSignature".into()));
    }
    if usage.value.key_cert_sign() || usage.value.crl_sign() {
        return Err(bad(
            "its key usage allows signing certificates or CRLs".into()
        ));
    }
    Ok(id)
}

/// Verifies `chain` (the SVID first, then intermediates) at `at`: an
/// X.509-SVID in the bundle's trust domain, signed through the chain by one
/// of the bundle's roots, valid then, for TLS clients and servers alike.
pub fn verify_svid(
    chain: &[CertificateDer<'_>],
    bundle: &Bundle,
    at: SystemTime,
) -> Result<SpiffeId, IdentityError> {
    let leaf = chain
        .first()
        .ok_or_else(|| IdentityError::NotAnSvid("the chain is empty".into()))?;
    let id = svid_id(leaf)?;
    if id.trust_domain() != bundle.trust_domain() {
        return Err(IdentityError::Untrusted(format!(
            "{id} is not in trust domain {}",
            bundle.trust_domain()
        )));
    }
    let anchors = bundle
        .roots()
        .iter()
        .map(|root| {
            anchor_from_trusted_cert(root)
                .map(|a| a.to_owned())
                .map_err(|e| IdentityError::Unreadable {
                    what: "a root of the trust bundle",
                    reason: format!("{e:?}"),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let end_entity = EndEntityCert::try_from(leaf)
        .map_err(|e| IdentityError::NotAnSvid(format!("it cannot be read: {e:?}")))?;
    let at = UnixTime::since_unix_epoch(
        at.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default(),
    );
    for usage in [KeyUsage::server_auth(), KeyUsage::client_auth()] {
        end_entity
            .verify_for_usage(
                webpki::ALL_VERIFICATION_ALGS,
                &anchors,
                &chain[1..],
                at,
                usage,
                None,
                None,
            )
            .map_err(|e| IdentityError::Untrusted(format!("{id}: {e:?}")))?;
    }
    Ok(id)
}

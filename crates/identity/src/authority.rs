//! Certificate authorities: the organization's root (kept by the server)
//! and a cluster's intermediate (kept by its edge), and what they sign.

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData,
    SanType, SerialNumber,
};
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer};
use time::OffsetDateTime;

use crate::{IdentityError, SpiffeId, certificates_from_pem, certificates_to_pem};

/// Certificates start this long before they are issued, so a peer whose
/// clock runs a little behind accepts them at once.
const BACKDATE: Duration = Duration::from_secs(60);

/// A new key and the certificate signing request that proves it.
pub struct CertRequest {
    pub key: KeyPair,
    pub csr: Vec<u8>,
}

impl CertRequest {
    /// A workload key, with a CSR that names no identity: the edge fills
    /// in the identity its credential allows.
    pub fn workload_key() -> Result<CertRequest, IdentityError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        request(params)
    }

    /// A workload key, with a CSR that asks for `id`.
    pub fn workload(id: &SpiffeId) -> Result<CertRequest, IdentityError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![uri_san(&id.to_string())?];
        request(params)
    }

    /// What an edge sends to the server for its cluster's intermediate CA.
    pub fn intermediate(trust_domain: &str, cluster: &str) -> Result<CertRequest, IdentityError> {
        crate::check_trust_domain(trust_domain)?;
        request(ca_params(
            trust_domain,
            &format!("{CLUSTER_CA_NAME}{cluster}"),
            0,
        )?)
    }
}

/// How a cluster CA's subject begins; the cluster's name follows.
const CLUSTER_CA_NAME: &str = "weft cluster ";

fn request(params: CertificateParams) -> Result<CertRequest, IdentityError> {
    let key = KeyPair::generate().map_err(issue_error)?;
    let csr = params.serialize_request(&key).map_err(issue_error)?;
    Ok(CertRequest {
        csr: csr.der().to_vec(),
        key,
    })
}

fn issue_error(e: rcgen::Error) -> IdentityError {
    IdentityError::Issue(e.to_string())
}

fn uri_san(uri: &str) -> Result<SanType, IdentityError> {
    Ok(SanType::URI(uri.try_into().map_err(|e| {
        IdentityError::Issue(format!("{uri:?} cannot be a URI name: {e:?}"))
    })?))
}

/// A CA certificate of `trust_domain` that may sign `path_len` levels of
/// CAs below it: named by the trust domain, allowed to sign certificates.
fn ca_params(
    trust_domain: &str,
    common_name: &str,
    path_len: u8,
) -> Result<CertificateParams, IdentityError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, trust_domain);
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.subject_alt_names = vec![uri_san(&format!("spiffe://{trust_domain}"))?];
    Ok(params)
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    // A positive INTEGER: clear the top bit.
    bytes[0] &= 0x7f;
    SerialNumber::from(bytes.to_vec())
}

/// A CA: its certificate, its key, and the certificates between it and
/// the root (empty for the root itself).
pub struct Authority {
    trust_domain: String,
    cert: CertificateDer<'static>,
    key: KeyPair,
    /// Certificates above this one, excluding the root.
    parents: Vec<CertificateDer<'static>>,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    /// Whether this CA may sign other CAs (only the root does).
    signs_authorities: bool,
}

/// Shows which CA this is, never its key.
impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("trust_domain", &self.trust_domain)
            .field("not_after", &self.not_after)
            .field("signs_authorities", &self.signs_authorities)
            .finish_non_exhaustive()
    }
}

impl Authority {
    /// A new self-signed root for `trust_domain`.
    pub fn root(trust_domain: &str, lifetime: Duration) -> Result<Authority, IdentityError> {
        crate::check_trust_domain(trust_domain)?;
        let key = KeyPair::generate().map_err(issue_error)?;
        let now = OffsetDateTime::now_utc();
        // Root → cluster intermediate → workload.
        let mut params = ca_params(trust_domain, "weft root CA", 1)?;
        params.serial_number = Some(random_serial());
        params.not_before = now - BACKDATE;
        params.not_after = now + lifetime;
        let cert = params.self_signed(&key).map_err(issue_error)?;
        Ok(Authority {
            trust_domain: trust_domain.to_string(),
            cert: cert.der().clone(),
            key,
            parents: Vec::new(),
            not_before: params.not_before,
            not_after: params.not_after,
            signs_authorities: true,
        })
    }

    /// An authority from its certificate and key (PEM); `parents` are the
    /// certificates above it, excluding the root (empty for a root).
    pub fn from_pem(cert: &str, key: &str, parents: &str) -> Result<Authority, IdentityError> {
        let cert = certificates_from_pem("the CA certificate", cert)?.remove(0);
        let key = KeyPair::from_pem(key).map_err(|e| IdentityError::Unreadable {
            what: "the CA key",
            reason: e.to_string(),
        })?;
        let parents = if parents.trim().is_empty() {
            Vec::new()
        } else {
            certificates_from_pem("the CA's parent certificates", parents)?
        };
        Authority::from_parts(cert, key, parents)
    }

    /// An authority from its certificate, key and parents (DER).
    pub fn from_parts(
        cert: CertificateDer<'static>,
        key: KeyPair,
        parents: Vec<CertificateDer<'static>>,
    ) -> Result<Authority, IdentityError> {
        let unreadable = |reason: String| IdentityError::Unreadable {
            what: "the CA certificate",
            reason,
        };
        let (_, parsed) =
            x509_parser::parse_x509_certificate(&cert).map_err(|e| unreadable(e.to_string()))?;
        let ca = parsed
            .basic_constraints()
            .map_err(|e| unreadable(e.to_string()))?
            .map(|b| b.value.clone());
        let Some(constraints) = ca.filter(|b| b.ca) else {
            return Err(unreadable("it is not a CA certificate".into()));
        };
        if parsed.public_key().subject_public_key.data.as_ref() != key.der_bytes() {
            return Err(unreadable("the key does not belong to it".into()));
        }
        let trust_domain = crate::verify::uri_sans(&parsed)
            .into_iter()
            .find_map(|uri| uri.strip_prefix("spiffe://").map(str::to_string))
            .ok_or_else(|| unreadable("it names no trust domain (spiffe://...)".into()))?;
        let not_before = parsed.validity().not_before.to_datetime();
        let not_after = parsed.validity().not_after.to_datetime();
        let signs_authorities = constraints.path_len_constraint.is_none_or(|n| n > 0);
        drop(parsed);
        Ok(Authority {
            trust_domain,
            cert,
            key,
            parents,
            not_before,
            not_after,
            signs_authorities,
        })
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// When this authority's certificate expires.
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// Whether the certificate is past half its life at `now`: time to
    /// renew it.
    pub fn past_half_life(&self, now: OffsetDateTime) -> bool {
        self.life_used(now) >= 0.5
    }

    /// How much of the certificate's life is gone at `now` (0 at its
    /// start, 1 at its expiry).
    pub fn life_used(&self, now: OffsetDateTime) -> f64 {
        (now - self.not_before) / (self.not_after - self.not_before)
    }

    pub fn cert_pem(&self) -> String {
        certificates_to_pem(std::slice::from_ref(&self.cert))
    }

    /// The private key, PEM. A secret: write it owner-only.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// This certificate and its parents below the root: what follows a
    /// leaf it signed in a TLS handshake.
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        std::iter::once(self.cert.clone())
            .chain(self.parents.iter().cloned())
            .collect()
    }

    fn issuer(&self) -> Result<Issuer<'static, &KeyPair>, IdentityError> {
        Issuer::from_ca_cert_der(&self.cert, &self.key).map_err(issue_error)
    }

    /// Signs `params` for the requester's key: a fresh serial, valid from
    /// now for `lifetime` but never past this authority's own expiry.
    fn sign(
        &self,
        mut params: CertificateParams,
        request: &CertificateSigningRequestParams,
        lifetime: Duration,
    ) -> Result<CertificateDer<'static>, IdentityError> {
        let now = OffsetDateTime::now_utc();
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        params.not_before = now - BACKDATE;
        params.not_after = (now + lifetime).min(self.not_after);
        let cert = params
            .signed_by(&request.public_key, &self.issuer()?)
            .map_err(issue_error)?;
        Ok(cert.der().clone())
    }

    /// Reads and checks a CSR: its signature proves the requester holds
    /// the key.
    fn read_request(csr: &[u8]) -> Result<CertificateSigningRequestParams, IdentityError> {
        CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr)).map_err(
            |e| {
                IdentityError::Request(format!(
                    "it cannot be read or its signature does not verify ({e})"
                ))
            },
        )
    }

    /// Signs a cluster's intermediate CA from the edge's CSR.
    pub fn sign_intermediate(
        &self,
        csr: &[u8],
        cluster: &str,
        lifetime: Duration,
    ) -> Result<CertificateDer<'static>, IdentityError> {
        if !self.signs_authorities {
            return Err(IdentityError::Request(
                "only the root CA signs cluster CAs".into(),
            ));
        }
        let request = Authority::read_request(csr)?;
        let params = ca_params(
            &self.trust_domain,
            &format!("{CLUSTER_CA_NAME}{cluster}"),
            0,
        )?;
        self.sign(params, &request, lifetime)
    }

    /// Issues the X.509-SVID for `id` from the workload's CSR. The CSR asks
    /// for exactly that identity, or for none: `id` comes from the
    /// workload's credential, never from what it asks for.
    pub fn issue_svid(
        &self,
        csr: &[u8],
        id: &SpiffeId,
        lifetime: Duration,
    ) -> Result<CertificateDer<'static>, IdentityError> {
        if id.trust_domain() != self.trust_domain {
            return Err(IdentityError::Request(format!(
                "{id} is not in trust domain {}",
                self.trust_domain
            )));
        }
        let request = Authority::read_request(csr)?;
        let wanted = id.to_string();
        let asked: Vec<String> = request
            .params
            .subject_alt_names
            .iter()
            .map(|san| match san {
                SanType::URI(uri) => uri.as_str().to_string(),
                other => format!("{other:?}"),
            })
            .collect();
        if !asked.is_empty() && asked != [wanted.clone()] {
            return Err(IdentityError::Request(format!(
                "it asks for {asked:?}; this workload's credential allows only {wanted}"
            )));
        }
        if request.params.is_ca != IsCa::NoCa {
            return Err(IdentityError::Request(
                "a workload cannot ask to be a CA".into(),
            ));
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![uri_san(&wanted)?];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        self.sign(params, &request, lifetime)
    }
}

/// The cluster a cluster CA certificate was made for (its subject names
/// it), or none for any other certificate.
pub fn cluster_of_ca(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    let ca = parsed.basic_constraints().ok()??.value.ca;
    if !ca {
        return None;
    }
    let name = parsed.subject().iter_common_name().next()?.as_str().ok()?;
    name.strip_prefix(CLUSTER_CA_NAME).map(str::to_string)
}

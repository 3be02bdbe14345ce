//! The agent's workload certificate. The key is made here and never
//! leaves this process and its Envoy: the edge gets a CSR (with the
//! workload credential) and answers with the X.509-SVID. Envoy gets the
//! key, the certificate and the trust bundle over SDS ([`crate::sds`]).
//! The certificate is renewed at half-life.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use envoy_types::pb::envoy::config::core::v3::DataSource;
use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::secret::Type;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, TlsCertificate,
};
use reqwest::StatusCode;
use weft_api::edge::{Svid, SvidRequest};
use weft_identity::tls::TrustStore;
use weft_identity::{Bundle, CertRequest, SpiffeId, csr_to_pem};

use crate::AgentError;
use crate::sds::{self, SdsServer};

/// The SDS source the workload certificate and bundle are published as.
const SOURCE: &str = "workload";

/// A certificate and the key it certifies.
pub struct Issued {
    pub svid: Svid,
    key_pem: String,
    /// When to ask for the next one.
    renew_at: SystemTime,
}

fn inline(text: &str) -> Option<DataSource> {
    Some(DataSource {
        specifier: Some(Specifier::InlineBytes(text.as_bytes().to_vec())),
        ..Default::default()
    })
}

impl Issued {
    /// The certificate chain (leaf first) and its key, as PEM: what a
    /// weft service serves itself.
    pub fn pem(&self) -> (&str, &str) {
        (&self.svid.certificate_chain, &self.key_pem)
    }

    /// What Envoy gets over SDS.
    fn secrets(&self) -> Vec<Secret> {
        vec![
            Secret {
                name: sds::CERTIFICATE.into(),
                r#type: Some(Type::TlsCertificate(TlsCertificate {
                    certificate_chain: inline(&self.svid.certificate_chain),
                    private_key: inline(&self.key_pem),
                    ..Default::default()
                })),
            },
            Secret {
                name: sds::TRUST_BUNDLE.into(),
                r#type: Some(Type::ValidationContext(CertificateValidationContext {
                    trusted_ca: inline(&self.svid.trust.bundle),
                    ..Default::default()
                })),
            },
        ]
    }
}

/// How the agent asks its edge for certificates: over TLS, trusting only
/// the edge's SVID under `trust` (which each answer keeps current), with
/// the workload credential, for node `node`.
pub struct EdgeLink {
    client: reqwest::Client,
    edge: std::net::SocketAddr,
    credential: String,
    node: String,
    trust: Arc<TrustStore>,
}

impl EdgeLink {
    pub fn new(
        edge: std::net::SocketAddr,
        credential: String,
        node: String,
        trust: Arc<TrustStore>,
    ) -> Result<EdgeLink, AgentError> {
        let tls = weft_identity::tls::client_config(
            trust.clone(),
            |bundle| {
                SpiffeId::edge(bundle.trust_domain())
                    .map(|id| id.to_string())
                    .unwrap_or_default()
            },
            None,
        )?;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .use_preconfigured_tls(tls)
            .build()
            .map_err(|e| AgentError::Client(e.to_string()))?;
        Ok(EdgeLink {
            client,
            edge,
            credential,
            node,
            trust,
        })
    }
}

/// Asks the edge for a certificate. `Ok(Err(..))` is worth trying again;
/// a refused credential is `Err(AgentError::Refused)`.
async fn request(link: &EdgeLink) -> Result<Result<Issued, String>, AgentError> {
    let EdgeLink {
        client,
        edge,
        credential,
        node,
        ..
    } = link;
    let key = CertRequest::workload_key()?;
    let sent = client
        .post(format!("https://{edge}/v1/svid"))
        .bearer_auth(credential)
        .json(&SvidRequest {
            csr: csr_to_pem(&key.csr),
            node: Some(node.to_string()),
        })
        .send()
        .await;
    let response = match sent {
        Ok(response) => response,
        Err(e) => return Ok(Err(format!("the edge at {edge} is unreachable: {e}"))),
    };
    let status = response.status();
    if status == StatusCode::UNAUTHORIZED {
        let reason = response.text().await.unwrap_or_default();
        return Err(AgentError::Refused(reason.trim().to_string()));
    }
    if !status.is_success() {
        let reason = response.text().await.unwrap_or_default();
        return Ok(Err(format!(
            "the edge answered {status}: {}",
            reason.trim()
        )));
    }
    let svid: Svid = match response.json().await {
        Ok(svid) => svid,
        Err(e) => return Ok(Err(format!("unreadable answer from the edge: {e}"))),
    };
    let Ok(expires) = humantime::parse_rfc3339_weak(&svid.expires_at)
        .or_else(|_| humantime::parse_rfc3339(&svid.expires_at))
    else {
        return Ok(Err(format!(
            "the edge sent an unreadable expiry {:?}",
            svid.expires_at
        )));
    };
    let now = SystemTime::now();
    let renew_at = now + expires.duration_since(now).unwrap_or_default() / 2;
    Ok(Ok(Issued {
        svid,
        key_pem: key.key.serialize_pem(),
        renew_at,
    }))
}

/// How long a refused credential is tried again at start: one issued a
/// moment ago may not have reached the edge yet.
const NEW_CREDENTIAL_GRACE: Duration = Duration::from_secs(30);

/// Asks until the edge answers (it may still be getting its own CA).
pub async fn first(link: &EdgeLink) -> Result<Issued, AgentError> {
    let started = std::time::Instant::now();
    let mut told = false;
    loop {
        let reason = match request(link).await {
            Ok(Ok(issued)) => return Ok(issued),
            Ok(Err(reason)) => reason,
            Err(error @ AgentError::Refused(_)) if started.elapsed() < NEW_CREDENTIAL_GRACE => {
                error.to_string()
            }
            Err(error) => return Err(error),
        };
        if told {
            tracing::debug!(%reason, "no workload certificate yet");
        } else {
            tracing::warn!(%reason, "no workload certificate yet; asking again");
            told = true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Publishes `issued` on `sds` and keeps renewing it, in a task that runs
/// until the process ends.
pub fn keep_renewed(sds: SdsServer, issued: Issued, link: EdgeLink) -> Result<(), AgentError> {
    sds.set(SOURCE, issued.secrets())?;
    tokio::spawn(renew(issued, link, move |next| {
        sds.set(SOURCE, next.secrets())
    }));
    Ok(())
}

/// Hands `issued` to `use_it` and keeps renewing it, each new certificate
/// to `use_it` too, in a task that runs until the process ends: a weft
/// service that serves its own TLS.
pub fn keep_renewed_with(
    issued: Issued,
    link: EdgeLink,
    use_it: impl Fn(&Issued) -> Result<(), AgentError> + Send + 'static,
) -> Result<(), AgentError> {
    use_it(&issued)?;
    tokio::spawn(renew(issued, link, use_it));
    Ok(())
}

async fn renew(
    issued: Issued,
    link: EdgeLink,
    use_it: impl Fn(&Issued) -> Result<(), AgentError> + Send + 'static,
) {
    let mut current = issued;
    loop {
        let wait = current
            .renew_at
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        tokio::time::sleep(wait).await;
        match request(&link).await {
            Ok(Ok(next)) => {
                if let Err(error) = use_it(&next) {
                    tracing::error!(%error, "cannot serve the renewed workload certificate");
                }
                // The edge's certificate chains to the bundle it sends
                // (after a root rotation, to a root the agent's
                // credential file may not have).
                match Bundle::from_pem(&next.svid.trust.trust_domain, &next.svid.trust.bundle) {
                    Ok(bundle) => link.trust.set(bundle),
                    Err(error) => {
                        tracing::warn!(%error, "the edge sent an unreadable trust bundle")
                    }
                }
                tracing::info!(id = %next.svid.id, expires = %next.svid.expires_at, "renewed the workload certificate");
                current = next;
            }
            Ok(Err(reason)) => {
                tracing::warn!(%reason, expires = %current.svid.expires_at, "cannot renew the workload certificate; trying again in 5 s");
                current.renew_at = SystemTime::now() + Duration::from_secs(5);
            }
            Err(error) => {
                tracing::error!(%error, expires = %current.svid.expires_at, "the workload certificate cannot be renewed");
                current.renew_at = SystemTime::now() + Duration::from_secs(30);
            }
        }
    }
}

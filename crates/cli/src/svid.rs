//! The sidecar's workload certificate. The key is made here and never
//! leaves this process and its Envoy: the edge gets a CSR (with the
//! workload credential) and answers with the X.509-SVID. Envoy gets the
//! key, the certificate and the trust bundle over SDS on a Unix socket in
//! the sidecar's private directory. The certificate is renewed at
//! half-life.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use envoy_types::pb::envoy::config::core::v3::DataSource;
use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::secret::Type;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, TlsCertificate,
};
use reqwest::StatusCode;
use weft_api::edge::{Svid, SvidRequest};
use weft_control::proxy::sds;
use weft_identity::tls::TrustStore;
use weft_identity::{Bundle, CertRequest, SpiffeId, csr_to_pem};
use weft_xds::{AdsServer, Snapshot, SnapshotCache};

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

/// How the sidecar asks its edge for certificates: over TLS, trusting only
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
    ) -> Result<EdgeLink> {
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
            .build()?;
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
/// a refused credential is `Err(Refused)`.
async fn request(link: &EdgeLink) -> Result<Result<Issued, String>> {
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
        return Err(Refused(reason.trim().to_string()).into());
    }
    if !status.is_success() {
        let reason = response.text().await.unwrap_or_default();
        return Ok(Err(format!(
            "the edge answered {status}: {}",
            reason.trim()
        )));
    }
    let svid: Svid = response
        .json()
        .await
        .context("unreadable answer from the edge")?;
    let expires = humantime::parse_rfc3339_weak(&svid.expires_at)
        .or_else(|_| humantime::parse_rfc3339(&svid.expires_at))
        .with_context(|| format!("the edge sent an unreadable expiry {:?}", svid.expires_at))?;
    let now = SystemTime::now();
    let renew_at = now + expires.duration_since(now).unwrap_or_default() / 2;
    Ok(Ok(Issued {
        svid,
        key_pem: key.key.serialize_pem(),
        renew_at,
    }))
}

/// The trust bundle in a credential file (after the credential's line):
/// how the sidecar knows its edge before it has a certificate.
pub fn trust_bundle(path: &Path) -> Result<Bundle> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the credential file {}", path.display()))?;
    let pem: String = text.lines().skip(1).collect::<Vec<_>>().join("\n");
    if !pem.contains("BEGIN CERTIFICATE") {
        anyhow::bail!(
            "the credential file {} holds no trust bundle after the credential; \
             write it with `weft token create --cluster C --namespace N --service-account S > FILE`, \
             which adds the bundle",
            path.display()
        );
    }
    Bundle::from_roots_pem(&pem)
        .with_context(|| format!("the trust bundle in {} is unreadable", path.display()))
}

/// The edge refused the workload credential.
#[derive(Debug, thiserror::Error)]
#[error(
    "the edge refused the workload credential: {0}; issue one with `weft token create --cluster C --namespace N --service-account S`"
)]
struct Refused(String);

/// How long a refused credential is tried again at start: one issued a
/// moment ago may not have reached the edge yet.
const NEW_CREDENTIAL_GRACE: Duration = Duration::from_secs(30);

/// Asks until the edge answers (it may still be getting its own CA).
pub async fn first(link: &EdgeLink) -> Result<Issued> {
    let started = std::time::Instant::now();
    let mut told = false;
    loop {
        let reason = match request(link).await {
            Ok(Ok(issued)) => return Ok(issued),
            Ok(Err(reason)) => reason,
            Err(error) if error.is::<Refused>() && started.elapsed() < NEW_CREDENTIAL_GRACE => {
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

/// Serves `issued` to Envoy over SDS on `socket`, and keeps renewing it,
/// in tasks that run until the process ends.
pub fn serve(socket: &Path, issued: Issued, link: EdgeLink) -> Result<()> {
    let cache = Arc::new(SnapshotCache::new());
    publish(&cache, &link.node, &issued)?;
    let listener = tokio::net::UnixListener::bind(socket)
        .with_context(|| format!("cannot listen on {}", socket.display()))?;
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    let server = tonic::transport::Server::builder()
        .add_service(AdsServer::new(cache.clone()).into_sds_service())
        .serve_with_incoming(incoming);
    tokio::spawn(async move {
        if let Err(error) = server.await {
            tracing::error!(%error, "the SDS server stopped");
        }
    });
    tokio::spawn(async move {
        if let Err(error) = renew(cache, issued, link).await {
            tracing::error!(error = %format!("{error:#}"), "workload certificates are no longer renewed");
        }
    });
    Ok(())
}

async fn renew(cache: Arc<SnapshotCache>, issued: Issued, link: EdgeLink) -> Result<()> {
    let mut current = issued;
    loop {
        let wait = current
            .renew_at
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        tokio::time::sleep(wait).await;
        match request(&link).await {
            Ok(Ok(next)) => {
                publish(&cache, &link.node, &next)?;
                // The edge's certificate chains to the bundle it sends
                // (after a root rotation, to a root the sidecar's
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
                tracing::error!(error = %format!("{error:#}"), expires = %current.svid.expires_at, "the workload certificate cannot be renewed");
                current.renew_at = SystemTime::now() + Duration::from_secs(30);
            }
        }
    }
}

fn publish(cache: &SnapshotCache, node: &str, issued: &Issued) -> Result<()> {
    let snapshot = Snapshot::secrets(&issued.secrets())?;
    cache.set(node, snapshot);
    Ok(())
}

//! weft-proxy's SDS client: the agent's secrets over its Unix socket, by
//! delta SDS, for the names the configuration uses. Each name maps to one
//! certificate or trust store for the life of the proxy and a renewal
//! replaces its content in place, so a rotated certificate is shown by
//! the next handshake without any TLS settings being rebuilt; the set of
//! names published changes only when a new name arrives.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::secret::Type;
use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
use envoy_types::pb::google::rpc::Status;
use hyper_util::rt::TokioIo;
use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::UnboundedReceiverStream;
use weft_identity::Bundle;
use weft_identity::tls::{ServingCertificate, TrustStore};

use crate::tls::Secrets;

const SECRET_TYPE: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

/// What one secret of the agent's holds, decoded.
enum Decoded {
    Certificate(Vec<rustls::pki_types::CertificateDer<'static>>, Vec<u8>),
    Roots(Bundle),
}

fn inline(source: Option<&envoy_types::pb::envoy::config::core::v3::DataSource>) -> Option<&[u8]> {
    match source?.specifier.as_ref()? {
        Specifier::InlineString(s) => Some(s.as_bytes()),
        Specifier::InlineBytes(b) => Some(b),
        _ => None,
    }
}

fn decode(secret: &Secret) -> Result<Decoded, String> {
    match &secret.r#type {
        Some(Type::TlsCertificate(tls)) => {
            use rustls::pki_types::pem::PemObject;
            let chain = inline(tls.certificate_chain.as_ref())
                .ok_or("certificate_chain: only inline PEM")?;
            let key = inline(tls.private_key.as_ref()).ok_or("private_key: only inline PEM")?;
            let chain = weft_identity::certificates_from_pem(
                "the certificate chain",
                std::str::from_utf8(chain).map_err(|e| e.to_string())?,
            )
            .map_err(|e| e.to_string())?;
            let key = rustls::pki_types::PrivatePkcs8KeyDer::from_pem_slice(key)
                .map_err(|e| format!("private_key: a PKCS#8 PEM key: {e}"))?;
            Ok(Decoded::Certificate(chain, key.secret_pkcs8_der().to_vec()))
        }
        Some(Type::ValidationContext(context)) => {
            let pem = inline(context.trusted_ca.as_ref()).ok_or("trusted_ca: only inline PEM")?;
            let pem = std::str::from_utf8(pem).map_err(|e| e.to_string())?;
            Bundle::from_roots_pem(pem)
                .map(Decoded::Roots)
                .map_err(|e| e.to_string())
        }
        _ => Err("only a TLS certificate or a validation context".into()),
    }
}

/// The secrets held: the same objects for the proxy's life, refilled.
#[derive(Default)]
struct Held {
    secrets: Secrets,
}

impl Held {
    /// Takes `secret` in; true when it is a name not held before.
    fn take(&mut self, name: &str, decoded: Decoded) -> Result<bool, String> {
        match decoded {
            Decoded::Certificate(chain, key) => {
                let new = !self.secrets.certificates.contains_key(name);
                if let Some(uri) = chain.first().and_then(weft_identity::first_uri_san) {
                    self.secrets.uris.insert(name.to_string(), uri);
                }
                let held = self
                    .secrets
                    .certificates
                    .entry(name.to_string())
                    .or_insert_with(|| Arc::new(ServingCertificate::default()));
                held.set(chain, key).map_err(|e| e.to_string())?;
                Ok(new)
            }
            Decoded::Roots(bundle) => {
                let new = !self.secrets.roots.contains_key(name);
                self.secrets
                    .roots
                    .entry(name.to_string())
                    .or_insert_with(|| Arc::new(TrustStore::default()))
                    .set(bundle);
                Ok(new)
            }
        }
    }

    fn snapshot(&self) -> Arc<Secrets> {
        Arc::new(Secrets {
            certificates: self.secrets.certificates.clone(),
            roots: self.secrets.roots.clone(),
            uris: self.secrets.uris.clone(),
        })
    }
}

/// Secrets given whole (a static bootstrap's), by name.
pub fn secrets_of(list: &[Secret]) -> Result<Secrets, String> {
    let mut held = Held::default();
    for (i, secret) in list.iter().enumerate() {
        decode(secret)
            .and_then(|d| held.take(&secret.name, d))
            .map_err(|e| format!("static_resources.secrets[{i}] ({}): {e}", secret.name))?;
    }
    Ok(held.secrets)
}

async fn channel(socket: &Path) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let socket: PathBuf = socket.to_path_buf();
    // The URI is not used: every connection is the Unix socket.
    tonic::transport::Endpoint::from_static("http://sds.local")
        .connect_with_connector(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move {
                tokio::net::UnixStream::connect(socket)
                    .await
                    .map(TokioIo::new)
            }
        }))
        .await
}

/// One SDS stream; returns when it ends.
async fn stream(
    socket: &Path,
    node: &Node,
    names: &mut watch::Receiver<BTreeSet<String>>,
    held: &mut Held,
    out: &watch::Sender<Arc<Secrets>>,
) -> Result<(), String> {
    let channel = channel(socket).await.map_err(|e| e.to_string())?;
    let mut client = SecretDiscoveryServiceClient::new(channel);
    let (tx, requests) = mpsc::unbounded_channel();
    let mut subscribed = names.borrow_and_update().clone();
    let _ = tx.send(DeltaDiscoveryRequest {
        node: Some(node.clone()),
        type_url: SECRET_TYPE.into(),
        resource_names_subscribe: subscribed.iter().cloned().collect(),
        ..Default::default()
    });
    let mut responses = client
        .delta_secrets(UnboundedReceiverStream::new(requests))
        .await
        .map_err(|e| e.to_string())?
        .into_inner();
    loop {
        tokio::select! {
            changed = names.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                let now = names.borrow_and_update().clone();
                let _ = tx.send(DeltaDiscoveryRequest {
                    type_url: SECRET_TYPE.into(),
                    resource_names_subscribe: now.difference(&subscribed).cloned().collect(),
                    resource_names_unsubscribe: subscribed.difference(&now).cloned().collect(),
                    ..Default::default()
                });
                subscribed = now;
            }
            response = responses.message() => {
                let Some(response) = response.map_err(|e| e.to_string())? else {
                    return Ok(());
                };
                let mut problems = Vec::new();
                let mut grew = false;
                for resource in &response.resources {
                    let secret = resource
                        .resource
                        .as_ref()
                        .ok_or_else(|| "no resource".to_string())
                        .and_then(|any| Secret::decode(any.value.as_slice()).map_err(|e| e.to_string()))
                        .and_then(|secret| decode(&secret));
                    match secret.and_then(|d| held.take(&resource.name, d)) {
                        Ok(new) => grew |= new,
                        Err(e) => problems.push(format!("Secret {}: {e}", resource.name)),
                    }
                }
                if grew {
                    out.send_replace(held.snapshot());
                }
                if !problems.is_empty() {
                    tracing::warn!(?problems, "secrets refused");
                }
                let _ = tx.send(DeltaDiscoveryRequest {
                    type_url: SECRET_TYPE.into(),
                    response_nonce: response.nonce.clone(),
                    error_detail: (!problems.is_empty()).then(|| Status {
                        code: 3,
                        message: problems.join("\n"),
                        details: Vec::new(),
                    }),
                    ..Default::default()
                });
            }
        }
    }
}

/// Follows the agent's SDS server at `socket` for as long as the proxy
/// runs, subscribed to the names `names` holds; `out` gets the secrets
/// each time a name is first filled in (renewals change them in place).
pub async fn follow(
    socket: PathBuf,
    node: Node,
    mut names: watch::Receiver<BTreeSet<String>>,
    out: watch::Sender<Arc<Secrets>>,
) {
    let mut held = Held::default();
    loop {
        if let Err(e) = stream(&socket, &node, &mut names, &mut held, &out).await {
            tracing::warn!(error = %e, socket = %socket.display(), "the SDS stream ended; keeping the secrets held");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

//! What weft's add-on services (`weft ratelimit`) share with proxies: a
//! workload identity from the edge, kept renewed, that the service
//! serves its own TLS with; and resources from the edge's ADS, on a
//! stream that announces the service in its node metadata (so the edge
//! registers it like any proxy) over mutual TLS with that identity.
//!
//! State of the world: the service asks for one type, takes each answer
//! whole, ACKs what it could use and NACKs (with the reason) what it
//! could not, and keeps what it had.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use weft_identity::SpiffeId;
use weft_identity::tls::{ServingCertificate, TrustStore};

use crate::AgentError;
use crate::credential;
use crate::svid::{self, EdgeLink, Issued};
use crate::workload::Workload;

/// A service's identity and its way to the edge.
pub struct Addon {
    pub workload: Workload,
    /// The service's current certificate: what it serves, and shows the
    /// edge.
    pub certificate: Arc<ServingCertificate>,
    /// The trust domain's roots: what its callers' certificates must
    /// chain to.
    pub trust: Arc<TrustStore>,
    edge: SocketAddr,
    credential: String,
}

fn serve(certificate: &ServingCertificate, issued: &Issued) -> Result<(), AgentError> {
    let (chain, key) = issued.pem();
    let chain = weft_identity::certificates_from_pem("the workload certificate", chain)?;
    let key = pem::parse(key)
        .map_err(|e| AgentError::Secrets(format!("the workload key: {e}")))?
        .into_contents();
    certificate.set(chain, key)?;
    Ok(())
}

impl Addon {
    /// Gets `workload` (its `node` filled in if empty) its certificate
    /// from the edge at `edge` with the credential in `credential_file`,
    /// and keeps it renewed.
    pub async fn start(
        mut workload: Workload,
        edge: SocketAddr,
        credential_file: &Path,
    ) -> Result<Addon, AgentError> {
        let secret = credential::read_secret(credential_file)?;
        let trust = Arc::new(TrustStore::default());
        trust.set(credential::read_trust_bundle(credential_file)?);
        if workload.node.is_empty() {
            workload.node = Workload::new_node_id(&workload.service);
        }
        let link = EdgeLink::new(edge, secret.clone(), workload.node.clone(), trust.clone())?;
        let issued = svid::first(&link).await?;
        tracing::info!(id = %issued.svid.id, expires = %issued.svid.expires_at, "got the workload certificate");
        let certificate = Arc::new(ServingCertificate::default());
        let serving = certificate.clone();
        svid::keep_renewed_with(issued, link, move |issued| serve(&serving, issued))?;
        Ok(Addon {
            workload,
            certificate,
            trust,
            edge,
            credential: secret,
        })
    }

    /// Follows the edge's resources of `type_url` for as long as the
    /// process runs: each answer goes to `apply`, which says whether it
    /// could use it (an error is NACKed with its text). The stream is
    /// opened again after any failure, a second later at first and at
    /// most every 10 s, with what was last applied kept meanwhile.
    pub async fn follow(
        self: Arc<Self>,
        type_url: String,
        mut apply: impl FnMut(&[Any]) -> Result<(), String> + Send,
    ) {
        let mut backoff = Duration::from_secs(1);
        loop {
            match self.session(&type_url, &mut apply).await {
                Ok(()) => backoff = Duration::from_secs(1),
                Err(reason) => {
                    tracing::warn!(edge = %self.edge, %reason, "the edge's stream ended; opening it again");
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
    }

    async fn session(
        &self,
        type_url: &str,
        apply: &mut (impl FnMut(&[Any]) -> Result<(), String> + Send),
    ) -> Result<(), String> {
        let channel = self.channel().await?;
        let mut client = AggregatedDiscoveryServiceClient::new(channel);
        let (tx, rx) = mpsc::channel(4);
        let node = Node {
            id: self.workload.node.clone(),
            cluster: self.workload.service.clone(),
            metadata: Some(self.workload.to_metadata()),
            ..Default::default()
        };
        let first = DiscoveryRequest {
            node: Some(node),
            type_url: type_url.to_string(),
            ..Default::default()
        };
        tx.send(first).await.map_err(|e| e.to_string())?;
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        let bearer = format!("Bearer {}", self.credential)
            .parse()
            .map_err(|_| "the credential is not a valid header value".to_string())?;
        request.metadata_mut().insert("authorization", bearer);
        let mut responses = client
            .stream_aggregated_resources(request)
            .await
            .map_err(|status| status.message().to_string())?
            .into_inner();
        let mut version = String::new();
        while let Some(response) = responses
            .message()
            .await
            .map_err(|s| s.message().to_string())?
        {
            let DiscoveryResponse {
                version_info,
                resources,
                nonce,
                ..
            } = response;
            let error_detail = match apply(&resources) {
                Ok(()) => {
                    version = version_info;
                    None
                }
                Err(message) => {
                    tracing::error!(%message, version = %version_info, "refused the edge's update; keeping the last one");
                    Some(RpcStatus {
                        code: tonic::Code::InvalidArgument as i32,
                        message,
                        details: Vec::new(),
                    })
                }
            };
            let ack = DiscoveryRequest {
                version_info: version.clone(),
                response_nonce: nonce,
                type_url: type_url.to_string(),
                error_detail,
                ..Default::default()
            };
            tx.send(ack).await.map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// An HTTP/2 channel to the edge over mutual TLS: the edge must show
    /// its SPIFFE ID, and this service shows its current certificate.
    async fn channel(&self) -> Result<tonic::transport::Channel, String> {
        let mut tls = weft_identity::tls::client_config(
            self.trust.clone(),
            |bundle| {
                SpiffeId::edge(bundle.trust_domain())
                    .map(|id| id.to_string())
                    .unwrap_or_default()
            },
            Some(self.certificate.clone()),
        )
        .map_err(|e| e.to_string())?;
        tls.alpn_protocols = vec![b"h2".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
        let edge = self.edge;
        let connect = tower::service_fn(move |_: tonic::transport::Uri| {
            let connector = connector.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(edge).await?;
                // The edge is checked by its SPIFFE ID, not by this name.
                let name = ServerName::IpAddress(edge.ip().into());
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        });
        tonic::transport::Endpoint::from_static("http://edge")
            .connect_timeout(Duration::from_secs(5))
            .connect_with_connector(connect)
            .await
            .map_err(|e| format!("cannot reach the edge at {edge}: {e}"))
    }
}

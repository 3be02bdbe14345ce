//! The agent's SDS server: secrets for its Envoy over a Unix socket in
//! its runtime directory, and the names they go by. Those names, and the
//! static cluster that reaches the socket, are this crate's contract with
//! the edge's translation: the listeners and clusters it sends name them.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use envoy_types::pb::envoy::config::core::v3::api_config_source::ApiType;
use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use envoy_types::pb::envoy::config::core::v3::grpc_service::{EnvoyGrpc, TargetSpecifier};
use envoy_types::pb::envoy::config::core::v3::{
    ApiConfigSource, ApiVersion, ConfigSource, GrpcService,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{SdsSecretConfig, Secret};
use weft_xds::{AdsServer, Snapshot, SnapshotCache};

use crate::AgentError;

/// The bootstrap's static cluster for the agent's SDS socket.
pub const CLUSTER: &str = "weft-sds";
/// The workload's certificate chain and key.
pub const CERTIFICATE: &str = "default";
/// The roots of the trust domain.
pub const TRUST_BUNDLE: &str = "ROOTCA";

/// A gateway's server certificate `name`: files `NAME.crt` and `NAME.key`
/// in its certificate directory ([`crate::certificates`]).
pub fn server_certificate(name: &str) -> String {
    format!("certificate/{name}")
}

/// A CA bundle for client certificates: a `NAME.crt` with no key.
pub fn client_ca(name: &str) -> String {
    format!("ca/{name}")
}

/// Where an Envoy resource names secret `name`: the agent's SDS server.
pub fn secret_config(name: &str) -> SdsSecretConfig {
    SdsSecretConfig {
        name: name.to_string(),
        sds_config: Some(ConfigSource {
            resource_api_version: ApiVersion::V3 as i32,
            config_source_specifier: Some(ConfigSourceSpecifier::ApiConfigSource(
                ApiConfigSource {
                    api_type: ApiType::Grpc as i32,
                    transport_api_version: ApiVersion::V3 as i32,
                    grpc_services: vec![GrpcService {
                        target_specifier: Some(TargetSpecifier::EnvoyGrpc(EnvoyGrpc {
                            cluster_name: CLUSTER.into(),
                            ..Default::default()
                        })),
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            )),
            ..Default::default()
        }),
    }
}

/// Serves one node's secrets; each source (the workload certificate, a
/// gateway's certificate files) replaces its own set, and Envoy gets the
/// union. Cheap to clone.
#[derive(Clone)]
pub struct SdsServer {
    cache: Arc<SnapshotCache>,
    node: String,
    sources: Arc<Mutex<BTreeMap<&'static str, Vec<Secret>>>>,
}

impl SdsServer {
    /// Listens on `socket` for node `node`'s Envoy, in a task that runs
    /// until the process ends.
    pub fn start(socket: &Path, node: &str) -> Result<SdsServer, AgentError> {
        let cache = Arc::new(SnapshotCache::new());
        let listener = tokio::net::UnixListener::bind(socket)
            .map_err(|e| AgentError::file("cannot listen on", socket, e))?;
        let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
        let server = tonic::transport::Server::builder()
            .add_service(AdsServer::new(cache.clone()).into_sds_service())
            .serve_with_incoming(incoming);
        tokio::spawn(async move {
            if let Err(error) = server.await {
                tracing::error!(%error, "the SDS server stopped");
            }
        });
        Ok(SdsServer {
            cache,
            node: node.to_string(),
            sources: Arc::default(),
        })
    }

    /// Replaces `source`'s secrets and publishes the union.
    pub fn set(&self, source: &'static str, secrets: Vec<Secret>) -> Result<(), AgentError> {
        let mut sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        sources.insert(source, secrets);
        let all: Vec<Secret> = sources.values().flatten().cloned().collect();
        let snapshot = Snapshot::secrets(&all).map_err(|e| AgentError::Secrets(e.to_string()))?;
        self.cache.set(&self.node, snapshot);
        Ok(())
    }
}

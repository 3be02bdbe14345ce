//! weft-proxy's xDS client: one delta ADS stream to the edge, for every
//! cluster and listener, the endpoints of the EDS clusters and the route
//! tables the listeners name (subscriptions follow them). Each
//! response is converted whole into [`crate::config`]: if every resource
//! in it converts, the change applies at once (a new immutable
//! [`Resources`], swapped in) and is ACKed; if any is refused, nothing of
//! it applies, the proxy keeps what it had, and the NACK carries every
//! refusal with its field path. A stream that ends leaves the last good
//! resources in place; [`follow`] opens the next one.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster as XdsCluster;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener as XdsListener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::rpc::Status;
use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::config::{Assignment, Cluster, Discovery, Listener, Refused, RouteTable};

pub const CLUSTER_TYPE: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const ENDPOINT_TYPE: &str =
    "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
pub const ROUTE_TYPE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
pub const LISTENER_TYPE: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";

/// Everything the proxy holds now: replaced whole on each accepted change.
#[derive(Debug, Clone, Default)]
pub struct Resources {
    pub clusters: BTreeMap<String, Arc<Cluster>>,
    pub endpoints: BTreeMap<String, Arc<Assignment>>,
    pub routes: BTreeMap<String, Arc<RouteTable>>,
    pub listeners: BTreeMap<String, Arc<Listener>>,
    /// The version of each resource, as the server named it.
    pub versions: BTreeMap<(String, String), String>,
    /// Each resource as it arrived, by type and name (the config dump).
    pub raw: BTreeMap<(String, String), Any>,
}

#[derive(Debug, thiserror::Error)]
pub enum XdsError {
    #[error("the ADS stream could not open: {0}")]
    Open(tonic::Status),
    #[error("the ADS stream failed: {0}")]
    Stream(tonic::Status),
    #[error("the ADS stream's metadata: {0}")]
    Metadata(String),
    #[error("the ADS server cannot be reached: {0}")]
    Connect(String),
}

/// What a response changes, converted; or why it cannot apply.
enum Converted {
    Clusters(Vec<(String, String, Cluster, Any)>),
    Endpoints(Vec<(String, String, Assignment, Any)>),
    Routes(Vec<(String, String, RouteTable, Any)>),
    Listeners(Vec<(String, String, Listener, Any)>),
}

fn convert(response: &DeltaDiscoveryResponse) -> Result<Converted, Vec<String>> {
    let mut problems = Vec::new();
    macro_rules! each {
        ($proto:ty, $ours:ty, $variant:ident) => {{
            let mut out = Vec::new();
            for resource in &response.resources {
                let Some(any) = &resource.resource else {
                    problems.push(format!("{}: no resource", resource.name));
                    continue;
                };
                match <$proto>::decode(any.value.as_slice()) {
                    Ok(proto) => match <$ours>::try_from(&proto) {
                        Ok(ours) => out.push((
                            resource.name.clone(),
                            resource.version.clone(),
                            ours,
                            any.clone(),
                        )),
                        Err(Refused {
                            resource,
                            problems: p,
                        }) => problems.push(format!("{resource}: {}", p.join("; "))),
                    },
                    Err(e) => problems.push(format!("{}: does not decode: {e}", resource.name)),
                }
            }
            Converted::$variant(out)
        }};
    }
    let converted = match response.type_url.as_str() {
        CLUSTER_TYPE => each!(XdsCluster, Cluster, Clusters),
        ENDPOINT_TYPE => each!(ClusterLoadAssignment, Assignment, Endpoints),
        ROUTE_TYPE => each!(RouteConfiguration, RouteTable, Routes),
        LISTENER_TYPE => each!(XdsListener, Listener, Listeners),
        other => {
            problems.push(format!("{other}: weft-proxy does not take this type yet"));
            Converted::Routes(Vec::new())
        }
    };
    if problems.is_empty() {
        Ok(converted)
    } else {
        Err(problems)
    }
}

impl Resources {
    /// The resources with `response` applied.
    fn with(&self, response: &DeltaDiscoveryResponse, converted: Converted) -> Resources {
        let mut next = self.clone();
        let t = response.type_url.clone();
        macro_rules! apply {
            ($map:ident, $items:expr) => {{
                for name in &response.removed_resources {
                    next.$map.remove(name);
                    next.versions.remove(&(t.clone(), name.clone()));
                    next.raw.remove(&(t.clone(), name.clone()));
                }
                for (name, version, item, raw) in $items {
                    next.versions.insert((t.clone(), name.clone()), version);
                    next.raw.insert((t.clone(), name.clone()), raw);
                    next.$map.insert(name, Arc::new(item));
                }
            }};
        }
        match converted {
            Converted::Clusters(items) => apply!(clusters, items),
            Converted::Endpoints(items) => apply!(endpoints, items),
            Converted::Routes(items) => apply!(routes, items),
            Converted::Listeners(items) => apply!(listeners, items),
        }
        next
    }

    /// The clusters whose endpoints come from EDS.
    fn eds_clusters(&self) -> BTreeSet<String> {
        self.clusters
            .values()
            .filter(|c| c.discovery == Discovery::Eds)
            .map(|c| c.name.clone())
            .collect()
    }

    /// The route tables the listeners route by.
    fn route_tables(&self) -> BTreeSet<String> {
        self.listeners
            .values()
            .flat_map(|l| &l.chains)
            .filter(|c| c.http.inline_routes.is_none())
            .map(|c| c.http.route_table.clone())
            .collect()
    }
}

/// The request that moves a subscription from `old` names to `new` ones.
fn resubscribe(
    type_url: &str,
    old: &BTreeSet<String>,
    new: &BTreeSet<String>,
) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url: type_url.into(),
        resource_names_subscribe: new.difference(old).cloned().collect(),
        resource_names_unsubscribe: old.difference(new).cloned().collect(),
        ..Default::default()
    }
}

/// What must hold of resources before they apply, beyond converting:
/// each problem is a NACK's line (a listener that cannot bind…).
pub type Check = dyn Fn(&Resources) -> Result<(), Vec<String>> + Send + Sync;

/// One ADS stream over `channel` for `node`, asking for every cluster and
/// listener, the endpoints of the EDS clusters and the route tables the
/// listeners name; `held` has what the proxy holds, and keeps it when
/// the stream ends.
pub async fn stream(
    channel: tonic::transport::Channel,
    node: Node,
    metadata: &[(String, String)],
    check: &Check,
    held: &watch::Sender<Arc<Resources>>,
) -> Result<(), XdsError> {
    let mut client = AggregatedDiscoveryServiceClient::new(channel);
    // Unbounded, as Envoy's: a client that stops reading while its
    // requests queue would stall the stream.
    let (tx, requests) = mpsc::unbounded_channel();
    let current = held.borrow().clone();
    // What this proxy already holds, so a new stream sends only changes.
    let initial = |t: &str| -> std::collections::HashMap<String, String> {
        current
            .versions
            .iter()
            .filter(|((type_url, _), _)| type_url == t)
            .map(|((_, name), version)| (name.clone(), version.clone()))
            .collect()
    };
    let first = |t: &str, names: Vec<String>| DeltaDiscoveryRequest {
        node: Some(node.clone()),
        type_url: t.to_string(),
        resource_names_subscribe: names,
        initial_resource_versions: initial(t),
        ..Default::default()
    };
    let mut eds = current.eds_clusters();
    let mut rds = current.route_tables();
    let _ = tx.send(first(CLUSTER_TYPE, Vec::new()));
    let _ = tx.send(first(LISTENER_TYPE, Vec::new()));
    for (t, names) in [(ENDPOINT_TYPE, &eds), (ROUTE_TYPE, &rds)] {
        if !names.is_empty() {
            let _ = tx.send(first(t, names.iter().cloned().collect()));
        }
    }
    let mut request = tonic::Request::new(UnboundedReceiverStream::new(requests));
    for (key, value) in metadata {
        let key = tonic::metadata::MetadataKey::from_bytes(key.as_bytes())
            .map_err(|e| XdsError::Metadata(e.to_string()))?;
        let value = value
            .parse()
            .map_err(|_| XdsError::Metadata(format!("{key}: not a header value")))?;
        request.metadata_mut().insert(key, value);
    }
    let mut responses = client
        .delta_aggregated_resources(request)
        .await
        .map_err(XdsError::Open)?
        .into_inner();
    while let Some(response) = responses.message().await.map_err(XdsError::Stream)? {
        let answer = |error: Option<String>| DeltaDiscoveryRequest {
            type_url: response.type_url.clone(),
            response_nonce: response.nonce.clone(),
            error_detail: error.map(|message| Status {
                // INVALID_ARGUMENT, as Envoy NACKs.
                code: 3,
                message,
                details: Vec::new(),
            }),
            ..Default::default()
        };
        let checked = convert(&response).and_then(|converted| {
            let next = held.borrow().with(&response, converted);
            check(&next).map(|()| next)
        });
        match checked {
            Ok(next) => {
                let (now_eds, now_rds) = (next.eds_clusters(), next.route_tables());
                held.send_replace(Arc::new(next));
                let _ = tx.send(answer(None));
                if now_eds != eds {
                    let _ = tx.send(resubscribe(ENDPOINT_TYPE, &eds, &now_eds));
                    eds = now_eds;
                }
                if now_rds != rds {
                    let _ = tx.send(resubscribe(ROUTE_TYPE, &rds, &now_rds));
                    rds = now_rds;
                }
            }
            Err(problems) => {
                tracing::warn!(type_url = %response.type_url, problems = ?problems, "configuration refused; keeping the last good one");
                let _ = tx.send(answer(Some(problems.join("\n"))));
            }
        }
    }
    Ok(())
}

/// Streams for as long as the proxy runs, over channels `connect` opens:
/// a stream that ends or fails is opened again after a pause (up to 5 s),
/// the resources held meanwhile.
pub async fn follow(
    mut connect: impl AsyncFnMut() -> Result<tonic::transport::Channel, XdsError>,
    node: Node,
    metadata: Vec<(String, String)>,
    check: Box<Check>,
    held: watch::Sender<Arc<Resources>>,
) {
    let mut pause = Duration::from_millis(100);
    loop {
        match connect().await {
            Ok(channel) => match stream(channel, node.clone(), &metadata, &*check, &held).await {
                Ok(()) => pause = Duration::from_millis(100),
                Err(e) => {
                    tracing::warn!(error = %e, "xDS stream ended; keeping the last good configuration")
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "the edge cannot be reached; keeping the last good configuration")
            }
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

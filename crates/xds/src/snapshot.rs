//! Immutable, versioned, consistent sets of xDS resources for one proxy.
//!
//! A [`Snapshot`] holds clusters, endpoints, listeners and routes (or, for
//! a sidecar's local SDS server, secrets) as
//! protobuf `Any`s with content-hash versions (per resource and per type).
//! It can only be built consistent: every route configuration a listener
//! names exists, every cluster a route names exists, and every EDS cluster
//! has its endpoints. So a proxy is never handed half a configuration.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};
use sha2::{Digest, Sha256};

/// The resource types a snapshot holds, in the order additions are sent:
/// secrets before anything that uses them, a cluster before endpoints,
/// listeners or routes refer to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ResourceType {
    Secret,
    Cluster,
    Endpoint,
    Listener,
    Route,
}

impl ResourceType {
    pub const ALL: [ResourceType; 5] = [
        ResourceType::Secret,
        ResourceType::Cluster,
        ResourceType::Endpoint,
        ResourceType::Listener,
        ResourceType::Route,
    ];

    pub fn type_url(self) -> String {
        match self {
            ResourceType::Secret => Secret::type_url(),
            ResourceType::Cluster => Cluster::type_url(),
            ResourceType::Endpoint => ClusterLoadAssignment::type_url(),
            ResourceType::Listener => Listener::type_url(),
            ResourceType::Route => RouteConfiguration::type_url(),
        }
    }

    pub fn from_type_url(url: &str) -> Option<ResourceType> {
        ResourceType::ALL.into_iter().find(|t| t.type_url() == url)
    }

    /// Whether a subscription without names means "all of them" (CDS and
    /// LDS); EDS and RDS are always asked for by name.
    pub fn wildcard_by_default(self) -> bool {
        matches!(self, ResourceType::Cluster | ResourceType::Listener)
    }

    /// Short name for logs and metrics.
    pub fn short(self) -> &'static str {
        match self {
            ResourceType::Secret => "sds",
            ResourceType::Cluster => "cds",
            ResourceType::Endpoint => "eds",
            ResourceType::Listener => "lds",
            ResourceType::Route => "rds",
        }
    }
}

/// One resource, encoded, with the hash of its encoding as its version.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub any: Any,
    pub version: String,
}

/// Why a snapshot could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Inconsistent {
    #[error("listener {listener} names route configuration {route}, which is not in the snapshot")]
    MissingRoute { listener: String, route: String },
    #[error("route configuration {route} names cluster {cluster}, which is not in the snapshot")]
    MissingCluster { route: String, cluster: String },
    #[error("EDS cluster {cluster} has no endpoints {service} in the snapshot")]
    MissingEndpoints { cluster: String, service: String },
    #[error("two {kind} resources are named {name}")]
    Duplicate { kind: &'static str, name: String },
    #[error("listener {listener}: its HTTP connection manager cannot be decoded: {error}")]
    Undecodable { listener: String, error: String },
}

/// An immutable, consistent set of resources.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    resources: BTreeMap<ResourceType, BTreeMap<String, Entry>>,
    /// Endpoint names the EDS clusters ask for: a proxy's clusters are warm
    /// once it holds all of them.
    eds_services: BTreeSet<String>,
    /// EDS cluster name → the endpoint name it asks for.
    eds_service_of: BTreeMap<String, String>,
}

const HTTP_CONNECTION_MANAGER: &str = "envoy.filters.network.http_connection_manager";

fn entry<M: Message + Name>(message: &M) -> Entry {
    let bytes = message.encode_to_vec();
    let version = hex::encode(&Sha256::digest(&bytes)[..8]);
    Entry {
        any: Any {
            type_url: M::type_url(),
            value: bytes,
        },
        version,
    }
}

fn insert<M: Message + Name>(
    map: &mut BTreeMap<String, Entry>,
    kind: &'static str,
    name: &str,
    message: &M,
) -> Result<(), Inconsistent> {
    if map.insert(name.to_string(), entry(message)).is_some() {
        return Err(Inconsistent::Duplicate {
            kind,
            name: name.to_string(),
        });
    }
    Ok(())
}

impl Snapshot {
    /// A snapshot of secrets only: what a sidecar serves its Envoy over SDS.
    pub fn secrets(secrets: &[Secret]) -> Result<Snapshot, Inconsistent> {
        let mut map = BTreeMap::new();
        for secret in secrets {
            insert(&mut map, "secret", &secret.name, secret)?;
        }
        Ok(Snapshot {
            resources: BTreeMap::from([(ResourceType::Secret, map)]),
            ..Snapshot::default()
        })
    }

    /// Whether a proxy that acknowledged `acked` (version by type) runs
    /// this snapshot: every type it holds, or has asked for, is at the
    /// snapshot's version.
    pub fn accepted(&self, acked: &BTreeMap<ResourceType, String>) -> bool {
        ResourceType::ALL.into_iter().all(|t| match acked.get(&t) {
            Some(version) => *version == self.version(t),
            None => self.resources(t).is_empty(),
        })
    }

    /// Builds a snapshot, or says what is missing.
    pub fn new(
        clusters: &[Cluster],
        endpoints: &[ClusterLoadAssignment],
        listeners: &[Listener],
        routes: &[RouteConfiguration],
    ) -> Result<Snapshot, Inconsistent> {
        let cluster_names: BTreeSet<&str> = clusters.iter().map(|c| c.name.as_str()).collect();
        let endpoint_names: BTreeSet<&str> =
            endpoints.iter().map(|e| e.cluster_name.as_str()).collect();
        let route_names: BTreeSet<&str> = routes.iter().map(|r| r.name.as_str()).collect();

        let mut eds_services = BTreeSet::new();
        let mut eds_service_of = BTreeMap::new();
        for cluster in clusters {
            let eds = cluster.cluster_discovery_type
                == Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32));
            if eds {
                let service = cluster
                    .eds_cluster_config
                    .as_ref()
                    .map(|c| c.service_name.as_str())
                    .filter(|s| !s.is_empty())
                    .unwrap_or(&cluster.name);
                eds_services.insert(service.to_string());
                eds_service_of.insert(cluster.name.clone(), service.to_string());
                if !endpoint_names.contains(service) {
                    return Err(Inconsistent::MissingEndpoints {
                        cluster: cluster.name.clone(),
                        service: service.to_string(),
                    });
                }
            }
        }
        for listener in listeners {
            for route in rds_names(listener)? {
                if !route_names.contains(route.as_str()) {
                    return Err(Inconsistent::MissingRoute {
                        listener: listener.name.clone(),
                        route,
                    });
                }
            }
        }
        for route in routes {
            for cluster in cluster_names_in(route) {
                if !cluster_names.contains(cluster.as_str()) {
                    return Err(Inconsistent::MissingCluster {
                        route: route.name.clone(),
                        cluster,
                    });
                }
            }
        }

        let mut resources = BTreeMap::new();
        let mut map = BTreeMap::new();
        for c in clusters {
            insert(&mut map, "cluster", &c.name, c)?;
        }
        resources.insert(ResourceType::Cluster, std::mem::take(&mut map));
        for e in endpoints {
            insert(&mut map, "endpoint", &e.cluster_name, e)?;
        }
        resources.insert(ResourceType::Endpoint, std::mem::take(&mut map));
        for l in listeners {
            insert(&mut map, "listener", &l.name, l)?;
        }
        resources.insert(ResourceType::Listener, std::mem::take(&mut map));
        for r in routes {
            insert(&mut map, "route", &r.name, r)?;
        }
        resources.insert(ResourceType::Route, map);
        Ok(Snapshot {
            resources,
            eds_services,
            eds_service_of,
        })
    }

    /// The resources of one type, by name.
    pub fn resources(&self, t: ResourceType) -> &BTreeMap<String, Entry> {
        static EMPTY: BTreeMap<String, Entry> = BTreeMap::new();
        self.resources.get(&t).unwrap_or(&EMPTY)
    }

    /// Endpoint names the snapshot's EDS clusters ask for.
    pub fn eds_services(&self) -> &BTreeSet<String> {
        &self.eds_services
    }

    /// The endpoint name EDS cluster `cluster` asks for.
    pub fn eds_service_of(&self, cluster: &str) -> Option<&str> {
        self.eds_service_of.get(cluster).map(String::as_str)
    }

    /// Gives resource `name` of type `t` the version `version`, in place
    /// of the hash of its encoding. For owners whose resources carry
    /// protobuf maps: prost encodes a map in its hash order, which differs
    /// between two builds of the same content, and a new version of a
    /// listener makes Envoy replace it (and drain its connections). A
    /// version from the owner's own canonical form keeps it stable.
    pub fn set_version(&mut self, t: ResourceType, name: &str, version: String) {
        if let Some(entry) = self.resources.get_mut(&t).and_then(|m| m.get_mut(name)) {
            entry.version = version;
        }
    }

    /// A version for all resources of a type: a hash of names and versions.
    pub fn version(&self, t: ResourceType) -> String {
        let mut hasher = Sha256::new();
        for (name, entry) in self.resources(t) {
            hasher.update(name.as_bytes());
            hasher.update([0]);
            hasher.update(entry.version.as_bytes());
            hasher.update([0]);
        }
        hex::encode(&hasher.finalize()[..8])
    }

    /// Encoded size of all resources, for figures on config growth.
    pub fn encoded_len(&self) -> usize {
        self.resources
            .values()
            .flat_map(|m| m.values())
            .map(|e| e.any.value.len())
            .sum()
    }
}

/// Route configuration names a listener asks for over RDS.
fn rds_names(listener: &Listener) -> Result<Vec<String>, Inconsistent> {
    let mut names = Vec::new();
    let chains = listener
        .filter_chains
        .iter()
        .chain(listener.default_filter_chain.iter());
    for filter in chains.flat_map(|c| c.filters.iter()) {
        let Some(ConfigType::TypedConfig(any)) = &filter.config_type else {
            continue;
        };
        if filter.name != HTTP_CONNECTION_MANAGER
            && any.type_url != HttpConnectionManager::type_url()
        {
            continue;
        }
        let hcm = HttpConnectionManager::decode(any.value.as_slice()).map_err(|e| {
            Inconsistent::Undecodable {
                listener: listener.name.clone(),
                error: e.to_string(),
            }
        })?;
        if let Some(RouteSpecifier::Rds(rds)) = hcm.route_specifier {
            names.push(rds.route_config_name);
        }
    }
    Ok(names)
}

/// Clusters a route configuration sends traffic to.
fn cluster_names_in(route: &RouteConfiguration) -> Vec<String> {
    let mut names = Vec::new();
    for r in route.virtual_hosts.iter().flat_map(|v| v.routes.iter()) {
        let Some(Action::Route(action)) = &r.action else {
            continue;
        };
        match &action.cluster_specifier {
            Some(ClusterSpecifier::Cluster(name)) => names.push(name.clone()),
            Some(ClusterSpecifier::WeightedClusters(weighted)) => {
                names.extend(weighted.clusters.iter().map(|c| c.name.clone()));
            }
            _ => {}
        }
    }
    names
}

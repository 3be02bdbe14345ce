//! Immutable, versioned, consistent sets of xDS resources for one proxy.
//!
//! A [`Snapshot`] holds clusters, endpoints, listeners and routes (or, for
//! a sidecar's local SDS server, secrets) as
//! protobuf `Any`s with content-hash versions (per resource and per type).
//! It can only be built consistent: every route configuration a listener
//! names exists, every cluster a route names exists, and every EDS cluster
//! has its endpoints. So a proxy is never handed half a configuration.
//!
//! Resources are encoded once and shared: a snapshot is two [`Layer`]s,
//! the proxy's own (its listeners, its inbound side) and one it shares
//! with every proxy that calls the same services. A layer that replaces
//! another remembers what changed ([`Changes`]), so the ADS streams of a
//! thousand proxies each look only at the resources that changed, not at
//! everything they hold.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

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

use crate::authservice::LoginServers;
use crate::ratelimit::RateLimitRules;
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
    /// `weft ratelimit`'s rules ([`crate::ratelimit`]): nothing depends
    /// on them, and they depend on nothing.
    RateLimit,
    /// `weft authservice`'s servers ([`crate::authservice`]); likewise.
    Login,
}

impl ResourceType {
    pub const ALL: [ResourceType; 7] = [
        ResourceType::Secret,
        ResourceType::Cluster,
        ResourceType::Endpoint,
        ResourceType::Listener,
        ResourceType::Route,
        ResourceType::RateLimit,
        ResourceType::Login,
    ];

    pub fn type_url(self) -> String {
        match self {
            ResourceType::Secret => Secret::type_url(),
            ResourceType::Cluster => Cluster::type_url(),
            ResourceType::Endpoint => ClusterLoadAssignment::type_url(),
            ResourceType::Listener => Listener::type_url(),
            ResourceType::Route => RouteConfiguration::type_url(),
            ResourceType::RateLimit => RateLimitRules::type_url(),
            ResourceType::Login => LoginServers::type_url(),
        }
    }

    /// Its place in [`ResourceType::ALL`].
    fn index(self) -> usize {
        self as usize
    }

    pub fn from_type_url(url: &str) -> Option<ResourceType> {
        ResourceType::ALL.into_iter().find(|t| t.type_url() == url)
    }

    /// Whether a subscription without names means "all of them" (CDS and
    /// LDS); EDS and RDS are always asked for by name.
    pub fn wildcard_by_default(self) -> bool {
        matches!(
            self,
            ResourceType::Cluster
                | ResourceType::Listener
                | ResourceType::RateLimit
                | ResourceType::Login
        )
    }

    /// Short name for logs and metrics.
    pub fn short(self) -> &'static str {
        match self {
            ResourceType::Secret => "sds",
            ResourceType::Cluster => "cds",
            ResourceType::Endpoint => "eds",
            ResourceType::Listener => "lds",
            ResourceType::Route => "rds",
            ResourceType::RateLimit => "rls",
            ResourceType::Login => "login",
        }
    }
}

/// One resource, encoded, with the hash of its encoding as its version.
/// Name and version are shared, not copied, by every stream that records
/// holding it.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub name: Arc<str>,
    pub any: Any,
    pub version: Arc<str>,
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

/// A resource a layer refers to without holding it: the layer beside it
/// in a snapshot must.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Need {
    t: ResourceType,
    name: String,
    /// The resource that refers to it.
    by: String,
}

impl Need {
    fn missing(&self) -> Inconsistent {
        let (name, by) = (self.name.clone(), self.by.clone());
        match self.t {
            ResourceType::Route => Inconsistent::MissingRoute {
                listener: by,
                route: name,
            },
            ResourceType::Endpoint => Inconsistent::MissingEndpoints {
                cluster: by,
                service: name,
            },
            _ => Inconsistent::MissingCluster {
                route: by,
                cluster: name,
            },
        }
    }
}

/// What changed from one layer to the one that replaced it, by type.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// The id of the layer this one replaced.
    pub from: u64,
    /// Resources new or at another version.
    pub updated: BTreeMap<ResourceType, Vec<String>>,
    /// Resources gone.
    pub removed: BTreeMap<ResourceType, Vec<String>>,
}

impl Changes {
    /// Every name of type `t` that was added, updated or removed.
    pub fn names(&self, t: ResourceType) -> impl Iterator<Item = &String> {
        let updated = self.updated.get(&t).into_iter().flatten();
        updated.chain(self.removed.get(&t).into_iter().flatten())
    }
}

/// The resources of one type in a layer, sorted by name. A flat list:
/// an edge keeps a layer per service, most hold one or two resources of a
/// type, and a tree node per type and layer would cost more than they do.
#[derive(Debug, Default)]
pub struct Resources(Vec<Arc<Entry>>);

impl Resources {
    fn position(&self, name: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|e| (*e.name).cmp(name))
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Entry>> {
        self.position(name).ok().map(|i| &self.0[i])
    }

    pub fn contains(&self, name: &str) -> bool {
        self.position(name).is_ok()
    }

    /// In name order.
    pub fn iter(&self) -> std::slice::Iter<'_, Arc<Entry>> {
        self.0.iter()
    }

    pub fn names(&self) -> impl Iterator<Item = &Arc<str>> {
        self.0.iter().map(|e| &e.name)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// An immutable set of encoded resources, shared by every snapshot that
/// holds it. What it refers to and does not hold (`needs`) must be in the
/// layer beside it.
#[derive(Debug, Default)]
pub struct Layer {
    id: u64,
    /// By [`ResourceType::index`].
    resources: [Resources; ResourceType::ALL.len()],
    /// EDS cluster name → the endpoint name it asks for, sorted.
    eds_service_of: Vec<(String, String)>,
    needs: Vec<Need>,
    /// By [`ResourceType::index`].
    versions: [String; ResourceType::ALL.len()],
    changes: Option<Changes>,
}

static LAYER_IDS: AtomicU64 = AtomicU64::new(1);

impl Layer {
    /// Unique among the layers of this process: streams tell by it whether
    /// they already delivered a layer.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The resources of one type.
    pub fn resources(&self, t: ResourceType) -> &Resources {
        &self.resources[t.index()]
    }

    /// A hash of the names and versions of the resources of type `t`.
    pub fn version(&self, t: ResourceType) -> &str {
        &self.versions[t.index()]
    }

    fn eds_service_of(&self, cluster: &str) -> Option<&str> {
        let i = self
            .eds_service_of
            .binary_search_by(|(c, _)| c.as_str().cmp(cluster))
            .ok()?;
        Some(&self.eds_service_of[i].1)
    }

    /// What changed since the layer this one replaced, if it was built as
    /// its successor.
    pub fn changes(&self) -> Option<&Changes> {
        self.changes.as_ref()
    }

    /// Encoded size of all resources.
    pub fn encoded_len(&self) -> usize {
        self.resources
            .iter()
            .flat_map(Resources::iter)
            .map(|e| e.any.value.len())
            .sum()
    }

    fn holds(&self, t: ResourceType, name: &str) -> bool {
        self.resources(t).contains(name)
    }
}

/// Collects resources into a [`Layer`], encoding each once.
#[derive(Debug, Default)]
pub struct LayerBuilder {
    resources: BTreeMap<ResourceType, BTreeMap<String, Arc<Entry>>>,
    eds_service_of: BTreeMap<String, String>,
    needs: Vec<Need>,
}

fn kind_of(t: ResourceType) -> &'static str {
    match t {
        ResourceType::Secret => "secret",
        ResourceType::Cluster => "cluster",
        ResourceType::Endpoint => "endpoint",
        ResourceType::Listener => "listener",
        ResourceType::Route => "route",
        ResourceType::RateLimit => "rate limit rules",
        ResourceType::Login => "login servers",
    }
}

impl LayerBuilder {
    pub fn new() -> LayerBuilder {
        LayerBuilder::default()
    }

    fn insert(
        &mut self,
        t: ResourceType,
        name: &str,
        entry: Arc<Entry>,
    ) -> Result<(), Inconsistent> {
        let map = self.resources.entry(t).or_default();
        if map.insert(name.to_string(), entry).is_some() {
            return Err(Inconsistent::Duplicate {
                kind: kind_of(t),
                name: name.to_string(),
            });
        }
        Ok(())
    }

    fn need(&mut self, t: ResourceType, name: String, by: &str) {
        self.needs.push(Need {
            t,
            name,
            by: by.to_string(),
        });
    }

    pub fn cluster(&mut self, cluster: &Cluster) -> Result<(), Inconsistent> {
        let eds = cluster.cluster_discovery_type
            == Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32));
        if eds {
            let service = cluster
                .eds_cluster_config
                .as_ref()
                .map(|c| c.service_name.as_str())
                .filter(|s| !s.is_empty())
                .unwrap_or(&cluster.name)
                .to_string();
            self.eds_service_of
                .insert(cluster.name.clone(), service.clone());
            self.need(ResourceType::Endpoint, service, &cluster.name);
        }
        self.insert(
            ResourceType::Cluster,
            &cluster.name,
            Arc::new(entry(&cluster.name, cluster, None)),
        )
    }

    pub fn endpoints(&mut self, endpoints: &ClusterLoadAssignment) -> Result<(), Inconsistent> {
        let name = &endpoints.cluster_name;
        self.insert(
            ResourceType::Endpoint,
            name,
            Arc::new(entry(name, endpoints, None)),
        )
    }

    /// Adds a listener; `version`, when given, replaces the hash of its
    /// encoding. For owners whose resources carry protobuf maps: prost
    /// encodes a map in its hash order, which differs between two builds of
    /// the same content, and a new version of a listener makes Envoy replace
    /// it (and drain its connections). A version from the owner's own
    /// canonical form keeps it stable.
    pub fn listener(
        &mut self,
        listener: &Listener,
        version: Option<String>,
    ) -> Result<(), Inconsistent> {
        for route in rds_names(listener)? {
            self.need(ResourceType::Route, route, &listener.name);
        }
        let e = entry(&listener.name, listener, version);
        self.insert(ResourceType::Listener, &listener.name, Arc::new(e))
    }

    /// Adds a route configuration; `version` as for listeners.
    pub fn route(
        &mut self,
        route: &RouteConfiguration,
        version: Option<String>,
    ) -> Result<(), Inconsistent> {
        for cluster in cluster_names_in(route) {
            self.need(ResourceType::Cluster, cluster, &route.name);
        }
        let e = entry(&route.name, route, version);
        self.insert(ResourceType::Route, &route.name, Arc::new(e))
    }

    pub fn rate_limit_rules(&mut self, rules: &RateLimitRules) -> Result<(), Inconsistent> {
        self.insert(
            ResourceType::RateLimit,
            crate::ratelimit::RESOURCE,
            Arc::new(entry(crate::ratelimit::RESOURCE, rules, None)),
        )
    }

    pub fn login_servers(&mut self, servers: &LoginServers) -> Result<(), Inconsistent> {
        self.insert(
            ResourceType::Login,
            crate::authservice::RESOURCE,
            Arc::new(entry(crate::authservice::RESOURCE, servers, None)),
        )
    }

    pub fn secret(&mut self, secret: &Secret) -> Result<(), Inconsistent> {
        self.insert(
            ResourceType::Secret,
            &secret.name,
            Arc::new(entry(&secret.name, secret, None)),
        )
    }

    /// Adds everything `layer` holds, sharing its encoded resources.
    pub fn extend(&mut self, layer: &Layer) -> Result<(), Inconsistent> {
        for t in ResourceType::ALL {
            for entry in layer.resources(t).iter() {
                self.insert(t, &entry.name, entry.clone())?;
            }
        }
        self.eds_service_of.extend(
            layer
                .eds_service_of
                .iter()
                .map(|(k, v)| (k.clone(), v.clone())),
        );
        self.needs.extend(layer.needs.iter().cloned());
        Ok(())
    }

    /// The layer; what it refers to and holds itself is resolved, the rest
    /// stays needed.
    pub fn build(self) -> Layer {
        self.build_after(None)
    }

    /// The layer that replaces `previous`, remembering what changed.
    pub fn build_after(self, previous: Option<&Layer>) -> Layer {
        let LayerBuilder {
            resources,
            eds_service_of,
            needs,
        } = self;
        let mut needs: Vec<Need> = needs
            .into_iter()
            .filter(|n| !resources.get(&n.t).is_some_and(|m| m.contains_key(&n.name)))
            .collect();
        needs.sort();
        needs.dedup();
        needs.shrink_to_fit();
        let mut by_type = resources;
        let resources: [Resources; ResourceType::ALL.len()] = ResourceType::ALL.map(|t| {
            Resources(
                by_type
                    .remove(&t)
                    .map(|m| m.into_values().collect())
                    .unwrap_or_default(),
            )
        });
        let versions = resources.each_ref().map(digest);
        let changes = previous.map(|previous| changes_between(previous, &resources, &versions));
        Layer {
            id: LAYER_IDS.fetch_add(1, Ordering::Relaxed),
            resources,
            eds_service_of: eds_service_of.into_iter().collect(),
            needs,
            versions,
            changes,
        }
    }
}

fn digest(resources: &Resources) -> String {
    let mut hasher = Sha256::new();
    for entry in resources.iter() {
        hasher.update(entry.name.as_bytes());
        hasher.update([0]);
        hasher.update(entry.version.as_bytes());
        hasher.update([0]);
    }
    hex::encode(&hasher.finalize()[..8])
}

fn changes_between(
    previous: &Layer,
    resources: &[Resources; ResourceType::ALL.len()],
    versions: &[String; ResourceType::ALL.len()],
) -> Changes {
    let mut changes = Changes {
        from: previous.id,
        ..Changes::default()
    };
    for t in ResourceType::ALL {
        let (old, new) = (previous.resources(t), &resources[t.index()]);
        if versions[t.index()] == previous.version(t) {
            continue;
        }
        let updated: Vec<String> = new
            .iter()
            .filter(|entry| {
                old.get(&entry.name)
                    .is_none_or(|o| !Arc::ptr_eq(o, entry) && o.version != entry.version)
            })
            .map(|entry| entry.name.to_string())
            .collect();
        let removed: Vec<String> = old
            .names()
            .filter(|name| !new.contains(name))
            .map(|name| name.to_string())
            .collect();
        if !updated.is_empty() {
            changes.updated.insert(t, updated);
        }
        if !removed.is_empty() {
            changes.removed.insert(t, removed);
        }
    }
    changes
}

fn entry<M: Message + Name>(name: &str, message: &M, version: Option<String>) -> Entry {
    let bytes = message.encode_to_vec();
    let version = version.unwrap_or_else(|| hex::encode(&Sha256::digest(&bytes)[..8]));
    Entry {
        name: name.into(),
        any: Any {
            type_url: M::type_url(),
            value: bytes,
        },
        version: version.into(),
    }
}

/// An immutable, consistent set of resources: the proxy's own layer and
/// the layer it shares with others, which hold no name in common.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    own: Arc<Layer>,
    shared: Arc<Layer>,
    versions: BTreeMap<ResourceType, String>,
}

impl PartialEq for Snapshot {
    fn eq(&self, other: &Snapshot) -> bool {
        self.versions == other.versions
            && ResourceType::ALL
                .into_iter()
                .all(|t| self.entries(t).eq(other.entries(t)))
    }
}

impl Snapshot {
    /// A snapshot of secrets only: what a sidecar serves its Envoy over SDS.
    pub fn secrets(secrets: &[Secret]) -> Result<Snapshot, Inconsistent> {
        let mut layer = LayerBuilder::new();
        for secret in secrets {
            layer.secret(secret)?;
        }
        Snapshot::compose(Arc::new(layer.build()), Arc::default())
    }

    /// Builds a snapshot of one layer, or says what is missing.
    pub fn new(
        clusters: &[Cluster],
        endpoints: &[ClusterLoadAssignment],
        listeners: &[Listener],
        routes: &[RouteConfiguration],
    ) -> Result<Snapshot, Inconsistent> {
        let mut layer = LayerBuilder::new();
        for c in clusters {
            layer.cluster(c)?;
        }
        for e in endpoints {
            layer.endpoints(e)?;
        }
        for l in listeners {
            layer.listener(l, None)?;
        }
        for r in routes {
            layer.route(r, None)?;
        }
        Snapshot::compose(Arc::new(layer.build()), Arc::default())
    }

    /// A proxy's `own` layer beside the `shared` one: every need of either
    /// must be met by the two, and no name may be in both.
    pub fn compose(own: Arc<Layer>, shared: Arc<Layer>) -> Result<Snapshot, Inconsistent> {
        for need in own.needs.iter().chain(&shared.needs) {
            if !own.holds(need.t, &need.name) && !shared.holds(need.t, &need.name) {
                return Err(need.missing());
            }
        }
        // The own layer is the small one: look its names up in the other.
        for t in ResourceType::ALL {
            if let Some(name) = own.resources(t).names().find(|name| shared.holds(t, name)) {
                return Err(Inconsistent::Duplicate {
                    kind: kind_of(t),
                    name: name.to_string(),
                });
            }
        }
        let versions = ResourceType::ALL
            .into_iter()
            .map(|t| {
                let version = match (own.resources(t).is_empty(), shared.resources(t).is_empty()) {
                    (_, true) => own.version(t).to_string(),
                    (true, false) => shared.version(t).to_string(),
                    (false, false) => {
                        let both = format!("{}+{}", own.version(t), shared.version(t));
                        hex::encode(&Sha256::digest(both.as_bytes())[..8])
                    }
                };
                (t, version)
            })
            .collect();
        Ok(Snapshot {
            own,
            shared,
            versions,
        })
    }

    /// The proxy's own layer.
    pub fn own(&self) -> &Arc<Layer> {
        &self.own
    }

    /// The layer shared with other proxies.
    pub fn shared(&self) -> &Arc<Layer> {
        &self.shared
    }

    /// Whether a proxy that acknowledged `acked` (version by type) runs
    /// this snapshot: every type it holds, or has asked for, is at the
    /// snapshot's version.
    pub fn accepted(&self, acked: &BTreeMap<ResourceType, String>) -> bool {
        ResourceType::ALL.into_iter().all(|t| match acked.get(&t) {
            Some(version) => *version == self.version(t),
            None => self.len(t) == 0,
        })
    }

    /// Resource `name` of type `t`.
    pub fn get(&self, t: ResourceType, name: &str) -> Option<&Arc<Entry>> {
        self.own
            .resources(t)
            .get(name)
            .or_else(|| self.shared.resources(t).get(name))
    }

    /// The resources of one type: the own layer's, then the shared ones.
    pub fn entries(&self, t: ResourceType) -> impl Iterator<Item = &Arc<Entry>> {
        self.own
            .resources(t)
            .iter()
            .chain(self.shared.resources(t).iter())
    }

    /// How many resources of type `t`.
    pub fn len(&self, t: ResourceType) -> usize {
        self.own.resources(t).len() + self.shared.resources(t).len()
    }

    /// Endpoint names the snapshot's EDS clusters ask for: a proxy's
    /// clusters are warm once it holds all of them.
    pub fn eds_services(&self) -> BTreeSet<&str> {
        self.own
            .eds_service_of
            .iter()
            .chain(&self.shared.eds_service_of)
            .map(|(_, service)| service.as_str())
            .collect()
    }

    /// The endpoint name EDS cluster `cluster` asks for.
    pub fn eds_service_of(&self, cluster: &str) -> Option<&str> {
        self.own
            .eds_service_of(cluster)
            .or_else(|| self.shared.eds_service_of(cluster))
    }

    /// A version for all resources of a type: a hash of names and versions.
    pub fn version(&self, t: ResourceType) -> String {
        self.versions.get(&t).cloned().unwrap_or_default()
    }

    /// Encoded size of all resources, for figures on config growth.
    pub fn encoded_len(&self) -> usize {
        self.own.encoded_len() + self.shared.encoded_len()
    }
}

const HTTP_CONNECTION_MANAGER: &str = "envoy.filters.network.http_connection_manager";

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

//! The intermediate form: everything decided about one service (its
//! instances here, the other clusters that run it, its route, its merged
//! settings and its endpoint sets), before any proxy is considered.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::Serialize;
use weft_api::edge::ConfigError;
use weft_api::traffic::{
    CircuitBreaker, ConnectionPool, LoadBalancer, LocalityPolicy, OutlierDetection, Retries,
};

use super::{
    locality::remote_endpoints,
    parse::{Config, LevelClaims, ServiceRoute, error},
    resilience::parse_duration,
};
use crate::directory::Directory;
use crate::proxy::{Endpoints, Mtls, RemoteEndpoints, SocketAddr};
use weft_agent::workload::Workload;

/// A service: `name` in `namespace`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct ServiceKey {
    pub namespace: String,
    pub name: String,
}

impl ServiceKey {
    /// The server name callers send, by which other clusters' east-west
    /// gateways pick the service.
    pub(super) fn sni(&self) -> String {
        format!("{}.{}.mesh", self.name, self.namespace)
    }

    /// How translation names the service: `name.namespace`.
    pub fn id(&self) -> String {
        format!("{}.{}", self.name, self.namespace)
    }

    pub(super) fn cluster_name(&self, subset: Option<&str>) -> String {
        match subset {
            Some(subset) => format!("{SERVICE_CLUSTER}{}.{}|{subset}", self.name, self.namespace),
            None => format!("{SERVICE_CLUSTER}{}.{}", self.name, self.namespace),
        }
    }

    /// The service (and subset) a [`ServiceKey::cluster_name`] names;
    /// none for a cluster of anything else.
    pub fn from_cluster_name(cluster: &str) -> Option<(ServiceKey, Option<&str>)> {
        let rest = cluster.strip_prefix(SERVICE_CLUSTER)?;
        let (service, subset) = match rest.split_once('|') {
            Some((service, subset)) => (service, Some(subset)),
            None => (rest, None),
        };
        let (name, namespace) = service.split_once('.')?;
        Some((
            ServiceKey {
                namespace: namespace.to_string(),
                name: name.to_string(),
            },
            subset,
        ))
    }
}

/// How the clusters of services' instances begin.
const SERVICE_CLUSTER: &str = "out|";

/// The settings that apply to one service after merging: for each part,
/// the most specific setting that gives it (service over group over
/// workspace).
#[derive(Default)]
pub(super) struct Policy {
    pub(super) timeout: Option<Duration>,
    pub(super) retries: Option<Retries>,
    pub(super) circuit_breaker: Option<CircuitBreaker>,
    pub(super) outlier_detection: Option<OutlierDetection>,
    pub(super) load_balancer: Option<LoadBalancer>,
    pub(super) connection_pool: Option<ConnectionPool>,
    pub(super) locality: Option<LocalityPolicy>,
    pub(super) rate_limiting: Option<weft_api::ratelimit::RateLimiting>,
    /// The TrafficSetting each part comes from, by its field name.
    pub(super) sources: BTreeMap<&'static str, String>,
}

/// The intermediate form: everything decided about one service.
pub(super) struct ServicePlan<'c> {
    pub(super) key: ServiceKey,
    /// How callers check the instances' certificates.
    pub(super) mtls: Option<Mtls>,
    pub(super) workspace: Option<String>,
    pub(super) instances: Vec<&'c Workload>,
    /// The cluster the instances run in (this one).
    pub(super) site: &'c str,
    /// Other clusters that run the service, nearest first: the backup of
    /// the local instances, or the only way to it.
    pub(super) remote: Vec<RemoteEndpoints>,
    pub(super) route: Option<&'c ServiceRoute>,
    pub(super) policy: Policy,
    /// The service's EDS clusters (all instances, then each subset).
    pub(super) clusters: BTreeMap<String, Endpoints>,
}

/// Merges the settings that apply to `key`, reporting two settings of
/// the same specificity that both set one part.
pub(super) fn merge_policy(
    config: &Config,
    key: &ServiceKey,
    workspace: Option<&str>,
    errors: &mut Vec<ConfigError>,
) -> Policy {
    let mut policy = Policy::default();
    let Some(workspace) = workspace else {
        return policy;
    };
    // Least specific first; a later level overrides an earlier one.
    let levels = config.levels(&config.settings, &config.groups, workspace, key);
    for level in levels {
        let mut claims = LevelClaims::new(key);
        for setting in level {
            let spec = &setting.spec;
            let mut claim = |part: &'static str, present: bool| {
                claims.claim(&setting.path, part, present, errors)
            };
            if claim("timeout", spec.timeout.is_some()) {
                policy.timeout = parse_duration(&spec.timeout);
            }
            if claim("retries", spec.retries.is_some()) {
                policy.retries = spec.retries.clone();
            }
            if claim("circuitBreaker", spec.circuit_breaker.is_some()) {
                policy.circuit_breaker = spec.circuit_breaker.clone();
            }
            if claim("outlierDetection", spec.outlier_detection.is_some()) {
                policy.outlier_detection = spec.outlier_detection.clone();
            }
            if claim("loadBalancer", spec.load_balancer.is_some()) {
                policy.load_balancer = spec.load_balancer;
            }
            if claim("connectionPool", spec.connection_pool.is_some()) {
                policy.connection_pool = spec.connection_pool.clone();
            }
            if claim("locality", spec.locality.is_some()) {
                policy.locality = spec.locality.clone();
            }
            if claim("rateLimiting", spec.rate_limiting.is_some()) {
                policy.rate_limiting = spec.rate_limiting.clone();
            }
        }
        policy.sources.extend(claims.into_sources());
    }
    policy
}

impl<'c> ServicePlan<'c> {
    pub(super) fn new(
        config: &'c Config,
        directory: &Directory,
        key: ServiceKey,
        instances: Vec<&'c Workload>,
        errors: &mut Vec<ConfigError>,
    ) -> ServicePlan<'c> {
        // A service that runs only elsewhere belongs to the workspace that
        // holds its namespace there.
        let item = format!("{}/{}", key.namespace, key.name);
        let workspace = config
            .workspace_of(&key.namespace)
            .or_else(|| {
                directory
                    .clusters
                    .iter()
                    .filter(|(_, remote)| remote.services.contains_key(&item))
                    .find_map(|(name, _)| config.workspace_at(name, &key.namespace))
            })
            .map(|w| w.path.clone());
        let mut routes = config.routes.iter().filter(|r| {
            r.spec.service.name == key.name
                && r.spec.service.namespace == key.namespace
                && config
                    .groups
                    .iter()
                    .any(|g| g.path == r.group && config.group_covers(g, &key.namespace))
        });
        let route = routes.next();
        for other in routes {
            errors.push(error(
                &other.path,
                "spec.service",
                format!(
                    "{}.{} is already routed by {}; that one applies",
                    key.name,
                    key.namespace,
                    route.map(|r| r.path.as_str()).unwrap_or_default()
                ),
            ));
        }
        let policy = merge_policy(config, &key, workspace.as_deref(), errors);
        let remote = remote_endpoints(
            config,
            directory,
            &key,
            workspace.as_deref(),
            &policy,
            !instances.is_empty(),
        );
        // Callers accept only the identities the service's instances have,
        // here and in the clusters they may be sent to.
        let mtls = config.trust_domain.as_ref().map(|trust_domain| {
            let elsewhere = remote
                .iter()
                .filter_map(|r| directory.clusters.get(&r.cluster))
                .filter_map(|c| c.services.get(&item))
                .flat_map(|s| s.service_accounts.iter().map(String::as_str));
            let peers: BTreeSet<String> = instances
                .iter()
                .map(|w| w.service_account.as_str())
                .chain(elsewhere)
                .map(|account| format!("spiffe://{trust_domain}/ns/{}/sa/{account}", key.namespace))
                .collect();
            Mtls {
                trust_domain: trust_domain.clone(),
                peers: peers.into_iter().collect(),
                permissive: false,
                sni: Some(key.sni()),
            }
        });
        let mut plan = ServicePlan {
            key,
            mtls,
            workspace,
            instances,
            site: &config.cluster,
            remote,
            route,
            policy,
            clusters: BTreeMap::new(),
        };
        plan.clusters = plan.endpoint_sets();
        plan
    }

    /// The service's EDS clusters and their endpoints: every instance
    /// (and other clusters' gateways behind them), and each subset's
    /// instances (here only: the directory knows no labels).
    pub(super) fn endpoint_sets(&self) -> BTreeMap<String, Endpoints> {
        let all = BTreeMap::new();
        let mut sets = BTreeMap::from([self.local_set(
            self.key.cluster_name(None),
            &all,
            self.remote.clone(),
        )]);
        if let Some(route) = self.route {
            for subset in &route.spec.subsets {
                let (name, endpoints) = self.local_set(
                    self.key.cluster_name(Some(&subset.name)),
                    &subset.labels,
                    Vec::new(),
                );
                sets.insert(name, endpoints);
            }
        }
        sets
    }

    /// The endpoint set `cluster` of the local instances carrying all of
    /// `labels`, with `remote` behind them.
    pub(super) fn local_set(
        &self,
        cluster: String,
        labels: &BTreeMap<String, String>,
        remote: Vec<RemoteEndpoints>,
    ) -> (String, Endpoints) {
        let mut endpoints: Vec<SocketAddr> = self
            .instances
            .iter()
            .filter(|w| labels.iter().all(|(k, v)| w.labels.get(k) == Some(v)))
            .map(|w| SocketAddr {
                address: w.address.clone(),
                port: w.port,
            })
            .collect();
        endpoints.sort();
        let endpoints = Endpoints {
            cluster: cluster.clone(),
            endpoints,
            site: self.site.to_string(),
            remote,
        };
        (cluster, endpoints)
    }

    /// The plan of `key` among `plans` (sorted by key, as translation
    /// makes them), if the service is known here: a workspace holds it or
    /// an instance runs.
    pub(super) fn known<'p>(
        plans: &'p [ServicePlan<'c>],
        key: &ServiceKey,
    ) -> Option<&'p ServicePlan<'c>> {
        plans
            .binary_search_by(|p| p.key.cmp(key))
            .ok()
            .map(|i| &plans[i])
            .filter(|p| p.workspace.is_some() || !p.instances.is_empty())
    }
}

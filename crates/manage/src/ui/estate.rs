//! What the pages show, gathered once per page from the store and the
//! edges' reports, cut to what the signed-in user may read: the clusters
//! they may read, the workspaces they may read, and the services those
//! workspaces select (with their instances, from every edge's report).

use std::collections::BTreeMap;

use weft_api::Verb;
use weft_api::edge::{EdgeStatus, ProxyReport};
use weft_api::kinds::top_level_path;
use weft_api::specs::selector_covers;
use weft_api::traffic_stats::PairTraffic;

use crate::AppState;
use crate::edges::CONNECTED_WITHIN;
use crate::error::ApiError;
use crate::iam::Caller;

/// A workspace the user may read.
pub struct Workspace {
    pub path: String,
    pub name: String,
    pub tenant: String,
    pub selector: Vec<String>,
}

/// A cluster the user may read, with its edge's last report.
pub struct Cluster {
    pub path: String,
    pub name: String,
    pub region: String,
    pub zone: String,
    pub network: String,
    pub status: Option<EdgeStatus>,
    pub reported_at: Option<String>,
    pub connected: bool,
}

/// One running instance of a service, as its cluster's edge reports it.
pub struct Instance {
    pub cluster: String,
    pub proxy: ProxyReport,
    /// Whether its edge still reports (else what is known may be stale).
    pub edge_connected: bool,
}

impl Instance {
    pub fn version(&self) -> &str {
        self.proxy.labels.get("version").map_or("", String::as_str)
    }
}

/// A service across clusters.
#[derive(Default)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    pub instances: Vec<Instance>,
    /// Clusters where it runs or was called.
    pub clusters: std::collections::BTreeSet<String>,
}

impl Service {
    pub fn url(&self) -> String {
        service_url(&self.namespace, &self.name)
    }
}

pub fn service_url(namespace: &str, name: &str) -> String {
    format!(
        "/ui/services/{}/{}",
        super::layout::encode(namespace),
        super::layout::encode(name)
    )
}

pub struct Estate {
    pub workspaces: Vec<Workspace>,
    pub clusters: Vec<Cluster>,
    /// By namespace and name.
    pub services: BTreeMap<(String, String), Service>,
}

fn string_at(value: &serde_json::Value, key: &str) -> String {
    value
        .get(key)
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_string()
}

impl Estate {
    pub async fn load(state: &AppState, caller: &Caller) -> Result<Estate, ApiError> {
        let mut workspaces = Vec::new();
        for ws in state.store.list("Workspace").await? {
            if !caller.can(Verb::Read, "Workspace", &ws.path) {
                continue;
            }
            workspaces.push(Workspace {
                name: ws.resource.metadata.name.clone(),
                tenant: ws.path.split('/').nth(1).unwrap_or_default().to_string(),
                selector: ws
                    .resource
                    .spec
                    .get("namespaceSelector")
                    .and_then(|v| serde_json::from_value(v.clone()).ok())
                    .unwrap_or_default(),
                path: ws.path,
            });
        }
        let reports = state.store.edge_reports().await?;
        let now = std::time::SystemTime::now();
        let fresh = |at: &str| {
            humantime::parse_rfc3339_weak(at)
                .ok()
                .and_then(|t| now.duration_since(t).ok())
                .is_some_and(|age| age <= CONNECTED_WITHIN)
        };
        let mut clusters = Vec::new();
        for stored in state.store.list("Cluster").await? {
            if !caller.can(Verb::Read, "Cluster", &stored.path) {
                continue;
            }
            let name = stored.resource.metadata.name.clone();
            let report = reports.iter().find(|r| r.cluster == name);
            let spec = &stored.resource.spec;
            clusters.push(Cluster {
                region: string_at(spec, "region"),
                zone: string_at(spec, "zone"),
                network: string_at(spec, "network"),
                status: report.and_then(|r| serde_json::from_str(&r.status).ok()),
                reported_at: report.map(|r| r.reported_at.clone()),
                connected: report.is_some_and(|r| fresh(&r.reported_at)),
                path: stored.path,
                name,
            });
        }
        let mut estate = Estate {
            workspaces,
            clusters,
            services: BTreeMap::new(),
        };
        for report in &reports {
            let Ok(status) = serde_json::from_str::<EdgeStatus>(&report.status) else {
                continue;
            };
            let edge_connected = fresh(&report.reported_at);
            for proxy in status.proxies {
                if !proxy.role.is_empty() && proxy.role != "sidecar" {
                    continue;
                }
                if !estate.visible(&report.cluster, &proxy.namespace) {
                    continue;
                }
                let service = estate.service_entry(&proxy.namespace, &proxy.service);
                service.clusters.insert(report.cluster.clone());
                service.instances.push(Instance {
                    cluster: report.cluster.clone(),
                    proxy,
                    edge_connected,
                });
            }
        }
        Ok(estate)
    }

    fn service_entry(&mut self, namespace: &str, name: &str) -> &mut Service {
        self.services
            .entry((namespace.to_string(), name.to_string()))
            .or_insert_with(|| Service {
                namespace: namespace.to_string(),
                name: name.to_string(),
                ..Service::default()
            })
    }

    /// Adds the callees of `pairs` (kept apart by cluster) that no edge
    /// reports instances of: they were called all the same.
    pub fn add_called(&mut self, pairs: &[PairTraffic]) {
        for pair in pairs {
            let cluster = crate::traffic::callee_cluster(pair).to_string();
            let d = &pair.destination;
            let service = self.service_entry(&d.namespace, &d.service);
            if !cluster.is_empty() && cluster != "unknown" {
                service.clusters.insert(cluster);
            }
        }
    }

    /// Whether the user may read what runs in `namespace` of `cluster`.
    pub fn visible(&self, cluster: &str, namespace: &str) -> bool {
        self.workspace_of(cluster, namespace).is_some()
    }

    /// The first readable workspace that selects `namespace` of `cluster`.
    pub fn workspace_of(&self, cluster: &str, namespace: &str) -> Option<&Workspace> {
        let entry = format!("{cluster}/{namespace}");
        self.workspaces
            .iter()
            .find(|w| selector_covers(&w.selector, &entry))
    }

    /// The readable workspaces that select `namespace` in any cluster
    /// the service is in (or in any cluster, for a service seen nowhere).
    pub fn workspaces_of(&self, service: &Service) -> Vec<&Workspace> {
        self.workspaces
            .iter()
            .filter(|w| {
                if service.clusters.is_empty() {
                    return w.selector.iter().any(|e| {
                        e.split_once('/')
                            .is_some_and(|(_, n)| n == "*" || n == service.namespace)
                    });
                }
                service
                    .clusters
                    .iter()
                    .any(|c| selector_covers(&w.selector, &format!("{c}/{}", service.namespace)))
            })
            .collect()
    }

    pub fn cluster(&self, name: &str) -> Option<&Cluster> {
        self.clusters.iter().find(|c| c.name == name)
    }
}

/// The path of a cluster resource, for links.
pub fn cluster_path(name: &str) -> String {
    top_level_path("Cluster", name)
}

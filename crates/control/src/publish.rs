//! From a [`Translation`] in shared form to every proxy's snapshot,
//! encoding only what changed since the last build.
//!
//! The edge keeps one [`Publisher`] for its life. Each build compares the
//! parts of the new translation with the last ones:
//! - a service whose clusters and endpoints are unchanged keeps its
//!   encoded layer;
//! - a caller group whose services' layers and route table are unchanged
//!   keeps its shared layer; a changed one is rebuilt from the encoded
//!   layers (sharing them) and remembers what changed, so the ADS streams
//!   send only that;
//! - a proxy whose own part and shared layer are unchanged is left alone.
//!
//! So a new instance re-encodes one service's endpoints, rebuilds the
//! shared layers of the groups that call it, and gives those groups'
//! proxies snapshots that differ in that one resource. Memory grows with
//! services and groups, not with proxies × services: each proxy holds its
//! own small layer and a pointer to its group's.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use weft_xds::{Inconsistent, Layer, LayerBuilder, Snapshot};

use crate::proxy::{ProxyConfig, RouteTable};
use crate::translate::{ServiceResources, Translation};

/// What one build did, for metrics and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BuildStats {
    /// Services whose resources were encoded (new or changed).
    pub services_encoded: usize,
    /// Caller groups whose shared layer was rebuilt.
    pub groups_rebuilt: usize,
    /// Proxies given a new snapshot.
    pub proxies_updated: usize,
}

/// The outcome of a build.
#[derive(Debug, Default)]
pub struct Published {
    /// New snapshots, by node.
    pub snapshots: Vec<(String, Snapshot)>,
    /// Proxies whose new config is inconsistent: they keep their last one.
    pub refused: Vec<(String, Inconsistent)>,
    /// Proxies no longer in the translation.
    pub removed: Vec<String>,
    pub stats: BuildStats,
}

struct ServiceLayer {
    resources: ServiceResources,
    layer: Result<Arc<Layer>, Inconsistent>,
}

struct GroupLayer {
    /// The ids of the service layers it was built from, in order.
    parts: Vec<u64>,
    table: RouteTable,
    layer: Result<Arc<Layer>, Inconsistent>,
}

struct ProxyLayer {
    own: ProxyConfig,
    layer: Result<Arc<Layer>, Inconsistent>,
    /// The shared layer its snapshot was composed with (0: none).
    shared: u64,
    /// Whether that snapshot was consistent (and published).
    published: bool,
}

/// Every proxy's snapshot, kept between builds.
#[derive(Default)]
pub struct Publisher {
    services: HashMap<String, ServiceLayer>,
    groups: HashMap<String, GroupLayer>,
    proxies: HashMap<String, ProxyLayer>,
}

fn layer_of(config: &ProxyConfig, previous: Option<&Layer>) -> Result<Arc<Layer>, Inconsistent> {
    let mut layer = LayerBuilder::new();
    config.add_to(&mut layer)?;
    Ok(Arc::new(layer.build_after(previous)))
}

impl Publisher {
    pub fn new() -> Publisher {
        Publisher::default()
    }

    /// Brings every proxy's snapshot to `translation`, encoding only what
    /// changed since the last call.
    pub fn publish(&mut self, translation: &Translation) -> Published {
        let mut published = Published::default();
        let empty: Arc<Layer> = Arc::default();

        self.services
            .retain(|id, _| translation.services.contains_key(id));
        for (id, resources) in &translation.services {
            if self
                .services
                .get(id)
                .is_some_and(|s| s.resources == *resources)
            {
                continue;
            }
            let config = ProxyConfig {
                clusters: resources.clusters.clone(),
                endpoints: resources.endpoints.clone(),
                ..ProxyConfig::default()
            };
            self.services.insert(
                id.clone(),
                ServiceLayer {
                    resources: resources.clone(),
                    layer: layer_of(&config, None),
                },
            );
            published.stats.services_encoded += 1;
        }

        self.groups
            .retain(|id, _| translation.outbound.contains_key(id));
        for (id, outbound) in &translation.outbound {
            let parts: Result<Vec<Arc<Layer>>, Inconsistent> = outbound
                .services
                .iter()
                .map(|s| match self.services.get(s).map(|s| &s.layer) {
                    Some(Ok(layer)) => Ok(layer.clone()),
                    Some(Err(e)) => Err(e.clone()),
                    None => Err(Inconsistent::MissingCluster {
                        route: outbound.route_table.name.clone(),
                        cluster: s.clone(),
                    }),
                })
                .collect();
            let ids: Vec<u64> = match &parts {
                Ok(parts) => parts.iter().map(|l| l.id()).collect(),
                Err(_) => Vec::new(),
            };
            let previous = self.groups.get(id);
            if previous.is_some_and(|g| {
                g.layer.is_ok() && g.parts == ids && g.table == outbound.route_table
            }) {
                continue;
            }
            let previous_layer = previous.and_then(|g| g.layer.as_ref().ok());
            let layer = parts.and_then(|parts| {
                let mut layer = LayerBuilder::new();
                for part in &parts {
                    layer.extend(part)?;
                }
                ProxyConfig {
                    routes: vec![outbound.route_table.clone()],
                    ..ProxyConfig::default()
                }
                .add_to(&mut layer)?;
                Ok(Arc::new(layer.build_after(previous_layer.map(|l| &**l))))
            });
            self.groups.insert(
                id.clone(),
                GroupLayer {
                    parts: ids,
                    table: outbound.route_table.clone(),
                    layer,
                },
            );
            published.stats.groups_rebuilt += 1;
        }

        self.proxies.retain(|node, _| {
            let kept = translation.proxies.contains_key(node);
            if !kept {
                published.removed.push(node.clone());
            }
            kept
        });
        for (node, plan) in &translation.proxies {
            let shared = match plan.outbound.as_ref().map(|g| self.groups.get(g)) {
                None => Ok(&empty),
                Some(Some(group)) => group.layer.as_ref().map_err(Clone::clone),
                Some(None) => Err(Inconsistent::MissingRoute {
                    listener: crate::translate::OUTBOUND.into(),
                    route: crate::translate::OUTBOUND.into(),
                }),
            };
            let shared = match shared {
                Ok(shared) => shared,
                Err(e) => {
                    published.refused.push((node.clone(), e));
                    continue;
                }
            };
            let previous = self.proxies.get(node);
            let own_unchanged = previous.is_some_and(|p| p.own == plan.own && p.layer.is_ok());
            if own_unchanged && previous.is_some_and(|p| p.shared == shared.id() && p.published) {
                continue;
            }
            let layer = match previous {
                Some(p) if own_unchanged => p.layer.clone(),
                _ => layer_of(
                    &plan.own,
                    previous.and_then(|p| p.layer.as_ref().ok()).map(|l| &**l),
                ),
            };
            let snapshot = layer
                .clone()
                .and_then(|own| Snapshot::compose(own, shared.clone()));
            self.proxies.insert(
                node.clone(),
                ProxyLayer {
                    own: plan.own.clone(),
                    layer,
                    shared: shared.id(),
                    published: snapshot.is_ok(),
                },
            );
            match snapshot {
                Ok(snapshot) => {
                    published.snapshots.push((node.clone(), snapshot));
                    published.stats.proxies_updated += 1;
                }
                Err(e) => published.refused.push((node.clone(), e)),
            }
        }
        published
    }
}

/// How long changes must pause before a build starts.
pub const QUIET: Duration = Duration::from_millis(20);
/// The longest a change waits for a burst to pause.
pub const COALESCE_AT_MOST: Duration = Duration::from_millis(250);

/// After a change on `changes`, waits for the burst it starts (a rollout:
/// many proxies coming and going) to pause for [`QUIET`], but never more
/// than [`COALESCE_AT_MOST`] in all, so a lone change is built within tens
/// of milliseconds and a rollout in a few builds. False once the sender is
/// gone.
pub async fn coalesce<T>(changes: &mut watch::Receiver<T>) -> bool {
    let first = Instant::now();
    loop {
        tokio::select! {
            r = changes.changed() => if r.is_err() { return false },
            () = tokio::time::sleep(QUIET) => return true,
        }
        if first.elapsed() >= COALESCE_AT_MOST {
            return true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directory::Directory;
    use crate::translate::{Config, translate};
    use weft_agent::workload::Workload;
    use weft_xds::ResourceType;

    fn config() -> Config {
        let resources: Vec<weft_api::Resource> = serde_json::from_value(serde_json::json!([
            {"apiVersion": "weft.dev/v1alpha1", "kind": "Tenant", "metadata": {"name": "t"}, "spec": {}},
            {"apiVersion": "weft.dev/v1alpha1", "kind": "Workspace", "metadata": {"name": "w", "tenant": "t"},
             "spec": {"namespaceSelector": ["east/shop"]}}
        ]))
        .unwrap();
        Config::parse("east", &resources)
    }

    fn instance(node: &str, service: &str, n: u8) -> Workload {
        Workload {
            node: node.into(),
            service: service.into(),
            namespace: "shop".into(),
            service_account: service.into(),
            labels: Default::default(),
            address: format!("10.0.0.{n}"),
            port: 15006,
            app_port: Some(8080),
            outbound_port: Some(15001),
            role: Default::default(),
            calls: Vec::new(),
        }
    }

    #[test]
    fn a_new_instance_re_encodes_its_service_only() {
        let config = config();
        let mut workloads = vec![
            instance("reviews-1", "reviews", 1),
            instance("ratings-1", "ratings", 2),
        ];
        let mut publisher = Publisher::new();
        let first = publisher.publish(&translate(&config, &workloads, &Directory::default()));
        assert_eq!(
            first.stats,
            BuildStats {
                services_encoded: 2,
                groups_rebuilt: 1,
                proxies_updated: 2
            }
        );
        let shared_before = first.snapshots[0].1.shared().clone();

        // The same input again: nothing to do.
        let again = publisher.publish(&translate(&config, &workloads, &Directory::default()));
        assert_eq!(again.stats, BuildStats::default());
        assert!(again.snapshots.is_empty());

        workloads.push(instance("reviews-2", "reviews", 3));
        let next = publisher.publish(&translate(&config, &workloads, &Directory::default()));
        assert_eq!(next.stats.services_encoded, 1, "only reviews changed");
        assert_eq!(next.stats.groups_rebuilt, 1);
        assert_eq!(next.stats.proxies_updated, 3);
        let (_, snapshot) = next
            .snapshots
            .iter()
            .find(|(node, _)| node == "ratings-1")
            .unwrap();
        // ratings-1's own layer is the one it had; its shared layer knows
        // that only reviews' endpoints changed.
        let changes = snapshot.shared().changes().unwrap();
        assert_eq!(changes.from, shared_before.id());
        assert_eq!(
            changes.updated,
            [(ResourceType::Endpoint, vec!["out|reviews.shop".to_string()])].into()
        );
        assert!(changes.removed.is_empty());
        // Shared resources are one allocation, whoever holds them.
        let unchanged = |s: &Snapshot| s.get(ResourceType::Cluster, "out|ratings.shop").cloned();
        assert!(Arc::ptr_eq(
            &unchanged(snapshot).unwrap(),
            &unchanged(&first.snapshots[1].1).unwrap()
        ));

        workloads.retain(|w| w.node != "reviews-2");
        let gone = publisher.publish(&translate(&config, &workloads, &Directory::default()));
        assert_eq!(gone.removed, ["reviews-2"]);
    }
}

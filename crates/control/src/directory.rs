//! The global directory at an edge: what other clusters run and how to
//! reach them (their sites and services, as the server relays them), and
//! this cluster's own entry, which the edge publishes.
//!
//! Never endpoints: a service elsewhere is a healthy-instance count and
//! the identities its instances run as, reached through its cluster's
//! east-west gateways. Translation ranks the other clusters by locality
//! and puts their gateways behind the local instances.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use weft_api::edge::{
    DirectoryChange, DirectoryEntry, DirectoryIngress, DirectoryItem, DirectoryService,
    DirectoryUpdate, Locality, Site,
};

use weft_agent::workload::{Role, Workload};

/// Other clusters' entries, as of a directory revision.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Directory {
    /// The server's directory revision this reflects; 0: none yet.
    #[serde(default)]
    pub revision: i64,
    #[serde(default)]
    pub clusters: BTreeMap<String, RemoteCluster>,
}

/// What one other cluster published.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RemoteCluster {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<Site>,
    /// By `NAMESPACE/NAME`.
    #[serde(default)]
    pub services: BTreeMap<String, DirectoryService>,
    /// The hostnames its ingress gateways serve, by hostname.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ingress: BTreeMap<String, DirectoryIngress>,
}

impl Directory {
    /// Applies an update from the server; whether anything changed. Costs
    /// what the update carries, not what the directory holds (but for a
    /// full update).
    pub fn apply(&mut self, update: DirectoryUpdate) -> bool {
        self.revision = update.revision;
        if update.full {
            let mut fresh = Directory::default();
            for change in update.changes {
                fresh.put(change);
            }
            let changed = fresh.clusters != self.clusters;
            self.clusters = fresh.clusters;
            return changed;
        }
        let mut changed = false;
        for change in update.changes {
            changed |= self.put(change);
        }
        changed
    }

    /// Sets or removes one item; whether that changed anything.
    fn put(&mut self, change: DirectoryChange) -> bool {
        let cluster = self.clusters.entry(change.cluster.clone()).or_default();
        let changed = match change.item {
            Some(DirectoryItem::Site(site)) => cluster.site.replace(site.clone()) != Some(site),
            Some(DirectoryItem::Service(service)) => {
                let key = format!("{}/{}", service.namespace, service.name);
                cluster.services.insert(key, service.clone()) != Some(service)
            }
            Some(DirectoryItem::Ingress(ingress)) => {
                cluster
                    .ingress
                    .insert(ingress.hostname.clone(), ingress.clone())
                    != Some(ingress)
            }
            None if change.key == "site" => cluster.site.take().is_some(),
            None => {
                if let Some(key) = change.key.strip_prefix("service/") {
                    cluster.services.remove(key).is_some()
                } else if let Some(hostname) = change.key.strip_prefix("ingress/") {
                    cluster.ingress.remove(hostname).is_some()
                } else {
                    false
                }
            }
        };
        if cluster.site.is_none() && cluster.services.is_empty() && cluster.ingress.is_empty() {
            self.clusters.remove(&change.cluster);
        }
        changed
    }

    /// Services other clusters run, with how many instances each.
    pub fn services(&self) -> usize {
        self.clusters.values().map(|c| c.services.len()).sum()
    }

    /// Other clusters with at least one east-west gateway to send to.
    pub fn reachable(&self) -> usize {
        self.clusters
            .values()
            .filter(|c| c.site.as_ref().is_some_and(|s| !s.gateways.is_empty()))
            .count()
    }
}

/// This cluster's entry: where it is, its gateways, each service with
/// registered instances, counted, and the hostnames its ingress gateways
/// serve (as translation found them). Workloads are the registry's (a
/// proxy in its grace period still counts: it may be back in a moment).
pub fn own_entry(
    locality: &Locality,
    workloads: &[Workload],
    ingress: Vec<DirectoryIngress>,
) -> DirectoryEntry {
    let mut gateways: Vec<String> = workloads
        .iter()
        .filter(|w| w.role == Role::Eastwest)
        .filter_map(|w| {
            let ip = w.address.parse::<std::net::IpAddr>().ok()?;
            Some(std::net::SocketAddr::new(ip, w.port).to_string())
        })
        .collect();
    gateways.sort();
    gateways.dedup();
    let mut services: BTreeMap<(&str, &str), (u32, BTreeSet<&str>)> = BTreeMap::new();
    for w in workloads.iter().filter(|w| w.is_instance()) {
        let (count, accounts) = services
            .entry((w.namespace.as_str(), w.service.as_str()))
            .or_default();
        *count += 1;
        accounts.insert(w.service_account.as_str());
    }
    DirectoryEntry {
        site: Site {
            locality: locality.clone(),
            gateways,
        },
        services: services
            .into_iter()
            .map(
                |((namespace, name), (healthy, accounts))| DirectoryService {
                    namespace: namespace.to_string(),
                    name: name.to_string(),
                    healthy,
                    service_accounts: accounts.into_iter().map(str::to_string).collect(),
                },
            )
            .collect(),
        ingress,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(service: &str, n: usize) -> Workload {
        Workload {
            node: format!("{service}-{n}"),
            service: service.into(),
            namespace: "shop".into(),
            service_account: service.into(),
            labels: BTreeMap::new(),
            address: format!("10.0.{}.{}", n / 250, n % 250 + 1),
            port: 15006,
            app_port: Some(8080),
            outbound_port: Some(15001),
            role: Role::Sidecar,
            calls: Vec::new(),
        }
    }

    /// What crosses clusters depends on services, not on instances: the
    /// entry of 20 services is printed for 1, 10 and 100 instances each,
    /// and differs only by the digits of the counts.
    #[test]
    fn an_entry_grows_with_services_not_instances() {
        let locality = Locality {
            region: "eu".into(),
            ..Locality::default()
        };
        let mut sizes = Vec::new();
        for per_service in [1, 10, 100] {
            let workloads: Vec<Workload> = (0..20)
                .flat_map(|s| (0..per_service).map(move |n| instance(&format!("svc{s}"), n)))
                .collect();
            let entry = own_entry(&locality, &workloads, Vec::new());
            assert_eq!(entry.services.len(), 20);
            assert!(
                entry
                    .services
                    .iter()
                    .all(|s| s.healthy == per_service as u32)
            );
            let bytes = serde_json::to_vec(&entry).unwrap().len();
            println!(
                "20 services × {per_service} instances ({} endpoints): entry {bytes} bytes",
                workloads.len()
            );
            sizes.push(bytes);
        }
        // "healthy":1 → "healthy":100 adds two digits per service.
        assert_eq!(sizes[1] - sizes[0], 20);
        assert_eq!(sizes[2] - sizes[1], 20);
    }

    #[test]
    fn updates_add_change_and_remove_items() {
        let service = |healthy| {
            Some(DirectoryItem::Service(DirectoryService {
                namespace: "shop".into(),
                name: "reviews".into(),
                healthy,
                service_accounts: vec!["reviews".into()],
            }))
        };
        let change = |cluster: &str, key: &str, item| DirectoryChange {
            cluster: cluster.into(),
            key: key.into(),
            item,
        };
        let mut directory = Directory::default();
        assert!(directory.apply(DirectoryUpdate {
            revision: 3,
            full: true,
            changes: vec![
                change("west", "site", Some(DirectoryItem::Site(Site::default()))),
                change("west", "service/shop/reviews", service(2)),
            ],
        }));
        assert_eq!(directory.services(), 1);
        assert_eq!(directory.reachable(), 0, "west has no gateway yet");
        let with_gateway = Site {
            gateways: vec!["10.1.0.1:15443".into()],
            ..Site::default()
        };
        assert!(directory.apply(DirectoryUpdate {
            revision: 4,
            full: false,
            changes: vec![change(
                "west",
                "site",
                Some(DirectoryItem::Site(with_gateway))
            )],
        }));
        assert_eq!(directory.reachable(), 1);
        assert!(!directory.apply(DirectoryUpdate {
            revision: 4,
            full: false,
            changes: vec![change("west", "service/shop/reviews", service(2))],
        }));
        assert_eq!(directory.revision, 4);
        assert!(directory.apply(DirectoryUpdate {
            revision: 5,
            full: false,
            changes: vec![change("west", "service/shop/reviews", None)],
        }));
        assert_eq!(directory.services(), 0);
        assert!(directory.apply(DirectoryUpdate {
            revision: 6,
            full: false,
            changes: vec![change("west", "site", None)],
        }));
        assert!(directory.clusters.is_empty());
        // A full update drops what it does not name.
        directory.apply(DirectoryUpdate {
            revision: 7,
            full: false,
            changes: vec![change("east", "service/shop/reviews", service(1))],
        });
        directory.apply(DirectoryUpdate {
            revision: 8,
            full: true,
            changes: vec![change("west", "service/shop/reviews", service(1))],
        });
        assert_eq!(directory.clusters.keys().collect::<Vec<_>>(), vec!["west"]);
    }
}

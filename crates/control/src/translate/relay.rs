//! A gateway's `tcp` and `tlsPassthrough` servers: connections relayed,
//! unopened, to a mesh service inside the mesh's mutual TLS. The gateway
//! offers [`crate::proxy::TCP_ALPN`], by which the service's sidecars send
//! the bytes to their app rather than through HTTP routing, after
//! checking the gateway's identity against the service's rules on
//! callers. A `tcp` server takes a whole port; `tlsPassthrough` servers
//! share one by the SNI the client sends (the app terminates that TLS).

use std::collections::{BTreeMap, BTreeSet};

use weft_api::edge::ConfigError;
use weft_api::gateway::parse_service;

use super::parse::{Gateway, error};
use super::plan::{ServiceKey, ServicePlan};
use crate::proxy::{Cluster, Endpoints, SniListener, SocketAddr};
use weft_agent::workload::Workload;

/// The services gateways relay TCP to: their sidecars take it.
pub(super) fn tcp_targets<'g>(gateways: impl Iterator<Item = &'g Gateway>) -> BTreeSet<ServiceKey> {
    gateways
        .flat_map(|g| {
            let tcp = g.spec.tcp.iter().map(|s| s.service.as_str());
            let passthrough = g.spec.tls_passthrough.iter().map(|s| s.service.as_str());
            tcp.chain(passthrough)
        })
        .filter_map(|service| parse_service(service).ok())
        .map(|(namespace, name)| ServiceKey {
            namespace: namespace.to_string(),
            name: name.to_string(),
        })
        .collect()
}

/// What a gateway's relays need: listeners, and the clusters (with their
/// endpoints) they send to.
#[derive(Default)]
pub(super) struct Relays {
    pub(super) listeners: Vec<SniListener>,
    pub(super) clusters: BTreeMap<String, Cluster>,
    pub(super) endpoints: BTreeMap<String, Endpoints>,
}

/// The relays of `gateways` on workload `w`; ports its HTTP servers take
/// (`http_ports`) are reported and left out.
pub(super) fn relays(
    w: &Workload,
    gateways: &[&Gateway],
    http_ports: &BTreeSet<u16>,
    plans: &[ServicePlan<'_>],
    errors: &mut Vec<ConfigError>,
) -> Relays {
    // By port: SNI ("" for a tcp server) → (service, where it was given).
    let mut ports: BTreeMap<u16, BTreeMap<String, (String, String, String)>> = BTreeMap::new();
    for gateway in gateways {
        let servers = gateway
            .spec
            .tcp
            .iter()
            .enumerate()
            .map(|(i, s)| (format!("spec.tcp[{i}]"), s.port, String::new(), &s.service))
            .chain(
                gateway
                    .spec
                    .tls_passthrough
                    .iter()
                    .enumerate()
                    .map(|(i, s)| {
                        (
                            format!("spec.tlsPassthrough[{i}]"),
                            s.port,
                            s.hostname.clone(),
                            &s.service,
                        )
                    }),
            );
        for (at, port, sni, service) in servers {
            let routes = ports.entry(port).or_default();
            let taken = http_ports.contains(&port)
                || routes.contains_key(&sni)
                || (sni.is_empty() && !routes.is_empty())
                || routes.contains_key("");
            if taken {
                errors.push(error(
                    &gateway.path,
                    &format!("{at}.port"),
                    format!(
                        "gateway {}: port {port} is already taken by another server; this one is left out",
                        w.node
                    ),
                ));
                continue;
            }
            routes.insert(sni, (service.clone(), gateway.path.clone(), at));
        }
    }
    let mut relays = Relays::default();
    for (port, routes) in ports {
        let mut by_sni = BTreeMap::new();
        for (sni, (service, path, at)) in routes {
            let Ok((namespace, name)) = parse_service(&service) else {
                continue;
            };
            let key = ServiceKey {
                namespace: namespace.to_string(),
                name: name.to_string(),
            };
            let Some(plan) = ServicePlan::known(plans, &key) else {
                errors.push(error(
                    &path,
                    &format!("{at}.service"),
                    format!("no service {service} is known here; this server is left out"),
                ));
                continue;
            };
            let cluster = format!("tcp|{}", key.id());
            if let Some(all) = plan.clusters.get(&key.cluster_name(None)) {
                relays.endpoints.insert(
                    cluster.clone(),
                    Endpoints {
                        site: String::new(),
                        cluster: cluster.clone(),
                        ..all.clone()
                    },
                );
            }
            relays.clusters.insert(
                cluster.clone(),
                Cluster {
                    passthrough: true,
                    ..plan.cluster(&cluster)
                },
            );
            by_sni.insert(sni, cluster);
        }
        if !by_sni.is_empty() {
            relays.listeners.push(SniListener {
                name: format!("gateway-{port}"),
                address: SocketAddr {
                    address: w.address.clone(),
                    port,
                },
                routes: by_sni,
            });
        }
    }
    relays
}

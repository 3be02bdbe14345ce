//! The east-west gateway: a route by SNI to the instances of every
//! service that runs in this cluster, and to the ingress gateways serving
//! each hostname other clusters' tier-1 gateways ask for, TLS passed
//! through unopened.

use std::collections::BTreeMap;

use super::EASTWEST;
use super::{plan::ServicePlan, resilience::single_host_cluster};
use crate::proxy::{Cluster, Endpoints, ProxyConfig, SniListener, SocketAddr};
use weft_agent::workload::Workload;

/// An east-west gateway's config: a route by SNI to the instances of
/// every service that runs here.
pub(super) fn eastwest_gateway(
    gateway: &Workload,
    plans: &[ServicePlan<'_>],
    exposed: &BTreeMap<String, Vec<&Workload>>,
) -> ProxyConfig {
    let mut proxy = ProxyConfig::default();
    let mut routes = BTreeMap::new();
    // SNI → the workloads behind it, as a passthrough cluster.
    let mut route = |sni: String, name: String, workloads: &[&Workload]| {
        let mut endpoints: Vec<SocketAddr> = workloads
            .iter()
            .map(|w| SocketAddr {
                address: w.address.clone(),
                port: w.port,
            })
            .collect();
        endpoints.sort();
        proxy.clusters.push(Cluster {
            passthrough: true,
            ..single_host_cluster(&name)
        });
        proxy.endpoints.push(Endpoints {
            site: String::new(),
            cluster: name.clone(),
            endpoints,
            remote: Vec::new(),
        });
        routes.insert(sni, name);
    };
    for (hostname, gateways) in exposed {
        // Tier-1 gateways send the request's host: a wildcard name here
        // takes it as Envoy matches names.
        route(hostname.clone(), format!("ew|ingress|{hostname}"), gateways);
    }
    for plan in plans.iter().filter(|p| !p.instances.is_empty()) {
        route(
            plan.key.sni(),
            format!("ew|{}.{}", plan.key.name, plan.key.namespace),
            &plan.instances,
        );
    }
    // Envoy takes no listener without a filter chain.
    if !routes.is_empty() {
        proxy.passthrough.push(SniListener {
            name: EASTWEST.into(),
            address: SocketAddr {
                address: gateway.address.clone(),
                port: gateway.port,
            },
            routes,
        });
    }
    proxy
}

//! Shared rate limits: the rules of Gateways' servers and of services'
//! TrafficSettings, as the proxies apply them (a descriptor per rule on
//! the virtual host, the rate limit filter on the listener, a cluster to
//! the cluster's `weft ratelimit` instances) and as the rate limit service
//! counts them (every rule of the cluster, its one resource).
//!
//! A rule's id is where it is written (the server or service, and its
//! name), not what it says: a changed limit keeps its counters, and every
//! replica of a gateway and every instance of a service count in the same
//! ones.

use weft_api::edge::ConfigError;
use weft_api::ratelimit::{DimensionOf, RateLimiting};
use weft_identity::{RATELIMIT_ACCOUNT, RESERVED_NAMESPACE, SpiffeId};

use super::parse::{Config, error};
use super::plan::ServicePlan;
use super::resilience::{millis, single_host_cluster};
use crate::proxy::{
    Cluster, DescriptorEntry, Endpoints, Mtls, RateLimitService, ServiceDimension, ServiceRule,
    SharedLimit, SocketAddr,
};
use weft_agent::workload::{Role, Workload};

/// The cluster of the rate limit service's instances, in every proxy
/// that asks it.
pub(super) const RATE_LIMIT_CLUSTER: &str = "addon|ratelimit";

/// Where a server's rules come from: `GATEWAY#SERVER`.
pub(super) fn gateway_source(gateway_path: &str, server: &str) -> String {
    format!("{gateway_path}#{server}")
}

/// Where a service's rules come from: `service/NAMESPACE/NAME`.
pub(super) fn service_source(plan: &ServicePlan<'_>) -> String {
    format!("service/{}/{}", plan.key.namespace, plan.key.name)
}

fn entry(dimension: &weft_api::ratelimit::Dimension) -> DescriptorEntry {
    let name = || dimension.name.clone().unwrap_or_default();
    match dimension.of {
        DimensionOf::ClientAddress => DescriptorEntry::ClientAddress,
        DimensionOf::Header => DescriptorEntry::Header(name()),
        DimensionOf::Claim => DescriptorEntry::Claim(name()),
        DimensionOf::Path => DescriptorEntry::Path,
        DimensionOf::Method => DescriptorEntry::Method,
    }
}

/// The descriptors a virtual host's requests send, one per rule.
pub(super) fn shared_limits(source: &str, limits: Option<&RateLimiting>) -> Vec<SharedLimit> {
    limits
        .map(|limits| {
            limits
                .rules
                .iter()
                .map(|rule| SharedLimit {
                    rule: format!("{source}/{}", rule.name),
                    dimensions: rule.dimensions.iter().map(entry).collect(),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The rules as the rate limit service counts them.
pub(super) fn service_rules(source: &str, limits: Option<&RateLimiting>) -> Vec<ServiceRule> {
    let Some(limits) = limits else {
        return Vec::new();
    };
    limits
        .rules
        .iter()
        .map(|rule| {
            let id = format!("{source}/{}", rule.name);
            ServiceRule {
                name: id.clone(),
                id,
                requests: rule.limit.requests,
                unit_seconds: rule.limit.unit.seconds() as u32,
                shadow: limits.shadow_mode,
                dimensions: rule
                    .dimensions
                    .iter()
                    .map(|d| ServiceDimension {
                        key: entry(d).key(),
                        value: d.value.clone(),
                        prefix: d.prefix.clone(),
                        strip_query: d.of == DimensionOf::Path,
                    })
                    .collect(),
            }
        })
        .collect()
}

/// How a listener whose virtual hosts have rules asks for decisions.
pub(super) fn rate_limit_service(limits: Option<&RateLimiting>) -> Option<RateLimitService> {
    let limits = limits.filter(|l| l.is_shared())?;
    Some(RateLimitService {
        cluster: RATE_LIMIT_CLUSTER.into(),
        timeout_ms: millis(limits.timeout()),
        fail_closed: limits.fail_closed,
    })
}

/// Every rule of the cluster: its Gateways' servers' and its services'.
pub(super) fn cluster_rules(config: &Config, plans: &[ServicePlan<'_>]) -> Vec<ServiceRule> {
    let mut rules: Vec<ServiceRule> = config
        .gateways
        .iter()
        .flat_map(|g| {
            g.spec.http.iter().flat_map(|server| {
                service_rules(
                    &gateway_source(&g.path, &server.name),
                    server.rate_limiting.as_ref(),
                )
            })
        })
        .chain(plans.iter().flat_map(|plan| {
            service_rules(&service_source(plan), plan.policy.rate_limiting.as_ref())
        }))
        .collect();
    rules.sort();
    rules.dedup();
    rules
}

/// The cluster (and its endpoints) of the rate limit service's
/// instances, reached with mutual TLS and only if they show the rate
/// limit service's identity.
pub(super) fn rate_limit_cluster(config: &Config, workloads: &[Workload]) -> (Cluster, Endpoints) {
    let cluster = Cluster {
        mtls: config.trust_domain.as_ref().map(|trust_domain| Mtls {
            trust_domain: trust_domain.clone(),
            peers: vec![
                SpiffeId::workload(trust_domain, RESERVED_NAMESPACE, RATELIMIT_ACCOUNT)
                    .map(|id| id.to_string())
                    .unwrap_or_default(),
            ],
            permissive: false,
            sni: None,
        }),
        grpc: true,
        ..single_host_cluster(RATE_LIMIT_CLUSTER)
    };
    let mut endpoints: Vec<SocketAddr> = workloads
        .iter()
        .filter(|w| w.role == Role::Ratelimit)
        .map(|w| SocketAddr {
            address: w.address.clone(),
            port: w.port,
        })
        .collect();
    endpoints.sort();
    endpoints.dedup();
    let endpoints = Endpoints {
        cluster: RATE_LIMIT_CLUSTER.into(),
        endpoints,
        remote: Vec::new(),
    };
    (cluster, endpoints)
}

/// Reported where rules are written but no rate limit service runs: the
/// proxies let every request through (or, with failClosed, none).
pub(super) fn no_service(path: &str, field: &str, cluster: &str) -> ConfigError {
    error(
        path,
        field,
        format!(
            "cluster {cluster} has no rate limit service connected to its edge, so these rules count nothing (requests pass, or with failClosed are refused): run `weft ratelimit` with a credential from `weft token create --cluster {cluster} --ratelimit`"
        ),
    )
}

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

use super::addon::RATE_LIMIT;
use super::gateway::server_id;
use super::parse::Config;
use super::plan::ServicePlan;
use super::resilience::millis;
use crate::proxy::{DescriptorEntry, RateLimitService, ServiceDimension, ServiceRule, SharedLimit};

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
        cluster: RATE_LIMIT.cluster.into(),
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
                    &server_id(&g.path, &server.name),
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

/// Reported where rules are written but no rate limit service runs.
pub(super) fn no_service(path: &str, field: &str, cluster: &str) -> ConfigError {
    RATE_LIMIT.missing(
        path,
        field,
        cluster,
        "these rules count nothing (requests pass, or with failClosed are refused)",
    )
}

//! Tier-1: a gateway route that sends to other clusters' ingress gateways
//! rather than to a service. The directory says which clusters' ingress
//! gateways serve the route's hostname (the same name, or a wildcard
//! covering it) and where their east-west gateways are; the tier-1
//! gateway reaches them with mutual TLS under its own identity, sending
//! each request's host as the server name, by which those east-west
//! gateways pick the ingress gateways.
//!
//! Weighted clusters share one upstream cluster, their gateways weighted
//! by the shares, so a retry can land in another cluster and a cluster
//! whose gateways fail is ejected and leaves its share to the others;
//! `anyCluster` ranks the clusters by locality instead, nearest first.

use weft_api::edge::ConfigError;
use weft_api::gateway::GatewayRoute;
use weft_api::traffic::LocalityPolicy;

use super::locality::{agreement, gateway_addresses};
use super::parse::{Config, error};
use super::resilience::{millis, parse_duration, retry, single_host_cluster};
use crate::directory::Directory;
use crate::proxy::{Cluster, Endpoints, Forward, Limits, Mtls, Outlier, RemoteEndpoints};

/// Each cluster's gateways share this much weight, split among them.
const SHARE_SCALE: u32 = 1_000;

/// The upstream of a tier-1 route for `hostname`, its endpoints, and the
/// forward to it; errors name `path` and `at`.
pub(super) fn tier1_route(
    config: &Config,
    directory: &Directory,
    hostname: &str,
    rule: &GatewayRoute,
    (path, at): (&str, &str),
    errors: &mut Vec<ConfigError>,
) -> (Cluster, Endpoints, Forward) {
    let weighted = !rule.any_cluster;
    let name = if weighted {
        let shares: Vec<String> = rule
            .clusters
            .iter()
            .map(|c| format!("{}={}", c.name, c.weight))
            .collect();
        format!("tier1|{hostname}|{}", shares.join(","))
    } else {
        format!("tier1|{hostname}")
    };
    let mut remote = Vec::new();
    let mut identities = std::collections::BTreeSet::new();
    // (cluster, weight or locality rank)
    let wanted: Vec<(&str, u32)> = if weighted {
        rule.clusters
            .iter()
            .map(|c| (c.name.as_str(), c.weight))
            .collect()
    } else {
        directory
            .clusters
            .keys()
            .map(|name| (name.as_str(), 0))
            .collect()
    };
    let order = LocalityPolicy::DEFAULT_PRIORITY;
    for (cluster, share) in wanted {
        let Some(remote_cluster) = directory.clusters.get(cluster) else {
            continue;
        };
        // The same name, or (for an exact one) a wildcard covering it.
        let ingress = remote_cluster.ingress.get(hostname).or_else(|| {
            remote_cluster
                .ingress
                .values()
                .find(|i| !hostname.starts_with("*.") && i.serves(hostname))
        });
        let (Some(site), Some(ingress)) = (&remote_cluster.site, ingress) else {
            continue;
        };
        let gateways = gateway_addresses(site);
        if gateways.is_empty() || ingress.healthy == 0 || (weighted && share == 0) {
            continue;
        }
        identities.extend(ingress.identities.iter().cloned());
        let (priority, weight) = if weighted {
            (0, (share * SHARE_SCALE / gateways.len() as u32).max(1))
        } else {
            let agreeing = agreement(&order, &config.locality, &site.locality);
            (
                (order.len() - agreeing) as u32,
                ingress.healthy.div_ceil(gateways.len() as u32),
            )
        };
        remote.push(RemoteEndpoints {
            cluster: cluster.to_string(),
            region: site.locality.region.clone(),
            zone: site.locality.zone.clone(),
            priority,
            weight,
            gateways,
        });
    }
    if !weighted {
        // Priorities are consecutive from 0, nearest first.
        let mut ranks: Vec<u32> = remote.iter().map(|r| r.priority).collect();
        ranks.sort_unstable();
        ranks.dedup();
        for r in &mut remote {
            r.priority = ranks.iter().position(|p| *p == r.priority).unwrap_or(0) as u32;
        }
        remote.sort_by(|a, b| (a.priority, &a.cluster).cmp(&(b.priority, &b.cluster)));
    }
    if remote.is_empty() {
        errors.push(error(
            path,
            at,
            format!(
                "no {} ingress gateway serves {hostname} now; the route answers 503 until one does",
                if weighted {
                    "listed cluster's"
                } else {
                    "other cluster's"
                }
            ),
        ));
    }
    let cluster = Cluster {
        // A gateway that fails is set aside for a while: its share goes
        // to the other clusters.
        outlier_detection: Some(Outlier {
            consecutive_5xx: 3,
            interval_ms: 1_000,
            base_ejection_time_ms: 10_000,
            max_ejection_percent: 100,
        }),
        // Each request's attempts bound its retries; no cluster-wide cap
        // (Envoy's default of 3 in flight) fails requests while a
        // cluster goes down under load.
        limits: Some(Limits {
            max_retries: Some(u32::MAX),
            ..Limits::default()
        }),
        mtls: config.trust_domain.as_ref().map(|trust_domain| Mtls {
            trust_domain: trust_domain.clone(),
            peers: identities
                .iter()
                .filter_map(|id| id.split_once('/'))
                .map(|(ns, sa)| format!("spiffe://{trust_domain}/ns/{ns}/sa/{sa}"))
                .collect(),
            permissive: false,
            sni: None,
        }),
        sni_from_host: true,
        ..single_host_cluster(&name)
    };
    let endpoints = Endpoints {
        site: String::new(),
        cluster: name.clone(),
        endpoints: Vec::new(),
        remote,
    };
    let forward = Forward {
        clusters: [(name, 100)].into(),
        timeout_ms: parse_duration(&rule.timeout).map(millis),
        retries: rule.retries.as_ref().map(|r| retry(r, !weighted)),
        hash_on: None,
        prefix_rewrite: rule.rewrite.as_ref().and_then(|r| r.path_prefix.clone()),
        authority_rewrite: rule.rewrite.as_ref().and_then(|r| r.authority.clone()),
    };
    (cluster, endpoints, forward)
}

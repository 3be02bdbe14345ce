//! Endpoint sets (EDS, or a cluster's own): localities by priority, each
//! with its endpoints' addresses and weights. Priority 0 takes every
//! request while it is healthy; the next only what it cannot take.

use std::net::SocketAddr;

use envoy_types::pb::envoy::config::core::v3::address::Address as XdsAddress;
use envoy_types::pb::envoy::config::core::v3::socket_address::{PortSpecifier, Protocol};
use envoy_types::pb::envoy::config::core::v3::{Address, HealthStatus, SocketAddress};
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint as XdsEndpoint, LbEndpoint, LocalityLbEndpoints,
};

use super::{Refusals, Refused};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Assignment {
    pub cluster: String,
    pub groups: Vec<LocalityGroup>,
}

/// One locality's endpoints at one priority.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalityGroup {
    pub priority: u32,
    pub locality: Locality,
    pub endpoints: Vec<Endpoint>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Locality {
    pub region: String,
    pub zone: String,
    pub sub_zone: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// An address, or (LOGICAL_DNS clusters) a host name and port.
    pub address: Target,
    /// The name it is known by (weft puts the cluster that serves it).
    pub hostname: String,
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Ip(SocketAddr),
    Host(String, u16),
}

impl TryFrom<&ClusterLoadAssignment> for Assignment {
    type Error = Refused;

    fn try_from(assignment: &ClusterLoadAssignment) -> Result<Assignment, Refused> {
        let ClusterLoadAssignment {
            cluster_name,
            endpoints,
            named_endpoints,
            policy,
        } = assignment;
        let mut r = Refusals::default();
        r.unset("named_endpoints", named_endpoints);
        r.unset("policy", policy);
        let groups = endpoints
            .iter()
            .enumerate()
            .map(|(i, group)| locality_group(group, &format!("endpoints[{i}]"), &mut r))
            .collect();
        r.finish(
            format!("ClusterLoadAssignment {cluster_name}"),
            Assignment {
                cluster: cluster_name.clone(),
                groups,
            },
        )
    }
}

fn locality_group(group: &LocalityLbEndpoints, here: &str, r: &mut Refusals) -> LocalityGroup {
    let supported = LocalityLbEndpoints {
        locality: group.locality.clone(),
        lb_endpoints: group.lb_endpoints.clone(),
        priority: group.priority,
        ..Default::default()
    };
    if *group != supported {
        r.refuse(here, "only locality, lb_endpoints and priority");
    }
    let locality = group.locality.clone().unwrap_or_default();
    LocalityGroup {
        priority: group.priority,
        locality: Locality {
            region: locality.region,
            zone: locality.zone,
            sub_zone: locality.sub_zone,
        },
        endpoints: group
            .lb_endpoints
            .iter()
            .enumerate()
            .filter_map(|(j, e)| endpoint(e, &format!("{here}.lb_endpoints[{j}]"), r))
            .collect(),
    }
}

fn endpoint(lb: &LbEndpoint, here: &str, r: &mut Refusals) -> Option<Endpoint> {
    let supported = LbEndpoint {
        host_identifier: lb.host_identifier.clone(),
        load_balancing_weight: lb.load_balancing_weight,
        health_status: lb.health_status,
        ..Default::default()
    };
    if *lb != supported {
        r.refuse(here, "only the endpoint, its weight and health status");
    }
    // Only what EDS says is healthy (or does not say) takes requests.
    let health = HealthStatus::try_from(lb.health_status).unwrap_or(HealthStatus::Unknown);
    if !matches!(health, HealthStatus::Unknown | HealthStatus::Healthy) {
        r.refuse(
            format!("{here}.health_status"),
            "only UNKNOWN and HEALTHY endpoints",
        );
    }
    let Some(HostIdentifier::Endpoint(endpoint)) = &lb.host_identifier else {
        r.refuse(format!("{here}.endpoint"), "missing");
        return None;
    };
    let only_address = XdsEndpoint {
        address: endpoint.address.clone(),
        hostname: endpoint.hostname.clone(),
        ..Default::default()
    };
    if *endpoint != only_address {
        r.refuse(format!("{here}.endpoint"), "only address and hostname");
    }
    let address = target(
        endpoint.address.as_ref(),
        &format!("{here}.endpoint.address"),
        r,
    )?;
    Some(Endpoint {
        address,
        hostname: endpoint.hostname.clone(),
        weight: lb.load_balancing_weight.map_or(1, |w| w.value),
    })
}

/// A TCP socket address: an IP and port, or a name to resolve.
pub(crate) fn target(address: Option<&Address>, here: &str, r: &mut Refusals) -> Option<Target> {
    let Some(Address {
        address: Some(XdsAddress::SocketAddress(socket)),
    }) = address
    else {
        r.refuse(here, "only a socket address");
        return None;
    };
    let supported = SocketAddress {
        address: socket.address.clone(),
        port_specifier: socket.port_specifier.clone(),
        protocol: Protocol::Tcp as i32,
        ..Default::default()
    };
    if *socket != supported {
        r.refuse(here, "only a TCP address and port value");
    }
    let Some(PortSpecifier::PortValue(port)) = socket.port_specifier else {
        r.refuse(here, "a port value is needed");
        return None;
    };
    let Ok(port) = u16::try_from(port) else {
        r.refuse(here, "the port is out of range");
        return None;
    };
    Some(match socket.address.parse() {
        Ok(ip) => Target::Ip(SocketAddr::new(ip, port)),
        Err(_) => Target::Host(socket.address.clone(), port),
    })
}

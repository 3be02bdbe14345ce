//! Endpoint sets → `ClusterLoadAssignment` (EDS): local instances at
//! priority 0, other clusters' gateways behind them.

use envoy_types::pb::envoy::config::core::v3::Locality as XdsLocality;
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint as XdsEndpoint, LbEndpoint, LocalityLbEndpoints,
};

use super::Endpoints;
use super::convert::{load_assignment, socket, uint};

impl Endpoints {
    pub(super) fn to_xds(&self) -> ClusterLoadAssignment {
        let Endpoints {
            cluster,
            endpoints,
            site,
            remote,
        } = self;
        let mut assignment = load_assignment(cluster, endpoints);
        for lb_endpoint in assignment
            .endpoints
            .iter_mut()
            .flat_map(|l| &mut l.lb_endpoints)
        {
            if let Some(HostIdentifier::Endpoint(endpoint)) = &mut lb_endpoint.host_identifier {
                endpoint.hostname = site.clone();
            }
        }
        assignment.endpoints.extend(remote.iter().map(|remote| {
            LocalityLbEndpoints {
                locality: Some(XdsLocality {
                    region: remote.region.clone(),
                    zone: remote.zone.clone(),
                    sub_zone: remote.cluster.clone(),
                }),
                lb_endpoints: remote
                    .gateways
                    .iter()
                    .map(|addr| LbEndpoint {
                        host_identifier: Some(HostIdentifier::Endpoint(XdsEndpoint {
                            address: Some(socket(addr)),
                            hostname: remote.cluster.clone(),
                            ..Default::default()
                        })),
                        load_balancing_weight: Some(uint(remote.weight.max(1))),
                        ..Default::default()
                    })
                    .collect(),
                priority: remote.priority,
                ..Default::default()
            }
        }));
        assignment
    }
}

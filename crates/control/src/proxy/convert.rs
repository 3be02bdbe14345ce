//! Small pieces every conversion into Envoy's types uses.

use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ApiVersion, ConfigSource, SocketAddress,
};
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint as XdsEndpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{
    RegexMatcher, StringMatcher, string_matcher::MatchPattern,
};
use envoy_types::pb::google::protobuf::{Duration as PbDuration, UInt32Value};

use super::SocketAddr;

pub(super) fn duration(ms: u64) -> PbDuration {
    PbDuration {
        seconds: (ms / 1000) as i64,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    }
}

pub(super) fn uint(value: u32) -> UInt32Value {
    UInt32Value { value }
}

pub(super) fn socket(addr: &SocketAddr) -> Address {
    Address {
        address: Some(AddressKind::SocketAddress(SocketAddress {
            address: addr.address.clone(),
            port_specifier: Some(PortSpecifier::PortValue(u32::from(addr.port))),
            ..Default::default()
        })),
    }
}

pub(super) fn ads() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        ..Default::default()
    }
}

pub(super) fn load_assignment(cluster: &str, endpoints: &[SocketAddr]) -> ClusterLoadAssignment {
    let lb_endpoints = endpoints
        .iter()
        .map(|addr| LbEndpoint {
            host_identifier: Some(HostIdentifier::Endpoint(XdsEndpoint {
                address: Some(socket(addr)),
                ..Default::default()
            })),
            ..Default::default()
        })
        .collect();
    ClusterLoadAssignment {
        cluster_name: cluster.to_string(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints,
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// An RE2 expression the whole value must match.
pub(super) fn regex(expression: &str) -> RegexMatcher {
    RegexMatcher {
        regex: expression.to_string(),
        ..Default::default()
    }
}

pub(super) fn string_matcher(pattern: MatchPattern) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(pattern),
        ignore_case: false,
    }
}

//! One proxy's configuration in weft's own terms: the xDS resources weft
//! generates, with only the fields weft uses. Translation produces these;
//! they print as YAML (golden files, `weft x translate`) and convert into
//! Envoy's wire types at the boundary ([`ProxyConfig::to_snapshot`]).

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::cluster::v3::circuit_breakers::Thresholds;
use envoy_types::pb::envoy::config::cluster::v3::circuit_breakers::thresholds::RetryBudget as XdsRetryBudget;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, EdsClusterConfig, LbPolicy as XdsLbPolicy,
};
use envoy_types::pb::envoy::config::cluster::v3::{
    CircuitBreakers, Cluster as XdsCluster, OutlierDetection as XdsOutlierDetection,
};
use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ApiVersion, ConfigSource, Http1ProtocolOptions,
    Http2ProtocolOptions, HttpProtocolOptions as CommonHttpOptions, SocketAddress,
};
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint as XdsEndpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
use envoy_types::pb::envoy::config::listener::v3::listener_filter::ConfigType as ListenerFilterConfig;
use envoy_types::pb::envoy::config::listener::v3::{
    Filter, FilterChain, FilterChainMatch, Listener as XdsListener, ListenerFilter,
};
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
use envoy_types::pb::envoy::config::route::v3::route::Action as XdsAction;
use envoy_types::pb::envoy::config::route::v3::route_action::hash_policy::{
    Cookie, Header, PolicySpecifier,
};
use envoy_types::pb::envoy::config::route::v3::route_action::{ClusterSpecifier, HashPolicy};
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::config::route::v3::weighted_cluster::{ClusterWeight, RandomValueSpecifier};
use envoy_types::pb::envoy::config::route::v3::{
    DirectResponseAction, HeaderMatcher, Route as XdsRoute, RouteAction, RouteConfiguration,
    RouteMatch as XdsRouteMatch, VirtualHost as XdsVirtualHost, WeightedCluster,
    retry_policy::RetryHostPredicate, RetryPolicy,
};
use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source::Specifier as DataSpecifier};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::{
    CodecType, RouteSpecifier,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType as HttpFilterConfig;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds,
};
use envoy_types::pb::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::{
    UpstreamProtocolOptions, UseDownstreamHttpConfig,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher::MatchPattern};
use envoy_types::pb::envoy::r#type::v3::Percent;
use envoy_types::pb::google::protobuf::{BoolValue, Duration as PbDuration, UInt32Value};
use envoy_types::util::pack_any;
use envoy_types::pb::envoy::config::core::v3::api_config_source::ApiType;
use envoy_types::pb::envoy::config::core::v3::grpc_service::{EnvoyGrpc, TargetSpecifier};
use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType as TransportSocketConfig;
use envoy_types::pb::envoy::config::core::v3::{ApiConfigSource, GrpcService, TransportSocket};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::{
    CombinedCertificateValidationContext, ValidationContextType,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::subject_alt_name_matcher::SanType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, SdsSecretConfig,
    SubjectAltNameMatcher, UpstreamTlsContext,
};
use envoy_types::pb::envoy::config::accesslog::v3::AccessLog;
use envoy_types::pb::envoy::config::accesslog::v3::access_log::ConfigType as AccessLogConfig;
use envoy_types::pb::envoy::config::core::v3::SubstitutionFormatString;
use envoy_types::pb::envoy::config::core::v3::substitution_format_string::Format as SubstitutionFormat;
use envoy_types::pb::envoy::config::rbac::v3::permission::{Rule as PermissionRule, Set as PermissionSet};
use envoy_types::pb::envoy::config::rbac::v3::principal::{Authenticated, Identifier};
use envoy_types::pb::envoy::config::rbac::v3::rbac::Action as RbacAction;
use envoy_types::pb::envoy::config::rbac::v3::{Permission, Policy, Principal, Rbac};
use envoy_types::pb::envoy::extensions::access_loggers::stream::v3::StderrAccessLog;
use envoy_types::pb::envoy::extensions::access_loggers::stream::v3::stderr_access_log::AccessLogFormat as StderrFormat;
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::{
    Rbac as RbacFilter, RbacPerRoute,
};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::envoy::r#type::matcher::v3::PathMatcher;
use envoy_types::pb::envoy::r#type::matcher::v3::path_matcher::Rule as PathRule;
use envoy_types::pb::envoy::config::common::mutation_rules::v3::HeaderMutation as HeaderMutationRule;
use envoy_types::pb::envoy::config::common::mutation_rules::v3::header_mutation::Action as HeaderMutationAction;
use envoy_types::pb::envoy::config::core::v3::HttpUri;
use envoy_types::pb::envoy::config::core::v3::http_uri::HttpUpstreamType;
use envoy_types::pb::envoy::config::rbac::v3::{MetadataSource, SourcedMetadata};
use envoy_types::pb::envoy::extensions::filters::http::header_mutation::v3::{
    HeaderMutation as HeaderMutationFilter, Mutations,
};
use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::jwt_provider::JwksSourceSpecifier as JwksSource;
use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::jwt_requirement::RequiresType;
use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::requirement_rule::RequirementType;
use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::{
    JwksAsyncFetch, JwtAuthentication, JwtClaimToHeader, JwtProvider as XdsJwtProvider,
    JwtRequirement, JwtRequirementOrList, RemoteJwks, RequirementRule,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::certificate_validation_context::SystemRootCerts;
use envoy_types::pb::envoy::r#type::matcher::v3::list_matcher::MatchPattern as ListPattern;
use envoy_types::pb::envoy::r#type::matcher::v3::metadata_matcher::PathSegment as MetadataPath;
use envoy_types::pb::envoy::r#type::matcher::v3::metadata_matcher::path_segment::Segment as MetadataSegment;
use envoy_types::pb::envoy::r#type::matcher::v3::value_matcher::MatchPattern as ValuePattern;
use envoy_types::pb::envoy::r#type::matcher::v3::{
    ListMatcher, MetadataMatcher, OrMatcher, ValueMatcher,
};
use envoy_types::pb::envoy::config::accesslog::v3::access_log_filter::FilterSpecifier as LogFilter;
use envoy_types::pb::envoy::config::accesslog::v3::{
    AccessLogFilter, MetadataFilter as LogMetadataFilter,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    LocalReplyConfig, ResponseMapper,
};
use envoy_types::pb::envoy::config::core::v3::Locality as XdsLocality;
use envoy_types::pb::envoy::config::route::v3::retry_policy::{
    RetryPriority, retry_priority::ConfigType as RetryPriorityConfig,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::{
    ForwardClientCertDetails, SetCurrentClientCertDetails,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::ClusterSpecifier as TcpClusterSpecifier;
use envoy_types::pb::envoy::extensions::retry::priority::previous_priorities::v3::PreviousPrioritiesConfig;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

use weft_xds::{Inconsistent, Layer, LayerBuilder, Snapshot};

/// Where a proxy gets its certificate and trust bundle: the SDS server of
/// its own `weft sidecar`, over a Unix socket, by these secret names.
pub mod sds {
    /// The bootstrap's static cluster for the sidecar's SDS socket.
    pub const CLUSTER: &str = "weft-sds";
    /// The workload's certificate chain and key.
    pub const CERTIFICATE: &str = "default";
    /// The roots of the trust domain.
    pub const TRUST_BUNDLE: &str = "ROOTCA";
}

/// Everything one proxy is sent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyConfig {
    pub clusters: Vec<Cluster>,
    pub endpoints: Vec<Endpoints>,
    pub listeners: Vec<Listener>,
    pub routes: Vec<RouteTable>,
    /// TLS passed through by SNI (an east-west gateway).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub passthrough: Vec<SniListener>,
}

/// A listener that sends each TLS connection, unopened, to the cluster its
/// SNI names: the workload's own mTLS goes end to end, so the callee sees
/// the caller's identity. A name it does not know gets no connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SniListener {
    pub name: String,
    pub address: SocketAddr,
    /// SNI → cluster.
    pub routes: BTreeMap<String, String>,
}

/// An upstream: a service (or a subset of it) or the local app.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cluster {
    pub name: String,
    /// Endpoints come over EDS; none: the fixed `local` address (the app).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<SocketAddr>,
    pub connect_timeout_ms: u64,
    pub lb_policy: LbPolicy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Limits>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<Outlier>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests_per_connection: Option<u32>,
    /// Mutual TLS to the upstream; none: plaintext (the local app).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<Mtls>,
    /// A host outside the mesh, by DNS name (a token issuer's keys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalHost>,
    /// Bytes are relayed as they come (TCP), not HTTP: a gateway's.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub passthrough: bool,
}

/// A host outside the mesh. With `tls`, its certificate must chain to
/// the system's roots and name `host`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExternalHost {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

/// Mutual TLS with the workload certificate and trust bundle the proxy
/// gets from its sidecar over SDS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Mtls {
    pub trust_domain: String,
    /// The SPIFFE IDs the peer may present; empty: any of the trust domain.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<String>,
    /// On a listener: also take plaintext connections (a migration).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub permissive: bool,
    /// Upstream: the server name to send, by which another cluster's
    /// east-west gateway picks the service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LbPolicy {
    RoundRobin,
    LeastRequest,
    RingHash,
    Random,
}

/// Circuit-breaker thresholds; over them a call fails fast with 503.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pending_requests: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_budget_percent: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_budget_min_concurrency: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Outlier {
    pub consecutive_5xx: u32,
    pub interval_ms: u64,
    pub base_ejection_time_ms: u64,
    pub max_ejection_percent: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SocketAddr {
    pub address: String,
    pub port: u16,
}

/// The instances behind one EDS cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoints {
    pub cluster: String,
    /// This cluster's instances, first in line (priority 0).
    pub endpoints: Vec<SocketAddr>,
    /// Other clusters' gateways, each at its priority behind them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remote: Vec<RemoteEndpoints>,
}

/// Another cluster's east-west gateways as endpoints of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RemoteEndpoints {
    /// The other cluster's name.
    pub cluster: String,
    pub region: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub zone: String,
    /// 0 is tried first; the nearer the cluster, the lower.
    pub priority: u32,
    /// Each gateway's load-balancing weight: the cluster's healthy
    /// instances shared among its gateways.
    pub weight: u32,
    pub gateways: Vec<SocketAddr>,
}

/// An HTTP listener whose routes come over RDS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Listener {
    pub name: String,
    pub address: SocketAddr,
    pub route_table: String,
    /// Mutual TLS required of every connection; none: plaintext (the
    /// outbound listener, on loopback).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<Mtls>,
    /// Whether each request is authorized (by the rules of its route
    /// table's virtual host; with none there, nothing gets through) and
    /// logged.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub authorize: bool,
    /// End-user tokens checked before authorization.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtCheck>,
}

/// End-user JWT checks: a token present is checked on every request
/// (401 if invalid); `required_for` requests must carry one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JwtCheck {
    pub providers: Vec<JwtProvider>,
    /// Empty: every request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required_for: Vec<RouteMatch>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JwtProvider {
    pub name: String,
    pub issuer: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    pub jwks: Jwks,
    pub clock_skew_s: u32,
    /// Claim (`a.b` for nested) → request header for the app.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub forward_claims: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub forward_token: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum Jwks {
    Inline(String),
    /// Fetched through `cluster` and kept `refresh_ms`.
    Remote {
        uri: String,
        cluster: String,
        refresh_ms: u64,
    },
}

/// Who may call. A request matching a deny rule is refused; then only
/// what an allow rule matches gets through: with no allow rule, nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Authorization {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<AccessRule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<AccessRule>,
}

/// Requests from any of `callers` that match any of `requests`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AccessRule {
    /// Where the rule comes from (setting path and rule); a refusal names it.
    pub name: String,
    /// Caller SPIFFE IDs; empty: any caller with a certificate of the
    /// trust domain.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub callers: Vec<CallerId>,
    /// Empty: every request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requests: Vec<RouteMatch>,
    /// End-user claims the request's token must carry: each claim (`a.b`
    /// for nested) one of its values, or a list containing one.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub claims: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum CallerId {
    Exact(String),
    Prefix(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteTable {
    pub name: String,
    pub virtual_hosts: Vec<VirtualHost>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VirtualHost {
    pub name: String,
    pub domains: Vec<String>,
    pub routes: Vec<Route>,
    /// Who may call, on a listener that authorizes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization: Option<Authorization>,
}

/// First matching route wins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    #[serde(rename = "match")]
    pub matcher: RouteMatch,
    #[serde(flatten)]
    pub action: Action,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// "/" when neither path nor prefix is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderCondition>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeaderCondition {
    pub name: String,
    #[serde(flatten)]
    pub test: HeaderTest,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum HeaderTest {
    Exact(String),
    Prefix(String),
    Present(bool),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Action {
    Forward(Forward),
    DirectResponse { status: u32, body: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Forward {
    /// Cluster names and their weights (shares of 100).
    pub clusters: BTreeMap<String, u32>,
    /// Whole-request timeout; 0 disables it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<Retry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_on: Option<HashOn>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Retry {
    pub retry_on: String,
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout_ms: Option<u64>,
    /// Each retry goes to the next priority (the next-nearest cluster)
    /// rather than back to the one that failed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub next_priority: bool,
}

/// What consistent hashing keys on (sticky sessions).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum HashOn {
    Header(String),
    Cookie {
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ttl_ms: Option<u64>,
    },
}

fn duration(ms: u64) -> PbDuration {
    PbDuration {
        seconds: (ms / 1000) as i64,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    }
}

fn uint(value: u32) -> UInt32Value {
    UInt32Value { value }
}

fn socket(addr: &SocketAddr) -> Address {
    Address {
        address: Some(AddressKind::SocketAddress(SocketAddress {
            address: addr.address.clone(),
            port_specifier: Some(PortSpecifier::PortValue(u32::from(addr.port))),
            ..Default::default()
        })),
    }
}

fn ads() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        ..Default::default()
    }
}

fn load_assignment(cluster: &str, endpoints: &[SocketAddr]) -> ClusterLoadAssignment {
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

impl Endpoints {
    fn to_xds(&self) -> ClusterLoadAssignment {
        let mut assignment = load_assignment(&self.cluster, &self.endpoints);
        assignment
            .endpoints
            .extend(self.remote.iter().map(|remote| {
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

impl Cluster {
    fn to_xds(&self) -> XdsCluster {
        // Upstream calls speak what the caller spoke: HTTP/1.1 stays HTTP/1.1,
        // h2c and gRPC stay HTTP/2.
        let protocol = HttpProtocolOptions {
            common_http_protocol_options: Some(CommonHttpOptions {
                idle_timeout: self.idle_timeout_ms.map(duration),
                max_requests_per_connection: self.max_requests_per_connection.map(uint),
                ..Default::default()
            }),
            upstream_protocol_options: Some(UpstreamProtocolOptions::UseDownstreamProtocolConfig(
                UseDownstreamHttpConfig {
                    http_protocol_options: Some(Http1ProtocolOptions::default()),
                    http2_protocol_options: Some(Http2ProtocolOptions::default()),
                    ..Default::default()
                },
            )),
            ..Default::default()
        };
        let (discovery, eds_cluster_config, load_assignment) = match (&self.local, &self.external) {
            (Some(addr), _) => (
                DiscoveryType::Static,
                None,
                Some(load_assignment(&self.name, std::slice::from_ref(addr))),
            ),
            (None, Some(external)) => (
                DiscoveryType::LogicalDns,
                None,
                Some(load_assignment(
                    &self.name,
                    &[SocketAddr {
                        address: external.host.clone(),
                        port: external.port,
                    }],
                )),
            ),
            (None, None) => (
                DiscoveryType::Eds,
                Some(EdsClusterConfig {
                    eds_config: Some(ads()),
                    service_name: String::new(),
                }),
                None,
            ),
        };
        let circuit_breakers = self.limits.as_ref().map(|l| CircuitBreakers {
            thresholds: vec![Thresholds {
                max_connections: l.max_connections.map(uint),
                max_pending_requests: l.max_pending_requests.map(uint),
                max_requests: l.max_requests.map(uint),
                max_retries: l.max_retries.map(uint),
                retry_budget: l.retry_budget_percent.map(|percent| XdsRetryBudget {
                    budget_percent: Some(Percent { value: percent }),
                    min_retry_concurrency: l.retry_budget_min_concurrency.map(uint),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        });
        let outlier_detection = self
            .outlier_detection
            .as_ref()
            .map(|o| XdsOutlierDetection {
                consecutive_5xx: Some(uint(o.consecutive_5xx)),
                interval: Some(duration(o.interval_ms)),
                base_ejection_time: Some(duration(o.base_ejection_time_ms)),
                max_ejection_percent: Some(uint(o.max_ejection_percent)),
                ..Default::default()
            });
        let lb_policy = match self.lb_policy {
            LbPolicy::RoundRobin => XdsLbPolicy::RoundRobin,
            LbPolicy::LeastRequest => XdsLbPolicy::LeastRequest,
            LbPolicy::RingHash => XdsLbPolicy::RingHash,
            LbPolicy::Random => XdsLbPolicy::Random,
        };
        XdsCluster {
            name: self.name.clone(),
            cluster_discovery_type: Some(ClusterDiscoveryType::Type(discovery as i32)),
            eds_cluster_config,
            load_assignment,
            connect_timeout: Some(duration(self.connect_timeout_ms)),
            lb_policy: lb_policy as i32,
            circuit_breakers,
            outlier_detection,
            // Outside hosts speak plain HTTP/1.1 to Envoy's own fetches;
            // a passthrough cluster relays bytes.
            typed_extension_protocol_options: if self.external.is_some() || self.passthrough {
                Default::default()
            } else {
                [(
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".to_string(),
                    pack_any(protocol),
                )]
                .into()
            },
            transport_socket: match &self.external {
                Some(external) => external.tls.then(|| external.upstream_tls()),
                None => self.mtls.as_ref().map(Mtls::upstream),
            },
            ..Default::default()
        }
    }
}

fn string_matcher(pattern: MatchPattern) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(pattern),
        ignore_case: false,
    }
}

impl ExternalHost {
    fn upstream_tls(&self) -> TransportSocket {
        TransportSocket {
            name: "envoy.transport_sockets.tls".into(),
            config_type: Some(TransportSocketConfig::TypedConfig(pack_any(
                UpstreamTlsContext {
                    sni: self.host.clone(),
                    common_tls_context: Some(CommonTlsContext {
                        validation_context_type: Some(ValidationContextType::ValidationContext(
                            CertificateValidationContext {
                                system_root_certs: Some(SystemRootCerts {}),
                                match_typed_subject_alt_names: vec![SubjectAltNameMatcher {
                                    san_type: SanType::Dns as i32,
                                    matcher: Some(string_matcher(MatchPattern::Exact(
                                        self.host.clone(),
                                    ))),
                                    ..Default::default()
                                }],
                                ..Default::default()
                            },
                        )),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ))),
        }
    }
}

/// Where the JWT filter leaves a valid token's claims for authorization,
/// and why it refused one.
const JWT_FILTER: &str = "envoy.filters.http.jwt_authn";
const JWT_PAYLOAD: &str = "payload";
const JWT_FAILURE: &str = "failure";

/// A claim (`a.b` for nested) of the request's valid token is one of
/// `values`, or is a list holding one of them.
fn claim_permission(claim: &str, values: &[String]) -> Permission {
    let value_matchers = values
        .iter()
        .flat_map(|value| {
            let exact = ValueMatcher {
                match_pattern: Some(ValuePattern::StringMatch(string_matcher(
                    MatchPattern::Exact(value.clone()),
                ))),
            };
            let in_list = ValueMatcher {
                match_pattern: Some(ValuePattern::ListMatch(Box::new(ListMatcher {
                    match_pattern: Some(ListPattern::OneOf(Box::new(exact.clone()))),
                }))),
            };
            [exact, in_list]
        })
        .collect();
    Permission {
        rule: Some(PermissionRule::SourcedMetadata(SourcedMetadata {
            metadata_matcher: Some(MetadataMatcher {
                filter: JWT_FILTER.into(),
                path: std::iter::once(JWT_PAYLOAD)
                    .chain(claim.split('.'))
                    .map(|key| MetadataPath {
                        segment: Some(MetadataSegment::Key(key.into())),
                    })
                    .collect(),
                value: Some(ValueMatcher {
                    match_pattern: Some(ValuePattern::OrMatch(OrMatcher { value_matchers })),
                }),
                invert: false,
            }),
            metadata_source: MetadataSource::Dynamic as i32,
        })),
    }
}

impl AccessRule {
    fn policy(&self) -> Policy {
        let principals = if self.callers.is_empty() {
            vec![Principal {
                identifier: Some(Identifier::Any(true)),
            }]
        } else {
            self.callers
                .iter()
                .map(|caller| {
                    let pattern = match caller {
                        CallerId::Exact(id) => MatchPattern::Exact(id.clone()),
                        CallerId::Prefix(prefix) => MatchPattern::Prefix(prefix.clone()),
                    };
                    Principal {
                        identifier: Some(Identifier::Authenticated(Authenticated {
                            principal_name: Some(string_matcher(pattern)),
                        })),
                    }
                })
                .collect()
        };
        let permissions = if self.requests.is_empty() {
            vec![Permission {
                rule: Some(PermissionRule::Any(true)),
            }]
        } else {
            self.requests
                .iter()
                .map(|request| {
                    let path = request
                        .path
                        .clone()
                        .map(MatchPattern::Exact)
                        .or_else(|| request.prefix.clone().map(MatchPattern::Prefix))
                        .map(|pattern| Permission {
                            rule: Some(PermissionRule::UrlPath(PathMatcher {
                                rule: Some(PathRule::Path(string_matcher(pattern))),
                            })),
                        });
                    let headers = request.headers.iter().map(|h| Permission {
                        rule: Some(PermissionRule::Header(h.to_xds())),
                    });
                    let rules: Vec<Permission> = path.into_iter().chain(headers).collect();
                    Permission {
                        rule: Some(PermissionRule::AndRules(PermissionSet { rules })),
                    }
                })
                .collect()
        };
        // Claims are conditions on the request (its token) as a whole.
        let permissions = if self.claims.is_empty() {
            permissions
        } else {
            permissions
                .into_iter()
                .map(|request| Permission {
                    rule: Some(PermissionRule::AndRules(PermissionSet {
                        rules: std::iter::once(request)
                            .chain(
                                self.claims
                                    .iter()
                                    .map(|(claim, values)| claim_permission(claim, values)),
                            )
                            .collect(),
                    })),
                })
                .collect()
        };
        Policy {
            permissions,
            principals,
            ..Default::default()
        }
    }
}

/// The RBAC filters' names: the route table's virtual host gives each its
/// rules. Rules live in the route table (RDS) rather than the listener so
/// that a change applies to the next request, also on open connections (a
/// new listener would leave them on the old rules until they drain).
const DENY_FILTER: &str = "weft.authorization.deny";
const ALLOW_FILTER: &str = "weft.authorization.allow";

fn rbac(action: RbacAction, rules: &[AccessRule]) -> Rbac {
    Rbac {
        action: action as i32,
        policies: rules.iter().map(|r| (r.name.clone(), r.policy())).collect(),
        ..Default::default()
    }
}

/// Deny rules first, then allow rules. On their own (no virtual host
/// rules), the first refuses nothing and the second everything.
fn authorization_filters() -> Vec<HttpFilter> {
    [
        (DENY_FILTER, RbacAction::Deny),
        (ALLOW_FILTER, RbacAction::Allow),
    ]
    .into_iter()
    .map(|(name, action)| HttpFilter {
        name: name.into(),
        config_type: Some(HttpFilterConfig::TypedConfig(pack_any(RbacFilter {
            rules: Some(rbac(action, &[])),
            ..Default::default()
        }))),
        ..Default::default()
    })
    .collect()
}

impl Authorization {
    /// The virtual host's rules for the two RBAC filters.
    fn per_filter_config(&self) -> std::collections::HashMap<String, Any> {
        [
            (DENY_FILTER, rbac(RbacAction::Deny, &self.deny)),
            (ALLOW_FILTER, rbac(RbacAction::Allow, &self.allow)),
        ]
        .into_iter()
        .map(|(name, rules)| {
            (
                name.to_string(),
                pack_any(RbacPerRoute {
                    rbac: Some(RbacFilter {
                        rules: Some(rules),
                        ..Default::default()
                    }),
                }),
            )
        })
        .collect()
    }
}

impl JwtProvider {
    fn to_xds(&self) -> XdsJwtProvider {
        let jwks = match &self.jwks {
            Jwks::Inline(doc) => JwksSource::LocalJwks(DataSource {
                specifier: Some(DataSpecifier::InlineString(doc.clone())),
                ..Default::default()
            }),
            Jwks::Remote {
                uri,
                cluster,
                refresh_ms,
            } => JwksSource::RemoteJwks(RemoteJwks {
                http_uri: Some(HttpUri {
                    uri: uri.clone(),
                    timeout: Some(duration(5_000)),
                    http_upstream_type: Some(HttpUpstreamType::Cluster(cluster.clone())),
                }),
                cache_duration: Some(duration(*refresh_ms)),
                // Fetched once per proxy before the listener takes
                // requests (rather than by each worker, holding requests),
                // and again when the cache expires; a failed fetch is
                // retried after a second rather than after `refresh_ms`.
                async_fetch: Some(JwksAsyncFetch {
                    fast_listener: false,
                    failed_refetch_duration: Some(duration(1_000)),
                }),
                ..Default::default()
            }),
        };
        XdsJwtProvider {
            issuer: self.issuer.clone(),
            audiences: self.audiences.clone(),
            forward: self.forward_token,
            payload_in_metadata: JWT_PAYLOAD.into(),
            failed_status_in_metadata: JWT_FAILURE.into(),
            clock_skew_seconds: self.clock_skew_s,
            claim_to_headers: self
                .forward_claims
                .iter()
                .map(|(claim, header)| JwtClaimToHeader {
                    header_name: header.clone(),
                    claim_name: claim.clone(),
                    ..Default::default()
                })
                .collect(),
            jwks_source_specifier: Some(jwks),
            ..Default::default()
        }
    }
}

impl JwtCheck {
    /// Any provider's valid token will do.
    fn requirement(&self, allow_missing: bool) -> JwtRequirement {
        let mut any: Vec<JwtRequirement> = self
            .providers
            .iter()
            .map(|p| JwtRequirement {
                requires_type: Some(RequiresType::ProviderName(p.name.clone())),
            })
            .collect();
        if allow_missing {
            any.push(JwtRequirement {
                requires_type: Some(RequiresType::AllowMissing(Default::default())),
            });
        }
        // One requirement stands alone; Envoy wants two or more in a list.
        // (None at all only comes of an invalid setting: Envoy refuses it.)
        if any.len() == 1 {
            return any.remove(0);
        }
        JwtRequirement {
            requires_type: Some(RequiresType::RequiresAny(JwtRequirementOrList {
                requirements: any,
            })),
        }
    }

    /// The headers claims are forwarded in: removed from requests before
    /// the check, so only a valid token can set them.
    fn claim_headers(&self) -> BTreeSet<&str> {
        self.providers
            .iter()
            .flat_map(|p| p.forward_claims.values().map(String::as_str))
            .collect()
    }

    /// Envoy answers a token for another audience with 403; for the
    /// caller it is as invalid as any other (RFC 6750): 401.
    fn local_replies() -> LocalReplyConfig {
        LocalReplyConfig {
            mappers: vec![ResponseMapper {
                filter: Some(AccessLogFilter {
                    filter_specifier: Some(LogFilter::MetadataFilter(LogMetadataFilter {
                        matcher: Some(MetadataMatcher {
                            filter: JWT_FILTER.into(),
                            path: vec![MetadataPath {
                                segment: Some(MetadataSegment::Key(JWT_FAILURE.into())),
                            }],
                            value: Some(ValueMatcher {
                                match_pattern: Some(ValuePattern::PresentMatch(true)),
                            }),
                            invert: false,
                        }),
                        match_if_key_not_found: Some(BoolValue { value: false }),
                    })),
                }),
                status_code: Some(uint(401)),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn filters(&self) -> Vec<HttpFilter> {
        let everything = RouteMatch::default();
        let rules = if self.required_for.is_empty() {
            vec![(&everything, self.requirement(false))]
        } else {
            self.required_for
                .iter()
                .map(|m| (m, self.requirement(false)))
                .chain([(&everything, self.requirement(true))])
                .collect()
        };
        let jwt = JwtAuthentication {
            providers: self
                .providers
                .iter()
                .map(|p| (p.name.clone(), p.to_xds()))
                .collect(),
            rules: rules
                .into_iter()
                .map(|(m, requires)| RequirementRule {
                    r#match: Some(m.to_xds()),
                    requirement_type: Some(RequirementType::Requires(requires)),
                })
                .collect(),
            ..Default::default()
        };
        let strip = self.claim_headers();
        let strip_filter = (!strip.is_empty()).then(|| HttpFilter {
            name: "weft.jwt.strip-claim-headers".into(),
            config_type: Some(HttpFilterConfig::TypedConfig(pack_any(
                HeaderMutationFilter {
                    mutations: Some(Mutations {
                        request_mutations: strip
                            .into_iter()
                            .map(|header| HeaderMutationRule {
                                action: Some(HeaderMutationAction::Remove(header.into())),
                            })
                            .collect(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ))),
            ..Default::default()
        });
        strip_filter
            .into_iter()
            .chain([HttpFilter {
                name: JWT_FILTER.into(),
                config_type: Some(HttpFilterConfig::TypedConfig(pack_any(jwt))),
                ..Default::default()
            }])
            .collect()
    }
}

/// One line per request on Envoy's stderr (the sidecar's log).
fn access_log() -> AccessLog {
    let format = "[weft] inbound %REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %RESPONSE_CODE% %RESPONSE_CODE_DETAILS% caller=%DOWNSTREAM_PEER_URI_SAN%\n";
    AccessLog {
        name: "envoy.access_loggers.stderr".into(),
        config_type: Some(AccessLogConfig::TypedConfig(pack_any(StderrAccessLog {
            access_log_format: Some(StderrFormat::LogFormat(SubstitutionFormatString {
                format: Some(SubstitutionFormat::TextFormatSource(DataSource {
                    specifier: Some(DataSpecifier::InlineString(format.into())),
                    ..Default::default()
                })),
                ..Default::default()
            })),
        }))),
        ..Default::default()
    }
}

/// A secret from the sidecar's SDS server.
fn sds_secret(name: &str) -> SdsSecretConfig {
    SdsSecretConfig {
        name: name.to_string(),
        sds_config: Some(ConfigSource {
            resource_api_version: ApiVersion::V3 as i32,
            config_source_specifier: Some(ConfigSourceSpecifier::ApiConfigSource(
                ApiConfigSource {
                    api_type: ApiType::Grpc as i32,
                    transport_api_version: ApiVersion::V3 as i32,
                    grpc_services: vec![GrpcService {
                        target_specifier: Some(TargetSpecifier::EnvoyGrpc(EnvoyGrpc {
                            cluster_name: sds::CLUSTER.into(),
                            ..Default::default()
                        })),
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            )),
            ..Default::default()
        }),
    }
}

impl Mtls {
    fn common(&self) -> CommonTlsContext {
        let uri = |pattern: MatchPattern| SubjectAltNameMatcher {
            san_type: SanType::Uri as i32,
            matcher: Some(StringMatcher {
                match_pattern: Some(pattern),
                ignore_case: false,
            }),
            ..Default::default()
        };
        let peers = if self.peers.is_empty() {
            vec![uri(MatchPattern::Prefix(format!(
                "spiffe://{}/",
                self.trust_domain
            )))]
        } else {
            self.peers
                .iter()
                .map(|p| uri(MatchPattern::Exact(p.clone())))
                .collect()
        };
        CommonTlsContext {
            tls_certificate_sds_secret_configs: vec![sds_secret(sds::CERTIFICATE)],
            validation_context_type: Some(ValidationContextType::CombinedValidationContext(
                CombinedCertificateValidationContext {
                    default_validation_context: Some(CertificateValidationContext {
                        match_typed_subject_alt_names: peers,
                        ..Default::default()
                    }),
                    validation_context_sds_secret_config: Some(sds_secret(sds::TRUST_BUNDLE)),
                    ..Default::default()
                },
            )),
            ..Default::default()
        }
    }

    fn upstream(&self) -> TransportSocket {
        TransportSocket {
            name: "envoy.transport_sockets.tls".into(),
            config_type: Some(TransportSocketConfig::TypedConfig(pack_any(
                UpstreamTlsContext {
                    common_tls_context: Some(self.common()),
                    sni: self.sni.clone().unwrap_or_default(),
                    ..Default::default()
                },
            ))),
        }
    }

    fn downstream(&self) -> TransportSocket {
        TransportSocket {
            name: "envoy.transport_sockets.tls".into(),
            config_type: Some(TransportSocketConfig::TypedConfig(pack_any(
                DownstreamTlsContext {
                    common_tls_context: Some(self.common()),
                    require_client_certificate: Some(BoolValue { value: true }),
                    ..Default::default()
                },
            ))),
        }
    }
}

impl Listener {
    fn to_xds(&self) -> XdsListener {
        let hcm = HttpConnectionManager {
            stat_prefix: self.name.clone(),
            codec_type: CodecType::Auto as i32,
            // `Host: reviews:8080` routes like `Host: reviews`.
            strip_matching_host_port: false,
            strip_port_mode: Some(
                envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::StripPortMode::StripAnyHostPort(true),
            ),
            route_specifier: Some(RouteSpecifier::Rds(Rds {
                config_source: Some(ads()),
                route_config_name: self.route_table.clone(),
            })),
            http_filters: self
                .jwt
                .iter()
                .flat_map(JwtCheck::filters)
                .chain(if self.authorize {
                    authorization_filters()
                } else {
                    Vec::new()
                })
                .chain([HttpFilter {
                name: "envoy.filters.http.router".into(),
                config_type: Some(HttpFilterConfig::TypedConfig(pack_any(Router::default()))),
                ..Default::default()
            }])
            .collect(),
            // Every request the listener judges is logged with the verdict
            // and the caller (a refusal says which rule, or that none allowed).
            access_log: if self.authorize {
                vec![access_log()]
            } else {
                Vec::new()
            },
            local_reply_config: self.jwt.as_ref().map(|_| JwtCheck::local_replies()),
            // The app learns who called from `x-forwarded-client-cert`
            // (the caller's SPIFFE ID, checked by this listener's mTLS);
            // whatever the caller sent in that header is replaced.
            forward_client_cert_details: if self.mtls.is_some() {
                ForwardClientCertDetails::SanitizeSet as i32
            } else {
                ForwardClientCertDetails::Sanitize as i32
            },
            set_current_client_cert_details: self.mtls.as_ref().map(|_| {
                SetCurrentClientCertDetails {
                    uri: true,
                    ..Default::default()
                }
            }),
            ..Default::default()
        };
        let filters = vec![Filter {
            name: "envoy.filters.network.http_connection_manager".into(),
            config_type: Some(ConfigType::TypedConfig(pack_any(hcm))),
        }];
        let mut listener = XdsListener {
            name: self.name.clone(),
            address: Some(socket(&self.address)),
            filter_chains: vec![FilterChain {
                filters: filters.clone(),
                transport_socket: self.mtls.as_ref().map(Mtls::downstream),
                ..Default::default()
            }],
            ..Default::default()
        };
        if self.mtls.as_ref().is_some_and(|m| m.permissive) {
            // TLS connections get the mTLS chain; the TLS inspector tells
            // them apart, and the rest get a plaintext chain.
            listener.filter_chains[0].filter_chain_match = Some(FilterChainMatch {
                transport_protocol: "tls".into(),
                ..Default::default()
            });
            listener.filter_chains.push(FilterChain {
                filters,
                ..Default::default()
            });
            listener.listener_filters = vec![tls_inspector()];
        }
        listener
    }
}

impl HeaderCondition {
    fn to_xds(&self) -> HeaderMatcher {
        let string = |pattern| {
            HeaderMatchSpecifier::StringMatch(StringMatcher {
                match_pattern: Some(pattern),
                ignore_case: false,
            })
        };
        let (specifier, invert_match) = match &self.test {
            HeaderTest::Exact(v) => (string(MatchPattern::Exact(v.clone())), false),
            HeaderTest::Prefix(v) => (string(MatchPattern::Prefix(v.clone())), false),
            HeaderTest::Present(present) => (HeaderMatchSpecifier::PresentMatch(true), !present),
        };
        HeaderMatcher {
            name: self.name.clone(),
            invert_match,
            header_match_specifier: Some(specifier),
            ..Default::default()
        }
    }
}

impl Forward {
    fn to_xds(&self) -> RouteAction {
        let cluster_specifier = if self.clusters.len() == 1 {
            let name = self.clusters.keys().next().cloned().unwrap_or_default();
            ClusterSpecifier::Cluster(name)
        } else {
            ClusterSpecifier::WeightedClusters(WeightedCluster {
                clusters: self
                    .clusters
                    .iter()
                    .map(|(name, weight)| ClusterWeight {
                        name: name.clone(),
                        weight: Some(uint(*weight)),
                        ..Default::default()
                    })
                    .collect(),
                // A sticky client also keeps its side of a split.
                random_value_specifier: self
                    .hash_on
                    .as_ref()
                    .map(|_| RandomValueSpecifier::UseHashPolicy(BoolValue { value: true })),
                ..Default::default()
            })
        };
        let retry_policy = self.retries.as_ref().map(|r| RetryPolicy {
            retry_on: r.retry_on.clone(),
            num_retries: Some(uint(r.attempts)),
            per_try_timeout: r.per_try_timeout_ms.map(duration),
            // Retry on another instance than the ones that failed.
            retry_host_predicate: vec![RetryHostPredicate {
                name: "envoy.retry_host_predicates.previous_hosts".into(),
                config_type: Some(
                    envoy_types::pb::envoy::config::route::v3::retry_policy::retry_host_predicate::ConfigType::TypedConfig(
                        pack_any(PreviousHostsPredicate::default()),
                    ),
                ),
            }],
            host_selection_retry_max_attempts: 5,
            retry_priority: r.next_priority.then(|| RetryPriority {
                name: "envoy.retry_priorities.previous_priorities".into(),
                config_type: Some(RetryPriorityConfig::TypedConfig(pack_any(
                    PreviousPrioritiesConfig {
                        update_frequency: 1,
                    },
                ))),
            }),
            ..Default::default()
        });
        let hash_policy = self
            .hash_on
            .iter()
            .map(|h| HashPolicy {
                policy_specifier: Some(match h {
                    HashOn::Header(name) => PolicySpecifier::Header(Header {
                        header_name: name.clone(),
                        ..Default::default()
                    }),
                    HashOn::Cookie { name, ttl_ms } => PolicySpecifier::Cookie(Cookie {
                        name: name.clone(),
                        ttl: ttl_ms.map(duration),
                        path: "/".into(),
                        ..Default::default()
                    }),
                }),
                terminal: false,
            })
            .collect();
        RouteAction {
            cluster_specifier: Some(cluster_specifier),
            timeout: self.timeout_ms.map(duration),
            retry_policy,
            hash_policy,
            ..Default::default()
        }
    }
}

impl RouteMatch {
    fn to_xds(&self) -> XdsRouteMatch {
        let path_specifier = match (&self.path, &self.prefix) {
            (Some(path), _) => PathSpecifier::Path(path.clone()),
            (None, Some(prefix)) => PathSpecifier::Prefix(prefix.clone()),
            (None, None) => PathSpecifier::Prefix("/".into()),
        };
        XdsRouteMatch {
            path_specifier: Some(path_specifier),
            headers: self.headers.iter().map(HeaderCondition::to_xds).collect(),
            ..Default::default()
        }
    }
}

impl Route {
    fn to_xds(&self) -> XdsRoute {
        let action = match &self.action {
            Action::Forward(forward) => XdsAction::Route(forward.to_xds()),
            Action::DirectResponse { status, body } => {
                XdsAction::DirectResponse(DirectResponseAction {
                    status: *status,
                    body: Some(DataSource {
                        specifier: Some(DataSpecifier::InlineString(body.clone())),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
            }
        };
        XdsRoute {
            r#match: Some(self.matcher.to_xds()),
            action: Some(action),
            ..Default::default()
        }
    }
}

impl RouteTable {
    fn to_xds(&self) -> RouteConfiguration {
        RouteConfiguration {
            name: self.name.clone(),
            virtual_hosts: self
                .virtual_hosts
                .iter()
                .map(|vh| XdsVirtualHost {
                    name: vh.name.clone(),
                    domains: vh.domains.clone(),
                    routes: vh.routes.iter().map(Route::to_xds).collect(),
                    typed_per_filter_config: vh
                        .authorization
                        .as_ref()
                        .map(Authorization::per_filter_config)
                        .unwrap_or_default(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }
}

/// Reads the TLS ClientHello (is it TLS? which SNI?) before a filter
/// chain is chosen.
fn tls_inspector() -> ListenerFilter {
    ListenerFilter {
        name: "envoy.filters.listener.tls_inspector".into(),
        config_type: Some(ListenerFilterConfig::TypedConfig(pack_any(
            TlsInspector::default(),
        ))),
        ..Default::default()
    }
}

impl SniListener {
    fn to_xds(&self) -> XdsListener {
        let filter_chains = self
            .routes
            .iter()
            .map(|(sni, cluster)| FilterChain {
                filter_chain_match: Some(FilterChainMatch {
                    server_names: vec![sni.clone()],
                    transport_protocol: "tls".into(),
                    ..Default::default()
                }),
                filters: vec![Filter {
                    name: "envoy.filters.network.tcp_proxy".into(),
                    config_type: Some(ConfigType::TypedConfig(pack_any(TcpProxy {
                        stat_prefix: cluster.replace('|', "_"),
                        cluster_specifier: Some(TcpClusterSpecifier::Cluster(cluster.clone())),
                        ..Default::default()
                    }))),
                }],
                ..Default::default()
            })
            .collect();
        XdsListener {
            name: self.name.clone(),
            address: Some(socket(&self.address)),
            filter_chains,
            listener_filters: vec![tls_inspector()],
            ..Default::default()
        }
    }
}

impl ProxyConfig {
    /// Envoy's resources for this proxy, checked for consistency.
    pub fn to_snapshot(&self) -> Result<Snapshot, Inconsistent> {
        Snapshot::compose(Arc::new(self.to_layer()?), Arc::default())
    }

    /// This config's resources as one layer, each encoded once; what it
    /// refers to and does not hold stays needed.
    pub fn to_layer(&self) -> Result<Layer, Inconsistent> {
        let mut layer = LayerBuilder::new();
        self.add_to(&mut layer)?;
        Ok(layer.build())
    }

    /// Adds this config's resources to `layer`.
    pub fn add_to(&self, layer: &mut LayerBuilder) -> Result<(), Inconsistent> {
        for cluster in &self.clusters {
            layer.cluster(&cluster.to_xds())?;
        }
        for endpoints in &self.endpoints {
            layer.endpoints(&endpoints.to_xds())?;
        }
        // JWT providers (on a listener) and RBAC policies (on a route
        // table) are protobuf maps, encoded in hash order: version the
        // resources that hold them by their model, which encodes the same
        // every time. Others keep the hash of their bytes (no JSON work
        // for the large outbound route table).
        for listener in &self.listeners {
            let version = listener.jwt.as_ref().map(|_| model_version(listener));
            layer.listener(&listener.to_xds(), version)?;
        }
        for listener in &self.passthrough {
            layer.listener(&listener.to_xds(), None)?;
        }
        for table in &self.routes {
            let has_policies = table
                .virtual_hosts
                .iter()
                .any(|v| v.authorization.is_some());
            let version = has_policies.then(|| model_version(table));
            layer.route(&table.to_xds(), version)?;
        }
        Ok(())
    }
}

/// A hash of a model resource's JSON form (its maps are ordered).
fn model_version(model: &impl Serialize) -> String {
    use sha2::{Digest, Sha256};
    let json = serde_json::to_vec(model).unwrap_or_default();
    hex::encode(&Sha256::digest(&json)[..8])
}

//! Clusters (CDS): where a cluster's endpoints come from, how requests
//! are balanced across them, the limits that shed load, outlier
//! detection, and mutual TLS to them.

use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster as XdsCluster;
use envoy_types::pb::envoy::config::cluster::v3::OutlierDetection as XdsOutlier;
use envoy_types::pb::envoy::config::cluster::v3::circuit_breakers::Thresholds;
use envoy_types::pb::envoy::config::cluster::v3::circuit_breakers::thresholds::RetryBudget;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, DnsLookupFamily, EdsClusterConfig, LbPolicy,
};
use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType as SocketConfig;
use envoy_types::pb::envoy::config::core::v3::{
    ConfigSource, HttpProtocolOptions as CommonHttpOptions, RoutingPriority,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::UpstreamTlsContext;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::UpstreamProtocolOptions;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::explicit_http_config::ProtocolConfig;
use prost::Message;

use super::endpoints::Assignment;
use super::tls::{PeerCheck, common_tls};
use super::{Refusals, Refused, at, duration};

/// A cluster: a named set of upstream endpoints and how to use them.
#[derive(Debug, Clone, PartialEq)]
pub struct Cluster {
    pub name: String,
    pub discovery: Discovery,
    pub connect_timeout: Duration,
    pub balancer: Balancer,
    pub limits: Limits,
    pub outlier: Option<Outlier>,
    pub tls: Option<UpstreamTls>,
    /// TLS to a host outside the mesh (a JWKS or an external API).
    pub public_tls: Option<PublicTls>,
    pub protocol: UpstreamProtocol,
    pub idle_timeout: Option<Duration>,
    pub max_requests_per_connection: Option<u32>,
}

/// Where the endpoints come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Discovery {
    /// From EDS on the ADS stream, by the cluster's name.
    Eds,
    /// Given in the cluster itself.
    Static(Assignment),
    /// One host name, resolved (IPv4 first) and re-resolved.
    Dns(Assignment),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balancer {
    RoundRobin,
    LeastRequest,
    RingHash,
    Random,
}

/// Envoy's circuit breakers at the default priority; unset ones keep
/// Envoy's defaults (1,024 connections, pending and active requests, 3
/// retries).
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub max_connections: u32,
    pub max_pending_requests: u32,
    pub max_requests: u32,
    pub max_retries: u32,
    /// Retries allowed as a percent of active requests, with a floor.
    pub retry_budget: Option<(f64, u32)>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 1024,
            max_pending_requests: 1024,
            max_requests: 1024,
            max_retries: 3,
            retry_budget: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outlier {
    pub consecutive_5xx: u32,
    pub interval: Duration,
    pub base_ejection_time: Duration,
    pub max_ejection_percent: u32,
}

/// Mutual TLS to the endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTls {
    /// The server name sent; empty: none.
    pub sni: String,
    /// The SDS secret with this proxy's certificate.
    pub certificate: String,
    /// The SDS secret with the roots the peer's chain must reach.
    pub trust: String,
    /// Which peer identities are accepted.
    pub peers: PeerCheck,
    pub alpn: Vec<String>,
}

/// TLS to a host outside the mesh: its certificate checked against the
/// CAs of a file for the server name sent, no client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicTls {
    /// The name sent and checked (Envoy's SNI and its one exact DNS SAN).
    pub sni: String,
    /// A PEM file of trusted CAs (the system's bundle).
    pub ca_file: std::path::PathBuf,
    pub alpn: Vec<String>,
}

/// Which protocol requests go upstream in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    /// What the request came in: HTTP/1.1 stays HTTP/1.1, h2c HTTP/2.
    SameAsDownstream,
    Http2,
    /// No HTTP options: bytes relayed, or an outside host's HTTP/1.1.
    Unspecified,
}

const HTTP_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
const TLS_SOCKET: &str = "envoy.transport_sockets.tls";

impl TryFrom<&XdsCluster> for Cluster {
    type Error = Refused;

    // Deprecated fields are named too: refusing them is the point.
    #[allow(deprecated)]
    fn try_from(cluster: &XdsCluster) -> Result<Cluster, Refused> {
        let XdsCluster {
            transport_socket_matches,
            transport_socket_matcher,
            name,
            alt_stat_name,
            stats_matcher,
            eds_cluster_config,
            connect_timeout,
            per_connection_buffer_limit_bytes,
            per_connection_buffer_high_watermark_timeout,
            lb_policy,
            load_assignment,
            health_checks,
            max_requests_per_connection,
            circuit_breakers,
            upstream_http_protocol_options,
            common_http_protocol_options,
            http_protocol_options,
            http2_protocol_options,
            typed_extension_protocol_options,
            dns_refresh_rate,
            dns_jitter,
            dns_failure_refresh_rate,
            respect_dns_ttl,
            dns_lookup_family,
            dns_resolvers,
            use_tcp_for_dns_lookups,
            dns_resolution_config,
            typed_dns_resolver_config,
            wait_for_warm_on_init,
            outlier_detection,
            cleanup_interval,
            upstream_bind_config,
            lb_subset_config,
            common_lb_config,
            transport_socket,
            metadata,
            protocol_selection,
            upstream_connection_options,
            close_connections_on_host_health_failure,
            ignore_health_on_host_removal,
            filters,
            load_balancing_policy,
            lrs_server,
            lrs_report_endpoint_metrics,
            track_timeout_budgets,
            upstream_config,
            track_cluster_stats,
            preconnect_policy,
            connection_pool_per_downstream_connection,
            queuing_policies,
            cluster_discovery_type,
            lb_config,
        } = cluster;
        let mut r = Refusals::default();
        {
            r.unset("transport_socket_matches", transport_socket_matches);
            r.unset("transport_socket_matcher", transport_socket_matcher);
            r.unset("alt_stat_name", alt_stat_name);
            r.unset("stats_matcher", stats_matcher);
            r.unset(
                "per_connection_buffer_limit_bytes",
                per_connection_buffer_limit_bytes,
            );
            r.unset(
                "per_connection_buffer_high_watermark_timeout",
                per_connection_buffer_high_watermark_timeout,
            );
            r.unset("health_checks", health_checks);
            r.unset("max_requests_per_connection", max_requests_per_connection);
            r.unset(
                "upstream_http_protocol_options",
                upstream_http_protocol_options,
            );
            r.unset("common_http_protocol_options", common_http_protocol_options);
            r.unset("http_protocol_options", http_protocol_options);
            r.unset("http2_protocol_options", http2_protocol_options);
            r.unset("dns_refresh_rate", dns_refresh_rate);
            r.unset("dns_jitter", dns_jitter);
            r.unset("dns_failure_refresh_rate", dns_failure_refresh_rate);
            r.unset("respect_dns_ttl", respect_dns_ttl);
            r.unset("dns_resolvers", dns_resolvers);
            r.unset("use_tcp_for_dns_lookups", use_tcp_for_dns_lookups);
            r.unset("dns_resolution_config", dns_resolution_config);
            r.unset("typed_dns_resolver_config", typed_dns_resolver_config);
            r.unset("wait_for_warm_on_init", wait_for_warm_on_init);
            r.unset("cleanup_interval", cleanup_interval);
            r.unset("upstream_bind_config", upstream_bind_config);
            r.unset("lb_subset_config", lb_subset_config);
            r.unset("common_lb_config", common_lb_config);
            r.unset("metadata", metadata);
            r.unset("protocol_selection", protocol_selection);
            r.unset("upstream_connection_options", upstream_connection_options);
            r.unset(
                "close_connections_on_host_health_failure",
                close_connections_on_host_health_failure,
            );
            r.unset(
                "ignore_health_on_host_removal",
                ignore_health_on_host_removal,
            );
            r.unset("filters", filters);
            r.unset("load_balancing_policy", load_balancing_policy);
            r.unset("lrs_server", lrs_server);
            r.unset("lrs_report_endpoint_metrics", lrs_report_endpoint_metrics);
            r.unset("track_timeout_budgets", track_timeout_budgets);
            r.unset("upstream_config", upstream_config);
            r.unset("track_cluster_stats", track_cluster_stats);
            r.unset("preconnect_policy", preconnect_policy);
            r.unset(
                "connection_pool_per_downstream_connection",
                connection_pool_per_downstream_connection,
            );
            r.unset("queuing_policies", queuing_policies);
            r.unset("lb_config", lb_config);
        }
        let discovery = discovery(
            cluster_discovery_type.as_ref(),
            eds_cluster_config.as_ref(),
            load_assignment.as_ref(),
            *dns_lookup_family,
            &mut r,
        );
        let balancer = match LbPolicy::try_from(*lb_policy) {
            Ok(LbPolicy::RoundRobin) => Balancer::RoundRobin,
            Ok(LbPolicy::LeastRequest) => Balancer::LeastRequest,
            Ok(LbPolicy::RingHash) => Balancer::RingHash,
            Ok(LbPolicy::Random) => Balancer::Random,
            _ => {
                r.refuse(
                    "lb_policy",
                    "only ROUND_ROBIN, LEAST_REQUEST, RING_HASH and RANDOM",
                );
                Balancer::RoundRobin
            }
        };
        let limits = circuit_breakers
            .as_ref()
            .map(|c| {
                if c.per_host_thresholds.len() + c.thresholds.len() > 1
                    || !c.per_host_thresholds.is_empty()
                {
                    r.refuse(
                        "circuit_breakers",
                        "only one set of thresholds, at the default priority",
                    );
                }
                c.thresholds
                    .first()
                    .map(|t| limits(t, &mut r))
                    .unwrap_or_default()
            })
            .unwrap_or_default();
        let outlier = outlier_detection.as_ref().map(|o| outlier(o, &mut r));
        let (protocol, idle_timeout, max_requests) =
            http_options(typed_extension_protocol_options, &mut r);
        let either = transport_socket.as_ref().and_then(|socket| {
            if socket.name != TLS_SOCKET {
                r.refuse("transport_socket.name", format!("only {TLS_SOCKET}"));
                return None;
            }
            let Some(SocketConfig::TypedConfig(any)) = &socket.config_type else {
                r.refuse("transport_socket.typed_config", "missing");
                return None;
            };
            let Ok(context) = UpstreamTlsContext::decode(any.value.as_slice()) else {
                r.refuse("transport_socket.typed_config", "not an UpstreamTlsContext");
                return None;
            };
            upstream_tls(&context, &mut r)
        });
        let (tls, public_tls) = match either {
            Some(Tls::Mesh(mesh)) => (Some(mesh), None),
            Some(Tls::Public(public)) => (None, Some(public)),
            None => (None, None),
        };
        let connect_timeout = duration(connect_timeout.as_ref(), "connect_timeout", &mut r)
            .unwrap_or(Duration::from_secs(5));
        let converted = Cluster {
            name: name.clone(),
            discovery,
            connect_timeout,
            balancer,
            limits,
            outlier,
            tls,
            public_tls,
            protocol,
            idle_timeout,
            max_requests_per_connection: max_requests,
        };
        r.finish(format!("Cluster {name}"), converted)
    }
}

fn discovery(
    kind: Option<&ClusterDiscoveryType>,
    eds: Option<&EdsClusterConfig>,
    assignment: Option<&envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment>,
    dns_family: i32,
    r: &mut Refusals,
) -> Discovery {
    let kind = match kind {
        None => DiscoveryType::Static,
        Some(ClusterDiscoveryType::Type(t)) => {
            DiscoveryType::try_from(*t).unwrap_or(DiscoveryType::OriginalDst)
        }
        Some(ClusterDiscoveryType::ClusterType(_)) => {
            r.refuse("cluster_type", "custom cluster types are not supported");
            DiscoveryType::Static
        }
    };
    let family = DnsLookupFamily::try_from(dns_family).unwrap_or(DnsLookupFamily::All);
    let given = assignment.is_some();
    let assignment = |r: &mut Refusals| match assignment.map(Assignment::try_from) {
        Some(Ok(a)) => a,
        Some(Err(e)) => {
            for p in e.problems {
                r.refuse("load_assignment", p);
            }
            Assignment::default()
        }
        None => {
            r.refuse(
                "load_assignment",
                "a STATIC or LOGICAL_DNS cluster needs one",
            );
            Assignment::default()
        }
    };
    match kind {
        DiscoveryType::Eds => {
            let from_ads = eds.is_some_and(|e| {
                e.service_name.is_empty()
                    && matches!(
                        e.eds_config,
                        Some(ConfigSource {
                            config_source_specifier: Some(ConfigSourceSpecifier::Ads(_)),
                            ..
                        })
                    )
            });
            if !from_ads {
                r.refuse(
                    "eds_cluster_config",
                    "endpoints come only from the ADS stream, by the cluster's name",
                );
            }
            if given {
                r.refuse(
                    "load_assignment",
                    "an EDS cluster takes its endpoints from EDS",
                );
            }
            if family != DnsLookupFamily::Auto {
                r.refuse("dns_lookup_family", "applies to LOGICAL_DNS clusters only");
            }
            Discovery::Eds
        }
        DiscoveryType::Static => {
            r.unset("eds_cluster_config", &eds.cloned());
            Discovery::Static(assignment(r))
        }
        DiscoveryType::LogicalDns => {
            r.unset("eds_cluster_config", &eds.cloned());
            if !matches!(family, DnsLookupFamily::V4Preferred | DnsLookupFamily::Auto) {
                r.refuse("dns_lookup_family", "only AUTO and V4_PREFERRED");
            }
            Discovery::Dns(assignment(r))
        }
        _ => {
            r.refuse("type", "only EDS, STATIC and LOGICAL_DNS clusters");
            Discovery::Eds
        }
    }
}

fn limits(t: &Thresholds, r: &mut Refusals) -> Limits {
    let read = |v: Option<u32>, default: u32| v.unwrap_or(default);
    let defaults = Limits::default();
    let retry_budget = t.retry_budget.as_ref().map(|b: &RetryBudget| {
        (
            b.budget_percent.as_ref().map_or(20.0, |p| p.value),
            b.min_retry_concurrency.map_or(3, |v| v.value),
        )
    });
    let supported = Thresholds {
        priority: RoutingPriority::Default as i32,
        max_connections: t.max_connections,
        max_pending_requests: t.max_pending_requests,
        max_requests: t.max_requests,
        max_retries: t.max_retries,
        retry_budget: t.retry_budget.as_ref().map(|b| RetryBudget {
            budget_percent: b.budget_percent,
            min_retry_concurrency: b.min_retry_concurrency,
            ..Default::default()
        }),
        ..Default::default()
    };
    if *t != supported {
        r.refuse(
            "circuit_breakers.thresholds[0]",
            "only max_connections, max_pending_requests, max_requests, max_retries and retry_budget (percent, min concurrency) at the default priority",
        );
    }
    Limits {
        max_connections: read(t.max_connections.map(|v| v.value), defaults.max_connections),
        max_pending_requests: read(
            t.max_pending_requests.map(|v| v.value),
            defaults.max_pending_requests,
        ),
        max_requests: read(t.max_requests.map(|v| v.value), defaults.max_requests),
        max_retries: read(t.max_retries.map(|v| v.value), defaults.max_retries),
        retry_budget,
    }
}

fn outlier(o: &XdsOutlier, r: &mut Refusals) -> Outlier {
    let supported = XdsOutlier {
        consecutive_5xx: o.consecutive_5xx,
        interval: o.interval,
        base_ejection_time: o.base_ejection_time,
        max_ejection_percent: o.max_ejection_percent,
        ..Default::default()
    };
    if *o != supported {
        r.refuse(
            "outlier_detection",
            "only consecutive_5xx, interval, base_ejection_time and max_ejection_percent",
        );
    }
    Outlier {
        consecutive_5xx: o.consecutive_5xx.map_or(5, |v| v.value),
        interval: duration(o.interval.as_ref(), "outlier_detection.interval", r)
            .unwrap_or(Duration::from_secs(10)),
        base_ejection_time: duration(
            o.base_ejection_time.as_ref(),
            "outlier_detection.base_ejection_time",
            r,
        )
        .unwrap_or(Duration::from_secs(30)),
        max_ejection_percent: o.max_ejection_percent.map_or(10, |v| v.value),
    }
}

/// The upstream HTTP options: protocol, idle timeout, requests per
/// connection.
fn http_options(
    options: &std::collections::HashMap<String, envoy_types::pb::google::protobuf::Any>,
    r: &mut Refusals,
) -> (UpstreamProtocol, Option<Duration>, Option<u32>) {
    let field = "typed_extension_protocol_options";
    let mut out = (UpstreamProtocol::Unspecified, None, None);
    for (name, any) in options {
        if name != HTTP_OPTIONS {
            r.refuse(at(field, name), "not supported by weft-proxy");
            continue;
        }
        let here = at(field, name);
        let Ok(o) = HttpProtocolOptions::decode(any.value.as_slice()) else {
            r.refuse(&here, "not an HttpProtocolOptions");
            continue;
        };
        let common = o.common_http_protocol_options.unwrap_or_default();
        let supported_common = CommonHttpOptions {
            idle_timeout: common.idle_timeout,
            max_requests_per_connection: common.max_requests_per_connection,
            ..Default::default()
        };
        if common != supported_common {
            r.refuse(
                at(&here, "common_http_protocol_options"),
                "only idle_timeout and max_requests_per_connection",
            );
        }
        let protocol = match &o.upstream_protocol_options {
            Some(UpstreamProtocolOptions::ExplicitHttpConfig(explicit)) => {
                match &explicit.protocol_config {
                    Some(ProtocolConfig::Http2ProtocolOptions(h2)) if *h2 == Default::default() => {
                        UpstreamProtocol::Http2
                    }
                    _ => {
                        r.refuse(
                            at(&here, "explicit_http_config"),
                            "only HTTP/2 with default options",
                        );
                        UpstreamProtocol::Unspecified
                    }
                }
            }
            Some(UpstreamProtocolOptions::UseDownstreamProtocolConfig(same)) => {
                let plain = same
                    .http_protocol_options
                    .as_ref()
                    .is_none_or(|h| *h == Default::default())
                    && same
                        .http2_protocol_options
                        .as_ref()
                        .is_none_or(|h| *h == Default::default())
                    && same.http3_protocol_options.is_none();
                if !plain {
                    r.refuse(
                        at(&here, "use_downstream_protocol_config"),
                        "only HTTP/1.1 and HTTP/2 with default options",
                    );
                }
                UpstreamProtocol::SameAsDownstream
            }
            _ => {
                r.refuse(
                    at(&here, "upstream_protocol_options"),
                    "only explicit HTTP/2 or the downstream's protocol",
                );
                UpstreamProtocol::Unspecified
            }
        };
        // Auto SNI from the Host header (a gateway's egress) is not ours
        // to honour yet.
        r.unset(
            &at(&here, "upstream_http_protocol_options"),
            &o.upstream_http_protocol_options,
        );
        let supported = HttpProtocolOptions {
            common_http_protocol_options: o.common_http_protocol_options,
            upstream_protocol_options: o.upstream_protocol_options.clone(),
            upstream_http_protocol_options: o.upstream_http_protocol_options.clone(),
            ..Default::default()
        };
        if o != supported {
            r.refuse(
                &here,
                "only common, upstream and upstream HTTP protocol options",
            );
        }
        out = (
            protocol,
            duration(common.idle_timeout.as_ref(), &at(&here, "idle_timeout"), r),
            common.max_requests_per_connection.map(|v| v.value),
        );
    }
    out
}

enum Tls {
    Mesh(UpstreamTls),
    Public(PublicTls),
}

fn upstream_tls(context: &UpstreamTlsContext, r: &mut Refusals) -> Option<Tls> {
    let here = "transport_socket.typed_config";
    let supported = UpstreamTlsContext {
        common_tls_context: context.common_tls_context.clone(),
        sni: context.sni.clone(),
        ..Default::default()
    };
    if *context != supported {
        r.refuse(here, "only common_tls_context and sni");
    }
    if let Some(public) = public_tls(context, here, r) {
        return public.map(Tls::Public);
    }
    let common = common_tls(
        context.common_tls_context.as_ref(),
        &at(here, "common_tls_context"),
        r,
    )?;
    Some(Tls::Mesh(UpstreamTls {
        sni: context.sni.clone(),
        certificate: common.certificate,
        trust: common.trust,
        peers: common.peers,
        alpn: common.alpn,
    }))
}

/// TLS to a host outside the mesh, when `context` asks for it (a plain
/// validation context, no certificate of the proxy's): the CAs of a file,
/// and one exact DNS SAN that is the SNI — exactly what a standard
/// server-name check does. None: not this shape.
#[allow(deprecated)]
fn public_tls(
    context: &UpstreamTlsContext,
    here: &str,
    r: &mut Refusals,
) -> Option<Option<PublicTls>> {
    use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::CertificateValidationContext;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::ValidationContextType;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::subject_alt_name_matcher::SanType;
    use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
    let common = context.common_tls_context.as_ref()?;
    let Some(ValidationContextType::ValidationContext(validation)) =
        &common.validation_context_type
    else {
        return None;
    };
    let here = at(here, "common_tls_context");
    let only = envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::CommonTlsContext {
        validation_context_type: common.validation_context_type.clone(),
        alpn_protocols: common.alpn_protocols.clone(),
        ..Default::default()
    };
    if *common != only {
        r.refuse(
            &here,
            "to a host outside the mesh, only a validation context and ALPN",
        );
    }
    let validation_at = at(&here, "validation_context");
    let plain = CertificateValidationContext {
        trusted_ca: validation.trusted_ca.clone(),
        match_typed_subject_alt_names: validation.match_typed_subject_alt_names.clone(),
        ..Default::default()
    };
    if *validation != plain {
        r.refuse(
            &validation_at,
            "only trusted_ca and match_typed_subject_alt_names",
        );
    }
    let ca_file = match validation
        .trusted_ca
        .as_ref()
        .and_then(|d| d.specifier.as_ref())
    {
        Some(Specifier::Filename(file)) => std::path::PathBuf::from(file),
        _ => {
            r.refuse(at(&validation_at, "trusted_ca"), "only a filename");
            return Some(None);
        }
    };
    let names_the_sni = matches!(
        validation.match_typed_subject_alt_names.as_slice(),
        [san] if san.san_type == SanType::Dns as i32
            && matches!(
                san.matcher.as_ref().and_then(|m| m.match_pattern.as_ref()),
                Some(MatchPattern::Exact(name)) if *name == context.sni
            )
            && !san.matcher.as_ref().is_some_and(|m| m.ignore_case)
    );
    if !names_the_sni || context.sni.is_empty() {
        r.refuse(
            at(&validation_at, "match_typed_subject_alt_names"),
            "only one exact DNS name, the SNI",
        );
        return Some(None);
    }
    Some(Some(PublicTls {
        sni: context.sni.clone(),
        ca_file,
        alpn: common.alpn_protocols.clone(),
    }))
}

//! Listeners → Envoy `Listener` (LDS): the HTTP connection manager with
//! its filters and access log (shared with gateways), and the SNI
//! passthrough listener.

use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
use envoy_types::pb::envoy::config::listener::v3::listener_filter::ConfigType as ListenerFilterConfig;
use envoy_types::pb::envoy::config::listener::v3::{
    Filter, FilterChain, FilterChainMatch, Listener as XdsListener, ListenerFilter,
};
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::{
    CodecType, RouteSpecifier,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType as HttpFilterConfig;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds,
};
use envoy_types::util::pack_any;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::{
    ForwardClientCertDetails, SetCurrentClientCertDetails,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::ClusterSpecifier as TcpClusterSpecifier;

use envoy_types::pb::envoy::config::rbac::v3::rbac::Action as RbacAction;
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;

use super::convert::{ads, socket};
use super::rbac::{authorization_filters, rbac};
use super::{
    JwtCheck, Listener, Mtls, RateLimitService, SniListener, TCP_ALPN, TcpInbound, Telemetry,
};

/// An HTTP connection manager over route table `route_table` (RDS) with
/// `filters` before the router (after the telemetry's, which must see
/// every request). Whatever a client sends in `x-forwarded-client-cert`
/// is dropped.
pub(super) fn http_connection_manager(
    stat_prefix: &str,
    route_table: &str,
    filters: Vec<HttpFilter>,
    checks_tokens: bool,
    telemetry: Option<&Telemetry>,
) -> HttpConnectionManager {
    HttpConnectionManager {
        stat_prefix: stat_prefix.to_string(),
        codec_type: CodecType::Auto as i32,
        // `Host: reviews:8080` routes like `Host: reviews`.
        strip_matching_host_port: false,
        strip_port_mode: Some(
            envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::StripPortMode::StripAnyHostPort(true),
        ),
        route_specifier: Some(RouteSpecifier::Rds(Rds {
            config_source: Some(ads()),
            route_config_name: route_table.to_string(),
        })),
        http_filters: telemetry
            .map(Telemetry::filters)
            .unwrap_or_default()
            .into_iter()
            .chain(filters)
            .chain([HttpFilter {
                name: "envoy.filters.http.router".into(),
                config_type: Some(HttpFilterConfig::TypedConfig(pack_any(Router::default()))),
                ..Default::default()
            }])
            .collect(),
        access_log: telemetry.map(Telemetry::access_logs).unwrap_or_default(),
        tracing: telemetry.and_then(Telemetry::tracing),
        local_reply_config: checks_tokens.then(JwtCheck::local_replies),
        forward_client_cert_details: ForwardClientCertDetails::Sanitize as i32,
        ..Default::default()
    }
}

impl Listener {
    pub(super) fn to_xds(&self) -> XdsListener {
        let Listener {
            name,
            address,
            route_table,
            mtls,
            authorize,
            jwt,
            tcp,
            rate_limited,
            rate_limit_service,
            telemetry,
        } = self;
        let filters = jwt
            .iter()
            .flat_map(JwtCheck::filters)
            .chain(if *authorize {
                authorization_filters()
            } else {
                Vec::new()
            })
            // After authorization: a caller refused does not spend a token.
            .chain(rate_limited.then(super::ratelimit::local_rate_limit_filter))
            .chain(rate_limit_service.as_ref().map(RateLimitService::filter))
            .collect();
        let mut hcm = http_connection_manager(
            name,
            route_table,
            filters,
            jwt.is_some(),
            telemetry.as_ref(),
        );
        if mtls.is_some() {
            // The app learns who called from `x-forwarded-client-cert`
            // (the caller's SPIFFE ID, checked by this listener's mTLS);
            // whatever the caller sent in that header is replaced.
            hcm.forward_client_cert_details = ForwardClientCertDetails::SanitizeSet as i32;
            hcm.set_current_client_cert_details = Some(SetCurrentClientCertDetails {
                uri: true,
                ..Default::default()
            });
        }
        let filters = vec![Filter {
            name: "envoy.filters.network.http_connection_manager".into(),
            config_type: Some(ConfigType::TypedConfig(pack_any(hcm))),
        }];
        let mut listener = XdsListener {
            name: name.clone(),
            address: Some(socket(address)),
            filter_chains: vec![FilterChain {
                filters: filters.clone(),
                transport_socket: mtls.as_ref().map(Mtls::downstream),
                ..Default::default()
            }],
            ..Default::default()
        };
        if mtls.as_ref().is_some_and(|m| m.permissive) {
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
        if let (Some(tcp), Some(mtls)) = (tcp, mtls) {
            // Envoy picks the most specific chain level by level, and
            // never falls back to a less specific one: the TLS chain must
            // name its transport protocol too, or every TLS connection
            // would end at the raw-TCP chain's ALPN test.
            listener.filter_chains[0].filter_chain_match = Some(FilterChainMatch {
                transport_protocol: "tls".into(),
                ..Default::default()
            });
            // First: the ALPN a gateway offers for raw TCP picks it.
            listener.filter_chains.insert(
                0,
                FilterChain {
                    filter_chain_match: Some(FilterChainMatch {
                        transport_protocol: "tls".into(),
                        application_protocols: vec![TCP_ALPN.into()],
                        ..Default::default()
                    }),
                    filters: tcp.filters(name),
                    transport_socket: Some(mtls.downstream()),
                    ..Default::default()
                },
            );
            listener.listener_filters = vec![tls_inspector()];
        }
        listener
    }
}

impl TcpInbound {
    /// Network RBAC (deny, then allow) on the caller's verified identity,
    /// then the relay to the app.
    fn filters(&self, listener: &str) -> Vec<Filter> {
        let by_caller = |rules: &[super::AccessRule]| -> Vec<super::AccessRule> {
            rules
                .iter()
                .filter(|r| r.requests.is_empty() && r.claims.is_empty())
                .cloned()
                .collect()
        };
        let rbac = |name: &str, action, rules: Vec<super::AccessRule>| Filter {
            name: name.into(),
            config_type: Some(ConfigType::TypedConfig(pack_any(NetworkRbac {
                rules: Some(rbac(action, &rules)),
                stat_prefix: format!("{listener}_tcp_"),
                ..Default::default()
            }))),
        };
        vec![
            rbac(
                "weft.tcp.deny",
                RbacAction::Deny,
                by_caller(&self.authorization.deny),
            ),
            rbac(
                "weft.tcp.allow",
                RbacAction::Allow,
                by_caller(&self.authorization.allow),
            ),
            Filter {
                name: "envoy.filters.network.tcp_proxy".into(),
                config_type: Some(ConfigType::TypedConfig(pack_any(TcpProxy {
                    stat_prefix: format!("{listener}_tcp"),
                    cluster_specifier: Some(TcpClusterSpecifier::Cluster(self.cluster.clone())),
                    ..Default::default()
                }))),
            },
        ]
    }
}

/// Reads the TLS ClientHello (is it TLS? which SNI?) before a filter
/// chain is chosen.
pub(super) fn tls_inspector() -> ListenerFilter {
    ListenerFilter {
        name: "envoy.filters.listener.tls_inspector".into(),
        config_type: Some(ListenerFilterConfig::TypedConfig(pack_any(
            TlsInspector::default(),
        ))),
        ..Default::default()
    }
}

impl SniListener {
    pub(super) fn to_xds(&self) -> XdsListener {
        let SniListener {
            name,
            address,
            routes,
        } = self;
        let by_name = routes.keys().any(|sni| !sni.is_empty());
        let filter_chains = routes
            .iter()
            .map(|(sni, cluster)| FilterChain {
                filter_chain_match: (!sni.is_empty()).then(|| FilterChainMatch {
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
            name: name.clone(),
            address: Some(socket(address)),
            filter_chains,
            listener_filters: if by_name {
                vec![tls_inspector()]
            } else {
                Vec::new()
            },
            ..Default::default()
        }
    }
}

//! Listeners → Envoy `Listener` (LDS): the HTTP connection manager with
//! its filters and access log, and the SNI passthrough listener.

use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
use envoy_types::pb::envoy::config::listener::v3::listener_filter::ConfigType as ListenerFilterConfig;
use envoy_types::pb::envoy::config::listener::v3::{
    Filter, FilterChain, FilterChainMatch, Listener as XdsListener, ListenerFilter,
};
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source::Specifier as DataSpecifier};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::{
    CodecType, RouteSpecifier,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType as HttpFilterConfig;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds,
};
use envoy_types::util::pack_any;
use envoy_types::pb::envoy::config::accesslog::v3::AccessLog;
use envoy_types::pb::envoy::config::accesslog::v3::access_log::ConfigType as AccessLogConfig;
use envoy_types::pb::envoy::config::core::v3::SubstitutionFormatString;
use envoy_types::pb::envoy::config::core::v3::substitution_format_string::Format as SubstitutionFormat;
use envoy_types::pb::envoy::extensions::access_loggers::stream::v3::StderrAccessLog;
use envoy_types::pb::envoy::extensions::access_loggers::stream::v3::stderr_access_log::AccessLogFormat as StderrFormat;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::{
    ForwardClientCertDetails, SetCurrentClientCertDetails,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::ClusterSpecifier as TcpClusterSpecifier;

use super::convert::{ads, socket};
use super::rbac::authorization_filters;
use super::{JwtCheck, Listener, Mtls, SniListener};

/// One line per request on Envoy's stderr (the sidecar's log).
pub(super) fn access_log() -> AccessLog {
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

impl Listener {
    pub(super) fn to_xds(&self) -> XdsListener {
        let Listener {
            name,
            address,
            route_table,
            mtls,
            authorize,
            jwt,
        } = self;
        let hcm = HttpConnectionManager {
            stat_prefix: name.clone(),
            codec_type: CodecType::Auto as i32,
            // `Host: reviews:8080` routes like `Host: reviews`.
            strip_matching_host_port: false,
            strip_port_mode: Some(
                envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::StripPortMode::StripAnyHostPort(true),
            ),
            route_specifier: Some(RouteSpecifier::Rds(Rds {
                config_source: Some(ads()),
                route_config_name: route_table.clone(),
            })),
            http_filters: jwt
                .iter()
                .flat_map(JwtCheck::filters)
                .chain(if *authorize {
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
            access_log: if *authorize {
                vec![access_log()]
            } else {
                Vec::new()
            },
            local_reply_config: jwt.as_ref().map(|_| JwtCheck::local_replies()),
            // The app learns who called from `x-forwarded-client-cert`
            // (the caller's SPIFFE ID, checked by this listener's mTLS);
            // whatever the caller sent in that header is replaced.
            forward_client_cert_details: if mtls.is_some() {
                ForwardClientCertDetails::SanitizeSet as i32
            } else {
                ForwardClientCertDetails::Sanitize as i32
            },
            set_current_client_cert_details: mtls.as_ref().map(|_| {
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
        listener
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
        let filter_chains = routes
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
            name: name.clone(),
            address: Some(socket(address)),
            filter_chains,
            listener_filters: vec![tls_inspector()],
            ..Default::default()
        }
    }
}

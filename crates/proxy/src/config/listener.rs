//! Listeners (LDS): where the proxy takes connections, which filter chain
//! a connection gets (TLS or plaintext, by the ClientHello), the mesh's
//! mutual TLS on it, and the HTTP connection manager behind it.

use std::net::SocketAddr;

use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType as SocketConfig;
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType as FilterConfig;
use envoy_types::pb::envoy::config::listener::v3::listener_filter::ConfigType as ListenerFilterConfig;
use envoy_types::pb::envoy::config::listener::v3::{
    FilterChain as XdsFilterChain, FilterChainMatch, Listener as XdsListener,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::{
    CodecType, ForwardClientCertDetails, RouteSpecifier, SetCurrentClientCertDetails,
    StripPortMode,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::DownstreamTlsContext;
use prost::Message;

use super::endpoints::{Target, target};
use super::http::{self, AccessLog, HttpFilter, http_filter, token_failure_replies};
use super::route::RouteTable;
use super::tls::{PeerCheck, common_tls};
use super::{Refusals, Refused, at};

#[derive(Debug, Clone, PartialEq)]
pub struct Listener {
    pub name: String,
    pub address: SocketAddr,
    /// In order; the first whose conditions hold takes the connection.
    pub chains: Vec<FilterChain>,
    /// The ClientHello is read first (to tell TLS from plaintext).
    pub inspects_tls: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FilterChain {
    /// Some(true): TLS connections only; Some(false): plaintext only.
    pub tls_only: Option<bool>,
    pub tls: Option<DownstreamTls>,
    pub http: HttpManager,
}

/// The mesh's mutual TLS on a listener: a client certificate is required
/// and its URI SAN checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownstreamTls {
    pub certificate: String,
    pub trust: String,
    pub peers: PeerCheck,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HttpManager {
    pub stat_prefix: String,
    /// The route table (RDS) requests are routed by.
    pub route_table: String,
    /// The route table itself, when the listener carries it (a static
    /// bootstrap's) rather than naming one for RDS.
    pub inline_routes: Option<std::sync::Arc<RouteTable>>,
    /// In order, the router last.
    pub filters: Vec<HttpFilter>,
    pub access_logs: Vec<AccessLog>,
    /// The verified caller's URI SAN is put in `x-forwarded-client-cert`
    /// (whatever the client sent there is dropped either way).
    pub forward_caller: bool,
    /// A token check's failures answer 401 (but a missing optional token).
    pub token_failures_are_401: bool,
    /// The `server` header of every response (Envoy's `server_name`).
    pub server_name: ::http::HeaderValue,
}

const HCM: &str = "envoy.filters.network.http_connection_manager";
const TLS_INSPECTOR: &str =
    "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector";

impl TryFrom<&XdsListener> for Listener {
    type Error = Refused;

    #[allow(deprecated)]
    fn try_from(listener: &XdsListener) -> Result<Listener, Refused> {
        let XdsListener {
            name,
            address,
            additional_addresses,
            stat_prefix,
            stats_matcher,
            filter_chains,
            fcds_config,
            filter_chain_matcher,
            use_original_dst,
            default_filter_chain,
            per_connection_buffer_limit_bytes,
            per_connection_buffer_high_watermark_timeout,
            metadata,
            deprecated_v1,
            drain_type,
            listener_filters,
            listener_filters_timeout,
            continue_on_listener_filters_timeout,
            transparent,
            freebind,
            socket_options,
            tcp_fast_open_queue_length,
            traffic_direction,
            udp_listener_config,
            api_listener,
            connection_balance_config,
            reuse_port,
            enable_reuse_port,
            access_log,
            tcp_backlog_size,
            max_connections_to_accept_per_socket_event,
            bind_to_port,
            enable_mptcp,
            ignore_global_conn_limit,
            bypass_overload_manager,
            tcp_keepalive,
            listener_specifier,
        } = listener;
        let mut r = Refusals::default();
        r.unset("additional_addresses", additional_addresses);
        r.unset("stat_prefix", stat_prefix);
        r.unset("stats_matcher", stats_matcher);
        r.unset("fcds_config", fcds_config);
        r.unset("filter_chain_matcher", filter_chain_matcher);
        r.unset("use_original_dst", use_original_dst);
        r.unset("default_filter_chain", default_filter_chain);
        r.unset(
            "per_connection_buffer_limit_bytes",
            per_connection_buffer_limit_bytes,
        );
        r.unset(
            "per_connection_buffer_high_watermark_timeout",
            per_connection_buffer_high_watermark_timeout,
        );
        r.unset("metadata", metadata);
        r.unset("deprecated_v1", deprecated_v1);
        r.unset("drain_type", drain_type);
        r.unset("listener_filters_timeout", listener_filters_timeout);
        r.unset(
            "continue_on_listener_filters_timeout",
            continue_on_listener_filters_timeout,
        );
        r.unset("transparent", transparent);
        r.unset("freebind", freebind);
        r.unset("socket_options", socket_options);
        r.unset("tcp_fast_open_queue_length", tcp_fast_open_queue_length);
        r.unset("traffic_direction", traffic_direction);
        r.unset("udp_listener_config", udp_listener_config);
        r.unset("api_listener", api_listener);
        r.unset("connection_balance_config", connection_balance_config);
        r.unset("reuse_port", reuse_port);
        r.unset("enable_reuse_port", enable_reuse_port);
        r.unset("access_log", access_log);
        r.unset("tcp_backlog_size", tcp_backlog_size);
        r.unset(
            "max_connections_to_accept_per_socket_event",
            max_connections_to_accept_per_socket_event,
        );
        r.unset("bind_to_port", bind_to_port);
        r.unset("enable_mptcp", enable_mptcp);
        r.unset("ignore_global_conn_limit", ignore_global_conn_limit);
        r.unset("bypass_overload_manager", bypass_overload_manager);
        r.unset("tcp_keepalive", tcp_keepalive);
        r.unset("listener_specifier", listener_specifier);
        let address = match target(address.as_ref(), "address", &mut r) {
            Some(Target::Ip(address)) => address,
            Some(Target::Host(..)) => {
                r.refuse("address", "a listener binds an IP address");
                SocketAddr::from(([0, 0, 0, 0], 0))
            }
            None => SocketAddr::from(([0, 0, 0, 0], 0)),
        };
        let mut inspects_tls = false;
        for (i, filter) in listener_filters.iter().enumerate() {
            let tls_inspector = matches!(
                &filter.config_type,
                Some(ListenerFilterConfig::TypedConfig(any)) if any.type_url == TLS_INSPECTOR
            ) && filter.filter_disabled.is_none();
            if tls_inspector {
                inspects_tls = true;
            } else {
                r.refuse(format!("listener_filters[{i}]"), "only the TLS inspector");
            }
        }
        let chains = filter_chains
            .iter()
            .enumerate()
            .filter_map(|(i, c)| filter_chain(c, &format!("filter_chains[{i}]"), &mut r))
            .collect();
        r.finish(
            format!("Listener {name}"),
            Listener {
                name: name.clone(),
                address,
                chains,
                inspects_tls,
            },
        )
    }
}

fn filter_chain(chain: &XdsFilterChain, here: &str, r: &mut Refusals) -> Option<FilterChain> {
    let supported = XdsFilterChain {
        filter_chain_match: chain.filter_chain_match.clone(),
        filters: chain.filters.clone(),
        transport_socket: chain.transport_socket.clone(),
        name: chain.name.clone(),
        ..Default::default()
    };
    if *chain != supported {
        r.refuse(
            here,
            "only filter_chain_match, filters and transport_socket",
        );
    }
    let tls_only = chain.filter_chain_match.as_ref().and_then(|m| {
        let only_protocol = FilterChainMatch {
            transport_protocol: m.transport_protocol.clone(),
            ..Default::default()
        };
        if *m != only_protocol {
            r.refuse(
                at(here, "filter_chain_match"),
                "only transport_protocol (raw-TCP relays by ALPN are not supported yet)",
            );
        }
        match m.transport_protocol.as_str() {
            "" => None,
            "tls" => Some(true),
            "raw_buffer" => Some(false),
            other => {
                r.refuse(
                    at(here, "filter_chain_match.transport_protocol"),
                    format!("{other:?} is not supported"),
                );
                None
            }
        }
    });
    let tls = chain
        .transport_socket
        .as_ref()
        .and_then(|socket| downstream_tls(socket, &at(here, "transport_socket"), r));
    let [filter] = chain.filters.as_slice() else {
        r.refuse(
            at(here, "filters"),
            "only one network filter, the HTTP connection manager",
        );
        return None;
    };
    let filter_at = format!("{here}.filters[0]");
    let hcm = match (&filter.name[..], &filter.config_type) {
        (HCM, Some(FilterConfig::TypedConfig(any))) => {
            HttpConnectionManager::decode(any.value.as_slice()).ok()
        }
        _ => None,
    };
    let Some(hcm) = hcm else {
        r.refuse(
            &filter_at,
            "only the HTTP connection manager (TCP relays are not supported yet)",
        );
        return None;
    };
    let http = http_manager(&hcm, &filter_at, r);
    Some(FilterChain {
        tls_only,
        tls,
        http,
    })
}

fn downstream_tls(
    socket: &envoy_types::pb::envoy::config::core::v3::TransportSocket,
    here: &str,
    r: &mut Refusals,
) -> Option<DownstreamTls> {
    let context = match &socket.config_type {
        Some(SocketConfig::TypedConfig(any)) if socket.name == "envoy.transport_sockets.tls" => {
            DownstreamTlsContext::decode(any.value.as_slice()).ok()
        }
        _ => None,
    };
    let Some(context) = context else {
        r.refuse(here, "only TLS (a DownstreamTlsContext)");
        return None;
    };
    let supported = DownstreamTlsContext {
        common_tls_context: context.common_tls_context.clone(),
        require_client_certificate: context.require_client_certificate,
        ..Default::default()
    };
    if context != supported {
        r.refuse(
            here,
            "only common_tls_context and require_client_certificate",
        );
    }
    if !context.require_client_certificate.is_some_and(|v| v.value) {
        r.refuse(
            at(here, "require_client_certificate"),
            "the mesh's TLS requires the client's certificate",
        );
    }
    let common = common_tls(
        context.common_tls_context.as_ref(),
        &at(here, "common_tls_context"),
        r,
    )?;
    if !common.alpn.is_empty() {
        r.refuse(
            at(here, "common_tls_context.alpn_protocols"),
            "not supported on listeners",
        );
    }
    Some(DownstreamTls {
        certificate: common.certificate,
        trust: common.trust,
        peers: common.peers,
    })
}

#[allow(deprecated)]
fn http_manager(hcm: &HttpConnectionManager, here: &str, r: &mut Refusals) -> HttpManager {
    let HttpConnectionManager {
        codec_type,
        stat_prefix,
        http_filters,
        add_user_agent,
        tracing,
        common_http_protocol_options,
        http1_safe_max_connection_duration,
        http_protocol_options,
        http2_protocol_options,
        http3_protocol_options,
        server_name,
        server_header_transformation,
        scheme_header_transformation,
        max_request_headers_kb,
        stream_idle_timeout,
        stream_flush_timeout,
        request_timeout,
        request_headers_timeout,
        drain_timeout,
        drain_timeout_jitter,
        delayed_close_timeout,
        access_log,
        access_log_flush_interval,
        flush_access_log_on_new_request,
        access_log_options,
        use_remote_address,
        xff_num_trusted_hops,
        original_ip_detection_extensions,
        early_header_mutation_extensions,
        internal_address_config,
        skip_xff_append,
        via,
        generate_request_id,
        preserve_external_request_id,
        always_set_request_id_in_response,
        forward_client_cert_details,
        set_current_client_cert_details,
        forward_client_cert_matcher,
        proxy_100_continue,
        represent_ipv4_remote_address_as_ipv4_mapped_ipv6,
        upgrade_configs,
        normalize_path,
        merge_slashes,
        path_with_escaped_slashes_action,
        request_id_extension,
        local_reply_config,
        strip_matching_host_port,
        stream_error_on_invalid_http_message,
        path_normalization_options,
        strip_trailing_host_dot,
        proxy_status_config,
        typed_header_validation_config,
        append_x_forwarded_port,
        append_local_overload,
        add_proxy_protocol_connection_state,
        forward_proto_config,
        route_specifier,
        strip_port_mode,
    } = hcm;
    let field = |name: &str| at(here, name);
    for (name, set) in [
        ("add_user_agent", *add_user_agent != Default::default()),
        ("tracing (not supported yet)", tracing.is_some()),
        (
            "common_http_protocol_options",
            common_http_protocol_options.is_some(),
        ),
        (
            "http1_safe_max_connection_duration",
            *http1_safe_max_connection_duration,
        ),
        ("http_protocol_options", http_protocol_options.is_some()),
        ("http2_protocol_options", http2_protocol_options.is_some()),
        ("http3_protocol_options", http3_protocol_options.is_some()),
        (
            "server_header_transformation",
            *server_header_transformation != 0,
        ),
        (
            "scheme_header_transformation",
            scheme_header_transformation.is_some(),
        ),
        ("max_request_headers_kb", max_request_headers_kb.is_some()),
        ("stream_idle_timeout", stream_idle_timeout.is_some()),
        ("stream_flush_timeout", stream_flush_timeout.is_some()),
        ("request_timeout", request_timeout.is_some()),
        ("request_headers_timeout", request_headers_timeout.is_some()),
        ("drain_timeout", drain_timeout.is_some()),
        ("drain_timeout_jitter", drain_timeout_jitter.is_some()),
        ("delayed_close_timeout", delayed_close_timeout.is_some()),
        (
            "access_log_flush_interval",
            access_log_flush_interval.is_some(),
        ),
        (
            "flush_access_log_on_new_request",
            *flush_access_log_on_new_request,
        ),
        ("access_log_options", access_log_options.is_some()),
        ("use_remote_address", use_remote_address.is_some()),
        ("xff_num_trusted_hops", *xff_num_trusted_hops != 0),
        (
            "original_ip_detection_extensions",
            !original_ip_detection_extensions.is_empty(),
        ),
        (
            "early_header_mutation_extensions",
            !early_header_mutation_extensions.is_empty(),
        ),
        ("internal_address_config", internal_address_config.is_some()),
        ("skip_xff_append", *skip_xff_append),
        ("via", !via.is_empty()),
        ("generate_request_id", generate_request_id.is_some()),
        (
            "preserve_external_request_id",
            *preserve_external_request_id,
        ),
        (
            "always_set_request_id_in_response",
            *always_set_request_id_in_response,
        ),
        (
            "forward_client_cert_matcher",
            forward_client_cert_matcher.is_some(),
        ),
        ("proxy_100_continue", *proxy_100_continue),
        (
            "represent_ipv4_remote_address_as_ipv4_mapped_ipv6",
            *represent_ipv4_remote_address_as_ipv4_mapped_ipv6,
        ),
        ("upgrade_configs", !upgrade_configs.is_empty()),
        ("normalize_path", normalize_path.is_some()),
        ("merge_slashes", *merge_slashes),
        (
            "path_with_escaped_slashes_action",
            *path_with_escaped_slashes_action != 0,
        ),
        ("request_id_extension", request_id_extension.is_some()),
        ("strip_matching_host_port", *strip_matching_host_port),
        (
            "stream_error_on_invalid_http_message",
            stream_error_on_invalid_http_message.is_some(),
        ),
        (
            "path_normalization_options",
            path_normalization_options.is_some(),
        ),
        ("strip_trailing_host_dot", *strip_trailing_host_dot),
        ("proxy_status_config", proxy_status_config.is_some()),
        (
            "typed_header_validation_config",
            typed_header_validation_config.is_some(),
        ),
        ("append_x_forwarded_port", *append_x_forwarded_port),
        ("append_local_overload", *append_local_overload),
        (
            "add_proxy_protocol_connection_state",
            add_proxy_protocol_connection_state.is_some(),
        ),
        ("forward_proto_config", forward_proto_config.is_some()),
    ] {
        if set {
            let (name, why) = name
                .split_once(" (")
                .map_or((name, "not supported by weft-proxy"), |(n, w)| {
                    (n, w.trim_end_matches(')'))
                });
            r.refuse(field(name), why);
        }
    }
    if *codec_type != CodecType::Auto as i32 {
        r.refuse(
            field("codec_type"),
            "only AUTO (HTTP/1.1 or h2c, as the client speaks)",
        );
    }
    if !matches!(
        strip_port_mode,
        None | Some(StripPortMode::StripAnyHostPort(true))
    ) {
        r.refuse(field("strip_port_mode"), "only strip_any_host_port");
    }
    let mut inline_routes = None;
    let route_table = match route_specifier {
        Some(RouteSpecifier::RouteConfig(inline)) => match RouteTable::try_from(inline) {
            Ok(table) => {
                let name = table.name.clone();
                inline_routes = Some(std::sync::Arc::new(table));
                name
            }
            Err(refused) => {
                for problem in refused.problems {
                    r.refuse(field("route_config"), problem);
                }
                String::new()
            }
        },
        Some(RouteSpecifier::Rds(rds))
            if matches!(
                rds.config_source
                    .as_ref()
                    .and_then(|c| c.config_source_specifier.as_ref()),
                Some(ConfigSourceSpecifier::Ads(_))
            ) =>
        {
            rds.route_config_name.clone()
        }
        _ => {
            r.refuse(
                field("route_specifier"),
                "only RDS over the ADS stream, or a route_config",
            );
            String::new()
        }
    };
    let forward_caller = match ForwardClientCertDetails::try_from(*forward_client_cert_details) {
        Ok(ForwardClientCertDetails::Sanitize) => false,
        Ok(ForwardClientCertDetails::SanitizeSet) => {
            let uri_only = SetCurrentClientCertDetails {
                uri: true,
                ..Default::default()
            };
            if set_current_client_cert_details.as_ref() != Some(&uri_only) {
                r.refuse(field("set_current_client_cert_details"), "only uri");
            }
            true
        }
        _ => {
            r.refuse(
                field("forward_client_cert_details"),
                "only SANITIZE and SANITIZE_SET",
            );
            false
        }
    };
    if !forward_caller {
        r.unset(
            &field("set_current_client_cert_details"),
            set_current_client_cert_details,
        );
    }
    let token_failures_are_401 = match local_reply_config {
        None => false,
        Some(config) if token_failure_replies(config) => true,
        Some(_) => {
            r.refuse(
                field("local_reply_config"),
                "only the mapping of token failures to 401 weft makes",
            );
            false
        }
    };
    let filters: Vec<HttpFilter> = http_filters
        .iter()
        .enumerate()
        .filter_map(|(i, f)| http_filter(f, &format!("{here}.http_filters[{i}]"), r))
        .collect();
    let is_router = |f: &HttpFilter| matches!(f, HttpFilter::Router { .. });
    if !filters.last().is_some_and(is_router)
        || filters.iter().filter(|f| is_router(f)).count() != 1
    {
        r.refuse(
            field("http_filters"),
            "the router must be the last filter, and only there",
        );
    }
    let access_logs = access_log
        .iter()
        .enumerate()
        .filter_map(|(i, log)| http::access_log(log, &format!("{here}.access_log[{i}]"), r))
        .collect();
    // Envoy's own name when none is given.
    let server_name = if server_name.is_empty() {
        "envoy"
    } else {
        server_name
    };
    let server_name = ::http::HeaderValue::from_str(server_name).unwrap_or_else(|_| {
        r.refuse(field("server_name"), "not a valid header value");
        ::http::HeaderValue::from_static("envoy")
    });
    HttpManager {
        stat_prefix: stat_prefix.clone(),
        route_table,
        inline_routes,
        filters,
        access_logs,
        forward_caller,
        token_failures_are_401,
        server_name,
    }
}

//! A gateway's listeners → Envoy `Listener` (LDS): per port, a filter
//! chain per TLS server chosen by SNI (its certificate from the gateway's
//! own files over SDS), or one plain-HTTP chain; each an HTTP connection
//! manager over its route table with token checks, authorization, CORS
//! and an access log.

use envoy_types::pb::envoy::config::core::v3::TransportSocket;
use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType as TransportSocketConfig;
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
use envoy_types::pb::envoy::config::listener::v3::{
    Filter, FilterChain, FilterChainMatch, Listener as XdsListener,
};
use envoy_types::pb::envoy::extensions::filters::http::cors::v3::Cors;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType as HttpFilterConfig;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::{
    ForwardClientCertDetails, SetCurrentClientCertDetails,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::ValidationContextType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CommonTlsContext, DownstreamTlsContext,
};
use envoy_types::pb::google::protobuf::BoolValue;
use envoy_types::util::pack_any;
use weft_agent::sds;

use super::convert::socket;
use super::jwt::scoped_jwt_filters;
use super::listener::{http_connection_manager, tls_inspector};
use super::ratelimit::local_rate_limit_filter;
use super::rbac::authorization_filters;
use super::route::CORS_FILTER;
use super::{
    AuthService, GatewayListener, HttpChain, Mtls, RateLimitService, ServerTls, Telemetry,
};

impl ServerTls {
    fn downstream(&self) -> TransportSocket {
        let mutual = self.client_ca.is_some();
        let context = DownstreamTlsContext {
            common_tls_context: Some(CommonTlsContext {
                tls_certificate_sds_secret_configs: vec![sds::secret_config(
                    &sds::server_certificate(&self.certificate),
                )],
                validation_context_type: self.client_ca.as_ref().map(|ca| {
                    ValidationContextType::ValidationContextSdsSecretConfig(sds::secret_config(
                        &sds::client_ca(ca),
                    ))
                }),
                alpn_protocols: vec!["h2".into(), "http/1.1".into()],
                ..Default::default()
            }),
            require_client_certificate: mutual.then_some(BoolValue { value: true }),
            ..Default::default()
        };
        TransportSocket {
            name: "envoy.transport_sockets.tls".into(),
            config_type: Some(TransportSocketConfig::TypedConfig(pack_any(context))),
        }
    }
}

impl HttpChain {
    fn to_xds(&self, telemetry: Option<&Telemetry>) -> FilterChain {
        let HttpChain {
            name,
            tls,
            mesh,
            route_table,
            jwt,
            rate_limit_service,
            auth_service,
        } = self;
        // A browser's preflight is answered before tokens and rules are
        // asked for: it carries neither.
        let cors = HttpFilter {
            name: CORS_FILTER.into(),
            config_type: Some(HttpFilterConfig::TypedConfig(pack_any(Cors::default()))),
            ..Default::default()
        };
        // Sign-in first: a browser without a session is sent to its
        // provider before tokens, rules or limits are asked for.
        let filters: Vec<HttpFilter> = std::iter::once(cors)
            .chain(auth_service.as_ref().map(AuthService::filter))
            .chain(
                (!jwt.is_empty())
                    .then(|| scoped_jwt_filters(jwt))
                    .into_iter()
                    .flatten(),
            )
            .chain(authorization_filters())
            .chain([local_rate_limit_filter()])
            .chain(rate_limit_service.as_ref().map(RateLimitService::filter))
            .collect();
        let mut hcm =
            http_connection_manager(name, route_table, filters, !jwt.is_empty(), telemetry);
        // The client's address is the connection's: what it claims in
        // x-forwarded-for is kept for the services but never trusted.
        hcm.use_remote_address = Some(BoolValue { value: true });
        if auth_service.is_some() {
            // The Host loses its port on the way in (`strip_any_host_port`);
            // sign-in builds the browser's callback address with it.
            hcm.append_x_forwarded_port = true;
        }
        if mesh.is_some() {
            // The caller's SPIFFE ID, as this chain's mutual TLS verified
            // it, replaces whatever the caller sent: egress routes match
            // on it.
            hcm.forward_client_cert_details = ForwardClientCertDetails::SanitizeSet as i32;
            hcm.set_current_client_cert_details = Some(SetCurrentClientCertDetails {
                uri: true,
                ..Default::default()
            });
        }
        FilterChain {
            filter_chain_match: tls.as_ref().map(|tls| FilterChainMatch {
                server_names: tls.server_names.clone(),
                transport_protocol: "tls".into(),
                ..Default::default()
            }),
            filters: vec![Filter {
                name: "envoy.filters.network.http_connection_manager".into(),
                config_type: Some(ConfigType::TypedConfig(pack_any(hcm))),
            }],
            transport_socket: tls
                .as_ref()
                .map(ServerTls::downstream)
                .or_else(|| mesh.as_ref().map(Mtls::downstream)),
            ..Default::default()
        }
    }
}

impl GatewayListener {
    pub(super) fn to_xds(&self) -> XdsListener {
        let tls = self.chains.iter().any(|c| c.tls.is_some());
        XdsListener {
            name: self.name.clone(),
            address: Some(socket(&self.address)),
            filter_chains: self
                .chains
                .iter()
                .map(|chain| chain.to_xds(self.telemetry.as_ref()))
                .collect(),
            // SNI picks the chain.
            listener_filters: if tls {
                vec![tls_inspector()]
            } else {
                Vec::new()
            },
            ..Default::default()
        }
    }
}

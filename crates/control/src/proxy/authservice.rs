//! Browser sign-in → Envoy's external authorization filter asking the
//! sign-in service (`weft authservice`) over gRPC, on gateway chains with
//! such servers; each virtual host names its server in the check's
//! context (or turns the check off), and the service's resource lists
//! every server with sign-in.

use envoy_types::pb::envoy::config::core::v3::grpc_service::{EnvoyGrpc, TargetSpecifier};
use envoy_types::pb::envoy::config::core::v3::{ApiVersion, GrpcService};
use envoy_types::pb::envoy::extensions::filters::http::ext_authz::v3::ext_authz::Services;
use envoy_types::pb::envoy::extensions::filters::http::ext_authz::v3::ext_authz_per_route::Override;
use envoy_types::pb::envoy::extensions::filters::http::ext_authz::v3::{
    CheckSettings, ExtAuthz, ExtAuthzPerRoute,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType as HttpFilterConfig;
use envoy_types::pb::envoy::r#type::v3::{HttpStatus, StatusCode};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::util::pack_any;
use weft_xds::authservice::{LoginServer as XdsLoginServer, LoginServers, SERVER_KEY};

use super::convert::duration;
use super::{AuthService, LoginCheck, LoginServer};

pub(super) const EXT_AUTHZ: &str = "envoy.filters.http.ext_authz";

impl AuthService {
    pub(super) fn filter(&self) -> HttpFilter {
        HttpFilter {
            name: EXT_AUTHZ.into(),
            config_type: Some(HttpFilterConfig::TypedConfig(pack_any(ExtAuthz {
                services: Some(Services::GrpcService(GrpcService {
                    target_specifier: Some(TargetSpecifier::EnvoyGrpc(EnvoyGrpc {
                        cluster_name: self.cluster.clone(),
                        // Else the cluster's name, whose `|` no HTTP/2
                        // server takes in an authority.
                        authority: weft_identity::AUTHSERVICE_ACCOUNT.into(),
                        ..Default::default()
                    })),
                    timeout: Some(duration(self.timeout_ms)),
                    ..Default::default()
                })),
                transport_api_version: ApiVersion::V3 as i32,
                // No answer is no session: refuse, never let through.
                failure_mode_allow: false,
                status_on_error: Some(HttpStatus {
                    code: StatusCode::ServiceUnavailable as i32,
                }),
                ..Default::default()
            }))),
            ..Default::default()
        }
    }
}

impl LoginCheck {
    pub(super) fn per_filter_config(&self) -> Any {
        let r#override = match self {
            LoginCheck::Skip => Override::Disabled(true),
            LoginCheck::Server(id) => Override::CheckSettings(CheckSettings {
                context_extensions: [(SERVER_KEY.to_string(), id.clone())].into(),
                ..Default::default()
            }),
        };
        pack_any(ExtAuthzPerRoute {
            r#override: Some(r#override),
        })
    }
}

/// The sign-in service's resource.
pub(super) fn servers_to_xds(servers: &[LoginServer]) -> LoginServers {
    LoginServers {
        servers: servers
            .iter()
            .map(|s| {
                let endpoints = s.endpoints.clone().unwrap_or_default();
                XdsLoginServer {
                    id: s.id.clone(),
                    issuer: s.issuer.clone(),
                    authorization_endpoint: endpoints.authorization,
                    token_endpoint: endpoints.token,
                    jwks_uri: endpoints.jwks,
                    end_session_endpoint: endpoints.end_session.unwrap_or_default(),
                    client_id: s.client_id.clone(),
                    client_secret_name: s.client_secret_name.clone(),
                    callback_path: s.callback_path.clone(),
                    scopes: s.scopes.clone(),
                    logout_path: s.logout_path.clone().unwrap_or_default(),
                    post_logout_redirect: s.post_logout_redirect.clone().unwrap_or_default(),
                    id_token_header: s.id_token_header.clone().unwrap_or_default(),
                    access_token_header: s.access_token_header.clone().unwrap_or_default(),
                    idle_timeout_seconds: s.idle_timeout_s,
                    absolute_timeout_seconds: s.absolute_timeout_s,
                    redis: s.redis,
                }
            })
            .collect(),
    }
}

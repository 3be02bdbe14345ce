//! Browser sign-in on gateway servers (`authentication.oidc`): the
//! server each virtual host checks sessions for, the chains that ask the
//! sign-in service, and every server with sign-in as the service runs it.

use weft_api::gateway::HttpServer;

use super::gateway::server_id;
use super::parse::Config;
use super::resilience::millis;
use crate::proxy::{AuthService, LoginCheck, LoginServer, ProviderEndpoints, RouteTable};

use super::addon::AUTH_SERVICE;

/// How long a gateway waits for the sign-in service: a sign-in's
/// callback waits for the provider's token endpoint (and JWKS).
const CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The check a server's virtual host asks for.
pub(super) fn login_check(gateway_path: &str, spec: &HttpServer) -> Option<LoginCheck> {
    spec.oidc()
        .map(|_| LoginCheck::Server(server_id(gateway_path, &spec.name)))
}

/// Turns the sign-in check on for a chain whose route table has a server
/// with sign-in, and off for the table's other virtual hosts.
pub(super) fn auth_service_for(table: &mut RouteTable) -> Option<AuthService> {
    let asks = table
        .virtual_hosts
        .iter()
        .any(|v| matches!(v.login, Some(LoginCheck::Server(_))));
    if !asks {
        return None;
    }
    for vhost in &mut table.virtual_hosts {
        vhost.login.get_or_insert(LoginCheck::Skip);
    }
    Some(AuthService {
        cluster: AUTH_SERVICE.cluster.into(),
        timeout_ms: millis(CHECK_TIMEOUT),
    })
}

/// Every server with sign-in of the cluster's Gateways.
pub(super) fn cluster_login_servers(config: &Config) -> Vec<LoginServer> {
    let mut servers: Vec<LoginServer> = config
        .gateways
        .iter()
        .flat_map(|g| {
            g.spec.http.iter().filter_map(|server| {
                let oidc = server.oidc()?;
                Some(LoginServer {
                    id: server_id(&g.path, &server.name),
                    issuer: oidc.issuer.clone(),
                    endpoints: oidc.endpoints.as_ref().map(|e| ProviderEndpoints {
                        authorization: e.authorization.clone(),
                        token: e.token.clone(),
                        jwks: e.jwks.clone(),
                        end_session: e.end_session.clone(),
                    }),
                    client_id: oidc.client_id.clone(),
                    client_secret_name: oidc.client_secret.clone(),
                    callback_path: oidc.callback_path().to_string(),
                    scopes: oidc.scopes(),
                    logout_path: oidc.logout_path.clone(),
                    post_logout_redirect: oidc.post_logout_redirect.clone(),
                    id_token_header: oidc.forward.id_token.clone(),
                    access_token_header: oidc.forward.access_token.clone(),
                    idle_timeout_s: oidc.idle_timeout().as_secs() as u32,
                    absolute_timeout_s: oidc.absolute_timeout().as_secs() as u32,
                    redis: oidc.session.store == weft_api::oidc::SessionStore::Redis,
                })
            })
        })
        .collect();
    servers.sort();
    servers
}

//! OIDC login on a Gateway's http server (`authentication.oidc`): browsers
//! without a session are sent to the provider to sign in (authorization
//! code flow with PKCE) and come back with a session cookie; `weft
//! authservice` keeps the tokens and passes them to the app in headers.

use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;

use crate::problems::{Problems, check_dns_label, field, index};

pub const DEFAULT_CALLBACK_PATH: &str = "/oauth2/callback";
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30 * 60);
pub const DEFAULT_ABSOLUTE_TIMEOUT: Duration = Duration::from_secs(8 * 3600);

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Oidc {
    /// The provider's issuer URL; its endpoints come from
    /// `ISSUER/.well-known/openid-configuration` unless given.
    pub issuer: String,
    /// The provider's endpoints, when it publishes no discovery document.
    pub endpoints: Option<OidcEndpoints>,
    pub client_id: String,
    /// The name of a file in `weft authservice --secrets` that holds the
    /// client secret: the secret never enters weft's store.
    pub client_secret: String,
    /// Where the provider sends the browser back [default: /oauth2/callback].
    pub callback_path: Option<String>,
    /// Scopes asked for; `openid` is always among them.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// A path that signs the user out (ends the session, and at the
    /// provider too when it can); none: no such path.
    pub logout_path: Option<String>,
    /// Where the browser goes after signing out [default: a page saying so].
    pub post_logout_redirect: Option<String>,
    /// Which tokens the app gets, in which request headers.
    #[serde(default)]
    pub forward: OidcForward,
    #[serde(default)]
    pub session: OidcSession,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OidcEndpoints {
    pub authorization: String,
    pub token: String,
    pub jwks: String,
    pub end_session: Option<String>,
}

/// Header names for the tokens; none: not passed on.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OidcForward {
    /// The ID token, as it is (e.g. `x-id-token`).
    pub id_token: Option<String>,
    /// The access token, as `Bearer TOKEN` (e.g. `authorization`).
    pub access_token: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OidcSession {
    /// A session unused this long ends [default: 30m].
    pub idle_timeout: Option<String>,
    /// A session ends this long after sign-in, used or not [default: 8h].
    pub absolute_timeout: Option<String>,
    /// Where sessions live [default: memory].
    #[serde(default)]
    pub store: SessionStore,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SessionStore {
    /// In the authservice's memory: lost when it restarts, not shared by
    /// replicas.
    #[default]
    Memory,
    /// In the authservice's Redis: kept across restarts, shared by
    /// replicas.
    Redis,
}

impl SessionStore {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionStore::Memory => "memory",
            SessionStore::Redis => "redis",
        }
    }
}

fn duration_or(value: &Option<String>, default: Duration) -> Duration {
    value
        .as_deref()
        .and_then(|v| humantime::parse_duration(v).ok())
        .unwrap_or(default)
}

impl Oidc {
    pub fn callback_path(&self) -> &str {
        self.callback_path
            .as_deref()
            .unwrap_or(DEFAULT_CALLBACK_PATH)
    }

    /// The scopes asked for: `openid`, then the others in order.
    pub fn scopes(&self) -> Vec<String> {
        std::iter::once("openid".to_string())
            .chain(self.scopes.iter().filter(|s| *s != "openid").cloned())
            .collect()
    }

    pub fn idle_timeout(&self) -> Duration {
        duration_or(&self.session.idle_timeout, DEFAULT_IDLE_TIMEOUT)
    }

    pub fn absolute_timeout(&self) -> Duration {
        duration_or(&self.session.absolute_timeout, DEFAULT_ABSOLUTE_TIMEOUT)
    }

    pub(crate) fn check(&self, at: &str, problems: &mut Problems) {
        check_provider_url(&self.issuer, &field(at, "issuer"), problems);
        if let Some(endpoints) = &self.endpoints {
            let here = field(at, "endpoints");
            for (name, url) in [
                ("authorization", Some(&endpoints.authorization)),
                ("token", Some(&endpoints.token)),
                ("jwks", Some(&endpoints.jwks)),
                ("endSession", endpoints.end_session.as_ref()),
            ] {
                if let Some(url) = url {
                    check_provider_url(url, &field(&here, name), problems);
                }
            }
        }
        if self.client_id.trim().is_empty() {
            problems.add(field(at, "clientId"), "must not be empty");
        }
        if let Err(e) = check_dns_label(&self.client_secret) {
            problems.add(
                field(at, "clientSecret"),
                format!("{e}: it names a file in `weft authservice --secrets`, not the secret"),
            );
        }
        let mut paths = Vec::new();
        for (name, path) in [
            ("callbackPath", self.callback_path.as_deref()),
            ("logoutPath", self.logout_path.as_deref()),
        ] {
            let Some(path) = path else { continue };
            if !path.starts_with('/') || path.contains(['?', '#']) {
                problems.add(
                    field(at, name),
                    format!("{path:?} must be a path like /oauth2/callback, without a query"),
                );
            }
            paths.push(path);
        }
        if paths.len() == 2 && paths[0] == paths[1] {
            problems.add(field(at, "logoutPath"), "must differ from callbackPath");
        }
        if self.logout_path.is_none() && self.post_logout_redirect.is_some() {
            problems.add(
                field(at, "postLogoutRedirect"),
                "applies only with a logoutPath",
            );
        }
        if let Some(target) = &self.post_logout_redirect {
            let ok = target.starts_with('/') && !target.starts_with("//")
                || url::Url::parse(target).is_ok_and(|u| matches!(u.scheme(), "https" | "http"));
            if !ok {
                problems.add(
                    field(at, "postLogoutRedirect"),
                    format!("{target:?} is not a path or an http(s) URL"),
                );
            }
        }
        for (i, scope) in self.scopes.iter().enumerate() {
            if scope.is_empty() || scope.contains(char::is_whitespace) {
                problems.add(
                    index(&field(at, "scopes"), i),
                    format!("{scope:?} is not a scope"),
                );
            }
        }
        let forward_at = field(at, "forward");
        for (name, header) in [
            ("idToken", &self.forward.id_token),
            ("accessToken", &self.forward.access_token),
        ] {
            if let Some(header) = header {
                crate::traffic::check_header_name(header, &field(&forward_at, name), problems);
            }
        }
        if let (Some(a), Some(b)) = (&self.forward.id_token, &self.forward.access_token)
            && a == b
        {
            problems.add(
                field(&forward_at, "accessToken"),
                "must differ from idToken's header",
            );
        }
        let session_at = field(at, "session");
        for (name, value) in [
            ("idleTimeout", &self.session.idle_timeout),
            ("absoluteTimeout", &self.session.absolute_timeout),
        ] {
            if let Some(value) = value {
                crate::traffic::duration(value, &field(&session_at, name), problems);
            }
        }
        if self.idle_timeout() > self.absolute_timeout() {
            problems.add(
                field(&session_at, "idleTimeout"),
                "must not be longer than absoluteTimeout",
            );
        }
    }
}

/// A provider's URL: HTTPS, or plain HTTP to this host only (a provider
/// beside the authservice), since tokens and codes travel on it.
fn check_provider_url(url: &str, at: &str, problems: &mut Problems) {
    let parsed = match url::Url::parse(url) {
        Ok(parsed) => parsed,
        Err(e) => return problems.add(at, format!("{url:?} is not a URL: {e}")),
    };
    let loopback = match parsed.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    match parsed.scheme() {
        "https" => {}
        "http" if loopback => {}
        _ => problems.add(
            at,
            format!("{url:?} must be https (plain http only to this host: codes and tokens travel on it)"),
        ),
    }
}

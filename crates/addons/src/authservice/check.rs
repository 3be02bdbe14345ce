//! One check: what the gateway should do with a request to a server with
//! sign-in. A request with a live session goes on with the tokens in the
//! headers the server names (refreshed first when they have expired); a
//! browser without one is sent to the provider with a new login state
//! (PKCE, state, nonce); the provider's callback becomes a session and a
//! cookie; the logout path ends it. Every failure ends in a page or a
//! status, never in a redirect that could loop.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use weft_xds::authservice::LoginServer;

use super::provider::{Endpoints, ProviderError, Tokens};
use super::store::{Kind, Store, StoreError, key};
use super::{Outcome, Service};

/// The session cookie: an opaque id, only ever sent over HTTPS to this
/// host, never readable by scripts.
pub const SESSION_COOKIE: &str = "__Host-weft-session";
/// The sign-in under way: its state, so the callback is this browser's.
pub const LOGIN_COOKIE: &str = "__Host-weft-login";
/// How long a sign-in may take.
const LOGIN_TTL: Duration = Duration::from_secs(600);
/// Tokens this close to expiry are refreshed first.
const REFRESH_AHEAD_S: u64 = 5;

/// The request, as the gateway describes it.
pub struct Request<'r> {
    pub method: &'r str,
    pub scheme: &'r str,
    /// Without its port (the gateway strips it).
    pub host: &'r str,
    /// The port the client connected to (`x-forwarded-port`).
    pub port: Option<&'r str>,
    /// With the query.
    pub path: &'r str,
    pub cookie: Option<&'r str>,
    pub accept: Option<&'r str>,
}

/// What the gateway does.
#[derive(Debug)]
pub enum Decision {
    /// Forward, with these request headers set.
    Allow(Vec<(String, String)>),
    /// Answer the browser: a status, headers, a body.
    Answer {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
}

#[derive(Serialize, Deserialize)]
struct Pending {
    server: String,
    verifier: String,
    nonce: String,
    /// Path and query to return to (never another host).
    return_to: String,
}

#[derive(Serialize, Deserialize)]
struct Session {
    server: String,
    subject: String,
    id_token: String,
    access_token: String,
    #[serde(default)]
    refresh_token: Option<String>,
    /// Seconds since the epoch: when the tokens expire.
    expires_at: u64,
    /// When the session ends, used or not.
    ends_at: u64,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

fn random() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

fn cookie<'c>(header: Option<&'c str>, name: &str) -> Option<&'c str> {
    header?
        .split(';')
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn set_cookie(name: &str, value: &str, max_age: u64) -> (String, String) {
    (
        "set-cookie".into(),
        format!("{name}={value}; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age={max_age}"),
    )
}

fn query(path: &str) -> Vec<(String, String)> {
    path.split_once('?')
        .map(|(_, q)| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default()
}

/// Where the browser reached the gateway: scheme, host and, unless the
/// scheme's own, port.
fn origin(request: &Request<'_>) -> String {
    let default = if request.scheme == "http" {
        "80"
    } else {
        "443"
    };
    match request.port.filter(|p| *p != default && !p.is_empty()) {
        Some(port) => format!("{}://{}:{port}", request.scheme, request.host),
        None => format!("{}://{}", request.scheme, request.host),
    }
}

fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A page for the browser, with a way back to the start.
fn page(status: u16, title: &str, text: &str, extra: Vec<(String, String)>) -> Decision {
    let body = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title></head>\
         <body><main><h1>{title}</h1><p>{}</p><p><a href=\"/\">Start again</a></p></main></body></html>\n",
        html_escape(text)
    );
    let mut headers = vec![
        (
            "content-type".to_string(),
            "text/html; charset=utf-8".to_string(),
        ),
        ("cache-control".to_string(), "no-store".to_string()),
    ];
    headers.extend(extra);
    Decision::Answer {
        status,
        headers,
        body,
    }
}

fn redirect(location: String, mut headers: Vec<(String, String)>) -> Decision {
    headers.push(("location".into(), location));
    headers.push(("cache-control".into(), "no-store".into()));
    Decision::Answer {
        status: 302,
        headers,
        body: String::new(),
    }
}

impl Service {
    pub(super) async fn decide(
        &self,
        server: &LoginServer,
        request: &Request<'_>,
    ) -> (Decision, Outcome) {
        let store = self.store(server);
        let path = request
            .path
            .split_once('?')
            .map_or(request.path, |(p, _)| p);
        let result = if path == server.callback_path {
            self.callback(server, &store, request).await
        } else if !server.logout_path.is_empty() && path == server.logout_path {
            self.logout(server, &store, request).await
        } else {
            self.use_session(server, &store, request).await
        };
        result.unwrap_or_else(|failure| failure.page())
    }

    async fn use_session(
        &self,
        server: &LoginServer,
        store: &Store<'_>,
        request: &Request<'_>,
    ) -> Result<(Decision, Outcome), Failure> {
        if let Some(id) = cookie(request.cookie, SESSION_COOKIE) {
            let session_key = key(Kind::Session, id);
            // Each use keeps the session another idle timeout (and it is
            // never used past its end).
            let idle = Duration::from_secs(u64::from(server.idle_timeout_seconds));
            let found = store.touch(&session_key, idle).await?;
            let session = found.and_then(|bytes| serde_json::from_slice::<Session>(&bytes).ok());
            if let Some(mut session) =
                session.filter(|s| s.server == server.id && s.ends_at > now())
            {
                let mut outcome = Outcome::Allowed;
                if session.expires_at <= now() + REFRESH_AHEAD_S {
                    match self.refresh(server, &mut session).await {
                        Ok(()) => {
                            outcome = Outcome::Refreshed;
                            let ttl = idle.min(Duration::from_secs(session.ends_at - now()));
                            let bytes = serde_json::to_vec(&session).unwrap_or_default();
                            store.put(session_key, bytes, ttl).await?;
                        }
                        // The provider down (or Redis): the session stays,
                        // for when it is back; the browser gets a page.
                        Err(
                            error @ (Failure::Provider(ProviderError::Unreachable(_))
                            | Failure::Store(_)
                            | Failure::Secret(_)),
                        ) => return Err(error),
                        Err(error) => {
                            tracing::info!(server = %server.id, %error, "the session's tokens expired and cannot be refreshed; signing in again");
                            store.delete(&session_key).await?;
                            return self.start(server, store, request).await;
                        }
                    }
                }
                let mut headers = Vec::new();
                if !server.id_token_header.is_empty() {
                    headers.push((server.id_token_header.clone(), session.id_token.clone()));
                }
                if !server.access_token_header.is_empty() {
                    headers.push((
                        server.access_token_header.clone(),
                        format!("Bearer {}", session.access_token),
                    ));
                }
                return Ok((Decision::Allow(headers), outcome));
            }
        }
        self.start(server, store, request).await
    }

    /// Sends a browser to the provider; anything else that comes without
    /// a session gets 401 (a script cannot follow a sign-in).
    async fn start(
        &self,
        server: &LoginServer,
        store: &Store<'_>,
        request: &Request<'_>,
    ) -> Result<(Decision, Outcome), Failure> {
        let navigates = matches!(request.method, "GET" | "HEAD")
            && request
                .accept
                .is_none_or(|a| a.contains("text/html") || a.contains("*/*"));
        if !navigates {
            let decision = Decision::Answer {
                status: 401,
                headers: vec![
                    ("content-type".into(), "application/json".into()),
                    ("cache-control".into(), "no-store".into()),
                ],
                body: "{\"error\":\"sign-in required: open this address in a browser\"}\n".into(),
            };
            return Ok((decision, Outcome::Unauthenticated));
        }
        let endpoints = self.providers.endpoints(server).await?;
        let (state, nonce, verifier) = (random(), random(), random());
        let pending = Pending {
            server: server.id.clone(),
            verifier: verifier.clone(),
            nonce: nonce.clone(),
            return_to: if request.path.starts_with('/') && !request.path.starts_with("//") {
                request.path.to_string()
            } else {
                "/".into()
            },
        };
        let bytes = serde_json::to_vec(&pending).unwrap_or_default();
        store
            .put(key(Kind::Login, &state), bytes, LOGIN_TTL)
            .await?;
        let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
        let scope = server.scopes.join(" ");
        let redirect_uri = self.redirect_uri(server, request);
        let mut location = url::Url::parse(&endpoints.authorization)
            .map_err(|e| Failure::Provider(ProviderError::Invalid(e.to_string())))?;
        location
            .query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &server.client_id)
            .append_pair("redirect_uri", &redirect_uri)
            .append_pair("scope", &scope)
            .append_pair("state", &state)
            .append_pair("nonce", &nonce)
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256");
        let cookie = set_cookie(LOGIN_COOKIE, &state, LOGIN_TTL.as_secs());
        Ok((
            redirect(location.into(), vec![cookie]),
            Outcome::SignInStarted,
        ))
    }

    fn redirect_uri(&self, server: &LoginServer, request: &Request<'_>) -> String {
        format!("{}{}", origin(request), server.callback_path)
    }

    async fn callback(
        &self,
        server: &LoginServer,
        store: &Store<'_>,
        request: &Request<'_>,
    ) -> Result<(Decision, Outcome), Failure> {
        let params = query(request.path);
        let param = |name: &str| {
            params
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        if let Some(error) = param("error") {
            let description = param("error_description").unwrap_or_default();
            return Err(Failure::Refused(format!(
                "The sign-in provider did not sign you in: {error} {description}"
            )));
        }
        let (Some(code), Some(state)) = (param("code"), param("state")) else {
            return Err(Failure::BadCallback(
                "The sign-in answer lacks its code or state.",
            ));
        };
        // The state must be this browser's, and unused.
        if cookie(request.cookie, LOGIN_COOKIE) != Some(state) {
            return Err(Failure::BadCallback(
                "This sign-in was not started in this browser, or it was changed on the way.",
            ));
        }
        let Some(bytes) = store.take(&key(Kind::Login, state)).await? else {
            return Err(Failure::BadCallback(
                "This sign-in has already been used, or it took too long.",
            ));
        };
        let pending: Pending = serde_json::from_slice(&bytes)
            .map_err(|_| Failure::BadCallback("This sign-in's record is unreadable."))?;
        if pending.server != server.id {
            return Err(Failure::BadCallback(
                "This sign-in was started for another site.",
            ));
        }
        let endpoints = self.providers.endpoints(server).await?;
        let secret = self.client_secret(server)?;
        let redirect_uri = self.redirect_uri(server, request);
        let tokens = self
            .providers
            .tokens(
                &endpoints,
                server,
                &secret,
                &[
                    ("grant_type", "authorization_code"),
                    ("code", code),
                    ("redirect_uri", &redirect_uri),
                    ("code_verifier", &pending.verifier),
                ],
            )
            .await?;
        let session = self
            .session(&endpoints, server, tokens, Some(&pending.nonce), None)
            .await?;
        let id = random();
        let lifetime = u64::from(server.absolute_timeout_seconds);
        let ttl = u64::from(server.idle_timeout_seconds).min(lifetime);
        let bytes = serde_json::to_vec(&session).unwrap_or_default();
        store
            .put(key(Kind::Session, &id), bytes, Duration::from_secs(ttl))
            .await?;
        tracing::info!(server = %server.id, subject = %session.subject, "signed in");
        let headers = vec![
            set_cookie(SESSION_COOKIE, &id, lifetime),
            set_cookie(LOGIN_COOKIE, "", 0),
        ];
        Ok((redirect(pending.return_to, headers), Outcome::SignedIn))
    }

    /// A session from the token endpoint's answer: the ID token checked
    /// (with the sign-in's nonce; on a refresh, against the last one's
    /// subject).
    async fn session(
        &self,
        endpoints: &Endpoints,
        server: &LoginServer,
        tokens: Tokens,
        nonce: Option<&str>,
        previous: Option<&Session>,
    ) -> Result<Session, Failure> {
        let id_token = match (tokens.id_token, previous) {
            (Some(token), _) => token,
            (None, Some(previous)) => previous.id_token.clone(),
            (None, None) => {
                return Err(Failure::Provider(ProviderError::Invalid(
                    "no ID token came with the tokens".into(),
                )));
            }
        };
        let claims = self
            .providers
            .verify(endpoints, server, &id_token, nonce)
            .await?;
        if let Some(previous) = previous
            && previous.subject != claims.sub
        {
            return Err(Failure::Provider(ProviderError::Invalid(
                "the refreshed ID token is another user's".into(),
            )));
        }
        let access_expires = tokens.expires_in.map_or(claims.exp, |s| now() + s);
        Ok(Session {
            server: server.id.clone(),
            subject: claims.sub,
            id_token,
            access_token: tokens.access_token,
            refresh_token: tokens
                .refresh_token
                .or_else(|| previous.and_then(|p| p.refresh_token.clone())),
            expires_at: access_expires.min(claims.exp),
            ends_at: previous.map_or(now() + u64::from(server.absolute_timeout_seconds), |p| {
                p.ends_at
            }),
        })
    }

    async fn refresh(&self, server: &LoginServer, session: &mut Session) -> Result<(), Failure> {
        let Some(refresh_token) = session.refresh_token.clone() else {
            return Err(Failure::Provider(ProviderError::Invalid(
                "the session has no refresh token".into(),
            )));
        };
        let endpoints = self.providers.endpoints(server).await?;
        let secret = self.client_secret(server)?;
        let tokens = self
            .providers
            .tokens(
                &endpoints,
                server,
                &secret,
                &[
                    ("grant_type", "refresh_token"),
                    ("refresh_token", &refresh_token),
                ],
            )
            .await?;
        *session = self
            .session(&endpoints, server, tokens, None, Some(session))
            .await?;
        Ok(())
    }

    async fn logout(
        &self,
        server: &LoginServer,
        store: &Store<'_>,
        request: &Request<'_>,
    ) -> Result<(Decision, Outcome), Failure> {
        let mut id_token = None;
        if let Some(id) = cookie(request.cookie, SESSION_COOKIE) {
            let session_key = key(Kind::Session, id);
            id_token = store
                .get(&session_key)
                .await?
                .and_then(|bytes| serde_json::from_slice::<Session>(&bytes).ok())
                .map(|s| s.id_token);
            store.delete(&session_key).await?;
        }
        let cleared = vec![set_cookie(SESSION_COOKIE, "", 0)];
        let after = match server.post_logout_redirect.as_str() {
            "" => None,
            relative if relative.starts_with('/') => Some(format!("{}{relative}", origin(request))),
            absolute => Some(absolute.to_string()),
        };
        // Signed out at the provider too, when it says how.
        let end_session = match self.providers.endpoints(server).await {
            Ok(endpoints) => endpoints.end_session,
            Err(error) => {
                tracing::warn!(server = %server.id, %error, "signed out here; the provider is unreachable, so not there");
                None
            }
        };
        let decision = match (end_session, after) {
            (Some(end), after) => match url::Url::parse(&end) {
                Ok(mut location) => {
                    {
                        let mut pairs = location.query_pairs_mut();
                        pairs.append_pair("client_id", &server.client_id);
                        if let Some(token) = &id_token {
                            pairs.append_pair("id_token_hint", token);
                        }
                        if let Some(after) = &after {
                            pairs.append_pair("post_logout_redirect_uri", after);
                        }
                    }
                    redirect(location.into(), cleared)
                }
                Err(_) => page(200, "Signed out", "You are signed out.", cleared),
            },
            (None, Some(after)) => redirect(after, cleared),
            (None, None) => page(200, "Signed out", "You are signed out.", cleared),
        };
        Ok((decision, Outcome::SignedOut))
    }

    fn client_secret(&self, server: &LoginServer) -> Result<String, Failure> {
        let path = self.secrets.join(&server.client_secret_name);
        std::fs::read_to_string(&path)
            .map(|s| s.trim().to_string())
            .map_err(|e| Failure::Secret(format!("{}: {e}", path.display())))
    }
}

/// Why a check ends in a page.
#[derive(Debug, thiserror::Error)]
pub(super) enum Failure {
    #[error("{0}")]
    Provider(#[from] ProviderError),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    BadCallback(&'static str),
    #[error("{0}")]
    Refused(String),
    #[error("the client secret cannot be read: {0}")]
    Secret(String),
}

impl Failure {
    fn page(self) -> (Decision, Outcome) {
        tracing::warn!(error = %self, "sign-in failed");
        let decision = match &self {
            Failure::Provider(ProviderError::Unreachable(_)) => page(
                503,
                "Sign-in unavailable",
                "The sign-in provider cannot be reached. Try again in a moment.",
                Vec::new(),
            ),
            Failure::Provider(ProviderError::Refused { .. }) => page(
                400,
                "Sign-in failed",
                "The sign-in provider refused to complete this sign-in (it may have been used already).",
                Vec::new(),
            ),
            Failure::Provider(ProviderError::Invalid(_)) => page(
                502,
                "Sign-in failed",
                "The sign-in provider's answer could not be verified.",
                Vec::new(),
            ),
            Failure::Store(_) | Failure::Secret(_) => page(
                503,
                "Sign-in unavailable",
                "Sessions cannot be checked right now. Try again in a moment.",
                Vec::new(),
            ),
            Failure::BadCallback(text) => page(400, "Sign-in failed", text, Vec::new()),
            Failure::Refused(text) => page(401, "Not signed in", text, Vec::new()),
        };
        (decision, Outcome::Refused)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_read_by_exact_name_and_set_for_this_host_only() {
        let header = Some("a=1; __Host-weft-session=abc; __Host-weft-sessionx=no");
        assert_eq!(cookie(header, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie(header, LOGIN_COOKIE), None);
        let (_, value) = set_cookie(SESSION_COOKIE, "v", 60);
        for part in ["Path=/", "Secure", "HttpOnly", "SameSite=Lax", "Max-Age=60"] {
            assert!(value.contains(part), "{value}");
        }
        assert!(
            !value.contains("Domain"),
            "a __Host- cookie names no domain"
        );
    }

    #[test]
    fn pages_escape_what_the_provider_sent() {
        let Decision::Answer { body, status, .. } =
            page(401, "t", "<script>alert(1)</script>", Vec::new())
        else {
            panic!()
        };
        assert_eq!(status, 401);
        assert!(!body.contains("<script>"));
    }
}

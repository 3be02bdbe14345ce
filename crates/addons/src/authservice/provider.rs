//! The OpenID providers: their endpoints (from discovery, kept an hour,
//! or as configured), their signing keys (kept, fetched again for a key
//! id not seen yet), the token endpoint (authorization code with PKCE,
//! refresh) and ID token validation.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use weft_xds::authservice::LoginServer;

/// How long a discovery document is kept.
const DISCOVERY_KEPT: Duration = Duration::from_secs(3600);
/// How long signing keys are kept, and how soon they may be fetched again
/// for a key id not among them.
const KEYS_KEPT: Duration = Duration::from_secs(3600);
const KEYS_REFETCH: Duration = Duration::from_secs(10);
/// Leeway for `exp`, `nbf` and `iat` against clock drift.
const LEEWAY_S: u64 = 60;

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("the provider is unreachable: {0}")]
    Unreachable(String),
    #[error("the provider refused: {error}{}", description.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Refused {
        error: String,
        description: Option<String>,
    },
    #[error("the provider's answer is unusable: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Deserialize)]
pub struct Endpoints {
    #[serde(rename = "authorization_endpoint")]
    pub authorization: String,
    #[serde(rename = "token_endpoint")]
    pub token: String,
    #[serde(rename = "jwks_uri")]
    pub jwks: String,
    #[serde(rename = "end_session_endpoint", default)]
    pub end_session: Option<String>,
    #[serde(default)]
    issuer: Option<String>,
}

/// What a token endpoint answers.
#[derive(Debug, Clone, Deserialize)]
pub struct Tokens {
    pub access_token: String,
    #[serde(default)]
    pub id_token: Option<String>,
    #[serde(default)]
    pub refresh_token: Option<String>,
    #[serde(default)]
    pub expires_in: Option<u64>,
}

/// The claims of an ID token weft looks at.
#[derive(Debug, Clone, Deserialize)]
pub struct IdClaims {
    pub sub: String,
    pub exp: u64,
    #[serde(default)]
    pub nonce: Option<String>,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: String,
    #[serde(default)]
    error_description: Option<String>,
}

pub struct Providers {
    http: reqwest::Client,
    discovered: Mutex<HashMap<String, (Endpoints, Instant)>>,
    keys: Mutex<HashMap<String, (JwkSet, Instant)>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Providers {
    pub fn new() -> Result<Providers, ProviderError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(4))
            .build()
            .map_err(|e| ProviderError::Unreachable(e.to_string()))?;
        Ok(Providers {
            http,
            discovered: Mutex::default(),
            keys: Mutex::default(),
        })
    }

    /// The server's provider endpoints.
    pub async fn endpoints(&self, server: &LoginServer) -> Result<Endpoints, ProviderError> {
        if !server.authorization_endpoint.is_empty() {
            return Ok(Endpoints {
                authorization: server.authorization_endpoint.clone(),
                token: server.token_endpoint.clone(),
                jwks: server.jwks_uri.clone(),
                end_session: Some(server.end_session_endpoint.clone()).filter(|e| !e.is_empty()),
                issuer: None,
            });
        }
        if let Some((endpoints, at)) = lock(&self.discovered).get(&server.issuer)
            && at.elapsed() < DISCOVERY_KEPT
        {
            return Ok(endpoints.clone());
        }
        let url = format!(
            "{}/.well-known/openid-configuration",
            server.issuer.trim_end_matches('/')
        );
        let endpoints: Endpoints = self.get_json(&url).await?;
        if endpoints
            .issuer
            .as_deref()
            .is_some_and(|i| i.trim_end_matches('/') != server.issuer.trim_end_matches('/'))
        {
            return Err(ProviderError::Invalid(format!(
                "its discovery document names issuer {:?}, not {:?}",
                endpoints.issuer.unwrap_or_default(),
                server.issuer
            )));
        }
        lock(&self.discovered).insert(server.issuer.clone(), (endpoints.clone(), Instant::now()));
        Ok(endpoints)
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        url: &str,
    ) -> Result<T, ProviderError> {
        let response = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| ProviderError::Unreachable(format!("{url}: {e}")))?;
        if !response.status().is_success() {
            return Err(ProviderError::Unreachable(format!(
                "{url} answered {}",
                response.status()
            )));
        }
        response
            .json()
            .await
            .map_err(|e| ProviderError::Invalid(format!("{url}: {e}")))
    }

    /// Calls the token endpoint with `form`, authenticating as the client
    /// (HTTP Basic with the client id and secret).
    pub async fn tokens(
        &self,
        endpoints: &Endpoints,
        server: &LoginServer,
        secret: &str,
        form: &[(&str, &str)],
    ) -> Result<Tokens, ProviderError> {
        let encode =
            |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let response = self
            .http
            .post(&endpoints.token)
            .basic_auth(encode(&server.client_id), Some(encode(secret)))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .map_err(|e| ProviderError::Unreachable(format!("{}: {e}", endpoints.token)))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| ProviderError::Unreachable(e.to_string()))?;
        if !status.is_success() {
            return Err(match serde_json::from_slice::<ErrorBody>(&body) {
                Ok(e) => ProviderError::Refused {
                    error: e.error,
                    description: e.error_description,
                },
                Err(_) if status.is_server_error() => {
                    ProviderError::Unreachable(format!("{} answered {status}", endpoints.token))
                }
                Err(_) => ProviderError::Refused {
                    error: status.to_string(),
                    description: None,
                },
            });
        }
        serde_json::from_slice(&body).map_err(|e| ProviderError::Invalid(format!("tokens: {e}")))
    }

    async fn keys(&self, jwks_uri: &str, kid: Option<&str>) -> Result<JwkSet, ProviderError> {
        let cached = lock(&self.keys).get(jwks_uri).cloned();
        if let Some((set, at)) = &cached {
            let has = kid.is_none_or(|k| set.find(k).is_some());
            if at.elapsed() < KEYS_KEPT && (has || at.elapsed() < KEYS_REFETCH) {
                return Ok(set.clone());
            }
        }
        let set: JwkSet = self.get_json(jwks_uri).await?;
        lock(&self.keys).insert(jwks_uri.to_string(), (set.clone(), Instant::now()));
        Ok(set)
    }

    /// Checks an ID token: signed by one of the provider's keys (never
    /// with a shared secret or none), from the server's issuer, for its
    /// client, not expired, and with `nonce` if one was sent.
    pub async fn verify(
        &self,
        endpoints: &Endpoints,
        server: &LoginServer,
        token: &str,
        nonce: Option<&str>,
    ) -> Result<IdClaims, ProviderError> {
        let invalid = |what: String| ProviderError::Invalid(format!("the ID token {what}"));
        let header = jsonwebtoken::decode_header(token).map_err(|e| invalid(e.to_string()))?;
        if matches!(
            header.alg,
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
        ) {
            return Err(invalid(format!(
                "is signed with {:?}, a shared secret",
                header.alg
            )));
        }
        let set = self.keys(&endpoints.jwks, header.kid.as_deref()).await?;
        let jwk = match &header.kid {
            Some(kid) => set.find(kid),
            None => set.keys.first(),
        }
        .ok_or_else(|| invalid("is signed with a key the provider does not publish".into()))?;
        let key = DecodingKey::from_jwk(jwk).map_err(|e| invalid(format!("key: {e}")))?;
        let mut validation = Validation::new(header.alg);
        validation.set_audience(&[&server.client_id]);
        validation.set_issuer(&[&server.issuer, server.issuer.trim_end_matches('/')]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = LEEWAY_S;
        let claims = jsonwebtoken::decode::<IdClaims>(token, &key, &validation)
            .map_err(|e| invalid(e.to_string()))?
            .claims;
        if let Some(nonce) = nonce
            && claims.nonce.as_deref() != Some(nonce)
        {
            return Err(invalid("does not carry the nonce of this sign-in".into()));
        }
        Ok(claims)
    }
}

//! End-user tokens checked as Envoy's `jwt_authn` checks them: the
//! bearer token of `Authorization` (or the `access_token` query
//! parameter), its issuer one of the rule's providers, its signature by
//! one of that provider's keys, its time (with the provider's clock
//! skew) and audience. A failure answers 401 with Envoy's message, and
//! the details name it (`jwt_authn_access_denied{Jwt_is_expired}`).
//!
//! Remote keys (JWKS) are fetched through their cluster when first
//! needed, kept, and fetched again every refresh interval (sooner after
//! a failure); a request waits for the first fetch up to its timeout.
//! Keys the configuration no longer names are let go: a JWKS stops
//! being fetched, inline keys are dropped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::request::Parts;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{DecodingKey, Validation};
use serde_json::Value;
use tokio::sync::watch;

use crate::config::{HttpFilter, Keys, Provider, Target, TokenRule};
use crate::runtime::Runtime;

/// Why a token was refused, with Envoy's status codes and messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenFailure {
    Missing,
    NotYetValid,
    Expired,
    BadFormat,
    UnknownIssuer,
    BadAudience,
    NoKey,
    BadSignature,
    KeysUnavailable,
}

impl TokenFailure {
    /// Envoy's message, sent as the body of the 401.
    pub fn message(self) -> &'static str {
        match self {
            TokenFailure::Missing => "Jwt is missing",
            TokenFailure::NotYetValid => "Jwt not yet valid",
            TokenFailure::Expired => "Jwt is expired",
            TokenFailure::BadFormat => {
                "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"
            }
            TokenFailure::UnknownIssuer => "Jwt issuer is not configured",
            TokenFailure::BadAudience => "Audiences in Jwt are not allowed",
            TokenFailure::NoKey => "Jwks doesn't have key to match kid or alg from Jwt",
            TokenFailure::BadSignature => "Jwt verification fails",
            TokenFailure::KeysUnavailable => "Jwks remote fetch is failed",
        }
    }

    /// Envoy's status code: 1 for a missing token, above for the rest
    /// (the local reply mapper answers 401 from 2 up).
    pub fn code(self) -> u32 {
        match self {
            TokenFailure::Missing => 1,
            TokenFailure::NotYetValid => 2,
            TokenFailure::Expired => 3,
            TokenFailure::BadFormat => 4,
            TokenFailure::UnknownIssuer => 21,
            TokenFailure::BadAudience => 22,
            TokenFailure::NoKey => 24,
            TokenFailure::BadSignature => 25,
            TokenFailure::KeysUnavailable => 26,
        }
    }

    /// Envoy's response code details.
    pub fn details(self) -> String {
        format!(
            "jwt_authn_access_denied{{{}}}",
            self.message().replace(' ', "_")
        )
    }
}

/// The request's bearer token, if it carries one.
pub fn bearer(parts: &Parts) -> Option<String> {
    if let Some(value) = parts
        .headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        && let Some(token) = value.strip_prefix("Bearer ")
    {
        return Some(token.trim().to_string());
    }
    parts.uri.query()?.split('&').find_map(|pair| {
        pair.strip_prefix("access_token=").map(|t| {
            percent_encoding::percent_decode_str(t)
                .decode_utf8_lossy()
                .into_owned()
        })
    })
}

/// The token's claims, unverified: only to pick the provider by issuer.
fn unverified_claims(token: &str) -> Result<Value, TokenFailure> {
    if token.split('.').count() != 3 {
        return Err(TokenFailure::BadFormat);
    }
    jsonwebtoken::dangerous::insecure_decode_claims::<Value>(token)
        .map_err(|_| TokenFailure::BadFormat)
}

/// Checks `token` against `provider`'s `keys`; its claims when valid.
pub fn verify(token: &str, provider: &Provider, keys: &JwkSet) -> Result<Value, TokenFailure> {
    let header = jsonwebtoken::decode_header(token).map_err(|_| TokenFailure::BadFormat)?;
    let candidates: Vec<_> = keys
        .keys
        .iter()
        .filter(|k| match (&header.kid, &k.common.key_id) {
            (Some(kid), Some(id)) => kid == id,
            _ => true,
        })
        .collect();
    if candidates.is_empty() {
        return Err(TokenFailure::NoKey);
    }
    let mut validation = Validation::new(header.alg);
    validation.leeway = provider.clock_skew.as_secs();
    validation.required_spec_claims.clear();
    validation.validate_nbf = true;
    if provider.audiences.is_empty() {
        validation.validate_aud = false;
    } else {
        validation.set_audience(&provider.audiences);
    }
    validation.set_issuer(&[&provider.issuer]);
    let mut failure = TokenFailure::NoKey;
    for jwk in candidates {
        let Ok(key) = DecodingKey::from_jwk(jwk) else {
            continue;
        };
        use jsonwebtoken::errors::ErrorKind;
        match jsonwebtoken::decode::<Value>(token, &key, &validation) {
            Ok(data) => return Ok(data.claims),
            Err(e) => {
                failure = match e.kind() {
                    ErrorKind::ExpiredSignature => return Err(TokenFailure::Expired),
                    ErrorKind::ImmatureSignature => return Err(TokenFailure::NotYetValid),
                    ErrorKind::InvalidAudience => return Err(TokenFailure::BadAudience),
                    ErrorKind::InvalidIssuer => return Err(TokenFailure::UnknownIssuer),
                    ErrorKind::InvalidAlgorithm => TokenFailure::NoKey,
                    _ => TokenFailure::BadSignature,
                }
            }
        }
    }
    Err(failure)
}

/// A remote JWKS as fetched so far (None before the first fetch).
type Fetched = watch::Receiver<Option<Arc<JwkSet>>>;
/// Remote JWKS by URI and cluster.
type Remote = Arc<Mutex<HashMap<(String, String), Fetched>>>;

/// The keys the proxy holds: remote JWKS by URI and cluster, and inline
/// ones parsed once (not on every request), by their text.
#[derive(Default)]
pub struct KeyStore {
    remote: Remote,
    inline: Mutex<HashMap<String, Arc<JwkSet>>>,
}

/// The keys the token checks of `runtime`'s listeners name.
fn keys_in_use(runtime: &Runtime) -> impl Iterator<Item = &Keys> {
    runtime
        .listeners
        .values()
        .flat_map(|l| &l.chains)
        .flat_map(|c| &c.config.http.filters)
        .filter_map(|f| match f {
            HttpFilter::TokenCheck(check) => Some(check.providers.values().map(|p| &p.keys)),
            _ => None,
        })
        .flatten()
}

fn names_remote(runtime: &Runtime, uri: &str, cluster: &str) -> bool {
    keys_in_use(runtime)
        .any(|k| matches!(k, Keys::Remote { uri: u, cluster: c, .. } if u == uri && c == cluster))
}

impl KeyStore {
    /// The current keys of `keys`, waiting for a first fetch up to its
    /// timeout.
    pub async fn get(
        &self,
        keys: &Keys,
        runtime: &watch::Receiver<Arc<Runtime>>,
    ) -> Result<Arc<JwkSet>, TokenFailure> {
        let (uri, cluster, timeout, refresh, retry) = match keys {
            Keys::Inline(text) => {
                let mut inline = self.inline.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(keys) = inline.get(text) {
                    return Ok(keys.clone());
                }
                let keys: Arc<JwkSet> = serde_json::from_str(text)
                    .map(Arc::new)
                    .map_err(|_| TokenFailure::KeysUnavailable)?;
                // A new text: the configuration changed; keep only what
                // it names now.
                let current = runtime.borrow().clone();
                inline.retain(|held, _| {
                    keys_in_use(&current).any(|k| matches!(k, Keys::Inline(t) if t == held))
                });
                inline.insert(text.clone(), keys.clone());
                return Ok(keys);
            }
            Keys::Remote {
                uri,
                cluster,
                timeout,
                refresh,
                retry,
            } => (uri, cluster, *timeout, *refresh, *retry),
        };
        let mut current = {
            let mut remote = self.remote.lock().unwrap_or_else(|p| p.into_inner());
            remote
                .entry((uri.clone(), cluster.clone()))
                .or_insert_with(|| {
                    let (tx, rx) = watch::channel(None);
                    tokio::spawn(refresh_keys(
                        uri.clone(),
                        cluster.clone(),
                        Pace {
                            timeout,
                            refresh,
                            retry,
                        },
                        runtime.clone(),
                        self.remote.clone(),
                        tx,
                    ));
                    rx
                })
                .clone()
        };
        let held = current.borrow_and_update().clone();
        if let Some(keys) = held {
            return Ok(keys);
        }
        let _ = tokio::time::timeout(timeout, current.changed()).await;
        current
            .borrow()
            .clone()
            .ok_or(TokenFailure::KeysUnavailable)
    }
}

/// How often a JWKS is fetched.
struct Pace {
    timeout: Duration,
    refresh: Duration,
    retry: Duration,
}

/// Fetches the keys again and again, for as long as the configuration
/// names them; then takes them out of `remote` and ends.
async fn refresh_keys(
    uri: String,
    cluster: String,
    Pace {
        timeout,
        refresh,
        retry,
    }: Pace,
    mut runtime: watch::Receiver<Arc<Runtime>>,
    remote: Remote,
    keys: watch::Sender<Option<Arc<JwkSet>>>,
) {
    loop {
        let current = runtime.borrow_and_update().clone();
        if !names_remote(&current, &uri, &cluster) {
            break;
        }
        let pause = match tokio::time::timeout(timeout, fetch(&uri, &cluster, &current)).await {
            Ok(Ok(set)) => {
                keys.send_replace(Some(Arc::new(set)));
                refresh
            }
            Ok(Err(e)) => {
                tracing::warn!(%uri, %cluster, error = %e, "JWKS fetch failed");
                retry
            }
            Err(_) => {
                tracing::warn!(%uri, %cluster, "JWKS fetch timed out");
                retry
            }
        };
        // Until the next fetch; a configuration change in between may
        // end the refreshing sooner.
        let next = tokio::time::sleep(pause);
        tokio::pin!(next);
        let named = loop {
            tokio::select! {
                () = &mut next => break true,
                changed = runtime.changed() => {
                    if changed.is_err()
                        || !names_remote(&runtime.borrow_and_update(), &uri, &cluster)
                    {
                        break false;
                    }
                }
            }
        };
        if !named {
            break;
        }
    }
    remote
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&(uri.clone(), cluster.clone()));
    tracing::debug!(%uri, %cluster, "JWKS no longer named; no longer fetched");
}

/// The largest JWKS document taken.
const MAX_JWKS: usize = 1024 * 1024;

async fn fetch(uri: &str, cluster: &str, runtime: &Runtime) -> Result<JwkSet, String> {
    let uri: http::Uri = uri.parse().map_err(|e| format!("{uri}: {e}"))?;
    let cluster = runtime
        .clusters
        .get(cluster)
        .ok_or_else(|| format!("no cluster {cluster}"))?;
    if cluster.tls_missing {
        return Err("the cluster's TLS settings are not ready".into());
    }
    let endpoint = cluster
        .assignment
        .groups
        .iter()
        .flat_map(|g| &g.endpoints)
        .next()
        .ok_or("the cluster has no endpoint")?;
    let address = match &endpoint.address {
        Target::Ip(a) => *a,
        Target::Host(host, port) => tokio::net::lookup_host((host.as_str(), *port))
            .await
            .map_err(|e| e.to_string())?
            .next()
            .ok_or("the host name resolves to nothing")?,
    };
    let tcp = tokio::net::TcpStream::connect(address)
        .await
        .map_err(|e| e.to_string())?;
    let request = http::Request::get(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header(
            http::header::HOST,
            uri.authority().map_or("", |a| a.as_str()),
        )
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let body = match &cluster.tls {
        None => get(tcp, request).await?,
        Some(config) => {
            let name = rustls::pki_types::ServerName::try_from(cluster.server_name().to_string())
                .map_err(|e| format!("server name: {e}"))?;
            let tls = tokio_rustls::TlsConnector::from(config.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS: {e}"))?;
            get(tls, request).await?
        }
    };
    serde_json::from_slice(&body).map_err(|e| format!("not a JWKS: {e}"))
}

/// One HTTP/1.1 GET over `io`; the body of a 2xx answer.
async fn get<I>(io: I, request: http::Request<Empty<Bytes>>) -> Result<Bytes, String>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("status {}", response.status()));
    }
    Ok(Limited::new(response.into_body(), MAX_JWKS)
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes())
}

/// What the token check decided for one request.
pub enum Checked {
    /// No rule applies, or the rule lets a request without a token pass.
    Passed {
        missing: bool,
    },
    /// A valid token of `provider`.
    Valid {
        provider: String,
        claims: Value,
    },
    Refused(TokenFailure),
}

/// Checks the request's token by `rule` of a filter whose providers are
/// `providers`.
pub async fn check(
    rule: &TokenRule,
    providers: &std::collections::BTreeMap<String, Provider>,
    parts: &Parts,
    store: &KeyStore,
    runtime: &watch::Receiver<Arc<Runtime>>,
) -> Checked {
    let Some(token) = bearer(parts) else {
        return if rule.allow_missing {
            Checked::Passed { missing: true }
        } else {
            Checked::Refused(TokenFailure::Missing)
        };
    };
    let claims = match unverified_claims(&token) {
        Ok(claims) => claims,
        Err(failure) => return Checked::Refused(failure),
    };
    let issuer = claims
        .get("iss")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let Some((name, provider)) = rule
        .providers
        .iter()
        .filter_map(|name| providers.get(name).map(|p| (name, p)))
        .find(|(_, p)| p.issuer == issuer)
    else {
        return Checked::Refused(TokenFailure::UnknownIssuer);
    };
    let keys = match store.get(&provider.keys, runtime).await {
        Ok(keys) => keys,
        Err(failure) => return Checked::Refused(failure),
    };
    match verify(&token, provider, &keys) {
        Ok(claims) => Checked::Valid {
            provider: name.clone(),
            claims,
        },
        Err(failure) => Checked::Refused(failure),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::bootstrap::{self, Source};
    use crate::stats::Stats;
    use crate::xds::Resources;

    /// A JWKS server on plain HTTP that counts the fetches it answers.
    async fn counting_jwks() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let fetches = Arc::new(AtomicUsize::new(0));
        let counted = fetches.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut request = [0u8; 1024];
                    let _ = socket.read(&mut request).await;
                    let body = r#"{"keys":[]}"#;
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(answer.as_bytes()).await;
                });
            }
        });
        (address, fetches)
    }

    /// The resources of a listener whose token check names a JWKS at
    /// `jwks`, refreshed every 100 ms.
    fn resources_naming(jwks: std::net::SocketAddr) -> (Resources, Arc<crate::tls::Secrets>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bootstrap.yaml");
        let yaml = format!(
            r#"
node: {{id: tokens}}
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}}}
static_resources:
  listeners:
  - name: front
    address: {{socket_address: {{address: 127.0.0.1, port_value: 1}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: front
          route_config: {{name: front}}
          http_filters:
          - name: envoy.filters.http.jwt_authn
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication
              providers:
                login:
                  issuer: https://login.test
                  remote_jwks:
                    http_uri: {{uri: "http://{jwks}/jwks.json", cluster: jwks, timeout: 1s}}
                    cache_duration: 0.1s
              rules: [{{match: {{prefix: /}}, requires: {{provider_name: login}}}}]
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
  clusters:
  - name: jwks
    connect_timeout: 1s
    load_assignment:
      cluster_name: jwks
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {}}}}}}}}}]}}]
"#,
            jwks.port()
        );
        std::fs::write(&path, yaml).unwrap();
        match bootstrap::read(&path).unwrap().source {
            Source::Static(resources, secrets) => (resources, secrets),
            Source::Ads(_) => unreachable!("the bootstrap is static"),
        }
    }

    fn fetched(store: &KeyStore) -> usize {
        store.remote.lock().unwrap().len()
    }

    /// A JWKS is fetched again while a listener names it; once the
    /// configuration no longer does, the fetching stops and the keys are
    /// let go.
    #[tokio::test]
    async fn keys_the_configuration_stops_naming_are_let_go() {
        let (jwks, fetches) = counting_jwks().await;
        let (resources, secrets) = resources_naming(jwks);
        let stats = Stats::new(None);
        let naming = Runtime::build(
            &Runtime::empty(),
            Arc::new(resources.clone()),
            secrets.clone(),
            &stats,
        );
        let keys = keys_in_use(&naming).next().expect("a token check").clone();
        let (runtime_tx, runtime) = watch::channel(Arc::new(naming));
        let store = KeyStore::default();
        store
            .get(&keys, &runtime)
            .await
            .expect("the keys are fetched");
        tokio::time::sleep(Duration::from_millis(500)).await;
        let refreshed = fetches.load(Ordering::SeqCst);
        assert!(refreshed >= 2, "fetched {refreshed} times in 500 ms");
        assert_eq!(fetched(&store), 1);

        // Inline keys the configuration does not name are dropped when
        // others come.
        let inline = |text: &str| Keys::Inline(text.into());
        store
            .get(&inline(r#"{"keys":[]}"#), &runtime)
            .await
            .unwrap();
        store
            .get(&inline(r#"{"keys": []}"#), &runtime)
            .await
            .unwrap();
        assert_eq!(store.inline.lock().unwrap().len(), 1);

        let mut without = resources;
        without.listeners.clear();
        let previous = runtime.borrow().clone();
        runtime_tx.send_replace(Arc::new(Runtime::build(
            &previous,
            Arc::new(without),
            secrets,
            &stats,
        )));
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while fetched(&store) > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the JWKS is still held"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let stopped_at = fetches.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(fetches.load(Ordering::SeqCst), stopped_at, "still fetched");
    }
}

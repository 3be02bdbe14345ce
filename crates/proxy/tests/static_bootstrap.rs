//! weft-proxy from a static bootstrap written as YAML (Envoy's own form),
//! in front of a real hyper upstream on loopback: HTTP/1.1 and h2c pass
//! with their protocol kept, the host and request id arrive and
//! hop-by-hop headers do not, an unknown host gets 404, a connect failure
//! is retried on another endpoint, and the admin port counts it all; and
//! end-user tokens checked with keys fetched from an HTTPS JWKS server
//! whose certificate is checked against a CA file.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};

/// Answers with what it saw: version, host and headers.
async fn upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|request: Request<Incoming>| async move {
                    let headers: serde_json::Map<String, Value> = request
                        .headers()
                        .iter()
                        .map(|(k, v)| (k.to_string(), json!(v.to_str().unwrap_or_default())))
                        .collect();
                    let seen = json!({
                        "version": format!("{:?}", request.version()),
                        "authority": request.uri().authority().map(|a| a.to_string()),
                        "headers": headers,
                    });
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(seen.to_string()))))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    address
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A listener checking tokens of `issuer` with keys from `jwks_uri`
/// (fetched through cluster `jwks`, HTTPS to `jwks` checked against
/// `ca_file` for `localhost`), routing to `upstream`.
fn token_bootstrap(port: u16, upstream: SocketAddr, jwks: SocketAddr, ca_file: &str) -> String {
    format!(
        r#"
node: {{id: tokens}}
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}}}
static_resources:
  listeners:
  - name: front
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: front
          route_config:
            name: front
            virtual_hosts: [{{name: all, domains: ["*"], routes: [{{match: {{prefix: /}}, route: {{cluster: upstream}}}}]}}]
          http_filters:
          - name: envoy.filters.http.jwt_authn
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication
              providers:
                login:
                  issuer: https://login.test
                  audiences: [shop]
                  remote_jwks:
                    http_uri: {{uri: "https://localhost/jwks.json", cluster: jwks, timeout: 5s}}
                    cache_duration: 60s
              rules: [{{match: {{prefix: /}}, requires: {{provider_name: login}}}}]
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
  clusters:
  - name: upstream
    connect_timeout: 1s
    load_assignment:
      cluster_name: upstream
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {}}}}}}}}}]}}]
  - name: jwks
    connect_timeout: 1s
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: localhost
        common_tls_context:
          validation_context:
            trusted_ca: {{filename: "{ca_file}"}}
            match_typed_subject_alt_names: [{{san_type: DNS, matcher: {{exact: localhost}}}}]
    load_assignment:
      cluster_name: jwks
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {}}}}}}}}}]}}]
"#,
        upstream.port(),
        jwks.port()
    )
}

/// Envoy's form of a listener routing `svc.local` to a cluster of
/// `endpoints`, retrying connect failures elsewhere.
fn bootstrap(port: u16, endpoints: &[SocketAddr]) -> String {
    let endpoints: Vec<String> = endpoints
        .iter()
        .map(|e| {
            format!(
                "{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {}}}}}}}}}",
                e.port()
            )
        })
        .collect();
    format!(
        r#"
node: {{id: bench}}
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}}}
static_resources:
  listeners:
  - name: front
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: front
          route_config:
            name: front
            virtual_hosts:
            - name: svc
              domains: ["svc.local"]
              routes:
              - match: {{prefix: /}}
                route:
                  cluster: upstream
                  retry_policy:
                    retry_on: connect-failure
                    num_retries: 2
                    retry_host_predicate: [{{name: envoy.retry_host_predicates.previous_hosts, typed_config: {{"@type": type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate}}}}]
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
  clusters:
  - name: upstream
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        use_downstream_protocol_config: {{http_protocol_options: {{}}, http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: upstream
      endpoints: [{{lb_endpoints: [{}]}}]
"#,
        endpoints.join(", ")
    )
}

/// An ES256 key that signs tokens, and its JWKS.
struct Issuer(ring::signature::EcdsaKeyPair);

impl Issuer {
    fn new() -> Issuer {
        use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        Issuer(
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
                .unwrap(),
        )
    }

    fn jwks(&self) -> String {
        use base64::Engine;
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        use ring::signature::KeyPair;
        let point = self.0.public_key().as_ref();
        json!({"keys": [{"kty": "EC", "crv": "P-256", "alg": "ES256", "kid": "k1",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..65])}]})
        .to_string()
    }

    fn token(&self, claims: Value) -> String {
        use base64::Engine;
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header = json!({"alg": "ES256", "typ": "JWT", "kid": "k1"});
        let signed = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = self
            .0
            .sign(&ring::rand::SystemRandom::new(), signed.as_bytes())
            .unwrap();
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()))
    }
}

/// An HTTPS server for `localhost` (its CA's PEM returned) answering
/// `body` to every request, counting them.
async fn https_server(body: String) -> (SocketAddr, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(weft_identity::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let Ok(tls) = acceptor.accept(tcp).await else {
                continue;
            };
            let body = body.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_: Request<Incoming>| {
                    let body = body.clone();
                    async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body)))) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (address, ca.pem())
}

async fn get(port: u16, host: &str, http2: bool, headers: &[(&str, &str)]) -> (u16, Value) {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut request = Request::get(if http2 {
        format!("http://{host}/items?x=1")
    } else {
        "/items?x=1".to_string()
    });
    if !http2 {
        request = request.header("host", host);
    }
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let request = request.body(Empty::<Bytes>::new()).unwrap();
    let response = if http2 {
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .unwrap();
        tokio::spawn(connection);
        sender.send_request(request).await.unwrap()
    } else {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(connection);
        sender.send_request(request).await.unwrap()
    };
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

async fn admin(port: u16, path: &str) -> (u16, String) {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(connection);
    let request = Request::get(path)
        .header("host", "admin")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Starts weft-proxy from `config` (YAML); its task and admin port once
/// it is ready.
async fn start(
    dir: &std::path::Path,
    config: &str,
) -> (
    tokio::task::JoinHandle<Result<(), weft_proxy::run::RunError>>,
    u16,
) {
    let path = dir.join("envoy.yaml");
    std::fs::write(&path, config).unwrap();
    let admin_path = dir.join("admin.address");
    let proxy = tokio::spawn(weft_proxy::run::run(path, Some(admin_path.clone())));
    let admin_port = loop {
        if let Some(port) = std::fs::read_to_string(&admin_path)
            .ok()
            .and_then(|a| a.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()))
        {
            break port;
        }
        assert!(
            !proxy.is_finished(),
            "weft-proxy stopped: {:?}",
            proxy.await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    for _ in 0..100 {
        if admin(admin_port, "/ready").await.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(admin(admin_port, "/ready").await.0, 200);
    (proxy, admin_port)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_static_bootstrap_proxies_http1_and_h2c_and_retries_elsewhere() {
    weft_identity::tls::install_provider();
    let live = upstream().await;
    // Nothing listens here: connecting fails at once.
    let dead: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let (proxy, admin_port) = start(dir.path(), &bootstrap(port, &[dead, live])).await;

    for _ in 0..10 {
        let (status, seen) = get(
            port,
            "svc.local",
            false,
            &[("connection", "x-hop"), ("x-hop", "1"), ("x-kept", "yes")],
        )
        .await;
        assert_eq!(status, 200, "{seen}");
        assert_eq!(seen["version"], "HTTP/1.1");
        assert_eq!(seen["headers"]["host"], "svc.local");
        assert_eq!(seen["headers"]["x-kept"], "yes");
        assert!(seen["headers"].get("x-hop").is_none(), "{seen}");
        assert!(seen["headers"]["x-request-id"].is_string(), "{seen}");
        let (status, seen) = get(port, "svc.local", true, &[]).await;
        assert_eq!(status, 200, "{seen}");
        assert_eq!(seen["version"], "HTTP/2.0");
        assert_eq!(seen["authority"], "svc.local");
    }
    assert_eq!(get(port, "other.local", false, &[]).await.0, 404);

    let (_, stats) = admin(admin_port, "/stats?filter=^cluster.upstream").await;
    let stat = |name: &str| -> u64 {
        stats
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {stats}"))
    };
    // Every request was answered; the ones sent to the dead endpoint first
    // were retried on the live one.
    assert_eq!(stat("cluster.upstream.upstream_rq_2xx"), 20, "{stats}");
    assert!(stat("cluster.upstream.upstream_rq_retry") > 0, "{stats}");
    assert_eq!(
        stat("cluster.upstream.upstream_rq_retry"),
        stat("cluster.upstream.upstream_cx_connect_fail"),
        "{stats}"
    );
    let (_, prometheus) = admin(admin_port, "/stats/prometheus").await;
    assert!(
        prometheus.contains("envoy_cluster_upstream_rq_2xx{envoy_cluster_name=\"upstream\"} 20"),
        "{prometheus}"
    );
    let (_, dump) = admin(admin_port, "/config_dump").await;
    let dump: Value = serde_json::from_str(&dump).unwrap();
    assert_eq!(
        dump["configs"][1]["dynamic_listeners"][0]["name"], "front",
        "{dump}"
    );
    proxy.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_are_checked_with_keys_fetched_over_https() {
    weft_identity::tls::install_provider();
    let issuer = Issuer::new();
    let (jwks, ca) = https_server(issuer.jwks()).await;
    let live = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca).unwrap();
    let port = free_port();
    let config = token_bootstrap(port, live, jwks, ca_file.to_str().unwrap());
    let (proxy, _) = start(dir.path(), &config).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let valid = issuer.token(json!({"iss": "https://login.test", "aud": "shop", "exp": now + 600}));
    let bearer = format!("Bearer {valid}");
    let (status, seen) = get(port, "svc.local", false, &[("authorization", &bearer)]).await;
    assert_eq!(status, 200, "{seen}");
    assert!(seen["headers"].get("authorization").is_none(), "{seen}");
    assert_eq!(get(port, "svc.local", false, &[]).await.0, 401);
    let other = Issuer::new().token(json!({"iss": "https://login.test", "aud": "shop"}));
    let forged = format!("Bearer {other}");
    assert_eq!(
        get(port, "svc.local", false, &[("authorization", &forged)])
            .await
            .0,
        401
    );
    proxy.abort();
}

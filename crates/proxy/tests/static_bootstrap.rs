//! weft-proxy from a static bootstrap written as YAML (Envoy's own form),
//! in front of a real hyper upstream on loopback: HTTP/1.1 and h2c pass
//! with their protocol kept, the host and request id arrive and
//! hop-by-hop headers do not, an unknown host gets 404, a connect failure
//! is retried on another endpoint, and the admin port counts it all.

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

#[tokio::test(flavor = "multi_thread")]
async fn a_static_bootstrap_proxies_http1_and_h2c_and_retries_elsewhere() {
    weft_identity::tls::install_provider();
    let live = upstream().await;
    // Nothing listens here: connecting fails at once.
    let dead: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("envoy.yaml");
    std::fs::write(&path, bootstrap(port, &[dead, live])).unwrap();
    let admin_path = dir.path().join("admin.address");
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

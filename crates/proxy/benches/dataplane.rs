//! The data plane's cost, measured in one run with interleaved rounds:
//! requests straight to the upstream, through Envoy 1.40, through
//! weft-proxy (both from the same configuration), through a bare hyper
//! forwarder (the practical limit of a Rust proxy: it only moves
//! requests), and through a sidecar pair of each proxy (client to server
//! over mutual TLS with SPIFFE checks and an RBAC rule, as weft
//! configures sidecars); every proxy pinned to core 0 and this process
//! (load generator and upstream) to core 1. HTTP/1.1 and h2c keep-alive,
//! at the highest rate the load reaches and at a fixed 1,000 requests/s.
//! Prints requests/s, CPU seconds per 10,000 requests, the latency the
//! proxy adds (p50/p90/p99 over direct), resident memory and weft-proxy's
//! ratios, and writes the figures as an SVG chart. Prints figures;
//! asserts nothing.
//!
//! cargo bench -p weft-proxy --bench dataplane [-- --seconds N --rounds N --svg PATH --no-pairs]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;

const PINNED: &str = "WEFT_BENCH_PINNED";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Protocol {
    Http1,
    H2c,
}

impl Protocol {
    fn name(self) -> &'static str {
        match self {
            Protocol::Http1 => "HTTP/1.1",
            Protocol::H2c => "h2c",
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The upstream: answers every request 200 with a short body.
async fn upstream(listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(|_req: Request<Incoming>| async {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok\n"))))
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// The bare forwarder (this binary run as `forwarder LISTEN UPSTREAM`):
/// each client connection gets one upstream connection of its protocol,
/// and requests are passed on as they are.
async fn forwarder(listen: SocketAddr, to: SocketAddr) {
    let listener = TcpListener::bind(listen)
        .await
        .expect("the forwarder's port");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let upstream: Arc<Mutex<Option<Sender>>> = Arc::default();
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let upstream = upstream.clone();
                async move {
                    let mut sender = upstream.lock().await;
                    if sender.is_none() {
                        *sender = Some(Sender::open(to, req.version()).await);
                    }
                    // HTTP/2 streams go out side by side: the lock is
                    // only held to take the connection.
                    let response = match sender.as_mut().expect("opened") {
                        Sender::H2(h2) => {
                            let mut h2 = h2.clone();
                            drop(sender);
                            h2.send_request(req).await.expect("the upstream answers")
                        }
                        http1 => http1.send(req).await,
                    };
                    Ok::<_, Infallible>(response.map(|b| b.boxed()))
                }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

enum Sender {
    Http1(hyper::client::conn::http1::SendRequest<Incoming>),
    H2(hyper::client::conn::http2::SendRequest<Incoming>),
}

impl Sender {
    async fn open(to: SocketAddr, version: http::Version) -> Sender {
        let stream = TcpStream::connect(to).await.expect("the upstream");
        let _ = stream.set_nodelay(true);
        let io = TokioIo::new(stream);
        if version == http::Version::HTTP_2 {
            let (sender, connection) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                    .await
                    .expect("h2 to the upstream");
            tokio::spawn(connection);
            Sender::H2(sender)
        } else {
            let (sender, connection) = hyper::client::conn::http1::handshake(io)
                .await
                .expect("HTTP/1.1 to the upstream");
            tokio::spawn(connection);
            Sender::Http1(sender)
        }
    }

    async fn send(&mut self, req: Request<Incoming>) -> Response<Incoming> {
        match self {
            Sender::Http1(s) => s.send_request(req).await.expect("the upstream answers"),
            Sender::H2(s) => s.send_request(req).await.expect("the upstream answers"),
        }
    }
}

/// A client connection of the load generator.
enum Client {
    Http1(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
}

impl Client {
    async fn open(port: u16, protocol: Protocol) -> Client {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("the target");
        let _ = stream.set_nodelay(true);
        let io = TokioIo::new(stream);
        match protocol {
            Protocol::Http1 => {
                let (s, c) = hyper::client::conn::http1::handshake(io)
                    .await
                    .expect("handshake");
                tokio::spawn(c);
                Client::Http1(s)
            }
            Protocol::H2c => {
                let (s, c) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                    .await
                    .expect("handshake");
                tokio::spawn(c);
                Client::H2(s)
            }
        }
    }

    /// One request; its latency, or none if it failed.
    async fn call(&mut self, protocol: Protocol) -> Option<Duration> {
        let mut builder = Request::get("http://reviews/").header("host", "reviews");
        if protocol == Protocol::H2c {
            builder = builder.version(http::Version::HTTP_2);
        }
        let request = builder.body(Empty::new()).expect("a request");
        let started = Instant::now();
        let response = match self {
            Client::Http1(s) => {
                s.ready().await.ok()?;
                s.send_request(request).await.ok()?
            }
            Client::H2(s) => {
                s.ready().await.ok()?;
                s.send_request(request).await.ok()?
            }
        };
        let ok = response.status().is_success();
        response.into_body().collect().await.ok()?;
        ok.then(|| started.elapsed())
    }
}

/// Requests done and their latencies (microseconds).
struct Outcome {
    done: u64,
    failed: u64,
    latencies: Vec<u32>,
    elapsed: Duration,
}

/// As many requests as 32 streams in flight get through in `seconds`.
async fn max_rate(port: u16, protocol: Protocol, seconds: u64) -> Outcome {
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    // h2c: one connection, its streams side by side; HTTP/1.1: one
    // connection each.
    let shared = match protocol {
        Protocol::H2c => match Client::open(port, protocol).await {
            Client::H2(sender) => Some(sender),
            Client::Http1(_) => None,
        },
        Protocol::Http1 => None,
    };
    let started = Instant::now();
    for _ in 0..32 {
        let stop = stop.clone();
        let failed = failed.clone();
        let mut client = match &shared {
            Some(sender) => Client::H2(sender.clone()),
            None => Client::open(port, protocol).await,
        };
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match client.call(protocol).await {
                    Some(l) => latencies.push(l.as_micros() as u32),
                    None => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            latencies
        }));
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    for w in workers {
        latencies.extend(w.await.unwrap_or_default());
    }
    Outcome {
        done: latencies.len() as u64,
        failed: failed.load(Ordering::Relaxed),
        latencies,
        elapsed: started.elapsed(),
    }
}

/// 1,000 requests a second, sent on schedule whatever the answers do.
async fn fixed_rate(port: u16, protocol: Protocol, seconds: u64) -> Outcome {
    let connections = 16;
    let mut clients = Vec::new();
    for _ in 0..connections {
        clients.push(Arc::new(Mutex::new(Client::open(port, protocol).await)));
    }
    let total = seconds * 1000;
    let started = Instant::now();
    let mut calls = Vec::new();
    for i in 0..total {
        let due = started + Duration::from_micros(i * 1000);
        tokio::time::sleep_until(due.into()).await;
        let client = clients[(i as usize) % connections].clone();
        calls.push(tokio::spawn(async move {
            // Measured from the moment it is sent (the timer's own
            // lateness is not the proxy's), a busy connection's wait
            // included.
            let sent = Instant::now();
            let mut client = client.lock().await;
            let result = client.call(protocol).await;
            result.map(|_| sent.elapsed())
        }));
    }
    let mut latencies = Vec::new();
    let mut failed = 0;
    for c in calls {
        match c.await.ok().flatten() {
            Some(l) => latencies.push(l.as_micros() as u32),
            None => failed += 1,
        }
    }
    Outcome {
        done: latencies.len() as u64,
        failed,
        latencies,
        elapsed: started.elapsed(),
    }
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i]) / 1000.0
}

/// Seconds of CPU the process has used (user + system).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15; `after` starts at field 3.
    (ticks(11) + ticks(12)) / 100.0
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

struct Target {
    name: &'static str,
    port: u16,
    /// The proxy's processes (a pair has two); none for direct.
    processes: Vec<Child>,
}

fn envoy_binary() -> std::path::PathBuf {
    if let Ok(path) = std::env::var("WEFT_ENVOY") {
        return path.into();
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.tools/venv/bin/envoy");
    if root.exists() { root } else { "envoy".into() }
}

/// The configuration both proxies run, in Envoy's YAML: a listener on
/// `port` routing everything to the upstream, in the protocol the client
/// spoke.
fn proxy_config(port: u16, admin: u16, upstream: u16) -> String {
    format!(
        r#"
node: {{id: bench}}
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
static_resources:
  listeners:
  - name: bench
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: bench
          codec_type: AUTO
          route_config:
            name: bench
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes: [{{match: {{prefix: /}}, route: {{cluster: upstream}}}}]
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
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {upstream}}}}}}}}}]}}]
"#
    )
}

/// weft-proxy (this binary run as `weft-proxy CONFIG`, the library
/// `weft x proxy` runs) from the very configuration Envoy gets, written
/// as binary protobuf as the agent writes sidecars' bootstraps (read as
/// YAML, the proto descriptors would stay in its memory).
fn start_weft_proxy(upstream: u16, dir: &std::path::Path) -> Target {
    let port = free_port();
    let path = dir.join("weft-proxy.pb");
    let yaml: serde_json::Value =
        serde_norway::from_str(&proxy_config(port, free_port(), upstream)).expect("YAML");
    let binary = weft_xds::json::from_json("envoy.config.bootstrap.v3.Bootstrap", yaml)
        .expect("a Bootstrap");
    std::fs::write(&path, binary).expect("the config");
    let child = Command::new("taskset")
        .args(["-c", "0"])
        .arg(std::env::current_exe().expect("this benchmark"))
        .arg("weft-proxy")
        .arg(&path)
        .env(PINNED, "1")
        .stdout(Stdio::null())
        .spawn()
        .expect("weft-proxy starts");
    Target {
        name: "weft-proxy",
        port,
        processes: vec![child],
    }
}

/// The mesh's mutual TLS, from a CA made for the benchmark: PEMs of the
/// client's and the server's SVIDs and of the roots.
struct Identities {
    client: (String, String),
    server: (String, String),
    roots: String,
}

const TRUST_DOMAIN: &str = "bench";

fn identities() -> Identities {
    use weft_identity::{Authority, CertRequest, SpiffeId, certificates_to_pem};
    let day = Duration::from_secs(86_400);
    let root = Authority::root(TRUST_DOMAIN, day).expect("a root");
    let request = CertRequest::intermediate(TRUST_DOMAIN, "bench").expect("a CSR");
    let signed = root
        .sign_intermediate(&request.csr, "bench", day)
        .expect("an intermediate");
    let ca = Authority::from_parts(signed, request.key, Vec::new()).expect("a CA");
    let svid = |account: &str| {
        let id = SpiffeId::workload(TRUST_DOMAIN, "bench", account).expect("an id");
        let request = CertRequest::workload(&id).expect("a CSR");
        let leaf = ca.issue_svid(&request.csr, &id, day).expect("an SVID");
        let chain: Vec<_> = std::iter::once(leaf).chain(ca.chain()).collect();
        (certificates_to_pem(&chain), request.key.serialize_pem())
    };
    Identities {
        client: svid("client"),
        server: svid("server"),
        roots: certificates_to_pem(&[root.certificate().clone()]),
    }
}

/// A secret's YAML: an SVID (chain and key) or the roots.
fn secrets_yaml(svid: &(String, String), roots: &str) -> String {
    let quoted = |pem: &str| serde_json::to_string(pem).expect("a string");
    format!(
        "  secrets:\n  - name: default\n    tls_certificate: {{certificate_chain: {{inline_string: {}}}, private_key: {{inline_string: {}}}}}\n  - name: ROOTCA\n    validation_context: {{trusted_ca: {{inline_string: {}}}}}\n",
        quoted(&svid.0),
        quoted(&svid.1),
        quoted(roots)
    )
}

/// A TLS context's common part: this proxy's SVID, the roots, and the one
/// peer SPIFFE ID accepted.
fn common_tls(peer: &str) -> String {
    format!(
        "common_tls_context: {{tls_certificate_sds_secret_configs: [{{name: default}}], combined_validation_context: {{default_validation_context: {{match_typed_subject_alt_names: [{{san_type: URI, matcher: {{exact: \"spiffe://{TRUST_DOMAIN}/ns/bench/sa/{peer}\"}}}}]}}, validation_context_sds_secret_config: {{name: ROOTCA}}}}}}"
    )
}

const HTTP_OPTIONS: &str = r#"typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        use_downstream_protocol_config: {http_protocol_options: {}, http2_protocol_options: {}}"#;

/// The sidecar pair, as weft configures it: the client's outbound
/// listener (plaintext from the app) to the server over mutual TLS; the
/// server's inbound listener (mutual TLS, the client's SPIFFE ID checked,
/// an RBAC rule allowing only it) to the app.
fn pair_configs(
    client: (u16, u16),
    server: (u16, u16),
    upstream: u16,
    ids: &Identities,
) -> (String, String) {
    let listener = |name: &str,
                    port: u16,
                    tls: &str,
                    filters: &str,
                    extra_vh: &str,
                    cluster: &str| {
        format!(
            r#"  listeners:
  - name: {name}
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - {tls}filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}
          route_config:
            name: {name}
            virtual_hosts:
            - name: {name}
              domains: ["*"]
              routes: [{{match: {{prefix: /}}, route: {{cluster: {cluster}}}}}]{extra_vh}
          http_filters:{filters}
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
"#
        )
    };
    let cluster = |name: &str, port: u16, tls: &str| {
        format!(
            r#"  - name: {name}
    connect_timeout: 1s
    {HTTP_OPTIONS}{tls}
    load_assignment:
      cluster_name: {name}
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}}}]}}]
"#
        )
    };
    let admin = |port: u16| {
        format!(
            "admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}\n"
        )
    };
    let client_yaml = format!(
        "node: {{id: client}}\n{}static_resources:\n{}{}  clusters:\n{}",
        admin(client.1),
        secrets_yaml(&ids.client, &ids.roots),
        listener("outbound", client.0, "", "", "", "server"),
        cluster(
            "server",
            server.0,
            &format!(
                "\n    transport_socket: {{name: envoy.transport_sockets.tls, typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext, {}}}}}",
                common_tls("server")
            )
        ),
    );
    let rbac = r#"
          - name: authz
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC, rules: {}}"#;
    let allow_client = format!(
        r#"
              typed_per_filter_config:
                authz:
                  "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute
                  rbac: {{rules: {{policies: {{client: {{permissions: [{{any: true}}], principals: [{{authenticated: {{principal_name: {{exact: "spiffe://{TRUST_DOMAIN}/ns/bench/sa/client"}}}}}}]}}}}}}}}"#
    );
    let server_tls = format!(
        "transport_socket: {{name: envoy.transport_sockets.tls, typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext, require_client_certificate: true, {}}}}}\n      ",
        common_tls("client")
    );
    let server_yaml = format!(
        "node: {{id: server}}\n{}static_resources:\n{}{}  clusters:\n{}",
        admin(server.1),
        secrets_yaml(&ids.server, &ids.roots),
        listener("inbound", server.0, &server_tls, rbac, &allow_client, "app"),
        cluster("app", upstream, ""),
    );
    (client_yaml, server_yaml)
}

/// Starts one proxy of `kind` ("envoy" or "weft-proxy") on core 0 with
/// the YAML `config`.
fn spawn_proxy(kind: &str, config: &str, dir: &std::path::Path, name: &str) -> Child {
    let mut command = Command::new("taskset");
    command
        .args(["-c", "0"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if kind == "envoy" {
        let path = dir.join(format!("{name}.yaml"));
        std::fs::write(&path, config).expect("the config");
        command.arg(envoy_binary()).args([
            "--concurrency",
            "1",
            "--use-dynamic-base-id",
            "--log-level",
            "error",
            "-c",
        ]);
        command.arg(&path);
    } else {
        let path = dir.join(format!("{name}.pb"));
        let yaml: serde_json::Value = serde_norway::from_str(config).expect("YAML");
        let binary = weft_xds::json::from_json("envoy.config.bootstrap.v3.Bootstrap", yaml)
            .expect("a Bootstrap");
        std::fs::write(&path, binary).expect("the config");
        command
            .arg(std::env::current_exe().expect("this benchmark"))
            .arg("weft-proxy")
            .arg(&path)
            .env(PINNED, "1");
    }
    command.spawn().expect("the proxy starts")
}

/// A sidecar pair of `kind`, both on core 0.
fn start_pair(
    kind: &str,
    name: &'static str,
    upstream: u16,
    ids: &Identities,
    dir: &std::path::Path,
) -> Target {
    let (client, server) = ((free_port(), free_port()), (free_port(), free_port()));
    let (client_yaml, server_yaml) = pair_configs(client, server, upstream, ids);
    let processes = vec![
        spawn_proxy(kind, &server_yaml, dir, &format!("{kind}-server")),
        spawn_proxy(kind, &client_yaml, dir, &format!("{kind}-client")),
    ];
    Target {
        name,
        port: client.0,
        processes,
    }
}

/// Envoy with one worker.
fn start_envoy(upstream: u16, dir: &std::path::Path) -> Target {
    let port = free_port();
    let config = proxy_config(port, free_port(), upstream);
    let path = dir.join("envoy.yaml");
    std::fs::write(&path, config).expect("the Envoy config");
    let child = Command::new("taskset")
        .args(["-c", "0"])
        .arg(envoy_binary())
        .args([
            "--concurrency",
            "1",
            "--use-dynamic-base-id",
            "--log-level",
            "error",
            "-c",
        ])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("Envoy starts (install it with `weft envoy install`, or set WEFT_ENVOY)");
    Target {
        name: "Envoy 1.40",
        port,
        processes: vec![child],
    }
}

fn start_forwarder(upstream: u16) -> Target {
    let port = free_port();
    let child = Command::new("taskset")
        .args(["-c", "0"])
        .arg(std::env::current_exe().expect("this benchmark"))
        .args([
            "forwarder",
            &format!("127.0.0.1:{port}"),
            &format!("127.0.0.1:{upstream}"),
        ])
        .env(PINNED, "1")
        .stdout(Stdio::null())
        .spawn()
        .expect("the forwarder starts");
    Target {
        name: "bare hyper forwarder",
        port,
        processes: vec![child],
    }
}

async fn until_answers(port: u16, protocol: Protocol) {
    for _ in 0..200 {
        if let Ok(stream) = TcpStream::connect(("127.0.0.1", port)).await {
            drop(stream);
            let mut client = Client::open(port, protocol).await;
            if client.call(protocol).await.is_some() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("nothing answers on port {port}");
}

/// One target's figures in one round.
#[derive(Clone)]
struct Figures {
    rps: f64,
    cpu_per_10k: f64,
    p50: f64,
    p90: f64,
    p99: f64,
    rss: f64,
    failed: u64,
}

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("forwarder") {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime");
        let listen = args[2].parse().expect("LISTEN");
        let to = args[3].parse().expect("UPSTREAM");
        runtime.block_on(forwarder(listen, to));
        return;
    }
    if args.get(1).map(String::as_str) == Some("weft-proxy") {
        // As `weft x proxy` runs: one multi-threaded runtime, its workers
        // as many as the cores the process may use (one, pinned).
        weft_identity::tls::install_provider();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let config = std::path::PathBuf::from(&args[2]);
        if let Err(e) = runtime.block_on(weft_proxy::run::run(config, None)) {
            eprintln!("weft-proxy: {e}");
            std::process::exit(1);
        }
        return;
    }
    // The load and the upstream on core 1, the proxies on core 0.
    if std::env::var_os(PINNED).is_none() {
        let status = Command::new("taskset")
            .args(["-c", "1"])
            .arg(std::env::current_exe().expect("this benchmark"))
            .args(&args[1..])
            .env(PINNED, "1")
            .status()
            .expect("taskset runs");
        std::process::exit(status.code().unwrap_or(1));
    }
    let seconds: u64 = arg("--seconds").and_then(|s| s.parse().ok()).unwrap_or(5);
    let rounds: usize = arg("--rounds").and_then(|s| s.parse().ok()).unwrap_or(3);
    let svg = arg("--svg").unwrap_or_else(|| "target/dataplane.svg".into());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(run(seconds, rounds, &svg));
}

async fn run(seconds: u64, rounds: usize, svg: &str) {
    let dir = tempdir();
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("the upstream's port");
    let upstream_port = listener.local_addr().expect("bound").port();
    tokio::spawn(upstream(listener));
    let mut targets = vec![
        Target {
            name: "direct",
            port: upstream_port,
            processes: Vec::new(),
        },
        start_envoy(upstream_port, &dir),
        start_weft_proxy(upstream_port, &dir),
        start_forwarder(upstream_port),
    ];
    if !std::env::args().any(|a| a == "--no-pairs") {
        let ids = identities();
        targets.push(start_pair("envoy", ENVOY_PAIR, upstream_port, &ids, &dir));
        targets.push(start_pair(
            "weft-proxy",
            WEFT_PAIR,
            upstream_port,
            &ids,
            &dir,
        ));
    }
    for t in &targets {
        until_answers(t.port, Protocol::Http1).await;
    }
    println!(
        "{seconds} s per measurement, {rounds} interleaved rounds; proxies on core 0, load and upstream on core 1"
    );
    // (protocol, mode, target) -> figures of each round.
    let mut all: Vec<(Protocol, &'static str, &'static str, Vec<Figures>)> = Vec::new();
    for round in 0..rounds {
        for protocol in [Protocol::Http1, Protocol::H2c] {
            for (mode, fixed) in [("max", false), ("1k/s", true)] {
                for t in &targets {
                    let pids: Vec<u32> = t.processes.iter().map(Child::id).collect();
                    let cpu = || {
                        pids.iter()
                            .copied()
                            .map(cpu_seconds)
                            .fold(0.0, |a, b| a + b)
                    };
                    let cpu_before = cpu();
                    let outcome = if fixed {
                        fixed_rate(t.port, protocol, seconds).await
                    } else {
                        max_rate(t.port, protocol, seconds).await
                    };
                    let cpu = cpu() - cpu_before;
                    let mut sorted = outcome.latencies.clone();
                    sorted.sort_unstable();
                    let figures = Figures {
                        rps: outcome.done as f64 / outcome.elapsed.as_secs_f64(),
                        cpu_per_10k: if outcome.done > 0 {
                            cpu * 10_000.0 / outcome.done as f64
                        } else {
                            f64::NAN
                        },
                        p50: percentile(&sorted, 0.50),
                        p90: percentile(&sorted, 0.90),
                        p99: percentile(&sorted, 0.99),
                        rss: pids.iter().copied().map(rss_mib).fold(0.0, |a, b| a + b),
                        failed: outcome.failed,
                    };
                    match all
                        .iter_mut()
                        .find(|(p, m, n, _)| *p == protocol && *m == mode && *n == t.name)
                    {
                        Some((_, _, _, list)) => list.push(figures),
                        None => all.push((protocol, mode, t.name, vec![figures])),
                    }
                }
            }
        }
        println!("round {} of {rounds} done", round + 1);
    }
    for t in &mut targets {
        for p in &mut t.processes {
            let _ = p.kill();
            let _ = p.wait();
        }
    }
    let median = |values: Vec<f64>| {
        let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    println!(
        "\n{:<9} {:<5} {:<21} {:>9} {:>11} {:>8} {:>8} {:>8} {:>8} {:>7}",
        "protocol",
        "load",
        "target",
        "req/s",
        "CPU s/10k",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "RSS MiB",
        "failed"
    );
    let mut rows = Vec::new();
    for (protocol, mode, name, list) in &all {
        let m = |f: fn(&Figures) -> f64| median(list.iter().map(f).collect());
        let row = (
            protocol.name(),
            *mode,
            *name,
            m(|f| f.rps),
            m(|f| f.cpu_per_10k),
            m(|f| f.p50),
            m(|f| f.p90),
            m(|f| f.p99),
            m(|f| f.rss),
            list.iter().map(|f| f.failed).sum::<u64>(),
        );
        println!(
            "{:<9} {:<5} {:<27} {:>9.0} {:>11.3} {:>8.3} {:>8.3} {:>8.3} {:>8.1} {:>7}",
            row.0, row.1, row.2, row.3, row.4, row.5, row.6, row.7, row.8, row.9
        );
        rows.push(row);
    }
    // Added latency over direct, at the fixed rate.
    println!("\nadded p50/p90/p99 at 1,000 requests/s (over direct):");
    for protocol in [Protocol::Http1, Protocol::H2c] {
        let find = |name: &str| {
            rows.iter()
                .find(|r| r.0 == protocol.name() && r.1 == "1k/s" && r.2 == name)
                .map(|r| (r.5, r.6, r.7))
        };
        let Some(direct) = find("direct") else {
            continue;
        };
        for name in [
            "Envoy 1.40",
            "weft-proxy",
            "bare hyper forwarder",
            ENVOY_PAIR,
            WEFT_PAIR,
        ] {
            if let Some((p50, p90, p99)) = find(name) {
                println!(
                    "  {:<9} {:<27} {:.3} / {:.3} / {:.3} ms",
                    protocol.name(),
                    name,
                    p50 - direct.0,
                    p90 - direct.1,
                    p99 - direct.2
                );
            }
        }
    }
    // The issue's targets, as ratios in this one run.
    println!("\nweft-proxy against Envoy and the forwarder (this run):");
    for protocol in [Protocol::Http1, Protocol::H2c] {
        let find = |mode: &str, name: &str| {
            rows.iter()
                .find(|r| r.0 == protocol.name() && r.1 == mode && r.2 == name)
        };
        let (Some(weft), Some(envoy), Some(bare)) = (
            find("max", "weft-proxy"),
            find("max", "Envoy 1.40"),
            find("max", "bare hyper forwarder"),
        ) else {
            continue;
        };
        let added_p99 = |name: &str| {
            let direct = find("1k/s", "direct")?.7;
            Some(find("1k/s", name)?.7 - direct)
        };
        println!(
            "  {:<9} requests/s per core {:.2}x Envoy (target >= 3), {:.2}x the forwarder (target >= 0.8); \
             CPU per request {:.2}x Envoy; RSS {:.1} MiB vs {:.1} (target <= 20); added p99 at 1,000/s {}",
            protocol.name(),
            weft.3 / envoy.3,
            weft.3 / bare.3,
            weft.4 / envoy.4,
            weft.8,
            envoy.8,
            match (added_p99("weft-proxy"), added_p99("Envoy 1.40")) {
                (Some(w), Some(e)) if e > 0.0 => format!(
                    "{w:.3} ms vs {e:.3} ms = {:.2}x Envoy (target <= 0.2)",
                    w / e
                ),
                _ => "n/a".into(),
            }
        );
    }
    for protocol in [Protocol::Http1, Protocol::H2c] {
        let find = |mode: &str, name: &str| {
            rows.iter()
                .find(|r| r.0 == protocol.name() && r.1 == mode && r.2 == name)
        };
        if let (Some(weft), Some(envoy)) = (find("max", WEFT_PAIR), find("max", ENVOY_PAIR)) {
            println!(
                "  {:<9} the pair (mTLS, authorization): requests/s {:.2}x Envoy's pair; CPU per request {:.2}x; RSS {:.1} MiB vs {:.1}",
                protocol.name(),
                weft.3 / envoy.3,
                weft.4 / envoy.4,
                weft.8,
                envoy.8
            );
        }
    }
    let chart = chart(&rows);
    if std::fs::write(svg, chart).is_ok() {
        println!("\nchart: {svg}");
    }
}

type Row = (
    &'static str,
    &'static str,
    &'static str,
    f64,
    f64,
    f64,
    f64,
    f64,
    f64,
    u64,
);

/// Bars of requests/s at full load and of p99 at 1,000/s, per protocol
/// and target.
fn chart(rows: &[Row]) -> String {
    let bars = |mode: &str, value: fn(&Row) -> f64| -> Vec<(String, f64)> {
        rows.iter()
            .filter(|r| r.1 == mode)
            .map(|r| (format!("{} {}", r.0, r.2), value(r)))
            .collect()
    };
    let panels = [
        ("requests/s, one core, keep-alive", bars("max", |r| r.3)),
        (
            "CPU seconds per 10,000 requests, at full load",
            bars("max", |r| r.4),
        ),
        ("p99 ms at 1,000 requests/s", bars("1k/s", |r| r.7)),
        ("resident memory, MiB", bars("max", |r| r.8)),
    ];
    let (width, bar_h, gap) = (760.0, 18.0, 6.0);
    let mut y = 20.0;
    let mut body = String::new();
    for (title, values) in panels {
        body.push_str(&format!(
            "<text x=\"10\" y=\"{y}\" font-weight=\"bold\">{title}</text>\n"
        ));
        y += 10.0;
        let max = values
            .iter()
            .map(|(_, v)| *v)
            .filter(|v| v.is_finite())
            .fold(0.0, f64::max);
        for (label, value) in values {
            let w = if max > 0.0 && value.is_finite() {
                (value / max) * 420.0
            } else {
                0.0
            };
            body.push_str(&format!(
                "<text x=\"10\" y=\"{:.0}\" font-size=\"12\">{label}</text>\
                 <rect x=\"250\" y=\"{:.0}\" width=\"{w:.1}\" height=\"{bar_h}\" fill=\"#4a7bd0\"/>\
                 <text x=\"{:.0}\" y=\"{:.0}\" font-size=\"12\">{}</text>\n",
                y + 13.0,
                y,
                255.0 + w,
                y + 13.0,
                if value >= 100.0 {
                    format!("{value:.0}")
                } else {
                    format!("{value:.3}")
                }
            ));
            y += bar_h + gap;
        }
        y += 20.0;
    }
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{y:.0}\" font-family=\"sans-serif\">\n{body}</svg>\n"
    )
}

const ENVOY_PAIR: &str = "Envoy pair, mTLS+RBAC";
const WEFT_PAIR: &str = "weft-proxy pair, mTLS+RBAC";

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("weft-dataplane-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    dir
}

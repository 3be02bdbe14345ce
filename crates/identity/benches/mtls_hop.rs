//! What the mTLS hop between two sidecars costs: requests at a steady
//! 1,000 per second through two Envoys (caller side, then receiving side,
//! then the app), once over plaintext and once over mutual TLS with
//! weft's certificates (ECDSA P-256 SVIDs from a cluster CA, the peer's
//! SPIFFE ID checked), and straight to the app for reference. Requests
//! are sent on schedule whatever the answers (open loop). Prints figures; asserts
//! nothing.
//!
//! cargo bench -p weft-identity --bench mtls_hop   (needs Envoy: scripts/setup)

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use weft_identity::{Authority, Bundle, CertRequest, SpiffeId, certificates_to_pem};

const RATE: u64 = 1000;
const WARMUP: Duration = Duration::from_secs(1);
const MEASURE: Duration = Duration::from_secs(4);
/// Rounds per path, taken in turns: this machine's hiccups (it is a VM)
/// then fall on every path alike, and the median round shows through.
const ROUNDS: usize = 5;

fn envoy() -> PathBuf {
    std::env::var_os("WEFT_ENVOY").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.tools/venv/bin/envoy"),
        PathBuf::from,
    )
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A workload's certificate chain and key, in files Envoy reads.
struct Identity {
    chain: PathBuf,
    key: PathBuf,
}

fn identity(dir: &Path, ca: &Authority, service: &str) -> Identity {
    let request = CertRequest::workload_key().unwrap();
    let id = SpiffeId::workload(ca.trust_domain(), "shop", service).unwrap();
    let leaf = ca
        .issue_svid(&request.csr, &id, Duration::from_secs(3600))
        .unwrap();
    let chain: Vec<_> = std::iter::once(leaf).chain(ca.chain()).collect();
    let identity = Identity {
        chain: dir.join(format!("{service}.pem")),
        key: dir.join(format!("{service}.key")),
    };
    std::fs::write(&identity.chain, certificates_to_pem(&chain)).unwrap();
    std::fs::write(&identity.key, request.key.serialize_pem()).unwrap();
    identity
}

/// weft's TLS settings for one side: its certificate, the bundle, and the
/// peer identities it accepts.
fn tls(side: &str, me: &Identity, bundle: &Path, peer: &str) -> String {
    let (kind, extra) = match side {
        "downstream" => ("DownstreamTlsContext", "require_client_certificate: true,"),
        _ => ("UpstreamTlsContext", ""),
    };
    // One line (a YAML flow mapping), so it fits at any indentation.
    format!(
        r#"transport_socket: {{name: envoy.transport_sockets.tls, typed_config: {{"@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.{kind}, {extra} common_tls_context: {{tls_certificates: [{{certificate_chain: {{filename: {chain}}}, private_key: {{filename: {key}}}}}], validation_context: {{trusted_ca: {{filename: {bundle}}}, match_typed_subject_alt_names: [{{san_type: URI, matcher: {{{peer}}}}}]}}}}}}}}"#,
        chain = me.chain.display(),
        key = me.key.display(),
        bundle = bundle.display(),
    )
}

/// An Envoy with one HTTP listener on `listen` forwarding to `upstream`;
/// TLS on either side as given.
fn proxy(
    dir: &Path,
    name: &str,
    listen: u16,
    upstream: u16,
    downstream_tls: Option<String>,
    upstream_tls: Option<String>,
    connection_per_request: bool,
) -> Child {
    let upstream_options = if connection_per_request {
        r#"typed_extension_protocol_options: {envoy.extensions.upstreams.http.v3.HttpProtocolOptions: {"@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions, common_http_protocol_options: {max_requests_per_connection: 1}, explicit_http_config: {http_protocol_options: {}}}}"#
    } else {
        ""
    };
    let config = format!(
        r#"admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
static_resources:
  listeners:
  - name: {name}
    address: {{socket_address: {{address: 127.0.0.1, port_value: {listen}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}
          route_config: {{virtual_hosts: [{{name: all, domains: ["*"], routes: [{{match: {{prefix: "/"}}, route: {{cluster: next}}}}]}}]}}
          http_filters: [{{name: envoy.filters.http.router, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}}}]
      {downstream}
  clusters:
  - name: next
    type: STATIC
    load_assignment: {{cluster_name: next, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {upstream}}}}}}}}}]}}]}}
    {upstream_tls}
    {upstream_options}
"#,
        admin = free_port(),
        downstream = downstream_tls.unwrap_or_default(),
        upstream_tls = upstream_tls.unwrap_or_default(),
    );
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, config).unwrap();
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
    Command::new(envoy())
        .arg("-c")
        .arg(&path)
        .args([
            "--use-dynamic-base-id",
            "--log-level",
            "warn",
            "--concurrency",
            "1",
        ])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("Envoy starts (run scripts/setup)")
}

/// Latency figures of one path.
struct Figures {
    sent: usize,
    failed: usize,
    sorted: Vec<Duration>,
}

impl Figures {
    fn at(&self, quantile: f64) -> Duration {
        let i = ((self.sorted.len() as f64 * quantile) as usize).min(self.sorted.len() - 1);
        self.sorted[i]
    }
}

/// Sends `RATE` requests a second to `port` for `WARMUP` + `MEASURE`, and
/// keeps the latencies of the measured part.
async fn load(port: u16) -> Figures {
    weft_identity::tls::install_provider();
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/");
    let started = Instant::now();
    while client.get(&url).send().await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{url} never answered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let every = Duration::from_micros(1_000_000 / RATE);
    let total = ((WARMUP + MEASURE).as_micros() / every.as_micros()) as usize;
    let warmup = (WARMUP.as_micros() / every.as_micros()) as usize;
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let mut tasks = Vec::with_capacity(total);
    for i in 0..total {
        let due = start + every * i as u32;
        tokio::time::sleep_until(due).await;
        let (client, url) = (client.clone(), url.clone());
        // Each request is its own task, so a slow answer delays no other
        // request: the load stays open-loop, and the latency is the
        // request's own (timer lateness does not count).
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            let ok = matches!(client.get(&url).send().await, Ok(r) if r.status() == 200);
            (ok, sent.elapsed())
        }));
    }
    let mut figures = Figures {
        sent: total - warmup,
        failed: 0,
        sorted: Vec::new(),
    };
    for (i, task) in tasks.into_iter().enumerate() {
        let (ok, latency) = task.await.unwrap();
        if i < warmup {
            continue;
        }
        if ok {
            figures.sorted.push(latency);
        } else {
            figures.failed += 1;
        }
    }
    figures.sorted.sort();
    figures
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let root = Authority::root("bench.example", Duration::from_secs(24 * 3600)).unwrap();
    let request = CertRequest::intermediate("bench.example", "east").unwrap();
    let cert = root
        .sign_intermediate(&request.csr, "east", Duration::from_secs(12 * 3600))
        .unwrap();
    let ca = Authority::from_parts(cert, request.key, Vec::new()).unwrap();
    let bundle = dir.path().join("bundle.pem");
    std::fs::write(
        &bundle,
        Bundle::new("bench.example", vec![root.certificate().clone()]).to_pem(),
    )
    .unwrap();
    let client_id = identity(dir.path(), &ca, "client");
    let reviews_id = identity(dir.path(), &ca, "reviews");

    // The app: answers every request with a short body.
    let app = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app_port = app.local_addr().unwrap().port();
    tokio::spawn(async move {
        let router = axum::Router::new().fallback(|| async { "ok\n" });
        axum::serve(app, router).await.unwrap();
    });

    println!(
        "{RATE} requests/s, {ROUNDS} rounds of {MEASURE:?} per path taken in turns (each after {WARMUP:?} of warm-up), HTTP/1.1 on kept-alive connections, Envoy with one worker; latency in ms, the median round's"
    );
    println!("path                           p50     p90     p99   p99.9  failed");
    let report = |name: &str, rounds: &[Figures]| {
        let median = |q: f64| {
            let mut at: Vec<Duration> = rounds.iter().map(|f| f.at(q)).collect();
            at.sort();
            at[at.len() / 2]
        };
        let failed: usize = rounds.iter().map(|f| f.failed).sum();
        let sent: usize = rounds.iter().map(|f| f.sent).sum();
        println!(
            "{name:<27} {:>7} {:>7} {:>7} {:>7}  {failed}/{sent}",
            ms(median(0.5)),
            ms(median(0.9)),
            ms(median(0.99)),
            ms(median(0.999)),
        );
        [median(0.5), median(0.9), median(0.99)]
    };

    let mut proxies = Vec::new();
    let mut entry = Vec::new();
    for (mtls, fresh) in [(false, false), (true, false), (false, true), (true, true)] {
        let (inbound, outbound) = (free_port(), free_port());
        let tag = match (mtls, fresh) {
            (false, false) => "plain",
            (true, false) => "mtls",
            (false, true) => "plain-fresh",
            (true, true) => "mtls-fresh",
        };
        proxies.push(proxy(
            dir.path(),
            &format!("inbound-{tag}"),
            inbound,
            app_port,
            mtls.then(|| {
                tls(
                    "downstream",
                    &reviews_id,
                    &bundle,
                    "prefix: \"spiffe://bench.example/\"",
                )
            }),
            None,
            false,
        ));
        proxies.push(proxy(
            dir.path(),
            &format!("outbound-{tag}"),
            outbound,
            inbound,
            None,
            mtls.then(|| {
                tls(
                    "upstream",
                    &client_id,
                    &bundle,
                    "exact: \"spiffe://bench.example/ns/shop/sa/reviews\"",
                )
            }),
            fresh,
        ));
        entry.push((tag, outbound));
    }
    let paths = [("app", app_port), entry[0], entry[1], entry[2], entry[3]];
    let mut rounds: Vec<Vec<Figures>> = paths.iter().map(|_| Vec::new()).collect();
    for _ in 0..ROUNDS {
        for (i, (tag, port)) in paths.iter().enumerate() {
            let figures = load(*port).await;
            if figures.sorted.is_empty() {
                for side in ["inbound", "outbound"] {
                    let log = std::fs::read_to_string(dir.path().join(format!("{side}-{tag}.log")));
                    eprintln!("{side}-{tag}: {}", log.unwrap_or_default());
                }
                panic!("no request got through to {tag}");
            }
            rounds[i].push(figures);
        }
    }
    report("app alone", &rounds[0]);
    let plain = report("two sidecars, plain", &rounds[1]);
    let mtls = report("two sidecars, mTLS", &rounds[2]);
    let plain_fresh = report("plain, new connection each", &rounds[3]);
    let mtls_fresh = report("mTLS, new connection each", &rounds[4]);
    let added = |a: &[Duration; 3], b: &[Duration; 3], i: usize| {
        (b[i].as_secs_f64() - a[i].as_secs_f64()) * 1000.0
    };
    println!(
        "the mTLS hop adds {:.3} ms at p50, {:.3} ms at p90, {:.3} ms at p99 over plaintext; \
         with a handshake per request {:.3} / {:.3} / {:.3} ms",
        added(&plain, &mtls, 0),
        added(&plain, &mtls, 1),
        added(&plain, &mtls, 2),
        added(&plain_fresh, &mtls_fresh, 0),
        added(&plain_fresh, &mtls_fresh, 1),
        added(&plain_fresh, &mtls_fresh, 2),
    );
    for mut child in proxies {
        let _ = child.kill();
        let _ = child.wait();
    }
}

//! End-to-end mesh tests: the real `weft server`, `weft edge`, `weft
//! sidecar` with real Envoy, and `weft x echo` workloads, on loopback.
//! Every assertion is about real requests through the sidecars.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::mesh::{DataPlane, Mesh, logged, on_both_data_planes, sidecar, with_echo_app};
use support::tokens::{Issuer, JwksServer};
use support::{Proc, WEFT, free_port, metric, until, weft_up, write};

fn route(spec: &str) -> String {
    format!(
        "apiVersion: weft.dev/v1alpha1
kind: ServiceRoute
metadata: {{name: reviews, tenant: retail, workspace: shop, trafficGroup: traffic}}
spec:
  service: {{name: reviews, namespace: shop}}
  subsets:
    - {{name: v1, labels: {{version: v1}}}}
    - {{name: v2, labels: {{version: v2}}}}
{spec}"
    )
}

fn setting(spec: &str) -> String {
    format!(
        "apiVersion: weft.dev/v1alpha1
kind: TrafficSetting
metadata: {{name: reviews, tenant: retail, workspace: shop, trafficGroup: traffic}}
spec:
  service: {{name: reviews, namespace: shop}}
{spec}"
    )
}

async fn routes_split_match_and_stick(data_plane: DataPlane) {
    let mut mesh = Mesh::on(data_plane).await;
    let _v1 = mesh.workload("reviews", "reviews-v1", "v1");
    let _v2 = mesh.workload("reviews", "reviews-v2", "v2");
    let (_client, port) = mesh.client();
    mesh.until_in_sync(3).await;
    until(
        "both versions answer",
        Duration::from_secs(20),
        async || mesh.instances(port, 10, "/").await.len() == 2,
    )
    .await;

    // Unknown names get a clear 404, not a hang.
    let (status, _) = mesh.call(port, "nope", "/", &[]).await;
    assert_eq!(status, 404);
    // Nothing translated allows an upgrade: a websocket handshake is
    // refused before any filter runs (Envoy's 403), never half-passed to
    // the app as a plain request.
    let upgrade = [("connection", "upgrade"), ("upgrade", "websocket")];
    let (status, _) = mesh.call(port, "reviews", "/", &upgrade).await;
    assert_eq!(status, 403, "a websocket upgrade");
    // What Envoy's connection manager and router add, either proxy adds:
    // the scheme on the way in, the server's name and the upstream's time
    // on the way out; the caller's `x-envoy-*` control headers are
    // dropped, never obeyed (a 1 ms timeout would fail the call).
    let response = mesh
        .http
        .get(format!("http://127.0.0.1:{port}/"))
        .header("host", "reviews")
        .header("x-envoy-upstream-rq-timeout-ms", "1")
        .header("x-envoy-max-retries", "5")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["server"], "envoy");
    let upstream_ms = response.headers()["x-envoy-upstream-service-time"].clone();
    assert!(
        upstream_ms
            .to_str()
            .is_ok_and(|ms| ms.parse::<u64>().is_ok()),
        "{upstream_ms:?}"
    );
    let seen: Value = response.json().await.unwrap();
    let headers = &seen["headers"];
    assert_eq!(headers["x-forwarded-proto"], "http", "{headers}");
    // The inbound route keeps no time of its own (the caller's side
    // does), so it tells the app none.
    for dropped in [
        "x-envoy-upstream-rq-timeout-ms",
        "x-envoy-max-retries",
        "x-envoy-expected-rq-timeout-ms",
    ] {
        assert!(headers.get(dropped).is_none(), "{dropped}: {headers}");
    }

    let took = mesh
        .apply(
            &route(
                "  rules:
    - matches:
        - headers: [{name: x-canary, exact: 'yes'}]
        - path: {prefix: /beta/}
        - path: {regex: '/items/[0-9]+'}
        - query: [{name: preview, exact: '1'}]
      destinations: [{subset: v2}]
    - destinations: [{subset: v1, weight: 80}, {subset: v2, weight: 20}]
",
            ),
            3,
        )
        .await;
    println!("apply -> every proxy ACKed: {took:?}");
    until(
        "the canary header reaches v2 only",
        Duration::from_secs(20),
        async || {
            let (_, body) = mesh
                .call(port, "reviews", "/", &[("x-canary", "yes")])
                .await;
            body.is_some_and(|b| b["version"] == "v2")
        },
    )
    .await;
    for _ in 0..20 {
        let (_, body) = mesh
            .call(port, "reviews", "/", &[("x-canary", "yes")])
            .await;
        assert_eq!(body.unwrap()["version"], "v2");
        let (_, body) = mesh.call(port, "reviews.shop", "/beta/x", &[]).await;
        assert_eq!(body.unwrap()["version"], "v2");
        // A path matched by a regular expression, and a query parameter.
        let (_, body) = mesh.call(port, "reviews", "/items/42", &[]).await;
        assert_eq!(body.unwrap()["version"], "v2");
        let (_, body) = mesh.call(port, "reviews", "/cart?preview=1", &[]).await;
        assert_eq!(body.unwrap()["version"], "v2");
    }
    let seen = mesh.instances(port, 1000, "/").await;
    let v2 = *seen.get("reviews-v2").unwrap_or(&0) as f64 / 1000.0;
    println!("80/20 split over 1000 requests: {seen:?}");
    assert_eq!(
        seen.values().sum::<usize>(),
        seen.get("reviews-v1").unwrap_or(&0) + seen.get("reviews-v2").unwrap_or(&0),
        "every request answered: {seen:?}"
    );
    // 4 standard deviations of a binomial(1000, 0.2) is about 0.05.
    assert!(
        (v2 - 0.2).abs() < 0.05,
        "v2 share {v2} is not 20% ± 5%: {seen:?}"
    );

    // Sticky sessions: each user stays on one instance of a 50/50 split.
    mesh.apply(
        &route(
            "  rules:
    - destinations: [{subset: v1, weight: 50}, {subset: v2, weight: 50}]
  stickySession: {header: x-user}
",
        ),
        3,
    )
    .await;
    let mut users_per_version = BTreeMap::new();
    for user in 0..20 {
        let user = format!("user-{user}");
        let mut versions = std::collections::BTreeSet::new();
        for _ in 0..10 {
            let (_, body) = mesh.call(port, "reviews", "/", &[("x-user", &user)]).await;
            versions.insert(body.unwrap()["version"].as_str().unwrap().to_string());
        }
        assert_eq!(versions.len(), 1, "{user} moved between {versions:?}");
        *users_per_version
            .entry(versions.into_iter().next().unwrap())
            .or_insert(0) += 1;
    }
    println!("sticky users per version: {users_per_version:?}");
    assert_eq!(
        users_per_version.len(),
        2,
        "20 users all hashed to one side: {users_per_version:?}"
    );
}

async fn resilience_settings_act_on_real_failures(data_plane: DataPlane) {
    let mut mesh = Mesh::on(data_plane).await;
    let _a = mesh.workload("reviews", "reviews-a", "v1");
    let _b = mesh.workload("reviews", "reviews-b", "v1");
    let (_client, port) = mesh.client();
    mesh.until_in_sync(3).await;
    until(
        "both instances answer",
        Duration::from_secs(20),
        async || mesh.instances(port, 10, "/").await.len() == 2,
    )
    .await;

    // Without retries, the failing instance's answers reach the caller.
    let seen = mesh.instances(port, 40, "/?fail=reviews-a").await;
    assert!(seen.contains_key("status 503"), "{seen:?}");

    // Retries hide them.
    mesh.apply(&setting("  retries: {attempts: 3, retryOn: [5xx]}\n"), 3)
        .await;
    let seen = mesh.instances(port, 100, "/?fail=reviews-a").await;
    assert_eq!(
        seen,
        BTreeMap::from([("reviews-b".to_string(), 100)]),
        "retries did not hide the failures"
    );

    // Outlier detection ejects the failing instance, then brings it back.
    mesh.apply(&setting(
        "  outlierDetection: {consecutive5xx: 3, interval: 500ms, baseEjectionTime: 3s, maxEjectionPercent: 50}\n",
    ), 3).await;
    let _ = mesh.instances(port, 20, "/?fail=reviews-a").await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let seen = mesh.instances(port, 30, "/?fail=reviews-a").await;
    assert_eq!(
        seen,
        BTreeMap::from([("reviews-b".to_string(), 30)]),
        "the failing instance was not ejected"
    );
    until(
        "the ejected instance comes back",
        Duration::from_secs(20),
        async || {
            mesh.instances(port, 10, "/")
                .await
                .contains_key("reviews-a")
        },
    )
    .await;

    // The circuit breaker rejects what overflows its limits.
    mesh.apply(
        &setting("  circuitBreaker: {maxRequests: 1, maxPendingRequests: 1, maxConnections: 1}\n"),
        3,
    )
    .await;
    let calls: Vec<_> = (0..12)
        .map(|_| {
            let request = mesh
                .http
                .get(format!("http://127.0.0.1:{port}/?delay=800ms"))
                .header("host", "reviews");
            tokio::spawn(async move { request.send().await.map_or(0, |r| r.status().as_u16()) })
        })
        .collect();
    let mut statuses = Vec::new();
    for call in calls {
        statuses.push(call.await.unwrap());
    }
    let rejected = statuses.iter().filter(|s| **s == 503).count();
    let served = statuses.iter().filter(|s| **s == 200).count();
    println!("circuit breaker, 12 concurrent slow calls: {served} served, {rejected} rejected");
    assert!(rejected >= 6 && served >= 1, "{statuses:?}");

    // Timeouts fire.
    mesh.apply(&setting("  timeout: 300ms\n"), 3).await;
    let started = Instant::now();
    let (status, _) = mesh.call(port, "reviews", "/?delay=3s", &[]).await;
    assert_eq!(status, 504);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the timeout took {:?}",
        started.elapsed()
    );
    // It covers the whole response: a body still coming when it runs out
    // is cut short (the stream reset) and logged as a response timeout.
    let started = Instant::now();
    let response = mesh
        .http
        .get(format!("http://127.0.0.1:{port}/?trickle=3s"))
        .header("host", "reviews")
        .send()
        .await
        .expect("the headers come in time");
    assert_eq!(response.status(), 200);
    let body = response.bytes().await;
    assert!(body.is_err(), "the body outlived the timeout: {body:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the body was cut after {:?}",
        started.elapsed()
    );
    until("the cut is logged", Duration::from_secs(10), async || {
        logged(
            &mesh.sidecar_log("client-1"),
            &[
                ("path", "/?trickle=3s"),
                ("response_code", "200"),
                ("response_flags", "UT"),
            ],
        )
    })
    .await;
}

async fn registry_follows_workloads_and_edge_outlives_server(data_plane: DataPlane) {
    let mut mesh = Mesh::on(data_plane).await;
    let mut a = mesh.workload("reviews", "reviews-a", "v1");
    let (_client, port) = mesh.client();
    until("reviews-a answers", Duration::from_secs(20), async || {
        mesh.instances(port, 3, "/").await.contains_key("reviews-a")
    })
    .await;
    let _b = mesh.workload("reviews", "reviews-b", "v1");
    until(
        "a new instance gets traffic",
        Duration::from_secs(20),
        async || mesh.instances(port, 10, "/").await.len() == 2,
    )
    .await;
    assert!(a.stop(), "a sidecar did not stop within 10 s of SIGTERM");
    until(
        "a stopped instance gets none",
        Duration::from_secs(20),
        async || {
            mesh.instances(port, 10, "/").await == BTreeMap::from([("reviews-b".to_string(), 10)])
        },
    )
    .await;

    // An unknown credential gets no certificate (so no Envoy starts), with
    // a log line on both sides.
    let real = std::fs::read_to_string(mesh.credential("reviews")).unwrap();
    let bundle: Vec<&str> = real.lines().skip(1).collect();
    let bogus = PathBuf::from(write(
        mesh.dir.path(),
        "bogus.token",
        &format!("weft_not-a-real-secret\n{}\n", bundle.join("\n")),
    ));
    let _intruder = mesh.sidecar("reviews", "intruder", Some("v9"), &bogus, free_port());
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(mesh.edge_log().contains("refused a workload certificate")
        && mesh.edge_log().contains("unknown or revoked")
        && mesh
            .sidecar_log("intruder")
            .contains("the edge refused the workload credential"))
    {
        assert!(
            Instant::now() < deadline,
            "no refusal logged\n--- edge\n{}\n--- intruder\n{}",
            mesh.edge_log(),
            mesh.sidecar_log("intruder")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!mesh.instances(port, 10, "/").await.contains_key("intruder"));

    // A gateway's credential runs a gateway, never a sidecar.
    let run = mesh.server().weft(
        &mesh.admin,
        &[
            "token",
            "create",
            "--cluster",
            "east",
            "--namespace",
            "shop",
            "--gateway",
            "shop-ingress",
        ],
    );
    assert_eq!(run.code, 0, "{run:?}");
    let gateway = PathBuf::from(write(mesh.dir.path(), "gateway.token", &run.stdout));
    let _impostor = mesh.sidecar(
        "shop-ingress",
        "impostor",
        Some("v9"),
        &gateway,
        free_port(),
    );
    until(
        "the edge refuses a sidecar that presents a gateway's credential",
        Duration::from_secs(30),
        async || {
            mesh.edge_log()
                .contains("is a gateway's, but the proxy announces the role sidecar")
        },
    )
    .await;

    // `weft get clusters` shows the edge connected with its proxies.
    let get = mesh
        .server()
        .weft(&mesh.admin, &["get", "cluster", "east", "-o", "json"]);
    let cluster: Value = serde_json::from_str(&get.stdout).unwrap();
    assert_eq!(cluster["status"]["edge"], "connected", "{cluster}");
    // Each proxy's identity and certificate expiry show there too.
    let details = cluster["status"]["proxyDetails"].as_array().unwrap();
    let b = details
        .iter()
        .find(|p| p["node"] == "reviews-b")
        .unwrap_or_else(|| panic!("reviews-b is not in {cluster}"));
    assert_eq!(
        b["certificate"]["identity"], "spiffe://weft/ns/shop/sa/reviews",
        "{b}"
    );
    assert_eq!(b["certificate"]["overdue"], false, "{b}");
    assert!(
        b["certificate"]["expiresAt"]
            .as_str()
            .is_some_and(|e| e.ends_with('Z')),
        "{b}"
    );
    let table = mesh.server().weft(&mesh.admin, &["get", "clusters"]);
    assert!(table.stdout.contains("connected"), "{table:?}");

    // With the server gone, a restarted edge serves its last configuration
    // and still registers new workloads.
    // Both stop at once on SIGTERM, though the edge holds a long poll on
    // the server and the proxies hold streams on the edge.
    let credential = mesh.credential("reviews");
    let stopping = Instant::now();
    mesh.server.take().unwrap().stop();
    assert!(
        stopping.elapsed() < Duration::from_secs(10),
        "the server took {:?} to stop",
        stopping.elapsed()
    );
    assert!(
        mesh.edge.process.take().unwrap().stop(),
        "the edge did not stop within 10 s of SIGTERM"
    );
    mesh.start_edge().await;
    let status = mesh.edge_status().await;
    assert_eq!(status["fromDisk"], true, "{status}");
    // Ready for a load balancer once it serves the configuration it kept.
    let readyz = format!("http://127.0.0.1:{}/readyz", mesh.edge.admin_port);
    until("the edge is ready", Duration::from_secs(10), async || {
        mesh.http
            .get(&readyz)
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    let _c = mesh.sidecar("reviews", "reviews-c", Some("v1"), &credential, free_port());
    until(
        "a workload started without the server gets traffic",
        Duration::from_secs(30),
        async || {
            mesh.instances(port, 10, "/")
                .await
                .contains_key("reviews-c")
        },
    )
    .await;
}

/// Crash-only agents: `weft sidecar` killed with SIGKILL takes its Envoy
/// and its app along, and the very same command started again serves at
/// once (no port held by an orphan, no leftover socket in the way).
async fn a_killed_sidecar_takes_its_children_along_and_the_same_command_serves_again(
    data_plane: DataPlane,
) {
    let mut mesh = Mesh::on(data_plane).await;
    let (_client, port) = mesh.client();
    let credential = mesh.credential("reviews");
    let log = mesh.dir.path().join("reviews-v1.log");
    let mut command = sidecar(
        data_plane,
        "reviews-v1",
        "reviews",
        "reviews",
        mesh.edge.xds_port,
        &credential,
        &log,
    );
    // Its own ports: the other data plane's run of this test is running.
    command
        .args(["--inbound", &format!("127.0.0.1:{}", free_port())])
        .args(["--outbound-port", &free_port().to_string()]);
    with_echo_app(&mut command, "reviews", "reviews-v1", Some("v1"));
    let mut first = Proc(command.spawn().unwrap());
    mesh.until_in_sync(2).await;
    until("reviews-v1 answers", Duration::from_secs(30), async || {
        mesh.instances(port, 1, "/")
            .await
            .contains_key("reviews-v1")
    })
    .await;
    let children = weft_agent::procfs::children_of(first.0.id());
    assert_eq!(children.len(), 2, "Envoy and the app run under the sidecar");

    support::kill9(first.0.id());
    let _ = first.0.wait();
    support::until_gone("the sidecar's Envoy and app are gone", &children).await;

    let restarted = Instant::now();
    let _second = Proc(command.spawn().unwrap());
    until(
        "the restarted sidecar serves",
        Duration::from_secs(30),
        async || {
            mesh.instances(port, 1, "/")
                .await
                .contains_key("reviews-v1")
        },
    )
    .await;
    println!(
        "a killed sidecar, started again, served after {:?}",
        restarted.elapsed()
    );
}

async fn bad_settings_never_reach_proxies_and_nacks_show(data_plane: DataPlane) {
    let mut mesh = Mesh::on(data_plane).await;
    let bad = write(mesh.dir.path(), "bad.yaml", &setting("  timeout: soon\n"));
    let run = mesh.server().weft(&mesh.admin, &["apply", "-f", &bad]);
    assert_eq!(run.code, 3, "{run:?}");
    assert!(run.stderr.contains("spec.timeout"), "{run:?}");

    // A proxy whose outbound port is taken cannot take its listener: Envoy
    // refuses it, and the refusal shows in the cluster's status.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let credential = mesh.credential("client");
    let _client = mesh.sidecar("client", "client-1", None, &credential, port);
    until(
        "the NACK reaches `weft get`",
        Duration::from_secs(30),
        async || {
            let get = mesh
                .server()
                .weft(&mesh.admin, &["get", "cluster", "east", "-o", "json"]);
            serde_json::from_str::<Value>(&get.stdout).is_ok_and(|c| c["status"]["nacks"] == 1)
        },
    )
    .await;
    let get = mesh
        .server()
        .weft(&mesh.admin, &["get", "cluster", "east", "-o", "json"]);
    let cluster: Value = serde_json::from_str(&get.stdout).unwrap();
    let nack = &cluster["status"]["proxyDetails"][0]["nack"];
    assert_eq!(nack["resourceType"], "lds", "{cluster}");
    assert!(nack["message"].as_str().unwrap().contains("bind"), "{nack}");
    drop(taken);
}

#[tokio::test(flavor = "multi_thread")]
async fn weft_up_runs_a_mesh_and_stops_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("up");
    let port = free_port();
    let https = free_port().to_string();
    let up_flags = ["--https-port", https.as_str()];
    let (mut up, printed) = weft_up(&data, port, &up_flags);
    assert!(
        printed.contains(&format!("curl -H 'Host: reviews' http://127.0.0.1:{port}/")),
        "{printed}"
    );
    // The printed curl reaches reviews from outside, over HTTPS through the
    // ingress gateway, trusting the demo CA.
    let outside = printed
        .lines()
        .find(|l| l.trim_start().starts_with("curl --cacert"))
        .unwrap_or_else(|| panic!("no HTTPS curl printed: {printed}"))
        .trim()
        .replacen("curl", "curl -s --max-time 10", 1);
    let answered = Command::new("sh").args(["-c", &outside]).output().unwrap();
    let body: Value = serde_json::from_slice(&answered.stdout)
        .unwrap_or_else(|e| panic!("{outside}: {e}: {answered:?}"));
    assert_eq!(body["service"], "reviews", "{body}");
    weft_identity::tls::install_provider();
    let http = reqwest::Client::new();
    let call = async |canary: bool| -> String {
        let mut request = http
            .get(format!("http://127.0.0.1:{port}/"))
            .header("host", "reviews");
        if canary {
            request = request.header("x-canary", "yes");
        }
        let body: Value = request.send().await.unwrap().json().await.unwrap();
        body["version"].as_str().unwrap().to_string()
    };
    let mut versions = BTreeMap::<String, usize>::new();
    for _ in 0..100 {
        *versions.entry(call(false).await).or_default() += 1;
    }
    println!("weft up: 100 requests to reviews: {versions:?}");
    assert!(
        versions["v1"] > versions.get("v2").copied().unwrap_or(0),
        "{versions:?}"
    );
    assert_eq!(call(true).await, "v2");

    // SIGTERM stops every component: nothing answers on the port after.
    assert!(up.stop(), "weft up did not stop within 10 s of SIGTERM");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the client's sidecar still listens after weft up stopped"
    );

    // A second start picks up the same store and credentials.
    let credentials = std::fs::read_dir(data.join("credentials")).unwrap().count();
    let (mut up, printed) = weft_up(&data, port, &up_flags);
    assert!(printed.contains("clusters/local unchanged"), "{printed}");
    assert_eq!(
        std::fs::read_dir(data.join("credentials")).unwrap().count(),
        credentials
    );
    assert_eq!(call(true).await, "v2");

    // weft up supervises: an edge and a sidecar killed with SIGKILL come
    // back on their own, and the mesh serves through them again.
    let components = || -> Vec<Value> {
        let text = std::fs::read_to_string(data.join("run/components.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    };
    let pid_of = |name: &str| -> Option<u32> {
        components()
            .iter()
            .find(|c| c["name"] == name)
            .and_then(|c| c["pid"].as_u64())
            .map(|pid| pid as u32)
    };
    let (edge, v2) = (pid_of("edge").unwrap(), pid_of("reviews-v2").unwrap());
    let v2_children = weft_agent::procfs::children_of(v2);
    assert_eq!(
        v2_children.len(),
        2,
        "Envoy and the app run under reviews-v2"
    );
    support::kill9(edge);
    support::kill9(v2);
    support::until_gone("reviews-v2's Envoy and app are gone", &v2_children).await;
    until(
        "weft up started the edge and reviews-v2 again",
        Duration::from_secs(30),
        async || {
            components()
                .iter()
                .filter(|c| c["name"] == "edge" || c["name"] == "reviews-v2")
                .all(|c| c["restarts"].as_u64() >= Some(1) && c["pid"].is_u64())
        },
    )
    .await;
    assert_ne!(pid_of("edge"), Some(edge));
    until(
        "reviews-v2 answers again",
        Duration::from_secs(30),
        async || {
            let request = http
                .get(format!("http://127.0.0.1:{port}/"))
                .header("host", "reviews")
                .header("x-canary", "yes");
            match request.send().await {
                Ok(response) => response
                    .json::<Value>()
                    .await
                    .is_ok_and(|b| b["version"] == "v2"),
                Err(_) => false,
            }
        },
    )
    .await;

    // weft up itself killed: everything it started goes with it.
    let all: Vec<u32> = components()
        .iter()
        .filter_map(|c| c["pid"].as_u64().map(|pid| pid as u32))
        .collect();
    let grandchildren: Vec<u32> = all
        .iter()
        .flat_map(|pid| weft_agent::procfs::children_of(*pid))
        .collect();
    // Four Envoys (three sidecars, the ingress gateway), two apps.
    assert_eq!(grandchildren.len(), 6, "{grandchildren:?}");
    support::kill9(up.0.id());
    let _ = up.0.wait();
    support::until_gone(
        "every component of a killed weft up is gone",
        &[all, grandchildren].concat(),
    )
    .await;
}

/// gRPC (HTTP/2 without TLS) through the client's sidecar: the call, its
/// status in trailers and its metadata pass through, and routes apply.
async fn grpc_passes_through_and_follows_routes(data_plane: DataPlane) {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let mut mesh = Mesh::on(data_plane).await;
    let _v1 = mesh.workload("reviews", "reviews-v1", "v1");
    let _v2 = mesh.workload("reviews", "reviews-v2", "v2");
    let (_client, port) = mesh.client();
    mesh.until_in_sync(3).await;
    mesh.apply(
        &route(
            "  rules:
    - matches:
        - headers: [{name: x-canary, exact: 'yes'}]
      destinations: [{subset: v2}]
    - destinations: [{subset: v1}]
",
        ),
        3,
    )
    .await;

    // The app dials its sidecar and names the service as the authority.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .origin("http://reviews".parse().unwrap())
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    let check = |service: &str, canary: bool| {
        let mut request = tonic::Request::new(HealthCheckRequest {
            service: service.to_string(),
        });
        if canary {
            request
                .metadata_mut()
                .insert("x-canary", "yes".parse().unwrap());
        }
        request
    };
    let instance = |response: &tonic::Response<_>| {
        response
            .metadata()
            .get("x-echo-instance")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("?")
            .to_string()
    };

    let mut seen = BTreeMap::<String, usize>::new();
    for _ in 0..20 {
        let response = health.check(check("reviews", false)).await.unwrap();
        assert_eq!(response.get_ref().status(), ServingStatus::Serving);
        *seen.entry(instance(&response)).or_default() += 1;
    }
    assert_eq!(seen, BTreeMap::from([("reviews-v1".to_string(), 20)]));
    let canary = health.check(check("reviews", true)).await.unwrap();
    assert_eq!(instance(&canary), "reviews-v2");

    // An error travels in the trailers, and arrives as the app sent it.
    let missing = health.check(check("nope", false)).await.unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound, "{missing:?}");
}

/// Sends one HTTP/1.1 request over TLS with `openssl s_client` (a client
/// that is not weft's), presenting `identity` (certificate chain and key
/// files) if given. Returns what came back.
fn openssl_request(port: u16, ca: &Path, identity: Option<(&Path, &Path)>) -> String {
    use std::io::Write;
    let mut command = Command::new("openssl");
    command
        .args([
            "s_client",
            "-quiet",
            "-connect",
            &format!("127.0.0.1:{port}"),
        ])
        .arg("-CAfile")
        .arg(ca);
    if let Some((chain, key)) = identity {
        // -cert sends only the first certificate; the chain follows it.
        command
            .arg("-cert")
            .arg(chain)
            .arg("-cert_chain")
            .arg(chain)
            .arg("-key")
            .arg(key);
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl runs (scripts/setup installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"GET / HTTP/1.1\r\nHost: reviews\r\nConnection: close\r\n\r\n")
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
}

/// A workload certificate from the edge for `credential`, written as
/// chain and key files; returns them and the trust bundle file.
async fn workload_identity(
    mesh: &Mesh,
    credential: &Path,
    name: &str,
) -> (PathBuf, PathBuf, PathBuf) {
    let key = weft_identity::CertRequest::workload_key().unwrap();
    let file = std::fs::read_to_string(credential).unwrap();
    let secret = file.lines().next().unwrap();
    let svid: Value = edge_client(credential)
        .post(format!("https://127.0.0.1:{}/v1/svid", mesh.edge.xds_port))
        .bearer_auth(secret)
        .json(&serde_json::json!({"csr": weft_identity::csr_to_pem(&key.csr)}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let chain = PathBuf::from(write(
        mesh.dir.path(),
        &format!("{name}.chain.pem"),
        svid["certificateChain"].as_str().unwrap(),
    ));
    let key_file = PathBuf::from(write(
        mesh.dir.path(),
        &format!("{name}.key.pem"),
        &key.key.serialize_pem(),
    ));
    let bundle = PathBuf::from(write(
        mesh.dir.path(),
        "bundle.pem",
        svid["trust"]["bundle"].as_str().unwrap(),
    ));
    (chain, key_file, bundle)
}

/// An HTTPS client for the edge's xDS port, as a sidecar makes one: the
/// edge must show its SVID of the bundle in `credential`.
fn edge_client(credential: &Path) -> reqwest::Client {
    let file = std::fs::read_to_string(credential).unwrap();
    let pem: Vec<&str> = file.lines().skip(1).collect();
    let trust = std::sync::Arc::new(weft_identity::tls::TrustStore::default());
    trust.set(weft_identity::Bundle::from_roots_pem(&pem.join("\n")).unwrap());
    let tls = weft_identity::tls::client_config(
        trust,
        |bundle| {
            weft_identity::SpiffeId::edge(bundle.trust_domain())
                .unwrap()
                .to_string()
        },
        None,
    )
    .unwrap();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .build()
        .unwrap()
}

async fn strict_mtls_refuses_plaintext_missing_and_foreign_certificates(data_plane: DataPlane) {
    let mut mesh = Mesh::on(data_plane).await;
    let (_v1, _client, _port) = mesh.reviews_and_client().await;
    let inbound = inbound_port(&mesh, "reviews-v1").await;

    // Plaintext to the inbound port gets no answer.
    let plaintext = mesh
        .http
        .get(format!("http://127.0.0.1:{inbound}/"))
        .header("host", "reviews")
        .send()
        .await;
    assert!(plaintext.is_err(), "plaintext was answered: {plaintext:?}");

    // A client certificate issued by this mesh is accepted (so the
    // refusals below are about the certificate).
    let client_credential = mesh.credential("client");
    let (chain, key, bundle) = workload_identity(&mesh, &client_credential, "client").await;
    let answered = openssl_request(inbound, &bundle, Some((&chain, &key)));
    assert!(
        answered.contains("HTTP/1.1 200") && answered.contains("reviews-v1"),
        "{answered}"
    );

    // No client certificate: refused.
    let answered = openssl_request(inbound, &bundle, None);
    assert!(!answered.contains("HTTP/1.1"), "{answered}");

    // A certificate for the same identity from another root: refused.
    let stranger_root = weft_identity::Authority::root("weft", Duration::from_secs(3600)).unwrap();
    let request = weft_identity::CertRequest::workload_key().unwrap();
    let id = weft_identity::SpiffeId::workload("weft", "shop", "client").unwrap();
    let stranger = stranger_root
        .issue_svid(&request.csr, &id, Duration::from_secs(3600))
        .unwrap();
    let stranger_chain = PathBuf::from(write(
        mesh.dir.path(),
        "stranger.chain.pem",
        &weft_identity::certificates_to_pem(&[stranger]),
    ));
    let stranger_key = PathBuf::from(write(
        mesh.dir.path(),
        "stranger.key.pem",
        &request.key.serialize_pem(),
    ));
    let answered = openssl_request(inbound, &bundle, Some((&stranger_chain, &stranger_key)));
    assert!(!answered.contains("HTTP/1.1"), "{answered}");

    // The hop to the edge (xDS and certificate requests) is TLS too, and
    // the edge shows its own SVID. Plaintext gets nothing.
    let xds = mesh.edge.xds_port;
    let plaintext = mesh
        .http
        .post(format!("http://127.0.0.1:{xds}/v1/svid"))
        .send()
        .await;
    assert!(plaintext.is_err(), "plaintext was answered: {plaintext:?}");
    let answered = openssl_request(xds, &bundle, Some((&chain, &key)));
    assert!(
        answered.contains("HTTP/1.1") && !answered.contains("verify error"),
        "{answered}"
    );
    let served = write(
        mesh.dir.path(),
        "edge.pem",
        &served_certificate(xds, &bundle, &chain, &key),
    );
    let text = Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in", &served])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("URI:spiffe://weft/ns/weft-system/sa/weft-edge"),
        "{text}"
    );
    // A certificate from another root is refused at the handshake, and
    // the refusals are counted.
    let answered = openssl_request(xds, &bundle, Some((&stranger_chain, &stranger_key)));
    assert!(!answered.contains("HTTP/1.1"), "{answered}");
    let refused = mesh
        .edge_metric("weft_edge_tls_handshake_failures_total")
        .await
        .unwrap_or(0);
    assert!(refused >= 2, "{refused} refused handshakes counted");
    // Edge to server: the edge port is TLS only, with the server's own
    // SVID, and takes an edge's requests only with an edge's certificate.
    let server = mesh.server();
    let edge_token = mesh.dir.path().join("edge.token");
    let edge_secret = std::fs::read_to_string(&edge_token).unwrap();
    let edge_secret = edge_secret.lines().next().unwrap().to_string();
    let plaintext = mesh
        .http
        .get(format!(
            "{}/v1/edge/config",
            server.edge_url.replace("https://", "http://")
        ))
        .bearer_auth(&edge_secret)
        .send()
        .await;
    assert!(plaintext.is_err(), "plaintext was answered: {plaintext:?}");
    let on_api_port = mesh
        .http
        .get(format!("{}/v1/edge/config", server.url))
        .bearer_auth(&edge_secret)
        .send()
        .await
        .unwrap();
    assert!(
        !on_api_port.status().is_success(),
        "edges have their own port: {on_api_port:?}"
    );
    let trust = std::sync::Arc::new(weft_identity::tls::TrustStore::default());
    trust.set(
        weft_identity::Bundle::from_pem("weft", &std::fs::read_to_string(&bundle).unwrap())
            .unwrap(),
    );
    let server_id = |b: &weft_identity::Bundle| {
        weft_identity::SpiffeId::server(b.trust_domain())
            .unwrap()
            .to_string()
    };
    let as_client = |certificate| {
        let tls = weft_identity::tls::client_config(trust.clone(), server_id, certificate).unwrap();
        reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .build()
            .unwrap()
    };
    let get_config = async |client: reqwest::Client| {
        let response = client
            .get(format!("{}/v1/edge/config", server.edge_url))
            .bearer_auth(&edge_secret)
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    };
    let (status, body) = get_config(as_client(None)).await;
    assert!(
        status == 401 && body.contains("edge's certificate"),
        "{status} {body}"
    );
    // A workload's certificate is not an edge's.
    let workload = std::sync::Arc::new(weft_identity::tls::ServingCertificate::default());
    let key_pem = std::fs::read_to_string(&key).unwrap();
    let key_der = pem::parse(&key_pem).unwrap().into_contents();
    workload
        .set(
            weft_identity::certificates_from_pem(
                "chain",
                &std::fs::read_to_string(&chain).unwrap(),
            )
            .unwrap(),
            key_der,
        )
        .unwrap();
    let (status, body) = get_config(as_client(Some(workload))).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("spiffe://weft/ns/shop/sa/client"), "{body}");

    // weft's own namespace is not for workloads.
    let run = mesh.server().weft(
        &mesh.admin,
        &[
            "token",
            "create",
            "--cluster",
            "east",
            "--namespace",
            "weft-system",
            "--service-account",
            "weft-edge",
        ],
    );
    assert!(run.code == 3 && run.stderr.contains("reserved"), "{run:?}");
}

/// Sends `method` to reviews through the sidecar on `port`; the status.
async fn status_of(mesh: &Mesh, port: u16, method: reqwest::Method, path: &str) -> u16 {
    mesh.http
        .request(method, format!("http://127.0.0.1:{port}{path}"))
        .header("host", "reviews")
        .send()
        .await
        .map_or(0, |r| r.status().as_u16())
}

async fn authorization_is_deny_all_until_allowed_and_deny_wins(data_plane: DataPlane) {
    use reqwest::Method;
    let mut mesh = Mesh::on(data_plane).await;
    let _v1 = mesh.workload("reviews", "reviews-v1", "v1");
    let (_client, port) = mesh.client();
    let other_credential = mesh.credential("other");
    let other_port = free_port();
    let _other = mesh.sidecar("other", "other-1", None, &other_credential, other_port);
    mesh.until_in_sync(3).await;
    until(
        "the workspace may call",
        Duration::from_secs(20),
        async || status_of(&mesh, port, Method::GET, "/").await == 200,
    )
    .await;

    // Without the workspace-wide allow, nothing may call: 403, and the
    // refusal is logged by the receiving sidecar with the caller.
    let before = mesh.edge_status().await["configVersion"].clone();
    let run = mesh.server().weft(
        &mesh.admin,
        &[
            "delete",
            "securitysetting",
            "workspace-calls",
            "--tenant",
            "retail",
            "--workspace",
            "shop",
        ],
    );
    assert_eq!(run.code, 0, "{run:?}");
    until(
        "the edge has the new configuration",
        Duration::from_secs(30),
        async || mesh.edge_status().await["configVersion"] != before,
    )
    .await;
    mesh.until_in_sync(3).await;
    let denied_before = mesh
        .envoy_stat("reviews-v1", "http.inbound.rbac.denied")
        .await;
    assert_eq!(status_of(&mesh, port, Method::GET, "/").await, 403);
    assert_eq!(status_of(&mesh, other_port, Method::GET, "/").await, 403);
    // Refusals count in the receiving sidecar's metrics.
    assert_eq!(
        mesh.envoy_stat("reviews-v1", "http.inbound.rbac.denied")
            .await,
        denied_before + 2
    );
    // Envoy writes its access log in batches.
    until(
        "the refusal is logged",
        Duration::from_secs(10),
        async || {
            logged(
                &mesh.sidecar_log("reviews-v1"),
                &[
                    ("side", "inbound"),
                    ("response_code", "403"),
                    (
                        "response_code_details",
                        "rbac_access_denied_matched_policy[none]",
                    ),
                    ("caller", "spiffe://weft/ns/shop/sa/client"),
                ],
            )
        },
    )
    .await;

    // Only the client may call, only with GET; a deny rule beats the allow.
    mesh.apply(
        "apiVersion: weft.dev/v1alpha1
kind: SecuritySetting
metadata: {name: reviews-callers, tenant: retail, workspace: shop}
spec:
  service: {name: reviews, namespace: shop}
  authorization:
    allow:
      - from: [{serviceAccount: {name: client, namespace: shop}}]
        to: [{method: GET}]
    deny:
      - to: [{path: {prefix: /admin}}]
",
        3,
    )
    .await;
    assert_eq!(status_of(&mesh, port, Method::GET, "/").await, 200);
    assert_eq!(status_of(&mesh, port, Method::DELETE, "/").await, 403);
    assert_eq!(status_of(&mesh, port, Method::GET, "/admin/x").await, 403);
    assert_eq!(status_of(&mesh, other_port, Method::GET, "/").await, 403);
    until("the refusal names the deny rule", Duration::from_secs(10), async || {
        logged(
            &mesh.sidecar_log("reviews-v1"),
            &[
                ("method", "GET"),
                ("path", "/admin/x"),
                ("response_code", "403"),
                ("response_code_details", "rbac_access_denied_matched_policy[tenants/retail/workspaces/shop/securitysettings/reviews-callers#deny[0]]"),
            ],
        )
    })
    .await;
}

async fn certificates_rotate_under_load_without_failed_requests(data_plane: DataPlane) {
    // Certificates of 20 s are renewed every 10 s or so.
    let mut mesh = Mesh::on_with(data_plane, &["--svid-ttl", "20s"]).await;
    let (_v1, _client, port) = mesh.reviews_and_client().await;
    let inbound = inbound_port(&mesh, "reviews-v1").await;
    let client_credential = mesh.credential("client");
    let (chain, key, bundle) = workload_identity(&mesh, &client_credential, "client").await;
    let served_before = served_certificate(inbound, &bundle, &chain, &key);
    let issued = || async {
        mesh.edge_metric("weft_edge_svids_issued_total")
            .await
            .unwrap_or(0)
    };
    let before = issued().await;
    let load = Load::start(port);
    tokio::time::sleep(Duration::from_secs(25)).await;
    let (ok, failed) = load.stop().await;
    let renewed = issued().await - before;
    println!(
        "rotation: {ok} requests succeeded, {} failed, {renewed} certificates issued in 25 s",
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "failed requests during rotation: {failed:?}"
    );
    // Both sidecars renewed at least once, and reviews now presents
    // another certificate than before.
    assert!(
        renewed >= 2,
        "only {renewed} certificates were renewed in 25 s"
    );
    let served_after = served_certificate(inbound, &bundle, &chain, &key);
    assert!(
        served_before.contains("BEGIN CERTIFICATE"),
        "{served_before}"
    );
    assert_ne!(
        served_before, served_after,
        "the served certificate did not change"
    );
}

/// Requests to reviews through a client sidecar until stopped: new
/// connections now and then, so fresh handshakes use new certificates, and
/// requests on open ones in between.
struct Load {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<(u32, Vec<String>)>,
}

impl Load {
    fn start(port: u16) -> Load {
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !*stopped.borrow_and_update() {
                let client = reqwest::Client::builder()
                    .timeout(Duration::from_secs(5))
                    .build()
                    .unwrap();
                for _ in 0..20 {
                    match client
                        .get(format!("http://127.0.0.1:{port}/"))
                        .header("host", "reviews")
                        .send()
                        .await
                    {
                        Ok(r) if r.status() == 200 => ok += 1,
                        Ok(r) => failed.push(r.status().to_string()),
                        Err(e) => failed.push(e.to_string()),
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (ok, failed)
        });
        Load { stop, task }
    }

    /// Requests that succeeded, and how the others failed.
    async fn stop(self) -> (u32, Vec<String>) {
        let _ = self.stop.send(true);
        self.task.await.unwrap()
    }
}

/// The inbound port of a workload, as its edge reports it.
async fn inbound_port(mesh: &Mesh, node: &str) -> u16 {
    let status = mesh.edge_status().await;
    status["proxies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["node"] == node)
        .and_then(|p| p["address"].as_str())
        .and_then(|a| a.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("the edge reports no inbound address for {node}: {status}"))
}

/// The leaf certificate (PEM) a sidecar's inbound listener presents.
fn served_certificate(port: u16, ca: &Path, chain: &Path, key: &Path) -> String {
    let out = Command::new("openssl")
        .args([
            "s_client",
            "-showcerts",
            "-connect",
            &format!("127.0.0.1:{port}"),
        ])
        .arg("-CAfile")
        .arg(ca)
        .arg("-cert")
        .arg(chain)
        .arg("-cert_chain")
        .arg(chain)
        .arg("-key")
        .arg(key)
        .stdin(Stdio::null())
        .output()
        .expect("openssl runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let start = text.find("-----BEGIN CERTIFICATE-----").unwrap_or(0);
    let marker = "-----END CERTIFICATE-----";
    let end = text[start..]
        .find(marker)
        .map_or(text.len(), |e| start + e + marker.len());
    text[start..end].to_string()
}

async fn permissive_mode_takes_plaintext_and_strict_refuses_it(data_plane: DataPlane) {
    let mut mesh = Mesh::on(data_plane).await;
    let _v1 = mesh.workload("reviews", "reviews-v1", "v1");
    let (_client, port) = mesh.client();
    mesh.until_in_sync(2).await;
    let inbound = inbound_port(&mesh, "reviews-v1").await;
    let plaintext = || async {
        mesh.http
            .get(format!("http://127.0.0.1:{inbound}/"))
            .header("host", "reviews")
            .send()
            .await
            .map_or(0, |r| r.status().as_u16())
    };
    assert_eq!(plaintext().await, 0, "strict takes no plaintext");

    // Permissive, with a rule that lets callers without identity in: a
    // workload without a sidecar gets through, and meshed callers still
    // use mTLS.
    let permissive = "apiVersion: weft.dev/v1alpha1
kind: SecuritySetting
metadata: {name: migration, tenant: retail, workspace: shop}
spec:
  service: {name: reviews, namespace: shop}
  mtls: permissive
  authorization:
    allow: [{}]
";
    mesh.apply(permissive, 2).await;
    until("plaintext is taken", Duration::from_secs(20), async || {
        plaintext().await == 200
    })
    .await;
    assert!(
        mesh.instances(port, 5, "/")
            .await
            .contains_key("reviews-v1")
    );
    until(
        "the plaintext call is logged",
        Duration::from_secs(10),
        async || {
            logged(
                &mesh.sidecar_log("reviews-v1"),
                &[
                    ("side", "inbound"),
                    ("path", "/"),
                    ("response_code", "200"),
                    ("response_code_details", "via_upstream"),
                    ("caller", "null"),
                ],
            )
        },
    )
    .await;

    // Back to strict: plaintext is refused again.
    mesh.apply(&permissive.replace("mtls: permissive", "mtls: strict"), 2)
        .await;
    until(
        "plaintext is refused again",
        Duration::from_secs(20),
        async || plaintext().await == 0,
    )
    .await;
    assert!(
        mesh.instances(port, 5, "/")
            .await
            .contains_key("reviews-v1")
    );
}

async fn end_user_tokens_are_checked_and_their_claims_authorize(data_plane: DataPlane) {
    let key = Issuer::new("k1");
    let jwks = JwksServer::start(&[&key]).await;
    let mut mesh = Mesh::on(data_plane).await;
    let _v1 = mesh.workload("reviews", "reviews-v1", "v1");
    let (_client, port) = mesh.client();
    mesh.until_in_sync(2).await;
    mesh.apply(
        &format!(
            "apiVersion: weft.dev/v1alpha1
kind: SecuritySetting
metadata: {{name: reviews-users, tenant: retail, workspace: shop}}
spec:
  service: {{name: reviews, namespace: shop}}
  authentication:
    jwt:
      - issuer: https://login.test
        audiences: [reviews]
        jwksUri: http://127.0.0.1:{}/jwks.json
        jwksRefresh: 2s
        clockSkew: 10s
        forwardClaims: [{{claim: sub, header: x-user}}]
    requireFor: [{{path: {{prefix: /api}}}}]
  authorization:
    allow:
      - from: [{{sameWorkspace: true}}]
        to: [{{method: GET}}]
      - from: [{{sameWorkspace: true}}]
        claims: {{groups: [admin]}}
",
            jwks.port
        ),
        2,
    )
    .await;
    let call = async |method: reqwest::Method, path: &str, token: Option<&str>, spoof: bool| {
        let mut request = mesh
            .http
            .request(method, format!("http://127.0.0.1:{port}{path}"))
            .header("host", "reviews");
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if spoof {
            request = request.header("x-user", "mallory");
        }
        match request.send().await {
            Ok(r) => (r.status().as_u16(), r.json::<Value>().await.ok()),
            Err(_) => (0, None),
        }
    };
    use reqwest::Method;
    let alice = key
        .token(serde_json::json!({"iss": "https://login.test", "aud": "reviews", "sub": "alice"}));
    until(
        "a valid token is taken",
        Duration::from_secs(20),
        async || call(Method::GET, "/api/books", Some(&alice), false).await.0 == 200,
    )
    .await;

    // The subject reaches the app; a caller's own x-user never does.
    let (_, body) = call(Method::GET, "/api/books", Some(&alice), true).await;
    let headers = &body.unwrap()["headers"];
    assert_eq!(headers["x-user"], "alice", "{headers}");
    assert!(
        headers.get("authorization").is_none(),
        "the token is not forwarded: {headers}"
    );
    let (status, body) = call(Method::GET, "/public", None, true).await;
    assert_eq!(status, 200, "no token is needed outside /api");
    assert!(body.unwrap()["headers"].get("x-user").is_none());

    // Refused with 401: no token where one is required, and any invalid one.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let stranger = Issuer::new("k1");
    let invalid = [
        ("no token", None),
        (
            "expired",
            Some(key.token(serde_json::json!({"iss": "https://login.test", "aud": "reviews", "exp": now - 120}))),
        ),
        (
            "another audience",
            Some(key.token(serde_json::json!({"iss": "https://login.test", "aud": "billing"}))),
        ),
        (
            "signed by another key",
            Some(stranger.token(serde_json::json!({"iss": "https://login.test", "aud": "reviews"}))),
        ),
        (
            "an unknown issuer",
            Some(key.token(serde_json::json!({"iss": "https://evil.test", "aud": "reviews"}))),
        ),
        ("not a token", Some("not.a.token".to_string())),
    ];
    for (what, token) in &invalid {
        assert_eq!(
            call(Method::GET, "/api/books", token.as_deref(), false)
                .await
                .0,
            401,
            "{what}"
        );
        if token.is_some() {
            assert_eq!(
                call(Method::GET, "/public", token.as_deref(), false)
                    .await
                    .0,
                401,
                "{what}, also where no token is required"
            );
        }
    }
    // A token within the clock skew still passes.
    let just_expired = key
        .token(serde_json::json!({"iss": "https://login.test", "aud": "reviews", "exp": now - 2}));
    assert_eq!(
        call(Method::GET, "/api/books", Some(&just_expired), false)
            .await
            .0,
        200
    );

    // Every refusal counts in the receiving sidecar's metrics.
    assert!(
        mesh.envoy_stat("reviews-v1", "http.inbound.jwt_authn.denied")
            .await
            >= 10
    );
    // Claims authorize: only an admin may delete.
    assert_eq!(
        call(Method::DELETE, "/api/books/1", Some(&alice), false)
            .await
            .0,
        403
    );
    let admin = key.token(serde_json::json!({"iss": "https://login.test", "aud": "reviews", "sub": "root", "groups": ["staff", "admin"]}));
    assert_eq!(
        call(Method::DELETE, "/api/books/1", Some(&admin), false)
            .await
            .0,
        200
    );
    until(
        "the refusals are logged",
        Duration::from_secs(10),
        async || {
            let log = mesh.sidecar_log("reviews-v1");
            let line = |method: &str, path: &str, code: &str, details: &str| {
                logged(
                    &log,
                    &[
                        ("method", method),
                        ("path", path),
                        ("response_code", code),
                        ("response_code_details", details),
                    ],
                )
            };
            line(
                "GET",
                "/api/books",
                "401",
                "jwt_authn_access_denied{Jwt_is_missing}",
            ) && line(
                "GET",
                "/api/books",
                "401",
                "jwt_authn_access_denied{Jwt_is_expired}",
            ) && line(
                "DELETE",
                "/api/books/1",
                "403",
                "rbac_access_denied_matched_policy[none]",
            )
        },
    )
    .await;

    // The issuer rotates its key: tokens of the new key pass once the
    // sidecar refetches (every 2 s here), and the retired key's fail.
    let fetches = jwks.fetches();
    let rotated = Issuer::new("k2");
    jwks.publish(&[&rotated]);
    let bob = rotated
        .token(serde_json::json!({"iss": "https://login.test", "aud": "reviews", "sub": "bob"}));
    let started = Instant::now();
    until(
        "the new key is picked up",
        Duration::from_secs(15),
        async || call(Method::GET, "/api/books", Some(&bob), false).await.0 == 200,
    )
    .await;
    eprintln!(
        "new key taken {:?} after rotation; JWKS fetched {} times before, {} after",
        started.elapsed(),
        fetches,
        jwks.fetches()
    );
    assert!(jwks.fetches() > fetches);
    assert_eq!(
        call(Method::GET, "/api/books", Some(&alice), false).await.0,
        401
    );
}

async fn root_rotation_loses_no_requests(data_plane: DataPlane) {
    // Certificates of 20 s: each step reaches every proxy in about 10 s.
    let mut mesh = Mesh::on_with(data_plane, &["--svid-ttl", "20s"]).await;
    let (_v1, _client, port) = mesh.reviews_and_client().await;
    let roots = || {
        let run = mesh
            .server()
            .weft(&mesh.admin, &["ca", "list", "-o", "json"]);
        assert_eq!(run.code, 0, "{run:?}");
        serde_json::from_str::<Vec<Value>>(&run.stdout).unwrap()
    };
    let id_in = |state: &str| {
        roots()
            .iter()
            .find(|r| r["state"] == state)
            .and_then(|r| r["id"].as_str())
            .map(str::to_string)
    };
    let old = id_in("signing").expect("a signing root");
    // Every proxy's certificate, as its edge reports it.
    let certificates = async || -> Vec<Value> {
        let status = mesh.edge_status().await;
        status["proxies"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["certificate"].clone())
            .collect()
    };
    let load = Load::start(port);

    // 1. A new root, trusted everywhere before it signs anything.
    let run = mesh.server().weft(&mesh.admin, &["ca", "add"]);
    assert_eq!(run.code, 0, "{run:?}");
    let new = id_in("trusted").expect("the new root is trusted");
    until(
        "every proxy trusts the new root",
        Duration::from_secs(30),
        async || {
            let certificates = certificates().await;
            certificates.len() == 2
                && certificates.iter().all(|c| {
                    c["trusts"]
                        .as_array()
                        .is_some_and(|t| t.len() == 2 && t.contains(&Value::from(new.clone())))
                })
        },
    )
    .await;

    // 2. The new root signs: the edge gets a new cluster CA at once, and
    // workloads new certificates as they renew.
    let run = mesh
        .server()
        .weft(&mesh.admin, &["ca", "activate", &new[..12]]);
    assert!(
        run.code == 0 && run.stdout.contains("is now signing"),
        "{run:?}"
    );
    let refused = mesh
        .server()
        .weft(&mesh.admin, &["ca", "retire", &new[..12]]);
    assert_eq!(
        refused.code, 4,
        "the signing root cannot be retired: {refused:?}"
    );
    until(
        "every certificate chains to the new root",
        Duration::from_secs(30),
        async || {
            certificates()
                .await
                .iter()
                .all(|c| c["root"] == new.as_str())
        },
    )
    .await;

    // 3. The old root is trusted no more.
    let run = mesh
        .server()
        .weft(&mesh.admin, &["ca", "retire", &old[..12]]);
    assert!(
        run.code == 0 && run.stdout.contains("is now retired"),
        "{run:?}"
    );
    until(
        "every proxy trusts the new root alone",
        Duration::from_secs(30),
        async || {
            certificates()
                .await
                .iter()
                .all(|c| c["trusts"] == serde_json::json!([new.clone()]))
        },
    )
    .await;
    // Connections made after the last step use only the new root.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (ok, failed) = load.stop().await;
    println!(
        "root rotation: {ok} requests succeeded, {} failed",
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "failed requests during the root rotation: {failed:?}"
    );
    assert!(ok > 100, "too little traffic to tell: {ok} requests");
    let audit = mesh.server().weft(&mesh.admin, &["audit", "--since", "1h"]);
    for action in ["ca.root.add", "ca.root.activate", "ca.root.retire"] {
        assert!(
            audit.stdout.contains(action),
            "{action} not audited: {audit:?}"
        );
    }
}

async fn a_sidecar_that_stops_renewing_and_the_cas_expiry_are_visible(data_plane: DataPlane) {
    // Certificates of 20 s: renewal is due at 10 s, overdue after 15 s.
    let mut mesh = Mesh::on_with(data_plane, &["--svid-ttl", "20s"]).await;
    let _v1 = mesh.workload("reviews", "reviews-v1", "v1");
    mesh.until_in_sync(1).await;
    let status = mesh.edge_status().await;
    assert!(
        status["ca"]["expiresAt"]
            .as_str()
            .is_some_and(|at| at > "2026"),
        "{status}"
    );
    assert_eq!(status["ca"]["expiring"], false);
    assert_eq!(
        status["proxies"][0]["certificate"]["overdue"], false,
        "{status}"
    );

    // Revoking its credential leaves the sidecar unable to renew.
    let tokens = mesh.server().weft(
        &mesh.admin,
        &["token", "list", "--cluster", "east", "-o", "json"],
    );
    let tokens: Vec<Value> = serde_json::from_str(&tokens.stdout).unwrap();
    let id = tokens
        .iter()
        .find(|t| t["user"] == "workload:east/shop/reviews")
        .and_then(|t| t["id"].as_str())
        .expect("the workload credential");
    let run = mesh.server().weft(&mesh.admin, &["token", "revoke", id]);
    assert_eq!(run.code, 0, "{run:?}");
    let overdue = || mesh.edge_metric("weft_edge_svids_overdue");
    assert_eq!(overdue().await, Some(0));
    until(
        "the missed renewal is flagged",
        Duration::from_secs(40),
        async || {
            mesh.edge_status().await["proxies"][0]["certificate"]["overdue"] == true
                && overdue().await == Some(1)
                && mesh
                    .edge_log()
                    .contains("a sidecar has not renewed its certificate")
        },
    )
    .await;
    assert!(
        mesh.sidecar_log("reviews-v1")
            .contains("the edge refused the workload credential"),
        "the sidecar says why"
    );

    // The server tells how long the signing root has left.
    let server_metrics = format!("{}/metrics", mesh.server().url);
    let left = metric(
        &mesh.http,
        &server_metrics,
        "weft_server_root_ca_expiry_seconds",
    )
    .await
    .expect("the root CA expiry gauge");
    assert!(left > 9 * 365 * 24 * 3600, "{left}");
}

async fn a_rollout_under_load_loses_no_requests(data_plane: DataPlane) {
    let mut mesh = Mesh::on(data_plane).await;
    let (mut v1, _client, port) = mesh.reviews_and_client().await;
    // Another service, which the rollout must leave alone.
    let _ratings = mesh.workload("ratings", "ratings-v1", "v1");
    // Instances that go away are retried elsewhere, as in any rollout.
    mesh.apply(
        &setting("  retries: {attempts: 3, retryOn: [connect-failure, reset, 5xx]}\n"),
        3,
    )
    .await;
    const BUILDS: &str = "weft_edge_snapshot_builds_total";
    const ENCODED: &str = "weft_edge_services_encoded_total";
    let builds_before = mesh.edge_metric(BUILDS).await.unwrap_or(0);
    let encoded_before = mesh.edge_metric(ENCODED).await.unwrap_or(0);
    let load = Load::start(port);
    // Twenty new instances (v2) come up together...
    let started = Instant::now();
    let mut v2: Vec<Proc> = (0..20)
        .map(|i| mesh.workload("reviews", &format!("reviews-v2-{i}"), "v2"))
        .collect();
    mesh.until_in_sync(23).await;
    let up = started.elapsed();
    until(
        "the new instances answer",
        Duration::from_secs(30),
        async || {
            let seen = mesh.instances(port, 40, "/").await;
            seen.keys().filter(|k| k.starts_with("reviews-v2-")).count() >= 5
        },
    )
    .await;
    // ...and the old one and half of the new go away, one after another
    // as a rolling update takes them down.
    assert!(v1.stop(), "reviews-v1 did not stop on SIGTERM");
    mesh.until_in_sync(22).await;
    for (i, instance) in v2.iter_mut().take(10).enumerate() {
        assert!(instance.stop(), "an instance did not stop on SIGTERM");
        mesh.until_in_sync(21 - i).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (ok, failed) = load.stop().await;
    let builds = mesh.edge_metric(BUILDS).await.unwrap_or(0) - builds_before;
    let encoded = mesh.edge_metric(ENCODED).await.unwrap_or(0) - encoded_before;
    println!(
        "rollout: 20 instances up in {up:?}, then 11 gone one by one; {ok} requests succeeded, {} failed; \
         {builds} builds encoded {encoded} services",
        failed.len()
    );
    assert!(ok > 100, "only {ok} requests during the rollout");
    assert!(
        failed.is_empty(),
        "failed requests during the rollout: {failed:?}"
    );
    // Only reviews changed: no build re-encoded ratings too.
    assert!(
        encoded <= builds,
        "{encoded} services encoded in {builds} builds: more than the one that changed"
    );
    assert!(
        encoded >= 1,
        "the new instances never reached the edge's builds"
    );
    let seen = mesh.instances(port, 20, "/").await;
    assert!(
        seen.keys().all(|k| k.starts_with("reviews-v2-")),
        "requests went to instances that left: {seen:?}"
    );
}

async fn a_proxy_that_declares_its_calls_holds_only_those(data_plane: DataPlane) {
    let mut mesh = Mesh::on(data_plane).await;
    let _reviews = mesh.workload("reviews", "reviews-v1", "v1");
    let _ratings = mesh.workload("ratings", "ratings-v1", "v1");
    let credential = mesh.credential("client");
    let port = free_port();
    let _client = mesh.sidecar_with(
        "client",
        "client-1",
        None,
        &credential,
        port,
        &["--calls", "reviews"],
    );
    mesh.until_in_sync(3).await;
    until("reviews answers", Duration::from_secs(20), async || {
        mesh.call(port, "reviews", "/", &[]).await.0 == 200
    })
    .await;
    assert_eq!(mesh.call(port, "reviews.shop.svc", "/", &[]).await.0, 200);
    // ratings exists and the workspace may call it, but this proxy said
    // it calls reviews only.
    let response = mesh
        .http
        .get(format!("http://127.0.0.1:{port}/"))
        .header("host", "ratings")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 404);
    let body = response.text().await.unwrap();
    assert!(
        body.contains("declared the services it calls") && body.contains("--calls"),
        "{body}"
    );
    // Its Envoy holds reviews' clusters and nothing of ratings.
    let clusters = mesh
        .http
        .get(format!(
            "http://127.0.0.1:{}/clusters",
            mesh.envoy_admin["client-1"]
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(clusters.contains("out|reviews.shop::"), "{clusters}");
    assert!(!clusters.contains("ratings"), "{clusters}");
    // A proxy that declares nothing still reaches both.
    let (_other, other_port) = {
        let port = free_port();
        (
            mesh.sidecar("client", "client-2", None, &credential, port),
            port,
        )
    };
    mesh.until_in_sync(4).await;
    until(
        "ratings answers the other client",
        Duration::from_secs(20),
        async || mesh.call(other_port, "ratings", "/", &[]).await.0 == 200,
    )
    .await;
    // A bad declaration stops the sidecar at once, saying why.
    let run = Command::new(WEFT)
        .args([
            "sidecar",
            "--service",
            "client",
            "--calls",
            "Not_A_Name",
            "--credential-file",
        ])
        .arg(&credential)
        .output()
        .unwrap();
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("--calls[0]") && stderr.contains("Not_A_Name"),
        "{stderr}"
    );
}

/// weft installed somewhere else than its source tree: the binary alone
/// in a prefix (what `cargo install` leaves), `weft envoy install` into
/// its data directory, and `weft up` from an unrelated directory with no
/// Envoy on PATH: it finds that Envoy and the mesh answers.
#[tokio::test(flavor = "multi_thread")]
async fn an_installed_weft_runs_up_from_any_directory() {
    let root = tempfile::tempdir().unwrap();
    let bin = root.path().join("prefix/bin");
    std::fs::create_dir_all(&bin).unwrap();
    let weft = bin.join("weft");
    std::fs::copy(support::WEFT, &weft).unwrap();
    let share = root.path().join("share");
    let elsewhere = root.path().join("somewhere/else");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let isolated = |command: &mut std::process::Command| {
        command
            .current_dir(&elsewhere)
            .env("XDG_DATA_HOME", &share)
            .env("PATH", "/usr/bin:/bin")
            .env_remove("WEFT_ENVOY");
    };

    let mut install = std::process::Command::new(&weft);
    isolated(install.args(["envoy", "install"]));
    let installed = support::run(&mut install);
    assert_eq!(installed.code, 0, "{installed:?}");
    let envoy = share.join("weft/envoy/bin/envoy");
    assert_eq!(installed.stdout.trim(), envoy.display().to_string());
    let mut path = std::process::Command::new(&weft);
    isolated(path.args(["envoy", "path"]));
    let found = support::run(&mut path);
    assert_eq!(
        found.stdout.trim(),
        format!("{} (1.40.0)", envoy.display()),
        "{found:?}"
    );

    let port = free_port();
    let data = root.path().join("up");
    let mut up = std::process::Command::new(&weft);
    isolated(
        up.args(["up", "--listen", "127.0.0.1:0", "--port", &port.to_string()])
            .args(["--https-port", &free_port().to_string()])
            .arg("--data")
            .arg(&data),
    );
    let (mut up, _) = support::start_up(&mut up, &data);
    weft_identity::tls::install_provider();
    let body: Value = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/"))
        .header("host", "reviews")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(body["version"].is_string(), "reviews answers: {body}");
    assert!(up.stop(), "weft up did not stop within 10 s of SIGTERM");
}

/// Envoy and weft-proxy in one mesh: an Envoy client calls a weft-proxy
/// service and a weft-proxy client an Envoy service, over mutual TLS;
/// each callee sees the caller's SPIFFE ID, and a SecuritySetting that
/// allows only `client` refuses another caller on either data plane.
#[tokio::test(flavor = "multi_thread")]
async fn envoy_and_weft_proxy_sidecars_call_each_other() {
    let mut mesh = Mesh::on(DataPlane::Weft).await;
    let _reviews = mesh.workload("reviews", "reviews-weft", "v1");
    let client = mesh.credential("client");
    let weft_client_port = free_port();
    let _weft_client = mesh.sidecar("client", "client-weft", None, &client, weft_client_port);
    let other = mesh.credential("other");
    let other_port = free_port();
    let _other = mesh.sidecar("other", "other-weft", None, &other, other_port);
    mesh.data_plane = DataPlane::Envoy;
    let _ratings = mesh.workload("ratings", "ratings-envoy", "v1");
    let envoy_client_port = free_port();
    let _envoy_client = mesh.sidecar("client", "client-envoy", None, &client, envoy_client_port);
    mesh.until_in_sync(5).await;
    let caller_of = |body: &Option<Value>| {
        body.as_ref().and_then(|b| {
            b["headers"]["x-forwarded-client-cert"]
                .as_str()
                .map(str::to_string)
        })
    };
    for (from, port, to) in [
        ("Envoy", envoy_client_port, "reviews"),
        ("weft-proxy", weft_client_port, "ratings"),
    ] {
        until(
            &format!("{from} reaches {to}"),
            Duration::from_secs(20),
            async || mesh.call(port, to, "/", &[]).await.0 == 200,
        )
        .await;
        let (status, body) = mesh.call(port, to, "/", &[]).await;
        assert_eq!(status, 200);
        let forwarded = caller_of(&body).unwrap_or_default();
        assert!(
            forwarded.contains("URI=spiffe://weft/ns/shop/sa/client"),
            "{to} saw {forwarded:?} from the {from} client"
        );
    }

    // Only `client` may call either service now.
    for service in ["reviews", "ratings"] {
        mesh.apply(
            &format!(
                "apiVersion: weft.dev/v1alpha1
kind: SecuritySetting
metadata: {{name: {service}-callers, tenant: retail, workspace: shop}}
spec:
  service: {{name: {service}, namespace: shop}}
  authorization:
    allow:
      - from: [{{serviceAccount: {{name: client, namespace: shop}}}}]
"
            ),
            5,
        )
        .await;
    }
    for to in ["reviews", "ratings"] {
        assert_eq!(
            mesh.call(other_port, to, "/", &[]).await.0,
            403,
            "other reached {to}"
        );
    }
    assert_eq!(
        mesh.call(envoy_client_port, "reviews", "/", &[]).await.0,
        200
    );
    assert_eq!(
        mesh.call(weft_client_port, "ratings", "/", &[]).await.0,
        200
    );
    // Each callee's own log names the refused caller.
    for (node, to) in [("reviews-weft", "reviews"), ("ratings-envoy", "ratings")] {
        until(
            &format!("{node} logs the refusal"),
            Duration::from_secs(10),
            async || {
                logged(
                    &mesh.sidecar_log(node),
                    &[
                        ("side", "inbound"),
                        ("response_code", "403"),
                        ("caller", "spiffe://weft/ns/shop/sa/other"),
                        ("authority", to),
                    ],
                )
            },
        )
        .await;
    }
}

/// What weft-proxy cannot honour exactly it refuses, never half-does: a
/// local rate limit on reviews reaches its sidecar in a route table it
/// NACKs naming the field; the NACK shows in `weft get cluster`, and reviews
/// keeps serving from its last good configuration (a burst past the limit
/// is all answered, as before the setting).
#[tokio::test(flavor = "multi_thread")]
async fn weft_proxy_nacks_what_it_cannot_honour_and_keeps_serving() {
    let mut mesh = Mesh::on(DataPlane::Weft).await;
    let (_v1, _client, port) = mesh.reviews_and_client().await;
    let limit = write(
        mesh.dir.path(),
        "limit.yaml",
        "apiVersion: weft.dev/v1alpha1
kind: TrafficSetting
metadata: {name: reviews-limit, tenant: retail, workspace: shop}
spec:
  service: {name: reviews, namespace: shop}
  rateLimiting: {local: {requests: 3, unit: minute}}
",
    );
    let run = mesh.server().weft(&mesh.admin, &["apply", "-f", &limit]);
    assert_eq!(run.code, 0, "{run:?}");
    let nack = async || {
        let get = mesh
            .server()
            .weft(&mesh.admin, &["get", "cluster", "east", "-o", "json"]);
        let cluster: Value = serde_json::from_str(&get.stdout).unwrap_or_default();
        cluster["status"]["proxyDetails"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["nack"].is_object())
            .map(|p| (p["node"].clone(), p["nack"].clone()))
    };
    until(
        "the NACK reaches `weft get`",
        Duration::from_secs(30),
        async || nack().await.is_some(),
    )
    .await;
    let (node, nack) = nack().await.unwrap();
    assert_eq!(node, "reviews-v1", "{nack}");
    assert_eq!(nack["resourceType"], "rds", "{nack}");
    let message = nack["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("RouteConfiguration inbound: virtual_hosts[0].typed_per_filter_config")
            && message.contains("LocalRateLimit is not supported yet"),
        "{message}"
    );
    for i in 0..10 {
        assert_eq!(
            mesh.call(port, "reviews", "/", &[]).await.0,
            200,
            "request {i} past a limit weft-proxy did not take"
        );
    }
}

/// The weft-proxy soak: a client and a service, both weft-proxy, under a
/// steady 100 requests/s (a fresh connection every 50 requests, so new
/// handshakes meet new certificates) while certificates rotate (20 s
/// SVIDs, renewed at half life) and reviews' timeout changes every 5 s.
/// No request may fail, and neither proxy's memory may grow after warm-up
/// (its RSS curve is printed). 60 s in every run; 30 minutes with
/// `WEFT_LONG_TESTS=1`, with 2-minute SVIDs (a rotation a minute).
#[tokio::test(flavor = "multi_thread")]
async fn a_weft_proxy_pair_soaks_with_rotation_and_changes() {
    let long = std::env::var_os("WEFT_LONG_TESTS").is_some_and(|v| !v.is_empty());
    let (duration, ttl) = if long {
        (Duration::from_secs(30 * 60), "120s")
    } else {
        (Duration::from_secs(60), "20s")
    };
    let mut mesh = Mesh::on_with(DataPlane::Weft, &["--svid-ttl", ttl]).await;
    let (v1, client, port) = mesh.reviews_and_client().await;
    let proxy_of = |sidecar: &Proc| {
        weft_agent::procfs::children_of(sidecar.0.id())
            .into_iter()
            .find(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains("proxy"))
            })
            .expect("the sidecar runs weft-proxy")
    };
    let proxies = [("reviews", proxy_of(&v1)), ("client", proxy_of(&client))];
    let issued = async || {
        mesh.edge_metric("weft_edge_svids_issued_total")
            .await
            .unwrap_or(0)
    };
    let issued_before = issued().await;

    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let load = tokio::spawn(async move {
        let (mut ok, mut failed) = (0u64, Vec::new());
        let mut every = tokio::time::interval(Duration::from_millis(10));
        let mut client = reqwest::Client::new();
        while !*stopped.borrow_and_update() {
            every.tick().await;
            if ok % 50 == 0 {
                client = reqwest::Client::new();
            }
            match client
                .get(format!("http://127.0.0.1:{port}/"))
                .header("host", "reviews")
                .timeout(Duration::from_secs(5))
                .send()
                .await
            {
                Ok(r) if r.status() == 200 => ok += 1,
                Ok(r) => failed.push(r.status().to_string()),
                Err(e) => failed.push(e.to_string()),
            }
        }
        (ok, failed)
    });

    let started = Instant::now();
    let mut curve: Vec<(u64, Vec<u64>)> = Vec::new();
    let mut changes = 0;
    while started.elapsed() < duration {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let timeout = if changes % 2 == 0 { "5s" } else { "7s" };
        let setting = write(
            mesh.dir.path(),
            "timeout.yaml",
            &setting(&format!("  timeout: {timeout}\n")),
        );
        let run = mesh.server().weft(&mesh.admin, &["apply", "-f", &setting]);
        assert_eq!(run.code, 0, "{run:?}");
        changes += 1;
        let rss: Vec<u64> = proxies
            .iter()
            .map(|(_, pid)| weft_agent::procfs::rss(*pid).unwrap_or(0) / 1024)
            .collect();
        curve.push((started.elapsed().as_secs(), rss));
    }
    let _ = stop.send(true);
    let (ok, failed) = load.await.unwrap();
    let renewed = issued().await - issued_before;
    println!(
        "soak: {:?}, {ok} requests answered, {} failed, {changes} configuration changes, {renewed} certificates issued",
        duration,
        failed.len()
    );
    println!("RSS KiB (s: reviews, client): {curve:?}");
    assert!(failed.is_empty(), "failed requests: {failed:?}");
    assert!(renewed >= 2, "only {renewed} certificates were renewed");
    // Flat: the last third's peak within 20% (and 2 MiB) of the peak
    // after the first third, for each proxy.
    let third = curve.len() / 3;
    for (i, (name, _)) in proxies.iter().enumerate() {
        let peak = |points: &[(u64, Vec<u64>)]| points.iter().map(|(_, r)| r[i]).max().unwrap_or(0);
        let (early, late) = (peak(&curve[third..2 * third]), peak(&curve[2 * third..]));
        assert!(
            late <= early + early / 5 + 2048,
            "{name}'s weft-proxy grew from {early} KiB to {late} KiB: {curve:?}"
        );
    }
}

on_both_data_planes!(
    routes_split_match_and_stick,
    resilience_settings_act_on_real_failures,
    registry_follows_workloads_and_edge_outlives_server,
    a_killed_sidecar_takes_its_children_along_and_the_same_command_serves_again,
    bad_settings_never_reach_proxies_and_nacks_show,
    grpc_passes_through_and_follows_routes,
    strict_mtls_refuses_plaintext_missing_and_foreign_certificates,
    authorization_is_deny_all_until_allowed_and_deny_wins,
    certificates_rotate_under_load_without_failed_requests,
    permissive_mode_takes_plaintext_and_strict_refuses_it,
    root_rotation_loses_no_requests,
    a_sidecar_that_stops_renewing_and_the_cas_expiry_are_visible,
    a_rollout_under_load_loses_no_requests,
    a_proxy_that_declares_its_calls_holds_only_those,
    end_user_tokens_are_checked_and_their_claims_authorize,
);

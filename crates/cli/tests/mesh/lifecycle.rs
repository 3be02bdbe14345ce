//! Workloads coming and going: the registry, killed sidecars, rollouts under
//! load, bad settings kept from proxies, `weft up` and an installed weft.

use super::*;

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

on_both_data_planes!(
    registry_follows_workloads_and_edge_outlives_server,
    a_killed_sidecar_takes_its_children_along_and_the_same_command_serves_again,
    bad_settings_never_reach_proxies_and_nacks_show,
    a_rollout_under_load_loses_no_requests,
);

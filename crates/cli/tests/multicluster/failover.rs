//! Locality-aware routing and failover across three clusters, their control
//! planes stopped and restarted, and `weft up` with three clusters.

use super::*;

async fn three_clusters_route_locally_fail_over_by_locality_and_survive_their_control_planes(
    data_plane: DataPlane,
) {
    const EAST_A: usize = 0;
    const EAST_B: usize = 1;
    const WEST: usize = 2;
    let _alone = ONE_AT_A_TIME.lock().await;
    let mut world = World::start(data_plane).await;
    let client = world.proxy(EAST_A, "client-a", "client", None);
    let intruder = world.proxy(EAST_A, "intruder-a", "intruder", None);
    world.proxy(EAST_A, "reviews-a", "reviews", Some("reviews"));
    world.proxy(EAST_B, "reviews-b", "reviews", Some("reviews"));
    world.proxy(EAST_B, "ratings-b", "ratings", Some("ratings"));
    world.proxy(WEST, "reviews-w", "reviews", Some("reviews"));
    world.proxy(WEST, "ratings-w", "ratings", Some("ratings"));
    // east-a sees east-b's and west's reviews and ratings.
    world.until_directory(EAST_A, 4).await;
    world.until_directory(WEST, 3).await;
    world.until_in_sync().await;

    // weft explain names the failover order: here, then the same region,
    // then the other; every request below goes the way it says.
    let explain = |from: &str, host: &str| -> Value {
        let run = world.server().weft(
            &world.admin,
            &["explain", from, host, "--cluster", "east-a", "-o", "json"],
        );
        assert_eq!(run.code, 0, "{run:?}");
        serde_json::from_str(&run.stdout).unwrap()
    };
    let order = |explanation: &Value| -> Vec<String> {
        explanation["failover"][0]["localities"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["cluster"].as_str().unwrap().to_string())
            .collect()
    };
    let reviews_order = order(&explain("client-a", "reviews"));
    let ratings_explained = explain("client-a", "ratings");
    let ratings_order = order(&ratings_explained);
    eprintln!("failover order: reviews {reviews_order:?}, ratings {ratings_order:?}");
    assert_eq!(reviews_order, ["east-a", "east-b", "west"]);
    assert_eq!(ratings_order, ["east-b", "west"]);
    assert_eq!(ratings_explained["verdict"]["outcome"], "forwarded");
    let intruder_explained = explain("intruder-a", "ratings");
    assert_eq!(intruder_explained["verdict"]["status"], 403);
    // Instances are named SERVICE-a, -b, -w by cluster.
    let instance = |service: &str, cluster: &str| {
        let suffix = match cluster {
            "east-a" => "a",
            "east-b" => "b",
            _ => "w",
        };
        format!("{service}-{suffix}")
    };

    // Local first; a service with no instance here goes to the same region.
    let first = instance("reviews", &reviews_order[0]);
    until(
        "reviews answers from the first in the order",
        Duration::from_secs(30),
        async || {
            world
                .answers(client, "reviews", 1)
                .await
                .contains_key(&first)
        },
    )
    .await;
    let reviews = world.answers(client, "reviews", 30).await;
    eprintln!("reviews from east-a: {reviews:?}");
    assert_eq!(reviews, BTreeMap::from([(first, 30)]));
    let first = instance("ratings", &ratings_order[0]);
    until(
        "ratings answers through east-b's gateway",
        Duration::from_secs(30),
        async || {
            world
                .answers(client, "ratings", 1)
                .await
                .contains_key(&first)
        },
    )
    .await;
    let ratings = world.answers(client, "ratings", 30).await;
    eprintln!("ratings from east-a: {ratings:?}");
    assert_eq!(ratings, BTreeMap::from([(first, 30)]));

    // The callee in the other cluster sees the caller's own identity: the
    // gateway did not open the TLS.
    let (status, body) = world.call(client, "ratings").await;
    assert_eq!(status, 200);
    let forwarded = body.unwrap()["headers"]["x-forwarded-client-cert"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        forwarded.contains("URI=spiffe://weft/ns/shop/sa/client"),
        "ratings-b saw {forwarded:?}"
    );
    // A caller the policy does not allow is refused there too.
    let (status, _) = world.call(intruder, "ratings").await;
    assert_eq!(status, 403, "the intruder reached ratings in east-b");
    until(
        "ratings-b's access log names the refused caller",
        Duration::from_secs(10),
        async || {
            std::fs::read_to_string(world.dir.path().join("ratings-b.log"))
                .unwrap_or_default()
                .contains("spiffe://weft/ns/shop/sa/intruder")
        },
    )
    .await;

    // A directory change reaches the other edges within about a second.
    let started = Instant::now();
    world.proxy(WEST, "details-w", "details", Some("details"));
    let to_east_a = world.until_directory(EAST_A, 5).await;
    let to_east_b = world.until_directory(EAST_B, 4).await;
    eprintln!(
        "a new service in west reached east-a's edge {:?} and east-b's {:?} after its sidecar started ({to_east_a:?} of polling)",
        started.elapsed(),
        to_east_b
    );
    // The directory carries counts, not endpoints: two more instances of
    // details leave west's published entry the same size.
    let entry_bytes = |world: &World| -> usize {
        let directory = world
            .kept_directory(EAST_A)
            .expect("east-a keeps its directory");
        serde_json::to_vec(&directory["clusters"]["west"])
            .unwrap()
            .len()
    };
    let one = entry_bytes(&world);
    world.proxy(WEST, "details-w2", "details", Some("details"));
    world.proxy(WEST, "details-w3", "details", Some("details"));
    until(
        "east-a knows west runs 3 details",
        Duration::from_secs(30),
        async || {
            world
                .kept_directory(EAST_A)
                .is_some_and(|d| d["clusters"]["west"]["services"]["shop/details"]["healthy"] == 3)
        },
    )
    .await;
    let three = entry_bytes(&world);
    eprintln!(
        "west's directory entry at east-a: {one} bytes with 1 details instance, {three} bytes with 3"
    );
    assert_eq!(one, three);
    world.until_in_sync().await;

    // Kill the local reviews under load: traffic fails over to east-b (the
    // same region), with retries and no failed request.
    let load = Load::start(client, "reviews", "/");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let killed = Instant::now();
    world.stop_proxy(EAST_A, "reviews-a");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let seen = load.stop().await;
    let next = instance("reviews", &reviews_order[1]);
    let (failures, first) = failures_and_first(&seen, killed, &next);
    let after: BTreeMap<&str, usize> = seen
        .iter()
        .filter(|(at, _)| *at > killed + Duration::from_secs(2))
        .fold(BTreeMap::new(), |mut m, (_, o)| {
            *m.entry(o.as_deref().unwrap_or("failed")).or_default() += 1;
            m
        });
    eprintln!(
        "failover: {} requests, {} failed; first answer from east-b {:?} after the kill; from 2 s on: {after:?}",
        seen.len(),
        failures.len(),
        first
    );
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert!(first.is_some_and(|f| f < Duration::from_secs(3)));
    assert_eq!(after.keys().collect::<Vec<_>>(), vec![&next.as_str()]);

    // The local instance returns: traffic returns.
    let restarted = Instant::now();
    world.proxy(EAST_A, "reviews-a", "reviews", Some("reviews"));
    world
        .until_answered_by(
            client,
            "reviews",
            "reviews-a",
            "reviews answers from east-a again",
        )
        .await;
    eprintln!(
        "traffic back in east-a {:?} after its instance restarted",
        restarted.elapsed()
    );

    // The global view shows the failover as such: client in east-a
    // called reviews in east-b (east-b's edge counted it), and the pair
    // summed over clusters is both clusters' calls (the ones reviews-a
    // answered since it came back: a proxy killed loses the counts it
    // had not sent yet, up to 5 s).
    let server = world.server.as_ref().unwrap();
    let pairs = |by_cluster: bool| -> Vec<Value> {
        let mut args = vec!["stat", "pairs", "--since", "10m", "-o", "json"];
        if by_cluster {
            args.push("--by-cluster");
        }
        let run = server.weft(&world.admin, &args);
        assert_eq!(run.code, 0, "{run:?}");
        let report: Value = serde_json::from_str(&run.stdout).unwrap();
        report["rows"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| {
                r["source"]["service"] == "client" && r["destination"]["service"] == "reviews"
            })
            .cloned()
            .collect()
    };
    until(
        "the server's rollup has client@east-a → reviews@east-b",
        Duration::from_secs(40),
        async || {
            pairs(true).iter().any(|r| {
                r["source"]["cluster"] == "east-a"
                    && r["destination"]["cluster"] == "east-b"
                    && r["requests"].as_u64().unwrap_or(0) > 0
            })
        },
    )
    .await;
    // The web UI draws it as a cross-cluster call, and shows the three
    // clusters' edges connected.
    let mut browser = Browser::start(&[], "/none", world.dir.path().join("browser.log"));
    let base = &server.url;
    browser.goto(&format!("{base}/")).await;
    browser.fill("#token", &world.admin).await;
    let (url, _) = browser.submit("button[type=submit]").await;
    assert!(url.ends_with("/ui/"), "{url}");
    let connected = browser.texts("#clusters td.edge").await;
    assert_eq!(connected.len(), 3, "{connected:?}");
    assert!(
        connected.iter().all(|t| t.starts_with("connected")),
        "{connected:?}"
    );
    browser.goto(&format!("{base}/ui/topology?since=15m")).await;
    let crossing = browser
        .attrs(
            "g.edge.cross[data-source='east-a/shop/client'][data-destination='east-b/shop/reviews']",
            "data-requests",
        )
        .await;
    assert!(
        crossing
            .first()
            .is_some_and(|n| n.parse::<u64>().unwrap_or(0) > 0),
        "{crossing:?}"
    );
    let badges = browser
        .texts("table.calls tr[data-source='east-a/shop/client'][data-destination='east-b/shop/reviews'] .badge")
        .await;
    assert_eq!(badges, ["cross-cluster"]);
    if let Some(dir) = std::env::var_os("WEFT_SCREENSHOTS") {
        browser
            .screenshot(&PathBuf::from(dir).join("topology-multicluster.png"))
            .await;
    }
    assert_eq!(browser.problems().await, Vec::<String>::new());
    drop(browser);

    // The client's own counts say the same: its calls were answered in
    // east-b.
    let metrics = format!(
        "http://127.0.0.1:{}/metrics",
        world.clusters[EAST_A].edge.admin_port
    );
    let answered_in_east_b = metric_sum(
        &world.http,
        &metrics,
        &[
            "weft_requests_total{",
            "reporter=\"source\"",
            "source_service=\"client\"",
            "destination_service=\"reviews\"",
            "destination_cluster=\"east-b\"",
        ],
    )
    .await;
    assert!(answered_in_east_b > 0.0, "{answered_in_east_b}");
    until(
        "weft stat pairs sums the pair over both clusters",
        Duration::from_secs(30),
        async || {
            let by_cluster = pairs(true);
            let summed = pairs(false);
            let parts: u64 = by_cluster
                .iter()
                .map(|r| r["requests"].as_u64().unwrap())
                .sum();
            let clusters: BTreeSet<String> = by_cluster
                .iter()
                .map(|r| r["destination"]["cluster"].as_str().unwrap().to_string())
                .collect();
            eprintln!("client → reviews by cluster: {by_cluster:?}; summed: {summed:?}");
            clusters == BTreeSet::from(["east-a".to_string(), "east-b".to_string()])
                && summed.len() == 1
                && summed[0]["requests"].as_u64() == Some(parts)
        },
    )
    .await;

    // The local instance is up but answers 503: each error is retried at
    // the next priority, and outlier detection ejects it, so callers get
    // east-b's answers and no failure; after the ejection it serves again.
    let load = Load::start(client, "reviews", "/?fail=reviews-a");
    let failing = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let seen = load.stop().await;
    let (failures, first) = failures_and_first(&seen, failing, "reviews-b");
    let ejections = world
        .envoy_stat(
            EAST_A,
            "client-a",
            "out|reviews.shop",
            "outlier_detection.ejections_enforced_total",
        )
        .await;
    eprintln!(
        "reviews-a answering 503: {} requests, {} failed, first from east-b after {first:?}; ejections {ejections}",
        seen.len(),
        failures.len()
    );
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert!(ejections >= 1, "reviews-a was not ejected");
    let ejected = Instant::now();
    world
        .until_answered_by(
            client,
            "reviews",
            "reviews-a",
            "reviews-a serves again after its ejection",
        )
        .await;
    eprintln!("reviews-a back {:?} after its ejection", ejected.elapsed());

    // No instance left in the region: ratings goes to the other region.
    world.stop_proxy(EAST_B, "ratings-b");
    world
        .until_answered_by(
            client,
            "ratings",
            &instance("ratings", &ratings_order[1]),
            "ratings answers from the next in its order",
        )
        .await;

    // Static stability. The server stops under load: nothing fails.
    let directory_before = world.edge_status(EAST_A).await["directory"].clone();
    let load = Load::start(client, "reviews", "/");
    tokio::time::sleep(Duration::from_millis(500)).await;
    world.server.take().unwrap().stop();
    tokio::time::sleep(Duration::from_secs(3)).await;
    // An edge restarts without the server: it serves its proxies from
    // disk, cross-cluster routes included.
    world.clusters[EAST_A].edge.process.take().unwrap().stop();
    world.start_edge(EAST_A).await;
    world.until_in_sync().await;
    let seen = load.stop().await;
    let (failures, _) = failures_and_first(&seen, Instant::now(), "");
    eprintln!(
        "server down and east-a's edge restarted: {} requests, {} failed",
        seen.len(),
        failures.len()
    );
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    let status = world.edge_status(EAST_A).await;
    assert_eq!(status["fromDisk"], true, "{status}");
    assert_eq!(status["directory"]["fromDisk"], true, "{status}");
    assert_eq!(
        status["directory"]["services"],
        directory_before["services"]
    );
    assert_eq!(
        world.answers(client, "ratings", 5).await,
        BTreeMap::from([("ratings-w".to_string(), 5)])
    );

    // The server returns: everything converges by itself, and the edges
    // ask only for what they missed.
    let full_syncs_before: Vec<Option<i64>> =
        edge_metrics(&world, "weft_edge_directory_full_syncs_total").await;
    let server = Server::start_with(
        &world.dir.path().join("server"),
        None,
        &["--edge-listen", &world.edge_listen],
    );
    world.server = Some(server);
    until(
        "east-a's edge is back on the server",
        Duration::from_secs(30),
        async || {
            let status = world.edge_status(EAST_A).await;
            status["fromDisk"] == false && status["directory"]["fromDisk"] == false
        },
    )
    .await;
    // A change made while east-a's edge was away reaches it.
    world.proxy(WEST, "ratings-w2", "ratings", Some("ratings"));
    until(
        "east-a knows west runs 2 ratings",
        Duration::from_secs(30),
        async || {
            world
                .kept_directory(EAST_A)
                .is_some_and(|d| d["clusters"]["west"]["services"]["shop/ratings"]["healthy"] == 2)
        },
    )
    .await;
    let full_syncs_after: Vec<Option<i64>> =
        edge_metrics(&world, "weft_edge_directory_full_syncs_total").await;
    eprintln!(
        "full directory syncs per edge: before the server restart {full_syncs_before:?}, after {full_syncs_after:?}"
    );
    assert_eq!(
        full_syncs_before, full_syncs_after,
        "a reconnecting edge asked for the whole directory"
    );
    // East-a's restarted edge started from its file: it never needed one.
    assert_eq!(full_syncs_after[EAST_A], Some(0));
    let url = format!("{}/metrics", world.server().url);
    let written = metric(
        &world.http,
        &url,
        "weft_server_directory_items_written_total",
    )
    .await;
    eprintln!("directory items written by the restarted server: {written:?}");
    // Only the new ratings instance's count changed.
    assert!(written.is_some_and(|w| w <= 2), "{written:?}");
}

/// `weft up --multi-cluster`: three clusters come up, and killing the
/// instances it names moves the calls to the next region, as it says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weft_up_runs_three_clusters_and_shows_failover() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("up");
    let port = free_port();
    let (mut up, printed) = weft_up(&data, port, &["--multi-cluster"]);
    let pids: Vec<String> = printed
        .lines()
        .filter_map(|l| l.trim().strip_prefix("kill "))
        .map(str::to_string)
        .collect();
    assert_eq!(pids.len(), 3, "{printed}");
    weft_identity::tls::install_provider();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();

    // The tier-1 gateway, as printed: both clusters answer; with east-2's
    // ingress gateway stopped, only west-1 does.
    let tier1 = async || -> BTreeMap<String, usize> {
        let mut seen = BTreeMap::new();
        for _ in 0..40 {
            let answered = http
                .get("http://127.0.1.20:8080/")
                .header("host", "shop.weft.local")
                .send()
                .await;
            let who = match answered {
                Ok(r) if r.status() == 200 => {
                    let body: Value = r.json().await.unwrap_or_default();
                    body["instance"].as_str().unwrap_or("?").to_string()
                }
                Ok(r) => format!("status {}", r.status()),
                Err(_) => "no answer".to_string(),
            };
            *seen.entry(who).or_default() += 1;
        }
        seen
    };
    assert!(
        printed.contains("curl -H 'Host: shop.weft.local' http://127.0.1.20:8080/"),
        "{printed}"
    );
    until(
        "the tier-1 gateway reaches east-2 and west-1",
        Duration::from_secs(60),
        async || {
            let seen = tier1().await;
            seen.contains_key("reviews-east-2") && seen.contains_key("reviews-west-1")
        },
    )
    .await;
    assert!(
        Command::new("kill")
            .arg(&pids[2])
            .status()
            .unwrap()
            .success()
    );
    until(
        "all tier-1 traffic goes to west-1",
        Duration::from_secs(60),
        async || tier1().await.keys().collect::<Vec<_>>() == ["reviews-west-1"],
    )
    .await;
    let answers_from = async |instance: &str| -> bool {
        for _ in 0..5 {
            let answered = http
                .get(format!("http://127.0.0.1:{port}/"))
                .header("host", "reviews")
                .send()
                .await;
            let Ok(response) = answered else { return false };
            let body: Value = response.json().await.unwrap_or_default();
            if body["instance"] != instance {
                return false;
            }
        }
        true
    };
    for (instance, pid) in [
        ("reviews-east-1", Some(&pids[0])),
        ("reviews-east-2", Some(&pids[1])),
        ("reviews-west-1", None),
    ] {
        until(
            &format!("{instance} answers"),
            Duration::from_secs(30),
            async || answers_from(instance).await,
        )
        .await;
        if let Some(pid) = pid {
            assert!(Command::new("kill").arg(pid).status().unwrap().success());
        }
    }
    assert!(up.stop(), "weft up did not stop within 10 s of SIGTERM");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the client's sidecar still listens after weft up stopped"
    );
}

on_both_data_planes!(
    three_clusters_route_locally_fail_over_by_locality_and_survive_their_control_planes,
);

//! weft-proxy beside Envoy: a mixed pair, what it refuses, and its soak.

use super::*;

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

//! Routes, splits, matches and sticky sessions; resilience settings acting
//! on real failures; gRPC through the mesh; proxies that declare their calls.

use super::*;

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
    // dropped, never obeyed (a 1 ms timeout would fail the call): with no
    // `internal_address_config`, no caller is internal.
    let response = mesh
        .http
        .get(format!("http://127.0.0.1:{port}/"))
        .header("host", "reviews")
        .header("x-envoy-upstream-rq-timeout-ms", "1")
        .header("x-envoy-max-retries", "5")
        // Even from a private address, as an internal caller would be.
        .header("x-forwarded-for", "10.0.0.1")
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

on_both_data_planes!(
    routes_split_match_and_stick,
    resilience_settings_act_on_real_failures,
    grpc_passes_through_and_follows_routes,
    a_proxy_that_declares_its_calls_holds_only_those,
);

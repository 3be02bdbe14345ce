//! End-to-end tests of shared rate limits: the real `weft server`, `weft
//! edge`, `weft gateway` (Envoy) replicas and `weft ratelimit` replicas
//! counting in a real Redis, with real HTTP traffic.

mod support;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use support::gateway::{GatewayMesh, ingress_gateway};
use support::load::metric_sum;
use support::redis::Redis;
use support::tokens::Issuer;
use support::{free_port, until};

/// What a client got: status, the `x-ratelimit-*` headers, how long it took.
#[derive(Debug)]
struct Answer {
    status: u16,
    limit: Option<String>,
    remaining: Option<String>,
    reset: Option<String>,
    took: Duration,
}

async fn call(
    http: &reqwest::Client,
    address: &str,
    host: &str,
    token: Option<&str>,
) -> Option<Answer> {
    let mut request = http.get(format!("http://{address}/")).header("host", host);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let started = Instant::now();
    let response = request.send().await.ok()?;
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap_or_default().to_string())
    };
    Some(Answer {
        status: response.status().as_u16(),
        limit: header("x-ratelimit-limit"),
        remaining: header("x-ratelimit-remaining"),
        reset: header("x-ratelimit-reset"),
        took: started.elapsed(),
    })
}

/// The sum of the series on a `weft ratelimit`'s metrics page whose line
/// has every one of `parts`.
async fn series(http: &reqwest::Client, admin: u16, parts: &[&str]) -> f64 {
    metric_sum(http, &format!("http://127.0.0.1:{admin}/metrics"), parts).await
}

fn gateway(port: u16, servers: &str) -> String {
    ingress_gateway(&servers.replace("PORT", &port.to_string()))
}

fn shared_servers(jwks: &str, shadow: bool) -> String {
    format!(
        "    - name: shared
      port: PORT
      hostname: shared.example.com
      rateLimiting:
        timeout: 1s
        rules: [{{name: total, limit: {{requests: 10, unit: second}}}}]
      routes: [{{to: [{{service: shop/ratings}}]}}]
    - name: users
      port: PORT
      hostname: users.example.com
      authentication:
        jwt: [{{issuer: https://login.test, jwks: '{jwks}'}}]
      rateLimiting:
        timeout: 1s
        rules:
          - name: per-user
            dimensions: [{{of: claim, name: sub}}]
            limit: {{requests: 3, unit: minute}}
      routes: [{{to: [{{service: shop/ratings}}]}}]
    - name: counted
      port: PORT
      hostname: counted.example.com
      rateLimiting:
        timeout: 1s
        shadowMode: {shadow}
        rules: [{{name: all, limit: {{requests: 2, unit: minute}}}}]
      routes: [{{to: [{{service: shop/ratings}}]}}]
"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn gateway_replicas_share_limits_counted_in_redis() {
    let mut mesh = GatewayMesh::start().await;
    let redis = Redis::start(mesh.dir.path());
    let port = free_port();
    let issuer = Issuer::new("k1");
    let jwks = serde_json::json!({"keys": [issuer.jwk()]}).to_string();
    mesh.apply(&gateway(port, &shared_servers(&jwks, true)));
    // Inside the mesh too: each caller of ratings (as it names itself)
    // gets 2 a minute, whichever instance it reaches.
    mesh.apply(
        "apiVersion: weft.dev/v1alpha1
kind: TrafficSetting
metadata: {name: ratings-per-caller, tenant: retail, workspace: shop}
spec:
  service: {name: ratings, namespace: shop}
  rateLimiting:
    timeout: 1s
    rules:
      - name: per-caller
        dimensions: [{of: header, name: x-caller}]
        limit: {requests: 2, unit: minute}
",
    );
    mesh.workload("ratings", "ratings-1", "v1");
    mesh.workload("ratings", "ratings-2", "v1");
    let client = mesh.client("client");
    mesh.gateway_replica("ingress", "edge", 1, None);
    mesh.gateway_replica("ingress", "edge", 2, None);
    let admins = [
        mesh.ratelimit(1, &redis.url(), &[]),
        mesh.ratelimit(2, &redis.url(), &[]),
    ];
    mesh.until_in_sync(7).await;
    let replicas = [format!("127.0.0.1:{port}"), format!("127.0.0.2:{port}")];
    for replica in &replicas {
        until(
            "ratings answers through the gateway replica",
            Duration::from_secs(30),
            async || {
                call(&mesh.http, replica, "shared.example.com", None)
                    .await
                    .is_some_and(|a| a.status == 200)
            },
        )
        .await;
    }

    // Both replicas, as fast as they answer, for three whole seconds: 10
    // a second between them.
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    tokio::time::sleep(Duration::from_millis(
        1_000 - u64::from(now.subsec_millis()),
    ))
    .await;
    let until_at = Instant::now() + Duration::from_millis(2_950);
    let hammer = async |replica: &str| {
        let mut answers = Vec::new();
        while Instant::now() < until_at {
            answers.push(
                call(&mesh.http, replica, "shared.example.com", None)
                    .await
                    .unwrap(),
            );
        }
        answers
    };
    let (first, second) = tokio::join!(hammer(&replicas[0]), hammer(&replicas[1]));
    let allowed = |answers: &[Answer]| answers.iter().filter(|a| a.status == 200).count();
    let (a, b) = (allowed(&first), allowed(&second));
    let refused: Vec<&Answer> = first
        .iter()
        .chain(&second)
        .filter(|a| a.status != 200)
        .collect();
    println!(
        "shared limit 10/s over 3 s: replica 1 allowed {a} of {}, replica 2 allowed {b} of {}",
        first.len(),
        second.len()
    );
    assert!(
        (26..=32).contains(&(a + b)),
        "allowed {a} + {b}, want about 30"
    );
    assert!(a > 0 && b > 0, "both replicas let some through");
    assert!(!refused.is_empty());
    for answer in refused {
        assert_eq!(answer.status, 429, "{answer:?}");
        assert!(
            answer.limit.as_deref().is_some_and(|l| l.starts_with("10")),
            "{answer:?}"
        );
        assert_eq!(answer.remaining.as_deref(), Some("0"), "{answer:?}");
        assert!(answer.reset.is_some(), "{answer:?}");
    }

    // Per user: alice spends her 3 a minute, bob still has his.
    let alice = issuer.token(serde_json::json!({"iss": "https://login.test", "sub": "alice"}));
    let bob = issuer.token(serde_json::json!({"iss": "https://login.test", "sub": "bob"}));
    let mut statuses = Vec::new();
    for i in 0..5 {
        let replica = &replicas[i % 2];
        let answer = call(&mesh.http, replica, "users.example.com", Some(&alice))
            .await
            .unwrap();
        statuses.push(answer.status);
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429], "alice");
    let answer = call(&mesh.http, &replicas[0], "users.example.com", Some(&bob))
        .await
        .unwrap();
    assert_eq!(answer.status, 200, "bob");
    assert_eq!(answer.remaining.as_deref(), Some("2"), "bob's own counter");

    // Shadow mode refuses nothing, and counts what it would have.
    for _ in 0..4 {
        let answer = call(&mesh.http, &replicas[0], "counted.example.com", None)
            .await
            .unwrap();
        assert_eq!(answer.status, 200, "shadow mode refuses nothing");
    }
    let mut shadowed = 0.0;
    for admin in admins {
        shadowed += series(
            &mesh.http,
            admin,
            &[
                "weft_ratelimit_decisions_total",
                "#counted/all\"",
                "outcome=\"shadow_over_limit\"",
            ],
        )
        .await;
    }
    assert_eq!(shadowed, 2.0, "the two requests over the limit, counted");

    // Calls inside the mesh, limited by the callee's sidecars.
    let outbound = format!("127.0.0.1:{client}");
    until(
        "the client reaches ratings",
        Duration::from_secs(30),
        async || {
            call(&mesh.http, &outbound, "ratings", None)
                .await
                .is_some_and(|a| a.status == 200)
        },
    )
    .await;
    let from = async |caller: &str| {
        mesh.http
            .get(format!("http://{outbound}/"))
            .header("host", "ratings")
            .header("x-caller", caller)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(from("batch").await);
    }
    assert_eq!(
        statuses,
        [200, 200, 429],
        "batch, across ratings' two instances"
    );
    assert_eq!(from("web").await, 200, "another caller has its own counter");

    // The rule enforced, with `weft apply` and nothing restarted: it
    // already counted 4 of 2.
    mesh.apply(&gateway(port, &shared_servers(&jwks, false)));
    until(
        "the changed rule refuses",
        Duration::from_secs(20),
        async || {
            call(&mesh.http, &replicas[1], "counted.example.com", None)
                .await
                .is_some_and(|a| a.status == 429)
        },
    )
    .await;
}

/// `closed` has a port of its own: plain-HTTP servers on one port share
/// one way of failing.
fn failing_servers(closed_port: u16) -> String {
    "    - name: open
      port: PORT
      hostname: open.example.com
      rateLimiting:
        timeout: 200ms
        rules: [{name: all, limit: {requests: 100000, unit: second}}]
      routes: [{to: [{service: shop/ratings}]}]
    - name: closed
      port: CLOSED
      hostname: closed.example.com
      rateLimiting:
        failClosed: true
        timeout: 200ms
        rules: [{name: all, limit: {requests: 100000, unit: second}}]
      routes: [{to: [{service: shop/ratings}]}]
    - name: tight
      port: PORT
      hostname: tight.example.com
      rateLimiting:
        timeout: 200ms
        rules: [{name: all, limit: {requests: 2, unit: hour}}]
      routes: [{to: [{service: shop/ratings}]}]
"
    .replace("CLOSED", &closed_port.to_string())
}

/// Statuses (and the slowest answer) of requests for `host` sent one
/// after another for `period`.
async fn load(
    http: &reqwest::Client,
    address: &str,
    host: &str,
    period: Duration,
) -> (Vec<u16>, Duration) {
    let end = Instant::now() + period;
    let (mut statuses, mut slowest) = (Vec::new(), Duration::ZERO);
    while Instant::now() < end {
        let answer = call(http, address, host, None).await.unwrap();
        statuses.push(answer.status);
        slowest = slowest.max(answer.took);
    }
    (statuses, slowest)
}

#[tokio::test(flavor = "multi_thread")]
async fn without_redis_requests_are_neither_hung_nor_lost() {
    let mut mesh = GatewayMesh::start().await;
    // The rate limit service starts while its Redis is down.
    let mut redis = Redis::stopped(mesh.dir.path());
    let port = free_port();
    let closed_port = free_port();
    mesh.apply(&gateway(port, &failing_servers(closed_port)));
    mesh.workload("ratings", "ratings-1", "v1");
    mesh.gateway("ingress", "edge", None);
    let admin = mesh.ratelimit(1, &redis.url(), &["--redis-timeout", "50ms"]);
    mesh.until_in_sync(3).await;
    let address = format!("127.0.0.1:{port}");
    let closed_address = format!("127.0.0.1:{closed_port}");
    let status = async |host: &str| {
        let address = if host.starts_with("closed") {
            &closed_address
        } else {
            &address
        };
        call(&mesh.http, address, host, None)
            .await
            .map(|a| a.status)
    };
    until("the gateway serves", Duration::from_secs(30), async || {
        status("open.example.com").await == Some(200)
    })
    .await;
    assert_eq!(
        status("closed.example.com").await,
        Some(503),
        "no Redis yet: fail closed"
    );

    // Redis comes: decisions resume without a restart.
    redis.resume();
    until("decisions resume", Duration::from_secs(20), async || {
        status("closed.example.com").await == Some(200)
    })
    .await;
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(status("tight.example.com").await.unwrap());
    }
    assert_eq!(statuses, [200, 200, 429], "counted in Redis");

    // Redis lost under load: fail-open loses nothing, fail-closed refuses
    // at once; nothing waits much past the 200 ms the rules allow.
    let http = mesh.http.clone();
    let open_address = address.clone();
    let open = tokio::spawn(async move {
        load(
            &http,
            &open_address,
            "open.example.com",
            Duration::from_secs(4),
        )
        .await
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    redis.crash();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (closed, closed_slowest) = load(
        &mesh.http,
        &closed_address,
        "closed.example.com",
        Duration::from_secs(1),
    )
    .await;
    let (open, open_slowest) = open.await.unwrap();
    println!(
        "Redis down: fail-open {} requests, {} not 200, slowest {open_slowest:?}; fail-closed {} requests, {} refused, slowest {closed_slowest:?}",
        open.len(),
        open.iter().filter(|s| **s != 200).count(),
        closed.len(),
        closed.iter().filter(|s| **s == 503).count(),
    );
    assert!(
        open.iter().all(|s| *s == 200),
        "fail-open lost requests: {open:?}"
    );
    assert!(
        closed.iter().all(|s| *s == 503),
        "fail-closed let requests through: {closed:?}"
    );
    for slowest in [open_slowest, closed_slowest] {
        assert!(
            slowest < Duration::from_secs(1),
            "a request waited {slowest:?}"
        );
    }
    assert!(series(&mesh.http, admin, &["weft_ratelimit_redis_errors_total"]).await > 0.0);

    // Back again: limits resume (Redis lost its counters with it).
    redis.resume();
    until("limits resume", Duration::from_secs(20), async || {
        status("closed.example.com").await == Some(200)
    })
    .await;
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(status("tight.example.com").await.unwrap());
    }
    assert_eq!(statuses, [200, 200, 429], "counting again");
}

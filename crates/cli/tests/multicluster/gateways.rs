//! Gateways across clusters: a killed east-west gateway serves again, a
//! tier-1 gateway splits between two clusters' ingress gateways and fails
//! over.

use super::*;

/// Crash-only gateways: `weft eastwest` killed with SIGKILL takes its
/// Envoy along, and the same command started again carries calls across
/// clusters again.
async fn a_killed_eastwest_gateway_takes_its_envoy_along_and_the_same_command_serves_again(
    data_plane: DataPlane,
) {
    const EAST_A: usize = 0;
    const EAST_B: usize = 1;
    let _alone = ONE_AT_A_TIME.lock().await;
    let mut world = World::start(data_plane).await;
    let client = world.proxy(EAST_A, "client-a", "client", None);
    // ratings runs in east-b only: every call crosses east-b's gateway.
    world.proxy(EAST_B, "ratings-b", "ratings", Some("ratings"));
    world.until_directory(EAST_A, 1).await;
    world.until_in_sync().await;
    world
        .until_answered_by(
            client,
            "ratings",
            "ratings-b",
            "ratings answers from east-b",
        )
        .await;

    let gateway = world.clusters[EAST_B].gateway.take().unwrap();
    let pid = gateway.0.id();
    let envoys = weft_agent::procfs::children_of(pid);
    assert_eq!(envoys.len(), 1, "the gateway runs one Envoy");
    support::kill9(pid);
    drop(gateway);
    support::until_gone("the gateway's Envoy is gone", &envoys).await;

    let restarted = Instant::now();
    world.start_gateway(EAST_B);
    world
        .until_answered_by(
            client,
            "ratings",
            "ratings-b",
            "the restarted gateway carries calls to east-b",
        )
        .await;
    println!(
        "a killed east-west gateway, started again, carried calls after {:?}",
        restarted.elapsed()
    );
}

/// A tier-1 gateway in east-a in front of east-b's and west's ingress
/// gateways (which serve `*.example.com`, covering the tier-1's
/// `shop.example.com`): 80/20 between them; one ingress gateway killed under load
/// leaves all traffic to the other without a failed request, and its
/// traffic returns once it is back.
async fn a_tier1_gateway_splits_across_clusters_and_fails_over(data_plane: DataPlane) {
    const EAST_A: usize = 0;
    const EAST_B: usize = 1;
    const WEST: usize = 2;
    let _alone = ONE_AT_A_TIME.lock().await;
    let mut world = World::start(data_plane).await;
    let (tier1_port, ingress_port) = (free_port(), free_port());
    let manifest = format!(
        "apiVersion: weft.dev/v1alpha1
kind: SecuritySetting
metadata: {{name: from-the-ingress, tenant: retail, workspace: shop}}
spec:
  service: {{name: reviews, namespace: shop}}
  authorization:
    allow: [{{from: [{{serviceAccount: {{name: ingress, namespace: shop}}}}]}}]
---
apiVersion: weft.dev/v1alpha1
kind: GatewayGroup
metadata: {{name: front, tenant: retail, workspace: shop}}
spec: {{namespaceSelector: ['*/shop']}}
---
apiVersion: weft.dev/v1alpha1
kind: Gateway
metadata: {{name: ingress, tenant: retail, workspace: shop, gatewayGroup: front}}
spec:
  workloadSelector: {{namespace: shop, labels: {{tier: '2'}}}}
  http:
    - name: shop
      port: {ingress_port}
      hostname: '*.example.com'
      routes: [{{to: [{{service: shop/reviews}}]}}]
---
apiVersion: weft.dev/v1alpha1
kind: Gateway
metadata: {{name: tier1, tenant: retail, workspace: shop, gatewayGroup: front}}
spec:
  workloadSelector: {{namespace: shop, labels: {{tier: '1'}}}}
  http:
    - name: shop
      port: {tier1_port}
      hostname: shop.example.com
      routes:
        - clusters: [{{name: east-b, weight: 80}}, {{name: west, weight: 20}}]
          retries: {{attempts: 3, perTryTimeout: 2s, retryOn: [connect-failure, reset, 5xx]}}
"
    );
    let file = write(world.dir.path(), "tier1.yaml", &manifest);
    let applied = world.server().weft(&world.admin, &["apply", "-f", &file]);
    assert_eq!(applied.code, 0, "{applied:?}");
    world.proxy(EAST_B, "reviews-b", "reviews", Some("reviews"));
    world.proxy(WEST, "reviews-w", "reviews", Some("reviews"));
    let mesh_b = free_port();
    let ingress_b = world.gateway(EAST_B, "ingress", "tier=2", "127.0.2.30", Some(mesh_b));
    world.gateway(WEST, "ingress", "tier=2", "127.0.3.30", Some(free_port()));
    world.gateway(EAST_A, "tier1", "tier=1", "127.0.0.1", None);
    world.until_in_sync().await;
    const HOST: &str = "shop.example.com";
    until(
        "the tier-1 gateway reaches both clusters",
        Duration::from_secs(60),
        async || {
            let seen = world.answers(tier1_port, HOST, 20).await;
            seen.contains_key("reviews-b") && seen.contains_key("reviews-w")
        },
    )
    .await;

    let split = world.answers(tier1_port, HOST, 1_000).await;
    println!("tier-1 split over 1,000 requests: {split:?}");
    let to_b = split.get("reviews-b").copied().unwrap_or(0);
    let to_w = split.get("reviews-w").copied().unwrap_or(0);
    assert_eq!(to_b + to_w, 1_000, "every request answered: {split:?}");
    assert!(
        (740..=860).contains(&to_b),
        "80/20 within tolerance: {split:?}"
    );

    // east-b's ingress gateway killed under load: west takes everything,
    // and no request fails (retries move them).
    let load = Load::start(tier1_port, HOST, "/");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let gateway = world.clusters[EAST_B].proxies.remove(&ingress_b).unwrap();
    let envoys = weft_agent::procfs::children_of(gateway.0.id());
    support::kill9(gateway.0.id());
    drop(gateway);
    support::until_gone("east-b's ingress gateway and its Envoy", &envoys).await;
    let killed = Instant::now();
    world
        .until_answered_by(tier1_port, HOST, "reviews-w", "all traffic goes to west")
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Back: its share returns.
    let restarted = Instant::now();
    world.gateway(EAST_B, "ingress", "tier=2", "127.0.2.30", Some(mesh_b));
    until(
        "east-b takes traffic again",
        Duration::from_secs(60),
        async || {
            world
                .answers(tier1_port, HOST, 20)
                .await
                .contains_key("reviews-b")
        },
    )
    .await;
    let seen = load.stop().await;
    let (failures, _) = failures_and_first(&seen, killed, "reviews-w");
    let back = seen
        .iter()
        .find(|(at, o)| *at >= restarted && o.as_deref() == Ok("reviews-b"))
        .map(|(at, _)| at.duration_since(restarted));
    println!(
        "tier-1 under load: {} requests, {} failed; east-b back in traffic after {back:?}",
        seen.len(),
        failures.len()
    );
    assert!(failures.is_empty(), "failed requests: {failures:?}");
}

on_both_data_planes!(
    a_killed_eastwest_gateway_takes_its_envoy_along_and_the_same_command_serves_again,
    a_tier1_gateway_splits_across_clusters_and_fails_over,
);

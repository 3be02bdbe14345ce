//! Certificates renewed and roots rotated under load, and a sidecar that
//! stops renewing.

use super::*;

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

on_both_data_planes!(
    certificates_rotate_under_load_without_failed_requests,
    root_rotation_loses_no_requests,
    a_sidecar_that_stops_renewing_and_the_cas_expiry_are_visible,
);

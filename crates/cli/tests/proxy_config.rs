//! `weft proxy-config` against a live mesh: what the edge says a proxy
//! holds is what that proxy's own Envoy reports in its config dump.

mod support;

use std::collections::BTreeSet;

use serde_json::Value;
use support::mesh::Mesh;

/// The entries of one part of a config dump (`kind`: e.g.
/// `ClustersConfigDump`; `list`: the list in it).
fn part<'a>(dump: &'a Value, kind: &str, list: &str) -> Vec<&'a Value> {
    dump["configs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["@type"].as_str().is_some_and(|t| t.ends_with(kind)))
        .flat_map(|c| c[list].as_array().into_iter().flatten())
        .collect()
}

/// Cluster, route configuration and listener names, and each endpoint
/// set's addresses.
fn held(
    dump: &Value,
) -> (
    BTreeSet<String>,
    BTreeSet<String>,
    BTreeSet<String>,
    BTreeSet<String>,
) {
    let names = |kind, list, pointer: &str| -> BTreeSet<String> {
        part(dump, kind, list)
            .into_iter()
            .filter_map(|e| {
                e.pointer(pointer)
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
            .collect()
    };
    let endpoints = part(dump, "EndpointsConfigDump", "dynamic_endpoint_configs")
        .into_iter()
        .flat_map(|e| {
            let config = &e["endpoint_config"];
            let cluster = config["cluster_name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            config["endpoints"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|g| g["lb_endpoints"].as_array().into_iter().flatten())
                .map(move |lb| {
                    let a = &lb["endpoint"]["address"]["socket_address"];
                    format!(
                        "{cluster} {}:{}",
                        a["address"].as_str().unwrap_or_default(),
                        a["port_value"]
                    )
                })
                .collect::<Vec<_>>()
        })
        .collect();
    (
        names(
            "ClustersConfigDump",
            "dynamic_active_clusters",
            "/cluster/name",
        ),
        names(
            "RoutesConfigDump",
            "dynamic_route_configs",
            "/route_config/name",
        ),
        names("ListenersConfigDump", "dynamic_listeners", "/name"),
        endpoints,
    )
}

#[tokio::test]
async fn proxy_config_matches_what_envoy_reports_holding() {
    let mut mesh = Mesh::start().await;
    let (_reviews, _client, _port) = mesh.reviews_and_client().await;
    let server = mesh.server();
    let summary = server.weft(
        &mesh.admin,
        &[
            "proxy-config",
            "client-1",
            "--cluster",
            "east",
            "-o",
            "json",
        ],
    );
    assert_eq!(summary.code, 0, "{summary:?}");
    let config: Value = serde_json::from_str(&summary.stdout).unwrap();
    assert_eq!(config["inSync"], true, "{config}");
    assert_eq!(
        config["certificate"]["identity"], "spiffe://weft/ns/shop/sa/client",
        "{config}"
    );
    let envoy: Value = mesh
        .http
        .get(format!(
            "http://127.0.0.1:{}/config_dump?include_eds",
            mesh.envoy_admin["client-1"]
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (clusters, routes, listeners, endpoints) = held(&config["configDump"]);
    assert!(!clusters.is_empty() && !endpoints.is_empty(), "{config}");
    assert_eq!(held(&envoy), (clusters, routes, listeners, endpoints));

    // The tables name what Envoy has too.
    let table = server.weft(
        &mesh.admin,
        &["proxy-config", "client-1", "--cluster", "east", "endpoints"],
    );
    assert_eq!(table.code, 0, "{table:?}");
    assert!(table.stdout.starts_with("CLUSTER"), "{table:?}");
    assert!(table.stdout.contains("reviews"), "{table:?}");

    // No such proxy: 404; a user who may not read the cluster: 403.
    let missing = server.weft(
        &mesh.admin,
        &["proxy-config", "nobody", "--cluster", "east"],
    );
    assert_eq!(missing.code, 6, "{missing:?}");
    let olga = support::user_with_token(server, &mesh.admin, "olga").await;
    let refused = server.weft(&olga, &["proxy-config", "client-1", "--cluster", "east"]);
    assert_eq!(refused.code, 5, "{refused:?}");
}

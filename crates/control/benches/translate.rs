//! How translation scales with the mesh: the time to turn a cluster's
//! configuration and registry into every proxy's config, the time to turn
//! those into xDS snapshots, and how big one proxy's snapshot gets.
//!
//! Each service has two instances (labels version v1 and v2); every tenth
//! service has a ServiceRoute (a 90/10 split and a header match), and each
//! workspace has a TrafficSetting with retries and outlier detection.
//! Services are spread over workspaces of a given size: a proxy sees the
//! services of its own workspace only, so the workspace size, not the
//! mesh size, sets what one proxy holds. Prints figures; asserts nothing.
//!
//! cargo bench -p weft-control --bench translate

use std::time::{Duration, Instant};

use serde_json::json;
use weft_api::Resource;
use weft_control::translate::{Config, translate};
use weft_control::workload::Workload;

const CLUSTER: &str = "east";

fn resource(document: serde_json::Value) -> Resource {
    serde_json::from_value(document).expect("the benchmark's resources are well formed")
}

/// The configuration and registry of `services` services in workspaces of
/// `per_workspace` services each.
fn mesh(services: usize, per_workspace: usize) -> (Vec<Resource>, Vec<Workload>) {
    let workspaces = services.div_ceil(per_workspace);
    let mut resources = vec![resource(json!({
        "apiVersion": "weft.dev/v1alpha1", "kind": "Tenant",
        "metadata": {"name": "bench"}, "spec": {}
    }))];
    for w in 0..workspaces {
        let ws = format!("ws-{w}");
        resources.push(resource(json!({
            "apiVersion": "weft.dev/v1alpha1", "kind": "Workspace",
            "metadata": {"name": ws, "tenant": "bench"},
            "spec": {"namespaceSelector": [format!("{CLUSTER}/ns-{w}")]}
        })));
        resources.push(resource(json!({
            "apiVersion": "weft.dev/v1alpha1", "kind": "TrafficGroup",
            "metadata": {"name": "traffic", "tenant": "bench", "workspace": ws}, "spec": {}
        })));
        resources.push(resource(json!({
            "apiVersion": "weft.dev/v1alpha1", "kind": "TrafficSetting",
            "metadata": {"name": "defaults", "tenant": "bench", "workspace": ws},
            "spec": {
                "timeout": "10s",
                "retries": {"attempts": 2, "perTryTimeout": "3s"},
                "outlierDetection": {"consecutive5xx": 5, "interval": "10s", "baseEjectionTime": "30s"}
            }
        })));
    }
    let mut workloads = Vec::with_capacity(services * 2);
    for s in 0..services {
        let (w, name) = (s / per_workspace, format!("svc-{s}"));
        let namespace = format!("ns-{w}");
        if s % 10 == 0 {
            resources.push(resource(json!({
                "apiVersion": "weft.dev/v1alpha1", "kind": "ServiceRoute",
                "metadata": {"name": name, "tenant": "bench", "workspace": format!("ws-{w}"), "trafficGroup": "traffic"},
                "spec": {
                    "service": {"name": name, "namespace": namespace},
                    "subsets": [
                        {"name": "v1", "labels": {"version": "v1"}},
                        {"name": "v2", "labels": {"version": "v2"}}
                    ],
                    "rules": [
                        {"matches": [{"headers": [{"name": "x-canary", "exact": "yes"}]}],
                         "destinations": [{"subset": "v2"}]},
                        {"destinations": [{"subset": "v1", "weight": 90}, {"subset": "v2", "weight": 10}]}
                    ]
                }
            })));
        }
        for (i, version) in ["v1", "v2"].into_iter().enumerate() {
            let n = s * 2 + i;
            workloads.push(Workload {
                node: format!("{name}-{version}"),
                service: name.clone(),
                namespace: namespace.clone(),
                service_account: name.clone(),
                labels: [("version".to_string(), version.to_string())].into(),
                address: format!("10.{}.{}.{}", n >> 16 & 255, n >> 8 & 255, n & 255),
                port: 15006,
                app_port: Some(8080),
                outbound_port: Some(15001),
                role: Default::default(),
            });
        }
    }
    (resources, workloads)
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn run(services: usize, per_workspace: usize) {
    let (resources, workloads) = mesh(services, per_workspace);

    let started = Instant::now();
    let config = Config::parse(CLUSTER, &resources);
    let parse = started.elapsed();

    let started = Instant::now();
    let translation = translate(&config, &workloads, &Default::default());
    let translate_time = started.elapsed();
    assert!(
        translation.errors.is_empty(),
        "the benchmark's configuration has errors: {:?}",
        translation.errors
    );

    let started = Instant::now();
    let mut total_bytes = 0usize;
    let mut largest = 0usize;
    let mut largest_resources = 0usize;
    for proxy in translation.proxies.values() {
        let snapshot = proxy
            .to_snapshot()
            .expect("translation gives consistent snapshots");
        let bytes = snapshot.encoded_len();
        total_bytes += bytes;
        if bytes > largest {
            largest = bytes;
            largest_resources = weft_xds::ResourceType::ALL
                .into_iter()
                .map(|t| snapshot.resources(t).len())
                .sum();
        }
    }
    let snapshots = started.elapsed();
    let proxies = translation.proxies.len();
    println!(
        "{services:>6} services ({per_workspace} per workspace), {proxies} proxies: \
         parse {}, translate {}, snapshots {} ({:.0} µs per proxy); \
         largest proxy {largest_resources} resources, {:.1} KiB; all proxies {:.1} MiB",
        ms(parse),
        ms(translate_time),
        ms(snapshots),
        snapshots.as_secs_f64() * 1e6 / proxies as f64,
        largest as f64 / 1024.0,
        total_bytes as f64 / (1024.0 * 1024.0),
    );
}

fn main() {
    println!("one workspace: a proxy's config grows with the mesh");
    for services in [10, 100, 500, 1000] {
        run(services, services);
    }
    println!("workspaces of 100 services: it does not");
    for services in [1000, 10_000] {
        run(services, 100);
    }
}

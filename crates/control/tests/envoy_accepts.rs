//! Real Envoy accepts what the translation makes: for every golden input
//! and every proxy in it, the proxy's bootstrap (as `weft sidecar`,
//! `weft eastwest` and `weft gateway` write it) carries the proxy's xDS
//! resources as static resources — each listener's routes put inline in
//! place of RDS, each EDS cluster's endpoints inline — and
//! `envoy --mode validate` must accept it. Validation builds every
//! listener, filter, cluster and secret as Envoy would, without binding a
//! port or connecting anywhere, so a field Envoy refuses fails here.
//! These are the resources `weft x translate --format envoy` prints.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use envoy_types::pb::envoy::config::bootstrap::v3::bootstrap::StaticResources;
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, Listener, filter};
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use envoy_types::pb::google::protobuf::Any;
use envoy_types::util::pack_any;
use prost::Message;
use weft_agent::bootstrap::{Params, bootstrap};
use weft_agent::workload::Workload;
use support::Case;
use weft_control::translate::{Config, translate};
use weft_xds::{ResourceType, Snapshot};

fn envoy_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("WEFT_ENVOY") {
        return path.into();
    }
    let path = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../.tools/venv/bin/envoy"
    ));
    assert!(
        path.exists(),
        "no Envoy at {}: run scripts/setup (or set WEFT_ENVOY)",
        path.display()
    );
    path
}

fn decode<M: Message + Default>(any: &Any) -> M {
    M::decode(any.value.as_slice()).expect("a resource the snapshot holds decodes")
}

/// A filter chain with each HTTP connection manager's RDS replaced by
/// the route configuration it names.
fn inline_routes(chain: &mut FilterChain, routes: &BTreeMap<String, RouteConfiguration>) {
    for filter in &mut chain.filters {
        let Some(filter::ConfigType::TypedConfig(any)) = &mut filter.config_type else {
            continue;
        };
        if !any.type_url.ends_with("HttpConnectionManager") {
            continue;
        }
        let mut hcm: HttpConnectionManager = decode(any);
        if let Some(RouteSpecifier::Rds(rds)) = &hcm.route_specifier {
            let routes = routes
                .get(&rds.route_config_name)
                .unwrap_or_else(|| panic!("no route configuration {}", rds.route_config_name))
                .clone();
            hcm.route_specifier = Some(RouteSpecifier::RouteConfig(routes));
        }
        *any = pack_any(hcm);
    }
}

/// The proxy's bootstrap with its snapshot as static resources.
fn static_bootstrap(workload: &Workload, snapshot: &Snapshot, sds_socket: &Path) -> Vec<u8> {
    let mut bootstrap = bootstrap(&Params {
        workload,
        edge: "127.0.0.1:9".parse().unwrap(),
        edge_id: "spiffe://weft/ns/weft-system/sa/weft-edge",
        credential: "validation",
        sds_socket,
        admin_port: 0,
        delta: true,
    });
    let routes: BTreeMap<String, RouteConfiguration> = snapshot
        .entries(ResourceType::Route)
        .map(|e| (e.name.to_string(), decode(&e.any)))
        .collect();
    let endpoints: BTreeMap<String, ClusterLoadAssignment> = snapshot
        .entries(ResourceType::Endpoint)
        .map(|e| (e.name.to_string(), decode(&e.any)))
        .collect();
    let statics = bootstrap
        .static_resources
        .get_or_insert_with(StaticResources::default);
    for entry in snapshot.entries(ResourceType::Listener) {
        let mut listener: Listener = decode(&entry.any);
        for chain in listener
            .filter_chains
            .iter_mut()
            .chain(listener.default_filter_chain.as_mut())
        {
            inline_routes(chain, &routes);
        }
        statics.listeners.push(listener);
    }
    for entry in snapshot.entries(ResourceType::Cluster) {
        let mut cluster: Cluster = decode(&entry.any);
        let eds = ClusterDiscoveryType::Type(DiscoveryType::Eds as i32);
        if cluster.cluster_discovery_type == Some(eds) {
            let service = cluster
                .eds_cluster_config
                .take()
                .map(|c| c.service_name)
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| cluster.name.clone());
            let assignment = endpoints
                .get(&service)
                .unwrap_or_else(|| panic!("no endpoints {service} for cluster {}", cluster.name))
                .clone();
            cluster.cluster_discovery_type =
                Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32));
            cluster.load_assignment = Some(assignment);
        }
        statics.clusters.push(cluster);
    }
    for entry in snapshot.entries(ResourceType::Secret) {
        statics.secrets.push(decode::<Secret>(&entry.any));
    }
    bootstrap.encode_to_vec()
}

#[test]
fn envoy_accepts_every_proxy_of_every_golden_input() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/in");
    let mut inputs: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    inputs.sort();
    let dir = tempfile::tempdir().unwrap();
    let envoy = envoy_binary();
    let mut refused = Vec::new();
    let mut validated = 0;
    for input in &inputs {
        let name = input.file_name().unwrap().to_string_lossy().to_string();
        let case: Case = serde_norway::from_str(&std::fs::read_to_string(input).unwrap())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let config = Config::parse(&case.cluster, &case.manifests)
            .with_trust_domain(case.trust_domain)
            .with_locality(case.locality);
        let translation = translate(&config, &case.workloads, &case.directory).per_proxy();
        for (node, proxy) in &translation.proxies {
            let snapshot = proxy.to_snapshot().unwrap();
            // What `weft x translate --format envoy` prints of it.
            let dump = weft_xds::json::config_dump(&snapshot)
                .unwrap_or_else(|e| panic!("{name}: {node}: {e}"));
            assert_eq!(dump["configs"].as_array().unwrap().len(), 5);
            let workload = case
                .workloads
                .iter()
                .find(|w| &w.node == node)
                .unwrap_or_else(|| panic!("{name}: no workload {node}"));
            let file = dir.path().join(format!("{name}-{node}.pb"));
            std::fs::write(
                &file,
                static_bootstrap(workload, &snapshot, &dir.path().join("sds.sock")),
            )
            .unwrap();
            let run = std::process::Command::new(&envoy)
                .args([
                    "--mode",
                    "validate",
                    "--log-level",
                    "error",
                    "--disable-hot-restart",
                    "-c",
                ])
                .arg(&file)
                .output()
                .expect("Envoy runs");
            validated += 1;
            if !run.status.success() {
                refused.push(format!(
                    "{name}: proxy {node}: {}{}",
                    String::from_utf8_lossy(&run.stdout),
                    String::from_utf8_lossy(&run.stderr)
                ));
            }
        }
    }
    assert!(
        validated >= inputs.len(),
        "only {validated} proxies validated"
    );
    assert!(refused.is_empty(), "Envoy refused:\n{}", refused.join("\n"));
    eprintln!(
        "Envoy accepted all {validated} proxies of {} golden inputs",
        inputs.len()
    );
}

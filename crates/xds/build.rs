//! Compiles the descriptors of the Envoy resources weft emits, so they can
//! be shown as JSON (the proto3 JSON mapping Envoy's own config dump uses).
//! The `.proto` sources are the ones `envoy-types` was generated from and
//! ships; cargo tells where that crate is.

use std::path::PathBuf;
use std::process::Command;

/// Every resource and extension weft packs; their imports come along.
const FILES: &[&str] = &[
    "envoy/service/discovery/v3/discovery.proto",
    "envoy/config/cluster/v3/cluster.proto",
    "envoy/config/endpoint/v3/endpoint.proto",
    "envoy/config/listener/v3/listener.proto",
    "envoy/config/route/v3/route.proto",
    "envoy/extensions/transport_sockets/tls/v3/tls.proto",
    "envoy/extensions/transport_sockets/tls/v3/secret.proto",
    "envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.proto",
    "envoy/extensions/filters/network/tcp_proxy/v3/tcp_proxy.proto",
    "envoy/extensions/filters/network/rbac/v3/rbac.proto",
    "envoy/extensions/filters/http/router/v3/router.proto",
    "envoy/extensions/filters/http/cors/v3/cors.proto",
    "envoy/extensions/filters/http/local_ratelimit/v3/local_rate_limit.proto",
    "envoy/extensions/filters/http/ratelimit/v3/rate_limit.proto",
    "envoy/extensions/filters/http/ext_authz/v3/ext_authz.proto",
    "envoy/extensions/filters/http/rbac/v3/rbac.proto",
    "envoy/extensions/filters/http/jwt_authn/v3/config.proto",
    "envoy/extensions/filters/http/header_mutation/v3/header_mutation.proto",
    "envoy/extensions/filters/listener/tls_inspector/v3/tls_inspector.proto",
    "envoy/extensions/access_loggers/stream/v3/stream.proto",
    "envoy/extensions/access_loggers/stats/v3/stats.proto",
    "envoy/extensions/access_loggers/open_telemetry/v3/logs_service.proto",
    "envoy/config/trace/v3/opentelemetry.proto",
    "envoy/extensions/tracers/opentelemetry/resource_detectors/v3/static_config_resource_detector.proto",
    "envoy/extensions/filters/http/header_to_metadata/v3/header_to_metadata.proto",
    "envoy/extensions/retry/host/previous_hosts/v3/previous_hosts.proto",
    "envoy/extensions/retry/priority/previous_priorities/v3/previous_priorities_config.proto",
    "envoy/extensions/upstreams/http/v3/http_protocol_options.proto",
    // Bootstraps, which weft-proxy also reads as YAML, and the stats sink
    // weft's agent configures in them.
    "envoy/config/bootstrap/v3/bootstrap.proto",
    "envoy/extensions/stat_sinks/open_telemetry/v3/open_telemetry.proto",
];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    // A new envoy-types (new .proto files) shows in the lock file.
    println!("cargo:rerun-if-changed=../../Cargo.lock");
    let root = envoy_types_dir().join("proto");
    let includes = [
        "data-plane-api",
        "xds",
        "protoc-gen-validate",
        "googleapis",
        "cel-spec/proto",
        "opentelemetry-proto",
        "client_model",
    ]
    .map(|d| root.join(d));
    // weft's own resource types beside Envoy's.
    let own = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"))
        .join("proto");
    println!("cargo:rerun-if-changed={}", own.display());
    let mut compiler = protox::Compiler::new(
        includes
            .iter()
            .filter(|p| p.is_dir())
            .chain(std::iter::once(&own)),
    )
    .expect("the Envoy proto include paths");
    compiler.include_imports(true);
    compiler
        .open_files(FILES.iter().chain(&[
            "weft/ratelimit/v1/rules.proto",
            "weft/authservice/v1/servers.proto",
        ]))
        .unwrap_or_else(|e| panic!("compiling Envoy's protos: {e:?}"));
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    std::fs::write(
        out.join("envoy_descriptors.bin"),
        compiler.encode_file_descriptor_set(),
    )
    .expect("writing the descriptor set");
}

/// Where the `envoy-types` package this build uses lives.
fn envoy_types_dir() -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest =
        PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let output = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--filter-platform"])
        .arg(std::env::var_os("TARGET").expect("TARGET"))
        .arg("--manifest-path")
        .arg(manifest.join("Cargo.toml"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        output.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("cargo metadata's JSON");
    let manifest_path = metadata["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "envoy-types")
        .and_then(|p| p["manifest_path"].as_str())
        .expect("envoy-types among the packages");
    PathBuf::from(manifest_path)
        .parent()
        .expect("a manifest's directory")
        .to_path_buf()
}

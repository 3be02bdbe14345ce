//! Conflicts the server now refuses at apply can still reach an edge: in
//! configurations stored before it refused them. The edge keeps
//! reporting each as a ConfigError naming the later side, and applies the
//! first by path, as it always did.

mod support;

use support::Case;
use weft_api::edge::ConfigError;
use weft_control::translate::{Config, translate};

const BASE: &str = "
cluster: east
trustDomain: acme.example
workloads:
  - {node: cart-1, service: cart, namespace: shop, serviceAccount: cart, address: 127.0.0.2, port: 15006, appPort: 8080, outboundPort: 15001}
manifests:
  - {apiVersion: weft.dev/v1alpha1, kind: Workspace, metadata: {name: shop, tenant: retail}, spec: {namespaceSelector: [east/shop]}}
  - {apiVersion: weft.dev/v1alpha1, kind: TrafficGroup, metadata: {name: traffic, tenant: retail, workspace: shop}, spec: {}}
";

/// The errors translating the base plus `manifests` reports.
fn errors(manifests: &str) -> Vec<ConfigError> {
    let case: Case = serde_norway::from_str(&format!("{BASE}{manifests}")).unwrap();
    let config = Config::parse(&case.cluster, &case.manifests)
        .with_trust_domain(case.trust_domain)
        .with_locality(case.locality);
    translate(&config, &case.workloads, &case.directory).errors
}

fn only(errors: &[ConfigError], path: &str, field: &str, says: &str) {
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].path, path);
    assert_eq!(errors[0].field, field);
    assert!(errors[0].message.contains(says), "{errors:?}");
}

#[test]
fn two_settings_of_one_level_setting_one_part() {
    let found = errors(
        "
  - apiVersion: weft.dev/v1alpha1
    kind: TrafficSetting
    metadata: {name: cart, tenant: retail, workspace: shop, trafficGroup: traffic}
    spec: {service: {name: cart, namespace: shop}, timeout: 2s}
  - apiVersion: weft.dev/v1alpha1
    kind: TrafficSetting
    metadata: {name: cart-too, tenant: retail, workspace: shop, trafficGroup: traffic}
    spec: {service: {name: cart, namespace: shop}, timeout: 9s}
",
    );
    only(
        &found,
        "tenants/retail/workspaces/shop/trafficgroups/traffic/trafficsettings/cart-too",
        "spec.timeout",
        "conflicts with tenants/retail/workspaces/shop/trafficgroups/traffic/trafficsettings/cart, which also sets timeout for cart.shop; that one applies",
    );
}

#[test]
fn two_telemetry_settings_of_one_level_setting_tracing() {
    let found = errors(
        "
  - apiVersion: weft.dev/v1alpha1
    kind: TelemetrySetting
    metadata: {name: cart, tenant: retail, workspace: shop}
    spec: {service: {name: cart, namespace: shop}, tracing: {collector: '127.0.0.1:4317'}}
  - apiVersion: weft.dev/v1alpha1
    kind: TelemetrySetting
    metadata: {name: cart-again, tenant: retail, workspace: shop}
    spec: {service: {name: cart, namespace: shop}, tracing: {collector: '127.0.0.1:4318'}}
",
    );
    only(
        &found,
        "tenants/retail/workspaces/shop/telemetrysettings/cart-again",
        "spec.tracing",
        "which also sets tracing for cart.shop; that one applies",
    );
}

#[test]
fn claims_where_nobody_is_authenticated() {
    let found = errors(
        "
  - apiVersion: weft.dev/v1alpha1
    kind: SecuritySetting
    metadata: {name: cart, tenant: retail, workspace: shop}
    spec:
      service: {name: cart, namespace: shop}
      authorization:
        allow: [{claims: {groups: [admin]}}]
",
    );
    only(
        &found,
        "tenants/retail/workspaces/shop/securitysettings/cart",
        "spec.authorization.allow[0].claims",
        "no setting authenticates end users of cart.shop",
    );
}

//! Golden files, in two tiers: every `testdata/in/NAME.yaml` (cluster,
//! workloads, manifests) translates into exactly `testdata/out/NAME.yaml`
//! (the proxy-level model), whose conversion gives exactly the Envoy
//! resources in `testdata/xds/NAME.yaml` (as JSON, the form of Envoy's
//! config dump: no Envoy needed to see what a change does to it); and every
//! proxy's result is a consistent xDS snapshot.
//! Regenerate after an intended change: `WEFT_UPDATE_GOLDEN=1 cargo test -p weft-control --test golden`.

mod support;

use std::collections::BTreeMap;
use std::path::Path;

use support::Case;
use weft_control::publish::Publisher;
use weft_control::translate::{Config, translate};
use weft_xds::{ResourceType, Snapshot};

#[test]
fn translation_matches_golden_files() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata");
    let update = std::env::var_os("WEFT_UPDATE_GOLDEN").is_some();
    let mut inputs: Vec<_> = std::fs::read_dir(root.join("in"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    inputs.sort();
    assert!(inputs.len() >= 6, "golden inputs missing: {inputs:?}");
    let mut mismatches = Vec::new();
    for input in inputs {
        let name = input.file_name().unwrap().to_string_lossy().to_string();
        let case: Case = serde_norway::from_str(&std::fs::read_to_string(&input).unwrap())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let config = Config::parse(&case.cluster, &case.manifests)
            .with_trust_domain(case.trust_domain)
            .with_locality(case.locality);
        let translation = translate(&config, &case.workloads, &case.directory);
        // The shared form, as the edge publishes it.
        let shared: BTreeMap<String, Snapshot> = Publisher::new()
            .publish(&translation)
            .snapshots
            .into_iter()
            .collect();
        let per_proxy = translation.per_proxy();
        for (node, proxy) in &per_proxy.proxies {
            let snapshot = proxy.to_snapshot().unwrap_or_else(|e| {
                panic!("{name}: proxy {node} has an inconsistent snapshot: {e}")
            });
            // The same config always gets the same versions, protobuf maps
            // (JWT providers, RBAC policies) or not: else every rebuild
            // would replace listeners.
            for _ in 0..4 {
                let again = proxy.to_snapshot().unwrap();
                for t in ResourceType::ALL {
                    assert_eq!(
                        snapshot.version(t),
                        again.version(t),
                        "{name}: proxy {node}: {t:?} versions differ between two builds"
                    );
                }
            }
            // Shared or not, a proxy gets the very same resources.
            let published = shared
                .get(node)
                .unwrap_or_else(|| panic!("{name}: proxy {node} was not published"));
            for t in ResourceType::ALL {
                let resources = |s: &Snapshot| -> BTreeMap<String, String> {
                    s.entries(t)
                        .map(|e| (e.name.to_string(), e.version.to_string()))
                        .collect()
                };
                assert_eq!(
                    resources(published),
                    resources(&snapshot),
                    "{name}: proxy {node}: the shared form differs in {t:?}"
                );
            }
        }
        assert_eq!(shared.len(), per_proxy.proxies.len(), "{name}");
        let tiers = [
            ("out", serde_norway::to_string(&per_proxy).unwrap()),
            ("xds", envoy_resources(&name, &shared)),
        ];
        for (tier, rendered) in tiers {
            let out = root.join(tier).join(&name);
            if update {
                std::fs::write(&out, &rendered).unwrap();
                continue;
            }
            let expected = std::fs::read_to_string(&out).unwrap_or_default();
            if expected != rendered {
                mismatches.push(format!(
                    "{tier}/{name}:\n{}",
                    similar_diff(&expected, &rendered)
                ));
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "translation differs from the golden files (WEFT_UPDATE_GOLDEN=1 to accept):\n{}",
        mismatches.join("\n")
    );
}

/// What the proxies get, as Envoy resources: each distinct resource once,
/// under `type/name@version` (versions are content hashes), and per proxy
/// the list of those it holds.
fn envoy_resources(case: &str, snapshots: &BTreeMap<String, Snapshot>) -> String {
    #[derive(serde::Serialize)]
    struct Rendered {
        proxies: BTreeMap<String, Vec<String>>,
        resources: BTreeMap<String, serde_json::Value>,
    }
    let mut rendered = Rendered {
        proxies: BTreeMap::new(),
        resources: BTreeMap::new(),
    };
    for (node, snapshot) in snapshots {
        let held = rendered.proxies.entry(node.clone()).or_default();
        for t in ResourceType::ALL {
            for entry in snapshot.entries(t) {
                let key = format!("{}/{}@{}", t.short(), entry.name, entry.version);
                if !rendered.resources.contains_key(&key) {
                    let json = weft_xds::json::to_json(&entry.any)
                        .unwrap_or_else(|e| panic!("{case}: proxy {node}: {key}: {e}"));
                    rendered.resources.insert(key.clone(), json);
                }
                held.push(key);
            }
        }
    }
    serde_norway::to_string(&rendered).unwrap()
}

fn similar_diff(expected: &str, actual: &str) -> String {
    similar::TextDiff::from_lines(expected, actual)
        .unified_diff()
        .context_radius(3)
        .header("expected", "translated")
        .to_string()
}

//! What `weft analyze` reports about a configuration: the conflicts the
//! server refuses at apply ([`crate::conflicts`]; stored ones predate
//! that, or came in through another way), and warnings about what is
//! accepted but likely not meant: settings shadowed by more specific
//! ones, workspaces where no call is allowed, SecuritySettings that
//! allow nothing, selector entries that name no cluster; and, from what
//! the edges report running, route subsets no instance carries and
//! running services nobody may call.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::conflicts::{Attached, Placed, Scopes, entries, find, overlap};
use crate::traffic::ServiceRouteSpec;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Refused at apply; the edge applies only one side.
    Conflict,
    /// Accepted, and probably not what was meant.
    Warning,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Finding {
    pub severity: Severity,
    pub path: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub field: String,
    /// The other side, for a conflict or a shadowing setting.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub other_path: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub other_field: String,
    pub message: String,
}

/// What `GET /v1/analyze` answers.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    pub findings: Vec<Finding>,
}

const SETTINGS: [&str; 3] = ["TrafficSetting", "TelemetrySetting", "SecuritySetting"];

/// Everything worth telling about `all`, conflicts first.
pub fn analyze(all: &[Placed]) -> Vec<Finding> {
    let mut out: Vec<Finding> = find(all)
        .into_iter()
        .map(|c| Finding {
            severity: Severity::Conflict,
            path: c.path,
            field: c.field,
            other_path: c.other_path,
            other_field: c.other_field,
            message: c.message,
        })
        .collect();
    let scopes = Scopes::new(all);
    let attached = |kind: &str| -> Vec<Attached> {
        all.iter()
            .filter(|p| p.resource.kind == kind)
            .filter_map(|p| scopes.attach(p))
            .collect()
    };
    for kind in SETTINGS {
        shadowed(&attached(kind), &mut out);
    }
    let security = attached("SecuritySetting");
    allows_nothing(&security, &mut out);
    deny_all_workspaces(all, &security, &mut out);
    unknown_clusters(all, &mut out);
    out.sort_by(|a, b| (a.severity, &a.path, &a.field).cmp(&(b.severity, &b.path, &b.field)));
    out
}

fn warning(path: &str, field: String, message: String) -> Finding {
    Finding {
        severity: Severity::Warning,
        path: path.to_string(),
        field,
        other_path: String::new(),
        other_field: String::new(),
        message,
    }
}

/// A part a setting sets that a more specific setting of the same kind
/// sets again for some of its services.
fn shadowed(settings: &[Attached], out: &mut Vec<Finding>) {
    for general in settings {
        let Some(parts) = general.spec().as_object() else {
            continue;
        };
        for (part, _) in parts
            .iter()
            .filter(|(p, v)| *p != "service" && !v.is_null())
        {
            let specific = settings.iter().find(|s| {
                s.workspace == general.workspace
                    && s.level > general.level
                    && general.service.is_none_or(|svc| s.service == Some(svc))
                    && s.spec().get(part).is_some_and(|v| !v.is_null())
                    && overlap(&s.coverage(), &general.coverage())
            });
            if let Some(specific) = specific {
                let mut finding = warning(
                    general.placed.path,
                    format!("spec.{part}"),
                    format!(
                        "shadowed at the {} level: a more specific setting sets {part} for some of the services this one covers",
                        specific.level.name()
                    ),
                );
                finding.other_path = specific.placed.path.to_string();
                finding.other_field = format!("spec.{part}");
                out.push(finding);
            }
        }
    }
}

fn allows_nothing(security: &[Attached], out: &mut Vec<Finding>) {
    for setting in security {
        let authorization = &setting.spec()["authorization"];
        let count = |list: &str| authorization[list].as_array().map_or(0, Vec::len);
        if authorization.is_object() && count("allow") == 0 && count("deny") > 0 {
            out.push(warning(
                setting.placed.path,
                "spec.authorization".into(),
                "deny rules and no allow rule: where this setting decides, every call is refused"
                    .into(),
            ));
        }
    }
}

fn deny_all_workspaces(all: &[Placed], security: &[Attached], out: &mut Vec<Finding>) {
    for workspace in all.iter().filter(|p| p.resource.kind == "Workspace") {
        let allows = security.iter().any(|s| {
            s.workspace == workspace.path
                && s.spec()["authorization"]["allow"]
                    .as_array()
                    .is_some_and(|a| !a.is_empty())
        });
        if !allows {
            out.push(warning(
                workspace.path,
                String::new(),
                "no SecuritySetting in this workspace allows any call: every service it selects refuses every caller (deny-all)".into(),
            ));
        }
    }
}

/// Selector entries naming a cluster that does not exist; only when the
/// configuration names clusters at all (manifests may not).
fn unknown_clusters(all: &[Placed], out: &mut Vec<Finding>) {
    let clusters: Vec<&str> = all
        .iter()
        .filter(|p| p.resource.kind == "Cluster")
        .map(|p| p.resource.metadata.name.as_str())
        .collect();
    if clusters.is_empty() {
        return;
    }
    for placed in all
        .iter()
        .filter(|p| p.resource.kind == "Workspace" || p.resource.kind.ends_with("Group"))
    {
        for (i, (cluster, _)) in entries(&placed.resource.spec).iter().enumerate() {
            if cluster != "*" && !clusters.contains(&cluster.as_str()) {
                out.push(warning(
                    placed.path,
                    format!("spec.namespaceSelector[{i}]"),
                    format!("no cluster {cluster:?} exists: this entry selects nothing"),
                ));
            }
        }
    }
}

/// An instance that runs now, as its cluster's edge reports it.
pub struct Running<'a> {
    pub cluster: &'a str,
    pub namespace: &'a str,
    pub service: &'a str,
    pub labels: &'a BTreeMap<String, String>,
}

/// Subsets a ServiceRoute sends requests to that no running instance of
/// its service carries the labels of (requests for them fail until one
/// runs). Only for services that run somewhere: one not deployed yet is
/// not news.
pub fn idle_subsets(routes: &[Placed], running: &[Running]) -> Vec<Finding> {
    let mut out = Vec::new();
    for placed in routes.iter().filter(|p| p.resource.kind == "ServiceRoute") {
        let Ok(spec) = serde_json::from_value::<ServiceRouteSpec>(placed.resource.spec.clone())
        else {
            continue;
        };
        let instances: Vec<&Running> = running
            .iter()
            .filter(|r| r.namespace == spec.service.namespace && r.service == spec.service.name)
            .collect();
        if instances.is_empty() {
            continue;
        }
        for (i, rule) in spec.rules.iter().enumerate() {
            for (j, destination) in rule.destinations.iter().enumerate() {
                let Some(subset) = destination
                    .subset
                    .as_ref()
                    .and_then(|name| spec.subsets.iter().find(|s| s.name == *name))
                else {
                    continue;
                };
                let carries = |r: &&Running| {
                    subset
                        .labels
                        .iter()
                        .all(|(k, v)| r.labels.get(k) == Some(v))
                };
                if instances.iter().any(carries) {
                    continue;
                }
                let labels: Vec<String> = subset
                    .labels
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                let clusters: std::collections::BTreeSet<&str> =
                    instances.iter().map(|r| r.cluster).collect();
                let clusters: Vec<&str> = clusters.into_iter().collect();
                out.push(warning(
                    placed.path,
                    format!("spec.rules[{i}].destinations[{j}].subset"),
                    format!(
                        "subset {} ({}) matches none of the {} running instances of {}.{} (in {}): \
                         its requests fail with 503 until one runs",
                        subset.name,
                        labels.join(", "),
                        instances.len(),
                        spec.service.name,
                        spec.service.namespace,
                        clusters.join(", ")
                    ),
                ));
            }
        }
    }
    out
}

/// Running services no caller may reach: where the most specific level
/// of SecuritySettings that authorizes (workspace < group < service)
/// allows nothing, or no setting authorizes at all (deny-all).
pub fn unreachable_services(all: &[Placed], running: &[Running]) -> Vec<Finding> {
    let scopes = Scopes::new(all);
    let security: Vec<Attached> = all
        .iter()
        .filter(|p| p.resource.kind == "SecuritySetting")
        .filter_map(|p| scopes.attach(p))
        .collect();
    let mut services: Vec<(&str, &str, &str)> = running
        .iter()
        .map(|r| (r.namespace, r.service, r.cluster))
        .collect();
    services.sort_unstable();
    services.dedup();
    let mut out = Vec::new();
    for (namespace, service, cluster) in services {
        let here = [(cluster.to_string(), namespace.to_string())];
        let applies = |s: &&Attached| {
            overlap(&s.coverage(), &here)
                && s.service
                    .is_none_or(|(ns, name)| ns == namespace && name == service)
                && s.spec().get("authorization").is_some_and(|a| !a.is_null())
        };
        let deciding: Vec<&Attached> = security.iter().filter(applies).collect();
        let Some(level) = deciding.iter().map(|s| s.level).max() else {
            // No setting at all: the workspace's deny-all warning says it.
            continue;
        };
        let deciding: Vec<&&Attached> = deciding.iter().filter(|s| s.level == level).collect();
        let allows = deciding.iter().any(|s| {
            s.spec()["authorization"]["allow"]
                .as_array()
                .is_some_and(|a| !a.is_empty())
        });
        if allows {
            continue;
        }
        let first = deciding[0];
        out.push(warning(
            first.placed.path,
            "spec.authorization".into(),
            format!(
                "nobody may call {service}.{namespace} (running in {cluster}): the {} level decides and allows no caller",
                level.name()
            ),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Resource;

    #[test]
    fn warnings_name_what_is_accepted_but_not_meant() {
        let doc = |yaml: &str| -> Resource {
            serde_norway::from_str(&format!("apiVersion: weft.dev/v1alpha1\n{yaml}")).unwrap()
        };
        let ws = "tenants/t/workspaces/w";
        let docs = [
            (
                "clusters/east",
                "",
                doc("kind: Cluster\nmetadata: {name: east}\nspec: {region: r}"),
            ),
            (
                ws,
                "tenants/t",
                doc(
                    "kind: Workspace\nmetadata: {name: w}\nspec: {namespaceSelector: ['east/shop', 'west/shop']}",
                ),
            ),
            (
                "tenants/t/workspaces/w/securitysettings/deny",
                ws,
                doc(
                    "kind: SecuritySetting\nmetadata: {name: deny}\nspec: {authorization: {deny: [{to: [{path: {prefix: /admin}}]}]}}",
                ),
            ),
            (
                "tenants/t/workspaces/w/trafficsettings/all",
                ws,
                doc("kind: TrafficSetting\nmetadata: {name: all}\nspec: {timeout: 5s}"),
            ),
            (
                "tenants/t/workspaces/w/trafficsettings/cart",
                ws,
                doc(
                    "kind: TrafficSetting\nmetadata: {name: cart}\nspec: {service: {name: cart, namespace: shop}, timeout: 9s}",
                ),
            ),
        ];
        let placed: Vec<Placed> = docs
            .iter()
            .map(|(path, parent, resource)| Placed {
                path,
                parent,
                resource,
            })
            .collect();
        let found: Vec<(String, String)> = analyze(&placed)
            .into_iter()
            .map(|f| (f.path, f.field))
            .collect();
        let expect = |path: &str, field: &str| (path.to_string(), field.to_string());
        assert_eq!(
            found,
            [
                expect(ws, ""),
                expect(ws, "spec.namespaceSelector[1]"),
                expect(
                    "tenants/t/workspaces/w/securitysettings/deny",
                    "spec.authorization"
                ),
                expect("tenants/t/workspaces/w/trafficsettings/all", "spec.timeout"),
            ]
        );
    }

    #[test]
    fn a_subset_no_running_instance_carries_is_a_warning() {
        let route: Resource = serde_norway::from_str(
            "apiVersion: weft.dev/v1alpha1
kind: ServiceRoute
metadata: {name: reviews}
spec:
  service: {name: reviews, namespace: shop}
  subsets: [{name: v1, labels: {version: v1}}, {name: v3, labels: {version: v3}}]
  rules:
    - destinations: [{subset: v1, weight: 50}, {subset: v3, weight: 50}]
",
        )
        .unwrap();
        let placed = [Placed {
            path: "r",
            parent: "",
            resource: &route,
        }];
        let v1 = BTreeMap::from([("version".to_string(), "v1".to_string())]);
        let running = |service| Running {
            cluster: "east",
            namespace: "shop",
            service,
            labels: &v1,
        };
        let found = idle_subsets(&placed, &[running("reviews")]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].field, "spec.rules[0].destinations[1].subset");
        assert!(found[0].message.contains("version=v3"), "{found:?}");
        // Nothing runs yet: nothing to say.
        assert!(idle_subsets(&placed, &[running("ratings")]).is_empty());
    }

    #[test]
    fn a_running_service_nobody_may_call_is_named() {
        let doc = |yaml: &str| -> Resource {
            serde_norway::from_str(&format!("apiVersion: weft.dev/v1alpha1\n{yaml}")).unwrap()
        };
        let ws = "tenants/t/workspaces/w";
        let docs = [
            (
                ws,
                "tenants/t",
                doc(
                    "kind: Workspace\nmetadata: {name: w}\nspec: {namespaceSelector: ['east/shop']}",
                ),
            ),
            (
                "tenants/t/workspaces/w/securitysettings/all",
                ws,
                doc(
                    "kind: SecuritySetting\nmetadata: {name: all}\nspec: {authorization: {allow: [{from: [{sameWorkspace: true}]}]}}",
                ),
            ),
            (
                "tenants/t/workspaces/w/securitysettings/vault",
                ws,
                doc(
                    "kind: SecuritySetting\nmetadata: {name: vault}\nspec: {service: {name: vault, namespace: shop}, authorization: {deny: [{to: [{method: DELETE}]}]}}",
                ),
            ),
        ];
        let placed: Vec<Placed> = docs
            .iter()
            .map(|(path, parent, resource)| Placed {
                path,
                parent,
                resource,
            })
            .collect();
        let labels = BTreeMap::new();
        let running = |service| Running {
            cluster: "east",
            namespace: "shop",
            service,
            labels: &labels,
        };
        let found = unreachable_services(&placed, &[running("vault"), running("cart")]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(
            found[0].path,
            "tenants/t/workspaces/w/securitysettings/vault"
        );
        assert!(
            found[0]
                .message
                .starts_with("nobody may call vault.shop (running in east)"),
            "{found:?}"
        );
    }
}

//! Conflicts between resources that the configuration alone shows: two
//! ServiceRoutes for one service, two settings of one level setting the
//! same part, authorization rules on claims where no setting
//! authenticates anyone, one hostname and port served by two Gateways
//! that can run on the same gateway. The edge reports these as
//! ConfigErrors when it meets them; the server refuses them at apply so
//! they never get that far. What depends on which instances run (a
//! subset with none right now) is still the edge's to report.
//!
//! Scopes are worked out on selectors alone: an entry `cluster/namespace`
//! (either part may be `*`) covers what a concrete pair of the same shape
//! matches, and two scopes overlap when some pair could be covered by
//! both. A group with no selector of its own covers its workspace's.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::Resource;

/// The kinds a conflict can involve.
pub const INVOLVED: [&str; 9] = [
    "Workspace",
    "TrafficGroup",
    "SecurityGroup",
    "GatewayGroup",
    "ServiceRoute",
    "TrafficSetting",
    "SecuritySetting",
    "TelemetrySetting",
    "Gateway",
];

/// A resource and where it sits.
pub struct Placed<'a> {
    pub path: &'a str,
    pub parent: &'a str,
    pub resource: &'a Resource,
}

/// Two resources that cannot both apply (or, with no `other_path`, one
/// that cannot do what it says). `path` is the later one by path: the
/// edge applies the earlier. The message names neither path: who reads
/// it may not be allowed to know the other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub path: String,
    pub field: String,
    pub other_path: String,
    pub other_field: String,
    pub message: String,
}

/// A selector entry: cluster and namespace patterns.
pub(crate) type Entry = (String, String);

pub(crate) fn entries(spec: &Value) -> Vec<Entry> {
    spec.get("namespaceSelector")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter_map(|e| e.split_once('/'))
        .map(|(c, n)| (c.to_string(), n.to_string()))
        .collect()
}

fn compatible(a: &str, b: &str) -> bool {
    a == "*" || b == "*" || a == b
}

pub(crate) fn overlap(a: &[Entry], b: &[Entry]) -> bool {
    a.iter().any(|(ac, an)| {
        b.iter()
            .any(|(bc, bn)| compatible(ac, bc) && compatible(an, bn))
    })
}

/// The part of a scope that is namespace `namespace`.
fn in_namespace(scope: &[Entry], namespace: &str) -> Vec<Entry> {
    scope
        .iter()
        .filter(|(_, n)| compatible(n, namespace))
        .map(|(c, _)| (c.clone(), namespace.to_string()))
        .collect()
}

/// The level a setting sits at: the more specific wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Level {
    Workspace,
    Group,
    Service,
}

impl Level {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Level::Workspace => "workspace",
            Level::Group => "group",
            Level::Service => "service",
        }
    }
}

/// A route or setting where it applies.
pub(crate) struct Attached<'a> {
    pub(crate) placed: &'a Placed<'a>,
    pub(crate) workspace: &'a str,
    /// What its workspace or group covers.
    scope: &'a [Entry],
    pub(crate) level: Level,
    /// The service it names: namespace and name.
    pub(crate) service: Option<(&'a str, &'a str)>,
}

impl Attached<'_> {
    /// What it covers, narrowed to its service's namespace if it names one.
    pub(crate) fn coverage(&self) -> Vec<Entry> {
        match self.service {
            Some((namespace, _)) => in_namespace(self.scope, namespace),
            None => self.scope.to_vec(),
        }
    }

    pub(crate) fn spec(&self) -> &Value {
        &self.placed.resource.spec
    }
}

/// Workspace and group scopes by path.
pub(crate) struct Scopes {
    workspaces: BTreeMap<String, Vec<Entry>>,
    /// Group path → its workspace and what it covers.
    groups: BTreeMap<String, (String, Vec<Entry>)>,
}

impl Scopes {
    pub(crate) fn new(all: &[Placed]) -> Scopes {
        let workspaces: BTreeMap<String, Vec<Entry>> = all
            .iter()
            .filter(|p| p.resource.kind == "Workspace")
            .map(|p| (p.path.to_string(), entries(&p.resource.spec)))
            .collect();
        let groups = all
            .iter()
            .filter(|p| p.resource.kind.ends_with("Group"))
            .filter_map(|p| {
                let own = entries(&p.resource.spec);
                let scope = if own.is_empty() {
                    workspaces.get(p.parent)?.clone()
                } else {
                    own
                };
                Some((p.path.to_string(), (p.parent.to_string(), scope)))
            })
            .collect();
        Scopes { workspaces, groups }
    }

    pub(crate) fn attach<'a>(&'a self, placed: &'a Placed<'a>) -> Option<Attached<'a>> {
        let service = placed
            .resource
            .spec
            .get("service")
            .and_then(|s| Some((s.get("namespace")?.as_str()?, s.get("name")?.as_str()?)));
        let (workspace, scope, in_group) = match self.workspaces.get_key_value(placed.parent) {
            Some((path, scope)) => (path.as_str(), scope.as_slice(), false),
            None => {
                let (workspace, scope) = self.groups.get(placed.parent)?;
                (workspace.as_str(), scope.as_slice(), true)
            }
        };
        let level = match (service, in_group) {
            (Some(_), _) => Level::Service,
            (None, true) => Level::Group,
            (None, false) => Level::Workspace,
        };
        Some(Attached {
            placed,
            workspace,
            scope,
            level,
            service,
        })
    }
}

/// Whether two routes or settings of one workspace can apply to one
/// service at one level.
fn meet(a: &Attached, b: &Attached) -> bool {
    if a.workspace != b.workspace || a.level != b.level || a.service != b.service {
        return false;
    }
    a.level == Level::Workspace || overlap(&a.coverage(), &b.coverage())
}

/// Everything that conflicts in `all`.
pub fn find(all: &[Placed]) -> Vec<Conflict> {
    let scopes = Scopes::new(all);
    let mut out = Vec::new();
    let of_kind = |kind: &str| -> Vec<Attached> {
        let mut found: Vec<Attached> = all
            .iter()
            .filter(|p| p.resource.kind == kind)
            .filter_map(|p| scopes.attach(p))
            .collect();
        found.sort_by(|a, b| a.placed.path.cmp(b.placed.path));
        found
    };
    routes(&of_kind("ServiceRoute"), &mut out);
    for kind in ["TrafficSetting", "TelemetrySetting", "SecuritySetting"] {
        settings(kind, &of_kind(kind), &mut out);
    }
    claims_without_authentication(&of_kind("SecuritySetting"), &mut out);
    gateways(all, &mut out);
    out
}

fn routes(routes: &[Attached], out: &mut Vec<Conflict>) {
    for (j, later) in routes.iter().enumerate() {
        let Some((namespace, name)) = later.service else {
            continue;
        };
        if let Some(earlier) = routes[..j].iter().find(|e| meet(e, later)) {
            out.push(Conflict {
                path: later.placed.path.to_string(),
                field: "spec.service".into(),
                other_path: earlier.placed.path.to_string(),
                other_field: "spec.service".into(),
                message: format!(
                    "{name}.{namespace} already has a ServiceRoute where this one would apply; a service takes one"
                ),
            });
        }
    }
}

/// Two settings of one kind and level that set the same part for the
/// same services. SecuritySettings that set a part to the same value
/// agree, as at the edge.
fn settings(kind: &str, settings: &[Attached], out: &mut Vec<Conflict>) {
    for (j, later) in settings.iter().enumerate() {
        let Some(parts) = later.spec().as_object() else {
            continue;
        };
        for (part, value) in parts
            .iter()
            .filter(|(p, v)| *p != "service" && !v.is_null())
        {
            let clash = settings[..j].iter().find(|earlier| {
                meet(earlier, later)
                    && earlier.spec().get(part).is_some_and(|other| {
                        !other.is_null() && (kind != "SecuritySetting" || other != value)
                    })
            });
            if let Some(earlier) = clash {
                let field = format!("spec.{part}");
                out.push(Conflict {
                    path: later.placed.path.to_string(),
                    other_path: earlier.placed.path.to_string(),
                    other_field: field.clone(),
                    message: format!(
                        "another {kind} also sets {part} at the {} level for the same services; only one of a level may set a part",
                        later.level.name()
                    ),
                    field,
                });
            }
        }
    }
}

/// Authorization rules that ask for claims where no SecuritySetting of
/// the workspace authenticates end users: no request would have any.
fn claims_without_authentication(settings: &[Attached], out: &mut Vec<Conflict>) {
    for setting in settings {
        let authenticated = settings.iter().any(|other| {
            other.workspace == setting.workspace
                && other
                    .spec()
                    .get("authentication")
                    .is_some_and(|a| !a.is_null())
                && (other.service.is_none()
                    || setting.service.is_none()
                    || other.service == setting.service)
                && overlap(&other.coverage(), &setting.coverage())
        });
        if authenticated {
            continue;
        }
        for list in ["allow", "deny"] {
            let rules = setting.spec()["authorization"][list].as_array();
            for (i, rule) in rules.into_iter().flatten().enumerate() {
                let has_claims = rule
                    .get("claims")
                    .and_then(Value::as_object)
                    .is_some_and(|c| !c.is_empty());
                if has_claims {
                    out.push(Conflict {
                        path: setting.placed.path.to_string(),
                        field: format!("spec.authorization.{list}[{i}].claims"),
                        other_path: String::new(),
                        other_field: String::new(),
                        message: "no SecuritySetting authenticates end users where this rule applies, so no request has claims: add spec.authentication to a setting covering these services".into(),
                    });
                }
            }
        }
    }
}

/// A hostname and port that two Gateways serve, when one gateway can run
/// both: their selectors name one namespace and no label differently.
fn gateways(all: &[Placed], out: &mut Vec<Conflict>) {
    let mut gateways: Vec<&Placed> = all
        .iter()
        .filter(|p| p.resource.kind == "Gateway")
        .collect();
    gateways.sort_by_key(|p| p.path);
    let selects_with = |a: &Value, b: &Value| {
        let (a, b) = (&a["workloadSelector"], &b["workloadSelector"]);
        a["namespace"] == b["namespace"]
            && a["labels"].as_object().is_none_or(|labels| {
                labels
                    .iter()
                    .all(|(k, v)| b["labels"].get(k).is_none_or(|w| w == v))
            })
    };
    for (j, later) in gateways.iter().enumerate() {
        let servers = later.resource.spec["http"].as_array();
        for (s, server) in servers.into_iter().flatten().enumerate() {
            let clash = gateways[..j].iter().find_map(|earlier| {
                if !selects_with(&earlier.resource.spec, &later.resource.spec) {
                    return None;
                }
                let theirs = earlier.resource.spec["http"].as_array()?;
                let k = theirs.iter().position(|t| {
                    t["port"] == server["port"] && t["hostname"] == server["hostname"]
                })?;
                Some((earlier, k))
            });
            if let Some((earlier, k)) = clash {
                out.push(Conflict {
                    path: later.path.to_string(),
                    field: format!("spec.http[{s}].hostname"),
                    other_path: earlier.path.to_string(),
                    other_field: format!("spec.http[{k}].hostname"),
                    message: format!(
                        "another Gateway already serves {} on port {} on the gateways this one selects",
                        server["hostname"].as_str().unwrap_or_default(),
                        server["port"]
                    ),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A resource as stored: path, parent, and the document (YAML after
    /// `apiVersion`).
    type Doc = (String, String, String);

    fn doc(path: &str, parent: &str, yaml: &str) -> Doc {
        (path.into(), parent.into(), yaml.into())
    }

    /// Each conflict found: the later path, its field, the other path.
    fn conflicts(docs: &[Doc]) -> Vec<(String, String, String)> {
        let resources: Vec<(String, String, Resource)> = docs
            .iter()
            .map(|(path, parent, yaml)| {
                let text = format!("apiVersion: weft.dev/v1alpha1\n{yaml}");
                (
                    path.clone(),
                    parent.clone(),
                    serde_norway::from_str(&text).unwrap(),
                )
            })
            .collect();
        let placed: Vec<Placed> = resources
            .iter()
            .map(|(path, parent, resource)| Placed {
                path,
                parent,
                resource,
            })
            .collect();
        find(&placed)
            .into_iter()
            .map(|c| (c.path, c.field, c.other_path))
            .collect()
    }

    const WS: &str = "tenants/t/workspaces/w";

    fn workspace() -> Doc {
        doc(
            WS,
            "tenants/t",
            "kind: Workspace\nmetadata: {name: w}\nspec: {namespaceSelector: ['*/shop', 'east/pay']}",
        )
    }

    fn group(name: &str, spec: &str) -> Doc {
        doc(
            &format!("{WS}/trafficgroups/{name}"),
            WS,
            &format!("kind: TrafficGroup\nmetadata: {{name: {name}}}\nspec: {spec}"),
        )
    }

    fn route(group: &str, name: &str, service: &str) -> Doc {
        doc(
            &format!("{WS}/trafficgroups/{group}/serviceroutes/{name}"),
            &format!("{WS}/trafficgroups/{group}"),
            &format!(
                "kind: ServiceRoute\nmetadata: {{name: {name}}}\nspec: {{service: {{name: {service}, namespace: shop}}, rules: [{{destinations: [{{weight: 100}}]}}]}}"
            ),
        )
    }

    fn security(name: &str, spec: &str) -> Doc {
        doc(
            &format!("{WS}/securitysettings/{name}"),
            WS,
            &format!("kind: SecuritySetting\nmetadata: {{name: {name}}}\nspec: {spec}"),
        )
    }

    fn gateway(name: &str, labels: &str) -> Doc {
        doc(
            &format!("{WS}/gatewaygroups/g/gateways/{name}"),
            &format!("{WS}/gatewaygroups/g"),
            &format!(
                "kind: Gateway\nmetadata: {{name: {name}}}\nspec: {{workloadSelector: {{namespace: edge, labels: {labels}}}, http: [{{name: web, port: 8080, hostname: shop.example.com}}]}}"
            ),
        )
    }

    #[test]
    fn two_routes_for_one_service_conflict_where_their_groups_meet() {
        let found = conflicts(&[
            workspace(),
            group("a", "{}"),
            route("a", "r1", "cart"),
            route("a", "r2", "cart"),
        ]);
        assert_eq!(
            found,
            [(
                format!("{WS}/trafficgroups/a/serviceroutes/r2"),
                "spec.service".to_string(),
                format!("{WS}/trafficgroups/a/serviceroutes/r1")
            )]
        );
        // Other services, or groups that share no namespace, do not.
        assert!(
            conflicts(&[
                workspace(),
                group("a", "{}"),
                route("a", "r1", "cart"),
                route("a", "r2", "pay")
            ])
            .is_empty()
        );
        assert!(
            conflicts(&[
                workspace(),
                group("a", "{namespaceSelector: ['east/pay']}"),
                group("b", "{namespaceSelector: ['*/shop']}"),
                route("a", "r1", "cart"),
                route("b", "r2", "cart"),
            ])
            .is_empty()
        );
    }

    #[test]
    fn settings_conflict_on_a_part_at_one_level_only() {
        let found = conflicts(&[
            workspace(),
            security("a", "{mtls: strict}"),
            security("b", "{mtls: permissive}"),
        ]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].1, "spec.mtls");
        // Agreeing, or at different levels (one names a service), is fine.
        assert!(
            conflicts(&[
                workspace(),
                security("a", "{mtls: strict}"),
                security("b", "{mtls: strict}")
            ])
            .is_empty()
        );
        assert!(
            conflicts(&[
                workspace(),
                security("a", "{mtls: strict}"),
                security(
                    "b",
                    "{service: {name: cart, namespace: shop}, mtls: permissive}"
                ),
            ])
            .is_empty()
        );
    }

    #[test]
    fn claims_need_authentication_somewhere_that_covers_them() {
        let rules = "{authorization: {allow: [{claims: {groups: [admin]}}]}}";
        let found = conflicts(&[workspace(), security("a", rules)]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].1, "spec.authorization.allow[0].claims");
        assert!(
            conflicts(&[
                workspace(),
                security("a", rules),
                security(
                    "b",
                    "{authentication: {jwt: [{issuer: 'https://idp', jwks: '{}'}]}}"
                ),
            ])
            .is_empty()
        );
    }

    #[test]
    fn one_hostname_on_one_port_for_gateways_that_can_share_a_proxy() {
        let found = conflicts(&[gateway("a", "{app: ingress}"), gateway("b", "{}")]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].1, "spec.http[0].hostname");
        assert!(
            conflicts(&[gateway("a", "{app: ingress}"), gateway("b", "{app: other}")]).is_empty()
        );
    }
}

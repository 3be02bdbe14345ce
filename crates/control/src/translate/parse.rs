//! The cluster's resources, validated once per configuration version
//! into the typed form translation reads: workspaces, groups, settings,
//! routes and gateways, each with its path; invalid ones become errors.

use std::collections::BTreeMap;

use weft_api::edge::{ConfigError, Locality};
use weft_api::gateway::GatewaySpec;
use weft_api::security::SecuritySettingSpec;
use weft_api::specs::{GroupSpec, WorkspaceSpec, selector_covers};
use weft_api::telemetry::TelemetrySettingSpec;
use weft_api::traffic::{ServiceRef, ServiceRouteSpec, TrafficSettingSpec};
use weft_api::{KindId, Resource, validate};

use super::plan::ServiceKey;

pub(super) struct Workspace {
    pub(super) path: String,
    pub(super) selector: Vec<String>,
}

pub(super) struct Group {
    pub(super) path: String,
    pub(super) workspace: String,
    pub(super) selector: Vec<String>,
}

pub(super) struct Setting {
    pub(super) path: String,
    /// The workspace or traffic group it is attached to.
    pub(super) parent: String,
    pub(super) spec: TrafficSettingSpec,
}

pub(super) struct TelemetrySetting {
    pub(super) path: String,
    /// The workspace or traffic group it is attached to.
    pub(super) parent: String,
    pub(super) spec: TelemetrySettingSpec,
}

pub(super) struct ServiceRoute {
    pub(super) path: String,
    pub(super) group: String,
    pub(super) spec: ServiceRouteSpec,
}

pub(super) struct Gateway {
    pub(super) path: String,
    /// The workspace its gateway group is in.
    pub(super) workspace: String,
    pub(super) spec: GatewaySpec,
}

pub(super) struct SecuritySetting {
    pub(super) path: String,
    /// The workspace or security group it is attached to.
    pub(super) parent: String,
    pub(super) spec: SecuritySettingSpec,
}

/// The traffic-shaping part of a cluster's configuration, validated.
#[derive(Default)]
pub struct Config {
    pub(super) cluster: String,
    /// Where this cluster is; other clusters are ranked against it.
    pub(super) locality: Locality,
    /// The trust domain of workload certificates; without one (offline
    /// translation only), traffic between proxies is plaintext.
    pub(super) trust_domain: Option<String>,
    pub(super) workspaces: Vec<Workspace>,
    pub(super) groups: Vec<Group>,
    pub(super) settings: Vec<Setting>,
    pub(super) telemetry_settings: Vec<TelemetrySetting>,
    pub(super) security_groups: Vec<Group>,
    pub(super) security_settings: Vec<SecuritySetting>,
    pub(super) routes: Vec<ServiceRoute>,
    pub(super) gateways: Vec<Gateway>,
    /// Problems found while parsing; reported with every translation.
    pub(super) errors: Vec<ConfigError>,
}

pub(super) fn error(path: &str, field: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        path: path.to_string(),
        field: field.to_string(),
        message: message.into(),
    }
}

impl Config {
    /// Workload certificates are of `trust_domain`: traffic between
    /// proxies is mutual TLS.
    pub fn with_trust_domain(mut self, trust_domain: Option<String>) -> Config {
        self.trust_domain = trust_domain;
        self
    }

    /// This cluster is at `locality`.
    pub fn with_locality(mut self, locality: Locality) -> Config {
        self.locality = locality;
        self
    }

    /// Validates `resources` (as the server does) and keeps the kinds that
    /// shape traffic. Invalid resources are reported and left out.
    pub fn parse(cluster: &str, resources: &[Resource]) -> Config {
        let mut config = Config {
            cluster: cluster.to_string(),
            ..Config::default()
        };
        for resource in resources {
            let document = match serde_json::to_value(resource.desired()) {
                // A manifest may leave out an empty spec, as at the server.
                Ok(mut document) => {
                    if document.get("spec").is_some_and(serde_json::Value::is_null)
                        && let Some(fields) = document.as_object_mut()
                    {
                        fields.remove("spec");
                    }
                    document
                }
                Err(e) => {
                    config
                        .errors
                        .push(error(&resource.metadata.name, "", e.to_string()));
                    continue;
                }
            };
            let validated = match validate(&document) {
                Ok(validated) => validated,
                Err(problems) => {
                    let path = format!("{}/{}", resource.kind, resource.metadata.name);
                    for p in problems.into_vec() {
                        config.errors.push(error(&path, &p.field, p.message));
                    }
                    continue;
                }
            };
            let (path, parent) = (validated.path, validated.parent);
            let spec = validated.resource.spec;
            let parsed = match validated.kind.id {
                KindId::Workspace => serde_json::from_value::<WorkspaceSpec>(spec).map(|s| {
                    config.workspaces.push(Workspace {
                        path: path.clone(),
                        selector: s.namespace_selector,
                    })
                }),
                KindId::TrafficGroup => serde_json::from_value::<GroupSpec>(spec).map(|s| {
                    config.groups.push(Group {
                        path: path.clone(),
                        workspace: parent.clone(),
                        selector: s.namespace_selector,
                    })
                }),
                KindId::SecurityGroup => serde_json::from_value::<GroupSpec>(spec).map(|s| {
                    config.security_groups.push(Group {
                        path: path.clone(),
                        workspace: parent.clone(),
                        selector: s.namespace_selector,
                    })
                }),
                KindId::SecuritySetting => serde_json::from_value(spec).map(|spec| {
                    config.security_settings.push(SecuritySetting {
                        path: path.clone(),
                        parent: parent.clone(),
                        spec,
                    })
                }),
                KindId::TrafficSetting => serde_json::from_value(spec).map(|spec| {
                    config.settings.push(Setting {
                        path: path.clone(),
                        parent: parent.clone(),
                        spec,
                    })
                }),
                KindId::TelemetrySetting => serde_json::from_value(spec).map(|spec| {
                    config.telemetry_settings.push(TelemetrySetting {
                        path: path.clone(),
                        parent: parent.clone(),
                        spec,
                    })
                }),
                KindId::ServiceRoute => serde_json::from_value(spec).map(|spec| {
                    config.routes.push(ServiceRoute {
                        path: path.clone(),
                        group: parent.clone(),
                        spec,
                    })
                }),
                KindId::Gateway => serde_json::from_value(spec).map(|spec| {
                    config.gateways.push(Gateway {
                        path: path.clone(),
                        workspace: parent
                            .rsplit_once("/gatewaygroups/")
                            .map_or(parent.clone(), |(workspace, _)| workspace.to_string()),
                        spec,
                    })
                }),
                // Kept at the server: never sent to edges.
                KindId::Organization
                | KindId::Tenant
                | KindId::GatewayGroup
                | KindId::Cluster
                | KindId::User
                | KindId::Team
                | KindId::Role
                | KindId::AccessBinding => Ok(()),
            };
            if let Err(e) = parsed {
                config.errors.push(error(&path, "spec", e.to_string()));
            }
        }
        config.workspaces.sort_by(|a, b| a.path.cmp(&b.path));
        config.groups.sort_by(|a, b| a.path.cmp(&b.path));
        config.settings.sort_by(|a, b| a.path.cmp(&b.path));
        config
            .telemetry_settings
            .sort_by(|a, b| a.path.cmp(&b.path));
        config.routes.sort_by(|a, b| a.path.cmp(&b.path));
        config.security_groups.sort_by(|a, b| a.path.cmp(&b.path));
        config.security_settings.sort_by(|a, b| a.path.cmp(&b.path));
        config.gateways.sort_by(|a, b| a.path.cmp(&b.path));
        config
    }

    /// The workspace that owns `namespace` in this cluster: the first by
    /// path whose selector covers it.
    pub(super) fn workspace_of(&self, namespace: &str) -> Option<&Workspace> {
        self.workspace_at(&self.cluster, namespace)
    }

    /// The workspace that owns `namespace` in `cluster`, among those this
    /// cluster knows (the ones that select it).
    pub(super) fn workspace_at(&self, cluster: &str, namespace: &str) -> Option<&Workspace> {
        let entry = format!("{cluster}/{namespace}");
        self.workspaces
            .iter()
            .find(|w| selector_covers(&w.selector, &entry))
    }

    /// The settings among `settings` that apply to service `key` of
    /// `workspace`, least specific level first: the workspace's own, then
    /// those of its groups (among `groups`) that cover the service's
    /// namespace, then those that name the service. The one lookup for
    /// traffic and security settings alike.
    pub(super) fn levels<'s, S: Attached>(
        &self,
        settings: &'s [S],
        groups: &[Group],
        workspace: &str,
        key: &ServiceKey,
    ) -> [Vec<&'s S>; 3] {
        // Only the workspace's own settings and its groups' can apply:
        // the groups of a workspace sit under its path.
        let under = format!("{workspace}/");
        let settings: Vec<&S> = settings
            .iter()
            .filter(|s| s.parent() == workspace || s.parent().starts_with(&under))
            .collect();
        let attached = |s: &S| {
            s.parent() == workspace
                || groups
                    .iter()
                    .any(|g| g.path == s.parent() && self.group_covers(g, &key.namespace))
        };
        let names_service = |s: &S| {
            s.service()
                .is_some_and(|r| r.name == key.name && r.namespace == key.namespace)
        };
        [
            settings
                .iter()
                .copied()
                .filter(|s| s.parent() == workspace && s.service().is_none())
                .collect(),
            settings
                .iter()
                .copied()
                .filter(|s| s.parent() != workspace && s.service().is_none() && attached(s))
                .collect(),
            settings
                .iter()
                .copied()
                .filter(|s| names_service(s) && attached(s))
                .collect(),
        ]
    }

    /// Whether a group's settings and routes reach `namespace`.
    pub(super) fn group_covers(&self, group: &Group, namespace: &str) -> bool {
        let entry = format!("{}/{namespace}", self.cluster);
        let in_workspace = self
            .workspace_of(namespace)
            .is_some_and(|w| w.path == group.workspace);
        in_workspace && (group.selector.is_empty() || selector_covers(&group.selector, &entry))
    }
}

/// Which setting of one level set each part: a second setting of the
/// same level setting a part is reported, and the first (by path)
/// applies. Shared by every kind of setting.
pub(super) struct LevelClaims<'k> {
    key: &'k ServiceKey,
    set_here: BTreeMap<&'static str, String>,
}

impl<'k> LevelClaims<'k> {
    pub(super) fn new(key: &'k ServiceKey) -> Self {
        LevelClaims {
            key,
            set_here: BTreeMap::new(),
        }
    }

    /// Whether the setting at `path` sets `part` for this level.
    pub(super) fn claim(
        &mut self,
        path: &str,
        part: &'static str,
        present: bool,
        errors: &mut Vec<ConfigError>,
    ) -> bool {
        if !present {
            return false;
        }
        if let Some(first) = self.set_here.get(part) {
            errors.push(error(
                path,
                &format!("spec.{part}"),
                format!(
                    "conflicts with {first}, which also sets {part} for {}.{}; that one applies",
                    self.key.name, self.key.namespace
                ),
            ));
            return false;
        }
        self.set_here.insert(part, path.to_string());
        true
    }

    /// The setting that set each part at this level.
    pub(super) fn into_sources(self) -> BTreeMap<&'static str, String> {
        self.set_here
    }
}

/// A setting attached to a workspace or one of its groups, perhaps for
/// one service only.
pub(super) trait Attached {
    /// The path of the workspace or group it is attached to.
    fn parent(&self) -> &str;
    /// The one service it is for, if any.
    fn service(&self) -> Option<&ServiceRef>;
}

impl Attached for Setting {
    fn parent(&self) -> &str {
        &self.parent
    }

    fn service(&self) -> Option<&ServiceRef> {
        self.spec.service.as_ref()
    }
}

impl Attached for TelemetrySetting {
    fn parent(&self) -> &str {
        &self.parent
    }

    fn service(&self) -> Option<&ServiceRef> {
        self.spec.service.as_ref()
    }
}

impl Attached for SecuritySetting {
    fn parent(&self) -> &str {
        &self.parent
    }

    fn service(&self) -> Option<&ServiceRef> {
        self.spec.service.as_ref()
    }
}

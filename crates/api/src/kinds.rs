//! Kind descriptors: every kind is declared once, here.

use schemars::{Schema, SchemaGenerator};
use serde_json::Value;

use crate::gateway::{GatewaySpec, check_selector_within_parent};
use crate::problems::Problems;
use crate::security::SecuritySettingSpec;
use crate::specs::{
    AccessBindingSpec, ClusterSpec, DescribedSpec, GroupSpec, OrganizationSpec, RoleSpec, Spec,
    TeamSpec, UserSpec, WorkspaceSpec, check_group_within_workspace, check_role_name,
};
use crate::telemetry::TelemetrySettingSpec;
use crate::traffic::{ServiceRouteSpec, TrafficSettingSpec, check_service_within_parent};
use crate::validate::Reference;

/// The parent of top-level kinds: the installation itself. Their paths have
/// no prefix, and a binding attached here holds for everything.
pub const TOP_LEVEL: &str = "";

/// Which team owns a kind; the concern roles may change only their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Concern {
    /// The hierarchy and clusters: editors and admins.
    General,
    Traffic,
    Security,
    Gateway,
    /// Users, teams, roles, bindings: admins only.
    Iam,
}

/// Which way a kind's resources travel between `weft server` and the
/// edges. The directory (`crate::edge::DirectoryItem`) is the one thing
/// that travels from edges to the server and on to the other edges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sync {
    /// Kept by the server only (tenancy, IAM, clusters).
    ServerOnly,
    /// Down to the edges of the clusters its workspace selects.
    ToEdges,
}

/// A kind's own rule for names: an error message, or Ok.
type NameCheck = fn(&str) -> Result<(), String>;

/// Every kind, as a value code can match on exhaustively: a new kind is
/// then a compile error wherever kinds are told apart (translation, for
/// one), not a silent fall-through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KindId {
    Organization,
    Tenant,
    Workspace,
    TrafficGroup,
    SecurityGroup,
    GatewayGroup,
    ServiceRoute,
    SecuritySetting,
    TrafficSetting,
    TelemetrySetting,
    Gateway,
    Cluster,
    User,
    Team,
    Role,
    AccessBinding,
}

/// Everything the API, CLI and store need to know about a kind.
pub struct Kind {
    pub id: KindId,
    /// As written in `kind:` (`TrafficGroup`).
    pub name: &'static str,
    /// The REST path segment and the CLI's plural (`trafficgroups`).
    pub plural: &'static str,
    /// More CLI names beside the lowercase name and the plural.
    pub aliases: &'static [&'static str],
    /// Kinds this kind may sit under ([`TOP_LEVEL`] for the root).
    pub parents: &'static [&'static str],
    /// The metadata field that names a resource of this kind as a parent.
    pub parent_field: Option<&'static str>,
    pub concern: Concern,
    /// At most one resource of this kind exists (the Organization).
    pub singleton: bool,
    /// Which way resources of this kind travel between the server and
    /// edges.
    pub sync: Sync,
    /// Extra `weft get` table columns: header and field inside `spec`
    /// (or inside `status`, written `status.field`).
    pub columns: &'static [(&'static str, &'static str)],
    check_spec: fn(&Value, &mut Problems) -> Vec<Reference>,
    spec_schema: fn(&mut SchemaGenerator) -> Schema,
    /// Checks a spec against its parent's spec, for kinds that must fit
    /// inside their parent.
    parent_check: Option<fn(&Value, &Value, &mut Problems)>,
    /// Names this kind may not take, beyond the DNS label rule.
    name_check: Option<NameCheck>,
}

impl std::fmt::Debug for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

/// Nodes an AccessBinding can attach to.
const IAM_NODES: &[&str] = &[
    TOP_LEVEL,
    "Tenant",
    "Workspace",
    "TrafficGroup",
    "SecurityGroup",
    "GatewayGroup",
];

const DESCRIBED: &[(&str, &str)] = &[("DISPLAY NAME", "displayName")];

/// Every kind weft knows, parents before children.
pub static KINDS: &[Kind] = &[
    Kind {
        id: KindId::Organization,
        name: "Organization",
        plural: "organizations",
        aliases: &["org"],
        parents: &[TOP_LEVEL],
        parent_field: None,
        concern: Concern::General,
        singleton: true,
        sync: Sync::ServerOnly,
        columns: DESCRIBED,
        check_spec: check_spec::<OrganizationSpec>,
        spec_schema: spec_schema::<OrganizationSpec>,
        parent_check: None,
        name_check: None,
    },
    Kind {
        id: KindId::Tenant,
        name: "Tenant",
        plural: "tenants",
        aliases: &[],
        parents: &[TOP_LEVEL],
        parent_field: Some("tenant"),
        concern: Concern::General,
        singleton: false,
        sync: Sync::ServerOnly,
        columns: DESCRIBED,
        check_spec: check_spec::<DescribedSpec>,
        spec_schema: spec_schema::<DescribedSpec>,
        parent_check: None,
        name_check: None,
    },
    Kind {
        id: KindId::Workspace,
        name: "Workspace",
        plural: "workspaces",
        aliases: &["ws"],
        parents: &["Tenant"],
        parent_field: Some("workspace"),
        concern: Concern::General,
        singleton: false,
        sync: Sync::ToEdges,
        columns: &[("NAMESPACES", "namespaceSelector")],
        check_spec: check_spec::<WorkspaceSpec>,
        spec_schema: spec_schema::<WorkspaceSpec>,
        parent_check: None,
        name_check: None,
    },
    group(
        KindId::TrafficGroup,
        "TrafficGroup",
        "trafficgroups",
        &["tg"],
        "trafficGroup",
        Concern::Traffic,
        Sync::ToEdges,
    ),
    group(
        KindId::SecurityGroup,
        "SecurityGroup",
        "securitygroups",
        &["sg"],
        "securityGroup",
        Concern::Security,
        Sync::ToEdges,
    ),
    group(
        KindId::GatewayGroup,
        "GatewayGroup",
        "gatewaygroups",
        &["gg"],
        "gatewayGroup",
        Concern::Gateway,
        Sync::ToEdges,
    ),
    Kind {
        id: KindId::ServiceRoute,
        name: "ServiceRoute",
        plural: "serviceroutes",
        aliases: &["sr"],
        parents: &["TrafficGroup"],
        parent_field: None,
        concern: Concern::Traffic,
        singleton: false,
        sync: Sync::ToEdges,
        columns: &[("SERVICE", "service")],
        check_spec: check_spec::<ServiceRouteSpec>,
        spec_schema: spec_schema::<ServiceRouteSpec>,
        parent_check: Some(check_service_within_parent),
        name_check: None,
    },
    Kind {
        id: KindId::SecuritySetting,
        name: "SecuritySetting",
        plural: "securitysettings",
        aliases: &["secset"],
        parents: &["Workspace", "SecurityGroup"],
        parent_field: None,
        concern: Concern::Security,
        singleton: false,
        sync: Sync::ToEdges,
        columns: &[("SERVICE", "service")],
        check_spec: check_spec::<SecuritySettingSpec>,
        spec_schema: spec_schema::<SecuritySettingSpec>,
        parent_check: Some(check_service_within_parent),
        name_check: None,
    },
    Kind {
        id: KindId::TrafficSetting,
        name: "TrafficSetting",
        plural: "trafficsettings",
        aliases: &["ts"],
        parents: &["Workspace", "TrafficGroup"],
        parent_field: None,
        concern: Concern::Traffic,
        singleton: false,
        sync: Sync::ToEdges,
        columns: &[
            ("SERVICE", "service"),
            ("TIMEOUT", "timeout"),
            ("LB", "loadBalancer"),
        ],
        check_spec: check_spec::<TrafficSettingSpec>,
        spec_schema: spec_schema::<TrafficSettingSpec>,
        parent_check: Some(check_service_within_parent),
        name_check: None,
    },
    Kind {
        id: KindId::TelemetrySetting,
        name: "TelemetrySetting",
        plural: "telemetrysettings",
        aliases: &["tel"],
        parents: &["Workspace", "TrafficGroup"],
        parent_field: None,
        concern: Concern::Traffic,
        singleton: false,
        sync: Sync::ToEdges,
        columns: &[
            ("SERVICE", "service"),
            ("TRACING", "tracing.collector"),
            ("LOGS", "accessLog.to"),
        ],
        check_spec: check_spec::<TelemetrySettingSpec>,
        spec_schema: spec_schema::<TelemetrySettingSpec>,
        parent_check: Some(check_service_within_parent),
        name_check: None,
    },
    Kind {
        id: KindId::Gateway,
        name: "Gateway",
        plural: "gateways",
        aliases: &["gw"],
        parents: &["GatewayGroup"],
        parent_field: None,
        concern: Concern::Gateway,
        singleton: false,
        sync: Sync::ToEdges,
        columns: &[
            ("WORKLOADS", "workloadSelector"),
            ("HOSTNAMES", "status.hostnames"),
            ("RUNNING", "status.running"),
            ("NACKS", "status.nacks"),
            ("ERRORS", "status.errorCount"),
        ],
        check_spec: check_spec::<GatewaySpec>,
        spec_schema: spec_schema::<GatewaySpec>,
        parent_check: Some(check_selector_within_parent),
        name_check: None,
    },
    Kind {
        id: KindId::Cluster,
        name: "Cluster",
        plural: "clusters",
        aliases: &[],
        parents: &[TOP_LEVEL],
        parent_field: None,
        concern: Concern::General,
        singleton: false,
        sync: Sync::ServerOnly,
        columns: &[
            ("REGION", "region"),
            ("ZONE", "zone"),
            ("EDGE", "status.edge"),
            ("PROXIES", "status.proxies"),
            ("NACKS", "status.nacks"),
            ("CONFIG", "status.configVersion"),
            ("LAST SEEN", "status.lastSeen"),
        ],
        check_spec: check_spec::<ClusterSpec>,
        spec_schema: spec_schema::<ClusterSpec>,
        parent_check: None,
        name_check: None,
    },
    Kind {
        id: KindId::User,
        name: "User",
        plural: "users",
        aliases: &[],
        parents: &[TOP_LEVEL],
        parent_field: None,
        concern: Concern::Iam,
        singleton: false,
        sync: Sync::ServerOnly,
        columns: &[("DISPLAY NAME", "displayName"), ("EMAIL", "email")],
        check_spec: check_spec::<UserSpec>,
        spec_schema: spec_schema::<UserSpec>,
        parent_check: None,
        name_check: None,
    },
    Kind {
        id: KindId::Team,
        name: "Team",
        plural: "teams",
        aliases: &[],
        parents: &[TOP_LEVEL],
        parent_field: None,
        concern: Concern::Iam,
        singleton: false,
        sync: Sync::ServerOnly,
        columns: &[("MEMBERS", "members")],
        check_spec: check_spec::<TeamSpec>,
        spec_schema: spec_schema::<TeamSpec>,
        parent_check: None,
        name_check: None,
    },
    Kind {
        id: KindId::Role,
        name: "Role",
        plural: "roles",
        aliases: &[],
        parents: &[TOP_LEVEL],
        parent_field: None,
        concern: Concern::Iam,
        singleton: false,
        sync: Sync::ServerOnly,
        columns: &[("DESCRIPTION", "description")],
        check_spec: check_spec::<RoleSpec>,
        spec_schema: spec_schema::<RoleSpec>,
        parent_check: None,
        name_check: Some(check_role_name),
    },
    Kind {
        id: KindId::AccessBinding,
        name: "AccessBinding",
        plural: "accessbindings",
        aliases: &["binding", "bindings"],
        parents: IAM_NODES,
        parent_field: None,
        concern: Concern::Iam,
        singleton: false,
        sync: Sync::ServerOnly,
        columns: &[("ROLE", "role"), ("SUBJECTS", "subjects")],
        check_spec: check_spec::<AccessBindingSpec>,
        spec_schema: spec_schema::<AccessBindingSpec>,
        parent_check: None,
        name_check: None,
    },
];

/// The three group kinds differ only in names and concern.
const fn group(
    id: KindId,
    name: &'static str,
    plural: &'static str,
    aliases: &'static [&'static str],
    parent_field: &'static str,
    concern: Concern,
    sync: Sync,
) -> Kind {
    Kind {
        id,
        name,
        plural,
        aliases,
        parents: &["Workspace"],
        parent_field: Some(parent_field),
        concern,
        singleton: false,
        sync,
        columns: &[("NAMESPACES", "namespaceSelector")],
        check_spec: check_spec::<GroupSpec>,
        spec_schema: spec_schema::<GroupSpec>,
        parent_check: Some(check_group_within_workspace),
        name_check: None,
    }
}

fn check_spec<S: Spec>(spec: &Value, problems: &mut Problems) -> Vec<Reference> {
    match S::deserialize(spec) {
        Ok(typed) => {
            typed.check("spec", problems);
            typed.references("spec")
        }
        // The schema check runs first, so this is a safety net, not a path
        // users normally see.
        Err(e) => {
            problems.add("spec", e.to_string());
            Vec::new()
        }
    }
}

fn spec_schema<S: Spec>(generator: &mut SchemaGenerator) -> Schema {
    generator.subschema_for::<S>()
}

impl Kind {
    /// The kind as written in `kind:`.
    pub fn named(name: &str) -> Option<&'static Kind> {
        KINDS.iter().find(|k| k.name == name)
    }

    /// The kind whose REST path segment is `plural`.
    pub fn by_plural(plural: &str) -> Option<&'static Kind> {
        KINDS.iter().find(|k| k.plural == plural)
    }

    /// The kind a CLI user means: its name, plural or an alias, any case.
    pub fn lookup(word: &str) -> Option<&'static Kind> {
        let word = word.to_ascii_lowercase();
        KINDS.iter().find(|k| {
            k.name.to_ascii_lowercase() == word
                || k.plural == word
                || k.aliases.contains(&word.as_str())
        })
    }

    /// Where this kind sits, in words: "the top level or a Tenant".
    pub fn places(&self) -> String {
        let places: Vec<String> = self
            .parents
            .iter()
            .map(|p| {
                if p.is_empty() {
                    "the top level".to_string()
                } else {
                    format!("a {p}")
                }
            })
            .collect();
        places.join(" or ")
    }

    /// Checks the typed spec and returns what it references.
    pub fn check_spec(&self, spec: &Value, problems: &mut Problems) -> Vec<Reference> {
        (self.check_spec)(spec, problems)
    }

    /// Whether [`Kind::check_against_parent`] does anything for this kind.
    pub fn checks_parent(&self) -> bool {
        self.parent_check.is_some()
    }

    /// Checks `spec` against the spec of the parent it will sit under.
    pub fn check_against_parent(&self, spec: &Value, parent_spec: &Value, problems: &mut Problems) {
        if let Some(check) = self.parent_check {
            check(spec, parent_spec, problems);
        }
    }

    /// Kind-specific rules for `metadata.name`.
    pub fn check_name(&self, name: &str) -> Result<(), String> {
        self.name_check.map_or(Ok(()), |check| check(name))
    }

    /// The spec's JSON Schema; shared definitions go into `generator`.
    pub fn spec_schema(&self, generator: &mut SchemaGenerator) -> Schema {
        (self.spec_schema)(generator)
    }
}

/// The path of a top-level resource (`users/alice`).
pub fn top_level_path(kind: &str, name: &str) -> String {
    let plural = Kind::named(kind).map_or("unknown", |k| k.plural);
    format!("{plural}/{name}")
}

/// `parent/plural/name`, or `plural/name` at the top.
pub fn child_path(parent: &str, kind: &Kind, name: &str) -> String {
    if parent.is_empty() {
        format!("{}/{name}", kind.plural)
    } else {
        format!("{parent}/{}/{name}", kind.plural)
    }
}

/// The kind of the resource at a path, from its last-but-one segment.
pub fn kind_of_path(path: &str) -> Option<&'static Kind> {
    let mut segments = path.rsplit('/');
    segments.next()?;
    Kind::by_plural(segments.next()?)
}

#[cfg(test)]
mod id_tests {
    use super::*;

    #[test]
    fn every_kind_has_its_own_id() {
        for kind in KINDS {
            assert_eq!(format!("{:?}", kind.id), kind.name);
        }
        let ids: std::collections::HashSet<KindId> = KINDS.iter().map(|k| k.id).collect();
        assert_eq!(ids.len(), KINDS.len());
    }
}

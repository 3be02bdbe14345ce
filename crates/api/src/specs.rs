//! The `spec` types of the kinds. Structure (types, required and unknown
//! fields, lengths) is in the derived JSON Schema; rules a schema cannot say
//! well are in [`Spec::check`]; names of other resources are returned by
//! [`Spec::references`] so the store can check they exist, atomically.

use std::collections::BTreeSet;

use schemars::JsonSchema;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::iam::{BUILTIN_ROLES, Rule, builtin_rules};
use crate::kinds::{KINDS, top_level_path};
use crate::problems::{Problems, check_dns_label, field, index};
use crate::validate::Reference;

/// What every kind's spec type provides beyond its schema.
pub trait Spec: DeserializeOwned + JsonSchema {
    /// Reports what the schema cannot; `at` is the spec's field path.
    fn check(&self, _at: &str, _problems: &mut Problems) {}
    /// Other resources this spec names, with the field naming each.
    fn references(&self, _at: &str) -> Vec<Reference> {
        Vec::new()
    }
}

/// A spec that only describes: the Organization and Tenants.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DescribedSpec {
    #[schemars(length(max = 256))]
    pub display_name: Option<String>,
    #[schemars(length(max = 4096))]
    pub description: Option<String>,
}
impl Spec for DescribedSpec {}

/// The organization: everything weft manages.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OrganizationSpec {
    #[schemars(length(max = 256))]
    pub display_name: Option<String>,
    #[schemars(length(max = 4096))]
    pub description: Option<String>,
    /// The SPIFFE trust domain of every workload identity (default: the
    /// organization's name). Roots are made for it: a change applies with
    /// the next root (`weft ca add`, then `weft ca activate`), and changes
    /// every identity, so plan it as a migration.
    pub trust_domain: Option<String>,
}
impl Spec for OrganizationSpec {
    fn check(&self, at: &str, problems: &mut Problems) {
        if let Some(trust_domain) = &self.trust_domain
            && let Err(e) = weft_identity::check_trust_domain(trust_domain)
        {
            problems.add(field(at, "trustDomain"), e.to_string());
        }
    }
}

/// An application: the cluster/namespace pairs it owns.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkspaceSpec {
    #[schemars(length(max = 256))]
    pub display_name: Option<String>,
    #[schemars(length(max = 4096))]
    pub description: Option<String>,
    /// `cluster/namespace` patterns; either part may be `*`.
    #[schemars(length(min = 1))]
    pub namespace_selector: Vec<String>,
}
impl Spec for WorkspaceSpec {
    fn check(&self, at: &str, problems: &mut Problems) {
        check_selector(
            &self.namespace_selector,
            &field(at, "namespaceSelector"),
            problems,
        );
    }
}

/// A traffic, security or gateway group: a subset of its workspace's
/// namespaces (all of them when the selector is empty).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GroupSpec {
    #[schemars(length(max = 256))]
    pub display_name: Option<String>,
    #[schemars(length(max = 4096))]
    pub description: Option<String>,
    #[serde(default)]
    pub namespace_selector: Vec<String>,
}
impl Spec for GroupSpec {
    fn check(&self, at: &str, problems: &mut Problems) {
        check_selector(
            &self.namespace_selector,
            &field(at, "namespaceSelector"),
            problems,
        );
    }
}

/// An onboarded failure domain and where it is.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterSpec {
    #[schemars(length(max = 256))]
    pub display_name: Option<String>,
    #[schemars(length(max = 4096))]
    pub description: Option<String>,
    pub region: String,
    pub zone: Option<String>,
    /// Clusters on one network reach each other's workloads directly.
    pub network: Option<String>,
}
impl Spec for ClusterSpec {
    fn check(&self, at: &str, problems: &mut Problems) {
        let named = [
            ("region", Some(&self.region)),
            ("zone", self.zone.as_ref()),
            ("network", self.network.as_ref()),
        ];
        for (name, value) in named {
            if let Some(Err(e)) = value.map(|v| check_dns_label(v)) {
                problems.add(field(at, name), e);
            }
        }
    }
}

/// A person or a machine that calls the API with tokens.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UserSpec {
    #[schemars(length(max = 256))]
    pub display_name: Option<String>,
    #[schemars(length(max = 320))]
    pub email: Option<String>,
}
impl Spec for UserSpec {
    fn check(&self, at: &str, problems: &mut Problems) {
        if let Some(email) = &self.email {
            let parts: Vec<&str> = email.split('@').collect();
            if parts.len() != 2 || parts.iter().any(|p| p.is_empty()) {
                problems.add(
                    field(at, "email"),
                    format!("{email:?} is not an email address"),
                );
            }
        }
    }
}

/// Users who share bindings.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TeamSpec {
    #[schemars(length(max = 256))]
    pub display_name: Option<String>,
    #[schemars(length(max = 4096))]
    pub description: Option<String>,
    /// User names.
    #[serde(default)]
    pub members: Vec<String>,
}
impl Spec for TeamSpec {
    fn check(&self, at: &str, problems: &mut Problems) {
        check_names(&self.members, &field(at, "members"), problems);
    }
    fn references(&self, at: &str) -> Vec<Reference> {
        let at = field(at, "members");
        self.members
            .iter()
            .enumerate()
            .map(|(i, m)| Reference::new(index(&at, i), top_level_path("User", m)))
            .collect()
    }
}

/// A custom role: rules granting verbs on kinds.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RoleSpec {
    #[schemars(length(max = 4096))]
    pub description: Option<String>,
    #[schemars(length(min = 1))]
    pub rules: Vec<Rule>,
}
impl Spec for RoleSpec {
    fn check(&self, at: &str, problems: &mut Problems) {
        let rules_at = field(at, "rules");
        for (i, rule) in self.rules.iter().enumerate() {
            let kinds_at = field(&index(&rules_at, i), "kinds");
            for (j, kind) in rule.kinds.iter().enumerate() {
                if kind != "*" && !KINDS.iter().any(|k| k.name == kind) {
                    problems.add(index(&kinds_at, j), format!("unknown kind {kind:?}"));
                }
            }
        }
    }
}

/// Gives users and teams a role on the node the binding is attached to
/// (its parent in metadata) and everything below it.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessBindingSpec {
    /// A built-in role or a Role's name.
    pub role: String,
    #[schemars(length(min = 1))]
    pub subjects: Vec<Subject>,
}

/// Exactly one of `user` or `team`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Subject {
    pub user: Option<String>,
    pub team: Option<String>,
}

impl Spec for AccessBindingSpec {
    fn check(&self, at: &str, problems: &mut Problems) {
        if builtin_rules(&self.role).is_none()
            && let Err(e) = check_dns_label(&self.role)
        {
            problems.add(field(at, "role"), e);
        }
        let subjects_at = field(at, "subjects");
        for (i, subject) in self.subjects.iter().enumerate() {
            let here = index(&subjects_at, i);
            match (&subject.user, &subject.team) {
                (Some(name), None) | (None, Some(name)) => {
                    if let Err(e) = check_dns_label(name) {
                        let which = if subject.user.is_some() {
                            "user"
                        } else {
                            "team"
                        };
                        problems.add(field(&here, which), e);
                    }
                }
                _ => problems.add(here, "set exactly one of user or team"),
            }
        }
    }
    fn references(&self, at: &str) -> Vec<Reference> {
        let mut refs = Vec::new();
        if builtin_rules(&self.role).is_none() {
            refs.push(Reference::new(
                field(at, "role"),
                top_level_path("Role", &self.role),
            ));
        }
        let subjects_at = field(at, "subjects");
        for (i, subject) in self.subjects.iter().enumerate() {
            let here = index(&subjects_at, i);
            if let Some(user) = &subject.user {
                refs.push(Reference::new(
                    field(&here, "user"),
                    top_level_path("User", user),
                ));
            }
            if let Some(team) = &subject.team {
                refs.push(Reference::new(
                    field(&here, "team"),
                    top_level_path("Team", team),
                ));
            }
        }
        refs
    }
}

/// A group's namespaces must lie within its workspace's.
pub fn check_group_within_workspace(
    group: &serde_json::Value,
    workspace: &serde_json::Value,
    problems: &mut Problems,
) {
    let (Ok(group), Ok(workspace)) = (
        GroupSpec::deserialize(group),
        WorkspaceSpec::deserialize(workspace),
    ) else {
        return;
    };
    for (i, entry) in group.namespace_selector.iter().enumerate() {
        if !selector_covers(&workspace.namespace_selector, entry) {
            problems.add(
                index("spec.namespaceSelector", i),
                format!(
                    "{entry:?} is outside the workspace's namespaces ({})",
                    workspace.namespace_selector.join(", ")
                ),
            );
        }
    }
}

/// A custom Role may not take a built-in role's name.
pub fn check_role_name(name: &str) -> Result<(), String> {
    if BUILTIN_ROLES.iter().any(|(n, _)| *n == name) {
        Err(format!("{name:?} is a built-in role; choose another name"))
    } else {
        Ok(())
    }
}

fn check_names(names: &[String], at: &str, problems: &mut Problems) {
    let mut seen = BTreeSet::new();
    for (i, name) in names.iter().enumerate() {
        if let Err(e) = check_dns_label(name) {
            problems.add(index(at, i), e);
        } else if !seen.insert(name) {
            problems.add(index(at, i), format!("{name:?} is listed twice"));
        }
    }
}

/// Each entry must be `cluster/namespace`, each part a DNS label or `*`.
fn check_selector(selector: &[String], at: &str, problems: &mut Problems) {
    let mut seen = BTreeSet::new();
    for (i, entry) in selector.iter().enumerate() {
        let here = index(at, i);
        let Some((cluster, namespace)) = entry.split_once('/') else {
            problems.add(
                here,
                format!("{entry:?} is not of the form cluster/namespace"),
            );
            continue;
        };
        let bad_part = [cluster, namespace]
            .into_iter()
            .filter(|p| *p != "*")
            .find_map(|p| check_dns_label(p).err());
        if let Some(e) = bad_part {
            problems.add(here, format!("{entry:?}: {e}"));
        } else if !seen.insert(entry) {
            problems.add(here, format!("{entry:?} is listed twice"));
        }
    }
}

/// Whether a workspace's selector covers a group's entry: every part of the
/// group's entry must be matched by the same part of some workspace entry.
pub fn selector_covers(workspace: &[String], entry: &str) -> bool {
    let Some((cluster, namespace)) = entry.split_once('/') else {
        return false;
    };
    let part_covers = |outer: &str, inner: &str| outer == "*" || outer == inner;
    workspace.iter().any(|w| {
        w.split_once('/')
            .is_some_and(|(c, n)| part_covers(c, cluster) && part_covers(n, namespace))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selector_cover_follows_wildcards() {
        let ws = vec!["*/checkout".to_string(), "east/pay".to_string()];
        assert!(selector_covers(&ws, "west/checkout"));
        assert!(selector_covers(&ws, "east/pay"));
        assert!(!selector_covers(&ws, "west/pay"));
        assert!(!selector_covers(&ws, "*/pay"));
        assert!(!selector_covers(&ws, "east/*"));
    }
}

//! Verbs, role rules and the built-in roles.
//!
//! A role is a list of rules; a rule grants verbs on kinds. Built-in roles
//! are computed from the kind descriptors (by concern), so a kind added later
//! is covered by `editor` or `traffic-editor` without touching this file.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::kinds::{Concern, KINDS};

/// What a caller does to a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Verb {
    Read,
    Create,
    Update,
    Delete,
    /// Every verb.
    #[serde(rename = "*")]
    All,
}

impl Verb {
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Read => "read",
            Verb::Create => "create",
            Verb::Update => "update",
            Verb::Delete => "delete",
            Verb::All => "*",
        }
    }
}

/// Grants `verbs` on `kinds` ("*" for every kind).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub verbs: Vec<Verb>,
    pub kinds: Vec<String>,
}

impl Rule {
    pub fn allows(&self, verb: Verb, kind: &str) -> bool {
        let verb_ok = self.verbs.iter().any(|v| *v == Verb::All || *v == verb);
        let kind_ok = self.kinds.iter().any(|k| k == "*" || k == kind);
        verb_ok && kind_ok
    }
}

/// The built-in roles with what each is for.
pub const BUILTIN_ROLES: &[(&str, &str)] = &[
    (
        "admin",
        "every verb on every kind, including IAM (bindings, users, teams, roles)",
    ),
    (
        "editor",
        "read everything; create, update and delete every kind except IAM kinds",
    ),
    (
        "creator",
        "read everything; create (but not change or delete) every kind except IAM kinds",
    ),
    ("viewer", "read everything"),
    (
        "traffic-editor",
        "read everything; change traffic groups and traffic settings",
    ),
    (
        "security-editor",
        "read everything; change security groups and security settings",
    ),
    (
        "gateway-editor",
        "read everything; change gateway groups and gateway settings",
    ),
];

/// The rules of a built-in role, or None if `name` is not built in.
pub fn builtin_rules(name: &str) -> Option<Vec<Rule>> {
    let read_all = Rule {
        verbs: vec![Verb::Read],
        kinds: vec!["*".into()],
    };
    let write = |verbs: Vec<Verb>, keep: &dyn Fn(Concern) -> bool| Rule {
        verbs,
        kinds: KINDS
            .iter()
            .filter(|k| keep(k.concern))
            .map(|k| k.name.to_string())
            .collect(),
    };
    let change = || vec![Verb::Create, Verb::Update, Verb::Delete];
    let rules = match name {
        "admin" => vec![Rule {
            verbs: vec![Verb::All],
            kinds: vec!["*".into()],
        }],
        "editor" => vec![read_all, write(change(), &|c| c != Concern::Iam)],
        "creator" => vec![read_all, write(vec![Verb::Create], &|c| c != Concern::Iam)],
        "viewer" => vec![read_all],
        "traffic-editor" => vec![read_all, write(change(), &|c| c == Concern::Traffic)],
        "security-editor" => vec![read_all, write(change(), &|c| c == Concern::Security)],
        "gateway-editor" => vec![read_all, write(change(), &|c| c == Concern::Gateway)],
        _ => return None,
    };
    Some(rules)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concern_roles_change_only_their_own_kinds() {
        let traffic = builtin_rules("traffic-editor").unwrap();
        let allows = |verb, kind| traffic.iter().any(|r| r.allows(verb, kind));
        assert!(allows(Verb::Update, "TrafficGroup"));
        assert!(allows(Verb::Read, "SecurityGroup"));
        assert!(!allows(Verb::Update, "SecurityGroup"));
        assert!(!allows(Verb::Delete, "Workspace"));
    }

    #[test]
    fn editor_cannot_touch_iam_and_creator_cannot_update() {
        let editor = builtin_rules("editor").unwrap();
        assert!(editor.iter().any(|r| r.allows(Verb::Delete, "Workspace")));
        assert!(
            !editor
                .iter()
                .any(|r| r.allows(Verb::Create, "AccessBinding"))
        );
        let creator = builtin_rules("creator").unwrap();
        assert!(creator.iter().any(|r| r.allows(Verb::Create, "Workspace")));
        assert!(!creator.iter().any(|r| r.allows(Verb::Update, "Workspace")));
        assert!(builtin_rules("root").is_none());
    }
}

//! Table-driven validation: each bad manifest with the field paths it must
//! report, and good manifests with the path they resolve to.

mod common;

use common::{Case, assert_problems};
use serde_json::{Value, json};
use weft_api::validate;

fn doc(kind: &str, metadata: Value, spec: Value) -> Value {
    json!({"apiVersion": "weft.dev/v1alpha1", "kind": kind, "metadata": metadata, "spec": spec})
}

#[test]
fn bad_manifests_report_every_problem_with_its_field_path() {
    let cases: Vec<Case> = vec![
        (
            "selector entry without a slash",
            doc(
                "Workspace",
                json!({"name": "checkout", "tenant": "retail"}),
                json!({"namespaceSelector": ["*/checkout", "east"]}),
            ),
            vec![(
                "spec.namespaceSelector[1]",
                "\"east\" is not of the form cluster/namespace",
            )],
        ),
        (
            "several problems in one document are all reported",
            doc(
                "Workspace",
                json!({"name": "Bad_Name", "tenant": "retail"}),
                json!({"namespaceSelector": ["east", "*/UPPER", "*/ok", "*/ok"]}),
            ),
            vec![
                ("metadata.name", "not a DNS label"),
                ("spec.namespaceSelector[0]", "cluster/namespace"),
                ("spec.namespaceSelector[1]", "not a DNS label"),
                ("spec.namespaceSelector[3]", "listed twice"),
            ],
        ),
        (
            "unknown fields anywhere, all of them",
            json!({"apiVersion": "weft.dev/v1alpha1", "kind": "Cluster", "extra": 1,
                   "metadata": {"name": "east", "colour": "red"},
                   "spec": {"region": "us-east-1", "zones": ["a"]}}),
            vec![
                ("extra", "unknown field"),
                ("metadata.colour", "unknown field"),
                ("spec.zones", "unknown field"),
            ],
        ),
        (
            "wrong types and missing required fields",
            doc(
                "Cluster",
                json!({"name": "east", "labels": {"a": 1}}),
                json!({"zone": 3}),
            ),
            vec![
                ("metadata.labels.a", "string"),
                ("spec.zone", "string"),
                ("spec.region", "is required"),
            ],
        ),
        (
            "an unknown field hides neither a bad name nor the spec's other problems",
            doc(
                "Workspace",
                json!({"name": "Bad", "tenant": "retail"}),
                json!({"namespaceSelector": ["east"], "foo": 1}),
            ),
            vec![
                ("spec.foo", "unknown field"),
                ("metadata.name", "not a DNS label"),
                (
                    "spec.namespaceSelector[0]",
                    "not of the form cluster/namespace",
                ),
            ],
        ),
        (
            "wrong apiVersion",
            json!({"apiVersion": "v1", "kind": "Tenant", "metadata": {"name": "a"}}),
            vec![("apiVersion", "must be \"weft.dev/v1alpha1\"")],
        ),
        (
            "unknown kind with a suggestion",
            json!({"apiVersion": "weft.dev/v1alpha1", "kind": "workspace", "metadata": {"name": "a"}}),
            vec![("kind", "did you mean \"Workspace\"")],
        ),
        (
            "missing metadata",
            json!({"apiVersion": "weft.dev/v1alpha1", "kind": "Tenant"}),
            vec![("metadata", "is required")],
        ),
        (
            "not a mapping",
            json!(["a", "list"]),
            vec![("", "must be a mapping")],
        ),
        (
            "a workspace needs a tenant",
            doc(
                "Workspace",
                json!({"name": "w"}),
                json!({"namespaceSelector": ["*/w"]}),
            ),
            vec![("metadata", "a Workspace sits under a Tenant")],
        ),
        (
            "a tenant cannot sit under a workspace",
            doc(
                "Tenant",
                json!({"name": "t", "tenant": "a", "workspace": "w"}),
                json!({}),
            ),
            vec![("metadata.workspace", "a Tenant sits under the top level")],
        ),
        (
            "a group without its workspace",
            doc(
                "TrafficGroup",
                json!({"name": "g", "tenant": "a"}),
                json!({}),
            ),
            vec![("metadata.tenant", "a TrafficGroup sits under a Workspace")],
        ),
        (
            "workspace named without tenant",
            doc(
                "TrafficGroup",
                json!({"name": "g", "workspace": "w"}),
                json!({}),
            ),
            vec![("metadata.tenant", "is required with metadata.workspace")],
        ),
        (
            "two groups at once",
            doc(
                "AccessBinding",
                json!({"name": "b", "tenant": "a", "workspace": "w", "trafficGroup": "t", "securityGroup": "s"}),
                json!({"role": "viewer", "subjects": [{"user": "bob"}]}),
            ),
            vec![(
                "metadata.securityGroup",
                "cannot be combined with metadata.trafficGroup",
            )],
        ),
        (
            "names with path characters",
            doc(
                "Workspace",
                json!({"name": "../etc", "tenant": "a/b"}),
                json!({"namespaceSelector": ["*/x"]}),
            ),
            vec![
                ("metadata.name", "not a DNS label"),
                ("metadata.tenant", "not a DNS label"),
            ],
        ),
        (
            "empty selector on a workspace",
            doc(
                "Workspace",
                json!({"name": "w", "tenant": "t"}),
                json!({"namespaceSelector": []}),
            ),
            vec![("spec.namespaceSelector", "")],
        ),
        (
            "binding subject must be exactly one of user or team",
            doc(
                "AccessBinding",
                json!({"name": "b"}),
                json!({"role": "editor", "subjects": [{"user": "a", "team": "b"}, {}]}),
            ),
            vec![
                ("spec.subjects[0]", "exactly one"),
                ("spec.subjects[1]", "exactly one"),
            ],
        ),
        (
            "role rules name real kinds and verbs",
            doc(
                "Role",
                json!({"name": "r"}),
                json!({"rules": [{"verbs": ["read"], "kinds": ["Workspace", "Nope"]}]}),
            ),
            vec![("spec.rules[0].kinds[1]", "unknown kind \"Nope\"")],
        ),
        (
            "a custom role may not take a built-in name",
            doc(
                "Role",
                json!({"name": "admin"}),
                json!({"rules": [{"verbs": ["read"], "kinds": ["*"]}]}),
            ),
            vec![("metadata.name", "built-in role")],
        ),
        (
            "unknown verb",
            doc(
                "Role",
                json!({"name": "r"}),
                json!({"rules": [{"verbs": ["write"], "kinds": ["*"]}]}),
            ),
            vec![("spec.rules[0].verbs[0]", "")],
        ),
        (
            "bad cluster locality and email",
            doc(
                "Cluster",
                json!({"name": "c"}),
                json!({"region": "US East", "zone": "a_b"}),
            ),
            vec![
                ("spec.region", "not a DNS label"),
                ("spec.zone", "not a DNS label"),
            ],
        ),
        (
            "bad email, duplicate team member",
            doc(
                "Team",
                json!({"name": "t"}),
                json!({"members": ["ann", "ann"]}),
            ),
            vec![("spec.members[1]", "listed twice")],
        ),
        (
            "bad resourceVersion and label",
            doc(
                "Tenant",
                json!({"name": "t", "resourceVersion": "abc", "labels": {"bad key!": "v"}}),
                json!({}),
            ),
            vec![
                ("metadata.resourceVersion", "not a version"),
                ("metadata.labels.bad key!", "key must be"),
            ],
        ),
    ];
    assert_problems(cases);
}

#[test]
fn good_manifests_resolve_to_hierarchical_paths_and_references() {
    let cases = vec![
        (
            doc("Tenant", json!({"name": "retail"}), json!({})),
            "tenants/retail",
            "",
        ),
        (
            doc(
                "Workspace",
                json!({"name": "checkout", "tenant": "retail", "labels": {"team": "payments"}}),
                json!({"namespaceSelector": ["*/checkout", "us-east-1/checkout-canary"]}),
            ),
            "tenants/retail/workspaces/checkout",
            "tenants/retail",
        ),
        (
            doc(
                "SecurityGroup",
                json!({"name": "sec", "tenant": "retail", "workspace": "checkout"}),
                json!({}),
            ),
            "tenants/retail/workspaces/checkout/securitygroups/sec",
            "tenants/retail/workspaces/checkout",
        ),
        (
            doc(
                "AccessBinding",
                json!({"name": "b", "tenant": "retail"}),
                json!({"role": "ops", "subjects": [{"user": "ann"}, {"team": "sre"}]}),
            ),
            "tenants/retail/accessbindings/b",
            "tenants/retail",
        ),
        (
            doc(
                "Cluster",
                json!({"name": "east"}),
                json!({"region": "us-east-1", "zone": "us-east-1a"}),
            ),
            "clusters/east",
            "",
        ),
    ];
    for (manifest, path, parent) in cases {
        let v = validate(&manifest).unwrap_or_else(|p| panic!("{path}: {p:?}"));
        assert_eq!(v.path, path);
        assert_eq!(v.parent, parent);
        if !parent.is_empty() {
            assert_eq!(v.references[0].target, parent);
        }
    }
    let binding = validate(&doc(
        "AccessBinding",
        json!({"name": "b", "tenant": "retail"}),
        json!({"role": "ops", "subjects": [{"user": "ann"}, {"team": "sre"}]}),
    ))
    .unwrap();
    let targets: Vec<(&str, &str)> = binding
        .references
        .iter()
        .map(|r| (r.field.as_str(), r.target.as_str()))
        .collect();
    assert_eq!(
        targets,
        vec![
            ("metadata.tenant", "tenants/retail"),
            ("spec.role", "roles/ops"),
            ("spec.subjects[0].user", "users/ann"),
            ("spec.subjects[1].team", "teams/sre"),
        ]
    );
}

#[test]
fn server_fields_and_status_are_accepted_and_dropped() {
    let mut manifest = doc(
        "Tenant",
        json!({"name": "t", "resourceVersion": "7", "createdAt": "x"}),
        json!({}),
    );
    manifest["status"] = json!({"anything": true});
    let v = validate(&manifest).unwrap();
    assert_eq!(v.expected_version, Some(7));
    assert_eq!(v.resource.metadata.created_at, None);
    assert_eq!(v.resource.status, None);
}

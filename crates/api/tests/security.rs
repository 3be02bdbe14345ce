//! SecuritySetting validation: bad rules are refused with the field path
//! of every problem; good ones resolve to their place.

mod common;

use common::{Case, assert_problems};
use serde_json::{Value, json};
use weft_api::validate;

fn setting(metadata: Value, spec: Value) -> Value {
    json!({"apiVersion": "weft.dev/v1alpha1", "kind": "SecuritySetting", "metadata": metadata, "spec": spec})
}

fn at_workspace() -> Value {
    json!({"name": "callers", "tenant": "retail", "workspace": "shop"})
}

#[test]
fn bad_security_settings_name_every_problem() {
    let cases: Vec<Case> = vec![
        (
            "a setting that sets nothing",
            setting(at_workspace(), json!({})),
            vec![("spec", "give mtls or authorization")],
        ),
        (
            "no rules at all",
            setting(at_workspace(), json!({"authorization": {}})),
            vec![("spec.authorization", "at least one allow or deny rule")],
        ),
        (
            "a caller must be exactly one kind; names are checked; requests too",
            setting(
                at_workspace(),
                json!({"authorization": {
                    "allow": [{"from": [
                        {"namespace": "shop", "workspace": "ops"},
                        {"serviceAccount": {"name": "Bad_Name", "namespace": "shop"}},
                        {"sameWorkspace": false}
                    ]}],
                    "deny": [{"to": [{}, {"path": {"prefix": "admin"}}]}]
                }}),
            ),
            vec![
                (
                    "spec.authorization.allow[0].from[0]",
                    "exactly one of serviceAccount, namespace, workspace, sameWorkspace",
                ),
                (
                    "spec.authorization.allow[0].from[1].serviceAccount.name",
                    "",
                ),
                (
                    "spec.authorization.allow[0].from[2].sameWorkspace",
                    "only true",
                ),
                (
                    "spec.authorization.deny[0].to[0]",
                    "at least one of path, method or headers",
                ),
                (
                    "spec.authorization.deny[0].to[1].path.prefix",
                    "must start with /",
                ),
            ],
        ),
    ];
    assert_problems(cases);
}

#[test]
fn security_settings_sit_in_a_workspace_or_a_security_group() {
    let spec = json!({"authorization": {"allow": [{"from": [{"sameWorkspace": true}]}]}});
    let in_group = setting(
        json!({"name": "callers", "tenant": "retail", "workspace": "shop", "securityGroup": "sec"}),
        spec.clone(),
    );
    let validated = validate(&in_group).unwrap();
    assert_eq!(
        validated.path,
        "tenants/retail/workspaces/shop/securitygroups/sec/securitysettings/callers"
    );
    let validated = validate(&setting(at_workspace(), spec)).unwrap();
    assert_eq!(
        validated.path,
        "tenants/retail/workspaces/shop/securitysettings/callers"
    );
}

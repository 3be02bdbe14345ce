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
            vec![("spec", "give mtls, authorization or authentication")],
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
                    "deny": [{"to": [{}, {"path": {"prefix": "admin"}}, {"query": [{"name": "debug", "present": true}]}]}]
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
                    "at least one of path, method, headers or query",
                ),
                (
                    "spec.authorization.deny[0].to[1].path.prefix",
                    "must start with /",
                ),
                (
                    "spec.authorization.deny[0].to[2].query",
                    "cannot match query parameters",
                ),
            ],
        ),
        (
            "end-user authentication: every issuer checked, every field by path",
            setting(
                at_workspace(),
                json!({"authentication": {
                    "jwt": [
                        {"issuer": "", "audiences": [""]},
                        {"issuer": "a", "jwksUri": "ftp://keys.example.com/jwks", "jwksRefresh": "soon"},
                        {"issuer": "b", "jwks": "{\"keys\": []}", "jwksRefresh": "5m", "clockSkew": "0s"},
                        {"issuer": "c", "jwksUri": "http://keys.example.com/jwks"},
                        {"issuer": "d", "jwksUri": "http://127.0.0.1:8080/jwks"},
                        {"issuer": "a", "jwksUri": "https://keys.example.com/jwks",
                         "forwardClaims": [{"claim": "a..b", "header": "X-User"}, {"claim": "sub", "header": "authorization"}]}
                    ],
                    "requireFor": [{}]
                },
                "authorization": {"allow": [{"claims": {"groups": [], "": ["x"]}}]}}),
            ),
            vec![
                ("spec.authentication.jwt[0].issuer", "must not be empty"),
                ("spec.authentication.jwt[0]", "exactly one of jwksUri, jwks"),
                (
                    "spec.authentication.jwt[0].audiences[0]",
                    "must not be empty",
                ),
                ("spec.authentication.jwt[1].jwksUri", "use https"),
                ("spec.authentication.jwt[1].jwksRefresh", "not a duration"),
                ("spec.authentication.jwt[2].jwks", "non-empty \"keys\""),
                (
                    "spec.authentication.jwt[2].jwksRefresh",
                    "only keys fetched from jwksUri",
                ),
                ("spec.authentication.jwt[2].clockSkew", "longer than zero"),
                (
                    "spec.authentication.jwt[3].jwksUri",
                    "plain http only from a loopback address",
                ),
                (
                    "spec.authentication.jwt[5].issuer",
                    "jwt[1] already names this issuer",
                ),
                (
                    "spec.authentication.jwt[5].forwardClaims[0].claim",
                    "not a claim name",
                ),
                (
                    "spec.authentication.jwt[5].forwardClaims[0].header",
                    "lowercase HTTP header",
                ),
                (
                    "spec.authentication.jwt[5].forwardClaims[1].header",
                    "not a header a claim may set",
                ),
                (
                    "spec.authentication.requireFor[0]",
                    "at least one of path, method, headers or query",
                ),
                (
                    "spec.authorization.allow[0].claims.groups",
                    "at least one accepted value",
                ),
                ("spec.authorization.allow[0].claims.", "not a claim name"),
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

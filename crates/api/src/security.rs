//! Security kinds: SecuritySetting says who may call a service. Security
//! editors own them.
//!
//! Nothing may call anything until a setting allows it (deny-all). A
//! setting attached to a workspace is the default for its services; one in
//! a security group applies to that group's namespaces; one naming a
//! `service` is for that service alone. The most specific level that has
//! rules decides, and there deny rules win over allow rules.

use schemars::JsonSchema;
use serde::Deserialize;

use crate::problems::{Problems, check_dns_label, field, index};
use crate::specs::Spec;
use crate::traffic::{RequestMatch, ServiceRef, check_match, exactly_one};

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecuritySettingSpec {
    /// The one service this setting is for; none: every service where the
    /// setting is attached.
    pub service: Option<ServiceRef>,
    /// How the receiving sidecars take connections (default strict).
    pub mtls: Option<MtlsMode>,
    pub authorization: Option<Authorization>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum MtlsMode {
    /// Mutual TLS only.
    Strict,
    /// Mutual TLS, or plaintext from workloads without a sidecar yet (for
    /// a migration). Plaintext callers have no identity: only rules
    /// without `from` can allow them.
    Permissive,
}

/// Who may call, and what. A request is refused if a deny rule matches,
/// else allowed if an allow rule matches, else refused.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Authorization {
    #[serde(default)]
    pub allow: Vec<AuthorizationRule>,
    #[serde(default)]
    pub deny: Vec<AuthorizationRule>,
}

/// Matches a request from any of `from` that matches any of `to`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationRule {
    /// Callers, by identity; none: any workload of the trust domain.
    #[serde(default)]
    pub from: Vec<Caller>,
    /// Requests (path, method, headers); none: every request.
    #[serde(default)]
    pub to: Vec<RequestMatch>,
}

/// One kind of caller: set exactly one field.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Caller {
    /// Workloads running as this service account.
    pub service_account: Option<ServiceRef>,
    /// Any workload in this namespace.
    pub namespace: Option<String>,
    /// Any workload in a namespace of this workspace (same tenant).
    pub workspace: Option<String>,
    /// `true`: any workload in a namespace of the setting's own workspace.
    pub same_workspace: Option<bool>,
}

impl Spec for SecuritySettingSpec {
    fn check(&self, at: &str, problems: &mut Problems) {
        if let Some(service) = &self.service {
            service.check(&field(at, "service"), problems);
        }
        let Some(authorization) = &self.authorization else {
            if self.mtls.is_none() {
                problems.add(at, "sets nothing: give mtls or authorization");
            }
            return;
        };
        let here = field(at, "authorization");
        if authorization.allow.is_empty() && authorization.deny.is_empty() {
            problems.add(&here, "give at least one allow or deny rule");
        }
        for (list, rules) in [
            ("allow", &authorization.allow),
            ("deny", &authorization.deny),
        ] {
            for (i, rule) in rules.iter().enumerate() {
                let rule_at = index(&field(&here, list), i);
                for (j, caller) in rule.from.iter().enumerate() {
                    let caller_at = index(&field(&rule_at, "from"), j);
                    exactly_one(
                        &caller_at,
                        &[
                            ("serviceAccount", caller.service_account.is_some()),
                            ("namespace", caller.namespace.is_some()),
                            ("workspace", caller.workspace.is_some()),
                            ("sameWorkspace", caller.same_workspace.is_some()),
                        ],
                        problems,
                    );
                    if let Some(sa) = &caller.service_account {
                        sa.check(&field(&caller_at, "serviceAccount"), problems);
                    }
                    for (name, value) in [
                        ("namespace", &caller.namespace),
                        ("workspace", &caller.workspace),
                    ] {
                        if let Some(value) = value
                            && let Err(e) = check_dns_label(value)
                        {
                            problems.add(field(&caller_at, name), e);
                        }
                    }
                    if caller.same_workspace == Some(false) {
                        problems.add(
                            field(&caller_at, "sameWorkspace"),
                            "only true means something here; leave it out otherwise",
                        );
                    }
                }
                for (j, request) in rule.to.iter().enumerate() {
                    check_match(request, &index(&field(&rule_at, "to"), j), problems);
                }
            }
        }
    }
}

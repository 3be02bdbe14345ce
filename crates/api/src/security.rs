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

use std::collections::BTreeMap;

use crate::problems::{Problems, check_dns_label, field, index};
use crate::specs::Spec;
use crate::traffic::{
    RequestMatch, ServiceRef, check_header_name, check_match, duration, exactly_one,
};

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecuritySettingSpec {
    /// The one service this setting is for; none: every service where the
    /// setting is attached.
    pub service: Option<ServiceRef>,
    /// How the receiving sidecars take connections (default strict).
    pub mtls: Option<MtlsMode>,
    pub authorization: Option<Authorization>,
    /// End users: the tokens requests must carry.
    pub authentication: Option<Authentication>,
}

/// End-user authentication by JSON Web Token (`Authorization: Bearer`).
/// A token that is present is always checked: an invalid one is refused
/// with 401, on every request. On a Gateway's server, `oidc` instead: a
/// browser signs in at an OpenID provider.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Authentication {
    /// Trusted issuers; a token from any of them will do.
    #[serde(default)]
    pub jwt: Vec<JwtIssuer>,
    /// Browser sign-in (a Gateway's servers only).
    pub oidc: Option<crate::oidc::Oidc>,
    /// Requests that must carry a valid token (401 without one); none:
    /// every request.
    #[serde(default)]
    pub require_for: Vec<RequestMatch>,
}

/// One token issuer and how to check its tokens.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtIssuer {
    /// The `iss` claim its tokens carry.
    pub issuer: String,
    /// The token's `aud` must name one of these; none: any audience.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Where the issuer publishes its keys (JWKS); fetched by the
    /// sidecars, cached, and fetched again every `jwksRefresh`.
    pub jwks_uri: Option<String>,
    /// The keys themselves, as a JWKS JSON document.
    pub jwks: Option<String>,
    /// How long fetched keys are kept (default 5m). An issuer must publish
    /// a new key at least this long before it signs with it.
    pub jwks_refresh: Option<String>,
    /// Leeway for `exp` and `nbf` against clock drift (default 60s).
    pub clock_skew: Option<String>,
    /// Claims passed to the app as request headers; a request's own
    /// headers of these names are removed first.
    #[serde(default)]
    pub forward_claims: Vec<ClaimHeader>,
    /// Pass the token itself on to the app (default false: removed).
    #[serde(default)]
    pub forward_token: bool,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClaimHeader {
    /// A top-level claim, or a nested one as `a.b`.
    pub claim: String,
    pub header: String,
}

/// Where a JWKS URI points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksLocation {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

impl JwtIssuer {
    /// The host and port of `jwksUri`, or what is wrong with it.
    pub fn jwks_location(&self) -> Option<Result<JwksLocation, String>> {
        let uri = self.jwks_uri.as_deref()?;
        let parsed = match url::Url::parse(uri) {
            Ok(parsed) => parsed,
            Err(e) => return Some(Err(format!("{uri:?} is not a URL: {e}"))),
        };
        let Some(host) = parsed.host_str() else {
            return Some(Err(format!("{uri:?} names no host")));
        };
        // Keys fetched in the clear could be swapped on the way: plain
        // HTTP only to this host itself (an issuer beside the workload).
        let loopback = host == "localhost"
            || host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        let tls = match parsed.scheme() {
            "https" => true,
            "http" if loopback => false,
            "http" => {
                return Some(Err(format!(
                    "{uri:?}: keys must be fetched over https (plain http only from a loopback address)"
                )));
            }
            other => return Some(Err(format!("scheme {other:?}: use https"))),
        };
        let Some(port) = parsed.port_or_known_default() else {
            return Some(Err(format!("{uri:?} names no port")));
        };
        Some(Ok(JwksLocation {
            tls,
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port,
        }))
    }

    /// `jwksRefresh`, or its default.
    pub fn refresh(&self) -> std::time::Duration {
        self.jwks_refresh
            .as_deref()
            .and_then(|d| humantime::parse_duration(d).ok())
            .unwrap_or(std::time::Duration::from_secs(300))
    }

    /// `clockSkew`, or its default.
    pub fn skew(&self) -> std::time::Duration {
        self.clock_skew
            .as_deref()
            .and_then(|d| humantime::parse_duration(d).ok())
            .unwrap_or(std::time::Duration::from_secs(60))
    }

    fn check(&self, at: &str, problems: &mut Problems) {
        if self.issuer.trim().is_empty() {
            problems.add(field(at, "issuer"), "must not be empty");
        }
        exactly_one(
            at,
            &[
                ("jwksUri", self.jwks_uri.is_some()),
                ("jwks", self.jwks.is_some()),
            ],
            problems,
        );
        if let Some(Err(e)) = self.jwks_location() {
            problems.add(field(at, "jwksUri"), e);
        }
        if let Some(jwks) = &self.jwks {
            let keys = serde_json::from_str::<serde_json::Value>(jwks)
                .map_err(|e| format!("is not JSON: {e}"))
                .and_then(|doc| match doc.get("keys").and_then(|k| k.as_array()) {
                    Some(keys) if !keys.is_empty() => Ok(()),
                    _ => Err("is not a JWKS: it needs a non-empty \"keys\" array".to_string()),
                });
            if let Err(e) = keys {
                problems.add(field(at, "jwks"), e);
            }
        }
        if let Some(refresh) = &self.jwks_refresh {
            if self.jwks.is_some() {
                problems.add(
                    field(at, "jwksRefresh"),
                    "only keys fetched from jwksUri are refreshed",
                );
            }
            duration(refresh, &field(at, "jwksRefresh"), problems);
        }
        if let Some(skew) = &self.clock_skew {
            duration(skew, &field(at, "clockSkew"), problems);
        }
        for (i, audience) in self.audiences.iter().enumerate() {
            if audience.is_empty() {
                problems.add(index(&field(at, "audiences"), i), "must not be empty");
            }
        }
        for (i, forward) in self.forward_claims.iter().enumerate() {
            let here = index(&field(at, "forwardClaims"), i);
            check_claim_name(&forward.claim, &field(&here, "claim"), problems);
            check_header_name(&forward.header, &field(&here, "header"), problems);
            if forward.header == "authorization" || forward.header.starts_with(':') {
                problems.add(
                    field(&here, "header"),
                    format!("{:?} is not a header a claim may set", forward.header),
                );
            }
        }
    }
}

impl Authentication {
    pub(crate) fn check(&self, here: &str, problems: &mut Problems) {
        match (&self.oidc, self.jwt.is_empty()) {
            (None, true) => problems.add(field(here, "jwt"), "name at least one issuer"),
            (Some(_), false) => problems.add(here, "give jwt or oidc, not both"),
            (Some(oidc), true) => {
                oidc.check(&field(here, "oidc"), problems);
                if !self.require_for.is_empty() {
                    problems.add(
                        field(here, "requireFor"),
                        "applies to jwt; with oidc every request needs a session",
                    );
                }
            }
            (None, false) => {}
        }
        let mut issuers = BTreeMap::new();
        for (i, issuer) in self.jwt.iter().enumerate() {
            let issuer_at = index(&field(here, "jwt"), i);
            issuer.check(&issuer_at, problems);
            if let Some(first) = issuers.insert(issuer.issuer.as_str(), i) {
                problems.add(
                    field(&issuer_at, "issuer"),
                    format!("jwt[{first}] already names this issuer"),
                );
            }
        }
        for (i, request) in self.require_for.iter().enumerate() {
            check_match(request, &index(&field(here, "requireFor"), i), problems);
        }
    }
}

/// Claim names: `a` or `a.b.c`, no empty part.
pub(crate) fn check_claim_name(name: &str, at: &str, problems: &mut Problems) {
    if name.is_empty() || name.split('.').any(str::is_empty) {
        problems.add(
            at,
            format!("{name:?} is not a claim name like sub or realm.roles"),
        );
    }
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
pub struct Authorization<Rule = AuthorizationRule> {
    #[serde(default)]
    pub allow: Vec<Rule>,
    #[serde(default)]
    pub deny: Vec<Rule>,
}

impl<Rule> Authorization<Rule> {
    /// Checks each rule with `check(rule, its path)`; an authorization
    /// with no rule at all is refused.
    pub(crate) fn check_rules(
        &self,
        here: &str,
        problems: &mut Problems,
        mut check: impl FnMut(&Rule, &str, &mut Problems),
    ) {
        if self.allow.is_empty() && self.deny.is_empty() {
            problems.add(here, "give at least one allow or deny rule");
        }
        for (list, rules) in [("allow", &self.allow), ("deny", &self.deny)] {
            for (i, rule) in rules.iter().enumerate() {
                check(rule, &index(&field(here, list), i), problems);
            }
        }
    }
}

/// Checks a rule's requests and the claims its token must carry.
pub(crate) fn check_requests_and_claims(
    to: &[RequestMatch],
    claims: &BTreeMap<String, Vec<String>>,
    rule_at: &str,
    problems: &mut Problems,
) {
    for (j, request) in to.iter().enumerate() {
        let request_at = index(&field(rule_at, "to"), j);
        check_match(request, &request_at, problems);
        if !request.query.is_empty() {
            problems.add(
                field(&request_at, "query"),
                "authorization rules cannot match query parameters (routes can)",
            );
        }
    }
    for (claim, values) in claims {
        let claim_at = field(&field(rule_at, "claims"), claim);
        check_claim_name(claim, &claim_at, problems);
        if values.is_empty() {
            problems.add(&claim_at, "give at least one accepted value");
        }
    }
}

/// Matches a request from any of `from` that matches any of `to`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationRule {
    /// Callers, by identity; none: any workload of the trust domain.
    #[serde(default)]
    pub from: Vec<Caller>,
    /// Requests (path, method, headers); none: every request.
    #[serde(default)]
    pub to: Vec<RequestMatch>,
    /// End-user claims the request's token must carry: each named claim
    /// must be (or, for a list, contain) one of its values. Needs
    /// `authentication` for the service.
    #[serde(default)]
    pub claims: BTreeMap<String, Vec<String>>,
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

impl Caller {
    /// Exactly one way of naming callers, each well formed.
    pub(crate) fn check(&self, caller_at: &str, problems: &mut Problems) {
        exactly_one(
            caller_at,
            &[
                ("serviceAccount", self.service_account.is_some()),
                ("namespace", self.namespace.is_some()),
                ("workspace", self.workspace.is_some()),
                ("sameWorkspace", self.same_workspace.is_some()),
            ],
            problems,
        );
        if let Some(sa) = &self.service_account {
            sa.check(&field(caller_at, "serviceAccount"), problems);
        }
        for (name, value) in [
            ("namespace", &self.namespace),
            ("workspace", &self.workspace),
        ] {
            if let Some(value) = value
                && let Err(e) = check_dns_label(value)
            {
                problems.add(field(caller_at, name), e);
            }
        }
        if self.same_workspace == Some(false) {
            problems.add(
                field(caller_at, "sameWorkspace"),
                "only true means something here; leave it out otherwise",
            );
        }
    }
}

impl Spec for SecuritySettingSpec {
    fn check(&self, at: &str, problems: &mut Problems) {
        if let Some(service) = &self.service {
            service.check(&field(at, "service"), problems);
        }
        if let Some(authentication) = &self.authentication {
            authentication.check(&field(at, "authentication"), problems);
            if authentication.oidc.is_some() {
                problems.add(
                    field(&field(at, "authentication"), "oidc"),
                    "browser sign-in is a gateway's: set it on a Gateway's http server",
                );
            }
        }
        let Some(authorization) = &self.authorization else {
            if self.mtls.is_none() && self.authentication.is_none() {
                problems.add(
                    at,
                    "sets nothing: give mtls, authorization or authentication",
                );
            }
            return;
        };
        authorization.check_rules(
            &field(at, "authorization"),
            problems,
            |rule, rule_at, problems| {
                for (j, caller) in rule.from.iter().enumerate() {
                    caller.check(&index(&field(rule_at, "from"), j), problems);
                }
                check_requests_and_claims(&rule.to, &rule.claims, rule_at, problems);
            },
        );
    }
}

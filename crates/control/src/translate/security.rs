//! The inbound side of a service: mutual TLS mode, end-user JWT checks
//! and authorization, from the security settings at the most specific
//! level that sets each (workspace < security group < service). Decided
//! once per service, not once per instance.

use std::collections::BTreeSet;

use weft_api::edge::ConfigError;
use weft_api::security::{Authentication, Caller, MtlsMode, SecuritySettingSpec};

use super::{
    parse::{Config, SecuritySetting, Workspace, error},
    plan::ServiceKey,
    resilience::{millis, single_host_cluster},
    routing::request_match,
};
use crate::proxy::{
    AccessRule, Authorization, CallerId, Cluster, ExternalHost, FixedHost, Jwks, JwtCheck,
    JwtProvider,
};

impl Config {
    /// The security settings that apply to `key`, least specific level
    /// first (workspace, security group, service), with its workspace.
    pub(super) fn security_levels(
        &self,
        key: &ServiceKey,
    ) -> Option<(&Workspace, [Vec<&SecuritySetting>; 3])> {
        let workspace = self.workspace_of(&key.namespace)?;
        let levels = self.levels(
            &self.security_settings,
            &self.security_groups,
            &workspace.path,
            key,
        );
        Some((workspace, levels))
    }

    /// The security setting that decides one part (`part`, read by
    /// `get`) for `key`: the first, by path, of the most specific level
    /// that sets it. Others at that level that set it differently are
    /// reported.
    pub(super) fn deciding<T>(
        &self,
        key: &ServiceKey,
        part: &str,
        get: impl Fn(&SecuritySettingSpec) -> Option<&T>,
        same: impl Fn(&T, &T) -> bool,
        errors: &mut Vec<ConfigError>,
    ) -> Option<&SecuritySetting> {
        let (_, levels) = self.security_levels(key)?;
        let level = levels
            .into_iter()
            .rev()
            .find(|l| l.iter().any(|s| get(&s.spec).is_some()))?;
        let mut set = level
            .into_iter()
            .filter_map(|s| get(&s.spec).map(|value| (s, value)));
        let (first, value) = set.next()?;
        for (other, other_value) in set {
            if !same(value, other_value) {
                errors.push(error(
                    &other.path,
                    &format!("spec.{part}"),
                    format!(
                        "conflicts with {}, which also sets {part} for {}.{}; that one applies",
                        first.path, key.name, key.namespace
                    ),
                ));
            }
        }
        Some(first)
    }

    /// Whether `key`'s sidecars also take plaintext; strict by default.
    pub(super) fn permissive(&self, key: &ServiceKey, errors: &mut Vec<ConfigError>) -> bool {
        self.deciding(key, "mtls", |s| s.mtls.as_ref(), |a, b| a == b, errors)
            .is_some_and(|s| s.spec.mtls == Some(MtlsMode::Permissive))
    }

    /// The end-user token checks of `key`'s sidecars, and the clusters
    /// their key fetches go through.
    pub(super) fn jwt_check(
        &self,
        key: &ServiceKey,
        errors: &mut Vec<ConfigError>,
    ) -> Option<(JwtCheck, Vec<Cluster>)> {
        // Two settings' issuers are never merged: one decides.
        let setting = self.deciding(
            key,
            "authentication",
            |s| s.authentication.as_ref(),
            |_, _| false,
            errors,
        )?;
        let authentication = setting.spec.authentication.as_ref()?;
        Some(token_check(authentication, &setting.path))
    }

    /// Who may call `key`: the most specific level of security settings
    /// with rules decides (workspace < security group < service); with no
    /// setting, nobody.
    pub(super) fn authorization(
        &self,
        trust_domain: &str,
        key: &ServiceKey,
        errors: &mut Vec<ConfigError>,
    ) -> Authorization {
        let Some((workspace, levels)) = self.security_levels(key) else {
            return Authorization::default();
        };
        let Some(level) = levels
            .into_iter()
            .rev()
            .find(|l| l.iter().any(|s| s.spec.authorization.is_some()))
        else {
            return Authorization::default();
        };
        let mut authorization = Authorization::default();
        for setting in level {
            let Some(rules) = &setting.spec.authorization else {
                continue;
            };
            for (list, from, to) in [
                ("deny", &rules.deny, &mut authorization.deny),
                ("allow", &rules.allow, &mut authorization.allow),
            ] {
                for (i, rule) in from.iter().enumerate() {
                    let mut callers = Vec::new();
                    for (j, caller) in rule.from.iter().enumerate() {
                        match self.caller_ids(trust_domain, &workspace.path, caller) {
                            Ok(ids) => callers.extend(ids),
                            Err(message) => errors.push(error(
                                &setting.path,
                                &format!("spec.authorization.{list}[{i}].from[{j}]"),
                                message,
                            )),
                        }
                    }
                    if callers.is_empty() && !rule.from.is_empty() {
                        // Named callers that match nobody here: the rule
                        // must not turn into "anyone".
                        continue;
                    }
                    to.push(AccessRule {
                        name: format!("{}#{list}[{i}]", setting.path),
                        callers,
                        sources: Vec::new(),
                        requests: rule.to.iter().map(request_match).collect(),
                        claims: rule.claims.clone(),
                    });
                }
            }
        }
        authorization
    }

    /// Rules on end-user claims where no setting authenticates end users
    /// match no request: an allow rule then allows nothing, and a deny
    /// rule denies nothing, which is worth a loud warning.
    pub(super) fn report_claims_without_tokens(
        &self,
        key: &ServiceKey,
        authorization: &Authorization,
        errors: &mut Vec<ConfigError>,
    ) {
        for rule in authorization.deny.iter().chain(&authorization.allow) {
            if rule.claims.is_empty() {
                continue;
            }
            let (path, field) = rule.name.split_once('#').unwrap_or((&rule.name, ""));
            errors.push(error(
                path,
                &format!("spec.authorization.{field}.claims"),
                format!(
                    "no setting authenticates end users of {}.{}, so no request has claims: \
                     add authentication to match on them",
                    key.name, key.namespace
                ),
            ));
        }
    }

    /// The SPIFFE IDs a caller entry of a setting in `workspace` stands for.
    pub(super) fn caller_ids(
        &self,
        trust_domain: &str,
        workspace: &str,
        caller: &Caller,
    ) -> Result<Vec<CallerId>, String> {
        if let Some(sa) = &caller.service_account {
            return Ok(vec![CallerId::Exact(format!(
                "spiffe://{trust_domain}/ns/{}/sa/{}",
                sa.namespace, sa.name
            ))]);
        }
        if let Some(namespace) = &caller.namespace {
            return Ok(vec![CallerId::Prefix(format!(
                "spiffe://{trust_domain}/ns/{namespace}/sa/"
            ))]);
        }
        let wanted = match &caller.workspace {
            // A sibling of the setting's workspace, in the same tenant.
            Some(name) => {
                let tenant = workspace.rsplit_once("/workspaces/").map_or("", |(t, _)| t);
                format!("{tenant}/workspaces/{name}")
            }
            None => workspace.to_string(),
        };
        let ws = self
            .workspaces
            .iter()
            .find(|w| w.path == wanted)
            .ok_or_else(|| {
                format!(
                    "workspace {wanted} selects no namespace of cluster {}; it matches no caller here",
                    self.cluster
                )
            })?;
        // Identities name namespaces, not clusters: a workspace's callers
        // are its namespaces wherever they run.
        let namespaces: BTreeSet<&str> = ws
            .selector
            .iter()
            .filter_map(|entry| entry.split_once('/').map(|(_, ns)| ns))
            .collect();
        if namespaces.contains("*") {
            return Ok(vec![CallerId::Prefix(format!(
                "spiffe://{trust_domain}/ns/"
            ))]);
        }
        Ok(namespaces
            .into_iter()
            .map(|ns| CallerId::Prefix(format!("spiffe://{trust_domain}/ns/{ns}/sa/")))
            .collect())
    }
}

/// The token check `authentication` (of the resource at `path`) asks
/// for, and the clusters its issuers' keys are fetched through. Providers
/// are named after the resource, so a refusal can be traced to it.
pub(super) fn token_check(authentication: &Authentication, path: &str) -> (JwtCheck, Vec<Cluster>) {
    let mut providers = Vec::new();
    let mut clusters = Vec::new();
    for (i, issuer) in authentication.jwt.iter().enumerate() {
        let jwks = match (&issuer.jwks, &issuer.jwks_uri, issuer.jwks_location()) {
            (Some(doc), _, _) => Jwks::Inline(doc.clone()),
            (None, Some(uri), Some(Ok(location))) => {
                let cluster = format!("jwks|{}:{}", location.host, location.port);
                if !clusters.iter().any(|c: &Cluster| c.name == cluster) {
                    clusters.push(Cluster {
                        fixed: Some(FixedHost::External(ExternalHost {
                            host: location.host,
                            port: location.port,
                            tls: location.tls,
                        })),
                        ..single_host_cluster(&cluster)
                    });
                }
                Jwks::Remote {
                    uri: uri.clone(),
                    cluster,
                    refresh_ms: millis(issuer.refresh()),
                }
            }
            // Refused when stored; an issuer without keys is skipped,
            // which leaves its tokens refused.
            _ => continue,
        };
        providers.push(JwtProvider {
            name: format!("{path}#jwt[{i}]"),
            issuer: issuer.issuer.clone(),
            audiences: issuer.audiences.clone(),
            jwks,
            clock_skew_s: issuer.skew().as_secs() as u32,
            forward_claims: issuer
                .forward_claims
                .iter()
                .map(|f| (f.claim.clone(), f.header.clone()))
                .collect(),
            forward_token: issuer.forward_token,
        });
    }
    (
        JwtCheck {
            providers,
            required_for: authentication
                .require_for
                .iter()
                .map(request_match)
                .collect(),
        },
        clusters,
    )
}

/// What the sidecars of one service check on every request they take:
/// decided once per service, not once per instance.
pub(super) struct InboundPlan {
    pub(super) permissive: bool,
    pub(super) jwt: Option<JwtCheck>,
    /// Where the token issuers' keys are fetched from.
    pub(super) jwks_clusters: Vec<Cluster>,
    pub(super) authorization: Option<Authorization>,
}

impl InboundPlan {
    pub(super) fn new(
        config: &Config,
        key: &ServiceKey,
        errors: &mut Vec<ConfigError>,
    ) -> InboundPlan {
        let Some(trust_domain) = &config.trust_domain else {
            return InboundPlan {
                permissive: false,
                jwt: None,
                jwks_clusters: Vec::new(),
                authorization: None,
            };
        };
        let jwt = config.jwt_check(key, errors);
        let authorization = config.authorization(trust_domain, key, errors);
        if jwt.is_none() {
            config.report_claims_without_tokens(key, &authorization, errors);
        }
        let (jwt, jwks_clusters) = match jwt {
            Some((check, clusters)) => (Some(check), clusters),
            None => (None, Vec::new()),
        };
        InboundPlan {
            permissive: config.permissive(key, errors),
            jwt,
            jwks_clusters,
            authorization: Some(authorization),
        }
    }
}

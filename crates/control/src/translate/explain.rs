//! `weft explain`: one request from one caller, followed through what
//! translation gives the proxies: the caller's outbound route table
//! (which virtual host, which route, which destinations and weights), the
//! endpoint sets behind them (localities by priority: the failover
//! order), and the inbound side of the service called (token check and
//! authorization, decided as in translation: once per service). The
//! settings are the merged ones translation used, each with the resource
//! it comes from.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;
use weft_agent::workload::{Role, Workload};
use weft_api::Resource;
use weft_api::explain::{
    AppliedSetting, ExplainRequest, ExplainedAuthentication, ExplainedAuthorization,
    ExplainedCaller, ExplainedRoute, Explanation, Failover, FailoverLocality, Verdict,
    WeightedDestination,
};
use weft_api::security::MtlsMode;

use super::parse::Config;
use super::plan::{ServiceKey, ServicePlan};
use super::routing::UNKNOWN_HOST;
use super::security::InboundPlan;
use super::{OUTBOUND, translate};
use crate::directory::Directory;
use crate::proxy::evaluate::{Decision, Request};
use crate::proxy::{Action, Endpoints, Forward, HashOn};

/// Why a question cannot be answered.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("{0}")]
    UnknownCaller(String),
    #[error("{0}")]
    NotACaller(String),
}

/// The node id of the proxy explain imagines for a service account no
/// running proxy has.
const IMAGINED: &str = "weft-explain";

/// Follows `question` through the translation of `config`, `workloads`
/// and `directory` (`resources`: what `config` was parsed from, for the
/// settings' values).
pub fn explain(
    config: &Config,
    resources: &[Resource],
    workloads: &[Workload],
    directory: &Directory,
    question: &ExplainRequest,
) -> Result<Explanation, ExplainError> {
    let (caller, imagined) = find_caller(workloads, &question.from)?;
    let mut all: Vec<Workload> = workloads.to_vec();
    all.extend(imagined);
    let translation = translate(config, &all, directory);
    let node = caller.node.clone();
    let proxy = translation.proxy_config(&node).unwrap_or_default();
    let identity = config.trust_domain.as_ref().map(|td| {
        format!(
            "spiffe://{td}/ns/{}/sa/{}",
            caller.namespace, caller.service_account
        )
    });
    let mut explanation = Explanation {
        caller: ExplainedCaller {
            node: (node != IMAGINED).then_some(node),
            namespace: caller.namespace.clone(),
            service_account: caller.service_account.clone(),
            identity: identity.clone(),
            workspace: config
                .workspace_of(&caller.namespace)
                .map(|w| w.path.clone()),
        },
        cluster: config.cluster.clone(),
        verdict: Verdict {
            outcome: String::new(),
            status: None,
            summary: String::new(),
        },
        service: None,
        route: None,
        settings: Vec::new(),
        failover: Vec::new(),
        authentication: None,
        authorization: None,
        notes: Vec::new(),
    };
    if explanation.caller.node.is_none() {
        explanation.notes.push(format!(
            "no proxy runs as {}/{} in {}: this is what one would get",
            caller.namespace, caller.service_account, config.cluster
        ));
    }
    let mut request = Request {
        method: question.method.to_ascii_uppercase(),
        path: question.path.clone(),
        host: without_port(&question.host).to_string(),
        headers: question
            .headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect(),
        principal: identity,
        claims: question.claims.clone(),
    };
    let Some(table) = proxy.routes.iter().find(|t| t.name == OUTBOUND) else {
        return Ok(explanation.answer("not-found", Some(404), "the caller has no outbound side"));
    };
    let Some(host) = table.virtual_host(&request.host) else {
        return Ok(explanation.answer(
            "not-found",
            Some(404),
            format!("no route for host {}", request.host),
        ));
    };
    let Some((index, route)) = host.route(&request) else {
        return Ok(explanation.answer(
            "not-found",
            Some(404),
            format!("no route of {} matches", host.name),
        ));
    };
    let forward = match &route.action {
        Action::DirectResponse { status, body } => {
            let status = u16::try_from(*status).ok();
            let outcome = if host.name == UNKNOWN_HOST {
                "not-found"
            } else {
                "direct-response"
            };
            return Ok(explanation.answer(outcome, status, body.trim_end()));
        }
        Action::Redirect(_) => {
            return Ok(explanation.answer("redirect", None, "the caller's proxy redirects it"));
        }
        Action::Forward(forward) => forward,
    };
    explanation.route = Some(explained_route(index, route.name.clone(), forward));
    explanation.failover = forward
        .clusters
        .keys()
        .filter_map(|cluster| proxy.endpoints.iter().find(|e| e.cluster == *cluster))
        .map(failover)
        .collect();
    let Some((key, _)) = forward
        .clusters
        .keys()
        .find_map(|c| ServiceKey::from_cluster_name(c))
    else {
        let to = forward
            .clusters
            .keys()
            .cloned()
            .collect::<Vec<_>>()
            .join(", ");
        return Ok(explanation.answer(
            "forwarded",
            None,
            format!(
                "{} is no mesh service: the request goes to {to}",
                request.host
            ),
        ));
    };
    explanation.service = Some(key.id());
    let mut ignored = Vec::new();
    let instances: Vec<&Workload> = all
        .iter()
        .filter(|w| w.is_instance() && w.namespace == key.namespace && w.service == key.name)
        .collect();
    let local = !instances.is_empty();
    let plan = ServicePlan::new(config, directory, key.clone(), instances, &mut ignored);
    explanation.settings = traffic_settings(resources, &plan);
    if !local {
        explanation.notes.push(format!(
            "{} has no instance in {}: its own proxies, elsewhere, decide who may call it, \
             by the configuration they share with this cluster",
            key.id(),
            config.cluster
        ));
    }

    // The service's side: its token check, then its authorization.
    let inbound = InboundPlan::new(config, &key, &mut ignored);
    if let Some(setting) = config.deciding(
        &key,
        "mtls",
        |s| s.mtls.as_ref(),
        |a, b| a == b,
        &mut ignored,
    ) {
        let mode = if setting.spec.mtls == Some(MtlsMode::Permissive) {
            "PERMISSIVE"
        } else {
            "STRICT"
        };
        explanation.settings.push(AppliedSetting {
            part: "mtls".into(),
            from: setting.path.clone(),
            value: Value::String(mode.into()),
        });
    }
    match &inbound.jwt {
        Some(check) => {
            let from = config
                .deciding(
                    &key,
                    "authentication",
                    |s| s.authentication.as_ref(),
                    |_, _| false,
                    &mut ignored,
                )
                .map(|s| s.path.clone())
                .unwrap_or_default();
            let required = check.requires_token(&request);
            let token = request.claims.is_some();
            explanation.authentication = Some(ExplainedAuthentication {
                from,
                required,
                token,
            });
            if token {
                let issuers: Vec<&str> =
                    check.providers.iter().map(|p| p.issuer.as_str()).collect();
                explanation.notes.push(format!(
                    "the token is taken to be valid: signed by {} for an audience it accepts, not expired",
                    issuers.join(" or ")
                ));
            } else if required {
                return Ok(explanation.answer(
                    "unauthenticated",
                    Some(401),
                    format!(
                        "{} needs a valid end-user token for this request and it carries none",
                        key.id()
                    ),
                ));
            }
        }
        None => {
            if request.claims.take().is_some() {
                explanation.notes.push(format!(
                    "no setting authenticates end users of {}: the token is not checked and rules cannot see its claims",
                    key.id()
                ));
            }
        }
    }
    let Some(authorization) = &inbound.authorization else {
        return Ok(explanation.answer(
            "forwarded",
            None,
            format!(
                "{} takes it: without a trust domain nothing is authorized",
                key.id()
            ),
        ));
    };
    let settings: BTreeSet<String> = authorization
        .deny
        .iter()
        .chain(&authorization.allow)
        .map(|r| {
            r.name
                .split_once('#')
                .map_or(r.name.as_str(), |(p, _)| p)
                .to_string()
        })
        .collect();
    let decision = authorization.decide(&request);
    let (allowed, rule) = match &decision {
        Decision::Denied(rule) => (false, Some(rule.clone())),
        Decision::Allowed(rule) => (true, Some(rule.clone())),
        Decision::NotAllowed => (false, None),
    };
    explanation.authorization = Some(ExplainedAuthorization {
        allowed,
        rule: rule.clone(),
        settings: settings.into_iter().collect(),
    });
    Ok(match decision {
        Decision::Denied(rule) => explanation.answer(
            "denied",
            Some(403),
            format!("{} refuses it: deny rule {rule} matches", key.id()),
        ),
        Decision::NotAllowed if authorization.allow.is_empty() => explanation.answer(
            "denied",
            Some(403),
            format!(
                "{} refuses it: no SecuritySetting allows anyone to call it",
                key.id()
            ),
        ),
        Decision::NotAllowed => explanation.answer(
            "denied",
            Some(403),
            format!(
                "{} refuses it: no allow rule matches this caller and request",
                key.id()
            ),
        ),
        Decision::Allowed(rule) => explanation.answer(
            "forwarded",
            None,
            format!("{} takes it: allow rule {rule} matches", key.id()),
        ),
    })
}

/// The caller's workload, and the one imagined for a service account no
/// proxy runs as.
fn find_caller(
    workloads: &[Workload],
    from: &str,
) -> Result<(Workload, Option<Workload>), ExplainError> {
    if let Some(w) = workloads.iter().find(|w| w.node == from) {
        if w.role != Role::Sidecar || w.outbound_port.is_none() {
            return Err(ExplainError::NotACaller(format!(
                "{from} is a {} proxy that calls no services for an app: explain follows calls made through sidecars",
                w.role.as_str()
            )));
        }
        return Ok((w.clone(), None));
    }
    let Some((namespace, account)) = from.split_once('/') else {
        return Err(ExplainError::UnknownCaller(format!(
            "no proxy {from:?} is registered: name a node id, or NAMESPACE/SERVICE_ACCOUNT"
        )));
    };
    let running = workloads
        .iter()
        .filter(|w| w.role == Role::Sidecar && w.outbound_port.is_some())
        .filter(|w| w.namespace == namespace && w.service_account == account)
        .min_by(|a, b| a.node.cmp(&b.node));
    if let Some(w) = running {
        return Ok((w.clone(), None));
    }
    let imagined = Workload {
        node: IMAGINED.into(),
        service: account.into(),
        namespace: namespace.into(),
        service_account: account.into(),
        labels: BTreeMap::new(),
        address: "127.0.0.1".into(),
        port: 0,
        app_port: None,
        outbound_port: Some(0),
        role: Role::Sidecar,
        calls: Vec::new(),
    };
    Ok((imagined.clone(), Some(imagined)))
}

/// `host` without a `:port` (`[v6]:port` too), as the proxies route it.
fn without_port(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !name.ends_with(':') => {
            name
        }
        _ => host,
    }
}

fn explained_route(index: usize, name: Option<String>, forward: &Forward) -> ExplainedRoute {
    ExplainedRoute {
        name,
        index,
        destinations: forward
            .clusters
            .iter()
            .map(|(cluster, weight)| WeightedDestination {
                cluster: cluster.clone(),
                subset: ServiceKey::from_cluster_name(cluster)
                    .and_then(|(_, subset)| subset.map(str::to_string)),
                weight: *weight,
            })
            .collect(),
        timeout_ms: forward.timeout_ms.filter(|t| *t > 0),
        retries: forward
            .retries
            .as_ref()
            .map(|r| format!("{} attempts on {}", r.attempts, r.retry_on)),
        sticky_on: forward.hash_on.as_ref().map(|h| match h {
            HashOn::Header(name) => format!("header {name}"),
            HashOn::Cookie { name, .. } => format!("cookie {name}"),
        }),
    }
}

/// One endpoint set's localities, by priority.
fn failover(endpoints: &Endpoints) -> Failover {
    let mut localities = Vec::new();
    if !endpoints.endpoints.is_empty() {
        localities.push(FailoverLocality {
            priority: 0,
            cluster: endpoints.site.clone(),
            region: String::new(),
            zone: String::new(),
            addresses: endpoints
                .endpoints
                .iter()
                .map(|a| format!("{}:{}", a.address, a.port))
                .collect(),
            through_gateway: false,
        });
    }
    localities.extend(endpoints.remote.iter().map(|r| {
        FailoverLocality {
            priority: r.priority,
            cluster: r.cluster.clone(),
            region: r.region.clone(),
            zone: r.zone.clone(),
            addresses: r
                .gateways
                .iter()
                .map(|a| format!("{}:{}", a.address, a.port))
                .collect(),
            through_gateway: true,
        }
    }));
    localities.sort_by_key(|l| l.priority);
    Failover {
        cluster: endpoints.cluster.clone(),
        localities,
    }
}

/// The TrafficSettings' parts that apply to the service, each with the
/// value its resource gives.
fn traffic_settings(resources: &[Resource], plan: &ServicePlan) -> Vec<AppliedSetting> {
    plan.policy
        .sources
        .iter()
        .map(|(part, path)| AppliedSetting {
            part: (*part).to_string(),
            from: path.clone(),
            value: spec_at(resources, path)
                .and_then(|spec| spec.get(*part).cloned())
                .unwrap_or(Value::Null),
        })
        .collect()
}

/// The spec of the resource at `path`.
fn spec_at<'r>(resources: &'r [Resource], path: &str) -> Option<&'r Value> {
    let name = path.rsplit('/').next()?;
    resources
        .iter()
        .filter(|r| r.metadata.name == name)
        .find(|r| {
            serde_json::to_value(r)
                .ok()
                .and_then(|doc| weft_api::validate(&doc).ok())
                .is_some_and(|v| v.path == path)
        })
        .map(|r| &r.spec)
}

//! `weft explain FROM TARGET`: what the mesh does with one request, and
//! why. Asked of the cluster's edge through the server (`POST
//! /v1/explain/{cluster}`), or worked out here from manifests (`-f`),
//! with the same translation the edge runs.

use std::collections::BTreeMap;
use std::fmt::Write;

use base64::Engine;
use serde_json::Value;
use weft_api::explain::{ExplainRequest, Explanation};
use weft_control::translate::{ExplainError, explain};

use crate::client::{CliError, Client, Exit};
use crate::output::{Format, json, yaml};
use crate::translate::{Inputs, Loaded};

#[derive(Debug, clap::Args)]
pub struct ExplainArgs {
    /// The caller: a proxy's node id, or NAMESPACE/SERVICE_ACCOUNT
    pub from: String,
    /// What it calls: HOST[:PORT][/PATH[?QUERY]] (or an http:// URL)
    pub target: String,
    /// The request's method
    #[arg(short = 'X', long, default_value = "GET")]
    pub method: String,
    /// A request header, `NAME: VALUE` (repeat for more)
    #[arg(short = 'H', long = "header")]
    pub headers: Vec<String>,
    /// A claim of the request's end-user token, `NAME=VALUE`, taken to be
    /// valid (repeat; a claim given twice is a list)
    #[arg(long = "claim")]
    pub claims: Vec<String>,
    /// The request's end-user token (JWT): its claims are read, not
    /// verified (the service's proxies verify it)
    #[arg(long)]
    pub jwt: Option<String>,
    /// Offline: the cluster's configuration and registry from files
    /// (-f, --registry, --directory); without -f, the live cluster's edge
    /// answers through the server
    #[command(flatten)]
    pub inputs: Inputs,
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

pub async fn run(client: Option<&Client>, args: ExplainArgs) -> Result<(), CliError> {
    let question = question(&args)?;
    if let Err(problems) = question.check() {
        let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
        return Err(CliError::new(Exit::Invalid, lines.join("; ")));
    }
    let explanation: Explanation = match client {
        Some(client) => {
            let cluster = percent_encoding::utf8_percent_encode(
                &args.inputs.cluster,
                percent_encoding::NON_ALPHANUMERIC,
            );
            client
                .send(
                    reqwest::Method::POST,
                    &format!("explain/{cluster}"),
                    Some(&question),
                )
                .await?
        }
        None => {
            let Loaded {
                config,
                resources,
                workloads,
                directory,
            } = args.inputs.load()?;
            explain(&config, &resources, &workloads, &directory, &question).map_err(|e| {
                let exit = match e {
                    ExplainError::UnknownCaller(_) => Exit::NotFound,
                    ExplainError::NotACaller(_) => Exit::Invalid,
                };
                CliError::new(exit, e.to_string())
            })?
        }
    };
    match args.format {
        Format::Table => print!("{}", render(&question, &explanation)),
        Format::Json => print!("{}", json(&explanation)),
        Format::Yaml => print!("{}", yaml(&explanation)),
    }
    Ok(())
}

/// The request the arguments describe.
fn question(args: &ExplainArgs) -> Result<ExplainRequest, CliError> {
    let invalid = |message: String| CliError::new(Exit::Invalid, message);
    let target = args
        .target
        .strip_prefix("http://")
        .or_else(|| args.target.strip_prefix("https://"))
        .unwrap_or(&args.target);
    let (host, path) = match target.find(['/', '?']) {
        Some(at) if target[at..].starts_with('/') => (&target[..at], target[at..].to_string()),
        Some(at) => (&target[..at], format!("/{}", &target[at..])),
        None => (target, "/".to_string()),
    };
    let mut headers = BTreeMap::new();
    for header in &args.headers {
        let (name, value) = header
            .split_once(':')
            .ok_or_else(|| invalid(format!("-H {header:?}: write NAME: VALUE")))?;
        headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
    }
    let mut claims: Option<BTreeMap<String, Vec<String>>> = None;
    if let Some(token) = &args.jwt {
        claims = Some(token_claims(token).map_err(|e| invalid(format!("--jwt: {e}")))?);
    }
    for claim in &args.claims {
        let (name, value) = claim
            .split_once('=')
            .ok_or_else(|| invalid(format!("--claim {claim:?}: write NAME=VALUE")))?;
        claims
            .get_or_insert_default()
            .entry(name.to_string())
            .or_default()
            .push(value.to_string());
    }
    Ok(ExplainRequest {
        from: args.from.clone(),
        host: host.to_string(),
        method: args.method.clone(),
        path,
        headers,
        claims,
    })
}

/// The claims in a JWT's payload, unverified: nested objects as `a.b`,
/// lists as several values.
fn token_claims(token: &str) -> Result<BTreeMap<String, Vec<String>>, String> {
    let payload = token
        .split('.')
        .nth(1)
        .ok_or("not a JWT (HEADER.PAYLOAD.SIGNATURE)")?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|e| format!("its payload is not base64url: {e}"))?;
    let payload: Value =
        serde_json::from_slice(&bytes).map_err(|e| format!("its payload is not JSON: {e}"))?;
    let Value::Object(fields) = payload else {
        return Err("its payload is not a JSON object".into());
    };
    let mut claims = BTreeMap::new();
    flatten("", &Value::Object(fields), &mut claims);
    Ok(claims)
}

fn flatten(prefix: &str, value: &Value, claims: &mut BTreeMap<String, Vec<String>>) {
    let scalar = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(_) | Value::Bool(_) => Some(v.to_string()),
        _ => None,
    };
    match value {
        Value::Object(fields) => {
            for (name, inner) in fields {
                let name = if prefix.is_empty() {
                    name.clone()
                } else {
                    format!("{prefix}.{name}")
                };
                flatten(&name, inner, claims);
            }
        }
        Value::Array(items) => {
            let values: Vec<String> = items.iter().filter_map(scalar).collect();
            claims.insert(prefix.to_string(), values);
        }
        other => {
            if let Some(v) = scalar(other) {
                claims.insert(prefix.to_string(), vec![v]);
            }
        }
    }
}

fn render(question: &ExplainRequest, e: &Explanation) -> String {
    let mut out = String::new();
    let mut line = |label: &str, text: String| {
        let _ = writeln!(out, "{label:<14}{text}");
    };
    let caller = &e.caller;
    let who = match (&caller.node, &caller.identity) {
        (Some(node), Some(id)) => format!(" (proxy {node}, {id})"),
        (Some(node), None) => format!(" (proxy {node})"),
        (None, Some(id)) => format!(" (no proxy runs as it; {id})"),
        (None, None) => " (no proxy runs as it)".into(),
    };
    line(
        "request",
        format!(
            "{} {}{} from {}/{}{who} in {}",
            question.method,
            question.host,
            question.path,
            caller.namespace,
            caller.service_account,
            e.cluster
        ),
    );
    let status = e
        .verdict
        .status
        .map(|s| format!(" {s}"))
        .unwrap_or_default();
    line(
        "verdict",
        format!("{}{status}: {}", e.verdict.outcome, e.verdict.summary),
    );
    if let Some(service) = &e.service {
        line("service", service.clone());
    }
    if let Some(route) = &e.route {
        let name = route.name.clone().unwrap_or_else(|| {
            "every request to all instances (no rule of a ServiceRoute matches)".into()
        });
        line("route", format!("#{} {name}", route.index));
        for d in &route.destinations {
            let subset = d
                .subset
                .as_ref()
                .map(|s| format!(" (subset {s})"))
                .unwrap_or_default();
            line("", format!("{:>3}% {}{subset}", d.weight, d.cluster));
        }
        let mut traits = Vec::new();
        if let Some(ms) = route.timeout_ms {
            traits.push(format!("timeout {ms} ms"));
        }
        if let Some(retries) = &route.retries {
            traits.push(format!("retries: {retries}"));
        }
        if let Some(sticky) = &route.sticky_on {
            traits.push(format!("sticky on {sticky}"));
        }
        if !traits.is_empty() {
            line("", traits.join(", "));
        }
    }
    for (i, s) in e.settings.iter().enumerate() {
        let value = match &s.value {
            Value::String(text) => text.clone(),
            other => other.to_string(),
        };
        line(
            if i == 0 { "settings" } else { "" },
            format!("{} = {value}  from {}", s.part, s.from),
        );
    }
    for f in &e.failover {
        line("failover", f.cluster.clone());
        for l in &f.localities {
            let place: Vec<&str> = [l.region.as_str(), l.zone.as_str()]
                .into_iter()
                .filter(|p| !p.is_empty())
                .collect();
            let place = if place.is_empty() {
                String::new()
            } else {
                format!(" ({})", place.join("/"))
            };
            let how = if l.through_gateway {
                "through its east-west gateway "
            } else {
                ""
            };
            line(
                "",
                format!(
                    "priority {}: {}{place} {how}{}",
                    l.priority,
                    l.cluster,
                    l.addresses.join(", ")
                ),
            );
        }
    }
    if let Some(a) = &e.authentication {
        let need = if a.required {
            "required"
        } else {
            "checked when carried"
        };
        let carried = if a.token { "carried" } else { "none carried" };
        line("token", format!("{need}, {carried}  from {}", a.from));
    }
    if let Some(a) = &e.authorization {
        let verdict = match (&a.rule, a.allowed) {
            (Some(rule), true) => format!("allowed by {rule}"),
            (Some(rule), false) => format!("denied by {rule}"),
            (None, _) if a.settings.is_empty() => {
                "denied: no SecuritySetting allows any caller".into()
            }
            (None, _) => "denied: no allow rule matches".into(),
        };
        line("authorization", verdict);
        for s in &a.settings {
            line("", format!("rules of {s}"));
        }
    }
    for note in &e.notes {
        line("note", note.clone());
    }
    out
}

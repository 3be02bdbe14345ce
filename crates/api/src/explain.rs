//! `weft explain`: a request from a caller, and what the mesh does with
//! it. The question and the answer travel between the CLI, the server
//! and an edge in these shapes; the edge (or the CLI, offline) works the
//! answer out from the same translation that configures the proxies.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::problems::{field, index};
use crate::traffic::check_header_name;
use crate::{Problem, Problems};

/// One request from one caller.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExplainRequest {
    /// The caller: a proxy's node id, or `NAMESPACE/SERVICE_ACCOUNT` (a
    /// proxy running as it, or one that would).
    pub from: String,
    /// The host called, as the app puts it in `Host` (a port is ignored,
    /// as the proxies ignore it).
    pub host: String,
    #[serde(default = "default_method")]
    pub method: String,
    /// The path, with its query string.
    #[serde(default = "default_path")]
    pub path: String,
    /// Request headers by lowercase name.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The claims of the request's end-user token, taken to be valid
    /// (each claim's values; a list claim has several). None: the request
    /// carries no token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claims: Option<BTreeMap<String, Vec<String>>>,
}

fn default_method() -> String {
    "GET".into()
}

fn default_path() -> String {
    "/".into()
}

impl ExplainRequest {
    /// Every problem with the question, by field.
    pub fn check(&self) -> Result<(), Vec<Problem>> {
        let mut problems = Problems::default();
        if self.from.is_empty() {
            problems.add(
                "from",
                "name a proxy's node id or NAMESPACE/SERVICE_ACCOUNT",
            );
        }
        if self.host.is_empty() || self.host.contains(['/', ' ']) {
            problems.add("host", format!("{:?} is not a host name", self.host));
        }
        let token = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        };
        if !token(&self.method) {
            problems.add("method", format!("{:?} is not an HTTP method", self.method));
        }
        if !self.path.starts_with('/') {
            problems.add("path", format!("{:?} must start with /", self.path));
        }
        for name in self.headers.keys() {
            check_header_name(name, &field("headers", name), &mut problems);
        }
        for (claim, values) in self.claims.iter().flatten() {
            if claim.is_empty() {
                problems.add("claims", "a claim needs a name");
            }
            if values.is_empty() {
                problems.add(field("claims", claim), "give at least one value");
            }
            for (i, value) in values.iter().enumerate() {
                if value.is_empty() {
                    problems.add(index(&field("claims", claim), i), "must not be empty");
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.into_vec())
        }
    }
}

/// What the mesh does with the request, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Explanation {
    pub caller: ExplainedCaller,
    /// The cluster whose configuration and registry answered.
    pub cluster: String,
    /// What happens, in one line.
    pub verdict: Verdict,
    /// The service the host names (`name.namespace`), when the caller
    /// reaches one by that name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// The caller's route that matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<ExplainedRoute>,
    /// The settings that apply to the call, each with where it comes from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub settings: Vec<AppliedSetting>,
    /// For each destination, where its requests go, nearest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failover: Vec<Failover>,
    /// The end-user token check of the service called.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication: Option<ExplainedAuthentication>,
    /// Whether the service called lets the request in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization: Option<ExplainedAuthorization>,
    /// What the answer assumes, or what else is worth knowing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

impl Explanation {
    /// The explanation with its verdict.
    pub fn answer(
        mut self,
        outcome: &str,
        status: Option<u16>,
        summary: impl Into<String>,
    ) -> Self {
        self.verdict = Verdict {
            outcome: outcome.into(),
            status,
            summary: summary.into(),
        };
        self
    }
}

/// Who calls.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExplainedCaller {
    /// The proxy whose routes were followed; none when no proxy runs as
    /// the service account (the answer is for one that would).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    pub namespace: String,
    pub service_account: String,
    /// Its SPIFFE ID, as the service called sees it over mutual TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Verdict {
    /// `forwarded`, or how the mesh answers itself: `not-found`,
    /// `unauthenticated`, `denied`, `direct-response`, `redirect`.
    pub outcome: String,
    /// The status the mesh answers with, when it answers itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    pub summary: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExplainedRoute {
    /// Where the route comes from (`PATH#spec.rules[i].matches[j]`), as
    /// the proxies' request logs name it; none for the route every
    /// service has last (all instances).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Its place in the service's routes, from 0.
    pub index: usize,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destinations: Vec<WeightedDestination>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Retries: attempts and on what.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<String>,
    /// What a sticky session hashes on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky_on: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WeightedDestination {
    /// The proxy's cluster (`out|NAME.NAMESPACE[|SUBSET]`).
    pub cluster: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,
    /// Percent of the route's requests.
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppliedSetting {
    /// The setting's field (`timeout`, `retries`, `mtls`, …).
    pub part: String,
    /// The resource it comes from.
    pub from: String,
    /// Its value there.
    pub value: serde_json::Value,
}

/// Where one destination's requests go: the localities by priority.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Failover {
    pub cluster: String,
    pub localities: Vec<FailoverLocality>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FailoverLocality {
    /// 0 first; the next only while those before it are unhealthy.
    pub priority: u32,
    /// The weft cluster that serves it.
    pub cluster: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub region: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub zone: String,
    /// The instances' addresses here, or the other cluster's east-west
    /// gateways.
    pub addresses: Vec<String>,
    /// Reached through the other cluster's east-west gateway.
    pub through_gateway: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExplainedAuthentication {
    /// The SecuritySetting whose `authentication` applies.
    pub from: String,
    /// Whether this request must carry a valid token.
    pub required: bool,
    /// Whether it carries one (claims were given).
    pub token: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExplainedAuthorization {
    pub allowed: bool,
    /// The rule that decides (`PATH#deny[i]` or `PATH#allow[i]`, as the
    /// proxies' refusals name it); none when no rule matches (nothing
    /// allowed is refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// The SecuritySettings whose rules decide (the most specific level
    /// that has any); none: nobody is allowed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub settings: Vec<String>,
}

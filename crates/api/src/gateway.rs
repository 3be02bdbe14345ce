//! The Gateway kind: the mesh's front door. One kind describes ingress,
//! tier-1 and (later) egress alike: which gateway workloads run it, and
//! its servers — `http` (with or without TLS, with ordered routing rules),
//! `tlsPassthrough` (by SNI) and `tcp` — each leading to mesh services or,
//! for tier-1, to other clusters' ingress gateways. Gateway editors own it
//! (it sits in a GatewayGroup).
//!
//! Matching follows Envoy's semantics: on one port, an exact hostname wins
//! over a wildcard (`*.example.com` matches one or more labels before
//! `example.com`, never `example.com` itself); within a server, routes are
//! tried in order and the first match wins.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use crate::problems::{Problems, check_dns_label, check_dns_name, field, index};
use crate::ratelimit::{DimensionOf, RateLimiting};
use crate::security::{Authentication, Authorization, Caller, check_requests_and_claims};
use crate::specs::Spec;
use crate::traffic::{
    Method, RequestMatch, Retries, check_header_name, check_match, duration, exactly_one,
    namespace_within,
};

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewaySpec {
    /// The gateway workloads that run it.
    pub workload_selector: WorkloadSelector,
    /// HTTP servers, TLS-terminated or not.
    #[serde(default)]
    pub http: Vec<HttpServer>,
    /// TLS passed through to a mesh service, chosen by SNI.
    #[serde(default)]
    pub tls_passthrough: Vec<PassthroughServer>,
    /// Plain TCP to a mesh service: a whole port each.
    #[serde(default)]
    pub tcp: Vec<TcpServer>,
    /// External hosts that callers in the mesh reach through this
    /// gateway (it needs `weft gateway --mesh-port`): the sidecars of its
    /// workspace send every name that is not a mesh service here, over
    /// mutual TLS, and the gateway lets through only the callers each
    /// host lists; everything else gets a 403 naming the rule.
    #[serde(default)]
    pub egress: Vec<EgressHost>,
}

/// One external host and who may reach it.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EgressHost {
    /// The name callers use (their requests' Host), a DNS name.
    pub host: String,
    /// Its port [default: 443 with `tls`, else 80].
    pub port: Option<u16>,
    /// The gateway speaks TLS to it (checking its certificate against
    /// the system's roots); callers send plain HTTP inside the mesh.
    #[serde(default)]
    pub tls: bool,
    /// Who may reach it, named as in SecuritySetting rules.
    #[schemars(length(min = 1))]
    pub from: Vec<Caller>,
}

impl EgressHost {
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(if self.tls { 443 } else { 80 })
    }
}

/// Gateway workloads (`weft gateway`) in `namespace` carrying all of
/// `labels`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkloadSelector {
    pub namespace: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpServer {
    /// Unique in the gateway; it names the server in metrics.
    pub name: String,
    pub port: u16,
    /// `shop.example.com`, or `*.example.com` for its subdomains.
    pub hostname: String,
    /// Terminate TLS (HTTPS); none: plain HTTP.
    pub tls: Option<ServerTls>,
    /// End users: the tokens requests must carry (as in SecuritySetting).
    pub authentication: Option<Authentication>,
    /// Who may come in: refused (403) if a deny rule matches; else, if
    /// there are allow rules, one must match. None: anyone (the services
    /// behind still decide whether the gateway may call them).
    pub authorization: Option<Authorization<GatewayRule>>,
    /// Tried in order; the first that matches decides.
    #[schemars(length(min = 1))]
    pub routes: Vec<GatewayRoute>,
    /// How many requests the server takes.
    pub rate_limiting: Option<RateLimiting>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// The gateway shows its certificate; clients need none.
    #[default]
    Simple,
    /// Clients must show a certificate signed by `clientCa`.
    Mutual,
}

/// The certificates live on the gateway's host, never in weft's store:
/// `NAME.crt` and `NAME.key` in the gateway's certificate directory.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerTls {
    #[serde(default)]
    pub mode: TlsMode,
    /// The server certificate's name (a DNS name, also its file name).
    pub certificate: String,
    /// For `mutual`: the CA bundle's name (file `NAME.crt`).
    pub client_ca: Option<String>,
}

/// One routing rule: when it matches, what happens. Set exactly one of
/// `to`, `clusters`, `anyCluster`, `redirect` and `directResponse`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayRoute {
    /// The route applies when any of these matches (none: always).
    #[serde(default)]
    pub matches: Vec<RequestMatch>,
    /// Mesh services, with shares of 100.
    #[serde(default)]
    pub to: Vec<ServiceTarget>,
    /// Tier-1: other clusters' ingress gateways that expose this
    /// hostname, with shares of 100; a cluster that is down leaves its
    /// share to the others.
    #[serde(default)]
    pub clusters: Vec<ClusterTarget>,
    /// Tier-1: every cluster whose ingress gateways expose this hostname,
    /// nearest first.
    #[serde(default)]
    pub any_cluster: bool,
    pub redirect: Option<Redirect>,
    pub direct_response: Option<DirectResponse>,
    /// Rewrites what the service sees (with `to` or `clusters`).
    pub rewrite: Option<Rewrite>,
    pub request_headers: Option<HeaderChanges>,
    pub response_headers: Option<HeaderChanges>,
    pub cors: Option<Cors>,
    /// The whole request's limit (e.g. 5s).
    pub timeout: Option<String>,
    pub retries: Option<Retries>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceTarget {
    /// `namespace/name`.
    pub service: String,
    /// Only the instances with all of these labels (e.g. `version: v2`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default = "full_weight")]
    #[schemars(range(max = 100))]
    pub weight: u32,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClusterTarget {
    pub name: String,
    #[serde(default = "full_weight")]
    #[schemars(range(max = 100))]
    pub weight: u32,
}

fn full_weight() -> u32 {
    100
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    Http,
    Https,
}

/// Answers with a redirect; what is not given stays as requested.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Redirect {
    pub scheme: Option<Scheme>,
    pub host: Option<String>,
    pub port: Option<u16>,
    /// The whole path.
    pub path: Option<String>,
    /// 301 (default), 302, 303, 307 or 308.
    pub code: Option<u16>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DirectResponse {
    pub status: u16,
    pub body: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rewrite {
    /// Replaces the prefix the route matched (every match must be a path
    /// prefix).
    pub path_prefix: Option<String>,
    /// The Host (`:authority`) the service sees.
    pub authority: Option<String>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeaderChanges {
    /// Replace (or add) these headers.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Append these values.
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

/// Cross-origin requests from browsers: the gateway answers preflights.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Cors {
    /// Origins like `https://shop.example.com`, or `*` for any.
    #[schemars(length(min = 1))]
    pub allow_origins: Vec<String>,
    #[serde(default)]
    pub allow_methods: Vec<Method>,
    #[serde(default)]
    pub allow_headers: Vec<String>,
    #[serde(default)]
    pub expose_headers: Vec<String>,
    /// How long browsers may cache a preflight's answer (e.g. 1h).
    pub max_age: Option<String>,
    #[serde(default)]
    pub allow_credentials: bool,
}

/// Matches a request from any of `sources` to any of `to` whose token
/// carries `claims`; what is left out matches everything.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GatewayRule {
    /// Client address ranges (`10.0.0.0/8`, `2001:db8::/32`, `1.2.3.4`).
    #[serde(default)]
    pub sources: Vec<String>,
    #[serde(default)]
    pub to: Vec<RequestMatch>,
    /// Each named claim must be (or, for a list, contain) one of its
    /// values; needs the server's `authentication`.
    #[serde(default)]
    pub claims: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PassthroughServer {
    pub name: String,
    pub port: u16,
    /// The SNI clients send: exact, or `*.example.com`.
    pub hostname: String,
    /// `namespace/name`: the service that terminates the TLS.
    pub service: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TcpServer {
    pub name: String,
    pub port: u16,
    /// `namespace/name`.
    pub service: String,
}

/// `namespace/name` into its parts, or what is wrong with it.
pub fn parse_service(value: &str) -> Result<(&str, &str), String> {
    let Some((namespace, name)) = value.split_once('/') else {
        return Err(format!("{value:?} is not namespace/name"));
    };
    check_dns_label(namespace).map_err(|e| format!("its namespace: {e}"))?;
    check_dns_label(name).map_err(|e| format!("its name: {e}"))?;
    Ok((namespace, name))
}

/// An exact DNS name, or `*.` and one.
fn check_hostname(hostname: &str, at: &str, problems: &mut Problems) {
    let name = hostname.strip_prefix("*.").unwrap_or(hostname);
    if let Err(e) = check_dns_name(name) {
        problems.add(at, format!("{e}; give an exact name or *.domain"));
    }
}

fn check_port(port: u16, at: &str, problems: &mut Problems) {
    if port == 0 {
        problems.add(at, "must be between 1 and 65535");
    }
}

/// An address range: an IP address, or one with a prefix length.
fn check_cidr(value: &str, at: &str, problems: &mut Problems) {
    let (address, prefix) = value.split_once('/').unwrap_or((value, ""));
    let Ok(ip) = address.parse::<std::net::IpAddr>() else {
        problems.add(
            at,
            format!("{value:?} is not an address range like 10.0.0.0/8"),
        );
        return;
    };
    let most = if ip.is_ipv4() { 32 } else { 128 };
    if !prefix.is_empty() && prefix.parse::<u8>().map_or(true, |p| p > most) {
        problems.add(
            at,
            format!("{value:?}: the prefix length must be 0 to {most}"),
        );
    }
}

/// What listens on one port: only servers of one sort can share it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PortUse {
    /// Plain HTTP, dispatched by Host.
    Http,
    /// TLS terminated here, dispatched by SNI.
    Tls,
    /// TLS passed through, dispatched by SNI.
    Passthrough,
    /// The whole port to one service.
    Tcp,
}

impl PortUse {
    fn describe(self) -> &'static str {
        match self {
            PortUse::Http => "plain HTTP",
            PortUse::Tls => "TLS terminated here",
            PortUse::Passthrough => "TLS passed through",
            PortUse::Tcp => "TCP",
        }
    }
}

/// The servers' claims on ports, to refuse two servers that cannot share.
#[derive(Default)]
struct Ports {
    /// By port: its use and the first server's path.
    uses: BTreeMap<u16, (PortUse, String)>,
    /// By port and hostname: the server's path.
    hosts: BTreeMap<(u16, String), String>,
}

impl Ports {
    fn claim(
        &mut self,
        port: u16,
        hostname: Option<&str>,
        usage: PortUse,
        at: &str,
        problems: &mut Problems,
    ) {
        match self.uses.get(&port) {
            Some((first, first_at)) if *first != usage || usage == PortUse::Tcp => {
                problems.add(
                    field(at, "port"),
                    format!(
                        "port {port} is taken by {first_at} ({}); {} cannot share it",
                        first.describe(),
                        usage.describe()
                    ),
                );
                return;
            }
            Some(_) => {}
            None => {
                self.uses.insert(port, (usage, at.to_string()));
            }
        }
        if let Some(hostname) = hostname
            && let Some(first_at) = self
                .hosts
                .insert((port, hostname.to_string()), at.to_string())
        {
            problems.add(
                field(at, "hostname"),
                format!("{first_at} already serves {hostname} on port {port}"),
            );
        }
    }
}

impl Spec for GatewaySpec {
    fn check(&self, at: &str, problems: &mut Problems) {
        let selector_at = field(at, "workloadSelector");
        if let Err(e) = check_dns_label(&self.workload_selector.namespace) {
            problems.add(field(&selector_at, "namespace"), e);
        }
        for key in self.workload_selector.labels.keys() {
            if key.is_empty() {
                problems.add(field(&selector_at, "labels"), "a label key is empty");
            }
        }
        if self.http.is_empty()
            && self.tls_passthrough.is_empty()
            && self.tcp.is_empty()
            && self.egress.is_empty()
        {
            problems.add(
                at,
                "has no server: give http, tlsPassthrough, tcp or egress",
            );
        }
        let mut hosts = BTreeMap::new();
        for (i, egress) in self.egress.iter().enumerate() {
            let here = index(&field(at, "egress"), i);
            if let Err(e) = check_dns_name(&egress.host) {
                problems.add(field(&here, "host"), e);
            } else if let Some(first) = hosts.insert(egress.host.as_str(), here.clone()) {
                problems.add(
                    field(&here, "host"),
                    format!("{first} already lists {}", egress.host),
                );
            }
            if let Some(port) = egress.port {
                check_port(port, &field(&here, "port"), problems);
            }
            if egress.from.is_empty() {
                problems.add(
                    field(&here, "from"),
                    "name who may reach it: service accounts, namespaces or workspaces",
                );
            }
            for (j, caller) in egress.from.iter().enumerate() {
                caller.check(&index(&field(&here, "from"), j), problems);
            }
        }
        let mut names: BTreeMap<String, String> = BTreeMap::new();
        let mut ports = Ports::default();
        let mut check_name = |value: &str, here: &str, problems: &mut Problems| {
            let name_at = field(here, "name");
            if let Err(e) = check_dns_label(value) {
                problems.add(name_at, e);
            } else if let Some(first) = names.get(value) {
                problems.add(name_at, format!("{first} already has this name"));
            } else {
                names.insert(value.to_string(), here.to_string());
            }
        };
        for (i, server) in self.http.iter().enumerate() {
            let here = index(&field(at, "http"), i);
            check_name(&server.name, &here, problems);
            server.check(&here, problems);
            let usage = if server.tls.is_some() {
                PortUse::Tls
            } else {
                PortUse::Http
            };
            ports.claim(server.port, Some(&server.hostname), usage, &here, problems);
        }
        check_shared_rate_limit_service(&self.http, at, problems);
        for (i, server) in self.tls_passthrough.iter().enumerate() {
            let here = index(&field(at, "tlsPassthrough"), i);
            check_name(&server.name, &here, problems);
            check_port(server.port, &field(&here, "port"), problems);
            check_hostname(&server.hostname, &field(&here, "hostname"), problems);
            if let Err(e) = parse_service(&server.service) {
                problems.add(field(&here, "service"), e);
            }
            ports.claim(
                server.port,
                Some(&server.hostname),
                PortUse::Passthrough,
                &here,
                problems,
            );
        }
        for (i, server) in self.tcp.iter().enumerate() {
            let here = index(&field(at, "tcp"), i);
            check_name(&server.name, &here, problems);
            check_port(server.port, &field(&here, "port"), problems);
            if let Err(e) = parse_service(&server.service) {
                problems.add(field(&here, "service"), e);
            }
            ports.claim(server.port, None, PortUse::Tcp, &here, problems);
        }
    }
}

impl HttpServer {
    /// Whether requests carry verified tokens (JWT): claims come from them.
    pub fn has_tokens(&self) -> bool {
        self.authentication
            .as_ref()
            .is_some_and(|a| !a.jwt.is_empty())
    }

    /// Its browser sign-in, if it has one.
    pub fn oidc(&self) -> Option<&crate::oidc::Oidc> {
        self.authentication.as_ref()?.oidc.as_ref()
    }

    fn check(&self, here: &str, problems: &mut Problems) {
        check_port(self.port, &field(here, "port"), problems);
        check_hostname(&self.hostname, &field(here, "hostname"), problems);
        if let Some(tls) = &self.tls {
            let tls_at = field(here, "tls");
            if let Err(e) = check_dns_name(&tls.certificate) {
                problems.add(field(&tls_at, "certificate"), e);
            }
            match (tls.mode, &tls.client_ca) {
                (TlsMode::Mutual, None) => problems.add(
                    field(&tls_at, "clientCa"),
                    "mutual TLS needs the CA that client certificates must chain to",
                ),
                (TlsMode::Simple, Some(_)) => problems.add(
                    field(&tls_at, "clientCa"),
                    "only mutual TLS checks client certificates; set mode: mutual",
                ),
                (_, Some(ca)) => {
                    if let Err(e) = check_dns_name(ca) {
                        problems.add(field(&tls_at, "clientCa"), e);
                    }
                }
                (TlsMode::Simple, None) => {}
            }
        }
        if let Some(authentication) = &self.authentication {
            authentication.check(&field(here, "authentication"), problems);
            if authentication.oidc.is_some() && self.tls.is_none() {
                problems.add(
                    field(&field(here, "authentication"), "oidc"),
                    "browser sign-in needs HTTPS (its session cookie is Secure): give the server tls",
                );
            }
        }
        if let Some(rate_limiting) = &self.rate_limiting {
            let at = field(here, "rateLimiting");
            rate_limiting.check(&at, problems);
            if !self.has_tokens() {
                for (i, rule) in rate_limiting.rules.iter().enumerate() {
                    for (j, dimension) in rule.dimensions.iter().enumerate() {
                        if dimension.of == DimensionOf::Claim {
                            problems.add(
                                field(
                                    &field(&at, &format!("rules[{i}]")),
                                    &format!("dimensions[{j}]"),
                                ),
                                "claims come from end-user tokens: give the server authentication.jwt",
                            );
                        }
                    }
                }
            }
        }
        if let Some(authorization) = &self.authorization {
            let at = field(here, "authorization");
            authorization.check_rules(&at, problems, |rule, rule_at, problems| {
                for (j, source) in rule.sources.iter().enumerate() {
                    check_cidr(source, &index(&field(rule_at, "sources"), j), problems);
                }
                check_requests_and_claims(&rule.to, &rule.claims, rule_at, problems);
                if !rule.claims.is_empty() && !self.has_tokens() {
                    problems.add(
                        field(rule_at, "claims"),
                        "claims come from end-user tokens: give the server authentication.jwt",
                    );
                }
            });
        }
        let routes_at = field(here, "routes");
        if self.routes.is_empty() {
            problems.add(&routes_at, "give at least one route");
        }
        for (i, route) in self.routes.iter().enumerate() {
            let route_at = index(&routes_at, i);
            if route.matches.is_empty() && i + 1 < self.routes.len() {
                problems.add(
                    &route_at,
                    "a route without matches catches every request, so it must be the last route",
                );
            }
            route.check(&route_at, problems);
        }
    }
}

impl GatewayRoute {
    fn check(&self, here: &str, problems: &mut Problems) {
        for (j, m) in self.matches.iter().enumerate() {
            check_match(m, &index(&field(here, "matches"), j), problems);
        }
        exactly_one(
            here,
            &[
                ("to", !self.to.is_empty()),
                ("clusters", !self.clusters.is_empty()),
                ("anyCluster", self.any_cluster),
                ("redirect", self.redirect.is_some()),
                ("directResponse", self.direct_response.is_some()),
            ],
            problems,
        );
        let forwards = !self.to.is_empty() || !self.clusters.is_empty() || self.any_cluster;
        if !forwards {
            for (name, set) in [
                ("rewrite", self.rewrite.is_some()),
                ("cors", self.cors.is_some()),
                ("timeout", self.timeout.is_some()),
                ("retries", self.retries.is_some()),
                ("requestHeaders", self.request_headers.is_some()),
            ] {
                if set {
                    problems.add(
                        field(here, name),
                        "applies only to requests sent on (to, clusters or anyCluster)",
                    );
                }
            }
        }
        let to_at = field(here, "to");
        for (j, target) in self.to.iter().enumerate() {
            let target_at = index(&to_at, j);
            if let Err(e) = parse_service(&target.service) {
                problems.add(field(&target_at, "service"), e);
            }
            if target.labels.keys().any(String::is_empty) {
                problems.add(field(&target_at, "labels"), "a label key is empty");
            }
        }
        check_weights(&to_at, self.to.iter().map(|t| t.weight), problems);
        let clusters_at = field(here, "clusters");
        let mut seen = BTreeSet::new();
        for (j, cluster) in self.clusters.iter().enumerate() {
            let cluster_at = field(&index(&clusters_at, j), "name");
            if let Err(e) = check_dns_label(&cluster.name) {
                problems.add(cluster_at, e);
            } else if !seen.insert(cluster.name.as_str()) {
                problems.add(cluster_at, "is listed twice");
            }
        }
        check_weights(
            &clusters_at,
            self.clusters.iter().map(|c| c.weight),
            problems,
        );
        if let Some(redirect) = &self.redirect {
            let redirect_at = field(here, "redirect");
            if redirect.scheme.is_none()
                && redirect.host.is_none()
                && redirect.port.is_none()
                && redirect.path.is_none()
            {
                problems.add(
                    &redirect_at,
                    "changes nothing: give scheme, host, port or path",
                );
            }
            if let Some(host) = &redirect.host
                && let Err(e) = check_dns_name(host)
            {
                problems.add(field(&redirect_at, "host"), e);
            }
            if let Some(port) = redirect.port {
                check_port(port, &field(&redirect_at, "port"), problems);
            }
            if let Some(path) = &redirect.path {
                check_path(path, &field(&redirect_at, "path"), problems);
            }
            if let Some(code) = redirect.code
                && ![301, 302, 303, 307, 308].contains(&code)
            {
                problems.add(
                    field(&redirect_at, "code"),
                    format!("{code} is not a redirect: use 301, 302, 303, 307 or 308"),
                );
            }
        }
        if let Some(response) = &self.direct_response
            && !(200..=599).contains(&response.status)
        {
            problems.add(
                field(&field(here, "directResponse"), "status"),
                "must be an HTTP status from 200 to 599",
            );
        }
        if let Some(rewrite) = &self.rewrite {
            let rewrite_at = field(here, "rewrite");
            if rewrite.path_prefix.is_none() && rewrite.authority.is_none() {
                problems.add(&rewrite_at, "changes nothing: give pathPrefix or authority");
            }
            if let Some(prefix) = &rewrite.path_prefix {
                check_path(prefix, &field(&rewrite_at, "pathPrefix"), problems);
                let all_prefixes = !self.matches.is_empty()
                    && self
                        .matches
                        .iter()
                        .all(|m| m.path.as_ref().is_some_and(|p| p.prefix.is_some()));
                if !all_prefixes {
                    problems.add(
                        field(&rewrite_at, "pathPrefix"),
                        "replaces the matched prefix: every match of the route must be a path prefix",
                    );
                }
            }
            if let Some(authority) = &rewrite.authority
                && let Err(e) = check_dns_name(authority.split(':').next().unwrap_or_default())
            {
                problems.add(field(&rewrite_at, "authority"), e);
            }
        }
        for (name, changes) in [
            ("requestHeaders", &self.request_headers),
            ("responseHeaders", &self.response_headers),
        ] {
            if let Some(changes) = changes {
                check_header_changes(changes, &field(here, name), problems);
            }
        }
        if let Some(cors) = &self.cors {
            check_cors(cors, &field(here, "cors"), problems);
        }
        let timeout = self
            .timeout
            .as_deref()
            .and_then(|t| duration(t, &field(here, "timeout"), problems));
        if let Some(retries) = &self.retries {
            retries.check(&field(here, "retries"), timeout, problems);
        }
    }
}

fn check_path(path: &str, at: &str, problems: &mut Problems) {
    if !path.starts_with('/') {
        problems.add(at, format!("{path:?} must start with /"));
    }
}

/// Weights of a non-empty list must add up to 100.
fn check_weights(at: &str, weights: impl Iterator<Item = u32>, problems: &mut Problems) {
    let weights: Vec<u32> = weights.collect();
    let total: u32 = weights.iter().sum();
    if !weights.is_empty() && total != 100 {
        problems.add(at, format!("weights must add up to 100, not {total}"));
    }
}

/// Headers a route may not change: the request line's and the ones
/// Envoy manages.
const FIXED_HEADERS: [&str; 3] = ["host", "content-length", "transfer-encoding"];

fn check_header_changes(changes: &HeaderChanges, at: &str, problems: &mut Problems) {
    if changes.set.is_empty() && changes.add.is_empty() && changes.remove.is_empty() {
        problems.add(at, "changes nothing: give set, add or remove");
    }
    let names = changes
        .set
        .keys()
        .map(|n| ("set", n))
        .chain(changes.add.keys().map(|n| ("add", n)));
    for (list, name) in names {
        let here = field(&field(at, list), name);
        check_header_name(name, &here, problems);
        if FIXED_HEADERS.contains(&name.as_str()) {
            problems.add(here, format!("{name:?} cannot be changed here"));
        }
    }
    for (i, name) in changes.remove.iter().enumerate() {
        let here = index(&field(at, "remove"), i);
        check_header_name(name, &here, problems);
        if FIXED_HEADERS.contains(&name.as_str()) {
            problems.add(here, format!("{name:?} cannot be removed"));
        }
    }
}

fn check_cors(cors: &Cors, at: &str, problems: &mut Problems) {
    if cors.allow_origins.is_empty() {
        problems.add(field(at, "allowOrigins"), "give at least one origin, or *");
    }
    for (i, origin) in cors.allow_origins.iter().enumerate() {
        let ok = origin == "*"
            || url::Url::parse(origin).is_ok_and(|u| {
                matches!(u.scheme(), "http" | "https")
                    && u.host_str().is_some()
                    && u.path() == "/"
                    && !origin.ends_with('/')
            });
        if !ok {
            problems.add(
                index(&field(at, "allowOrigins"), i),
                format!("{origin:?} is not an origin like https://shop.example.com, or *"),
            );
        }
    }
    if cors.allow_credentials && cors.allow_origins.iter().any(|o| o == "*") {
        problems.add(
            field(at, "allowCredentials"),
            "browsers refuse credentials with a * origin: list the origins",
        );
    }
    for (list, names) in [
        ("allowHeaders", &cors.allow_headers),
        ("exposeHeaders", &cors.expose_headers),
    ] {
        for (i, name) in names.iter().enumerate() {
            check_header_name(name, &index(&field(at, list), i), problems);
        }
    }
    if let Some(max_age) = &cors.max_age {
        duration(max_age, &field(at, "maxAge"), problems);
    }
}

/// The namespace a Gateway's workloads run in must be one its group
/// selects.
pub fn check_selector_within_parent(spec: &Value, parent_spec: &Value, problems: &mut Problems) {
    if let Some(namespace) = spec
        .pointer("/workloadSelector/namespace")
        .and_then(Value::as_str)
        && let Err(selector) = namespace_within(namespace, parent_spec)
    {
        problems.add(
            "spec.workloadSelector.namespace",
            format!("{namespace:?} is not among the namespaces this gateway's group selects ({selector})"),
        );
    }
}

/// Plain-HTTP servers on one port share one connection manager, so one
/// rate limit filter: they must agree on how it waits and fails.
fn check_shared_rate_limit_service(servers: &[HttpServer], at: &str, problems: &mut Problems) {
    let mut first: BTreeMap<u16, (usize, Duration, bool)> = BTreeMap::new();
    for (i, server) in servers.iter().enumerate() {
        let Some(limits) = server.rate_limiting.as_ref().filter(|r| r.is_shared()) else {
            continue;
        };
        if server.tls.is_some() {
            continue;
        }
        let this = (i, limits.timeout(), limits.fail_closed);
        let (j, timeout, fail_closed) = *first.entry(server.port).or_insert(this);
        if (timeout, fail_closed) != (this.1, this.2) {
            problems.add(
                field(&index(&field(at, "http"), i), "rateLimiting"),
                format!(
                    "plain-HTTP servers on port {} share one rate limit filter: its timeout and failClosed must be those of {}",
                    server.port,
                    field(&index(&field(at, "http"), j), "rateLimiting"),
                ),
            );
        }
    }
}

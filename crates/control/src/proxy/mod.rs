//! One proxy's configuration in weft's own terms: the xDS resources weft
//! generates, with only the fields weft uses. Translation produces these;
//! they print as YAML (golden files, `weft x translate`) and convert into
//! Envoy's wire types at the boundary ([`ProxyConfig::add_to`]), one
//! module per resource: `cluster`, `endpoints`, `listener`, `route`, and
//! the pieces they carry, `tls`, `jwt`, `rbac`.

mod authservice;
mod cluster;
mod convert;
mod endpoints;
pub mod evaluate;
mod gateway;
mod jwt;
mod listener;
mod ratelimit;
mod rbac;
mod route;
pub mod telemetry;
mod tls;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use std::sync::Arc;

use weft_xds::{Inconsistent, Layer, LayerBuilder, Snapshot};

pub use route::{
    Action, CorsPolicy, Forward, HashOn, HeaderCondition, HeaderEdits, HeaderTest, QueryCondition,
    Redirect, Retry, Route, RouteChanges, RouteMatch, RouteTable, ValueTest, VirtualHost,
};
pub use telemetry::{SOURCE_HEADER, Side, collector_cluster};

/// The ALPN protocol a gateway offers when it relays raw TCP to a
/// sidecar: the sidecar's inbound listener sends such connections to the
/// app as they are, not through HTTP routing.
pub const TCP_ALPN: &str = "weft-tcp";

/// Everything one proxy is sent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyConfig {
    pub clusters: Vec<Cluster>,
    pub endpoints: Vec<Endpoints>,
    pub listeners: Vec<Listener>,
    pub routes: Vec<RouteTable>,
    /// TLS passed through by SNI (an east-west gateway).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub passthrough: Vec<SniListener>,
    /// Listeners for clients outside the mesh (a gateway).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<GatewayListener>,
    /// Every shared rate limit rule of the cluster (the rate limit
    /// service's one resource).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_rules: Option<Vec<ServiceRule>>,
    /// Every gateway server with browser sign-in of the cluster (the
    /// sign-in service's one resource).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login_servers: Option<Vec<LoginServer>>,
}

/// A gateway's listener on one port, for clients outside the mesh: one
/// chain per TLS server (chosen by SNI), or one chain for all the port's
/// plain-HTTP servers (chosen by Host in its route table).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayListener {
    pub name: String,
    pub address: SocketAddr,
    pub chains: Vec<HttpChain>,
    /// What its requests report (the gateway as a caller).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub telemetry: Option<Telemetry>,
}

/// HTTP from outside: every request is authorized by its virtual host's
/// rules (a server without rules allows anyone) and logged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpChain {
    /// Names it in metrics: the server's name, or the port's.
    pub name: String,
    /// TLS terminated with a certificate from the gateway's own files;
    /// none: plain HTTP (or `mesh`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ServerTls>,
    /// Mutual TLS with the gateway's workload identity: the chain other
    /// clusters' tier-1 gateways reach.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh: Option<Mtls>,
    pub route_table: String,
    /// End-user token checks, each for the hostname of its server.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jwt: Vec<ScopedJwt>,
    /// Where its virtual hosts' shared limits are decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_service: Option<RateLimitService>,
    /// Where browsers' sessions are checked, for its virtual hosts with
    /// sign-in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_service: Option<AuthService>,
}

/// The sign-in service a gateway chain asks (Envoy's external
/// authorization), and how long it waits: a sign-in's callback waits for
/// the provider's token endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthService {
    pub cluster: String,
    pub timeout_ms: u64,
}

/// What a virtual host on a chain with an [`AuthService`] asks of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum LoginCheck {
    /// Nothing: its server has no sign-in.
    Skip,
    /// A session of this server (its id).
    Server(String),
}

/// A gateway server with browser sign-in, as the sign-in service runs it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoginServer {
    pub id: String,
    pub issuer: String,
    /// The provider's endpoints, when given rather than discovered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<ProviderEndpoints>,
    pub client_id: String,
    pub client_secret_name: String,
    pub callback_path: String,
    pub scopes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logout_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_logout_redirect: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_token_header: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_token_header: Option<String>,
    pub idle_timeout_s: u32,
    pub absolute_timeout_s: u32,
    /// Sessions in Redis, else in the service's memory.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub redis: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProviderEndpoints {
    pub authorization: String,
    pub token: String,
    pub jwks: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_session: Option<String>,
}

/// A server certificate (and for mutual TLS, the CA client certificates
/// must chain to), by the names the gateway's agent serves them under.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerTls {
    /// The SNI names this chain takes (exact or `*.domain`).
    pub server_names: Vec<String>,
    pub certificate: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<String>,
}

/// A token check that applies to requests for `hostname` only (exact or
/// `*.domain`); none: to every request of its chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScopedJwt {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Hostnames within `hostname` that other servers of the chain take
    /// (exact names, and longer wildcards): not this check's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub except: Vec<String>,
    #[serde(flatten)]
    pub check: JwtCheck,
}

/// A listener that sends each TLS connection, unopened, to the cluster its
/// SNI names: the workload's own mTLS goes end to end, so the callee sees
/// the caller's identity. A name it does not know gets no connection.
/// A gateway's `tcp` server is the one route with an empty name: every
/// connection, TLS or not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SniListener {
    pub name: String,
    pub address: SocketAddr,
    /// SNI (exact or `*.domain`) → cluster.
    pub routes: BTreeMap<String, String>,
}

/// An upstream: a service (or a subset of it) or the local app.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cluster {
    pub name: String,
    /// Where its one host is; none: its endpoints come over EDS.
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub fixed: Option<FixedHost>,
    pub connect_timeout_ms: u64,
    pub lb_policy: LbPolicy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Limits>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<Outlier>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests_per_connection: Option<u32>,
    /// Mutual TLS to the upstream; none: plaintext (the local app).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<Mtls>,
    /// Bytes are relayed as they come (TCP), not HTTP: a gateway's.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub passthrough: bool,
    /// The TLS server name is each request's host (a tier-1 gateway's:
    /// other clusters' east-west gateways route by it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sni_from_host: bool,
    /// Always HTTP/2: Envoy's own gRPC calls (the rate limit service).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub grpc: bool,
}

/// The one host of a cluster whose endpoints do not come over EDS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum FixedHost {
    /// An address on this host (the app behind its sidecar).
    Local(SocketAddr),
    /// A host outside the mesh, by DNS name (a token issuer's keys).
    External(ExternalHost),
}

/// A host outside the mesh. With `tls`, its certificate must chain to
/// the system's roots and name `host`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExternalHost {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

/// Mutual TLS with the workload certificate and trust bundle the proxy
/// gets from its sidecar over SDS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Mtls {
    pub trust_domain: String,
    /// The SPIFFE IDs the peer may present; empty: any of the trust domain.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<String>,
    /// On a listener: also take plaintext connections (a migration).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub permissive: bool,
    /// Upstream: the server name to send, by which another cluster's
    /// east-west gateway picks the service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LbPolicy {
    RoundRobin,
    LeastRequest,
    RingHash,
    Random,
}

/// Circuit-breaker thresholds; over them a call fails fast with 503.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pending_requests: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_budget_percent: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_budget_min_concurrency: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Outlier {
    pub consecutive_5xx: u32,
    pub interval_ms: u64,
    pub base_ejection_time_ms: u64,
    pub max_ejection_percent: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SocketAddr {
    pub address: String,
    pub port: u16,
}

/// The instances behind one EDS cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoints {
    pub cluster: String,
    /// This cluster's instances, first in line (priority 0).
    pub endpoints: Vec<SocketAddr>,
    /// The cluster they run in, given them as their EDS hostname (as the
    /// other clusters' gateways get theirs): a caller's counts name the
    /// cluster that answered by it. Empty: not a service's instances.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub site: String,
    /// Other clusters' gateways, each at its priority behind them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remote: Vec<RemoteEndpoints>,
}

/// Another cluster's east-west gateways as endpoints of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RemoteEndpoints {
    /// The other cluster's name.
    pub cluster: String,
    pub region: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub zone: String,
    /// 0 is tried first; the nearer the cluster, the lower.
    pub priority: u32,
    /// Each gateway's load-balancing weight: the cluster's healthy
    /// instances shared among its gateways.
    pub weight: u32,
    pub gateways: Vec<SocketAddr>,
}

/// An HTTP listener whose routes come over RDS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Listener {
    pub name: String,
    pub address: SocketAddr,
    pub route_table: String,
    /// Mutual TLS required of every connection; none: plaintext (the
    /// outbound listener, on loopback).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<Mtls>,
    /// Whether each request is authorized (by the rules of its route
    /// table's virtual host; with none there, nothing gets through) and
    /// logged.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub authorize: bool,
    /// End-user tokens checked before authorization.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtCheck>,
    /// Raw TCP from gateways (their `tcp` and `tlsPassthrough` servers),
    /// told apart by [`TCP_ALPN`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpInbound>,
    /// Whether requests are counted against their virtual host's
    /// [`RateLimit`].
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rate_limited: bool,
    /// Where its virtual hosts' shared limits are decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_service: Option<RateLimitService>,
    /// What its requests report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub telemetry: Option<Telemetry>,
}

/// What a listener reports about its requests: counts and durations to
/// the edge, and for a caller the stamp the callee counts it by; spans
/// and request logs as its workload's TelemetrySettings say.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Telemetry {
    pub side: Side,
    /// The caller this proxy stamps on its calls
    /// (`CLUSTER/NAMESPACE/SERVICE/VERSION`, see [`SOURCE_HEADER`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<Tracing>,
    /// Where each request's JSON log line goes.
    #[serde(default, skip_serializing_if = "RequestLog::is_stderr")]
    pub requests_log: RequestLog,
}

/// Spans of the requests a listener handles.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Tracing {
    /// The collector (OTLP over gRPC), `host:port`: its cluster is
    /// [`collector_cluster`]'s.
    pub collector: String,
    /// The spans' `service.name`.
    pub service_name: String,
    /// Their `service.namespace`.
    pub service_namespace: String,
    /// Requests that start a trace, in hundredths of a percent.
    pub sampling_basis_points: u32,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
}

/// Where request logs go.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "to", content = "collector")]
pub enum RequestLog {
    /// The proxy's standard error, one JSON object per line.
    #[default]
    Stderr,
    /// OpenTelemetry log records to this collector (`host:port`).
    Otlp(String),
    Off,
}

impl RequestLog {
    fn is_stderr(&self) -> bool {
        *self == RequestLog::Stderr
    }
}

/// Raw TCP relayed to `cluster` (the app) from the callers
/// `authorization` lets in: its rules on callers alone (rules on requests
/// or claims cannot judge bytes, and match no connection).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TcpInbound {
    pub cluster: String,
    pub authorization: Authorization,
}

/// End-user JWT checks: a token present is checked on every request
/// (401 if invalid); `required_for` requests must carry one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JwtCheck {
    pub providers: Vec<JwtProvider>,
    /// Empty: every request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required_for: Vec<RouteMatch>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JwtProvider {
    pub name: String,
    pub issuer: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    pub jwks: Jwks,
    pub clock_skew_s: u32,
    /// Claim (`a.b` for nested) → request header for the app.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub forward_claims: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub forward_token: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum Jwks {
    Inline(String),
    /// Fetched through `cluster` and kept `refresh_ms`.
    Remote {
        uri: String,
        cluster: String,
        refresh_ms: u64,
    },
}

/// Who may call. A request matching a deny rule is refused; then only
/// what an allow rule matches gets through: with no allow rule, nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Authorization {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<AccessRule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<AccessRule>,
}

/// Requests from any of `callers` or `sources` that match any of
/// `requests`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AccessRule {
    /// Where the rule comes from (setting path and rule); a refusal names it.
    pub name: String,
    /// Caller SPIFFE IDs; with `sources` empty too: any caller (with a
    /// certificate of the trust domain, where the listener asks for one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub callers: Vec<CallerId>,
    /// The connection's peer address ranges (`10.0.0.0/8`, `1.2.3.4`);
    /// never what the client claims in `x-forwarded-for`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<String>,
    /// Empty: every request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requests: Vec<RouteMatch>,
    /// End-user claims the request's token must carry: each claim (`a.b`
    /// for nested) one of its values, or a list containing one.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub claims: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum CallerId {
    Exact(String),
    Prefix(String),
}

/// One shared rule as a proxy applies it: the descriptor each request
/// sends to the rate limit service, `(RULE_KEY, rule)` and then one entry
/// per dimension. A request lacking a dimension sends none for the rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SharedLimit {
    pub rule: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dimensions: Vec<DescriptorEntry>,
}

/// Where a descriptor entry's value comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum DescriptorEntry {
    /// The connection's peer address.
    ClientAddress,
    Header(String),
    /// A claim of the verified token (a string claim).
    Claim(String),
    /// The path with its query (the service drops the query).
    Path,
    Method,
}

/// The rate limit service a listener asks, and how it waits and fails.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitService {
    pub cluster: String,
    pub timeout_ms: u64,
    /// Refuse (503) when no decision comes; else let the request through.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fail_closed: bool,
}

/// A shared rule as the rate limit service counts it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceRule {
    pub id: String,
    pub name: String,
    pub requests: u32,
    pub unit_seconds: u32,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shadow: bool,
    /// What each descriptor entry after the rule's must be, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dimensions: Vec<ServiceDimension>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceDimension {
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub strip_query: bool,
}

/// A token bucket each proxy keeps for one virtual host: `max_tokens`
/// at most, `tokens_per_fill` added every `fill_interval_ms`; a request
/// without a token gets 429 (in `shadow`, it is only counted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    pub max_tokens: u32,
    pub tokens_per_fill: u32,
    pub fill_interval_ms: u64,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shadow: bool,
}

impl ProxyConfig {
    /// Envoy's resources for this proxy, checked for consistency.
    pub fn to_snapshot(&self) -> Result<Snapshot, Inconsistent> {
        Snapshot::compose(Arc::new(self.to_layer()?), Arc::default())
    }

    /// This config's resources as one layer, each encoded once; what it
    /// refers to and does not hold stays needed.
    pub fn to_layer(&self) -> Result<Layer, Inconsistent> {
        let mut layer = LayerBuilder::new();
        self.add_to(&mut layer)?;
        Ok(layer.build())
    }

    /// Adds this config's resources to `layer`.
    pub fn add_to(&self, layer: &mut LayerBuilder) -> Result<(), Inconsistent> {
        for cluster in &self.clusters {
            layer.cluster(&cluster.to_xds())?;
        }
        for endpoints in &self.endpoints {
            layer.endpoints(&endpoints.to_xds())?;
        }
        // JWT providers and the request log's JSON fields (on a
        // listener) and RBAC policies (on a route table) are protobuf
        // maps, encoded in hash order: version the resources that hold
        // them by their model, which encodes the same every time. Others
        // keep the hash of their bytes (no JSON work for the large
        // outbound route table).
        for listener in &self.listeners {
            let has_maps = listener.jwt.is_some() || listener.telemetry.is_some();
            let version = has_maps.then(|| model_version(listener));
            layer.listener(&listener.to_xds(), version)?;
        }
        for listener in &self.passthrough {
            layer.listener(&listener.to_xds(), None)?;
        }
        for listener in &self.gateways {
            let has_maps =
                listener.telemetry.is_some() || listener.chains.iter().any(|c| !c.jwt.is_empty());
            let version = has_maps.then(|| model_version(listener));
            layer.listener(&listener.to_xds(), version)?;
        }
        if let Some(rules) = &self.rate_limit_rules {
            layer.rate_limit_rules(&ratelimit::rules_to_xds(rules))?;
        }
        if let Some(servers) = &self.login_servers {
            layer.login_servers(&authservice::servers_to_xds(servers))?;
        }
        for table in &self.routes {
            let has_policies = table
                .virtual_hosts
                .iter()
                .any(|v| v.authorization.is_some());
            let version = has_policies.then(|| model_version(table));
            layer.route(&table.to_xds(), version)?;
        }
        Ok(())
    }
}

/// A hash of a model resource's JSON form (its maps are ordered).
fn model_version(model: &impl Serialize) -> String {
    use sha2::{Digest, Sha256};
    let json = serde_json::to_vec(model).unwrap_or_default();
    hex::encode(&Sha256::digest(&json)[..8])
}

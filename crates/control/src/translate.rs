//! Translation: configuration + workload registry → intermediate form →
//! one [`ProxyConfig`] per proxy. A pure function: no I/O, no clock, the
//! same input always gives the same output.
//!
//! 1. [`Config::parse`] validates the cluster's resources once per
//!    configuration version and keeps what shapes traffic, typed.
//! 2. [`translate`] plans every service (its instances here, the other
//!    clusters that run it from the [`Directory`] ranked by locality, its
//!    subsets, routes and merged settings: the intermediate form,
//!    [`ServicePlan`]) and then gives each proxy what its workspace may
//!    call plus its own inbound side, and the east-west gateway a route
//!    by SNI to each local service. One bad resource becomes a [`ConfigError`] naming it; the rest
//!    still translates.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::Serialize;
use weft_api::edge::{ConfigError, Locality};
use weft_api::security::{Caller, MtlsMode, SecuritySettingSpec};
use weft_api::specs::{GroupSpec, WorkspaceSpec, selector_covers};
use weft_api::traffic::{
    CircuitBreaker, ConnectionPool, LoadBalancer, LocalityPolicy, OutlierDetection, RequestMatch,
    Retries, RetryOn, ServiceRouteSpec, StickySession, TrafficSettingSpec,
};
use weft_api::{Resource, validate};

use crate::directory::Directory;
use crate::proxy::{
    AccessRule, Action, Authorization, CallerId, Cluster, Endpoints, ExternalHost, Forward, HashOn,
    HeaderCondition, HeaderTest, Jwks, JwtCheck, JwtProvider, LbPolicy, Limits, Listener, Mtls,
    Outlier, ProxyConfig, RemoteEndpoints, Retry, Route, RouteMatch, RouteTable, SniListener,
    SocketAddr, VirtualHost,
};
use crate::workload::{Role, Workload};

/// Name of the listener and route table the app calls out through.
pub const OUTBOUND: &str = "outbound";
/// Name of the listener and route table in front of the app.
pub const INBOUND: &str = "inbound";
/// The cluster that is the app itself.
pub const LOCAL_APP: &str = "in|app";
/// Name of an east-west gateway's listener.
pub const EASTWEST: &str = "eastwest";
/// Used when no setting gives a connect timeout.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

struct Workspace {
    path: String,
    selector: Vec<String>,
}

struct Group {
    path: String,
    workspace: String,
    selector: Vec<String>,
}

struct Setting {
    path: String,
    /// The workspace or traffic group it is attached to.
    parent: String,
    spec: TrafficSettingSpec,
}

struct ServiceRoute {
    path: String,
    group: String,
    spec: ServiceRouteSpec,
}

struct SecuritySetting {
    path: String,
    /// The workspace or security group it is attached to.
    parent: String,
    spec: SecuritySettingSpec,
}

/// The traffic-shaping part of a cluster's configuration, validated.
#[derive(Default)]
pub struct Config {
    cluster: String,
    /// Where this cluster is; other clusters are ranked against it.
    locality: Locality,
    /// The trust domain of workload certificates; without one (offline
    /// translation only), traffic between proxies is plaintext.
    trust_domain: Option<String>,
    workspaces: Vec<Workspace>,
    groups: Vec<Group>,
    settings: Vec<Setting>,
    security_groups: Vec<Group>,
    security_settings: Vec<SecuritySetting>,
    routes: Vec<ServiceRoute>,
    /// Problems found while parsing; reported with every translation.
    errors: Vec<ConfigError>,
}

fn error(path: &str, field: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        path: path.to_string(),
        field: field.to_string(),
        message: message.into(),
    }
}

impl Config {
    /// Workload certificates are of `trust_domain`: traffic between
    /// proxies is mutual TLS.
    pub fn with_trust_domain(mut self, trust_domain: Option<String>) -> Config {
        self.trust_domain = trust_domain;
        self
    }

    /// This cluster is at `locality`.
    pub fn with_locality(mut self, locality: Locality) -> Config {
        self.locality = locality;
        self
    }

    /// Validates `resources` (as the server does) and keeps the kinds that
    /// shape traffic. Invalid resources are reported and left out.
    pub fn parse(cluster: &str, resources: &[Resource]) -> Config {
        let mut config = Config {
            cluster: cluster.to_string(),
            ..Config::default()
        };
        for resource in resources {
            let document = match serde_json::to_value(resource.desired()) {
                // A manifest may leave out an empty spec, as at the server.
                Ok(mut document) => {
                    if document.get("spec").is_some_and(serde_json::Value::is_null)
                        && let Some(fields) = document.as_object_mut()
                    {
                        fields.remove("spec");
                    }
                    document
                }
                Err(e) => {
                    config
                        .errors
                        .push(error(&resource.metadata.name, "", e.to_string()));
                    continue;
                }
            };
            let validated = match validate(&document) {
                Ok(validated) => validated,
                Err(problems) => {
                    let path = format!("{}/{}", resource.kind, resource.metadata.name);
                    for p in problems.into_vec() {
                        config.errors.push(error(&path, &p.field, p.message));
                    }
                    continue;
                }
            };
            let (path, parent) = (validated.path, validated.parent);
            let spec = validated.resource.spec;
            let parsed = match validated.kind.name {
                "Workspace" => serde_json::from_value::<WorkspaceSpec>(spec).map(|s| {
                    config.workspaces.push(Workspace {
                        path: path.clone(),
                        selector: s.namespace_selector,
                    })
                }),
                "TrafficGroup" => serde_json::from_value::<GroupSpec>(spec).map(|s| {
                    config.groups.push(Group {
                        path: path.clone(),
                        workspace: parent.clone(),
                        selector: s.namespace_selector,
                    })
                }),
                "SecurityGroup" => serde_json::from_value::<GroupSpec>(spec).map(|s| {
                    config.security_groups.push(Group {
                        path: path.clone(),
                        workspace: parent.clone(),
                        selector: s.namespace_selector,
                    })
                }),
                "SecuritySetting" => serde_json::from_value(spec).map(|spec| {
                    config.security_settings.push(SecuritySetting {
                        path: path.clone(),
                        parent: parent.clone(),
                        spec,
                    })
                }),
                "TrafficSetting" => serde_json::from_value(spec).map(|spec| {
                    config.settings.push(Setting {
                        path: path.clone(),
                        parent: parent.clone(),
                        spec,
                    })
                }),
                "ServiceRoute" => serde_json::from_value(spec).map(|spec| {
                    config.routes.push(ServiceRoute {
                        path: path.clone(),
                        group: parent.clone(),
                        spec,
                    })
                }),
                _ => Ok(()),
            };
            if let Err(e) = parsed {
                config.errors.push(error(&path, "spec", e.to_string()));
            }
        }
        config.workspaces.sort_by(|a, b| a.path.cmp(&b.path));
        config.groups.sort_by(|a, b| a.path.cmp(&b.path));
        config.settings.sort_by(|a, b| a.path.cmp(&b.path));
        config.routes.sort_by(|a, b| a.path.cmp(&b.path));
        config.security_groups.sort_by(|a, b| a.path.cmp(&b.path));
        config.security_settings.sort_by(|a, b| a.path.cmp(&b.path));
        config
    }

    /// The workspace that owns `namespace` in this cluster: the first by
    /// path whose selector covers it.
    fn workspace_of(&self, namespace: &str) -> Option<&Workspace> {
        self.workspace_at(&self.cluster, namespace)
    }

    /// The workspace that owns `namespace` in `cluster`, among those this
    /// cluster knows (the ones that select it).
    fn workspace_at(&self, cluster: &str, namespace: &str) -> Option<&Workspace> {
        let entry = format!("{cluster}/{namespace}");
        self.workspaces
            .iter()
            .find(|w| selector_covers(&w.selector, &entry))
    }

    /// The security settings that apply to `key`, least specific level
    /// first (workspace, security group, service), with its workspace.
    fn security_levels(
        &self,
        key: &ServiceKey,
    ) -> Option<(&Workspace, [Vec<&SecuritySetting>; 3])> {
        let workspace = self.workspace_of(&key.namespace)?;
        let attached = |s: &SecuritySetting| {
            s.parent == workspace.path
                || self
                    .security_groups
                    .iter()
                    .any(|g| g.path == s.parent && self.group_covers(g, &key.namespace))
        };
        let names_service = |s: &SecuritySetting| {
            s.spec
                .service
                .as_ref()
                .is_some_and(|r| r.name == key.name && r.namespace == key.namespace)
        };
        let levels: [Vec<&SecuritySetting>; 3] = [
            self.security_settings
                .iter()
                .filter(|s| s.parent == workspace.path && s.spec.service.is_none())
                .collect(),
            self.security_settings
                .iter()
                .filter(|s| s.parent != workspace.path && s.spec.service.is_none() && attached(s))
                .collect(),
            self.security_settings
                .iter()
                .filter(|s| names_service(s) && attached(s))
                .collect(),
        ];
        Some((workspace, levels))
    }

    /// The security setting that decides one part (`part`, read by
    /// `get`) for `key`: the first, by path, of the most specific level
    /// that sets it. Others at that level that set it differently are
    /// reported.
    fn deciding<T>(
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
    fn permissive(&self, key: &ServiceKey, errors: &mut Vec<ConfigError>) -> bool {
        self.deciding(key, "mtls", |s| s.mtls.as_ref(), |a, b| a == b, errors)
            .is_some_and(|s| s.spec.mtls == Some(MtlsMode::Permissive))
    }

    /// The end-user token checks of `key`'s sidecars, and the clusters
    /// their key fetches go through.
    fn jwt_check(
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
        let mut providers = Vec::new();
        let mut clusters = Vec::new();
        for (i, issuer) in authentication.jwt.iter().enumerate() {
            let jwks = match (&issuer.jwks, &issuer.jwks_uri, issuer.jwks_location()) {
                (Some(doc), _, _) => Jwks::Inline(doc.clone()),
                (None, Some(uri), Some(Ok(location))) => {
                    let cluster = format!("jwks|{}:{}", location.host, location.port);
                    if !clusters.iter().any(|c: &Cluster| c.name == cluster) {
                        clusters.push(Cluster {
                            external: Some(ExternalHost {
                                host: location.host,
                                port: location.port,
                                tls: location.tls,
                            }),
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
                name: format!("{}#jwt[{i}]", setting.path),
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
        Some((
            JwtCheck {
                providers,
                required_for: authentication
                    .require_for
                    .iter()
                    .map(request_match)
                    .collect(),
            },
            clusters,
        ))
    }

    /// Who may call `key`: the most specific level of security settings
    /// with rules decides (workspace < security group < service); with no
    /// setting, nobody.
    fn authorization(
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
    fn report_claims_without_tokens(
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
    fn caller_ids(
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

    /// Whether a traffic group's settings and routes reach `namespace`.
    fn group_covers(&self, group: &Group, namespace: &str) -> bool {
        let entry = format!("{}/{namespace}", self.cluster);
        let in_workspace = self
            .workspace_of(namespace)
            .is_some_and(|w| w.path == group.workspace);
        in_workspace && (group.selector.is_empty() || selector_covers(&group.selector, &entry))
    }
}

/// A service: `name` in `namespace`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct ServiceKey {
    pub namespace: String,
    pub name: String,
}

impl ServiceKey {
    /// The server name callers send, by which other clusters' east-west
    /// gateways pick the service.
    fn sni(&self) -> String {
        format!("{}.{}.mesh", self.name, self.namespace)
    }

    /// How translation names the service: `name.namespace`.
    pub fn id(&self) -> String {
        format!("{}.{}", self.name, self.namespace)
    }

    fn cluster_name(&self, subset: Option<&str>) -> String {
        match subset {
            Some(subset) => format!("out|{}.{}|{subset}", self.name, self.namespace),
            None => format!("out|{}.{}", self.name, self.namespace),
        }
    }
}

/// The settings that apply to one service after merging: for each part,
/// the most specific setting that gives it (service over group over
/// workspace).
#[derive(Default)]
struct Policy {
    timeout: Option<Duration>,
    retries: Option<Retries>,
    circuit_breaker: Option<CircuitBreaker>,
    outlier_detection: Option<OutlierDetection>,
    load_balancer: Option<LoadBalancer>,
    connection_pool: Option<ConnectionPool>,
    locality: Option<LocalityPolicy>,
}

/// The intermediate form: everything decided about one service.
struct ServicePlan<'c> {
    key: ServiceKey,
    /// How callers check the instances' certificates.
    mtls: Option<Mtls>,
    workspace: Option<String>,
    instances: Vec<&'c Workload>,
    /// Other clusters that run the service, nearest first: the backup of
    /// the local instances, or the only way to it.
    remote: Vec<RemoteEndpoints>,
    route: Option<&'c ServiceRoute>,
    policy: Policy,
    /// The service's EDS clusters (all instances, then each subset).
    clusters: BTreeMap<String, Endpoints>,
}

/// What translation produced, in the shared form: what many proxies
/// receive alike is here once, and each proxy names what it shares.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Translation {
    /// Each service callers may reach (`name.namespace`): its clusters and
    /// endpoint sets, the same for every caller.
    pub services: BTreeMap<String, ServiceResources>,
    /// Each caller group's outbound side, by group id.
    pub outbound: BTreeMap<String, Outbound>,
    /// By proxy (node id).
    pub proxies: BTreeMap<String, ProxyPlan>,
    pub errors: Vec<ConfigError>,
}

/// What every caller of one service gets for it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceResources {
    pub clusters: Vec<Cluster>,
    pub endpoints: Vec<Endpoints>,
}

/// The outbound route table of the callers that see the same services
/// by the same names: one workspace, one namespace, one declared set of
/// services called.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Outbound {
    /// The services the table routes to, by id in [`Translation::services`].
    pub services: Vec<String>,
    pub route_table: RouteTable,
}

/// One proxy: what is its own, and the caller group whose outbound side
/// it shares.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyPlan {
    /// Its listeners and inbound side.
    pub own: ProxyConfig,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbound: Option<String>,
}

impl Translation {
    /// Everything proxy `node` is sent, in one piece: its shared resources
    /// first, then its own.
    pub fn proxy_config(&self, node: &str) -> Option<ProxyConfig> {
        let plan = self.proxies.get(node)?;
        let mut config = ProxyConfig::default();
        if let Some(outbound) = plan.outbound.as_ref().and_then(|g| self.outbound.get(g)) {
            for service in outbound
                .services
                .iter()
                .filter_map(|s| self.services.get(s))
            {
                config.clusters.extend(service.clusters.iter().cloned());
                config.endpoints.extend(service.endpoints.iter().cloned());
            }
            config.routes.push(outbound.route_table.clone());
        }
        let own = plan.own.clone();
        config.clusters.extend(own.clusters);
        config.endpoints.extend(own.endpoints);
        config.listeners.extend(own.listeners);
        config.routes.extend(own.routes);
        config.passthrough.extend(own.passthrough);
        Some(config)
    }

    /// Every proxy's config in one piece, with the errors: what golden
    /// files and `weft x translate` show.
    pub fn per_proxy(&self) -> PerProxy {
        PerProxy {
            proxies: self
                .proxies
                .keys()
                .filter_map(|node| Some((node.clone(), self.proxy_config(node)?)))
                .collect(),
            errors: self.errors.clone(),
        }
    }
}

/// Each proxy's whole config, by node id.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PerProxy {
    pub proxies: BTreeMap<String, ProxyConfig>,
    pub errors: Vec<ConfigError>,
}

fn parse_duration(value: &Option<String>) -> Option<Duration> {
    value
        .as_deref()
        .and_then(|v| humantime::parse_duration(v).ok())
}

/// A cluster of one fixed host with default settings; the caller says
/// which host (`local` or `external`).
fn single_host_cluster(name: &str) -> Cluster {
    Cluster {
        name: name.to_string(),
        local: None,
        connect_timeout_ms: millis(DEFAULT_CONNECT_TIMEOUT),
        lb_policy: LbPolicy::RoundRobin,
        limits: None,
        outlier_detection: None,
        idle_timeout_ms: None,
        max_requests_per_connection: None,
        mtls: None,
        external: None,
        passthrough: false,
    }
}

fn millis(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// Merges the settings that apply to `key`, reporting two settings of
/// the same specificity that both set one part.
fn merge_policy(
    config: &Config,
    key: &ServiceKey,
    workspace: Option<&str>,
    errors: &mut Vec<ConfigError>,
) -> Policy {
    let mut policy = Policy::default();
    let Some(workspace) = workspace else {
        return policy;
    };
    let names_service = |s: &Setting| {
        s.spec
            .service
            .as_ref()
            .is_some_and(|r| r.name == key.name && r.namespace == key.namespace)
    };
    let attached = |s: &Setting| {
        s.parent == workspace
            || config
                .groups
                .iter()
                .any(|g| g.path == s.parent && config.group_covers(g, &key.namespace))
    };
    // Least specific first; a later level overrides an earlier one.
    let levels: [Vec<&Setting>; 3] = [
        config
            .settings
            .iter()
            .filter(|s| s.parent == workspace && s.spec.service.is_none())
            .collect(),
        config
            .settings
            .iter()
            .filter(|s| s.parent != workspace && s.spec.service.is_none() && attached(s))
            .collect(),
        config
            .settings
            .iter()
            .filter(|s| names_service(s) && attached(s))
            .collect(),
    ];
    for level in levels {
        let mut set_here: BTreeMap<&str, &str> = BTreeMap::new();
        for setting in level {
            let spec = &setting.spec;
            let mut claim = |part: &'static str, present: bool| -> bool {
                if !present {
                    return false;
                }
                if let Some(first) = set_here.get(part) {
                    errors.push(error(
                        &setting.path,
                        &format!("spec.{part}"),
                        format!(
                            "conflicts with {first}, which also sets {part} for {}.{}; that one applies",
                            key.name, key.namespace
                        ),
                    ));
                    return false;
                }
                set_here.insert(part, &setting.path);
                true
            };
            if claim("timeout", spec.timeout.is_some()) {
                policy.timeout = parse_duration(&spec.timeout);
            }
            if claim("retries", spec.retries.is_some()) {
                policy.retries = spec.retries.clone();
            }
            if claim("circuitBreaker", spec.circuit_breaker.is_some()) {
                policy.circuit_breaker = spec.circuit_breaker.clone();
            }
            if claim("outlierDetection", spec.outlier_detection.is_some()) {
                policy.outlier_detection = spec.outlier_detection.clone();
            }
            if claim("loadBalancer", spec.load_balancer.is_some()) {
                policy.load_balancer = spec.load_balancer;
            }
            if claim("connectionPool", spec.connection_pool.is_some()) {
                policy.connection_pool = spec.connection_pool.clone();
            }
            if claim("locality", spec.locality.is_some()) {
                policy.locality = spec.locality.clone();
            }
        }
    }
    policy
}

/// Whether two localities agree on `attribute` (`region`, `zone`,
/// `network` or `label:KEY`); unset never agrees.
fn same_at(attribute: &str, a: &Locality, b: &Locality) -> bool {
    let pick = |l: &'_ Locality| -> Option<String> {
        match attribute {
            "region" => Some(l.region.clone()),
            "zone" => Some(l.zone.clone()),
            "network" => Some(l.network.clone()),
            other => other
                .strip_prefix("label:")
                .and_then(|key| l.labels.get(key).cloned()),
        }
    };
    matches!((pick(a), pick(b)), (Some(x), Some(y)) if !x.is_empty() && x == y)
}

/// The other clusters that run `key` for callers of `workspace`, with
/// their gateways at a priority each: clusters that agree with this one
/// on more leading attributes of the failover priority come first, all
/// behind the local instances (if there are any).
fn remote_endpoints(
    config: &Config,
    directory: &Directory,
    key: &ServiceKey,
    workspace: Option<&str>,
    policy: &Policy,
    local: bool,
) -> Vec<RemoteEndpoints> {
    let locality = policy.locality.as_ref();
    if workspace.is_none() || locality.and_then(|l| l.cross_cluster) == Some(false) {
        return Vec::new();
    }
    let order: Vec<&str> = match locality {
        Some(l) if !l.failover_priority.is_empty() => {
            l.failover_priority.iter().map(String::as_str).collect()
        }
        _ => LocalityPolicy::DEFAULT_PRIORITY.to_vec(),
    };
    let item = format!("{}/{}", key.namespace, key.name);
    let mut ranked = Vec::new();
    for (name, remote) in &directory.clusters {
        let (Some(site), Some(service)) = (&remote.site, remote.services.get(&item)) else {
            continue;
        };
        let gateways: Vec<SocketAddr> = site
            .gateways
            .iter()
            .filter_map(|g| g.parse::<std::net::SocketAddr>().ok())
            .map(|g| SocketAddr {
                address: g.ip().to_string(),
                port: g.port(),
            })
            .collect();
        // Only the same service: in the same workspace there as here.
        let same_workspace = config
            .workspace_at(name, &key.namespace)
            .map(|w| w.path.as_str())
            == workspace;
        if *name == config.cluster || gateways.is_empty() || service.healthy == 0 || !same_workspace
        {
            continue;
        }
        let agreeing = order
            .iter()
            .take_while(|attribute| same_at(attribute, &config.locality, &site.locality))
            .count();
        let weight = service.healthy.div_ceil(gateways.len() as u32);
        ranked.push((
            order.len() - agreeing,
            RemoteEndpoints {
                cluster: name.clone(),
                region: site.locality.region.clone(),
                zone: site.locality.zone.clone(),
                priority: 0,
                weight,
                gateways,
            },
        ));
    }
    let mut ranks: Vec<usize> = ranked.iter().map(|(rank, _)| *rank).collect();
    ranks.sort_unstable();
    ranks.dedup();
    let first = u32::from(local);
    let mut remote: Vec<RemoteEndpoints> = ranked
        .into_iter()
        .map(|(rank, mut endpoints)| {
            let level = ranks.iter().position(|r| *r == rank).unwrap_or_default();
            endpoints.priority = first + level as u32;
            endpoints
        })
        .collect();
    remote.sort_by(|a, b| (a.priority, &a.cluster).cmp(&(b.priority, &b.cluster)));
    remote
}

impl<'c> ServicePlan<'c> {
    fn new(
        config: &'c Config,
        directory: &Directory,
        key: ServiceKey,
        instances: Vec<&'c Workload>,
        errors: &mut Vec<ConfigError>,
    ) -> ServicePlan<'c> {
        // A service that runs only elsewhere belongs to the workspace that
        // holds its namespace there.
        let item = format!("{}/{}", key.namespace, key.name);
        let workspace = config
            .workspace_of(&key.namespace)
            .or_else(|| {
                directory
                    .clusters
                    .iter()
                    .filter(|(_, remote)| remote.services.contains_key(&item))
                    .find_map(|(name, _)| config.workspace_at(name, &key.namespace))
            })
            .map(|w| w.path.clone());
        let mut routes = config.routes.iter().filter(|r| {
            r.spec.service.name == key.name
                && r.spec.service.namespace == key.namespace
                && config
                    .groups
                    .iter()
                    .any(|g| g.path == r.group && config.group_covers(g, &key.namespace))
        });
        let route = routes.next();
        for other in routes {
            errors.push(error(
                &other.path,
                "spec.service",
                format!(
                    "{}.{} is already routed by {}; that one applies",
                    key.name,
                    key.namespace,
                    route.map(|r| r.path.as_str()).unwrap_or_default()
                ),
            ));
        }
        let policy = merge_policy(config, &key, workspace.as_deref(), errors);
        let remote = remote_endpoints(
            config,
            directory,
            &key,
            workspace.as_deref(),
            &policy,
            !instances.is_empty(),
        );
        // Callers accept only the identities the service's instances have,
        // here and in the clusters they may be sent to.
        let mtls = config.trust_domain.as_ref().map(|trust_domain| {
            let elsewhere = remote
                .iter()
                .filter_map(|r| directory.clusters.get(&r.cluster))
                .filter_map(|c| c.services.get(&item))
                .flat_map(|s| s.service_accounts.iter().map(String::as_str));
            let peers: BTreeSet<String> = instances
                .iter()
                .map(|w| w.service_account.as_str())
                .chain(elsewhere)
                .map(|account| format!("spiffe://{trust_domain}/ns/{}/sa/{account}", key.namespace))
                .collect();
            Mtls {
                trust_domain: trust_domain.clone(),
                peers: peers.into_iter().collect(),
                permissive: false,
                sni: Some(key.sni()),
            }
        });
        let mut plan = ServicePlan {
            key,
            mtls,
            workspace,
            instances,
            remote,
            route,
            policy,
            clusters: BTreeMap::new(),
        };
        plan.clusters = plan.endpoint_sets();
        plan
    }

    /// The service's EDS clusters and their endpoints: every instance
    /// (and other clusters' gateways behind them), and each subset's
    /// instances (here only: the directory knows no labels).
    fn endpoint_sets(&self) -> BTreeMap<String, Endpoints> {
        let address = |w: &&Workload| SocketAddr {
            address: w.address.clone(),
            port: w.port,
        };
        let set = |cluster: String, mut endpoints: Vec<SocketAddr>, remote| {
            endpoints.sort();
            let endpoints = Endpoints {
                cluster: cluster.clone(),
                endpoints,
                remote,
            };
            (cluster, endpoints)
        };
        let mut sets = BTreeMap::from([set(
            self.key.cluster_name(None),
            self.instances.iter().map(address).collect(),
            self.remote.clone(),
        )]);
        if let Some(route) = self.route {
            for subset in &route.spec.subsets {
                let members = self
                    .instances
                    .iter()
                    .filter(|w| {
                        subset
                            .labels
                            .iter()
                            .all(|(k, v)| w.labels.get(k) == Some(v))
                    })
                    .map(address)
                    .collect();
                let (name, endpoints) = set(
                    self.key.cluster_name(Some(&subset.name)),
                    members,
                    Vec::new(),
                );
                sets.insert(name, endpoints);
            }
        }
        sets
    }

    fn sticky(&self) -> Option<&StickySession> {
        self.route.and_then(|r| r.spec.sticky_session.as_ref())
    }

    fn cluster(&self, name: &str) -> Cluster {
        let policy = &self.policy;
        let lb_policy = if self.sticky().is_some() {
            LbPolicy::RingHash
        } else {
            match policy.load_balancer {
                None | Some(LoadBalancer::RoundRobin) => LbPolicy::RoundRobin,
                Some(LoadBalancer::LeastRequest) => LbPolicy::LeastRequest,
                Some(LoadBalancer::RingHash) => LbPolicy::RingHash,
                Some(LoadBalancer::Random) => LbPolicy::Random,
            }
        };
        let budget = policy.retries.as_ref().and_then(|r| r.budget.as_ref());
        let limits = (policy.circuit_breaker.is_some() || budget.is_some()).then(|| {
            let cb = policy.circuit_breaker.as_ref();
            Limits {
                max_connections: cb.and_then(|c| c.max_connections),
                max_pending_requests: cb.and_then(|c| c.max_pending_requests),
                max_requests: cb.and_then(|c| c.max_requests),
                max_retries: cb.and_then(|c| c.max_retries),
                retry_budget_percent: budget.map(|b| b.percent),
                retry_budget_min_concurrency: budget.and_then(|b| b.min_concurrency),
            }
        });
        let outlier_detection = policy.outlier_detection.as_ref().map(|o| Outlier {
            consecutive_5xx: o.consecutive_5xx.unwrap_or(5),
            interval_ms: millis(parse_duration(&o.interval).unwrap_or(Duration::from_secs(10))),
            base_ejection_time_ms: millis(
                parse_duration(&o.base_ejection_time).unwrap_or(Duration::from_secs(30)),
            ),
            max_ejection_percent: o.max_ejection_percent.unwrap_or(10),
        });
        let pool = policy.connection_pool.as_ref();
        Cluster {
            name: name.to_string(),
            local: None,
            connect_timeout_ms: millis(
                pool.and_then(|p| parse_duration(&p.connect_timeout))
                    .unwrap_or(DEFAULT_CONNECT_TIMEOUT),
            ),
            lb_policy,
            limits,
            outlier_detection,
            idle_timeout_ms: pool
                .and_then(|p| parse_duration(&p.idle_timeout))
                .map(millis),
            max_requests_per_connection: pool.and_then(|p| p.max_requests_per_connection),
            mtls: self.mtls.clone(),
            external: None,
            passthrough: false,
        }
    }

    fn forward(&self, clusters: BTreeMap<String, u32>) -> Forward {
        let retries = self.policy.retries.as_ref().map(|r| {
            let retry_on: Vec<&str> = if r.retry_on.is_empty() {
                vec!["connect-failure", "refused-stream", "reset", "5xx"]
            } else {
                r.retry_on.iter().map(|c| retry_condition(*c)).collect()
            };
            Retry {
                retry_on: retry_on.join(","),
                attempts: r.attempts,
                per_try_timeout_ms: parse_duration(&r.per_try_timeout).map(millis),
                next_priority: !self.remote.is_empty(),
            }
        });
        let hash_on = self.sticky().and_then(|s| match (&s.header, &s.cookie) {
            (Some(header), _) => Some(HashOn::Header(header.clone())),
            (None, Some(cookie)) => Some(HashOn::Cookie {
                name: cookie.name.clone(),
                ttl_ms: parse_duration(&cookie.ttl).map(millis),
            }),
            (None, None) => None,
        });
        Forward {
            clusters,
            timeout_ms: self.policy.timeout.map(millis),
            retries,
            hash_on,
        }
    }

    /// The service's routes: its ServiceRoute's rules in order, then
    /// everything else to all instances.
    fn routes(&self) -> Vec<Route> {
        let mut routes = Vec::new();
        let mut caught_all = false;
        if let Some(route) = self.route {
            for rule in &route.spec.rules {
                let clusters: BTreeMap<String, u32> = rule
                    .destinations
                    .iter()
                    .map(|d| (self.key.cluster_name(d.subset.as_deref()), d.weight))
                    .collect();
                let action = Action::Forward(self.forward(clusters));
                if rule.matches.is_empty() {
                    routes.push(Route {
                        matcher: RouteMatch::default(),
                        action,
                    });
                    caught_all = true;
                    break;
                }
                for m in &rule.matches {
                    routes.push(Route {
                        matcher: request_match(m),
                        action: action.clone(),
                    });
                }
            }
        }
        if !caught_all {
            let all = BTreeMap::from([(self.key.cluster_name(None), 100)]);
            routes.push(Route {
                matcher: RouteMatch::default(),
                action: Action::Forward(self.forward(all)),
            });
        }
        routes
    }

    /// Names a caller in `namespace` may use for this service.
    fn domains(&self, caller_namespace: &str) -> Vec<String> {
        let ServiceKey { name, namespace } = &self.key;
        let mut domains = vec![
            format!("{name}.{namespace}"),
            format!("{name}.{namespace}.svc"),
        ];
        if namespace == caller_namespace {
            domains.insert(0, name.clone());
        }
        domains
    }
}

/// A request condition in proxy terms; the method is the `:method` header.
fn request_match(m: &RequestMatch) -> RouteMatch {
    let mut headers: Vec<HeaderCondition> = m
        .headers
        .iter()
        .map(|h| HeaderCondition {
            name: h.name.clone(),
            test: match (&h.exact, &h.prefix, h.present) {
                (Some(v), _, _) => HeaderTest::Exact(v.clone()),
                (None, Some(v), _) => HeaderTest::Prefix(v.clone()),
                (None, None, present) => HeaderTest::Present(present.unwrap_or(true)),
            },
        })
        .collect();
    if let Some(method) = m.method {
        headers.insert(
            0,
            HeaderCondition {
                name: ":method".into(),
                test: HeaderTest::Exact(method.as_str().into()),
            },
        );
    }
    let (path, prefix) = match &m.path {
        Some(p) => (p.exact.clone(), p.prefix.clone()),
        None => (None, None),
    };
    RouteMatch {
        path,
        prefix,
        headers,
    }
}

fn retry_condition(condition: RetryOn) -> &'static str {
    match condition {
        RetryOn::ServerError => "5xx",
        RetryOn::GatewayError => "gateway-error",
        RetryOn::Reset => "reset",
        RetryOn::ConnectFailure => "connect-failure",
        RetryOn::RefusedStream => "refused-stream",
        RetryOn::Retriable4xx => "retriable-4xx",
    }
}

/// The answer for a hostname the mesh does not know, or (`declared`) one
/// the proxy did not declare it calls.
fn unknown_host(declared: bool) -> VirtualHost {
    let body = if declared {
        "weft: this proxy declared the services it calls (weft sidecar --calls) and this is not one of them; add it there, or call one of them as <service>, <service>.<namespace> or <service>.<namespace>.svc\n"
    } else {
        "weft: no service by this name is reachable from here; call it as <service>, <service>.<namespace> or <service>.<namespace>.svc\n"
    };
    VirtualHost {
        name: "unknown".into(),
        domains: vec!["*".into()],
        routes: vec![Route {
            matcher: RouteMatch::default(),
            action: Action::DirectResponse {
                status: 404,
                body: body.into(),
            },
        }],
        authorization: None,
    }
}

/// An east-west gateway's config: a route by SNI to the instances of
/// every service that runs here.
fn eastwest_gateway(gateway: &Workload, plans: &[ServicePlan<'_>]) -> ProxyConfig {
    let mut proxy = ProxyConfig::default();
    let mut routes = BTreeMap::new();
    for plan in plans.iter().filter(|p| !p.instances.is_empty()) {
        let name = format!("ew|{}.{}", plan.key.name, plan.key.namespace);
        let mut endpoints: Vec<SocketAddr> = plan
            .instances
            .iter()
            .map(|w| SocketAddr {
                address: w.address.clone(),
                port: w.port,
            })
            .collect();
        endpoints.sort();
        proxy.clusters.push(Cluster {
            passthrough: true,
            ..single_host_cluster(&name)
        });
        proxy.endpoints.push(Endpoints {
            cluster: name.clone(),
            endpoints,
            remote: Vec::new(),
        });
        routes.insert(plan.key.sni(), name);
    }
    // Envoy takes no listener without a filter chain.
    if !routes.is_empty() {
        proxy.passthrough.push(SniListener {
            name: EASTWEST.into(),
            address: SocketAddr {
                address: gateway.address.clone(),
                port: gateway.port,
            },
            routes,
        });
    }
    proxy
}

/// Translates the configuration, registry and the other clusters'
/// directory into every proxy's config.
pub fn translate(config: &Config, workloads: &[Workload], directory: &Directory) -> Translation {
    let mut errors = config.errors.clone();

    // Every service that has instances here, a route, or instances
    // elsewhere in a workspace this cluster knows, with its instances.
    let mut instances: BTreeMap<ServiceKey, Vec<&Workload>> = BTreeMap::new();
    for w in workloads.iter().filter(|w| w.is_instance()) {
        let key = ServiceKey {
            namespace: w.namespace.clone(),
            name: w.service.clone(),
        };
        instances.entry(key).or_default().push(w);
    }
    for (cluster, remote) in &directory.clusters {
        for service in remote.services.values() {
            if config.workspace_at(cluster, &service.namespace).is_some() {
                let key = ServiceKey {
                    namespace: service.namespace.clone(),
                    name: service.name.clone(),
                };
                instances.entry(key).or_default();
            }
        }
    }
    for r in &config.routes {
        let key = ServiceKey {
            namespace: r.spec.service.namespace.clone(),
            name: r.spec.service.name.clone(),
        };
        instances.entry(key).or_default();
    }
    let plans: Vec<ServicePlan> = instances
        .into_iter()
        .map(|(key, members)| ServicePlan::new(config, directory, key, members, &mut errors))
        .collect();

    // A proxy sees the services of its own workspace (or those it
    // declared it calls): index them so each group walks only those.
    let mut by_workspace: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, plan) in plans.iter().enumerate() {
        if let Some(workspace) = plan.workspace.as_deref() {
            by_workspace.entry(workspace).or_default().push(i);
        }
    }

    let mut translation = Translation::default();
    // Routes are the same for every caller of a service: build them once.
    let mut routes: BTreeMap<usize, Vec<Route>> = BTreeMap::new();
    // The inbound verdict is the same for every instance of a service.
    let mut inbound: BTreeMap<ServiceKey, InboundPlan> = BTreeMap::new();
    for w in workloads {
        if w.role == Role::Eastwest {
            let own = eastwest_gateway(w, &plans);
            translation.proxies.insert(
                w.node.clone(),
                ProxyPlan {
                    own,
                    outbound: None,
                },
            );
            continue;
        }
        let mut proxy = ProxyPlan::default();
        if let Some(outbound_port) = w.outbound_port {
            let workspace = config.workspace_of(&w.namespace);
            let group = group_id(workspace.map(|ws| ws.path.as_str()), w);
            if !translation.outbound.contains_key(&group) {
                let visible = workspace
                    .and_then(|ws| by_workspace.get(ws.path.as_str()))
                    .map_or(&[][..], Vec::as_slice)
                    .iter()
                    .copied()
                    .filter(|&i| w.calls_service(&plans[i].key.name, &plans[i].key.namespace));
                let mut services = Vec::new();
                let mut virtual_hosts = Vec::new();
                for i in visible {
                    let plan = &plans[i];
                    let id = plan.key.id();
                    translation
                        .services
                        .entry(id.clone())
                        .or_insert_with(|| ServiceResources {
                            clusters: plan
                                .clusters
                                .keys()
                                .map(|name| plan.cluster(name))
                                .collect(),
                            endpoints: plan.clusters.values().cloned().collect(),
                        });
                    services.push(id.clone());
                    virtual_hosts.push(VirtualHost {
                        name: id,
                        domains: plan.domains(&w.namespace),
                        routes: routes.entry(i).or_insert_with(|| plan.routes()).clone(),
                        authorization: None,
                    });
                }
                virtual_hosts.push(unknown_host(!w.calls.is_empty()));
                translation.outbound.insert(
                    group.clone(),
                    Outbound {
                        services,
                        route_table: RouteTable {
                            name: OUTBOUND.into(),
                            virtual_hosts,
                        },
                    },
                );
            }
            proxy.outbound = Some(group);
            proxy.own.listeners.push(Listener {
                name: OUTBOUND.into(),
                address: SocketAddr {
                    address: "127.0.0.1".into(),
                    port: outbound_port,
                },
                route_table: OUTBOUND.into(),
                mtls: None,
                authorize: false,
                jwt: None,
            });
        }
        if let Some(app_port) = w.app_port {
            let own = &mut proxy.own;
            own.clusters.push(Cluster {
                local: Some(SocketAddr {
                    address: "127.0.0.1".into(),
                    port: app_port,
                }),
                ..single_host_cluster(LOCAL_APP)
            });
            let key = ServiceKey {
                namespace: w.namespace.clone(),
                name: w.service.clone(),
            };
            let verdict = inbound
                .entry(key.clone())
                .or_insert_with(|| InboundPlan::new(config, &key, &mut errors));
            own.clusters.extend(verdict.jwks_clusters.iter().cloned());
            own.listeners.push(Listener {
                name: INBOUND.into(),
                address: SocketAddr {
                    address: w.address.clone(),
                    port: w.port,
                },
                route_table: INBOUND.into(),
                // Any workload of the trust domain may connect; which may
                // call is authorization's business.
                mtls: config.trust_domain.as_ref().map(|trust_domain| Mtls {
                    trust_domain: trust_domain.clone(),
                    peers: Vec::new(),
                    permissive: verdict.permissive,
                    sni: None,
                }),
                authorize: config.trust_domain.is_some(),
                jwt: verdict.jwt.clone(),
            });
            own.routes.push(RouteTable {
                name: INBOUND.into(),
                virtual_hosts: vec![VirtualHost {
                    name: INBOUND.into(),
                    domains: vec!["*".into()],
                    routes: vec![Route {
                        matcher: RouteMatch::default(),
                        // The caller's side owns the timeout.
                        action: Action::Forward(Forward {
                            clusters: BTreeMap::from([(LOCAL_APP.to_string(), 100)]),
                            timeout_ms: Some(0),
                            retries: None,
                            hash_on: None,
                        }),
                    }],
                    authorization: verdict.authorization.clone(),
                }],
            });
        }
        translation.proxies.insert(w.node.clone(), proxy);
    }
    errors.sort();
    errors.dedup();
    translation.errors = errors;
    translation
}

/// Callers that see the same services by the same names share one
/// outbound side: same workspace, same namespace, same declared calls.
fn group_id(workspace: Option<&str>, caller: &Workload) -> String {
    let mut id = format!("{}|{}", workspace.unwrap_or("-"), caller.namespace);
    if !caller.calls.is_empty() {
        id.push_str("|calls=");
        id.push_str(&caller.calls.join(","));
    }
    id
}

/// What the sidecars of one service check on every request they take:
/// decided once per service, not once per instance.
struct InboundPlan {
    permissive: bool,
    jwt: Option<JwtCheck>,
    /// Where the token issuers' keys are fetched from.
    jwks_clusters: Vec<Cluster>,
    authorization: Option<Authorization>,
}

impl InboundPlan {
    fn new(config: &Config, key: &ServiceKey, errors: &mut Vec<ConfigError>) -> InboundPlan {
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

//! Gateways: what a gateway workload (`weft gateway`) serves, from the
//! Gateways that select it. Each port becomes one listener: a filter
//! chain per TLS server, chosen by SNI, or one chain for all the port's
//! plain-HTTP servers, chosen by Host. Each server is a virtual host whose
//! routes are the server's rules in order; they send to mesh services
//! over mTLS under the gateway's own identity, through the same service
//! clusters (and TrafficSettings) as sidecars use.
//!
//! Two Gateways that select one workload may not claim the same port
//! for different uses, nor the same port and hostname: the later (by
//! path) is reported and left out.

use std::collections::{BTreeMap, BTreeSet};

use weft_api::edge::{ConfigError, DirectoryIngress};
use weft_api::gateway::{
    Cors, GatewayRoute, GatewayRule, HeaderChanges, HttpServer, Scheme, ServiceTarget,
    parse_service,
};

use super::addon::AUTH_SERVICE;
use super::authservice::{auth_service_for, login_check};
use super::egress::egress_virtual_hosts;
use super::parse::{Config, Gateway, error};
use super::plan::{ServiceKey, ServicePlan};
use super::ratelimit::{no_service, rate_limit_service, shared_limits};
use super::relay::{relays, tcp_targets};
use super::resilience::{local_rate_limit, millis, parse_duration};
use super::routing::request_match;
use super::security::token_check;
use super::tier1::tier1_route;
use crate::directory::Directory;
use crate::proxy::{
    AccessRule, Action, Authorization, CorsPolicy, Endpoints, Forward, GatewayListener,
    HeaderEdits, HttpChain, Mtls, ProxyConfig, Redirect, Route, RouteChanges, RouteMatch,
    RouteTable, ScopedJwt, ServerTls, SocketAddr, VirtualHost,
};
use weft_agent::workload::{Role, Workload};

/// The listener (and route table) other clusters' tier-1 gateways reach.
const MESH_LISTENER: &str = "gateway-mesh";

/// The answer where a route cannot be served as written (its problem is
/// reported with the configuration; the client learns nothing of it).
const UNAVAILABLE: &str = "weft gateway: the service behind this route is unavailable\n";

/// One HTTP server of a Gateway that selects the workload.
struct Server<'c> {
    gateway: &'c Gateway,
    /// `spec.http[i]`.
    at: String,
    spec: &'c weft_api::gateway::HttpServer,
}

impl Server<'_> {
    fn vhost_name(&self) -> String {
        format!("{}#{}", self.gateway.path, self.at)
    }
}

/// What names a Gateway's http server to the add-on services (its rules'
/// ids, its sign-in): `GATEWAY#SERVER`.
pub(super) fn server_id(gateway_path: &str, server: &str) -> String {
    format!("{gateway_path}#{server}")
}

/// By port: whether it is TLS, and its servers.
type Ports<'c> = BTreeMap<u16, (bool, Vec<Server<'c>>)>;

/// Whether `gateway` runs on workload `w`: its namespace, and all the
/// selector's labels.
pub(super) fn selects(gateway: &Gateway, w: &Workload) -> bool {
    let selector = &gateway.spec.workload_selector;
    selector.namespace == w.namespace
        && selector
            .labels
            .iter()
            .all(|(k, v)| w.labels.get(k) == Some(v))
}

/// The services gateway routes send to: their plans must exist even
/// where no instance runs yet.
pub(super) fn gateway_targets(config: &Config) -> Vec<ServiceKey> {
    config
        .gateways
        .iter()
        .flat_map(|g| &g.spec.http)
        .flat_map(|s| &s.routes)
        .flat_map(|r| &r.to)
        .filter_map(|t| parse_service(&t.service).ok())
        .map(|(namespace, name)| ServiceKey {
            namespace: namespace.to_string(),
            name: name.to_string(),
        })
        .chain(tcp_targets(config.gateways.iter()))
        .collect()
}

/// The hostnames this cluster's gateways serve to other clusters' tier-1
/// gateways (those with a mesh port), with the gateways serving each.
pub(super) fn exposure<'w>(
    config: &Config,
    workloads: &'w [Workload],
) -> BTreeMap<String, Vec<&'w Workload>> {
    let mut exposed: BTreeMap<String, Vec<&Workload>> = BTreeMap::new();
    let gateways = workloads
        .iter()
        .filter(|w| w.role == Role::Gateway && w.port != 0);
    for w in gateways {
        for gateway in config.gateways.iter().filter(|g| selects(g, w)) {
            for server in &gateway.spec.http {
                let serving = exposed.entry(server.hostname.clone()).or_default();
                if !serving.iter().any(|s| s.node == w.node) {
                    serving.push(w);
                }
            }
        }
    }
    exposed
}

/// [`exposure`] as this cluster's directory items.
pub(super) fn ingress_entries(exposed: &BTreeMap<String, Vec<&Workload>>) -> Vec<DirectoryIngress> {
    exposed
        .iter()
        .map(|(hostname, gateways)| {
            let identities: BTreeSet<String> = gateways
                .iter()
                .map(|w| format!("{}/{}", w.namespace, w.service_account))
                .collect();
            DirectoryIngress {
                hostname: hostname.clone(),
                healthy: gateways.len() as u32,
                identities: identities.into_iter().collect(),
            }
        })
        .collect()
}

/// Everything gateway workload `w` is sent.
pub(super) fn gateway_proxy(
    config: &Config,
    directory: &Directory,
    w: &Workload,
    plans: &[ServicePlan<'_>],
    addons: &super::Addons,
    errors: &mut Vec<ConfigError>,
) -> ProxyConfig {
    let context = Context {
        config,
        directory,
        plans,
        reports: super::telemetry::WorkloadTelemetry::new(config, w, errors),
    };
    let mut ports: Ports<'_> = BTreeMap::new();
    let mut hosts: BTreeMap<(u16, &str), String> = BTreeMap::new();
    let selected: Vec<&Gateway> = config.gateways.iter().filter(|g| selects(g, w)).collect();
    for &gateway in &selected {
        for (i, spec) in gateway.spec.http.iter().enumerate() {
            let server = Server {
                gateway,
                at: format!("spec.http[{i}]"),
                spec,
            };
            let tls = spec.tls.is_some();
            if let Some((port_tls, first)) = ports.get(&spec.port)
                && *port_tls != tls
            {
                let first = first.first().map(Server::vhost_name).unwrap_or_default();
                errors.push(error(
                    &gateway.path,
                    &format!("{}.port", server.at),
                    format!(
                        "gateway {}: port {} is {} for {first}; this server is left out",
                        w.node,
                        spec.port,
                        if *port_tls { "TLS" } else { "plain HTTP" }
                    ),
                ));
                continue;
            }
            if let Some(first) = hosts.get(&(spec.port, spec.hostname.as_str())) {
                errors.push(error(
                    &gateway.path,
                    &format!("{}.hostname", server.at),
                    format!(
                        "gateway {}: {first} already serves {} on port {}; this server is left out",
                        w.node, spec.hostname, spec.port
                    ),
                ));
                continue;
            }
            hosts.insert((spec.port, &spec.hostname), server.vhost_name());
            ports
                .entry(spec.port)
                .or_insert_with(|| (tls, Vec::new()))
                .1
                .push(server);
        }
    }

    let mut proxy = ProxyConfig::default();
    let mut services = Services::default();
    for (port, (tls, servers)) in &ports {
        let (port, tls) = (*port, *tls);
        let address = SocketAddr {
            address: w.address.clone(),
            port,
        };
        let name = format!("gateway-{port}");
        let mut chains = Vec::new();
        if tls {
            for server in servers {
                let table = format!("{name}-{}", server.spec.hostname);
                let (vhost, jwt) = virtual_host(&context, server, &mut services, errors);
                proxy.routes.push(RouteTable {
                    name: table.clone(),
                    virtual_hosts: vec![vhost],
                });
                let server_tls = server.spec.tls.as_ref();
                chains.push(HttpChain {
                    name: server.spec.name.clone(),
                    mesh: None,
                    tls: server_tls.map(|t| ServerTls {
                        server_names: vec![server.spec.hostname.clone()],
                        certificate: t.certificate.clone(),
                        client_ca: t.client_ca.clone(),
                    }),
                    route_table: table,
                    rate_limit_service: rate_limit_service(server.spec.rate_limiting.as_ref()),
                    auth_service: None,
                    // SNI already chose the server.
                    jwt: jwt
                        .map(|check| ScopedJwt {
                            hostname: None,
                            except: Vec::new(),
                            check,
                        })
                        .into_iter()
                        .collect(),
                });
            }
        } else {
            let servers: Vec<&Server<'_>> = servers.iter().collect();
            let (virtual_hosts, jwt) = by_host(&context, &servers, &mut services, errors);
            proxy.routes.push(RouteTable {
                name: name.clone(),
                virtual_hosts,
            });
            let chain_name = match servers.as_slice() {
                [only] => only.spec.name.clone(),
                _ => name.clone(),
            };
            chains.push(HttpChain {
                name: chain_name,
                tls: None,
                mesh: None,
                route_table: name.clone(),
                jwt,
                // Apply-time checks make the port's servers agree on it.
                rate_limit_service: servers
                    .iter()
                    .find_map(|s| rate_limit_service(s.spec.rate_limiting.as_ref())),
                auth_service: None,
            });
        }
        proxy.gateways.push(GatewayListener {
            name,
            address,
            chains,
            telemetry: Some(context.reports.caller()),
        });
    }
    if let Some(listener) = mesh_listener(&context, w, (&ports, &selected), &mut services, errors) {
        proxy.gateways.push(listener);
    }
    let asks_limiter = proxy
        .gateways
        .iter()
        .flat_map(|l| &l.chains)
        .any(|c| c.rate_limit_service.is_some());
    if asks_limiter {
        let (cluster, endpoints) = &addons.rate_limit;
        if endpoints.endpoints.is_empty() {
            for server in ports.values().flat_map(|(_, servers)| servers) {
                if server
                    .spec
                    .rate_limiting
                    .as_ref()
                    .is_some_and(|r| r.is_shared())
                {
                    errors.push(no_service(
                        &server.gateway.path,
                        &format!("{}.rateLimiting.rules", server.at),
                        &context.config.cluster,
                    ));
                }
            }
        }
        services.add(cluster, endpoints);
    }
    // Sign-in: on each chain whose table has a server with it.
    let mut asks_auth = false;
    for chain in proxy.gateways.iter_mut().flat_map(|l| &mut l.chains) {
        let table = proxy
            .routes
            .iter_mut()
            .chain(services.routes.iter_mut())
            .find(|t| t.name == chain.route_table);
        chain.auth_service = table.and_then(auth_service_for);
        asks_auth |= chain.auth_service.is_some();
    }
    if asks_auth {
        let (cluster, endpoints) = &addons.auth;
        if endpoints.endpoints.is_empty() {
            for server in ports.values().flat_map(|(_, servers)| servers) {
                if server.spec.oidc().is_some() {
                    errors.push(AUTH_SERVICE.missing(
                        &server.gateway.path,
                        &format!("{}.authentication.oidc", server.at),
                        &context.config.cluster,
                        "its browsers get 503 instead of a sign-in",
                    ));
                }
            }
        }
        services.add(cluster, endpoints);
    }
    let http_ports: BTreeSet<u16> = ports.keys().copied().collect();
    let relays = relays(w, &selected, &http_ports, plans, errors);
    proxy.passthrough = relays.listeners;
    services.clusters.extend(relays.clusters);
    services.endpoints.extend(relays.endpoints);
    proxy.routes.append(&mut services.routes);
    proxy.clusters = services.clusters.into_values().collect();
    proxy
        .clusters
        .extend(context.reports.clusters.iter().cloned());
    proxy.endpoints = services.endpoints.into_values().collect();
    proxy
}

/// `servers` on one chain, told apart by Host: their virtual hosts, and
/// each one's token check for its hostname only.
fn by_host(
    context: &Context<'_, '_>,
    servers: &[&Server<'_>],
    services: &mut Services,
    errors: &mut Vec<ConfigError>,
) -> (Vec<VirtualHost>, Vec<ScopedJwt>) {
    let mut virtual_hosts = Vec::new();
    let mut jwt = Vec::new();
    for server in servers {
        let (vhost, check) = virtual_host(context, server, services, errors);
        virtual_hosts.push(vhost);
        jwt.extend(check.map(|check| ScopedJwt {
            hostname: Some(server.spec.hostname.clone()),
            except: taken_within(
                &server.spec.hostname,
                servers.iter().map(|s| s.spec.hostname.as_str()),
            ),
            check,
        }));
    }
    (virtual_hosts, jwt)
}

/// The hostnames of `servers` that Envoy gives to them rather than to
/// `hostname` although it covers them: exact names under a wildcard, and
/// longer wildcards under it.
fn taken_within<'h>(hostname: &str, others: impl Iterator<Item = &'h str>) -> Vec<String> {
    let Some(domain) = hostname.strip_prefix("*.") else {
        return Vec::new();
    };
    let suffix = format!(".{domain}");
    others
        .filter(|other| {
            let name = other.strip_prefix("*.").unwrap_or(other);
            *other != hostname && name.ends_with(&suffix)
        })
        .map(str::to_string)
        .collect()
}

/// The clusters and endpoint sets the gateway's routes use, by name.
#[derive(Default)]
struct Services {
    clusters: BTreeMap<String, crate::proxy::Cluster>,
    endpoints: BTreeMap<String, Endpoints>,
    /// Route tables besides the ports' (the mesh listener's).
    routes: Vec<RouteTable>,
}

impl Services {
    fn add(&mut self, cluster: &crate::proxy::Cluster, endpoints: &Endpoints) {
        self.clusters.insert(cluster.name.clone(), cluster.clone());
        self.endpoints
            .insert(endpoints.cluster.clone(), endpoints.clone());
    }

    /// The cluster for `target` of `plan`: the whole service, or the
    /// instances with the target's labels.
    fn cluster_for(&mut self, plan: &ServicePlan<'_>, target: &ServiceTarget) -> String {
        for (name, endpoints) in &plan.clusters {
            self.clusters
                .entry(name.clone())
                .or_insert_with(|| plan.cluster(name));
            self.endpoints
                .entry(name.clone())
                .or_insert_with(|| endpoints.clone());
        }
        if target.labels.is_empty() {
            return plan.key.cluster_name(None);
        }
        let labels: Vec<String> = target
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let (name, endpoints) = plan.local_set(
            plan.key.cluster_name(Some(&labels.join(","))),
            &target.labels,
            Vec::new(),
        );
        self.clusters
            .entry(name.clone())
            .or_insert_with(|| plan.cluster(&name));
        self.endpoints.insert(name.clone(), endpoints);
        name
    }
}

/// What translating one gateway reads.
struct Context<'a, 'c> {
    config: &'a Config,
    directory: &'a Directory,
    plans: &'a [ServicePlan<'c>],
    /// What the gateway's listeners report.
    reports: super::telemetry::WorkloadTelemetry,
}

/// The listener other clusters' tier-1 gateways reach (through this
/// cluster's east-west gateways): mutual TLS with the gateway's workload
/// identity on its own port, every hostname it serves (the TLS server
/// where a hostname is served twice), with the same routes and checks.
fn mesh_listener(
    context: &Context<'_, '_>,
    w: &Workload,
    (ports, gateways): (&Ports<'_>, &[&Gateway]),
    services: &mut Services,
    errors: &mut Vec<ConfigError>,
) -> Option<GatewayListener> {
    let trust_domain = context.config.trust_domain.as_ref()?;
    let egress = gateways.iter().any(|g| !g.spec.egress.is_empty());
    if w.port == 0 {
        for gateway in gateways.iter().filter(|g| !g.spec.egress.is_empty()) {
            errors.push(error(
                &gateway.path,
                "spec.egress",
                format!(
                    "gateway {} has no mesh port, so no sidecar can reach it: start it with weft gateway --mesh-port",
                    w.node
                ),
            ));
        }
        return None;
    }
    let mut chosen: BTreeMap<&str, &Server<'_>> = BTreeMap::new();
    for (tls, servers) in ports.values() {
        for server in servers {
            let hostname = server.spec.hostname.as_str();
            if *tls || !chosen.contains_key(hostname) {
                chosen.insert(hostname, server);
            }
        }
    }
    if chosen.is_empty() && !egress {
        return None;
    }
    let servers: Vec<&Server<'_>> = chosen.values().copied().collect();
    let (mut virtual_hosts, jwt) = by_host(context, &servers, services, errors);
    let served: BTreeSet<&str> = chosen.keys().copied().collect();
    let (egress_hosts, external) = egress_virtual_hosts(context.config, gateways, &served, errors);
    for cluster in external {
        services.clusters.insert(cluster.name.clone(), cluster);
    }
    virtual_hosts.extend(egress_hosts.into_iter().map(|mut vhost| {
        // The routes decide who may pass.
        vhost.authorization = Some(open_to_anyone(&vhost.name));
        vhost
    }));
    let name = MESH_LISTENER.to_string();
    services.routes.push(RouteTable {
        name: name.clone(),
        virtual_hosts,
    });
    Some(GatewayListener {
        telemetry: Some(context.reports.caller()),
        name: name.clone(),
        address: SocketAddr {
            address: w.address.clone(),
            port: w.port,
        },
        chains: vec![HttpChain {
            name: name.clone(),
            tls: None,
            mesh: Some(Mtls {
                trust_domain: trust_domain.clone(),
                peers: Vec::new(),
                permissive: false,
                sni: None,
            }),
            route_table: name,
            jwt,
            // Tier-1 requests count as they would at the server's own
            // port.
            rate_limit_service: ports
                .values()
                .flat_map(|(_, servers)| servers)
                .find_map(|s| rate_limit_service(s.spec.rate_limiting.as_ref())),
            auth_service: None,
        }],
    })
}

/// A server as a virtual host, and its end-user token check.
fn virtual_host(
    context: &Context<'_, '_>,
    server: &Server<'_>,
    services: &mut Services,
    errors: &mut Vec<ConfigError>,
) -> (VirtualHost, Option<crate::proxy::JwtCheck>) {
    let path = &server.gateway.path;
    let spec: &HttpServer = server.spec;
    let mut routes = Vec::new();
    for (j, rule) in spec.routes.iter().enumerate() {
        let at = format!("{}.routes[{j}]", server.at);
        let action = route_action(context, server, (path, &at), rule, services, errors);
        let changes = RouteChanges {
            request_headers: rule.request_headers.as_ref().map(header_edits),
            response_headers: rule.response_headers.as_ref().map(header_edits),
            cors: rule.cors.as_ref().map(cors_policy),
        };
        let matchers: Vec<(String, RouteMatch)> = if rule.matches.is_empty() {
            vec![(format!("{path}#{at}"), RouteMatch::default())]
        } else {
            let matches = rule.matches.iter().map(request_match);
            (0..)
                .zip(matches)
                .map(|(k, m)| (format!("{path}#{at}.matches[{k}]"), m))
                .collect()
        };
        for (name, matcher) in matchers {
            routes.push(Route {
                name: Some(name),
                matcher,
                action: action.clone(),
                changes: changes.clone(),
            });
        }
    }
    let jwt = spec
        .authentication
        .as_ref()
        .filter(|a| !a.jwt.is_empty())
        .map(|authentication| {
            let (check, clusters) = token_check(
                authentication,
                &format!("{path}#{}.authentication", server.at),
            );
            for cluster in clusters {
                services
                    .clusters
                    .entry(cluster.name.clone())
                    .or_insert(cluster);
            }
            check
        });
    let vhost = VirtualHost {
        name: server.vhost_name(),
        domains: vec![spec.hostname.clone()],
        routes,
        authorization: Some(authorization(&server.vhost_name(), spec)),
        rate_limit: spec.rate_limiting.as_ref().and_then(local_rate_limit),
        shared_limits: shared_limits(&server_id(path, &spec.name), spec.rate_limiting.as_ref()),
        login: login_check(path, spec),
    };
    (vhost, jwt)
}

/// A server's rules; without any, every client may come in (the services
/// behind still decide whether the gateway may call them).
fn authorization(name: &str, spec: &HttpServer) -> Authorization {
    let Some(rules) = &spec.authorization else {
        return open_to_anyone(name);
    };
    let convert = |list: &str, rules: &[GatewayRule]| -> Vec<AccessRule> {
        rules
            .iter()
            .enumerate()
            .map(|(i, rule)| AccessRule {
                name: format!("{name}.authorization.{list}[{i}]"),
                callers: Vec::new(),
                sources: rule.sources.clone(),
                requests: rule.to.iter().map(request_match).collect(),
                claims: rule.claims.clone(),
            })
            .collect()
    };
    Authorization {
        deny: convert("deny", &rules.deny),
        allow: convert("allow", &rules.allow),
    }
}

/// Rules that let every request of virtual host `name` through.
fn open_to_anyone(name: &str) -> Authorization {
    Authorization {
        deny: Vec::new(),
        allow: vec![AccessRule {
            name: format!("{name}: no authorization, anyone"),
            callers: Vec::new(),
            sources: Vec::new(),
            requests: Vec::new(),
            claims: BTreeMap::new(),
        }],
    }
}

/// What a rule does with the requests it matches.
fn route_action(
    context: &Context<'_, '_>,
    server: &Server<'_>,
    (path, at): (&str, &str),
    rule: &GatewayRoute,
    services: &mut Services,
    errors: &mut Vec<ConfigError>,
) -> Action {
    let (config, plans) = (context.config, context.plans);
    let unavailable = Action::DirectResponse {
        status: 503,
        body: UNAVAILABLE.into(),
    };
    if let Some(redirect) = &rule.redirect {
        return Action::Redirect(Redirect {
            scheme: redirect.scheme.map(|s| {
                match s {
                    Scheme::Http => "http",
                    Scheme::Https => "https",
                }
                .to_string()
            }),
            host: redirect.host.clone(),
            port: redirect.port,
            path: redirect.path.clone(),
            code: redirect.code.unwrap_or(301),
        });
    }
    if let Some(response) = &rule.direct_response {
        return Action::DirectResponse {
            status: u32::from(response.status),
            body: response.body.clone().unwrap_or_default(),
        };
    }
    if !rule.clusters.is_empty() || rule.any_cluster {
        let (cluster, endpoints, forward) = tier1_route(
            config,
            context.directory,
            &server.spec.hostname,
            rule,
            (path, at),
            errors,
        );
        services.endpoints.insert(cluster.name.clone(), endpoints);
        services.clusters.insert(cluster.name.clone(), cluster);
        return Action::Forward(forward);
    }
    let mut clusters: BTreeMap<String, u32> = BTreeMap::new();
    let mut first: Option<&ServicePlan<'_>> = None;
    for (k, target) in rule.to.iter().enumerate() {
        let Ok((namespace, name)) = parse_service(&target.service) else {
            return unavailable;
        };
        let key = ServiceKey {
            namespace: namespace.to_string(),
            name: name.to_string(),
        };
        let Some(plan) = ServicePlan::known(plans, &key) else {
            errors.push(error(
                path,
                &format!("{at}.to[{k}].service"),
                format!(
                    "no service {namespace}/{name} is known in cluster {}: no workspace holds namespace {namespace} and no instance runs; the route answers 503",
                    config.cluster
                ),
            ));
            return unavailable;
        };
        *clusters
            .entry(services.cluster_for(plan, target))
            .or_default() += target.weight;
        first.get_or_insert(plan);
    }
    let Some(plan) = first else {
        return unavailable;
    };
    // The first service's settings (timeout, retries, stickiness) apply
    // unless the route gives its own.
    let mut forward: Forward = plan.forward(clusters);
    if let Some(timeout) = parse_duration(&rule.timeout) {
        forward.timeout_ms = Some(millis(timeout));
    }
    if let Some(retries) = &rule.retries {
        forward.retries = Some(plan.retry(retries));
    }
    if let Some(rewrite) = &rule.rewrite {
        forward.prefix_rewrite = rewrite.path_prefix.clone();
        forward.authority_rewrite = rewrite.authority.clone();
    }
    Action::Forward(forward)
}

fn header_edits(changes: &HeaderChanges) -> HeaderEdits {
    HeaderEdits {
        set: changes.set.clone(),
        add: changes.add.clone(),
        remove: changes.remove.clone(),
    }
}

fn cors_policy(cors: &Cors) -> CorsPolicy {
    CorsPolicy {
        allow_origins: cors.allow_origins.clone(),
        allow_methods: cors
            .allow_methods
            .iter()
            .map(|m| m.as_str().to_string())
            .collect(),
        allow_headers: cors.allow_headers.clone(),
        expose_headers: cors.expose_headers.clone(),
        max_age_s: parse_duration(&cors.max_age).map(|d| d.as_secs()),
        allow_credentials: cors.allow_credentials,
    }
}

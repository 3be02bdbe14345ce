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
//!    by SNI to each local service, and each gateway the servers of the
//!    Gateways that select it. One bad resource becomes a [`ConfigError`] naming it; the rest
//!    still translates.

mod addon;
mod authservice;
mod eastwest;
mod egress;
mod explain;
mod gateway;
mod locality;
mod parse;
mod plan;
mod ratelimit;
mod relay;
mod resilience;
mod routing;
mod security;
mod telemetry;
mod tier1;

use std::collections::BTreeMap;

use serde::Serialize;
use weft_api::edge::{ConfigError, DirectoryIngress};

use crate::directory::Directory;
use crate::proxy::{
    Action, Cluster, Endpoints, FixedHost, Forward, Listener, Mtls, ProxyConfig, Route, RouteMatch,
    RouteTable, SocketAddr, TcpInbound, VirtualHost,
};
use weft_agent::workload::{Role, Workload};

use addon::{AUTH_SERVICE, RATE_LIMIT};
use authservice::cluster_login_servers;
use eastwest::eastwest_gateway;
use egress::{EgressPlan, egress_plans};
use gateway::{exposure, gateway_proxy, gateway_targets, ingress_entries};
use ratelimit::{cluster_rules, no_service, rate_limit_service, service_source, shared_limits};
use relay::tcp_targets;
use resilience::local_rate_limit;
use resilience::single_host_cluster;
use routing::unknown_host;
use security::InboundPlan;
use telemetry::WorkloadTelemetry;

pub use explain::{ExplainError, explain};
pub use parse::Config;
pub use plan::ServiceKey;
use plan::ServicePlan;
pub use telemetry::source_stamp;

/// Name of the listener and route table the app calls out through.
pub const OUTBOUND: &str = "outbound";
/// Name of the listener and route table in front of the app.
pub const INBOUND: &str = "inbound";
/// The cluster that is the app itself.
pub const LOCAL_APP: &str = "in|app";
/// Name of an east-west gateway's listener.
pub const EASTWEST: &str = "eastwest";

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
    /// The hostnames this cluster's ingress gateways serve to other
    /// clusters: the edge publishes them in the directory.
    pub ingress: Vec<DirectoryIngress>,
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
        config.gateways.extend(own.gateways);
        config.rate_limit_rules = own.rate_limit_rules;
        config.login_servers = own.login_servers;
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
    for key in gateway_targets(config) {
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

    // Every shared rate limit rule (for the rate limit service), and
    // where proxies reach that service.
    let rate_limit_rules = cluster_rules(config, &plans);
    let addons = Addons {
        rate_limit: RATE_LIMIT.cluster(config, workloads),
        auth: AUTH_SERVICE.cluster(config, workloads),
    };
    let login_servers = cluster_login_servers(config);
    let exposed = exposure(config, workloads);
    let tcp_targets = tcp_targets(config.gateways.iter());
    let egress = egress_plans(config, workloads);
    let mut translation = Translation {
        ingress: ingress_entries(&exposed),
        ..Translation::default()
    };
    // Routes are the same for every caller of a service: build them once.
    let mut routes: BTreeMap<usize, Vec<Route>> = BTreeMap::new();
    // The inbound verdict is the same for every instance of a service.
    let mut inbound: BTreeMap<ServiceKey, InboundPlan> = BTreeMap::new();
    for w in workloads {
        // Everything but a sidecar has only a part of its own.
        let own = match w.role {
            Role::Eastwest => Some(eastwest_gateway(w, &plans, &exposed)),
            Role::Gateway => Some(gateway_proxy(
                config,
                directory,
                w,
                &plans,
                &addons,
                &mut errors,
            )),
            Role::Ratelimit => Some(ProxyConfig {
                rate_limit_rules: Some(rate_limit_rules.clone()),
                ..ProxyConfig::default()
            }),
            Role::Authservice => Some(ProxyConfig {
                login_servers: Some(login_servers.clone()),
                ..ProxyConfig::default()
            }),
            Role::Sidecar => None,
        };
        if let Some(own) = own {
            let plan = ProxyPlan {
                own,
                outbound: None,
            };
            translation.proxies.insert(w.node.clone(), plan);
            continue;
        }
        let mut proxy = ProxyPlan::default();
        let reports = WorkloadTelemetry::new(config, w, &mut errors);
        proxy.own.clusters.extend(reports.clusters.iter().cloned());
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
                        rate_limit: None,
                        shared_limits: Vec::new(),
                        login: None,
                    });
                }
                // Names that are no mesh service go out through the
                // workspace's egress gateways, if it has any.
                match workspace.and_then(|ws| Some((ws, egress.get(&ws.path)?))) {
                    Some((ws, plan)) => {
                        let id = EgressPlan::id(&ws.path);
                        translation.services.entry(id.clone()).or_insert_with(|| {
                            ServiceResources {
                                clusters: vec![plan.cluster.clone()],
                                endpoints: vec![plan.endpoints.clone()],
                            }
                        });
                        services.push(id);
                        virtual_hosts.extend(plan.virtual_hosts());
                    }
                    None => virtual_hosts.push(unknown_host(!w.calls.is_empty())),
                }
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
                tcp: None,
                rate_limited: false,
                rate_limit_service: None,
                telemetry: Some(reports.caller()),
            });
        }
        if let Some(app_port) = w.app_port {
            let own = &mut proxy.own;
            own.clusters.push(Cluster {
                fixed: Some(FixedHost::Local(SocketAddr {
                    address: "127.0.0.1".into(),
                    port: app_port,
                })),
                ..single_host_cluster(LOCAL_APP)
            });
            let key = ServiceKey {
                namespace: w.namespace.clone(),
                name: w.service.clone(),
            };
            let verdict = inbound
                .entry(key.clone())
                .or_insert_with(|| InboundPlan::new(config, &key, &mut errors));
            // What each instance takes: the service's merged settings.
            let plan = ServicePlan::known(&plans, &key);
            let limits = plan.and_then(|plan| plan.policy.rate_limiting.as_ref());
            let rate_limit = limits.and_then(local_rate_limit);
            let limiter = rate_limit_service(limits);
            let shared = plan
                .map(|plan| shared_limits(&service_source(plan), limits))
                .unwrap_or_default();
            if limiter.is_some() {
                let (cluster, endpoints) = &addons.rate_limit;
                if let Some(from) = plan
                    .and_then(|p| p.policy.sources.get("rateLimiting"))
                    .filter(|_| endpoints.endpoints.is_empty())
                {
                    errors.push(no_service(from, "spec.rateLimiting.rules", &config.cluster));
                }
                own.clusters.push(cluster.clone());
                own.endpoints.push(endpoints.clone());
            }
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
                tcp: tcp_targets
                    .contains(&key)
                    .then(|| verdict.authorization.clone())
                    .flatten()
                    .map(|authorization| TcpInbound {
                        cluster: LOCAL_APP.into(),
                        authorization,
                    }),
                rate_limited: rate_limit.is_some(),
                rate_limit_service: limiter,
                telemetry: Some(reports.callee()),
            });
            own.routes.push(RouteTable {
                name: INBOUND.into(),
                virtual_hosts: vec![VirtualHost {
                    name: INBOUND.into(),
                    domains: vec!["*".into()],
                    // The caller's side owns the timeout.
                    routes: vec![Route::new(
                        RouteMatch::default(),
                        Action::Forward(Forward {
                            timeout_ms: Some(0),
                            ..Forward::to(LOCAL_APP)
                        }),
                    )],
                    authorization: verdict.authorization.clone(),
                    rate_limit,
                    shared_limits: shared,
                    login: None,
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

/// The clusters (and endpoints) of the add-on services, for the proxies
/// that call them.
pub(super) struct Addons {
    pub(super) rate_limit: (Cluster, Endpoints),
    pub(super) auth: (Cluster, Endpoints),
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

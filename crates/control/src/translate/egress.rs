//! Egress: external hosts that callers in the mesh reach through a
//! gateway. On the gateway, each host a Gateway lists is a virtual host of
//! its mesh listener whose routes let through only the callers the host
//! names (by the SPIFFE ID the listener's mutual TLS verified) and answer
//! everyone else with a 403 naming the rule; a host nobody lists gets a
//! 403 too. On the sidecars of the Gateway's workspace, those hosts and
//! every name that is no mesh service go to the egress gateways, over
//! mutual TLS, so the gateway knows who calls.

use std::collections::{BTreeMap, BTreeSet};

use weft_api::edge::ConfigError;

use super::gateway::selects;
use super::parse::{Config, Gateway, error};
use super::resilience::single_host_cluster;
use crate::proxy::{
    Action, CallerId, Cluster, Endpoints, ExternalHost, FixedHost, Forward, HeaderCondition,
    HeaderEdits, HeaderTest, Mtls, Route, RouteChanges, RouteMatch, SocketAddr, VirtualHost,
};
use weft_agent::workload::{Role, Workload};

/// The header the gateway's mesh listener sets to the verified caller.
const CLIENT_CERT: &str = "x-forwarded-client-cert";

/// The way out of one workspace: its egress gateways as one cluster, and
/// the hosts they list.
pub(super) struct EgressPlan {
    pub(super) cluster: Cluster,
    pub(super) endpoints: Endpoints,
    pub(super) hosts: BTreeSet<String>,
}

impl EgressPlan {
    /// The id of its shared resources, and its cluster's name.
    pub(super) fn id(workspace: &str) -> String {
        format!("egress|{workspace}")
    }

    fn forward(&self) -> Action {
        Action::Forward(Forward::to(&self.cluster.name))
    }

    /// The sidecars' virtual hosts: each listed host, and (last) every
    /// other name, to the egress gateways.
    pub(super) fn virtual_hosts(&self) -> Vec<VirtualHost> {
        let vhost = |name: String, domains: Vec<String>| VirtualHost {
            name,
            domains,
            routes: vec![Route::new(RouteMatch::default(), self.forward())],
            authorization: None,
            rate_limit: None,
            shared_limits: Vec::new(),
            login: None,
        };
        self.hosts
            .iter()
            .map(|host| vhost(format!("egress:{host}"), vec![host.clone()]))
            .chain([vhost("egress:*".into(), vec!["*".into()])])
            .collect()
    }
}

/// Each workspace's way out: the gateways that Gateways with `egress`
/// select and that other workloads can reach (a mesh port).
pub(super) fn egress_plans(
    config: &Config,
    workloads: &[Workload],
) -> BTreeMap<String, EgressPlan> {
    let Some(trust_domain) = &config.trust_domain else {
        return BTreeMap::new();
    };
    let mut plans: BTreeMap<String, EgressPlan> = BTreeMap::new();
    for gateway in config.gateways.iter().filter(|g| !g.spec.egress.is_empty()) {
        let serving: Vec<&Workload> = workloads
            .iter()
            .filter(|w| w.role == Role::Gateway && w.port != 0 && selects(gateway, w))
            .collect();
        let id = EgressPlan::id(&gateway.workspace);
        let plan = plans.entry(gateway.workspace.clone()).or_insert_with(|| {
            let mut cluster = single_host_cluster(&id);
            cluster.fixed = None;
            cluster.mtls = Some(Mtls {
                trust_domain: trust_domain.clone(),
                peers: Vec::new(),
                permissive: false,
                sni: None,
            });
            EgressPlan {
                cluster,
                endpoints: Endpoints {
                    site: String::new(),
                    cluster: id.clone(),
                    endpoints: Vec::new(),
                    remote: Vec::new(),
                },
                hosts: BTreeSet::new(),
            }
        });
        plan.hosts
            .extend(gateway.spec.egress.iter().map(|e| e.host.clone()));
        for w in serving {
            let address = SocketAddr {
                address: w.address.clone(),
                port: w.port,
            };
            if !plan.endpoints.endpoints.contains(&address) {
                plan.endpoints.endpoints.push(address);
            }
            let id = format!(
                "spiffe://{trust_domain}/ns/{}/sa/{}",
                w.namespace, w.service_account
            );
            if let Some(mtls) = &mut plan.cluster.mtls
                && !mtls.peers.contains(&id)
            {
                mtls.peers.push(id);
            }
        }
    }
    for plan in plans.values_mut() {
        plan.endpoints.endpoints.sort();
        if let Some(mtls) = &mut plan.cluster.mtls {
            mtls.peers.sort();
        }
    }
    plans
}

/// An expression for an `x-forwarded-client-cert` whose verified caller
/// is `caller`.
fn caller_pattern(caller: &CallerId) -> String {
    let escape = |s: &str| {
        s.chars()
            .flat_map(|c| {
                let special = !c.is_ascii_alphanumeric() && !matches!(c, '/' | ':' | '-' | '_');
                special.then_some('\\').into_iter().chain([c])
            })
            .collect::<String>()
    };
    match caller {
        CallerId::Exact(id) => format!(".*;URI={}(;.*)?", escape(id)),
        CallerId::Prefix(prefix) => format!(".*;URI={}[^;,]*(;.*)?", escape(prefix)),
    }
}

/// On the gateway: a virtual host per host `gateways` list (refusing
/// callers it does not name), the external clusters they go to, and a
/// 403 for any other host. Hosts a server of the gateway serves are
/// reported and left out.
pub(super) fn egress_virtual_hosts(
    config: &Config,
    gateways: &[&Gateway],
    served: &BTreeSet<&str>,
    errors: &mut Vec<ConfigError>,
) -> (Vec<VirtualHost>, Vec<Cluster>) {
    let (mut vhosts, mut clusters) = (Vec::new(), Vec::new());
    let Some(trust_domain) = &config.trust_domain else {
        return (vhosts, clusters);
    };
    let mut listed: BTreeMap<&str, String> = BTreeMap::new();
    for gateway in gateways {
        for (i, egress) in gateway.spec.egress.iter().enumerate() {
            let at = format!("spec.egress[{i}]");
            let rule = format!("{}#{at}", gateway.path);
            if served.contains(egress.host.as_str()) {
                errors.push(error(
                    &gateway.path,
                    &format!("{at}.host"),
                    format!(
                        "{} is also a hostname this gateway serves; the egress rule is left out",
                        egress.host
                    ),
                ));
                continue;
            }
            if let Some(first) = listed.insert(&egress.host, rule.clone()) {
                errors.push(error(
                    &gateway.path,
                    &format!("{at}.host"),
                    format!("{first} already lists {}; that one applies", egress.host),
                ));
                continue;
            }
            let cluster = format!("egress|{}:{}", egress.host, egress.port());
            clusters.push(Cluster {
                fixed: Some(FixedHost::External(ExternalHost {
                    host: egress.host.clone(),
                    port: egress.port(),
                    tls: egress.tls,
                })),
                ..single_host_cluster(&cluster)
            });
            let forward = Action::Forward(Forward::to(cluster));
            // Who called is the mesh's business, not the outside world's.
            let changes = RouteChanges {
                request_headers: Some(HeaderEdits {
                    remove: vec![CLIENT_CERT.into()],
                    ..HeaderEdits::default()
                }),
                ..RouteChanges::default()
            };
            let mut routes = Vec::new();
            for (j, caller) in egress.from.iter().enumerate() {
                match config.caller_ids(trust_domain, &gateway.workspace, caller) {
                    Ok(ids) => routes.extend(ids.iter().map(|id| Route {
                        name: Some(format!("{rule}.from[{j}]")),
                        matcher: RouteMatch {
                            headers: vec![HeaderCondition {
                                name: CLIENT_CERT.into(),
                                test: HeaderTest::Regex(caller_pattern(id)),
                            }],
                            ..RouteMatch::default()
                        },
                        action: forward.clone(),
                        changes: changes.clone(),
                    })),
                    Err(message) => {
                        errors.push(error(&gateway.path, &format!("{at}.from[{j}]"), message))
                    }
                }
            }
            routes.push(Route::new(
                RouteMatch::default(),
                Action::DirectResponse {
                    status: 403,
                    body: format!(
                        "weft egress: {} is open only to the callers that {rule} names\n",
                        egress.host
                    ),
                },
            ));
            vhosts.push(VirtualHost {
                name: rule,
                domains: vec![egress.host.clone()],
                routes,
                authorization: None,
                rate_limit: None,
                shared_limits: Vec::new(),
                login: None,
            });
        }
    }
    if !listed.is_empty() {
        vhosts.push(VirtualHost {
            name: "egress:unlisted".into(),
            domains: vec!["*".into()],
            routes: vec![Route::new(
                RouteMatch::default(),
                Action::DirectResponse {
                    status: 403,
                    body: "weft egress: no egress rule of this gateway lists this host; add it to a Gateway's egress\n".into(),
                },
            )],
            authorization: None,
            rate_limit: None,
            shared_limits: Vec::new(),
                        login: None,
        });
    }
    (vhosts, clusters)
}

//! The runtime form of what the proxy holds: built from the resources and
//! secrets each time either changes, immutable, and swapped in whole (a
//! request or connection keeps the one it started with). What must
//! outlive a change is carried over: a cluster's connection pools,
//! counters and outlier state stay while its settings do.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::balance::Ring;
use crate::config::{Assignment, Balancer, Cluster, Discovery, FilterChain, Listener, Target};
use crate::stats::{Counter, Stats};
use crate::tls::Secrets;
use crate::upstream::Pools;
use crate::xds::Resources;

/// Everything the request path reads.
pub struct Runtime {
    pub resources: Arc<Resources>,
    pub secrets: Arc<Secrets>,
    pub clusters: HashMap<String, Arc<ClusterRuntime>>,
    pub listeners: HashMap<String, Arc<ListenerRuntime>>,
}

pub struct ClusterRuntime {
    pub name: Arc<str>,
    pub config: Arc<Cluster>,
    pub assignment: Arc<Assignment>,
    /// The hash ring of a ring hash cluster, built with its endpoints
    /// (and kept while they stay the same).
    pub ring: Option<Arc<Ring>>,
    /// Mutual TLS to the endpoints; None when the cluster has none.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// The cluster's TLS names a secret not held yet.
    pub tls_missing: bool,
    pub shared: Arc<ClusterShared>,
}

/// What a cluster keeps across changes of its endpoints.
pub struct ClusterShared {
    pub pools: Pools,
    pub turn: AtomicU64,
    /// Requests in flight, to the cluster and by endpoint.
    pub active: AtomicUsize,
    pub active_by_endpoint: Mutex<HashMap<SocketAddr, usize>>,
    pub retries_active: AtomicUsize,
    pub outlier: Mutex<HashMap<SocketAddr, OutlierState>>,
    pub stats: ClusterStats,
}

#[derive(Debug, Default, Clone)]
pub struct OutlierState {
    pub consecutive_5xx: u32,
    pub ejections: u32,
    pub ejected_until: Option<Instant>,
}

/// A cluster's counters, by Envoy's names.
pub struct ClusterStats {
    pub rq_total: Counter,
    pub rq_2xx: Counter,
    pub rq_3xx: Counter,
    pub rq_4xx: Counter,
    pub rq_5xx: Counter,
    pub rq_retry: Counter,
    pub rq_timeout: Counter,
    pub rq_pending_overflow: Counter,
    pub rq_retry_overflow: Counter,
    pub cx_connect_fail: Counter,
    pub ejections_enforced_total: Counter,
    pub ejections_active: Counter,
}

impl ClusterStats {
    fn new(stats: &Stats, name: &str) -> ClusterStats {
        let c = |stat: &str| stats.counter(&format!("cluster.{name}.{stat}"));
        ClusterStats {
            rq_total: c("upstream_rq_total"),
            rq_2xx: c("upstream_rq_2xx"),
            rq_3xx: c("upstream_rq_3xx"),
            rq_4xx: c("upstream_rq_4xx"),
            rq_5xx: c("upstream_rq_5xx"),
            rq_retry: c("upstream_rq_retry"),
            rq_timeout: c("upstream_rq_timeout"),
            rq_pending_overflow: c("upstream_rq_pending_overflow"),
            rq_retry_overflow: c("upstream_rq_retry_overflow"),
            cx_connect_fail: c("upstream_cx_connect_fail"),
            ejections_enforced_total: c("outlier_detection.ejections_enforced_total"),
            ejections_active: c("outlier_detection.ejections_active"),
        }
    }

    pub fn response(&self, code: u16) {
        let class = match code {
            200..=299 => &self.rq_2xx,
            300..=399 => &self.rq_3xx,
            400..=499 => &self.rq_4xx,
            _ => &self.rq_5xx,
        };
        class.fetch_add(1, Ordering::Relaxed);
    }
}

pub struct ListenerRuntime {
    pub config: Arc<Listener>,
    pub chains: Vec<Arc<ChainRuntime>>,
}

pub struct ChainRuntime {
    pub config: FilterChain,
    /// The TLS a connection on this chain is served with; None for a
    /// plaintext chain. Err: the secrets it names are not held yet.
    pub tls: Option<Result<Arc<rustls::ServerConfig>, String>>,
    /// This proxy's own SPIFFE ID on this chain (`By=` of the XFCC).
    pub local_uri: Option<Arc<str>>,
    pub stats: HttpStats,
}

/// A connection manager's counters, by Envoy's names.
pub struct HttpStats {
    pub rq_total: Counter,
    pub rbac_allowed: Counter,
    pub rbac_denied: Counter,
    pub jwt_allowed: Counter,
    pub jwt_denied: Counter,
    pub no_route: Counter,
}

impl HttpStats {
    pub(crate) fn new(stats: &Stats, prefix: &str) -> HttpStats {
        let c = |stat: &str| stats.counter(&format!("http.{prefix}.{stat}"));
        HttpStats {
            rq_total: c("downstream_rq_total"),
            rbac_allowed: c("rbac.allowed"),
            rbac_denied: c("rbac.denied"),
            jwt_allowed: c("jwt_authn.allowed"),
            jwt_denied: c("jwt_authn.denied"),
            no_route: c("no_route"),
        }
    }
}

impl Runtime {
    pub fn empty() -> Runtime {
        Runtime {
            resources: Arc::default(),
            secrets: Arc::default(),
            clusters: HashMap::new(),
            listeners: HashMap::new(),
        }
    }

    /// The runtime for `resources` and `secrets`, keeping from `previous`
    /// what still applies.
    pub fn build(
        previous: &Runtime,
        resources: Arc<Resources>,
        secrets: Arc<Secrets>,
        stats: &Stats,
    ) -> Runtime {
        let same_secrets = Arc::ptr_eq(&previous.secrets, &secrets);
        let mut clusters = HashMap::new();
        for (name, config) in &resources.clusters {
            let assignment = match &config.discovery {
                Discovery::Eds => resources.endpoints.get(name).cloned().unwrap_or_else(|| {
                    Arc::new(Assignment {
                        cluster: name.clone(),
                        groups: Vec::new(),
                    })
                }),
                Discovery::Static(a) | Discovery::Dns(a) => Arc::new(a.clone()),
            };
            let ring = (config.balancer == Balancer::RingHash).then(|| {
                previous
                    .clusters
                    .get(name)
                    .filter(|old| *old.assignment == *assignment)
                    .and_then(|old| old.ring.clone())
                    .unwrap_or_else(|| Arc::new(Ring::new(&assignment)))
            });
            let kept = previous
                .clusters
                .get(name)
                .filter(|c| same_secrets && *c.config == **config);
            let runtime = match kept {
                Some(old) => {
                    let addresses: Vec<SocketAddr> = endpoints_of(&assignment).collect();
                    old.shared.pools.retain(|a| addresses.contains(a));
                    ClusterRuntime {
                        name: old.name.clone(),
                        config: config.clone(),
                        assignment,
                        ring,
                        tls: old.tls.clone(),
                        tls_missing: old.tls_missing,
                        shared: old.shared.clone(),
                    }
                }
                None => {
                    let settings = match (&config.tls, &config.public_tls) {
                        (Some(mesh), _) => Some(secrets.client_config(mesh)),
                        (None, Some(public)) => Some(crate::tls::public_client_config(public)),
                        (None, None) => None,
                    };
                    let (tls, tls_missing) = match settings {
                        None => (None, false),
                        Some(Ok(c)) => (Some(Arc::new(c)), false),
                        Some(Err(e)) => {
                            tracing::debug!(cluster = %name, error = %e, "cluster TLS not ready");
                            (None, true)
                        }
                    };
                    ClusterRuntime {
                        name: Arc::from(name.as_str()),
                        config: config.clone(),
                        assignment,
                        ring,
                        tls,
                        tls_missing,
                        shared: Arc::new(ClusterShared {
                            pools: Pools::default(),
                            turn: AtomicU64::new(0),
                            active: AtomicUsize::new(0),
                            active_by_endpoint: Mutex::default(),
                            retries_active: AtomicUsize::new(0),
                            outlier: Mutex::default(),
                            stats: ClusterStats::new(stats, name),
                        }),
                    }
                }
            };
            clusters.insert(name.clone(), Arc::new(runtime));
        }
        let mut listeners = HashMap::new();
        for (name, config) in &resources.listeners {
            let kept = previous
                .listeners
                .get(name)
                .filter(|l| same_secrets && Arc::ptr_eq(&l.config, config));
            let runtime = match kept {
                Some(old) => old.clone(),
                None => Arc::new(ListenerRuntime {
                    config: config.clone(),
                    chains: config
                        .chains
                        .iter()
                        .map(|chain| {
                            let tls = chain.tls.as_ref().map(|settings| {
                                secrets
                                    .server_config(settings)
                                    .map(Arc::new)
                                    .map_err(|e| e.to_string())
                            });
                            let local_uri = chain
                                .tls
                                .as_ref()
                                .and_then(|t| secrets.uris.get(&t.certificate))
                                .map(|u| Arc::from(u.as_str()));
                            Arc::new(ChainRuntime {
                                config: chain.clone(),
                                tls,
                                local_uri,
                                stats: HttpStats::new(stats, &chain.http.stat_prefix),
                            })
                        })
                        .collect(),
                }),
            };
            listeners.insert(name.clone(), runtime);
        }
        Runtime {
            resources,
            secrets,
            clusters,
            listeners,
        }
    }

    /// Ready: a configuration arrived, and every TLS setting it names
    /// has its secrets.
    pub fn ready(&self) -> bool {
        !self.resources.listeners.is_empty()
            && self.clusters.values().all(|c| !c.tls_missing)
            && self
                .listeners
                .values()
                .flat_map(|l| &l.chains)
                .all(|c| !matches!(c.tls, Some(Err(_))))
    }
}

fn endpoints_of(assignment: &Assignment) -> impl Iterator<Item = SocketAddr> + '_ {
    assignment
        .groups
        .iter()
        .flat_map(|g| &g.endpoints)
        .filter_map(|e| match e.address {
            Target::Ip(a) => Some(a),
            Target::Host(..) => None,
        })
}

impl ClusterRuntime {
    /// The server name its TLS sends (empty: none).
    pub fn server_name(&self) -> &str {
        match (&self.config.tls, &self.config.public_tls) {
            (Some(mesh), _) => &mesh.sni,
            (None, Some(public)) => &public.sni,
            (None, None) => "",
        }
    }
}

impl ClusterShared {
    /// Whether `address` is ejected now (an ejection that has run its
    /// time ends here).
    pub fn ejected(&self, address: &SocketAddr) -> bool {
        let mut outlier = self.outlier.lock().unwrap_or_else(|p| p.into_inner());
        let Some(state) = outlier.get_mut(address) else {
            return false;
        };
        match state.ejected_until {
            Some(until) if Instant::now() < until => true,
            Some(_) => {
                state.ejected_until = None;
                self.stats.ejections_active.fetch_sub(1, Ordering::Relaxed);
                false
            }
            None => false,
        }
    }

    /// Counts a response from `address` for outlier detection: enough
    /// consecutive 5xx eject it for the base time times its ejections,
    /// unless that would eject more than the allowed share.
    pub fn observe(
        &self,
        cluster: &Cluster,
        total: usize,
        address: SocketAddr,
        server_error: bool,
    ) {
        let Some(rule) = &cluster.outlier else {
            return;
        };
        let mut outlier = self.outlier.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let ejected_now = outlier
            .values()
            .filter(|s| s.ejected_until.is_some_and(|u| u > now))
            .count();
        let state = outlier.entry(address).or_default();
        if !server_error {
            state.consecutive_5xx = 0;
            return;
        }
        state.consecutive_5xx += 1;
        let within_share = (ejected_now + 1) * 100 <= total * rule.max_ejection_percent as usize;
        if state.consecutive_5xx >= rule.consecutive_5xx
            && state.ejected_until.is_none_or(|u| u <= now)
            && within_share
        {
            state.ejections += 1;
            state.consecutive_5xx = 0;
            state.ejected_until = Some(now + rule.base_ejection_time * state.ejections.min(10));
            self.stats
                .ejections_enforced_total
                .fetch_add(1, Ordering::Relaxed);
            self.stats.ejections_active.fetch_add(1, Ordering::Relaxed);
            tracing::info!(cluster = %cluster.name, %address, "endpoint ejected by outlier detection");
        }
    }

    /// Tracks a request in flight to `address` (least request).
    pub fn begin(&self, address: SocketAddr) -> InFlight<'_> {
        *self
            .active_by_endpoint
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(address)
            .or_default() += 1;
        InFlight {
            shared: self,
            address,
        }
    }

    pub fn in_flight(&self, address: &SocketAddr) -> usize {
        self.active_by_endpoint
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(address)
            .copied()
            .unwrap_or(0)
    }
}

pub struct InFlight<'a> {
    shared: &'a ClusterShared,
    address: SocketAddr,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Some(n) = self
            .shared
            .active_by_endpoint
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(&self.address)
        {
            *n = n.saturating_sub(1);
        }
    }
}

/// A pause before a retry: Envoy's 25 ms base, doubled per retry, with
/// full jitter, at most 250 ms.
pub fn retry_backoff(retry: u32) -> Duration {
    let ceiling = (25u64 << retry.min(4)).min(250);
    Duration::from_millis(rand::random_range(0..=ceiling))
}

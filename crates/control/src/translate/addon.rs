//! What proxies need to reach weft's add-on services (`weft ratelimit`,
//! `weft authservice`): a cluster of the instances registered with this
//! edge, over HTTP/2 with mutual TLS that accepts only the service's
//! identity; and the error reported where a feature needs a service none
//! of whose instances is connected.

use weft_api::edge::ConfigError;
use weft_identity::{RESERVED_NAMESPACE, SpiffeId};

use super::parse::{Config, error};
use super::resilience::single_host_cluster;
use crate::proxy::{Cluster, Endpoints, Mtls, SocketAddr};
use weft_agent::workload::{Role, Workload};

/// One of weft's add-on services.
#[derive(Clone, Copy)]
pub(super) struct Addon {
    /// Its cluster's name in every proxy that calls it.
    pub(super) cluster: &'static str,
    pub(super) role: Role,
    /// Its service account in the reserved namespace.
    pub(super) account: &'static str,
    /// The command that runs it, and its credential flag.
    pub(super) command: &'static str,
    pub(super) what: &'static str,
}

pub(super) const RATE_LIMIT: Addon = Addon {
    cluster: "addon|ratelimit",
    role: Role::Ratelimit,
    account: weft_identity::RATELIMIT_ACCOUNT,
    command: "ratelimit",
    what: "rate limit service",
};

pub(super) const AUTH_SERVICE: Addon = Addon {
    cluster: "addon|authservice",
    role: Role::Authservice,
    account: weft_identity::AUTHSERVICE_ACCOUNT,
    command: "authservice",
    what: "sign-in service",
};

impl Addon {
    /// The cluster (and its endpoints) of the service's instances.
    pub(super) fn cluster(self, config: &Config, workloads: &[Workload]) -> (Cluster, Endpoints) {
        let cluster = Cluster {
            mtls: config.trust_domain.as_ref().map(|trust_domain| Mtls {
                trust_domain: trust_domain.clone(),
                peers: SpiffeId::workload(trust_domain, RESERVED_NAMESPACE, self.account)
                    .map(|id| id.to_string())
                    .into_iter()
                    .collect(),
                permissive: false,
                sni: None,
            }),
            grpc: true,
            ..single_host_cluster(self.cluster)
        };
        let mut endpoints: Vec<SocketAddr> = workloads
            .iter()
            .filter(|w| w.role == self.role)
            .map(|w| SocketAddr {
                address: w.address.clone(),
                port: w.port,
            })
            .collect();
        endpoints.sort();
        endpoints.dedup();
        let endpoints = Endpoints {
            site: String::new(),
            cluster: self.cluster.into(),
            endpoints,
            remote: Vec::new(),
        };
        (cluster, endpoints)
    }

    /// Reported at `path`/`field` when none of the service's instances is
    /// connected to the edge of `cluster`; `consequence` says what the
    /// proxies do meanwhile.
    pub(super) fn missing(
        self,
        path: &str,
        field: &str,
        cluster: &str,
        consequence: &str,
    ) -> ConfigError {
        error(
            path,
            field,
            format!(
                "cluster {cluster} has no {} connected to its edge, so {consequence}: run `weft {}` with a credential from `weft token create --cluster {cluster} --{}`",
                self.what, self.command, self.command
            ),
        )
    }
}

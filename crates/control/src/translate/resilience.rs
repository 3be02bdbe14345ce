//! Resilience: each service cluster's load balancing, circuit breakers,
//! outlier detection and connection pool, and each route's timeout,
//! retries and sticky hashing.

use std::collections::BTreeMap;
use std::time::Duration;

use weft_api::traffic::{LoadBalancer, Retries, RetryOn, StickySession};

use super::plan::ServicePlan;
use crate::proxy::{Cluster, Forward, HashOn, LbPolicy, Limits, Outlier, RateLimit, Retry};
use weft_api::ratelimit::RateLimiting;

const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

pub(super) fn parse_duration(value: &Option<String>) -> Option<Duration> {
    value
        .as_deref()
        .and_then(|v| humantime::parse_duration(v).ok())
}

/// Each proxy's token bucket for `limits`: refilled whole every unit.
pub(super) fn local_rate_limit(limits: &RateLimiting) -> Option<RateLimit> {
    let local = limits.local.as_ref()?;
    Some(RateLimit {
        max_tokens: local.burst.unwrap_or(local.requests).max(1),
        tokens_per_fill: local.requests.max(1),
        fill_interval_ms: local.unit.seconds() * 1_000,
        shadow: limits.shadow_mode,
    })
}

/// A cluster of one fixed host with default settings; the caller says
/// which host (`local` or `external`).
pub(super) fn single_host_cluster(name: &str) -> Cluster {
    Cluster {
        name: name.to_string(),
        fixed: None,
        connect_timeout_ms: millis(DEFAULT_CONNECT_TIMEOUT),
        lb_policy: LbPolicy::RoundRobin,
        limits: None,
        outlier_detection: None,
        idle_timeout_ms: None,
        max_requests_per_connection: None,
        mtls: None,
        passthrough: false,
        sni_from_host: false,
        grpc: false,
    }
}

pub(super) fn millis(d: Duration) -> u64 {
    d.as_millis() as u64
}

impl ServicePlan<'_> {
    pub(super) fn sticky(&self) -> Option<&StickySession> {
        self.route.and_then(|r| r.spec.sticky_session.as_ref())
    }

    pub(super) fn cluster(&self, name: &str) -> Cluster {
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
        let limits = (policy.circuit_breaker.is_some() || policy.retries.is_some()).then(|| {
            let cb = policy.circuit_breaker.as_ref();
            // Envoy's own cap is 3 retries in flight per cluster: when an
            // instance dies under load, more requests than that fail at
            // once and the rest would get a 503 instead of their retry.
            // Each request's `attempts` bounds retries already; a setting
            // can still cap them cluster-wide (maxRetries or a budget).
            let max_retries = cb
                .and_then(|c| c.max_retries)
                .or_else(|| budget.is_none().then_some(u32::MAX));
            Limits {
                max_connections: cb.and_then(|c| c.max_connections),
                max_pending_requests: cb.and_then(|c| c.max_pending_requests),
                max_requests: cb.and_then(|c| c.max_requests),
                max_retries,
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
            fixed: None,
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
            passthrough: false,
            sni_from_host: false,
            grpc: false,
        }
    }

    pub(super) fn forward(&self, clusters: BTreeMap<String, u32>) -> Forward {
        let retries = self.policy.retries.as_ref().map(|r| self.retry(r));
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
            prefix_rewrite: None,
            authority_rewrite: None,
        }
    }
}

impl ServicePlan<'_> {
    /// Retries as `retries` asks, each to the next-nearest cluster where
    /// the service runs in others.
    pub(super) fn retry(&self, retries: &Retries) -> Retry {
        retry(retries, !self.remote.is_empty())
    }
}

/// Retries as `retries` asks; with `next_priority`, each to the next
/// priority (the next-nearest cluster).
pub(super) fn retry(retries: &Retries, next_priority: bool) -> Retry {
    let retry_on: Vec<&str> = if retries.retry_on.is_empty() {
        vec!["connect-failure", "refused-stream", "reset", "5xx"]
    } else {
        retries
            .retry_on
            .iter()
            .map(|c| retry_condition(*c))
            .collect()
    };
    Retry {
        retry_on: retry_on.join(","),
        attempts: retries.attempts,
        per_try_timeout_ms: parse_duration(&retries.per_try_timeout).map(millis),
        next_priority,
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

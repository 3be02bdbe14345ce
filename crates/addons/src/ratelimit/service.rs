//! `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`: each
//! descriptor judged against the rules ([`RuleTable`]), the counted ones
//! added up in Redis in one round trip ([`Counter`]), and an answer per
//! descriptor (limit, remaining, time to reset) from which Envoy writes
//! the `x-ratelimit-*` headers. Over any rule (not in shadow mode): the
//! whole request is over the limit. When Redis does not answer in time,
//! the call fails (UNAVAILABLE) and the proxy's `failClosed` decides.

use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::rate_limit::Unit;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    Code, DescriptorStatus, RateLimit,
};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitService;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use tonic::{Request, Response, Status};

use super::counter::{Counter, Hit};
use super::metrics::{Metrics, Outcome};
use super::rules::{RuleTable, Verdict};

/// A counter at or past this share of its limit counts as near it.
const NEAR_LIMIT: f64 = 0.8;

pub struct Limiter {
    pub rules: Arc<RwLock<Arc<RuleTable>>>,
    pub counter: Counter,
    pub metrics: Metrics,
}

fn unit(seconds: u32) -> Unit {
    match seconds {
        1 => Unit::Second,
        60 => Unit::Minute,
        3_600 => Unit::Hour,
        _ => Unit::Day,
    }
}

#[tonic::async_trait]
impl RateLimitService for Limiter {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        let request = request.into_inner();
        let rules = self.rules.read().unwrap_or_else(|p| p.into_inner()).clone();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let verdicts: Vec<Verdict<'_>> = request
            .descriptors
            .iter()
            .map(|d| rules.judge(d, now.as_secs()))
            .collect();
        let hits: Vec<Hit<'_>> = verdicts
            .iter()
            .zip(&request.descriptors)
            .filter_map(|(verdict, descriptor)| match verdict {
                Verdict::Counted { rule, key } => Some(Hit {
                    key,
                    hits: descriptor
                        .hits_addend
                        .map(|h| h.value as u32)
                        .unwrap_or(request.hits_addend)
                        .max(1),
                    window_seconds: rule.unit_seconds,
                }),
                _ => None,
            })
            .collect();
        let mut counts = Vec::new().into_iter();
        if !hits.is_empty() {
            match self.counter.add(&hits).await {
                Ok((values, took)) => {
                    self.metrics.redis_seconds.observe(took.as_secs_f64());
                    counts = values.into_iter();
                }
                Err(error) => {
                    self.metrics.redis_errors.inc();
                    for verdict in &verdicts {
                        if let Verdict::Counted { rule, .. } = verdict {
                            self.metrics.decided(&rule.name, Outcome::Error);
                        }
                    }
                    tracing::warn!(%error, "no decision: the proxy lets the request through, or refuses it if the rule fails closed");
                    return Err(Status::unavailable(format!(
                        "weft ratelimit: cannot count: {error}"
                    )));
                }
            }
        }
        let mut overall = Code::Ok;
        let mut statuses = Vec::with_capacity(verdicts.len());
        for verdict in &verdicts {
            let status = match verdict {
                Verdict::Counted { rule, .. } => {
                    let count = counts.next().unwrap_or_default();
                    let limit = u64::from(rule.requests);
                    let over = count > limit;
                    let window = u64::from(rule.unit_seconds);
                    let reset = window - now.as_secs() % window;
                    let outcome = match (over, rule.shadow_mode) {
                        (false, _) => Outcome::Allowed,
                        (true, true) => Outcome::ShadowOverLimit,
                        (true, false) => Outcome::OverLimit,
                    };
                    self.metrics.decided(&rule.name, outcome);
                    if count as f64 >= limit as f64 * NEAR_LIMIT {
                        self.metrics.near_limit(&rule.name);
                    }
                    let refused = outcome == Outcome::OverLimit;
                    if refused {
                        overall = Code::OverLimit;
                    }
                    DescriptorStatus {
                        code: if refused { Code::OverLimit } else { Code::Ok } as i32,
                        current_limit: Some(RateLimit {
                            name: rule.name.clone(),
                            requests_per_unit: rule.requests,
                            unit: unit(rule.unit_seconds) as i32,
                        }),
                        limit_remaining: limit.saturating_sub(count) as u32,
                        duration_until_reset: Some(envoy_types::pb::google::protobuf::Duration {
                            seconds: reset as i64,
                            nanos: 0,
                        }),
                        ..Default::default()
                    }
                }
                Verdict::NotTaken => DescriptorStatus {
                    code: Code::Ok as i32,
                    ..Default::default()
                },
                Verdict::UnknownRule(id) => {
                    self.metrics.unknown_rule();
                    tracing::debug!(rule = %id, "a descriptor names no known rule; not limited");
                    DescriptorStatus {
                        code: Code::Ok as i32,
                        ..Default::default()
                    }
                }
            };
            statuses.push(status);
        }
        Ok(Response::new(RateLimitResponse {
            overall_code: overall as i32,
            statuses,
            ..Default::default()
        }))
    }
}

//! The rate limit service's Prometheus metrics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Counted, within the limit.
    Allowed,
    /// Counted, over the limit: refused.
    OverLimit,
    /// Counted, over the limit of a rule in shadow mode: let through.
    ShadowOverLimit,
    /// Not counted: Redis failed (the proxy decides by failClosed).
    Error,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::OverLimit => "over_limit",
            Outcome::ShadowOverLimit => "shadow_over_limit",
            Outcome::Error => "error",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DecisionLabels {
    rule: String,
    outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RuleLabel {
    rule: String,
}

#[derive(Clone)]
pub struct Metrics {
    decisions: Family<DecisionLabels, Counter>,
    near: Family<RuleLabel, Counter>,
    unknown: Counter,
    pub redis_errors: Counter,
    pub redis_seconds: Histogram,
    pub rules: Gauge,
    pub rule_updates: Counter,
}

impl Metrics {
    pub fn new(registry: &mut Registry) -> Metrics {
        let metrics = Metrics {
            decisions: Family::default(),
            near: Family::default(),
            unknown: Counter::default(),
            redis_errors: Counter::default(),
            // 100 µs to about 0.4 s.
            redis_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 13)),
            rules: Gauge::default(),
            rule_updates: Counter::default(),
        };
        registry.register(
            "weft_ratelimit_decisions",
            "Descriptors counted, by rule and outcome",
            metrics.decisions.clone(),
        );
        registry.register(
            "weft_ratelimit_near_limit",
            "Descriptors counted at 80% or more of their rule's limit, by rule",
            metrics.near.clone(),
        );
        registry.register(
            "weft_ratelimit_unknown_rule",
            "Descriptors naming no rule this service has (not limited)",
            metrics.unknown.clone(),
        );
        registry.register(
            "weft_ratelimit_redis_errors",
            "Decisions Redis did not answer in time or refused",
            metrics.redis_errors.clone(),
        );
        registry.register(
            "weft_ratelimit_redis_seconds",
            "The Redis round trip of a decision",
            metrics.redis_seconds.clone(),
        );
        registry.register(
            "weft_ratelimit_rules",
            "Rules received from the edge",
            metrics.rules.clone(),
        );
        registry.register(
            "weft_ratelimit_rule_updates",
            "Rule sets received from the edge and applied",
            metrics.rule_updates.clone(),
        );
        metrics
    }

    pub fn decided(&self, rule: &str, outcome: Outcome) {
        self.decisions
            .get_or_create(&DecisionLabels {
                rule: rule.to_string(),
                outcome: outcome.as_str(),
            })
            .inc();
    }

    pub fn near_limit(&self, rule: &str) {
        self.near
            .get_or_create(&RuleLabel {
                rule: rule.to_string(),
            })
            .inc();
    }

    pub fn unknown_rule(&self) {
        self.unknown.inc();
    }
}

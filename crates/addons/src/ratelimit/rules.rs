//! The rules the edge sent, and which counter a descriptor goes to.
//!
//! Proxies send one descriptor per rule a request is subject to:
//! `(weft-rule, ID)` and then one entry per dimension of the rule, in
//! order (see `weft_xds::ratelimit`). A descriptor counts against its
//! rule when every entry matches the rule's dimension; its counter is the
//! rule's and the values it was given (each distinct client, user, path),
//! in the window the time falls in.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::google::protobuf::Any;

use sha2::{Digest, Sha256};
use weft_xds::ratelimit::{RULE_KEY, RateLimitRule, RateLimitRules};

/// Every rule of the cluster, by id.
#[derive(Debug, Default)]
pub struct RuleTable {
    rules: BTreeMap<String, RateLimitRule>,
}

/// What one descriptor is counted as.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict<'t> {
    /// Counted in `key` against `rule`.
    Counted {
        rule: &'t RateLimitRule,
        key: String,
    },
    /// Its rule does not take it (a value the rule does not match): not
    /// limited.
    NotTaken,
    /// It names no rule this service knows (rules not yet received, or
    /// changed since the proxy's configuration): not limited.
    UnknownRule(String),
}

impl RuleTable {
    /// The table in the edge's resources: one `RateLimitRules`.
    pub fn from_resources(resources: &[Any]) -> Result<RuleTable, String> {
        let mut rules = BTreeMap::new();
        for decoded in crate::serve::decode::<RateLimitRules>(resources)? {
            for rule in decoded.rules {
                if rule.requests == 0 || rule.unit_seconds == 0 {
                    return Err(format!(
                        "rule {}: a limit needs requests and a unit",
                        rule.id
                    ));
                }
                rules.insert(rule.id.clone(), rule);
            }
        }
        Ok(RuleTable { rules })
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Which counter `descriptor` goes to at `now` (seconds since the
    /// epoch).
    pub fn judge(&self, descriptor: &RateLimitDescriptor, now: u64) -> Verdict<'_> {
        let Some((first, rest)) = descriptor.entries.split_first() else {
            return Verdict::UnknownRule(String::new());
        };
        if first.key != RULE_KEY {
            return Verdict::UnknownRule(format!("{}={}", first.key, first.value));
        }
        let Some(rule) = self.rules.get(&first.value) else {
            return Verdict::UnknownRule(first.value.clone());
        };
        if rest.len() != rule.dimensions.len() {
            return Verdict::NotTaken;
        }
        let mut hasher = Sha256::new();
        hasher.update(rule.id.as_bytes());
        for (entry, dimension) in rest.iter().zip(&rule.dimensions) {
            let Some(value) = dimension.accept(&entry.key, &entry.value) else {
                return Verdict::NotTaken;
            };
            // Length-prefixed, so no two lists of values hash alike.
            hasher.update((value.len() as u64).to_be_bytes());
            hasher.update(value.as_bytes());
        }
        let unit = u64::from(rule.unit_seconds);
        let window = now / unit * unit;
        let key = format!("weft:rl:{window}:{}", hex::encode(&hasher.finalize()[..16]));
        Verdict::Counted { rule, key }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
    use prost::{Message, Name};
    use weft_xds::ratelimit::RuleDimension;

    fn table() -> RuleTable {
        let rules = RateLimitRules {
            rules: vec![
                RateLimitRule {
                    id: "gw#web/per-user".into(),
                    name: "gw#web/per-user".into(),
                    requests: 5,
                    unit_seconds: 60,
                    shadow_mode: false,
                    dimensions: vec![
                        RuleDimension {
                            key: "claim.sub".into(),
                            ..Default::default()
                        },
                        RuleDimension {
                            key: "path".into(),
                            prefix: Some("/api/".into()),
                            strip_query: true,
                            ..Default::default()
                        },
                    ],
                },
                RateLimitRule {
                    id: "gw#web/all".into(),
                    name: "gw#web/all".into(),
                    requests: 100,
                    unit_seconds: 1,
                    shadow_mode: false,
                    dimensions: Vec::new(),
                },
            ],
        };
        let any = Any {
            type_url: RateLimitRules::type_url(),
            value: rules.encode_to_vec(),
        };
        RuleTable::from_resources(&[any]).unwrap()
    }

    fn descriptor(entries: &[(&str, &str)]) -> RateLimitDescriptor {
        RateLimitDescriptor {
            entries: entries
                .iter()
                .map(|(key, value)| Entry {
                    key: key.to_string(),
                    value: value.to_string(),
                })
                .collect(),
            ..Default::default()
        }
    }

    fn key(verdict: Verdict<'_>) -> String {
        match verdict {
            Verdict::Counted { key, .. } => key,
            other => panic!("not counted: {other:?}"),
        }
    }

    #[test]
    fn each_distinct_value_has_its_counter_and_the_query_is_not_part_of_the_path() {
        let table = table();
        let at = |sub: &str, path: &str, now: u64| {
            key(table.judge(
                &descriptor(&[
                    (RULE_KEY, "gw#web/per-user"),
                    ("claim.sub", sub),
                    ("path", path),
                ]),
                now,
            ))
        };
        assert_eq!(
            at("alice", "/api/a?x=1", 120),
            at("alice", "/api/a?x=2", 179)
        );
        assert_ne!(at("alice", "/api/a", 120), at("bob", "/api/a", 120));
        assert_ne!(at("alice", "/api/a", 120), at("alice", "/api/b", 120));
        // The next minute is a new window.
        assert_ne!(at("alice", "/api/a", 179), at("alice", "/api/a", 180));
        // A value made of two others does not share their counter.
        assert_ne!(at("ab", "/api/", 120), at("a", "/api/", 120));
    }

    #[test]
    fn a_value_the_rule_does_not_match_and_an_unknown_rule_are_not_limited() {
        let table = table();
        let outside = descriptor(&[
            (RULE_KEY, "gw#web/per-user"),
            ("claim.sub", "alice"),
            ("path", "/static/app.js"),
        ]);
        assert_eq!(table.judge(&outside, 0), Verdict::NotTaken);
        let short = descriptor(&[(RULE_KEY, "gw#web/per-user"), ("claim.sub", "alice")]);
        assert_eq!(table.judge(&short, 0), Verdict::NotTaken);
        let unknown = descriptor(&[(RULE_KEY, "gw#web/gone")]);
        assert_eq!(
            table.judge(&unknown, 0),
            Verdict::UnknownRule("gw#web/gone".into())
        );
        assert!(matches!(
            table.judge(&descriptor(&[(RULE_KEY, "gw#web/all")]), 0),
            Verdict::Counted { .. }
        ));
    }

    #[test]
    fn resources_of_another_type_or_without_a_limit_are_refused() {
        let other = Any {
            type_url: "type.googleapis.com/envoy.config.cluster.v3.Cluster".into(),
            value: Vec::new(),
        };
        assert!(
            RuleTable::from_resources(&[other])
                .unwrap_err()
                .contains("expected")
        );
        let zero = RateLimitRules {
            rules: vec![RateLimitRule {
                id: "r".into(),
                ..Default::default()
            }],
        };
        let any = Any {
            type_url: RateLimitRules::type_url(),
            value: zero.encode_to_vec(),
        };
        assert!(
            RuleTable::from_resources(&[any])
                .unwrap_err()
                .contains("rule r")
        );
    }
}

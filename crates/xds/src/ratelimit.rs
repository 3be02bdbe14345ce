//! The rate limit rules `weft ratelimit` receives from its edge over ADS,
//! as weft's own resource type (`weft.ratelimit.v1.RateLimitRules`): the
//! same stream, the same mutual TLS and the same admission as a proxy's.
//!
//! Proxies send the rate limit service descriptors whose first entry is
//! `(RULE_KEY, rule id)`, then one entry per dimension of the rule, in the
//! rule's order. The service counts a descriptor against the rule it
//! names when every entry matches the rule's dimension.

use prost::Name;

/// The first entry of every descriptor: which rule it is counted by.
pub const RULE_KEY: &str = "weft-rule";
/// The domain every proxy of weft asks in.
pub const DOMAIN: &str = "weft";
/// The one resource an edge sends: every rule of its cluster.
pub const RESOURCE: &str = "rules";

/// Every rule of a cluster.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RateLimitRules {
    #[prost(message, repeated, tag = "1")]
    pub rules: Vec<RateLimitRule>,
}

#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, prost::Message)]
pub struct RateLimitRule {
    /// What descriptors name the rule by; stable while the rule keeps its
    /// place and name, so a changed limit keeps its counters.
    #[prost(string, tag = "1")]
    pub id: String,
    /// Where the rule comes from, for metrics and logs
    /// (`gateway shop/ingress web/per-user`).
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(uint32, tag = "3")]
    pub requests: u32,
    /// The window, in seconds.
    #[prost(uint32, tag = "4")]
    pub unit_seconds: u32,
    #[prost(bool, tag = "5")]
    pub shadow_mode: bool,
    #[prost(message, repeated, tag = "6")]
    pub dimensions: Vec<RuleDimension>,
}

/// What the descriptor entry at this place must be.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, prost::Message)]
pub struct RuleDimension {
    #[prost(string, tag = "1")]
    pub key: String,
    /// Only this value; with neither this nor `prefix`, any value, each
    /// its own counter.
    #[prost(string, optional, tag = "2")]
    pub value: Option<String>,
    #[prost(string, optional, tag = "3")]
    pub prefix: Option<String>,
    /// The value is a request path: compare and count it without its query.
    #[prost(bool, tag = "4")]
    pub strip_query: bool,
}

impl Name for RateLimitRules {
    const NAME: &'static str = "RateLimitRules";
    const PACKAGE: &'static str = "weft.ratelimit.v1";

    fn type_url() -> String {
        format!("type.googleapis.com/{}", Self::full_name())
    }
}

impl RuleDimension {
    /// The value a descriptor entry counts as, if it matches.
    pub fn accept<'a>(&self, key: &str, value: &'a str) -> Option<&'a str> {
        if key != self.key {
            return None;
        }
        let value = if self.strip_query {
            value.split_once('?').map_or(value, |(path, _)| path)
        } else {
            value
        };
        let matches = match (&self.value, &self.prefix) {
            (Some(exact), _) => value == exact,
            (None, Some(prefix)) => value.starts_with(prefix.as_str()),
            (None, None) => true,
        };
        matches.then_some(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    /// The hand-written types and `proto/weft/ratelimit/v1/rules.proto`
    /// agree: what one encodes, the other reads back field by field.
    #[test]
    fn the_types_agree_with_their_proto_file() {
        let rules = RateLimitRules {
            rules: vec![RateLimitRule {
                id: "gw#web/per-user".into(),
                name: "per-user".into(),
                requests: 5,
                unit_seconds: 60,
                shadow_mode: true,
                dimensions: vec![RuleDimension {
                    key: "path".into(),
                    value: None,
                    prefix: Some("/api".into()),
                    strip_query: true,
                }],
            }],
        };
        let any = envoy_types::pb::google::protobuf::Any {
            type_url: RateLimitRules::type_url(),
            value: rules.encode_to_vec(),
        };
        let json = crate::json::to_json(&any).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "@type": "type.googleapis.com/weft.ratelimit.v1.RateLimitRules",
                "rules": [{
                    "id": "gw#web/per-user",
                    "name": "per-user",
                    "requests": 5,
                    "unit_seconds": 60,
                    "shadow_mode": true,
                    "dimensions": [{"key": "path", "prefix": "/api", "strip_query": true}],
                }],
            })
        );
    }
}

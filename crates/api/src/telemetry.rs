//! TelemetrySetting: what the proxies of a workspace's services report
//! beyond the request counts every proxy sends its edge: traces (spans
//! over OTLP, W3C trace context) and where request logs go. Attached to a
//! workspace or a traffic group, perhaps for one service; settings merge
//! part by part, the most specific level winning, as traffic settings do.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::problems::{Problems, check_dns_name, field};
use crate::specs::Spec;
use crate::traffic::ServiceRef;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TelemetrySettingSpec {
    /// The one service these settings are for; none: every service where
    /// the setting is attached.
    pub service: Option<ServiceRef>,
    pub tracing: Option<Tracing>,
    pub access_log: Option<AccessLog>,
}

/// Spans for each request a proxy handles, sent to an OTLP collector.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Tracing {
    /// The share of requests that start a trace, in percent (0 to 100;
    /// default 1). A request that arrives in a sampled trace is traced
    /// whatever this says, so a trace stays whole across services.
    pub sampling_percent: Option<f64>,
    /// The OTLP/gRPC collector, `host:port` (plaintext HTTP/2).
    pub collector: String,
    /// Tags every span carries.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

/// Where each proxy's request logs (one JSON object per request) go.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessLog {
    pub to: AccessLogTo,
    /// With `to: otlp`: the OTLP/gRPC collector, `host:port`.
    pub collector: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum AccessLogTo {
    /// The proxy's standard error (its agent's log): the default.
    Stderr,
    /// OpenTelemetry log records to `collector`.
    Otlp,
    /// Nowhere.
    Off,
}

/// Checks a collector's `host:port`.
fn check_collector(at: &str, value: &str, problems: &mut Problems) {
    let Some((host, port)) = value.rsplit_once(':') else {
        problems.add(at, format!("{value:?} is not host:port"));
        return;
    };
    if port.parse::<u16>().map_or(true, |p| p == 0) {
        problems.add(at, format!("{value:?}: the port is not 1 to 65535"));
    }
    let is_ip = host.parse::<std::net::IpAddr>().is_ok();
    if !is_ip && let Err(e) = check_dns_name(host) {
        problems.add(at, format!("{value:?}: {e}"));
    }
}

impl Spec for TelemetrySettingSpec {
    fn check(&self, at: &str, problems: &mut Problems) {
        if let Some(service) = &self.service {
            service.check(&field(at, "service"), problems);
        }
        if self.tracing.is_none() && self.access_log.is_none() {
            problems.add(at, "sets nothing: give tracing, accessLog or both");
        }
        if let Some(tracing) = &self.tracing {
            let here = field(at, "tracing");
            if let Some(percent) = tracing.sampling_percent
                && !(0.0..=100.0).contains(&percent)
            {
                problems.add(
                    field(&here, "samplingPercent"),
                    format!("{percent} is not between 0 and 100"),
                );
            }
            check_collector(&field(&here, "collector"), &tracing.collector, problems);
            for name in tracing.tags.keys() {
                let valid = !name.is_empty()
                    && name.len() <= 128
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
                if !valid {
                    problems.add(
                        field(&field(&here, "tags"), name),
                        "a tag name is 1 to 128 letters, digits, '.', '_' or '-'",
                    );
                }
            }
        }
        if let Some(log) = &self.access_log {
            let here = field(at, "accessLog");
            match (log.to, &log.collector) {
                (AccessLogTo::Otlp, Some(collector)) => {
                    check_collector(&field(&here, "collector"), collector, problems)
                }
                (AccessLogTo::Otlp, None) => {
                    problems.add(field(&here, "collector"), "is required with to: otlp")
                }
                (_, Some(_)) => problems.add(
                    field(&here, "collector"),
                    "is only for to: otlp (logs go nowhere else over the network)",
                ),
                (_, None) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems_of(json: serde_json::Value) -> Vec<String> {
        let spec: TelemetrySettingSpec = serde_json::from_value(json).unwrap();
        let mut problems = Problems::default();
        spec.check("spec", &mut problems);
        problems.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn bad_settings_name_their_fields() {
        assert_eq!(
            problems_of(serde_json::json!({
                "tracing": {"samplingPercent": 150, "collector": "otel", "tags": {"a b": "x"}},
                "accessLog": {"to": "otlp"}
            })),
            vec![
                "spec.tracing.samplingPercent: 150 is not between 0 and 100",
                "spec.tracing.collector: \"otel\" is not host:port",
                "spec.tracing.tags.a b: a tag name is 1 to 128 letters, digits, '.', '_' or '-'",
                "spec.accessLog.collector: is required with to: otlp",
            ]
        );
        assert_eq!(
            problems_of(serde_json::json!({"accessLog": {"to": "stderr", "collector": "c:4317"}})),
            vec![
                "spec.accessLog.collector: is only for to: otlp (logs go nowhere else over the network)"
            ]
        );
        assert_eq!(
            problems_of(serde_json::json!({})),
            vec!["spec: sets nothing: give tracing, accessLog or both"]
        );
        assert!(
            problems_of(serde_json::json!({"tracing": {"collector": "127.0.0.1:4317", "samplingPercent": 10}})).is_empty()
        );
        assert!(
            problems_of(serde_json::json!({"tracing": {"collector": "otel.observability:4317"}}))
                .is_empty()
        );
    }
}

//! What is known of a finished request, and the access logs written from
//! it: Envoy's format operators filled in (a JSON line on standard error,
//! counted stats with their tags), unset values as Envoy shows them
//! (`null` in JSON, `-` in text).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::HeaderMap;
use serde_json::Value;

use crate::config::{AccessLog, CountedStats, Format, Operator, Piece};
use crate::stats::{Key, Stats};

/// A finished request.
#[derive(Debug)]
pub struct Record {
    pub start: SystemTime,
    pub duration: Duration,
    pub method: http::Method,
    pub path: String,
    pub authority: String,
    /// The request's headers as they arrived.
    pub headers: HeaderMap,
    pub protocol: &'static str,
    /// 0 when no response began.
    pub code: u16,
    /// Envoy's response flags (`UH`, `UF,URX`…); empty: none.
    pub flags: String,
    pub details: String,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub route: Option<Arc<str>>,
    pub cluster: Option<Arc<str>>,
    pub upstream_host: Option<SocketAddr>,
    pub upstream_host_name: Option<Arc<str>>,
    pub upstream_peer: Option<Arc<str>>,
    pub downstream_peer: Option<Arc<str>>,
    pub remote: SocketAddr,
    /// Values the filters set: namespace, key, value.
    pub metadata: Vec<(String, String, String)>,
    /// The response was cut short when the route's (or the try's) time
    /// ran out after it began (set while it is sent).
    pub cut_short: Arc<std::sync::atomic::AtomicBool>,
}

/// An operator's value: text, a number, or unset.
enum Filled {
    Text(String),
    Number(u64),
    Unset,
}

fn some_text(value: Option<impl ToString>) -> Filled {
    value.map_or(Filled::Unset, |v| Filled::Text(v.to_string()))
}

impl Record {
    fn header(&self, name: &str) -> Option<String> {
        match name {
            ":method" => Some(self.method.to_string()),
            ":path" => Some(self.path.clone()),
            ":authority" | "host" => Some(self.authority.clone()),
            other => self
                .headers
                .get(other)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
        }
    }

    fn fill(&self, op: &Operator) -> Filled {
        match op {
            Operator::StartTime => Filled::Text(timestamp(self.start)),
            Operator::RequestHeader(first, second) => some_text(
                self.header(first)
                    .or_else(|| second.as_deref().and_then(|s| self.header(s))),
            ),
            Operator::Protocol => Filled::Text(self.protocol.to_string()),
            Operator::ResponseCode => Filled::Number(u64::from(self.code)),
            Operator::ResponseFlags => Filled::Text(if self.flags.is_empty() {
                "-".into()
            } else {
                self.flags.clone()
            }),
            Operator::ResponseCodeDetails => {
                some_text(Some(&self.details).filter(|d| !d.is_empty()))
            }
            Operator::Duration => Filled::Number(self.duration.as_millis() as u64),
            Operator::DurationMicros => Filled::Number(self.duration.as_micros() as u64),
            Operator::BytesReceived => Filled::Number(self.bytes_received),
            Operator::BytesSent => Filled::Number(self.bytes_sent),
            Operator::RouteName => some_text(self.route.as_deref().filter(|r| !r.is_empty())),
            Operator::UpstreamCluster => some_text(self.cluster.as_deref()),
            Operator::UpstreamHost => some_text(self.upstream_host),
            Operator::UpstreamHostName => some_text(
                self.upstream_host_name
                    .as_deref()
                    .filter(|h| !h.is_empty())
                    .map(|h| h.rsplit_once(':').map_or(h, |(name, _)| name)),
            ),
            // weft-proxy starts no traces (tracing is refused).
            Operator::TraceId => Filled::Unset,
            Operator::DownstreamPeerUriSan => some_text(self.downstream_peer.as_deref()),
            Operator::UpstreamPeerUriSan => some_text(self.upstream_peer.as_deref()),
            Operator::DownstreamDirectRemoteAddressWithoutPort => {
                Filled::Text(self.remote.ip().to_string())
            }
            Operator::DynamicMetadata(namespace, key) => some_text(
                self.metadata
                    .iter()
                    .find(|(n, k, _)| n == namespace && k == key)
                    .map(|(_, _, v)| v),
            ),
        }
    }

    /// `format` as text (unset values as `-`).
    pub fn text(&self, format: &Format) -> String {
        let mut out = String::new();
        for piece in &format.0 {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Op(op) => match self.fill(op) {
                    Filled::Text(t) => out.push_str(&t),
                    Filled::Number(n) => out.push_str(&n.to_string()),
                    Filled::Unset => out.push('-'),
                },
            }
        }
        out
    }

    /// `format` as a JSON value: one operator alone keeps its type.
    fn json(&self, format: &Format) -> Value {
        match format.0.as_slice() {
            [Piece::Op(op)] => match self.fill(op) {
                Filled::Text(t) => Value::String(t),
                Filled::Number(n) => Value::from(n),
                Filled::Unset => Value::Null,
            },
            _ => Value::String(self.text(format)),
        }
    }

    /// Writes the request to each of `logs`.
    pub fn log(&self, logs: &[AccessLog], stats: &Stats) {
        for log in logs {
            match log {
                AccessLog::JsonLine(fields) => {
                    let line: serde_json::Map<String, Value> = fields
                        .iter()
                        .map(|(name, format)| (name.clone(), self.json(format)))
                        .collect();
                    // One write per line, so lines of concurrent requests
                    // do not interleave.
                    let mut text = Value::Object(line).to_string();
                    text.push('\n');
                    use std::io::Write;
                    let _ = std::io::stderr().lock().write_all(text.as_bytes());
                }
                AccessLog::Stats(counted) => self.count(counted, stats),
            }
        }
    }

    fn count(&self, counted: &CountedStats, stats: &Stats) {
        let key = |name: &str, tags: &[(String, Format)]| {
            let mut tags: Vec<(String, String)> = tags
                .iter()
                .map(|(tag, format)| (tag.clone(), self.text(format)))
                .collect();
            tags.sort();
            Key {
                name: format!("{}.{name}", counted.prefix),
                tags,
            }
        };
        let limit = counted.max_series.map_or(usize::MAX, |m| m as usize);
        let counter = key(&counted.counter, &counted.counter_tags);
        if let Some(counter) = stats.tagged_counter_within(counter, limit) {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let value = self.text(&counted.histogram_value).parse().unwrap_or(0);
            stats
                .histogram(key(&counted.histogram, &counted.histogram_tags))
                .record(value);
        }
    }
}

/// `2026-12-02T13:05:09.123Z`, as Envoy writes `%START_TIME%`.
fn timestamp(at: SystemTime) -> String {
    let t = time::OffsetDateTime::from(at);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_times_are_written_as_envoy_writes_them() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_796_217_909_123);
        assert_eq!(timestamp(at), "2026-12-02T13:25:09.123Z");
        assert_eq!(
            timestamp(SystemTime::UNIX_EPOCH),
            "1970-01-01T00:00:00.000Z"
        );
    }
}

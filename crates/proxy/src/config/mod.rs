//! The typed configuration: Envoy's resources converted into what
//! weft-proxy runs, refusing every field it would not honour exactly.
//!
//! Each conversion destructures the proto it reads completely, so a field
//! added to Envoy's API is a compile error here until it is either used
//! or refused.

mod cluster;
mod endpoints;
mod format;
mod http;
mod jwt;
mod listener;
mod rbac;
mod route;
mod tls;

pub use cluster::{
    Balancer, Cluster, Discovery, Limits, Outlier, PublicTls, UpstreamProtocol, UpstreamTls,
};
pub use endpoints::{Assignment, Endpoint, Locality, LocalityGroup, Target};
pub use format::{Format, Operator, Piece};
pub use http::{AccessLog, CountedStats, HttpFilter};
pub use jwt::{Keys, Provider, TokenCheck, TokenRule};
pub use listener::{DownstreamTls, FilterChain, HttpManager, Listener};
pub use rbac::{Permission, Policy, Principal, Rules};
pub use route::{
    Action, Forward, HashOn, HeaderMatch, PathMatch, Pattern, QueryMatch, Retry, RetryOn, Route,
    RouteMatch, RouteTable, ValueMatch, VirtualHost,
};
pub use tls::PeerCheck;

use std::time::Duration;

/// A resource weft-proxy cannot honour: every field at fault, by path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{resource}: {}", .problems.join("; "))]
pub struct Refused {
    /// `Cluster out|reviews.shop`, `Listener inbound`…
    pub resource: String,
    pub problems: Vec<String>,
}

/// Collects what a conversion cannot honour, by field path.
#[derive(Debug, Default)]
pub(crate) struct Refusals(Vec<String>);

impl Refusals {
    pub(crate) fn refuse(&mut self, field: impl AsRef<str>, why: impl AsRef<str>) {
        self.0.push(format!("{}: {}", field.as_ref(), why.as_ref()));
    }

    /// Refuses `field` unless it is left at its default.
    pub(crate) fn unset<T: Default + PartialEq>(&mut self, field: &str, value: &T) {
        if *value != T::default() {
            self.refuse(field, "not supported by weft-proxy");
        }
    }

    /// The converted value, or every problem found.
    pub(crate) fn finish<T>(self, resource: String, value: T) -> Result<T, Refused> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(Refused {
                resource,
                problems: self.0,
            })
        }
    }
}

/// A protobuf duration, refused when negative or out of range.
pub(crate) fn duration(
    value: Option<&envoy_types::pb::google::protobuf::Duration>,
    field: &str,
    refusals: &mut Refusals,
) -> Option<Duration> {
    let d = value?;
    match (u64::try_from(d.seconds), u32::try_from(d.nanos)) {
        (Ok(seconds), Ok(nanos)) if nanos < 1_000_000_000 => Some(Duration::new(seconds, nanos)),
        _ => {
            refusals.refuse(field, "not a valid duration");
            None
        }
    }
}

/// `prefix.field`, for nested field paths.
pub(crate) fn at(prefix: &str, field: &str) -> String {
    if prefix.is_empty() {
        field.to_string()
    } else {
        format!("{prefix}.{field}")
    }
}

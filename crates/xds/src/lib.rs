//! weft's xDS v3 server, the only contract between a control plane and a
//! proxy.
//!
//! Data flows one way: the edge's translation builds a [`Snapshot`] per proxy
//! (consistent by construction) and publishes it in the [`SnapshotCache`];
//! each proxy's ADS stream ([`ads::AdsServer`], state of the world or delta)
//! watches its node's snapshot and sends what changed, additions before
//! removals, so a route never names a cluster that is gone. ACKs and NACKs
//! flow back into the cache's per-proxy status.

pub mod ads;
pub mod authservice;
pub mod cache;
pub mod json;
pub mod ratelimit;
pub mod snapshot;

pub use ads::{Admission, AdsServer};
pub use cache::{Nack, ProxyStatus, SnapshotCache, XdsMetrics};
pub use snapshot::{Changes, Entry, Inconsistent, Layer, LayerBuilder, ResourceType, Snapshot};

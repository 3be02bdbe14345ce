//! weft's local control plane, the heart of `weft edge`.
//!
//! Data flows: the server's configuration for this cluster ([`edge`]) and
//! the workloads their proxies announce ([`registry`], `weft_agent::workload`) go
//! into [`translate`], a pure function that plans every service and gives
//! each proxy a [`proxy::ProxyConfig`]; that converts into an xDS snapshot
//! which `weft-xds` serves over ADS.

pub mod ca;
pub mod directory;
pub mod edge;
pub mod mesh_metrics;
pub mod proxy;
pub mod publish;
pub mod registry;
pub mod server_link;
pub mod translate;

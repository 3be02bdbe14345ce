//! What runs beside one of weft's Envoy proxies: `weft sidecar`, `weft
//! eastwest` and gateways share it.
//!
//! Data flows: the agent reads its workload credential ([`credential`]),
//! claims its runtime directory ([`children`]), asks its edge for a
//! workload certificate with a CSR whose key never leaves it ([`svid`]),
//! serves that certificate and the trust bundle to Envoy over SDS on a
//! Unix socket ([`sds`], the secret names being this crate's contract with
//! the edge's translation), writes Envoy's bootstrap announcing the
//! [`workload`] in the node metadata ([`bootstrap`]), and runs Envoy (and
//! the app) until one exits or it is told to stop ([`proxy`]).

pub mod addon;
pub mod bootstrap;
pub mod certificates;
pub mod children;
pub mod credential;
mod error;
pub mod procfs;
pub mod proxy;
pub mod sds;
pub mod stats;
pub mod svid;
pub mod workload;

pub use error::AgentError;

//! weft's add-on services: what gateways (and sidecars) call on the
//! request path through Envoy's own service APIs, so any Envoy uses them
//! with stock filters.
//!
//! - [`ratelimit`]: `weft ratelimit`, Envoy's rate limit service
//!   (`envoy.service.ratelimit.v3`), counting in Redis the rules its edge
//!   sends it.

pub mod ratelimit;

//! weft's add-on services: what gateways (and sidecars) call on the
//! request path through Envoy's own service APIs, so any Envoy uses them
//! with stock filters.
//!
//! - [`ratelimit`]: `weft ratelimit`, Envoy's rate limit service
//!   (`envoy.service.ratelimit.v3`), counting in Redis the rules its edge
//!   sends it;
//! - [`authservice`]: `weft authservice`, browser sign-in (OpenID Connect)
//!   as Envoy's external authorization service (`envoy.service.auth.v3`),
//!   sessions in memory or Redis.
//!
//! Both run the same way ([`serve`]): an identity and resources from
//! their edge, gRPC over mutual TLS, an admin port.

pub mod authservice;
pub mod ratelimit;
mod redis_client;
pub mod serve;

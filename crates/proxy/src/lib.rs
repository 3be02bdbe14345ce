//! weft-proxy: weft's own sidecar, configured by the very xDS the edge
//! sends Envoy. Resources arrive as Envoy's protos and are converted, once
//! per change, into the typed form in [`config`]: it can represent only
//! what weft-proxy does exactly as Envoy would, so a resource that asks
//! for anything else is refused with the fields that ask for it (the
//! proxy NACKs with that text) rather than half-honoured. [`xds`] keeps
//! what the edge sends over delta ADS, applying a response only when all
//! of it converts.
//!
//! The request path's decisions are made by pure stages, each its own
//! module: [`routing`], [`balance`], [`authorize`]; [`tls`] makes the
//! rustls settings that check peers by SPIFFE ID.
//!
//! Not yet here: connections (listeners, TLS, upstream pools), and
//! `weft sidecar --proxy weft`.

pub mod authorize;
pub mod balance;
pub mod config;
pub mod routing;
pub mod tls;
pub mod xds;

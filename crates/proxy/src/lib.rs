//! weft-proxy: weft's own sidecar, configured by the very xDS the edge
//! sends Envoy. Resources arrive as Envoy's protos and are converted, once
//! per change, into the typed form in [`config`]: it can represent only
//! what weft-proxy does exactly as Envoy would, so a resource that asks
//! for anything else is refused with the fields that ask for it (the
//! proxy NACKs with that text) rather than half-honoured. [`xds`] keeps
//! what the edge sends over delta ADS, applying a response only when all
//! of it converts; [`sds`] keeps the agent's certificates.
//!
//! At run time ([`run`]) the resources and secrets become an immutable
//! [`runtime::Runtime`], swapped whole on each change. A connection is
//! taken by [`listen`] (filter chain, mutual TLS, HTTP/1.1 or HTTP/2),
//! each request goes through the connection manager ([`manager`]: header
//! stamps, end-user [`tokens`], authorization by [`authorize`]) to the [`router`] (routes by
//! [`routing`], endpoints by [`balance`], retries, [`timeouts`]), over pooled
//! connections ([`upstream`]); [`record`] writes its access logs and
//! [`stats`] counts it under Envoy's names, [`export`] sends the edge its
//! share; [`admin`] shows all of it.

pub mod admin;
pub mod authorize;
pub mod balance;
pub mod body;
pub mod bootstrap;
pub mod config;
pub mod export;
pub mod listen;
pub mod manager;
pub mod record;
pub mod router;
pub mod routing;
pub mod run;
pub mod runtime;
pub mod sds;
pub mod stats;
pub mod timeouts;
pub mod tls;
pub mod tokens;
pub mod upstream;
pub mod xds;

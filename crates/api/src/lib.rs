//! weft's resource model, with no I/O.
//!
//! A manifest is a Kubernetes-style document (`apiVersion`, `kind`,
//! `metadata`, `spec`). Every kind is declared once as a [`Kind`] descriptor:
//! its spec type, where it sits in the hierarchy, its REST/CLI names, its
//! IAM concern, and what it references. The REST API, the CLI and the store
//! are generic over these descriptors, so a new kind is a spec type plus one
//! entry in [`kinds::KINDS`].
//!
//! Data flow: raw JSON (from YAML or a request body) → [`validate::validate`]
//! (schema check of the whole document, then the kind's own rules; every
//! problem is collected with its field path) → [`Validated`] (the resource,
//! its hierarchical path and the paths it references) → the store.

pub mod analysis;
pub mod conflicts;
pub mod edge;
pub mod explain;
pub mod gateway;
pub mod iam;
pub mod kinds;
pub mod oidc;
pub mod problems;
pub mod ratelimit;
pub mod resource;
pub mod security;
pub mod specs;
pub mod telemetry;
pub mod traffic;
pub mod traffic_stats;
pub mod validate;

pub use iam::{Rule, Verb};
pub use kinds::{Concern, KINDS, Kind, KindId};
pub use problems::{Problem, Problems};
pub use resource::{API_VERSION, Metadata, Resource};
pub use validate::{Reference, Validated, validate};

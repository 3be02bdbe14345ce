//! The document envelope every kind shares.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const API_VERSION: &str = "weft.dev/v1alpha1";

/// A stored or submitted resource. `spec` stays JSON here; each kind's
/// typed spec is checked by its descriptor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resource {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    #[serde(default)]
    pub spec: serde_json::Value,
    /// Set by the server; ignored when submitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<serde_json::Value>,
}

/// Name, place in the hierarchy, labels and server-set bookkeeping.
///
/// The parent fields name the nodes above the resource: a Workspace has a
/// `tenant`, a TrafficGroup a `tenant` and a `workspace`, and so on.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Metadata {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_group: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Set by the server: the store revision of the last change. Send it
    /// back on a write to fail with a conflict if someone changed it since.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
    /// Set by the server (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    /// Set by the server (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
}

impl Metadata {
    /// The parent fields that are set, outermost first, as
    /// (metadata field, parent kind, name).
    pub fn parents(&self) -> Vec<(&'static str, &'static str, &str)> {
        [
            ("tenant", "Tenant", &self.tenant),
            ("workspace", "Workspace", &self.workspace),
            ("trafficGroup", "TrafficGroup", &self.traffic_group),
            ("securityGroup", "SecurityGroup", &self.security_group),
            ("gatewayGroup", "GatewayGroup", &self.gateway_group),
        ]
        .into_iter()
        .filter_map(|(field, kind, value)| value.as_deref().map(|v| (field, kind, v)))
        .collect()
    }

    /// Clears what the server sets, so two versions can be compared on what
    /// the user wrote.
    pub fn without_server_fields(&self) -> Metadata {
        Metadata {
            resource_version: None,
            created_at: None,
            updated_at: None,
            ..self.clone()
        }
    }
}

impl Resource {
    /// The user-owned part of the resource: no status, no server fields.
    pub fn desired(&self) -> Resource {
        Resource {
            api_version: self.api_version.clone(),
            kind: self.kind.clone(),
            metadata: self.metadata.without_server_fields(),
            spec: self.spec.clone(),
            status: None,
        }
    }
}

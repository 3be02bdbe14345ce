//! A workload as its proxy announces it in the xDS node metadata.
//!
//! The agent writes these keys into the Envoy bootstrap; the edge reads
//! them when the proxy connects. A registry file for `weft x translate` is a
//! YAML list of the same records.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::value::Kind as ValueKind;
use envoy_types::pb::google::protobuf::{Struct, Value};
use serde::{Deserialize, Serialize};
use weft_api::problems::check_dns_label;

/// What a proxy is for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Beside a workload: `weft sidecar`.
    #[default]
    Sidecar,
    /// The cluster's east-west gateway (`weft eastwest`): other clusters
    /// reach this one's services through it. `address:port` is where it
    /// listens.
    Eastwest,
    /// A gateway (`weft gateway`): the Gateways that select it decide its
    /// ports; `address` is where it listens. Only a gateway credential
    /// runs one.
    Gateway,
    /// The cluster's rate limit service (`weft ratelimit`): no proxy; it
    /// gets the cluster's rate limit rules, and gateways and sidecars
    /// reach it at `address:port`.
    Ratelimit,
    /// The cluster's sign-in service (`weft authservice`): no proxy; it
    /// gets the gateways' servers with sign-in, and gateways reach it at
    /// `address:port`.
    Authservice,
}

/// One instance of a service, with its sidecar (or the cluster's
/// east-west gateway).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Workload {
    /// The proxy's xDS node id, unique in the cluster.
    pub node: String,
    pub service: String,
    pub namespace: String,
    pub service_account: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Where other proxies reach this workload: its sidecar's inbound
    /// listener.
    pub address: String,
    pub port: u16,
    /// The app's port on loopback behind the sidecar; none for a workload
    /// that only calls out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_port: Option<u16>,
    /// Where the app calls other services through its sidecar (loopback);
    /// none for a gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbound_port: Option<u16>,
    #[serde(default, skip_serializing_if = "is_sidecar")]
    pub role: Role,
    /// The services the app calls, as `name.namespace`, sorted: its proxy
    /// gets only these. Empty: every service of its workspace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub calls: Vec<String>,
}

impl Role {
    /// As the node metadata and the registry file spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Sidecar => "sidecar",
            Role::Eastwest => "eastwest",
            Role::Gateway => "gateway",
            Role::Ratelimit => "ratelimit",
            Role::Authservice => "authservice",
        }
    }
}

fn is_sidecar(role: &Role) -> bool {
    *role == Role::Sidecar
}

/// Metadata keys, as the agent writes them.
pub mod keys {
    pub const SERVICE: &str = "service";
    pub const NAMESPACE: &str = "namespace";
    pub const SERVICE_ACCOUNT: &str = "serviceAccount";
    pub const LABELS: &str = "labels";
    pub const ADDRESS: &str = "address";
    pub const PORT: &str = "port";
    pub const APP_PORT: &str = "appPort";
    pub const OUTBOUND_PORT: &str = "outboundPort";
    pub const ROLE: &str = "role";
    /// Comma-separated services the app calls (`name` in its own
    /// namespace, or `name.namespace`).
    pub const CALLS: &str = "calls";
}

fn string_field<'a>(fields: &'a BTreeMap<String, Value>, key: &str) -> Option<&'a str> {
    match fields.get(key)?.kind.as_ref()? {
        ValueKind::StringValue(s) => Some(s),
        _ => None,
    }
}

impl Workload {
    /// A new node id for an instance of `service`: SERVICE-<random>.
    pub fn new_node_id(service: &str) -> String {
        use rand::RngCore;
        let mut bytes = [0u8; 4];
        rand::rng().fill_bytes(&mut bytes);
        format!("{service}-{}", hex::encode(bytes))
    }

    /// Whether this is an instance of its service: a sidecar with an app
    /// behind it (not a client that only calls out, nor a gateway).
    pub fn is_instance(&self) -> bool {
        self.role == Role::Sidecar && self.app_port.is_some()
    }

    /// Whether this workload's proxy holds service `name` of `namespace`:
    /// it declared it calls it, or declared nothing.
    pub fn calls_service(&self, name: &str, namespace: &str) -> bool {
        self.calls.is_empty()
            || self.calls.iter().any(|c| {
                c.strip_prefix(name)
                    .and_then(|rest| rest.strip_prefix('.'))
                    .is_some_and(|ns| ns == namespace)
            })
    }

    /// Reads a declaration of the services an app calls: `name` (in
    /// `namespace`) or `name.namespace`, comma-separated; returns them as
    /// `name.namespace`, sorted, or says which entry is wrong.
    pub fn parse_calls(declared: &str, namespace: &str) -> Result<Vec<String>, String> {
        let mut calls = Vec::new();
        for (i, entry) in declared.split(',').map(str::trim).enumerate() {
            if entry.is_empty() {
                continue;
            }
            let (name, ns) = entry.split_once('.').unwrap_or((entry, namespace));
            if check_dns_label(name).is_err() || check_dns_label(ns).is_err() {
                return Err(format!(
                    "[{i}]: {entry:?} is not a service as <name> or <name>.<namespace> (DNS labels)"
                ));
            }
            calls.push(format!("{name}.{ns}"));
        }
        calls.sort();
        calls.dedup();
        Ok(calls)
    }

    /// Reads a proxy's node; the error names every missing or bad key.
    pub fn from_node(node: &Node) -> Result<Workload, String> {
        let empty = Struct::default();
        let metadata = node.metadata.as_ref().unwrap_or(&empty);
        let fields: BTreeMap<String, Value> = metadata
            .fields
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut problems = Vec::new();
        let mut label = |key: &str| -> String {
            match string_field(&fields, key) {
                Some(value) if check_dns_label(value).is_ok() => value.to_string(),
                Some(value) => {
                    problems.push(format!("metadata.{key}: {value:?} is not a DNS label"));
                    String::new()
                }
                None => {
                    problems.push(format!("metadata.{key}: missing (a string)"));
                    String::new()
                }
            }
        };
        let service = label(keys::SERVICE);
        let namespace = label(keys::NAMESPACE);
        let service_account = label(keys::SERVICE_ACCOUNT);
        let role = match string_field(&fields, keys::ROLE) {
            None | Some("sidecar") => Role::Sidecar,
            Some("eastwest") => Role::Eastwest,
            Some("gateway") => Role::Gateway,
            Some("ratelimit") => Role::Ratelimit,
            Some("authservice") => Role::Authservice,
            Some(other) => {
                problems.push(format!(
                    "metadata.{}: {other:?} is not sidecar, eastwest, gateway, ratelimit or authservice",
                    keys::ROLE
                ));
                Role::Sidecar
            }
        };
        let mut port = |key: &str, required: bool| -> Option<u16> {
            match string_field(&fields, key).map(str::parse::<u16>) {
                Some(Ok(port)) if port > 0 => Some(port),
                None if !required => None,
                _ => {
                    problems.push(format!(
                        "metadata.{key}: must be a port number 1-65535 as a string"
                    ));
                    None
                }
            }
        };
        // A gateway's ports are its Gateways' servers'.
        let port_value = port(keys::PORT, role != Role::Gateway);
        let app_port = port(keys::APP_PORT, false);
        let outbound_port = port(keys::OUTBOUND_PORT, role == Role::Sidecar);
        // The gateway role goes with the gateway's identity, both ways: a
        // workload cannot make itself its cluster's entry point, and the
        // gateway's credential serves nothing else.
        // Likewise weft's own services: each identity has its role.
        for (account, own_role, what) in [
            (
                weft_identity::EASTWEST_ACCOUNT,
                Role::Eastwest,
                "the east-west gateway",
            ),
            (
                weft_identity::RATELIMIT_ACCOUNT,
                Role::Ratelimit,
                "the rate limit service",
            ),
            (
                weft_identity::AUTHSERVICE_ACCOUNT,
                Role::Authservice,
                "the sign-in service",
            ),
        ] {
            let identity =
                namespace == weft_identity::RESERVED_NAMESPACE && service_account == account;
            if identity != (role == own_role) {
                problems.push(format!(
                    "metadata.{}: only {what} ({}/{account}) has the role {}, and it has no other",
                    keys::ROLE,
                    weft_identity::RESERVED_NAMESPACE,
                    own_role.as_str()
                ));
            }
        }
        let address = string_field(&fields, keys::ADDRESS).unwrap_or_default();
        if address.parse::<std::net::IpAddr>().is_err() {
            problems.push(format!(
                "metadata.{}: {address:?} is not an IP address",
                keys::ADDRESS
            ));
        }
        let mut labels = BTreeMap::new();
        if let Some(value) = fields.get(keys::LABELS) {
            match value.kind.as_ref() {
                Some(ValueKind::StructValue(s)) => {
                    for (k, v) in &s.fields {
                        match v.kind.as_ref() {
                            Some(ValueKind::StringValue(v)) => {
                                labels.insert(k.clone(), v.clone());
                            }
                            _ => problems.push(format!("metadata.labels.{k}: must be a string")),
                        }
                    }
                }
                _ => problems.push("metadata.labels: must be a map of strings".into()),
            }
        }
        let calls = match string_field(&fields, keys::CALLS) {
            Some(declared) => Workload::parse_calls(declared, &namespace).unwrap_or_else(|e| {
                problems.push(format!("metadata.{}{e}", keys::CALLS));
                Vec::new()
            }),
            None => Vec::new(),
        };
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        Ok(Workload {
            node: node.id.clone(),
            service,
            namespace,
            service_account,
            labels,
            address: address.to_string(),
            port: port_value.unwrap_or_default(),
            app_port,
            outbound_port,
            role,
            calls,
        })
    }

    /// The node metadata that announces this workload.
    pub fn to_metadata(&self) -> Struct {
        let text = |s: &str| Value {
            kind: Some(ValueKind::StringValue(s.to_string())),
        };
        let mut fields = BTreeMap::from([
            (keys::SERVICE, text(&self.service)),
            (keys::NAMESPACE, text(&self.namespace)),
            (keys::SERVICE_ACCOUNT, text(&self.service_account)),
            (keys::ADDRESS, text(&self.address)),
        ]);
        // A gateway has no port of its own (0): its Gateways give them.
        if self.port != 0 {
            fields.insert(keys::PORT, text(&self.port.to_string()));
        }
        let labels = Struct {
            fields: self
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), text(v)))
                .collect(),
        };
        fields.insert(
            keys::LABELS,
            Value {
                kind: Some(ValueKind::StructValue(labels)),
            },
        );
        if let Some(outbound_port) = self.outbound_port {
            fields.insert(keys::OUTBOUND_PORT, text(&outbound_port.to_string()));
        }
        if self.role != Role::Sidecar {
            fields.insert(keys::ROLE, text(self.role.as_str()));
        }
        if let Some(app_port) = self.app_port {
            fields.insert(keys::APP_PORT, text(&app_port.to_string()));
        }
        if !self.calls.is_empty() {
            fields.insert(keys::CALLS, text(&self.calls.join(",")));
        }
        Struct {
            fields: fields
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        }
    }
}

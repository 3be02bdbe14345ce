//! Envoy resources in the proto3 JSON mapping with the `.proto` field
//! names, the form of Envoy's own config dump: for golden files, `weft x
//! translate --format envoy`, `weft proxy-config`, and people reading
//! what a proxy gets.
//!
//! The descriptors are compiled at build time from the `.proto` files
//! `envoy-types` was generated from (see `build.rs`), so every `Any`
//! weft packs, however deeply nested, is shown with its fields.

use std::sync::LazyLock;

use envoy_types::pb::google::protobuf::Any;
use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};

use crate::snapshot::{ResourceType, Snapshot};

static ENVOY: LazyLock<DescriptorPool> = LazyLock::new(|| {
    DescriptorPool::decode(
        include_bytes!(concat!(env!("OUT_DIR"), "/envoy_descriptors.bin")).as_slice(),
    )
    .expect("the descriptor set compiled by build.rs decodes")
});

#[derive(Debug, thiserror::Error)]
pub enum JsonError {
    #[error("{0}: not a type weft knows the descriptor of")]
    UnknownType(String),
    #[error("{type_url}: does not decode: {source}")]
    Decode {
        type_url: String,
        source: prost::DecodeError,
    },
    #[error("{type_url}: {source}")]
    Serialize {
        type_url: String,
        source: serde_json::Error,
    },
}

/// A message of type `name` (`envoy.config.bootstrap.v3.Bootstrap`) from
/// its JSON form (`Any`s by their `@type`), as binary protobuf: how a
/// configuration written as YAML or JSON, as Envoy takes it, is read.
pub fn from_json(name: &str, json: serde_json::Value) -> Result<Vec<u8>, JsonError> {
    use prost::Message;
    let descriptor = ENVOY
        .get_message_by_name(name)
        .ok_or_else(|| JsonError::UnknownType(name.to_string()))?;
    let message =
        DynamicMessage::deserialize(descriptor, json).map_err(|source| JsonError::Serialize {
            type_url: name.to_string(),
            source,
        })?;
    Ok(message.encode_to_vec())
}

/// `any` as JSON, with its `@type`.
pub fn to_json(any: &Any) -> Result<serde_json::Value, JsonError> {
    let name = any.type_url.rsplit('/').next().unwrap_or_default();
    let descriptor = ENVOY
        .get_message_by_name(name)
        .ok_or_else(|| JsonError::UnknownType(any.type_url.clone()))?;
    let message = DynamicMessage::decode(descriptor, any.value.as_slice()).map_err(|source| {
        JsonError::Decode {
            type_url: any.type_url.clone(),
            source,
        }
    })?;
    let mut json = message
        .serialize_with_options(
            serde_json::value::Serializer,
            &SerializeOptions::new()
                .stringify_64_bit_integers(false)
                .use_proto_field_name(true),
        )
        .map_err(|source| JsonError::Serialize {
            type_url: any.type_url.clone(),
            source,
        })?;
    if let serde_json::Value::Object(fields) = &mut json {
        fields.insert("@type".to_string(), any.type_url.clone().into());
    }
    Ok(json)
}

/// What a proxy holds, in the shape of Envoy's `/config_dump`: one
/// `*ConfigDump` per resource type (clusters, listeners, routes,
/// endpoints, secrets) with each resource, its name and version. Secrets
/// the edge serves carry trust bundles and names, never private keys
/// (those stay with the workload's agent).
pub fn config_dump(snapshot: &Snapshot) -> Result<serde_json::Value, JsonError> {
    use serde_json::json;
    let entries = |t: ResourceType| -> Result<Vec<(String, String, serde_json::Value)>, JsonError> {
        snapshot
            .entries(t)
            .map(|e| Ok((e.name.to_string(), e.version.to_string(), to_json(&e.any)?)))
            .collect()
    };
    let admin = |name: &str| format!("type.googleapis.com/envoy.admin.v3.{name}");
    let clusters: Vec<_> = entries(ResourceType::Cluster)?
        .into_iter()
        .map(|(_, v, r)| json!({"version_info": v, "cluster": r}))
        .collect();
    let listeners: Vec<_> = entries(ResourceType::Listener)?
        .into_iter()
        .map(|(n, v, r)| json!({"name": n, "active_state": {"version_info": v, "listener": r}}))
        .collect();
    let routes: Vec<_> = entries(ResourceType::Route)?
        .into_iter()
        .map(|(_, v, r)| json!({"version_info": v, "route_config": r}))
        .collect();
    let endpoints: Vec<_> = entries(ResourceType::Endpoint)?
        .into_iter()
        .map(|(_, v, r)| json!({"version_info": v, "endpoint_config": r}))
        .collect();
    let secrets: Vec<_> = entries(ResourceType::Secret)?
        .into_iter()
        .map(|(n, v, r)| json!({"name": n, "version_info": v, "secret": r}))
        .collect();
    Ok(json!({"configs": [
        {"@type": admin("ClustersConfigDump"), "version_info": snapshot.version(ResourceType::Cluster), "dynamic_active_clusters": clusters},
        {"@type": admin("ListenersConfigDump"), "version_info": snapshot.version(ResourceType::Listener), "dynamic_listeners": listeners},
        {"@type": admin("RoutesConfigDump"), "dynamic_route_configs": routes},
        {"@type": admin("EndpointsConfigDump"), "dynamic_endpoint_configs": endpoints},
        {"@type": admin("SecretsConfigDump"), "dynamic_active_secrets": secrets},
    ]}))
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
        HttpConnectionManager, HttpFilter, http_filter,
    };
    use prost::{Message, Name};

    fn pack<M: Message + Name>(message: &M) -> Any {
        Any {
            type_url: M::type_url(),
            value: message.encode_to_vec(),
        }
    }

    #[test]
    fn nested_any_is_shown_with_its_fields() {
        let hcm = HttpConnectionManager {
            stat_prefix: "in".into(),
            http_filters: vec![HttpFilter {
                name: "envoy.filters.http.router".into(),
                config_type: Some(http_filter::ConfigType::TypedConfig(pack(&Router {
                    suppress_envoy_headers: true,
                    ..Default::default()
                }))),
                ..Default::default()
            }],
            ..Default::default()
        };
        let json = to_json(&pack(&hcm)).unwrap();
        // Field names as in the .proto files, as Envoy's dump has them.
        assert_eq!(json["stat_prefix"], "in");
        let router = &json["http_filters"][0]["typed_config"];
        assert_eq!(
            router["@type"],
            "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
        );
        assert_eq!(router["suppress_envoy_headers"], true);
    }

    #[test]
    fn an_unknown_type_or_bad_bytes_is_an_error_naming_the_type() {
        let unknown = Any {
            type_url: "type.googleapis.com/example.Nope".into(),
            value: vec![],
        };
        assert!(
            to_json(&unknown)
                .unwrap_err()
                .to_string()
                .contains("example.Nope")
        );
        let bad = Any {
            type_url: Cluster::type_url(),
            value: vec![0xff, 0xff],
        };
        assert!(to_json(&bad).unwrap_err().to_string().contains("Cluster"));
    }
}

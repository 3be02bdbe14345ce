//! The OpenAPI 3.1 document, generated from the kind descriptors and the
//! same JSON Schemas that validate manifests.

use std::sync::OnceLock;

use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};
use weft_api::kinds::{KINDS, Kind, TOP_LEVEL};
use weft_api::validate::document_schema;

use crate::request::MAX_BODY_BYTES;

/// URL prefixes of every place a kind can sit, with their path parameters.
fn places(kind: &Kind) -> Vec<(String, Vec<&'static str>)> {
    let mut out = Vec::new();
    for parent in kind.parents {
        if *parent == TOP_LEVEL {
            out.push((String::new(), Vec::new()));
            continue;
        }
        let Some(parent_kind) = Kind::named(parent) else {
            continue;
        };
        let param = parent_kind.parent_field.unwrap_or("name");
        for (prefix, mut params) in places(parent_kind) {
            params.push(param);
            out.push((
                format!("{prefix}/{}/{{{param}}}", parent_kind.plural),
                params,
            ));
        }
    }
    out
}

/// A resource name in a URL: a DNS label (some kinds refuse a few more).
fn name_schema() -> Value {
    json!({"type": "string", "minLength": 1, "maxLength": 63, "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"})
}

fn parameters(names: &[&str]) -> Value {
    Value::Array(
        names
            .iter()
            .map(|n| json!({"name": n, "in": "path", "required": true, "schema": name_schema()}))
            .collect(),
    )
}

/// An id in a URL (a token's, a root's): looked up, 404 when unknown.
fn id_parameter() -> Value {
    json!([{"name": "id", "in": "path", "required": true, "schema": {"type": "string", "minLength": 1}}])
}

/// Statuses every authenticated operation can answer: a query or URL
/// that does not parse, no valid token, a missing permission, a failure.
const ALWAYS: [u16; 4] = [400, 401, 403, 500];
/// What a request body adds: too large, not JSON, not valid, in
/// conflict with what is stored.
const WITH_BODY: [u16; 4] = [409, 413, 415, 422];

/// The error responses for `statuses` (besides [`ALWAYS`]).
fn errors(statuses: &[u16]) -> Value {
    let error = json!({"description": "see the error body", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    let mut out = Map::new();
    for status in ALWAYS.iter().chain(statuses) {
        out.insert(status.to_string(), error.clone());
    }
    Value::Object(out)
}

fn error_responses() -> Value {
    let mut statuses = vec![404];
    statuses.extend(WITH_BODY);
    errors(&statuses)
}

fn json_body(schema: Value) -> Value {
    json!({"required": true, "description": format!("JSON, at most {MAX_BODY_BYTES} bytes"),
           "content": {"application/json": {"schema": schema}}})
}

/// `responses` with the error responses of [`ALWAYS`] and `statuses`.
fn with_errors(mut responses: Value, statuses: &[u16]) -> Value {
    merge(&mut responses, errors(statuses));
    responses
}

fn merge(into: &mut Value, more: Value) {
    if let (Some(into), Value::Object(more)) = (into.as_object_mut(), more) {
        into.extend(more);
    }
}

fn build() -> Value {
    let mut generator = SchemaSettings::draft2020_12()
        .with(|s| s.definitions_path = "/components/schemas".into())
        .into_generator();
    let mut schemas = Map::new();
    let mut paths = Map::new();
    for kind in KINDS {
        schemas.insert(
            kind.name.to_string(),
            document_schema(kind, &mut generator).to_value(),
        );
        let one = json!({"$ref": format!("#/components/schemas/{}", kind.name)});
        let body = json_body(one.clone());
        let ok = |what: &str| json!({"description": what, "content": {"application/json": {"schema": one}}});
        for (prefix, params) in places(kind) {
            let collection = format!("/v1{prefix}/{}", kind.plural);
            let mut item_params = params.clone();
            item_params.push("name");
            let mut list = json!({"200": {"description": format!("the {} the caller may read", kind.plural),
                "content": {"application/json": {"schema": {"type": "object", "properties": {"items": {"type": "array", "items": one}}}}}}});
            merge(&mut list, errors(&[404]));
            let mut created = json!({"201": ok("created")});
            merge(&mut created, error_responses());
            let mut read = json!({"200": ok("the resource")});
            merge(&mut read, errors(&[404]));
            let mut put = json!({"200": ok("updated or unchanged"), "201": ok("created")});
            merge(&mut put, error_responses());
            let mut deleted = json!({"200": {"description": "deleted"}});
            merge(&mut deleted, errors(&[404, 409]));
            paths.insert(collection.clone(), json!({
                "parameters": parameters(&params),
                "get": {"summary": format!("List {}", kind.plural), "tags": [kind.name], "responses": list},
                "post": {"summary": format!("Create a {}", kind.name), "tags": [kind.name], "requestBody": body, "responses": created},
            }));
            paths.insert(format!("{collection}/{{name}}"), json!({
                "parameters": parameters(&item_params),
                "get": {"summary": format!("Read a {}", kind.name), "tags": [kind.name], "responses": read},
                "put": {"summary": format!("Create or update a {}; send metadata.resourceVersion to fail with 409 if it changed since", kind.name),
                        "tags": [kind.name], "requestBody": body, "responses": put},
                "delete": {"summary": format!("Delete a {}; refused with 409 while other resources name it", kind.name), "tags": [kind.name],
                           "parameters": [{"name": "resourceVersion", "in": "query", "schema": {"type": "integer", "format": "int64"},
                                           "description": "delete only while the resource is at this version (else 409)"}],
                           "responses": deleted},
            }));
        }
    }
    let explain_request = generator
        .subschema_for::<weft_api::explain::ExplainRequest>()
        .to_value();
    schemas.extend(generator.take_definitions(true));
    schemas.insert("Error".into(), json!({
        "type": "object", "required": ["code", "message"],
        "properties": {
            "code": {"type": "string", "enum": ["invalid", "unauthenticated", "forbidden", "not_found", "method_not_allowed",
                "conflict", "gone", "too_large", "unsupported_media_type", "stopping", "internal"]},
            "message": {"type": "string"},
            "hint": {"type": "string"},
            "details": {"type": "array", "items": {"type": "object", "properties": {
                "document": {"type": "integer"}, "path": {"type": "string"}, "field": {"type": "string"}, "message": {"type": "string"}}}}
        }
    }));
    let bulk = json_body(json!({
        "type": "object", "required": ["resources"], "additionalProperties": false,
        "properties": {"resources": {"type": "array", "items": {"type": "object"}}, "dryRun": {"type": "boolean"}}}));
    let mut bulk_ok = json!({"200": {"description": "what each document did (created, updated, unchanged, deleted) with the resource before and after"}});
    merge(&mut bulk_ok, error_responses());
    paths.insert("/v1/apply".into(), json!({"post": {"summary": "Create or update every document, atomically", "requestBody": bulk, "responses": bulk_ok}}));
    paths.insert("/v1/delete".into(), json!({"post": {"summary": "Delete what every document names, atomically", "requestBody": bulk, "responses": bulk_ok}}));
    paths.insert(
        "/v1/audit".into(),
        json!({"get": {"summary": "Audit entries about resources the caller may read, oldest first",
        "parameters": [
            {"name": "since", "in": "query", "schema": {"type": "string", "format": "date-time"}},
            {"name": "until", "in": "query", "schema": {"type": "string", "format": "date-time"}},
            {"name": "path", "in": "query", "schema": {"type": "string"}},
            {"name": "user", "in": "query", "schema": {"type": "string"}},
            {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 0},
             "description": "the newest this many (default 100; above 1000 taken as 1000)"}],
        "responses": with_errors(json!({"200": {"description": "entries"}}), &[])}}),
    );
    paths.insert(
        "/v1/audit/verify".into(),
        json!({"get": {"summary": "Recompute the audit log's hash chain",
        "responses": with_errors(json!({"200": {"description": "the chain report"}}), &[])}}),
    );
    let new_token = json!({"type": "object", "additionalProperties": false, "properties": {
        "user": {"type": "string"}, "cluster": {"type": "string"}, "namespace": {"type": "string"},
        "serviceAccount": {"type": "string"}, "gateway": {"type": "string"},
        "description": {"type": "string", "maxLength": 256}, "ttlSeconds": {"type": "integer", "minimum": 1}}});
    paths.insert("/v1/tokens".into(), json!({
        "get": {"summary": "List a user's tokens, or a cluster's credentials (no secrets)",
                "parameters": [{"name": "user", "in": "query", "schema": {"type": "string"}},
                               {"name": "cluster", "in": "query", "schema": {"type": "string"}}],
                "responses": with_errors(json!({"200": {"description": "tokens"}}), &[404])},
        "post": {"summary": "Create a token; the secret is in the answer only", "requestBody": json_body(new_token),
                 "responses": with_errors(json!({"201": {"description": "the token and its secret"}}), &[404, 409, 413, 415, 422])}}));
    paths.insert(
        "/v1/tokens/{id}".into(),
        json!({"parameters": id_parameter(),
        "delete": {"summary": "Revoke a token (409 if it already was)",
                   "responses": with_errors(json!({"200": {"description": "revoked"}}), &[404, 409])}}),
    );
    paths.insert("/v1/watch".into(), json!({"get": {"summary": "Stream changes the caller may read, one JSON object a line (put, delete, heartbeat, error); 410 if `since` is older than the store keeps",
        "parameters": [{"name": "since", "in": "query", "schema": {"type": "integer"}, "description": "a revision, e.g. a list's `revision`; default: now"}],
        "responses": with_errors(json!({"200": {"description": "application/x-ndjson"}}), &[410, 503])}}));
    let new_root = json!({"type": "object", "additionalProperties": false, "properties": {
        "certificate": {"type": "string", "description": "PEM"}, "key": {"type": "string", "description": "PEM"}}});
    paths.insert("/v1/ca/roots".into(), json!({
        "get": {"summary": "The organization's root CAs and their state (signing, trusted, retired)",
                "responses": with_errors(json!({"200": {"description": "roots"}}), &[])},
        "post": {"summary": "Add a root, trusted but not signing: made by the server, or imported ({certificate, key} PEM)",
                 "requestBody": json_body(new_root),
                 "responses": with_errors(json!({"201": {"description": "the root"}}), &[404, 409, 413, 415, 422])}}));
    for (change, summary) in [
        (
            "activate",
            "Make a root the signer; edges get new cluster CAs from it",
        ),
        (
            "retire",
            "Stop trusting a root that no longer signs (409 for the signing root)",
        ),
    ] {
        paths.insert(
            format!("/v1/ca/roots/{{id}}/{change}"),
            json!({"parameters": id_parameter(),
            "post": {"summary": summary, "responses": with_errors(json!({"200": {"description": "the root"}}), &[404, 409])}}),
        );
    }
    let traffic_parameters = json!([
        {"name": "since", "in": "query", "schema": {"type": "string"}, "description": "how far back: 30s, 5m, 1h (default 5m, at most 1h)"},
        {"name": "cluster", "in": "query", "schema": {"type": "string"}, "description": "only callees in this cluster"},
        {"name": "byCluster", "in": "query", "schema": {"type": "boolean"}, "description": "keep clusters apart instead of summing them"}]);
    for (what, summary) in [
        (
            "services",
            "Requests per service over the window, from the edges' rollups: rate, success, mTLS share, p50/p95/p99 (services in workspaces the caller may read)",
        ),
        (
            "pairs",
            "Requests per caller and callee over the window, as for services",
        ),
    ] {
        let responses = with_errors(
            json!({"200": {"description": "the rows and the seconds they cover"}}),
            &[],
        );
        paths.insert(
            format!("/v1/traffic/{what}"),
            json!({"get": {"summary": summary, "parameters": traffic_parameters, "responses": responses}}),
        );
    }
    paths.insert("/v1/analyze".into(), json!({"get": {"summary": "Conflicts and warnings in the stored configuration (those about resources the caller may read; a side they may not read is not named)",
        "responses": with_errors(json!({"200": {"description": "the findings"}}), &[])}}));
    paths.insert("/v1/proxy-config/{cluster}/{node}".into(), json!({
        "parameters": [{"name": "cluster", "in": "path", "required": true, "schema": name_schema()},
                       {"name": "node", "in": "path", "required": true, "schema": {"type": "string", "minLength": 1}}],
        "get": {"summary": "What a live proxy holds, asked of its cluster's edge: versions sent and accepted, its certificate, its resources as in Envoy's config dump (read on the Cluster)",
                "responses": with_errors(json!({"200": {"description": "the proxy's configuration"}}), &[404, 503])}}));
    paths.insert("/v1/explain/{cluster}".into(), json!({
        "parameters": parameters(&["cluster"]),
        "post": {"summary": "What the mesh does with one request from a caller, asked of the cluster's edge: the route that matches, destinations and weights, the settings that apply and their sources, the failover order, the token check and the authorization rule that decides (read on the Cluster)",
                 "requestBody": json_body(explain_request),
                 "responses": with_errors(json!({"200": {"description": "the explanation"}}), &[404, 413, 415, 422, 503])}}));
    paths.insert("/v1/prometheus/targets".into(), json!({"get": {"summary": "Where Prometheus scrapes each edge (HTTP service discovery format), for the clusters the caller may read",
        "responses": with_errors(json!({"200": {"description": "target groups, each with a weft_cluster label"}}), &[])}}));
    paths.insert(
        "/v1/whoami".into(),
        json!({"get": {"summary": "The caller, their teams and grants",
        "responses": with_errors(json!({"200": {"description": "the caller"}}), &[])}}),
    );
    paths.insert(
        "/v1/openapi.json".into(),
        json!({"get": {"summary": "This document", "security": [],
        "responses": {"200": {"description": "OpenAPI 3.1"}}}}),
    );
    json!({
        "openapi": "3.1.0",
        "info": {"title": "weft management API", "version": env!("CARGO_PKG_VERSION"),
                 "description": format!("Every error is JSON in the Error shape, those answered before an operation runs too (405 names the methods in `Allow`). Request bodies are JSON (`Content-Type: application/json`, or none), at most {MAX_BODY_BYTES} bytes.")},
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}
        }
    })
}

/// The document, built once.
pub fn document() -> &'static Value {
    static DOCUMENT: OnceLock<Value> = OnceLock::new();
    DOCUMENT.get_or_init(build)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_paths_and_schema() {
        let doc = document();
        for kind in KINDS {
            assert!(
                doc["components"]["schemas"][kind.name].is_object(),
                "{}",
                kind.name
            );
        }
        let paths = doc["paths"].as_object().unwrap();
        assert!(
            paths.contains_key("/v1/tenants/{tenant}/workspaces/{workspace}/trafficgroups/{name}")
        );
        assert!(paths.contains_key("/v1/tenants/{tenant}/workspaces/{workspace}/securitygroups/{securityGroup}/accessbindings"));
        assert!(paths.contains_key("/v1/accessbindings/{name}"));
        // Every $ref resolves inside the document.
        let text = doc.to_string();
        for piece in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
            let name = &piece[..piece.find('"').unwrap()];
            assert!(
                doc["components"]["schemas"][name].is_object(),
                "dangling $ref {name}"
            );
        }
    }
}

//! The REST API keeps the contract its OpenAPI document states: every
//! operation in the document is driven with malformed names, bad query
//! values, unknown fields, the wrong media type and the methods it does
//! not take; every answer must be JSON in the error shape, with a status
//! the document lists for that operation (405 with an accurate `Allow`
//! for a method it lacks), and nothing may be stored.

mod support;

use std::collections::BTreeSet;

use reqwest::Method;
use serde_json::{Value, json};
use support::{Server, api};

const METHODS: [&str; 5] = ["get", "put", "post", "delete", "patch"];

/// What a request left stored: the store's revision, tokens, roots.
async fn stored(server: &Server, admin: &str) -> (Value, usize, usize) {
    let (_, tenants) = api(server, "GET", "/v1/tenants", Some(admin), None).await;
    let (_, tokens) = api(server, "GET", "/v1/tokens", Some(admin), None).await;
    let (_, roots) = api(server, "GET", "/v1/ca/roots", Some(admin), None).await;
    (
        tenants["revision"].clone(),
        tokens.as_array().map_or(0, Vec::len),
        roots.as_array().map_or(0, Vec::len),
    )
}

/// The path with each `{param}` replaced: a valid name (or id), or a
/// malformed one.
fn fill(template: &str, malformed: bool) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let close = rest[open..].find('}').unwrap() + open;
        out.push_str(&rest[..open]);
        out.push_str(if malformed { "Not_A-Name" } else { "a" });
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    out
}

/// A bad request: what is wrong with it, its URL, and its body (media
/// type and text).
type Try = (String, String, Option<(&'static str, String)>);

struct Answer {
    status: u16,
    allow: Option<String>,
    content_type: String,
    body: Value,
}

async fn send(
    http: &reqwest::Client,
    base: &str,
    admin: &str,
    method: &str,
    url: &str,
    body: Option<(&str, String)>,
) -> Answer {
    let mut request = http
        .request(
            Method::from_bytes(method.to_uppercase().as_bytes()).unwrap(),
            format!("{base}{url}"),
        )
        .bearer_auth(admin);
    if let Some((media_type, body)) = body {
        request = request.header("content-type", media_type).body(body);
    }
    let response = request.send().await.unwrap();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let (allow, content_type) = (header("allow"), header("content-type").unwrap_or_default());
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    Answer {
        status,
        allow,
        content_type,
        body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
    }
}

/// An answer is an error in the one shape.
fn is_error(answer: &Answer) -> bool {
    answer.content_type.starts_with("application/json")
        && answer.body["code"].is_string()
        && answer.body["message"].is_string()
}

#[tokio::test]
async fn every_operation_keeps_to_its_openapi_document_and_bad_requests_store_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), None);
    let admin = server.admin_token();
    let http = reqwest::Client::new();
    let base = server.url.clone();
    let (status, doc) = api(&server, "GET", "/v1/openapi.json", None, None).await;
    assert_eq!(status, 200);
    let before = stored(&server, &admin).await;

    let mut failures = Vec::new();
    let mut checked = 0;
    for (template, item) in doc["paths"].as_object().unwrap() {
        let declared: Vec<&str> = METHODS
            .into_iter()
            .filter(|m| item.get(*m).is_some())
            .collect();
        let named =
            template.contains('{') && !template.ends_with("{id}") && !template.contains("{id}/");
        let url = fill(template, false);
        for method in &declared {
            let op = &item[*method];
            let documented: BTreeSet<u16> = op["responses"]
                .as_object()
                .unwrap()
                .keys()
                .filter_map(|k| k.parse().ok())
                .collect();
            let mut tries: Vec<Try> = Vec::new();
            if named {
                tries.push(("a malformed name".into(), fill(template, true), None));
            }
            let parameters = op["parameters"].as_array().into_iter().flatten();
            for parameter in parameters.filter(|p| p["in"] == "query") {
                let kind = parameter["schema"]["type"].as_str().unwrap_or_default();
                if kind == "integer" || kind == "boolean" {
                    let name = parameter["name"].as_str().unwrap();
                    tries.push((
                        format!("{name}=not-a-{kind}"),
                        format!("{url}?{name}=not-a-{kind}"),
                        None,
                    ));
                }
            }
            if op.get("requestBody").is_some() {
                tries.push((
                    "a text/plain body".into(),
                    url.clone(),
                    Some(("text/plain", "hello".into())),
                ));
                tries.push((
                    "an unknown field".into(),
                    url.clone(),
                    Some((
                        "application/json",
                        json!({"unknownField": true}).to_string(),
                    )),
                ));
                tries.push((
                    "a body that is not JSON".into(),
                    url.clone(),
                    Some(("application/json", "{\"resources\": [".into())),
                ));
            }
            for (what, target, body) in tries {
                let answer = send(&http, &base, &admin, method, &target, body).await;
                checked += 1;
                if !is_error(&answer) || !documented.contains(&answer.status) {
                    failures.push(format!(
                        "{} {target} with {what}: {} {} (documented: {documented:?})",
                        method.to_uppercase(),
                        answer.status,
                        answer.body
                    ));
                }
            }
        }
        for method in METHODS.into_iter().filter(|m| !declared.contains(m)) {
            let answer = send(&http, &base, &admin, method, &url, None).await;
            checked += 1;
            let allowed: BTreeSet<String> = answer
                .allow
                .as_deref()
                .unwrap_or_default()
                .split(',')
                .map(|m| m.trim().to_lowercase())
                .filter(|m| m != "head")
                .collect();
            let expected: BTreeSet<String> = declared.iter().map(|m| m.to_string()).collect();
            if answer.status != 405
                || !is_error(&answer)
                || answer.body["code"] != "method_not_allowed"
                || allowed != expected
            {
                failures.push(format!(
                    "{} {url}: {} Allow {:?} {} (declared: {expected:?})",
                    method.to_uppercase(),
                    answer.status,
                    answer.allow,
                    answer.body
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} answers break the contract:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        checked > 400,
        "only {checked} requests: is the document whole?"
    );
    assert_eq!(
        stored(&server, &admin).await,
        before,
        "a refused request stored something"
    );
    eprintln!("{checked} requests kept the contract");
}

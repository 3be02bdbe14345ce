//! The API's one error shape: `{code, message, details, hint}` as JSON.

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::http::StatusCode;
use axum::http::header::{ALLOW, CONTENT_TYPE};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use weft_store::{Reason, StoreError};

/// One problem in a request, tied to a document and field where it can be.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Detail {
    /// Index of the document in the request, for bulk requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub document: Option<usize>,
    /// Path of the resource the problem is about.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
    /// Field path inside the document, e.g. `spec.namespaceSelector[1]`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub field: String,
    pub message: String,
}

/// What the API sends back on failure; also what clients parse.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<Detail>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: ErrorBody,
    /// For a 405: the methods the URL takes (the `Allow` header).
    allow: Option<&'static str>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            allow: None,
            body: ErrorBody {
                code: code.to_string(),
                message: message.into(),
                details: Vec::new(),
                hint: None,
            },
        }
    }

    /// A 405 for `method`; `allow` lists the methods the URL takes.
    pub fn method_not_allowed(method: &str, allow: &'static str) -> ApiError {
        let mut e = ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{method} is not an operation on this URL"),
        )
        .with_hint("the Allow header lists the methods it takes; /v1/openapi.json describes them");
        e.allow = Some(allow);
        e
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid", message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn unauthenticated(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", message)
            .with_hint("send 'Authorization: Bearer <token>' with a token from 'weft token create' (the first admin token is in the server's data directory, admin.token)")
    }

    pub fn invalid(message: impl Into<String>, details: Vec<Detail>) -> ApiError {
        let mut e = ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", message);
        e.body.details = details;
        e
    }

    /// The same error with another status.
    pub fn with_status(mut self, status: StatusCode) -> ApiError {
        self.status = status;
        self
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> ApiError {
        self.body.hint = Some(hint.into());
        self
    }

    pub fn with_details(mut self, details: Vec<Detail>) -> ApiError {
        self.body.details = details;
        self
    }

    pub fn internal(error: impl std::fmt::Display) -> ApiError {
        tracing::error!(%error, "request failed");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the server failed; see its log",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body)).into_response();
        let allow = self.allow.filter(|a| !a.is_empty());
        if let Some(allow) = allow.map(HeaderValue::from_static) {
            response.headers_mut().insert(ALLOW, allow);
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> ApiError {
        match error {
            StoreError::Refused { refusals } => {
                let (status, code) = match refusals.first().map(|r| r.reason) {
                    Some(Reason::Missing) => (StatusCode::NOT_FOUND, "not_found"),
                    Some(Reason::Dangling) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid"),
                    _ => (StatusCode::CONFLICT, "conflict"),
                };
                if let [only] = refusals.as_slice() {
                    let mut e = ApiError::new(status, code, only.to_string());
                    e.body.details = vec![Detail {
                        document: Some(only.change),
                        path: only.path.clone(),
                        field: only.field.clone(),
                        message: only.message.clone(),
                    }];
                    return e;
                }
                let message = format!(
                    "{} changes were refused; nothing was stored",
                    refusals.len()
                );
                let details = refusals
                    .into_iter()
                    .map(|r| Detail {
                        document: Some(r.change),
                        path: r.path,
                        field: r.field,
                        message: r.message,
                    })
                    .collect();
                ApiError::new(status, code, message).with_details(details)
            }
            StoreError::Compacted { .. } => {
                ApiError::new(StatusCode::GONE, "gone", error.to_string()).with_hint(
                    "list the resources again and watch from the revision the list carries",
                )
            }
            other => ApiError::internal(other),
        }
    }
}

/// How much of a non-JSON error body is kept as the message.
const MAX_WRAPPED_BYTES: usize = 4096;

/// Makes every error under `/v1` JSON in the one error shape, the ones
/// produced before a handler runs too: a query string or path segment
/// that does not parse, a method the URL does not take (405, its `Allow`
/// header kept). Handlers' own errors are JSON already and pass as they
/// are.
pub async fn errors_as_json(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let api = request.uri().path().starts_with("/v1/");
    let response = next.run(request).await;
    let status = response.status();
    let failed = status.is_client_error() || status.is_server_error();
    let json = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !api || !failed || json {
        return response;
    }
    let (_, body) = response.into_parts();
    let text = axum::body::to_bytes(body, MAX_WRAPPED_BYTES)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let error = match status {
        // axum adds the `Allow` header outside this layer.
        StatusCode::METHOD_NOT_ALLOWED => ApiError::method_not_allowed(method.as_str(), ""),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::new(status, "unsupported_media_type", text),
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(status, "too_large", text),
        StatusCode::NOT_FOUND => ApiError::not_found(text),
        s if s.is_client_error() => match text.strip_prefix("Failed to deserialize query string: ")
        {
            Some(problem) => ApiError::bad_request(format!("query string: {problem}"))
                .with_hint("/v1/openapi.json lists each operation's parameters and their types"),
            None => ApiError::bad_request(text).with_status(s),
        },
        _ => ApiError::internal(text),
    };
    error.into_response()
}

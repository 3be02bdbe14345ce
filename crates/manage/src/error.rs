//! The API's one error shape: `{code, message, details, hint}` as JSON.

use axum::http::StatusCode;
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
}

impl ApiError {
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            body: ErrorBody {
                code: code.to_string(),
                message: message.into(),
                details: Vec::new(),
                hint: None,
            },
        }
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
        (self.status, axum::Json(self.body)).into_response()
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

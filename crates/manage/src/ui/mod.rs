//! The web UI, served by `weft server` on its API port under `/ui`.
//!
//! Pages are rendered on the server (maud templates, escaped by
//! construction) from the same store, traffic window and IAM checks as
//! the REST API, so a page shows exactly what its user could read through
//! the API. Each URL names its whole view (filters and selection in the
//! query string), so a link can be shared. One small script adds live
//! refresh and keyboard shortcuts; pages work without it.
//!
//! A browser signs in with an API token; the server swaps it for a
//! session: a token of the same user that lives [`session::LIFETIME`],
//! kept in an HttpOnly, SameSite=Strict cookie and revoked at sign-out.
//! The cookie is taken only by `/ui` pages, which only read: the API
//! still needs a bearer header, so a forged cross-site request can
//! change nothing.

mod assets;
pub use assets::total_bytes as embedded_asset_bytes;
mod audit;
mod clusters;
mod config;
mod diff;
mod estate;
mod layout;
mod overview;
mod search;
mod services;
mod session;
mod topology;

use axum::Router;
use axum::extract::{FromRequestParts, Request};
use axum::http::header::{self, HeaderValue};
use axum::http::request::Parts;
use axum::http::{StatusCode, Uri};
use axum::middleware::{Next, from_fn};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::Markup;
use tower_http::compression::CompressionLayer;

use crate::AppState;
use crate::error::ApiError;
use crate::iam::{Caller, CallerSlot};

/// What a page handler returns.
type Page = Result<Markup, UiError>;

/// The UI's routes; `/` sends a browser to the overview.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui/") }))
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/", get(overview::page))
        .route(
            "/ui/sign-in",
            get(session::sign_in_page).post(session::sign_in),
        )
        .route("/ui/sign-out", post(session::sign_out))
        .route("/ui/topology", get(topology::page))
        .route("/ui/services", get(services::list))
        .route("/ui/services/{namespace}/{name}", get(services::one))
        .route("/ui/config", get(config::tree))
        .route("/ui/config/{*path}", get(config::resource))
        .route("/ui/audit", get(audit::list))
        .route("/ui/audit/{seq}", get(audit::entry))
        .route("/ui/clusters/{name}", get(clusters::one))
        .route("/ui/search", get(search::page))
        .route("/ui/assets/{file}", get(assets::serve))
        .route("/ui/{*rest}", get(not_found))
        .layer(from_fn(security_headers))
        // A topology of a thousand services is a megabyte of SVG, redrawn
        // while it is open; gzip makes it a tenth of that.
        .layer(CompressionLayer::new())
}

async fn not_found(caller: UiCaller, uri: Uri) -> UiError {
    UiError {
        caller: Some(caller.0),
        error: ApiError::not_found(format!("there is no page at {}", uri.path())),
    }
}

/// Headers every UI answer carries: nothing but the server's own
/// scripts, styles and images run, no framing, no referrer beyond the UI
/// (not `no-referrer`: Chromium then sends `Origin: null` on forms), no
/// caching of pages that show what one user may read.
async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

/// The signed-in user of a page; a browser without a live session is
/// sent to sign in, and comes back here after.
pub struct UiCaller(pub Caller);

impl FromRequestParts<AppState> for UiCaller {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<UiCaller, Response> {
        let back = parts
            .uri
            .path_and_query()
            .map_or("/ui/", |p| p.as_str())
            .to_string();
        let Some(secret) = session::cookie(&parts.headers) else {
            return Err(session::to_sign_in(&back, None));
        };
        match crate::iam::authenticate(state, Some(&format!("Bearer {secret}"))).await {
            Ok(caller) => {
                if let Some(slot) = parts.extensions.get::<CallerSlot>() {
                    let _ = slot.0.set(caller.user.clone());
                }
                Ok(UiCaller(caller))
            }
            Err(e) if e.status == StatusCode::UNAUTHORIZED => {
                Err(session::to_sign_in(&back, Some("your session has ended")))
            }
            Err(e) => Err(UiError {
                caller: None,
                error: e,
            }
            .into_response()),
        }
    }
}

/// A page's query string; one that does not parse is answered with a
/// page naming the problem, like every other UI error (not axum's plain
/// text).
pub struct UiQuery<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> FromRequestParts<S> for UiQuery<T> {
    type Rejection = UiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<UiQuery<T>, UiError> {
        axum::extract::Query::try_from_uri(&parts.uri)
            .map(|axum::extract::Query(query)| UiQuery(query))
            .map_err(|e| UiError {
                caller: None,
                error: ApiError::bad_request(e.body_text())
                    .with_hint("the page's links and forms make valid ones"),
            })
    }
}

/// A page that could not be shown: the API's error, as HTML.
pub struct UiError {
    caller: Option<Caller>,
    error: ApiError,
}

impl UiError {
    fn of(caller: &Caller, error: impl Into<ApiError>) -> UiError {
        UiError {
            caller: Some(caller.clone()),
            error: error.into(),
        }
    }
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        let status = self.error.status;
        let body = layout::error_page(self.caller.as_ref(), &self.error);
        (status, body).into_response()
    }
}

//! The UI's stylesheet, script and icon, compiled into the binary: the
//! UI works offline and needs nothing installed. Their URLs carry a hash
//! of their content, so browsers may cache them for good.

use std::sync::LazyLock;

use axum::extract::{Path, Query};
use axum::http::StatusCode;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

/// Every asset: name, media type, content.
pub const ASSETS: [(&str, &str, &str); 3] = [
    (
        "weft.css",
        "text/css; charset=utf-8",
        include_str!("assets/weft.css"),
    ),
    (
        "weft.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/weft.js"),
    ),
    ("weft.svg", "image/svg+xml", include_str!("assets/weft.svg")),
];

static VERSIONS: LazyLock<Vec<String>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|(_, _, body)| hex::encode(&Sha256::digest(body.as_bytes())[..6]))
        .collect()
});

/// The URL of an asset, versioned by its content.
pub fn url(name: &str) -> String {
    let i = ASSETS
        .iter()
        .position(|(n, _, _)| *n == name)
        .expect("a known asset");
    format!("/ui/assets/{name}?v={}", VERSIONS[i])
}

/// The bytes the binary carries for the UI.
pub fn total_bytes() -> usize {
    ASSETS.iter().map(|(_, _, body)| body.len()).sum()
}

#[derive(serde::Deserialize)]
pub struct Version {
    v: Option<String>,
}

pub async fn serve(Path(file): Path<String>, Query(version): Query<Version>) -> Response {
    let Some(i) = ASSETS.iter().position(|(n, _, _)| *n == file) else {
        return (StatusCode::NOT_FOUND, "no such asset\n").into_response();
    };
    let (_, media_type, body) = ASSETS[i];
    // Only the current version may be cached for good.
    let cache = if version.v.as_deref() == Some(VERSIONS[i].as_str()) {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    ([(CONTENT_TYPE, media_type), (CACHE_CONTROL, cache)], body).into_response()
}

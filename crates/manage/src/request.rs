//! Reading requests: JSON bodies with clear errors, and the hierarchical
//! resource URLs (`/v1/tenants/retail/workspaces/checkout`).

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::request::Parts;
use percent_encoding::percent_decode_str;
use serde::de::DeserializeOwned;
use weft_api::Kind;
use weft_api::kinds::{TOP_LEVEL, child_path};
use weft_api::problems::check_dns_label;

use crate::error::ApiError;

/// Largest request body accepted; larger ones get a 413.
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// A JSON body; every way it can be wrong becomes a clear [`ApiError`].
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let too_large = || {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("the request body is larger than {MAX_BODY_BYTES} bytes"),
            )
            .with_hint("split the manifests into several applies")
        };
        // A body that says it is something else is refused before it is
        // read; one that says nothing is taken as JSON.
        let media_type = request
            .headers()
            .get(CONTENT_TYPE)
            .map(|v| v.to_str().unwrap_or("(not text)").to_string());
        if let Some(media_type) = media_type {
            let essence = media_type.split(';').next().unwrap_or_default().trim();
            let json = essence.eq_ignore_ascii_case("application/json")
                || essence.to_ascii_lowercase().ends_with("+json");
            if !json {
                return Err(ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_media_type",
                    format!(
                        "Content-Type: {media_type:?} is not JSON; the API takes application/json"
                    ),
                )
                .with_hint("send the body with 'Content-Type: application/json'"));
            }
        }
        // Refuse on the announced length before reading anything; bodies
        // without one are cut off at the limit while they are read.
        let announced = request
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if announced.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
            return Err(too_large());
        }
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    too_large()
                } else {
                    ApiError::bad_request(format!("cannot read the request body: {rejection}"))
                }
            })?;
        let text = std::str::from_utf8(&bytes).map_err(|e| {
            ApiError::bad_request(format!(
                "the request body is not valid UTF-8 (at byte {})",
                e.valid_up_to()
            ))
        })?;
        serde_json::from_str(text).map(JsonBody).map_err(|e| {
            ApiError::bad_request(format!(
                "the request body is not the expected JSON: {e} (line {}, column {})",
                e.line(),
                e.column()
            ))
        })
    }
}

/// What a resource URL names.
#[derive(Debug)]
pub enum Target {
    /// `…/plural`: the kind's resources under `parent`, or everywhere when
    /// the URL names no parent.
    Collection {
        kind: &'static Kind,
        parent: Option<String>,
    },
    /// `…/plural/name`.
    Item { kind: &'static Kind, path: String },
}

/// The part of a URL after `/v1/`.
fn rest_of(uri: &axum::http::Uri) -> &str {
    uri.path()
        .strip_prefix("/v1/")
        .unwrap_or_default()
        .trim_end_matches('/')
}

/// A URL naming one resource (`…/plural/name`); a collection's URL is
/// refused with 405 before anything else is read.
pub struct ItemUrl {
    pub kind: &'static Kind,
    pub path: String,
}

/// A URL naming a collection (`…/plural`); an item's URL is refused with
/// 405 before anything else is read.
pub struct CollectionUrl {
    pub kind: &'static Kind,
    pub parent: Option<String>,
}

/// What a collection's URL takes, and an item's.
pub const COLLECTION_METHODS: &str = "GET,HEAD,POST";
pub const ITEM_METHODS: &str = "GET,HEAD,PUT,DELETE";

impl<S: Send + Sync> FromRequestParts<S> for ItemUrl {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<ItemUrl, ApiError> {
        match parse_target(rest_of(&parts.uri))? {
            Target::Item { kind, path } => Ok(ItemUrl { kind, path }),
            Target::Collection { .. } => Err(ApiError::method_not_allowed(
                parts.method.as_str(),
                COLLECTION_METHODS,
            )),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for CollectionUrl {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<CollectionUrl, ApiError> {
        match parse_target(rest_of(&parts.uri))? {
            Target::Collection { kind, parent } => Ok(CollectionUrl { kind, parent }),
            Target::Item { .. } => Err(ApiError::method_not_allowed(
                parts.method.as_str(),
                ITEM_METHODS,
            )),
        }
    }
}

/// A resource URL of either shape.
pub struct ResourceUrl(pub Target);

impl<S: Send + Sync> FromRequestParts<S> for ResourceUrl {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<ResourceUrl, ApiError> {
        parse_target(rest_of(&parts.uri)).map(ResourceUrl)
    }
}

/// Parses the part of a URL after `/v1/`. Each segment is percent-decoded
/// on its own and names must be DNS labels, so no name can smuggle a `/`.
pub fn parse_target(rest: &str) -> Result<Target, ApiError> {
    let segments: Vec<String> = rest
        .split('/')
        .map(|s| percent_decode_str(s).decode_utf8().map(|c| c.into_owned()))
        .collect::<Result<_, _>>()
        .map_err(|_| ApiError::bad_request("the URL path is not valid UTF-8"))?;
    let mut path = String::new();
    let mut parent_kind = TOP_LEVEL;
    let mut chunks = segments.chunks(2).peekable();
    while let Some(chunk) = chunks.next() {
        let plural = &chunk[0];
        let kind = Kind::by_plural(plural).ok_or_else(|| {
            ApiError::not_found(format!("no such collection {plural:?}")).with_hint(
                "collections are the plural kind names, e.g. tenants, workspaces, trafficgroups",
            )
        })?;
        let top_level_listing = chunk.len() == 1 && path.is_empty();
        if !top_level_listing && !kind.parents.contains(&parent_kind) {
            let under = if parent_kind.is_empty() {
                "the top level"
            } else {
                parent_kind
            };
            return Err(ApiError::not_found(format!(
                "{} do not sit under {under}",
                kind.plural
            )));
        }
        let Some(name) = chunk.get(1) else {
            let parent = (!path.is_empty() || !top_level_listing).then(|| path.clone());
            return Ok(Target::Collection { kind, parent });
        };
        check_dns_label(name)
            .map_err(|e| ApiError::bad_request(format!("name in the URL: {e}")))?;
        path = child_path(&path, kind, name);
        if chunks.peek().is_none() {
            return Ok(Target::Item { kind, path });
        }
        parent_kind = kind.name;
    }
    Err(ApiError::not_found("no resource at this URL"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(rest: &str) -> String {
        match parse_target(rest).unwrap() {
            Target::Item { path, .. } => path,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn urls_map_to_paths() {
        assert_eq!(item("tenants/retail"), "tenants/retail");
        assert_eq!(
            item("tenants/retail/workspaces/checkout/trafficgroups/web"),
            "tenants/retail/workspaces/checkout/trafficgroups/web"
        );
        assert_eq!(
            item("tenants/a/accessbindings/b"),
            "tenants/a/accessbindings/b"
        );
        match parse_target("workspaces").unwrap() {
            Target::Collection { kind, parent } => {
                assert_eq!((kind.name, parent), ("Workspace", None))
            }
            other => panic!("{other:?}"),
        }
        match parse_target("tenants/a/workspaces").unwrap() {
            Target::Collection { parent, .. } => assert_eq!(parent.as_deref(), Some("tenants/a")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_urls_are_refused() {
        for bad in [
            "nothing/x",
            "workspaces/w",
            "tenants/a/tenants/b",
            "tenants/a%2Fb",
            "tenants/..",
            "tenants/A",
            "tenants/a/clusters",
        ] {
            assert!(parse_target(bad).is_err(), "{bad} should be refused");
        }
    }
}

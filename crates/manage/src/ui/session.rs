//! Signing in and out of the web UI.
//!
//! The pasted API token is checked like a bearer header and never kept:
//! the browser gets a session token of the same user instead, which ends
//! after [`LIFETIME`] or at sign-out (it is revoked in the store, so a
//! copied cookie ends with it, on every server replica).

use std::time::{Duration, SystemTime};

use axum::Form;
use axum::extract::State;
use axum::http::header::{COOKIE, HOST, LOCATION, ORIGIN, SET_COOKIE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use maud::html;
use serde::Deserialize;
use weft_store::TokenRecord;

use super::UiQuery;
use super::layout;
use crate::AppState;
use crate::iam::{self, hash_secret, new_secret, new_token_id};

/// How long a session lasts.
pub const LIFETIME: Duration = Duration::from_secs(12 * 3600);
const COOKIE_NAME: &str = "weft_session";
/// What session tokens are called in `weft token list`.
const DESCRIPTION: &str = "web UI session";

/// The session secret the browser sent, if any.
pub fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE_NAME)
        .map(|(_, value)| value.to_string())
        .filter(|v| !v.is_empty())
}

/// Where a page may send the browser after sign-in: a UI page of this
/// server, never elsewhere.
fn safe_next(next: Option<&str>) -> &str {
    next.filter(|n| n.starts_with("/ui/") && !n.starts_with("/ui//") && !n.contains('\\'))
        .unwrap_or("/ui/")
}

/// Whether a form was sent from this server's own pages: browsers name
/// the page's origin on every POST; one naming another host is refused,
/// so another site can neither sign a browser in (to an account of its
/// choosing) nor out. A client that sends no `Origin` is not a browser
/// posting across sites.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = headers.get(HOST).and_then(|v| v.to_str().ok());
    let origin_host = origin.split_once("://").map(|(_, rest)| rest);
    origin_host.is_some() && origin_host == host
}

/// Sends the browser to the sign-in page, to come back to `back`.
pub fn to_sign_in(back: &str, message: Option<&str>) -> Response {
    let mut url = url::form_urlencoded::Serializer::new(String::new());
    url.append_pair("next", safe_next(Some(back)));
    if let Some(message) = message {
        url.append_pair("message", message);
    }
    (
        StatusCode::SEE_OTHER,
        [(LOCATION, format!("/ui/sign-in?{}", url.finish()))],
    )
        .into_response()
}

#[derive(Deserialize)]
pub struct SignInQuery {
    next: Option<String>,
    message: Option<String>,
}

pub async fn sign_in_page(UiQuery(query): UiQuery<SignInQuery>) -> Response {
    form(
        StatusCode::OK,
        safe_next(query.next.as_deref()),
        query.message.as_deref(),
        None,
    )
}

fn form(status: StatusCode, next: &str, notice: Option<&str>, error: Option<&str>) -> Response {
    let body = html! {
        h1 { "Sign in to weft" }
        @if let Some(notice) = notice {
            p.notice role="status" { (notice) }
        }
        @if let Some(error) = error {
            p.problem role="alert" #sign-in-error { (error) }
        }
        form method="post" action="/ui/sign-in" {
            input type="hidden" name="next" value=(next);
            label for="token" { "API token" }
            input #token type="password" name="token" autocomplete="off" required autofocus
                aria-describedby="token-help";
            p #token-help .help {
                "A token from " code { "weft token create" } ", or the admin token: the first line of "
                code { "admin.token" } " in the server's data directory. The browser keeps a session of its own, not this token."
            }
            button type="submit" { "Sign in" }
        }
    };
    (status, layout::bare("Sign in", body)).into_response()
}

#[derive(Deserialize)]
pub struct SignIn {
    token: String,
    next: Option<String>,
}

/// Checks the pasted token and starts a session for its user.
pub async fn sign_in(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form_data): Form<SignIn>,
) -> Response {
    let next = safe_next(form_data.next.as_deref()).to_string();
    if !same_origin(&headers) {
        return form(
            StatusCode::FORBIDDEN,
            &next,
            None,
            Some("Sign-in refused: the form was sent from another site."),
        );
    }
    // A pasted credential file holds the secret on its first line.
    let secret = form_data
        .token
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or_default();
    if secret.is_empty() {
        return form(
            StatusCode::UNPROCESSABLE_ENTITY,
            &next,
            None,
            Some("token: paste an API token"),
        );
    }
    let caller = match iam::authenticate(&state, Some(&format!("Bearer {secret}"))).await {
        Ok(caller) => caller,
        Err(e) if e.status == StatusCode::UNAUTHORIZED => {
            let message = format!("Sign-in refused: {}.", e.body.message);
            return form(StatusCode::UNAUTHORIZED, &next, None, Some(&message));
        }
        Err(e) => {
            return super::UiError {
                caller: None,
                error: e,
            }
            .into_response();
        }
    };
    let session = new_secret();
    let now = SystemTime::now();
    let token = TokenRecord {
        id: new_token_id(),
        user: caller.user.clone(),
        description: DESCRIPTION.to_string(),
        created_at: humantime::format_rfc3339_millis(now).to_string(),
        expires_at: Some(humantime::format_rfc3339_millis(now + LIFETIME).to_string()),
        revoked_at: None,
    };
    if let Err(e) = state
        .store
        .create_token(&token, &hash_secret(&session), &caller.user)
        .await
    {
        return super::UiError {
            caller: None,
            error: e.into(),
        }
        .into_response();
    }
    tracing::info!(user = %caller.user, session = %token.id, "signed in to the web UI");
    (
        StatusCode::SEE_OTHER,
        [
            (LOCATION, next),
            (
                SET_COOKIE,
                format!(
                    "{COOKIE_NAME}={session}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={}",
                    LIFETIME.as_secs()
                ),
            ),
        ],
    )
        .into_response()
}

/// Ends the session: its token is revoked, the cookie cleared.
pub async fn sign_out(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if !same_origin(&headers) {
        return (
            StatusCode::FORBIDDEN,
            "sign-out refused: the form was sent from another site\n",
        )
            .into_response();
    }
    if let Some(secret) = cookie(&headers)
        && let Ok(token) = iam::valid_token(&state, Some(&format!("Bearer {secret}"))).await
        && token.description == DESCRIPTION
    {
        let at = weft_store::now_rfc3339();
        match state.store.revoke_token(&token, &at, &token.user).await {
            Ok(_) => {
                tracing::info!(user = %token.user, session = %token.id, "signed out of the web UI")
            }
            Err(error) => tracing::error!(%error, "could not end a web UI session"),
        }
    }
    let mut response = to_sign_in("/ui/", Some("You are signed out."));
    response.headers_mut().insert(
        SET_COOKIE,
        format!("{COOKIE_NAME}=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0")
            .parse()
            .expect("a valid header"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_in_sends_the_browser_back_only_to_this_ui() {
        assert_eq!(
            safe_next(Some("/ui/topology?since=1h")),
            "/ui/topology?since=1h"
        );
        for elsewhere in [
            "https://evil.example/",
            "//evil.example/ui/",
            "/ui//evil.example",
            "/ui/\\evil",
            "/v1/tokens",
        ] {
            assert_eq!(safe_next(Some(elsewhere)), "/ui/", "{elsewhere}");
        }
        assert_eq!(safe_next(None), "/ui/");
    }

    #[test]
    fn forms_from_other_sites_are_refused() {
        let mut headers = HeaderMap::new();
        headers.insert(HOST, "127.0.0.1:7070".parse().unwrap());
        assert!(same_origin(&headers), "no Origin: not a cross-site form");
        headers.insert(ORIGIN, "http://127.0.0.1:7070".parse().unwrap());
        assert!(same_origin(&headers));
        for other in ["http://evil.example", "http://127.0.0.1:7071", "null"] {
            headers.insert(ORIGIN, other.parse().unwrap());
            assert!(!same_origin(&headers), "{other}");
        }
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(COOKIE, "a=1; weft_session=weft_abc; b=2".parse().unwrap());
        assert_eq!(cookie(&headers).as_deref(), Some("weft_abc"));
        headers.insert(COOKIE, "weft_session=".parse().unwrap());
        assert_eq!(cookie(&headers), None);
    }
}

//! End-to-end tests of browser sign-in: the real `weft server`, `weft
//! edge`, `weft gateway` (Envoy, HTTPS) and `weft authservice` with
//! sessions in a real Redis, a real OpenID provider (`oidc-provider` on
//! Node) and a real browser (Chromium driven by `playwright-core`).

mod support;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use serde_json::Value;
use support::browser::{Browser, Provider};
use support::gateway::{GatewayMesh, ingress_gateway};
use support::redis::Redis;
use support::{Proc, free_port, tls, until};

const HOST: &str = "shop.example.test";
/// How long the provider's access and ID tokens live.
const TOKEN_TTL: u64 = 10;

fn gateway(port: u16, issuer: &str) -> String {
    ingress_gateway(&format!(
        "    - name: shop
      port: {port}
      hostname: {HOST}
      tls: {{certificate: {HOST}}}
      authentication:
        oidc:
          issuer: {issuer}
          clientId: shop
          clientSecret: shop-oidc
          scopes: [email]
          logoutPath: /logout
          postLogoutRedirect: /
          forward: {{idToken: x-id-token}}
          session: {{store: redis}}
      routes: [{{to: [{{service: shop/ratings}}]}}]
"
    ))
}

/// The ID token the app saw, from the echo app's page.
fn id_token(text: &str) -> String {
    let seen: Value = serde_json::from_str(text).unwrap_or_else(|_| panic!("not the app: {text}"));
    seen["headers"]["x-id-token"]
        .as_str()
        .unwrap_or_else(|| panic!("no ID token: {seen}"))
        .to_string()
}

fn cookie_value(cookies: &[Value], name: &str) -> Option<String> {
    cookies
        .iter()
        .find(|c| c["name"] == name)
        .and_then(|c| c["value"].as_str().map(str::to_string))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_browser_signs_in_keeps_its_session_and_signs_out() {
    let mut mesh = GatewayMesh::start().await;
    let redis = Redis::start(mesh.dir.path());
    let port = free_port();
    let base = format!("https://{HOST}:{port}");
    let mut provider = Provider::start(
        mesh.dir.path().join("provider.log"),
        "s3cret-of-the-shop",
        &format!("{base}/oauth2/callback"),
        &format!("{base}/"),
        TOKEN_TTL,
    )
    .await;
    let secrets = mesh.dir.path().join("secrets");
    std::fs::create_dir(&secrets).unwrap();
    std::fs::write(secrets.join("shop-oidc"), "s3cret-of-the-shop\n").unwrap();
    std::fs::set_permissions(
        secrets.join("shop-oidc"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    mesh.ca.install(&mesh.certificates, HOST, &[HOST]);
    mesh.apply(&gateway(port, &provider.issuer()));
    mesh.workload("ratings", "ratings-1", "v1");
    mesh.gateway("ingress", "edge", None);
    let (listen, admin) = (free_port(), free_port());
    let mut authservice = Proc(
        mesh.authservice(&secrets, &redis.url(), listen, admin)
            .spawn()
            .unwrap(),
    );
    mesh.until_in_sync(3).await;
    // A client that speaks to the gateway itself, never following redirects.
    let http = tls::client(&mesh.ca.pem, None, &[HOST], false);
    let get = async |path: &str, cookie: Option<&str>| {
        let mut request = http
            .get(format!("{base}{path}"))
            .header("accept", "text/html");
        if let Some(cookie) = cookie {
            request = request.header("cookie", cookie);
        }
        request.send().await.ok()
    };
    until(
        "the gateway sends browsers to sign in",
        Duration::from_secs(30),
        async || get("/", None).await.is_some_and(|r| r.status() == 302),
    )
    .await;

    // A protected page: the provider's sign-in, then back where it began,
    // the app seeing the ID token.
    let mut browser = Browser::start(
        &[HOST],
        "/oauth2/callback",
        mesh.dir.path().join("browser.log"),
    );
    let (at, _) = browser.goto(&format!("{base}/account?tab=orders")).await;
    assert!(
        at.starts_with(&provider.issuer()),
        "sent to the provider: {at}"
    );
    let (at, text) = browser.sign_in("alice").await;
    assert_eq!(
        at,
        format!("{base}/account?tab=orders"),
        "back where it began"
    );
    let first_token = id_token(&text);
    assert_eq!(first_token.split('.').count(), 3, "a JWT: {first_token}");

    // The browser holds an opaque id, not a token; cookies this host only.
    let cookies = browser.cookies().await;
    let session = cookie_value(&cookies, "__Host-weft-session").expect("a session cookie");
    assert!(session.len() >= 40 && !session.contains('.'), "{session}");
    let jar = cookies
        .iter()
        .find(|c| c["name"] == "__Host-weft-session")
        .unwrap();
    assert_eq!(jar["secure"], true);
    assert_eq!(jar["httpOnly"], true);
    assert_eq!(jar["sameSite"], "Lax");
    assert_eq!(jar["path"], "/");

    // The next request needs no sign-in.
    let (at, text) = browser.goto(&format!("{base}/other")).await;
    assert_eq!(at, format!("{base}/other"));
    assert_eq!(id_token(&text), first_token);

    // A replayed callback makes no session: its state was used.
    let callback = browser
        .callbacks()
        .await
        .pop()
        .expect("the browser came back through the callback");
    let state = reqwest::Url::parse(&callback)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "state")
        .map(|(_, v)| v.to_string())
        .unwrap();
    let path = callback.trim_start_matches(&base);
    let replayed = get(path, Some(&format!("__Host-weft-login={state}")))
        .await
        .unwrap();
    assert_eq!(replayed.status(), 400, "replayed callback");
    assert!(replayed.headers().get("set-cookie").is_none());
    assert!(replayed.text().await.unwrap().contains("already been used"));

    // A tampered state: refused, with a page, not a redirect.
    let started = get("/", None).await.unwrap();
    assert_eq!(started.status(), 302);
    let login = started
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("__Host-weft-login="))
        .expect("a login cookie")
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let tampered = get(
        "/oauth2/callback?code=abc&state=not-the-state",
        Some(&login),
    )
    .await
    .unwrap();
    assert_eq!(tampered.status(), 400, "tampered state");
    assert!(
        tampered
            .text()
            .await
            .unwrap()
            .contains("changed on the way")
    );

    // After the tokens expire, the next request refreshes them: a new ID
    // token, no sign-in page.
    tokio::time::sleep(Duration::from_secs(TOKEN_TTL)).await;
    let (at, text) = browser.goto(&format!("{base}/later")).await;
    assert_eq!(
        at,
        format!("{base}/later"),
        "no sign-in after the tokens expired"
    );
    let refreshed = id_token(&text);
    assert_ne!(refreshed, first_token, "the ID token was refreshed");

    // The session outlives a restart of the authservice (it is in Redis).
    assert!(authservice.stop());
    authservice = Proc(
        mesh.authservice(&secrets, &redis.url(), listen, admin)
            .spawn()
            .unwrap(),
    );
    until(
        "the restarted authservice has its servers",
        Duration::from_secs(30),
        async || {
            reqwest::get(format!("http://127.0.0.1:{admin}/readyz"))
                .await
                .is_ok_and(|r| r.status() == 200)
        },
    )
    .await;
    let (at, text) = browser.goto(&format!("{base}/after-restart")).await;
    assert_eq!(
        at,
        format!("{base}/after-restart"),
        "still signed in after a restart"
    );
    id_token(&text);

    // Sign out: the session ends here (its old id is worth nothing), and
    // the browser goes to the provider to end it there.
    let (at, _) = browser.goto(&format!("{base}/logout")).await;
    assert!(
        at.starts_with(&provider.issuer()),
        "signed out at the provider: {at}"
    );
    assert_eq!(
        cookie_value(&browser.cookies().await, "__Host-weft-session"),
        None
    );
    let old = get("/account", Some(&format!("__Host-weft-session={session}")))
        .await
        .unwrap();
    assert_eq!(old.status(), 302, "an ended session signs in again");
    let location = old.headers()["location"].to_str().unwrap().to_string();
    assert!(location.starts_with(&provider.issuer()), "{location}");

    // Scripts get 401, not a redirect they cannot follow.
    let api = http
        .get(format!("{base}/api/orders"))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(api.status(), 401);

    // The provider down when the tokens need refreshing: a page that
    // says so (the session kept for when it is back), not a redirect.
    let (at, _) = browser.goto(&format!("{base}/again")).await;
    if at.starts_with(&provider.issuer()) {
        browser.sign_in("alice").await;
    }
    let (at, text) = browser.goto(&format!("{base}/again")).await;
    assert_eq!(at, format!("{base}/again"), "signed in again");
    id_token(&text);
    tokio::time::sleep(Duration::from_secs(TOKEN_TTL)).await;
    provider.stop().await;
    let (at, text) = browser.goto(&format!("{base}/while-down")).await;
    assert_eq!(
        at,
        format!("{base}/while-down"),
        "no redirect while the provider is down"
    );
    assert!(text.contains("cannot be reached"), "{text}");

    let metrics = reqwest::get(format!("http://127.0.0.1:{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("weft_authservice_checks_total{outcome=\"allowed\"}"),
        "{metrics}"
    );
    drop(authservice);
}

//! The web UI in a real browser (Debian's Chromium driven by
//! playwright-core) against a real server, edge, Envoy sidecars and
//! traffic: sign-in and sign-out, what each page shows, what a viewer of
//! another tenant cannot see, accessibility (axe-core) and a clean
//! console on every page. Set `WEFT_SCREENSHOTS=DIR` to keep a
//! screenshot of each page there (the documentation's come from here).

mod support;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use support::browser::Browser;
use support::mesh::Mesh;
use support::{until, write};

/// Where the screenshots go.
fn screenshots(mesh: &Mesh) -> PathBuf {
    let dir = std::env::var_os("WEFT_SCREENSHOTS")
        .map_or_else(|| mesh.dir.path().join("screenshots"), PathBuf::from);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The page the browser is on passes axe-core without serious findings,
/// logged no console error and loaded every asset; its screenshot is
/// saved as `name`.png.
async fn check_page(browser: &mut Browser, shots: &std::path::Path, name: &str) {
    let violations = browser.accessibility_violations().await;
    assert!(violations.is_empty(), "{name}: {violations:#?}");
    let problems = browser.problems().await;
    assert!(problems.is_empty(), "{name}: {problems:#?}");
    browser.screenshot(&shots.join(format!("{name}.png"))).await;
}

async fn sign_in(browser: &mut Browser, base: &str, token: &str) -> (String, String) {
    let (url, _) = browser.goto(&format!("{base}/")).await;
    assert!(url.contains("/ui/sign-in"), "{url}");
    browser.fill("#token", token).await;
    browser.submit("button[type=submit]").await
}

/// Calls from the client to reviews until dropped.
struct Traffic(Arc<AtomicBool>);

impl Traffic {
    fn start(http: reqwest::Client, port: u16) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        tokio::spawn(async move {
            while !flag.load(Ordering::Relaxed) {
                let path = "/";
                let _ = support::mesh::call(&http, port, "reviews", path, &[]).await;
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        });
        Traffic(stop)
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

fn traffic_setting(timeout: &str) -> String {
    format!(
        "\
apiVersion: weft.dev/v1alpha1
kind: TrafficSetting
metadata: {{name: patience, tenant: retail, workspace: shop}}
spec: {{timeout: {timeout}}}
"
    )
}

#[tokio::test]
async fn the_web_ui_shows_the_live_mesh_to_whoever_may_read_it() {
    let mut mesh = Mesh::start().await;
    let (_reviews, _client, port) = mesh.reviews_and_client().await;
    let _traffic = Traffic::start(mesh.http.clone(), port);
    let base = mesh.server().url.clone();
    let shots = screenshots(&mesh);
    let mut browser = Browser::start(&[], "/none", mesh.dir.path().join("browser.log"));

    // A wrong token is refused, with the reason.
    let (url, _) = browser.goto(&format!("{base}/")).await;
    assert!(url.contains("/ui/sign-in"), "{url}");
    check_page(&mut browser, &shots, "sign-in").await;
    browser.fill("#token", "weft_not-a-token").await;
    let (url, text) = browser.submit("button[type=submit]").await;
    assert!(url.ends_with("/ui/sign-in"), "{url}");
    assert!(
        text.contains("Sign-in refused: the token is not recognized."),
        "{text}"
    );
    let _ = browser.problems().await; // the 401 itself

    // A sign-in form posted from another site is refused, with no session.
    let forged = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .post(format!("{base}/ui/sign-in"))
        .header("origin", "http://evil.example")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={}", mesh.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
    assert!(forged.headers().get("set-cookie").is_none());

    // The admin token, pasted as its file holds it.
    browser.fill("#token", &format!("{}\n", mesh.admin)).await;
    let (url, text) = browser.submit("button[type=submit]").await;
    assert!(url.ends_with("/ui/"), "{url}");
    assert!(text.contains("Overview"), "{text}");

    // The overview: cluster east's edge connected with both proxies.
    let row = browser.texts("#clusters tr[data-cluster=east]").await;
    assert!(
        row[0].contains("connected") && row[0].contains("2 / 2"),
        "{row:?}"
    );
    check_page(&mut browser, &shots, "overview").await;

    // The topology: client → reviews with requests, once the edge's
    // rollup (every 10 s) has arrived; the page refreshes itself.
    let calls = "g.edge[data-source='east/shop/client'][data-destination='east/shop/reviews']";
    until(
        "the topology shows client → reviews",
        Duration::from_secs(40),
        async || {
            browser.goto(&format!("{base}/ui/topology?since=1m")).await;
            browser
                .attrs(calls, "data-requests")
                .await
                .first()
                .is_some_and(|n| n.parse::<u64>().unwrap_or(0) > 0)
        },
    )
    .await;
    let rate = browser
        .texts("table.calls tr[data-source='east/shop/client'] td.rps")
        .await;
    assert!(
        rate.first()
            .is_some_and(|r| r != "0/s" && r.ends_with("/s")),
        "{rate:?}"
    );
    until(
        "the page refreshes itself",
        Duration::from_secs(20),
        async || {
            browser
                .texts("#live")
                .await
                .first()
                .is_some_and(|t| t.contains("refreshed"))
        },
    )
    .await;
    check_page(&mut browser, &shots, "topology").await;
    // A service's neighbours, on click.
    browser
        .submit("a.node[data-service='east/shop/reviews']")
        .await;
    let neighbours = browser.texts("aside.neighbours").await;
    assert!(neighbours[0].contains("east/shop/client"), "{neighbours:?}");

    // Services: reviews with its instance, who may call it.
    browser.goto(&format!("{base}/ui/services")).await;
    let reviews = browser
        .texts("#services tr[data-service='shop/reviews']")
        .await;
    assert!(reviews[0].contains("east: 1 v1"), "{reviews:?}");
    check_page(&mut browser, &shots, "services").await;
    let (_, text) = browser
        .goto(&format!("{base}/ui/services/shop/reviews"))
        .await;
    assert!(text.contains("reviews-v1"), "{text}");
    assert!(
        text.contains("tenants/retail/workspaces/shop/securitysettings/workspace-calls"),
        "{text}"
    );
    check_page(&mut browser, &shots, "service").await;

    // Proxies: identities and what they accepted.
    let (_, text) = browser.goto(&format!("{base}/ui/clusters/east")).await;
    assert!(text.contains("spiffe://weft/ns/shop/sa/reviews"), "{text}");
    check_page(&mut browser, &shots, "cluster").await;

    // A change with `weft apply` shows as a new version, with its diff,
    // in the resource's history and in the audit log.
    mesh.apply(&traffic_setting("5s"), 2).await;
    mesh.apply(&traffic_setting("7s"), 2).await;
    let resource = "tenants/retail/workspaces/shop/trafficsettings/patience";
    let (_, text) = browser.goto(&format!("{base}/ui/config/{resource}")).await;
    assert!(text.contains("timeout: 7s"), "{text}");
    let history = browser.texts("#history tbody tr").await;
    assert_eq!(history.len(), 2, "{history:?}");
    assert!(
        history[0].contains("update") && history[1].contains("create"),
        "{history:?}"
    );
    // The spec's change, beside the metadata the store bumps.
    let changed = async |browser: &mut Browser, tag: &str| -> Vec<String> {
        browser
            .texts(&format!("pre.diff {tag}"))
            .await
            .into_iter()
            .map(|l| l.trim_end().to_string())
            .filter(|l| !l.contains("resourceVersion") && !l.contains("updatedAt"))
            .collect()
    };
    assert_eq!(changed(&mut browser, "del").await, ["-   timeout: 5s"]);
    assert_eq!(changed(&mut browser, "ins").await, ["+   timeout: 7s"]);
    check_page(&mut browser, &shots, "resource").await;
    // Any two versions compare: the create's against the update's.
    let seqs = browser.attrs("#history tbody tr", "data-seq").await;
    browser
        .goto(&format!(
            "{base}/ui/config/{resource}?from={}&to={}",
            seqs[1], seqs[0]
        ))
        .await;
    assert_eq!(changed(&mut browser, "ins").await, ["+   timeout: 7s"]);
    browser.goto(&format!("{base}/ui/config")).await;
    check_page(&mut browser, &shots, "configuration").await;
    browser
        .goto(&format!("{base}/ui/audit?path={resource}&action=update"))
        .await;
    let entries = browser.texts("#audit tbody tr").await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert!(
        entries[0].contains("admin") && entries[0].contains(resource),
        "{entries:?}"
    );
    assert!(browser.texts("#chain").await[0].contains("chain intact"));
    check_page(&mut browser, &shots, "audit").await;
    browser.submit("#audit tbody tr a").await;
    assert_eq!(changed(&mut browser, "ins").await, ["+   timeout: 7s"]);
    check_page(&mut browser, &shots, "audit-entry").await;

    // A bad URL gets a page saying what is wrong with it.
    let (_, text) = browser.goto(&format!("{base}/ui/topology?since=2d")).await;
    assert!(
        text.contains("since: \"2d\" is not one of 1m, 5m, 15m, 1h"),
        "{text}"
    );
    let (_, text) = browser.goto(&format!("{base}/ui/audit?colour=red")).await;
    assert!(text.contains("unknown field `colour`"), "{text}");
    let _ = browser.problems().await; // the 400s themselves

    // Search finds what the admin may read.
    browser.goto(&format!("{base}/ui/search?q=reviews")).await;
    assert!(!browser.texts("#service-hits li").await.is_empty());

    // A proxy whose outbound port is taken refuses its listener: the
    // cluster page shows Envoy's message, the overview puts it first.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    let credential = mesh.credential("client");
    let _refusing = mesh.sidecar("client", "client-2", None, &credential, taken_port);
    until(
        "the cluster page shows client-2's NACK",
        Duration::from_secs(40),
        async || {
            browser.goto(&format!("{base}/ui/clusters/east")).await;
            browser
                .texts("#proxies tr[data-node=client-2] .nack")
                .await
                .first()
                .is_some_and(|m| m.contains("bind"))
        },
    )
    .await;
    let refusal = browser.texts("#proxies tr[data-node=client-2]").await;
    assert!(refusal[0].contains("NACK lds"), "{refusal:?}");
    browser.goto(&format!("{base}/ui/")).await;
    let attention = browser.texts("ul.attention").await;
    assert!(
        attention[0].contains("client-2 in east: refused its lds"),
        "{attention:?}"
    );
    check_page(&mut browser, &shots, "overview-attention").await;

    // A viewer of another tenant's workspace sees nothing of shop.
    let other = write(
        mesh.dir.path(),
        "other.yaml",
        "\
apiVersion: weft.dev/v1alpha1
kind: Tenant
metadata: {name: other}
spec: {}
---
apiVersion: weft.dev/v1alpha1
kind: Workspace
metadata: {name: elsewhere, tenant: other}
spec: {namespaceSelector: [east/elsewhere]}
---
apiVersion: weft.dev/v1alpha1
kind: User
metadata: {name: olga}
spec: {}
---
apiVersion: weft.dev/v1alpha1
kind: AccessBinding
metadata: {name: olga-views, tenant: other, workspace: elsewhere}
spec:
  role: viewer
  subjects: [{user: olga}]
",
    );
    let server = mesh.server();
    let applied = server.weft(&mesh.admin, &["apply", "-f", &other]);
    assert_eq!(applied.code, 0, "{applied:?}");
    let created = server.weft(&mesh.admin, &["token", "create", "--user", "olga"]);
    assert_eq!(created.code, 0, "{created:?}");
    let olga = created.stdout.trim().to_string();
    let mut viewer = Browser::start(&[], "/none", mesh.dir.path().join("viewer.log"));
    let (url, text) = sign_in(&mut viewer, &base, &olga).await;
    assert!(url.ends_with("/ui/"), "{url}");
    assert!(text.contains("No cluster you may read."), "{text}");
    for page in [
        "/ui/",
        "/ui/topology?since=1m",
        "/ui/services",
        "/ui/config",
        "/ui/audit",
    ] {
        let (_, text) = viewer.goto(&format!("{base}{page}")).await;
        for secret in ["shop", "retail", "reviews", "east"] {
            assert!(
                !text.contains(secret),
                "{page} shows {secret:?} to a viewer of another tenant: {text}"
            );
        }
    }
    assert!(viewer.attrs("g.edge", "data-source").await.is_empty());
    viewer.goto(&format!("{base}/ui/search?q=shop")).await;
    assert!(
        viewer
            .texts("#service-hits li, #resource-hits li")
            .await
            .is_empty()
    );
    let (_, text) = viewer
        .goto(&format!("{base}/ui/services/shop/reviews"))
        .await;
    assert!(
        text.contains("no service shop/reviews you may read"),
        "{text}"
    );
    let (_, text) = viewer
        .goto(&format!("{base}/ui/config/tenants/retail/workspaces/shop"))
        .await;
    assert!(text.contains("lacks permission"), "{text}");

    // Stopping the edge shows as disconnected within seconds.
    mesh.edge.process.as_mut().unwrap().stop();
    let stopped = std::time::Instant::now();
    until(
        "the overview shows east's edge disconnected",
        Duration::from_secs(40),
        async || {
            browser.goto(&format!("{base}/ui/")).await;
            browser
                .texts("#clusters tr[data-cluster=east] td.edge")
                .await
                .first()
                .is_some_and(|t| t.contains("disconnected"))
        },
    )
    .await;
    eprintln!(
        "the overview showed the edge disconnected {:?} after it stopped",
        stopped.elapsed()
    );
    let attention = browser.texts("ul.attention").await;
    assert!(
        attention[0].contains("cluster east: edge disconnected"),
        "{attention:?}"
    );

    // Sign-out ends the session: the old cookie no longer works.
    let session = browser
        .cookies()
        .await
        .into_iter()
        .find(|c| c["name"] == "weft_session")
        .and_then(|c| c["value"].as_str().map(str::to_string))
        .expect("a session cookie");
    let (url, text) = browser.submit("form[action='/ui/sign-out'] button").await;
    assert!(url.contains("/ui/sign-in"), "{url}");
    assert!(text.contains("You are signed out."), "{text}");
    let (url, _) = browser.goto(&format!("{base}/ui/")).await;
    assert!(url.contains("/ui/sign-in"), "{url}");
    let replayed = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(format!("{base}/ui/"))
        .header("cookie", format!("weft_session={session}"))
        .send()
        .await
        .unwrap();
    assert_eq!(replayed.status(), 303);
    assert!(
        replayed.headers()["location"]
            .to_str()
            .unwrap()
            .starts_with("/ui/sign-in"),
    );
}

//! End to end through the REST API of a real `weft server`: bad input,
//! conflicts, the IAM matrix, audit visibility and tampering, tokens.

mod support;

use serde_json::{Value, json};
use sqlx::{AnyConnection, Connection, Executor};
use support::{Server, api, user_with_token};

fn tenant(name: &str) -> Value {
    json!({"apiVersion": "weft.dev/v1alpha1", "kind": "Tenant", "metadata": {"name": name}})
}

fn workspace(tenant: &str, name: &str) -> Value {
    json!({"apiVersion": "weft.dev/v1alpha1", "kind": "Workspace", "metadata": {"name": name, "tenant": tenant},
           "spec": {"namespaceSelector": ["*/app"]}})
}

fn group(kind: &str, tenant: &str, workspace: &str, name: &str) -> Value {
    json!({"apiVersion": "weft.dev/v1alpha1", "kind": kind, "metadata": {"name": name, "tenant": tenant, "workspace": workspace}})
}

fn binding(name: &str, parents: Value, role: &str, subject: Value) -> Value {
    let mut metadata = parents;
    metadata["name"] = json!(name);
    json!({"apiVersion": "weft.dev/v1alpha1", "kind": "AccessBinding", "metadata": metadata,
           "spec": {"role": role, "subjects": [subject]}})
}

async fn apply(server: &Server, token: &str, resources: Vec<Value>) -> (u16, Value) {
    api(
        server,
        "POST",
        "/v1/apply",
        Some(token),
        Some(&json!({"resources": resources})),
    )
    .await
}

#[tokio::test]
async fn bad_input_gets_clear_errors_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), None);
    let admin = server.admin_token();
    let client = reqwest::Client::new();
    let post = |path: &str, body: Vec<u8>| {
        client
            .post(format!("{}{path}", server.url))
            .bearer_auth(&admin)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };

    // The server refuses on the announced length without reading the body
    // (a client still sending may see the connection close), so announce
    // more than the limit and send little.
    let address = server.url.trim_start_matches("http://");
    let head = format!(
        "POST /v1/apply HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {admin}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        5 * 1024 * 1024
    );
    let answer = raw(&server, &head, b"{\"resources\": [").await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("\"code\":\"too_large\""), "{answer}");

    let response = post("/v1/apply", b"{\"resources\": [\"\xff\xfe\"]}".to_vec())
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert!(response.text().await.unwrap().contains("not valid UTF-8"));

    let response = post("/v1/apply", b"{\"resources\": [".to_vec())
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert!(response.text().await.unwrap().contains("line 1"));

    let (status, body) = api(
        &server,
        "POST",
        "/v1/apply",
        Some(&admin),
        Some(&json!({"resources": [], "extra": 1})),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("unknown field `extra`"),
        "{body}"
    );

    let (status, body) = apply(
        &server,
        &admin,
        vec![
            tenant("good"),
            json!({"apiVersion": "v2", "kind": "Tenant", "metadata": {"name": "x"}}),
            json!({"apiVersion": "weft.dev/v1alpha1", "kind": "Gizmo", "metadata": {"name": "x"}}),
            json!("just a string"),
        ],
    )
    .await;
    assert_eq!(status, 422, "{body}");
    let fields: Vec<(u64, &str)> = body["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["document"].as_u64().unwrap(),
                d["field"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        fields,
        vec![(1, "apiVersion"), (2, "kind"), (3, "")],
        "{body}"
    );

    // Names with path characters, in the URL and in the document.
    // A dot segment reaches the server only over a raw connection: URL
    // libraries resolve it on the client.
    let raw = raw_put(&server, "/v1/tenants/..", &admin, &tenant("a")).await;
    assert!(
        raw.starts_with("HTTP/1.1 400") && raw.contains("not a DNS label"),
        "{raw}"
    );
    for url in ["/v1/tenants/a%2Fb", "/v1/tenants/A"] {
        let (status, body) = api(&server, "PUT", url, Some(&admin), Some(&tenant("a"))).await;
        assert_eq!(status, 400, "{url}: {body}");
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("not a DNS label"),
            "{body}"
        );
    }
    let (status, body) = api(
        &server,
        "PUT",
        "/v1/tenants/a",
        Some(&admin),
        Some(&tenant("b")),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("names tenants/b, but the URL names tenants/a"),
        "{body}"
    );
    let (status, _) = api(&server, "GET", "/v1/gizmos", Some(&admin), None).await;
    assert_eq!(status, 404);

    let (status, body) = api(&server, "GET", "/v1/tenants", Some(&admin), None).await;
    assert_eq!(
        (status, body["items"].as_array().unwrap().len()),
        (200, 0),
        "nothing may be stored: {body}"
    );
}

/// Sends `head` and `body` as they are on a new connection; returns the
/// answer (head and body, read by its Content-Length: the server may keep
/// the connection open for a body it was promised).
async fn raw(server: &Server, head: &str, body: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(server.url.trim_start_matches("http://"))
        .await
        .unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let read = async {
        let mut answer = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let text = String::from_utf8_lossy(&answer).into_owned();
            if let Some(end) = text.find("\r\n\r\n") {
                let length = text[..end]
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().unwrap())
                    })
                    .unwrap_or(0);
                if answer.len() >= end + 4 + length {
                    return text;
                }
            }
            let n = stream.read(&mut chunk).await.unwrap();
            if n == 0 {
                return text;
            }
            answer.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), read)
        .await
        .expect("an answer within 10 s")
}

/// A PUT written by hand, so the path reaches the server unnormalized.
async fn raw_put(server: &Server, path: &str, token: &str, body: &Value) -> String {
    let address = server.url.trim_start_matches("http://");
    let body = body.to_string();
    let head = format!(
        "PUT {path} HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    raw(server, &head, body.as_bytes()).await
}

/// Two writers read the same version and write at once: exactly one wins,
/// the other is told its copy is stale.
#[tokio::test]
async fn concurrent_updates_of_one_resource_conflict() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), None);
    let admin = server.admin_token();
    let (_, created) = api(
        &server,
        "POST",
        "/v1/tenants",
        Some(&admin),
        Some(&tenant("retail")),
    )
    .await;
    for round in 0..5 {
        let (_, current) = api(&server, "GET", "/v1/tenants/retail", Some(&admin), None).await;
        let write = |writer: usize| {
            let mut doc = current.clone();
            doc["spec"] = json!({"description": format!("round {round}, writer {writer}")});
            let (server, admin) = (&server, &admin);
            async move { api(server, "PUT", "/v1/tenants/retail", Some(admin), Some(&doc)).await }
        };
        let (a, b, c, d) = tokio::join!(write(0), write(1), write(2), write(3));
        let results = [a, b, c, d];
        let won = results.iter().filter(|(status, _)| *status == 200).count();
        let stale = results
            .iter()
            .filter(|(status, body)| {
                *status == 409
                    && body["message"]
                        .as_str()
                        .unwrap()
                        .contains("based on version")
            })
            .count();
        assert_eq!((won, stale), (1, 3), "round {round}: {results:?}");
    }
    assert!(created["metadata"]["resourceVersion"].is_string());
}

#[tokio::test]
async fn stale_writes_get_a_conflict_and_deletes_can_be_conditional() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), None);
    let admin = server.admin_token();
    let (status, created) = api(
        &server,
        "POST",
        "/v1/tenants",
        Some(&admin),
        Some(&tenant("retail")),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let seen = created["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, again) = api(
        &server,
        "POST",
        "/v1/tenants",
        Some(&admin),
        Some(&tenant("retail")),
    )
    .await;
    assert_eq!(status, 409, "create of an existing resource: {again}");

    let mut update = created.clone();
    update["spec"] = json!({"description": "first"});
    let (status, body) = api(
        &server,
        "PUT",
        "/v1/tenants/retail",
        Some(&admin),
        Some(&update),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    update["spec"] = json!({"description": "second, from a stale copy"});
    let (status, body) = api(
        &server,
        "PUT",
        "/v1/tenants/retail",
        Some(&admin),
        Some(&update),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["code"], "conflict");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains(&format!("based on version {seen}")),
        "{body}"
    );
    let (_, now) = api(&server, "GET", "/v1/tenants/retail", Some(&admin), None).await;
    assert_eq!(now["spec"]["description"], "first");

    let (status, _) = api(
        &server,
        "DELETE",
        &format!("/v1/tenants/retail?resourceVersion={seen}"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(status, 409);
    let current = now["metadata"]["resourceVersion"].as_str().unwrap();
    let (status, body) = api(
        &server,
        "DELETE",
        &format!("/v1/tenants/retail?resourceVersion={current}"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["outcome"], "deleted");
}

/// Role × verb × scope, through real tokens and real requests.
#[tokio::test]
async fn iam_matrix() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), None);
    let admin = server.admin_token();
    let mut setup = vec![];
    for t in ["a", "b"] {
        setup.push(tenant(t));
        setup.push(workspace(t, "w"));
        setup.push(group("TrafficGroup", t, "w", "tg"));
        setup.push(group("SecurityGroup", t, "w", "sg"));
    }
    let (status, body) = apply(&server, &admin, setup).await;
    assert_eq!(status, 200, "{body}");
    let users = [
        "viewer",
        "editor",
        "creator",
        "traffic",
        "security",
        "tenant-admin",
        "member",
        "custom",
        "nobody",
    ];
    let mut tokens = std::collections::HashMap::new();
    for u in users {
        tokens.insert(u, user_with_token(&server, &admin, u).await);
    }
    let at_a = json!({"tenant": "a"});
    let at_aw = json!({"tenant": "a", "workspace": "w"});
    let (status, body) = apply(&server, &admin, vec![
        json!({"apiVersion": "weft.dev/v1alpha1", "kind": "Team", "metadata": {"name": "devs"}, "spec": {"members": ["member"]}}),
        json!({"apiVersion": "weft.dev/v1alpha1", "kind": "Role", "metadata": {"name": "group-reader"},
               "spec": {"rules": [{"verbs": ["read"], "kinds": ["TrafficGroup", "SecurityGroup"]}]}}),
        binding("v", json!({}), "viewer", json!({"user": "viewer"})),
        binding("e", at_a.clone(), "editor", json!({"user": "editor"})),
        binding("c", at_a.clone(), "creator", json!({"user": "creator"})),
        binding("t", at_aw.clone(), "traffic-editor", json!({"user": "traffic"})),
        binding("s", at_aw.clone(), "security-editor", json!({"user": "security"})),
        binding("ta", at_a.clone(), "admin", json!({"user": "tenant-admin"})),
        binding("team", at_a.clone(), "editor", json!({"team": "devs"})),
        binding("cr", at_aw.clone(), "group-reader", json!({"user": "custom"})),
    ]).await;
    assert_eq!(status, 200, "{body}");

    let a = "/v1/tenants/a";
    let aw = "/v1/tenants/a/workspaces/w";
    let atg = "/v1/tenants/a/workspaces/w/trafficgroups/tg";
    let asg = "/v1/tenants/a/workspaces/w/securitygroups/sg";
    let b = "/v1/tenants/b";
    let btg = "/v1/tenants/b/workspaces/w/trafficgroups/tg";
    // (user, method, url, expected status)
    let cases: Vec<(&str, &str, &str, u16)> = vec![
        ("viewer", "GET", a, 200),
        ("viewer", "GET", btg, 200),
        ("viewer", "PUT", a, 403),
        ("viewer", "DELETE", atg, 403),
        ("editor", "GET", aw, 200),
        ("editor", "PUT", aw, 200),
        ("editor", "PUT", atg, 200),
        ("editor", "PUT", asg, 200),
        ("editor", "GET", b, 403),
        ("editor", "PUT", btg, 403),
        ("editor", "DELETE", btg, 403),
        ("member", "PUT", atg, 200),
        ("member", "GET", b, 403),
        ("creator", "GET", aw, 200),
        ("creator", "PUT", aw, 403),
        ("creator", "DELETE", atg, 403),
        ("traffic", "PUT", atg, 200),
        ("traffic", "PUT", asg, 403),
        ("traffic", "PUT", aw, 403),
        ("traffic", "GET", asg, 200),
        ("traffic", "PUT", btg, 403),
        ("security", "PUT", asg, 200),
        ("security", "PUT", atg, 403),
        ("security", "DELETE", atg, 403),
        ("custom", "GET", atg, 200),
        ("custom", "GET", aw, 403),
        ("custom", "PUT", atg, 403),
        ("nobody", "GET", a, 403),
        ("nobody", "PUT", aw, 403),
        ("tenant-admin", "PUT", aw, 200),
        ("tenant-admin", "GET", b, 403),
    ];
    let mut failures = Vec::new();
    for (user, method, url, expected) in &cases {
        let body = if *method == "PUT" {
            let (_, current) = api(&server, "GET", url, Some(&admin), None).await;
            let mut doc = current;
            doc["metadata"]["labels"] = json!({"touched-by": user});
            Some(doc)
        } else {
            None
        };
        let (status, answer) = api(&server, method, url, Some(&tokens[user]), body.as_ref()).await;
        if status != *expected {
            failures.push(format!(
                "{user} {method} {url}: got {status}, expected {expected}: {answer}"
            ));
        }
        if status == 403
            && !answer["message"]
                .as_str()
                .unwrap_or("")
                .contains("lacks permission")
        {
            failures.push(format!(
                "{user} {method} {url}: 403 without the missing permission: {answer}"
            ));
        }
    }
    assert!(failures.is_empty(), "IAM matrix:\n{}", failures.join("\n"));

    // The refusal names the permission; a creator may add but not change.
    let (status, body) = api(&server, "DELETE", atg, Some(&tokens["security"]), None).await;
    assert_eq!(status, 403);
    assert_eq!(
        body["message"],
        "user \"security\" lacks permission \"delete\" on TrafficGroup at tenants/a/workspaces/w/trafficgroups/tg"
    );
    let (status, body) = apply(&server, &tokens["creator"], vec![workspace("a", "new")]).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = apply(&server, &tokens["creator"], vec![workspace("a", "new")]).await;
    assert_eq!(
        status, 403,
        "applying over an existing resource needs update: {body}"
    );
    assert!(
        body["message"].as_str().unwrap().contains("\"update\""),
        "{body}"
    );

    // A custom role that may update but not create is told so, not "not found".
    let (status, body) = apply(&server, &admin, vec![
        json!({"apiVersion": "weft.dev/v1alpha1", "kind": "Role", "metadata": {"name": "updater"},
               "spec": {"rules": [{"verbs": ["read", "update"], "kinds": ["Workspace"]}]}}),
        binding("u", at_a.clone(), "updater", json!({"user": "custom"})),
    ]).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = apply(&server, &tokens["custom"], vec![workspace("a", "w")]).await;
    assert_eq!(status, 200, "an update is allowed: {body}");
    let (status, body) = apply(
        &server,
        &tokens["custom"],
        vec![workspace("a", "brand-new")],
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("\"create\""),
        "{body}"
    );

    // IAM: a tenant admin manages bindings in their tenant only; editors cannot.
    let (status, body) = apply(
        &server,
        &tokens["tenant-admin"],
        vec![binding(
            "more",
            at_a.clone(),
            "viewer",
            json!({"user": "nobody"}),
        )],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = apply(
        &server,
        &tokens["tenant-admin"],
        vec![binding(
            "more",
            json!({"tenant": "b"}),
            "viewer",
            json!({"user": "nobody"}),
        )],
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = apply(
        &server,
        &tokens["editor"],
        vec![binding(
            "sneaky",
            at_a.clone(),
            "admin",
            json!({"user": "editor"}),
        )],
    )
    .await;
    assert_eq!(status, 403, "an editor cannot grant itself admin");
    let (status, _) = apply(
        &server,
        &tokens["tenant-admin"],
        vec![binding(
            "up",
            json!({}),
            "admin",
            json!({"user": "tenant-admin"}),
        )],
    )
    .await;
    assert_eq!(
        status, 403,
        "a tenant admin cannot grant itself the top level"
    );

    // Lists hold only what the caller may read.
    let names = |body: &Value| -> Vec<String> {
        body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
            .collect()
    };
    let (_, body) = api(&server, "GET", "/v1/tenants", Some(&tokens["editor"]), None).await;
    assert_eq!(names(&body), vec!["a"]);
    let (_, body) = api(
        &server,
        "GET",
        "/v1/trafficgroups",
        Some(&tokens["editor"]),
        None,
    )
    .await;
    assert_eq!(body["items"].as_array().unwrap().len(), 1, "{body}");
    let (_, body) = api(&server, "GET", "/v1/tenants", Some(&tokens["nobody"]), None).await;
    assert_eq!(
        names(&body),
        vec!["a"],
        "nobody can now read tenant a through the new binding"
    );
    let (_, body) = api(&server, "GET", "/v1/tenants", Some(&tokens["viewer"]), None).await;
    assert_eq!(names(&body), vec!["a", "b"]);

    // Every refusal is in the audit log.
    let (_, entries) = api(
        &server,
        "GET",
        "/v1/audit?user=editor&limit=1000",
        Some(&admin),
        None,
    )
    .await;
    let denied = entries
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["outcome"] == "denied")
        .count();
    assert!(denied >= 4, "{entries}");
}

#[tokio::test]
async fn audit_shows_only_what_the_caller_may_read_and_detects_tampering() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, None);
    let admin = server.admin_token();
    apply(
        &server,
        &admin,
        vec![tenant("a"), tenant("b"), workspace("a", "w")],
    )
    .await;
    let editor = user_with_token(&server, &admin, "ed").await;
    let (status, _) = apply(
        &server,
        &admin,
        vec![binding(
            "e",
            json!({"tenant": "a"}),
            "editor",
            json!({"user": "ed"}),
        )],
    )
    .await;
    assert_eq!(status, 200);
    let mut update = workspace("a", "w");
    update["spec"]["namespaceSelector"] = json!(["*/app", "east/more"]);
    apply(&server, &editor, vec![update]).await;
    api(&server, "DELETE", "/v1/tenants/b", Some(&editor), None).await;

    let ed = server.weft(&editor, &["audit", "-o", "json"]);
    assert_eq!(ed.code, 0, "{ed:?}");
    let entries: Vec<Value> = serde_json::from_str(&ed.stdout).unwrap();
    assert!(!entries.is_empty());
    assert!(
        entries
            .iter()
            .all(|e| e["path"].as_str().unwrap().starts_with("tenants/a")),
        "editor of a sees only a: {entries:?}"
    );
    let update = entries
        .iter()
        .find(|e| e["action"] == "update" && e["actor"] == "ed")
        .expect("the update is logged");
    assert_eq!(
        update["before"]["spec"]["namespaceSelector"],
        json!(["*/app"])
    );
    assert_eq!(
        update["after"]["spec"]["namespaceSelector"],
        json!(["*/app", "east/more"])
    );

    let all = server.weft(&admin, &["audit", "--user", "ed", "--diff"]);
    assert!(all.stdout.contains("+  - east/more"), "{all:?}");
    assert!(
        all.stdout.contains("denied") && all.stdout.contains("tenants/b"),
        "the refused delete is there: {all:?}"
    );
    let scoped = server.weft(
        &admin,
        &[
            "audit",
            "--path",
            "tenants/a/workspaces",
            "-o",
            "json",
            "--since",
            "1h",
        ],
    );
    let scoped: Vec<Value> = serde_json::from_str(&scoped.stdout).unwrap();
    assert!(
        scoped.iter().all(|e| e["path"]
            .as_str()
            .unwrap()
            .starts_with("tenants/a/workspaces")),
        "{scoped:?}"
    );
    let future = server.weft(
        &admin,
        &["audit", "--since", "2999-01-01T00:00:00Z", "-o", "json"],
    );
    assert_eq!(future.stdout.trim(), "[]");

    let refused = server.weft(&editor, &["audit", "verify"]);
    assert_eq!(
        refused.code, 5,
        "verifying the whole chain needs top-level read: {refused:?}"
    );
    let ok = server.weft(&admin, &["audit", "verify"]);
    assert_eq!(ok.code, 0, "{ok:?}");

    sqlx::any::install_default_drivers();
    let mut db = AnyConnection::connect(&format!("sqlite://{}/weft.db", data.display()))
        .await
        .unwrap();
    db.execute("UPDATE audit SET actor = 'someone-else' WHERE actor = 'ed' AND action = 'update'")
        .await
        .unwrap();
    let broken = server.weft(&admin, &["audit", "verify"]);
    assert_eq!(broken.code, 1, "{broken:?}");
    assert!(
        broken.stdout.contains("BROKEN") && broken.stdout.contains("was altered"),
        "{broken:?}"
    );
}

#[tokio::test]
async fn tokens_are_hashed_revocable_expiring_and_owned() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, None);
    let admin = server.admin_token();
    let ann = user_with_token(&server, &admin, "ann").await;
    let bob = user_with_token(&server, &admin, "bob").await;

    let created = server.weft(&ann, &["token", "create", "--description", "laptop"]);
    assert_eq!(created.code, 0, "{created:?}");
    let secret = created.stdout.trim().to_string();
    assert!(secret.starts_with("weft_"), "{created:?}");
    assert!(created.stderr.contains("only time the secret is shown"));

    let listed = server.weft(&ann, &["token", "list", "-o", "json"]);
    assert!(!listed.stdout.contains(&secret), "lists never show secrets");
    let tokens: Vec<Value> = serde_json::from_str(&listed.stdout).unwrap();
    assert_eq!(tokens.len(), 2);
    let laptop = tokens
        .iter()
        .find(|t| t["description"] == "laptop")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();

    // Secrets are not in the store, only their hashes.
    let db = std::fs::read(data.join("weft.db")).unwrap();
    let wal = std::fs::read(data.join("weft.db-wal")).unwrap_or_default();
    for bytes in [&db, &wal] {
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "a secret is stored in clear"
        );
    }

    // Others may not touch ann's tokens; admins may.
    assert_eq!(server.weft(&bob, &["token", "revoke", &laptop]).code, 5);
    assert_eq!(
        server.weft(&bob, &["token", "list", "--user", "ann"]).code,
        5
    );
    assert_eq!(
        server
            .weft(&bob, &["token", "create", "--user", "ann"])
            .code,
        5
    );
    assert_eq!(
        server
            .weft(&admin, &["token", "list", "--user", "ann"])
            .code,
        0
    );

    assert_eq!(server.weft(&secret, &["whoami"]).code, 0);
    let revoked = server.weft(&ann, &["token", "revoke", &laptop]);
    assert_eq!(revoked.code, 0, "{revoked:?}");
    let after = server.weft(&secret, &["whoami"]);
    assert_eq!(after.code, 5);
    assert!(after.stderr.contains("was revoked"), "{after:?}");
    assert_eq!(
        server.weft(&ann, &["token", "revoke", &laptop]).code,
        4,
        "revoking twice is a conflict"
    );

    let short = server.weft(&ann, &["token", "create", "--ttl", "1s"]);
    let short = short.stdout.trim().to_string();
    assert_eq!(server.weft(&short, &["whoami"]).code, 0);
    std::thread::sleep(std::time::Duration::from_millis(1200));
    let expired = server.weft(&short, &["whoami"]);
    assert_eq!(expired.code, 5);
    assert!(expired.stderr.contains("has expired"), "{expired:?}");

    // Deleting a user cuts off its tokens.
    let (status, body) = api(&server, "DELETE", "/v1/users/bob", Some(&admin), None).await;
    assert_eq!(status, 200, "{body}");
    let gone = server.weft(&bob, &["whoami"]);
    assert!(
        gone.code == 5 && gone.stderr.contains("no longer exists"),
        "{gone:?}"
    );

    // Token events are audited.
    let log = server.weft(&admin, &["audit", "--path", "users/ann", "-o", "json"]);
    let actions: Vec<String> = serde_json::from_str::<Vec<Value>>(&log.stdout)
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_string())
        .collect();
    for action in ["token.create", "token.revoke"] {
        assert!(actions.iter().any(|a| a == action), "{actions:?}");
    }
}

#[tokio::test]
async fn referenced_users_roles_and_teams_cannot_be_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), None);
    let admin = server.admin_token();
    let (status, body) = apply(&server, &admin, vec![
        json!({"apiVersion": "weft.dev/v1alpha1", "kind": "User", "metadata": {"name": "ann"}}),
        json!({"apiVersion": "weft.dev/v1alpha1", "kind": "Team", "metadata": {"name": "t"}, "spec": {"members": ["ann"]}}),
        json!({"apiVersion": "weft.dev/v1alpha1", "kind": "Role", "metadata": {"name": "r"}, "spec": {"rules": [{"verbs": ["read"], "kinds": ["*"]}]}}),
        binding("b", json!({}), "r", json!({"team": "t"})),
    ]).await;
    assert_eq!(status, 200, "{body}");
    for (path, by) in [
        ("/v1/users/ann", "teams/t (spec.members[0])"),
        ("/v1/teams/t", "accessbindings/b (spec.subjects[0].team)"),
        ("/v1/roles/r", "accessbindings/b (spec.role)"),
    ] {
        let (status, body) = api(&server, "DELETE", path, Some(&admin), None).await;
        assert_eq!(status, 409, "{path}: {body}");
        assert!(
            body["message"].as_str().unwrap().contains(by),
            "{path}: {body}"
        );
    }
    let (status, body) = apply(
        &server,
        &admin,
        vec![binding(
            "c",
            json!({}),
            "no-such-role",
            json!({"user": "ghost"}),
        )],
    )
    .await;
    assert_eq!(status, 422, "{body}");
    let fields: Vec<&str> = body["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, vec!["spec.role", "spec.subjects[0].user"], "{body}");
}

#[tokio::test]
async fn openapi_health_and_metrics_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), None);
    let (status, doc) = api(&server, "GET", "/v1/openapi.json", None, None).await;
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["paths"]["/v1/tenants/{tenant}/workspaces/{name}"]["put"].is_object());
    assert!(doc["components"]["schemas"]["Workspace"]["properties"]["spec"].is_object());
    let (status, _) = api(&server, "GET", "/healthz", None, None).await;
    assert_eq!(status, 200);
    let (status, body) = api(&server, "GET", "/readyz", None, None).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = api(&server, "GET", "/v1/tenants", None, None).await;
    assert_eq!(status, 401, "{body}");
    let (_, metrics) = api(&server, "GET", "/metrics", None, None).await;
    let metrics = metrics.as_str().unwrap();
    assert!(
        metrics.contains(
            "weft_server_http_requests_total{method=\"GET\",route=\"/v1/{*rest}\",status=\"401\"} 1"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("weft_server_auth_failures_total{reason=\"missing\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("weft_server_http_request_duration_seconds_bucket"),
        "{metrics}"
    );
}

#[tokio::test]
async fn watch_streams_the_changes_the_caller_may_read() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), None);
    let admin = server.admin_token();
    let (status, _) = apply(&server, &admin, vec![tenant("a"), tenant("b")]).await;
    assert_eq!(status, 200);
    let editor = user_with_token(&server, &admin, "ed").await;
    apply(
        &server,
        &admin,
        vec![binding(
            "e",
            json!({"tenant": "a"}),
            "editor",
            json!({"user": "ed"}),
        )],
    )
    .await;

    let (_, list) = api(&server, "GET", "/v1/tenants", Some(&editor), None).await;
    let since = list["revision"]
        .as_i64()
        .expect("lists carry their revision");
    let mut response = reqwest::Client::new()
        .get(format!("{}/v1/watch?since={since}", server.url))
        .bearer_auth(&editor)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");

    apply(
        &server,
        &admin,
        vec![workspace("b", "hidden"), workspace("a", "w")],
    )
    .await;

    let mut lines: Vec<Value> = Vec::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut buffer = String::new();
    let mut deleted = false;
    while lines.iter().filter(|l| l["type"] != "heartbeat").count() < 2 {
        // Delete once the put is seen: a put's resource is read when it is
        // sent, and would be gone if the delete came first.
        if !deleted && lines.iter().any(|l| l["type"] == "put") {
            api(
                &server,
                "DELETE",
                "/v1/tenants/a/workspaces/w",
                Some(&admin),
                None,
            )
            .await;
            deleted = true;
        }
        let chunk = tokio::time::timeout_at(deadline, response.chunk())
            .await
            .expect("events within 10 s")
            .unwrap()
            .unwrap();
        buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(end) = buffer.find('\n') {
            lines.push(serde_json::from_str(&buffer[..end]).unwrap());
            buffer.drain(..=end);
        }
    }
    let seen: Vec<(&str, &str)> = lines
        .iter()
        .map(|l| {
            (
                l["type"].as_str().unwrap(),
                l["path"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            ("put", "tenants/a/workspaces/w"),
            ("delete", "tenants/a/workspaces/w")
        ],
        "{lines:?}"
    );
    assert_eq!(
        lines[0]["resource"]["kind"], "Workspace",
        "puts carry the resource"
    );

    let (status, body) = api(
        &server,
        "GET",
        "/v1/watch?since=999999",
        Some(&editor),
        None,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = api(&server, "GET", "/v1/watch", None, None).await;
    assert_eq!(status, 401);

    // The open watch does not hold the server up when it stops; the
    // watcher is told why its stream ends.
    let stopping = std::time::Instant::now();
    server.stop();
    assert!(
        stopping.elapsed() < std::time::Duration::from_secs(10),
        "the server took {:?} to stop with a watch open",
        stopping.elapsed()
    );
    let mut rest = buffer;
    while let Ok(Some(chunk)) = response.chunk().await {
        rest.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    let last: Value = serde_json::from_str(rest.lines().last().unwrap()).unwrap();
    assert_eq!(last["type"], "error", "{rest}");
    assert!(
        last["message"].as_str().unwrap().contains("stopping"),
        "{last}"
    );
}

#[tokio::test]
async fn nobody_can_remove_the_last_admin() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), None);
    let admin = server.admin_token();
    let (status, body) = api(
        &server,
        "DELETE",
        "/v1/accessbindings/bootstrap-admin",
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("no user with the admin role"),
        "{body}"
    );

    // Hand admin to someone else first; then the bootstrap binding can go,
    // and with it the admin user's rights.
    let alice = user_with_token(&server, &admin, "alice").await;
    let ops = |members: Value| json!({"apiVersion": "weft.dev/v1alpha1", "kind": "Team", "metadata": {"name": "ops"}, "spec": {"members": members}});
    let (status, body) = apply(
        &server,
        &admin,
        vec![
            ops(json!(["alice"])),
            binding("ops-admin", json!({}), "admin", json!({"team": "ops"})),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = api(
        &server,
        "DELETE",
        "/v1/accessbindings/bootstrap-admin",
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");

    let (status, _) = api(&server, "GET", "/v1/teams/ops", Some(&admin), None).await;
    assert_eq!(status, 403, "the admin user is no admin any more");
    // Now the ops team is the only way to admin: it cannot be emptied.
    let (status, body) = apply(&server, &alice, vec![ops(json!([]))]).await;
    assert_eq!(status, 409, "{body}");
    let (status, _) = api(
        &server,
        "POST",
        "/v1/apply",
        Some(&alice),
        Some(&json!({"resources": [ops(json!([]))], "dryRun": true})),
    )
    .await;
    assert_eq!(status, 409, "a dry run says so too");
    let (_, team) = api(&server, "GET", "/v1/teams/ops", Some(&alice), None).await;
    assert_eq!(team["spec"]["members"], json!(["alice"]));
}

/// A Gateway with many problems is refused whole, each problem with its
/// field path, and nothing of the request is stored.
#[tokio::test]
async fn a_bad_gateway_is_refused_with_every_problem_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), None);
    let admin = server.admin_token();
    let mut gateway_group = group("GatewayGroup", "retail", "shop", "front");
    gateway_group["spec"] = json!({"namespaceSelector": ["*/app"]});
    let gateway = json!({
        "apiVersion": "weft.dev/v1alpha1", "kind": "Gateway",
        "metadata": {"name": "ingress", "tenant": "retail", "workspace": "shop", "gatewayGroup": "front"},
        "spec": {
            "workloadSelector": {"namespace": "app"},
            "http": [
                {"name": "web", "port": 443, "hostname": "shop.example.com",
                 "tls": {"certificate": "not a name!"},
                 "routes": [{"to": [{"service": "billing/invoices"}]}]},
                {"name": "web2", "port": 443, "hostname": "shop.example.com",
                 "tls": {"certificate": "shop.example.com"},
                 "routes": [{"to": [{"service": "app/reviews"}], "redirect": {"scheme": "https"}}]},
                {"name": "plain", "port": 443, "hostname": "other.example.com",
                 "routes": [{"directResponse": {"status": 200}}]}
            ],
            "egress": [{"host": "api.partner.example", "from": [{}]}]
        }
    });
    let refused_fields = async |resources: Vec<Value>| -> Vec<String> {
        let (status, body) = apply(&server, &admin, resources).await;
        assert_eq!(status, 422, "{body}");
        let mut fields: Vec<String> = body["details"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["field"].as_str().unwrap_or("").to_string())
            .collect();
        fields.sort();
        fields
    };
    let base = vec![tenant("retail"), workspace("retail", "shop"), gateway_group];
    let fields = refused_fields([base.clone(), vec![gateway.clone()]].concat()).await;
    assert_eq!(
        fields,
        [
            "spec.egress[0].from[0]",
            "spec.http[0].tls.certificate",
            "spec.http[1].hostname",
            "spec.http[1].routes[0]",
            "spec.http[2].port",
        ]
    );
    // Once well formed, a route to a namespace no workspace selects.
    let mut gateway = gateway;
    gateway["spec"]["http"] = json!([{"name": "web", "port": 443, "hostname": "shop.example.com",
        "tls": {"certificate": "shop.example.com"},
        "routes": [{"to": [{"service": "app/reviews", "weight": 50}, {"service": "billing/invoices", "weight": 50}]}]}]);
    gateway["spec"]["egress"] = json!([]);
    let fields = refused_fields([base, vec![gateway]].concat()).await;
    assert_eq!(fields, ["spec.http[0].routes[0].to[1].service"]);
    for path in ["tenants/retail", "tenants/retail/workspaces/shop"] {
        let (status, _) = api(&server, "GET", &format!("/v1/{path}"), Some(&admin), None).await;
        assert_eq!(status, 404, "{path} was not stored");
    }
}

//! End to end through the real `weft` binary: server on SQLite and on
//! PostgreSQL, the README walkthrough, exit codes, login, restarts.

mod support;

use std::path::Path;

use support::{Server, mode, run, write};

const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/quickstart");

/// The walkthrough of the README, against one server.
fn walkthrough(server: &Server, scratch: &Path) {
    let admin = server.admin_token();
    let applied = server.weft(&admin, &["apply", "-f", EXAMPLES]);
    assert_eq!(applied.code, 0, "{applied:?}");
    for line in [
        "tenants/retail created",
        "clusters/us-east created",
        "tenants/retail/workspaces/checkout created",
        "tenants/retail/workspaces/checkout/trafficgroups/checkout-traffic created",
        "tenants/retail/workspaces/checkout/accessbindings/payments-traffic created",
    ] {
        assert!(
            applied.stdout.contains(line),
            "missing {line:?} in {applied:?}"
        );
    }
    let again = server.weft(&admin, &["apply", "-f", EXAMPLES]);
    assert_eq!(again.stdout.matches("unchanged").count(), 11, "{again:?}");

    let table = server.weft(&admin, &["get", "workspaces"]);
    assert_eq!(table.code, 0, "{table:?}");
    assert!(table.stdout.starts_with("NAME"), "{table:?}");
    assert!(
        table
            .stdout
            .contains("checkout   tenants/retail   */checkout,us-east/checkout-canary"),
        "{table:?}"
    );
    let clusters = server.weft(&admin, &["get", "clusters"]);
    assert!(
        clusters.stdout.contains("us-east-1") && clusters.stdout.contains("eu-west-1b"),
        "{clusters:?}"
    );

    let yaml = server.weft(
        &admin,
        &["get", "ws", "checkout", "--tenant", "retail", "-o", "yaml"],
    );
    assert!(
        yaml.stdout.contains("kind: Workspace") && yaml.stdout.contains("resourceVersion:"),
        "{yaml:?}"
    );
    let json = server.weft(
        &admin,
        &[
            "get",
            "tg",
            "--tenant",
            "retail",
            "--workspace",
            "checkout",
            "-o",
            "json",
        ],
    );
    let groups: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(groups[0]["metadata"]["name"], "checkout-traffic");

    // What get prints can be applied back as it is.
    let round_trip = write(scratch, "round-trip.yaml", &yaml.stdout);
    let back = server.weft(&admin, &["apply", "-f", &round_trip]);
    assert!(back.stdout.contains("unchanged"), "{back:?}");

    // diff: 0 when in sync, 1 with a readable diff when not.
    assert_eq!(server.weft(&admin, &["diff", "-f", EXAMPLES]).code, 0);
    let changed = std::fs::read_to_string(format!("{EXAMPLES}/30-workspace.yaml"))
        .unwrap()
        .replace("us-east/checkout-canary", "eu-west/checkout-canary");
    let changed = write(scratch, "changed.yaml", &changed);
    let diff = server.weft(&admin, &["diff", "-f", &changed]);
    assert_eq!(diff.code, 1, "{diff:?}");
    assert!(
        diff.stdout
            .contains("-  - us-east/checkout-canary\n+  - eu-west/checkout-canary"),
        "{diff:?}"
    );
    assert!(
        diff.stdout
            .contains("--- tenants/retail/workspaces/checkout (live)"),
        "{diff:?}"
    );

    // A dry run checks against the store and stores nothing.
    let extra = write(
        scratch,
        "extra.yaml",
        "apiVersion: weft.dev/v1alpha1\nkind: Tenant\nmetadata: {name: extra}\n",
    );
    let dry = server.weft(&admin, &["apply", "-f", &extra, "--dry-run"]);
    assert_eq!(
        (dry.code, dry.stdout.as_str()),
        (0, "tenants/extra created (dry run)\n"),
        "{dry:?}"
    );
    assert_eq!(server.weft(&admin, &["get", "tenant", "extra"]).code, 6);

    // A parent with children stays, and the message names them.
    let refused = server.weft(&admin, &["delete", "tenant", "retail"]);
    assert_eq!(refused.code, 4, "{refused:?}");
    assert!(
        refused
            .stderr
            .contains("tenants/retail/workspaces/checkout (metadata.tenant)"),
        "{refused:?}"
    );
    assert!(
        refused
            .stderr
            .contains("tenants/retail/accessbindings/sam-security"),
        "{refused:?}"
    );

    // delete -f removes parents and children together, atomically.
    let workspace_file = format!("{EXAMPLES}/30-workspace.yaml");
    let dry = server.weft(&admin, &["delete", "-f", &workspace_file, "--dry-run"]);
    assert_eq!(dry.code, 4, "the workspace still has its binding: {dry:?}");
    assert!(
        dry.stderr.contains("accessbindings/payments-traffic"),
        "{dry:?}"
    );
    let gone = server.weft(
        &admin,
        &[
            "delete",
            "-f",
            &format!("{EXAMPLES}/40-access.yaml"),
            "-f",
            &workspace_file,
        ],
    );
    assert_eq!(gone.code, 0, "{gone:?}");
    assert!(
        gone.stdout
            .contains("tenants/retail/workspaces/checkout deleted"),
        "{gone:?}"
    );
    assert_eq!(
        server
            .weft(&admin, &["get", "workspaces", "-o", "json"])
            .stdout
            .trim(),
        "[]"
    );
    let org = server.weft(&admin, &["delete", "organization", "weft"]);
    assert_eq!(org.code, 4, "{org:?}");
    assert!(org.stderr.contains("cannot be deleted"), "{org:?}");
}

#[test]
fn walkthrough_on_sqlite_then_restart_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, None);
    assert!(
        server
            .banner
            .iter()
            .any(|l| l.contains("admin token written to")),
        "{:?}",
        server.banner
    );
    assert_eq!(mode(&data.join("admin.token")), 0o600);
    assert_eq!(mode(&data), 0o700);
    walkthrough(&server, dir.path());
    let admin = server.admin_token();
    let checkout = |server: &Server| {
        let args = [
            "get",
            "workspace",
            "checkout",
            "--tenant",
            "retail",
            "-o",
            "json",
        ];
        server.weft(&admin, &args).stdout
    };
    let before = checkout(&server);
    server.stop();

    let server = Server::start(&data, None);
    assert!(
        server
            .banner
            .iter()
            .any(|l| l.contains("admin token from the first start")),
        "{:?}",
        server.banner
    );
    assert_eq!(
        server.admin_token(),
        admin,
        "a restart must not replace the admin token"
    );
    assert_eq!(before, checkout(&server));
    let verify = server.weft(&admin, &["audit", "verify"]);
    assert_eq!(verify.code, 0, "{verify:?}");
}

#[tokio::test]
async fn walkthrough_on_postgres_with_two_replicas() {
    let store = weft_store::testing::fresh_postgres_database().await;
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    // Two replicas start at once on one store: exactly one bootstraps.
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| Server::start(&dirs[0].path().join("data"), Some(&store)));
        let b = s.spawn(|| Server::start(&dirs[1].path().join("data"), Some(&store)));
        (a.join().unwrap(), b.join().unwrap())
    });
    let tokens: Vec<&Server> = [&a, &b]
        .into_iter()
        .filter(|s| s.data.join("admin.token").exists())
        .collect();
    assert_eq!(tokens.len(), 1, "exactly one replica bootstraps");
    let (first, other) = if a.data.join("admin.token").exists() {
        (&a, &b)
    } else {
        (&b, &a)
    };
    assert!(
        other
            .banner
            .iter()
            .any(|l| l.contains("store already set up")),
        "{:?}",
        other.banner
    );

    walkthrough(first, dirs[0].path());
    // The other replica serves the same store.
    let admin = first.admin_token();
    let seen = other.weft(&admin, &["get", "clusters", "-o", "json"]);
    assert!(
        seen.stdout.contains("us-east-1") && seen.stdout.contains("eu-west-1"),
        "{seen:?}"
    );
    assert_eq!(other.weft(&admin, &["audit", "verify"]).code, 0);
}

#[test]
fn bad_manifests_report_every_problem_and_store_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), None);
    let admin = server.admin_token();
    let manifests = dir.path().join("bad");
    write(
        &manifests,
        "a.yaml",
        "apiVersion: weft.dev/v1alpha1\nkind: Tenant\nmetadata: {name: fine}\n",
    );
    write(
        &manifests,
        "b.yaml",
        "apiVersion: weft.dev/v1alpha1\nkind: Workspace\nmetadata: {name: w, tenant: fine}\nspec:\n  namespaceSelector: [\"*/ok\", east]\n  colour: blue\n---\napiVersion: weft.dev/v1alpha1\nkind: Cluster\nmetadata: {name: Bad_Name}\nspec: {}\n",
    );
    write(
        &manifests,
        "nested/c.yml",
        "apiVersion: weft.dev/v1alpha1\nkind: TrafficGroup\nmetadata: {name: g, tenant: fine, workspace: w2}\nspec: {}\n---\napiVersion: weft.dev/v1alpha1\nkind: Workspace\nmetadata: {name: w2, tenant: fine}\nspec: {namespaceSelector: [\"east/a\"]}\n---\napiVersion: weft.dev/v1alpha1\nkind: TrafficGroup\nmetadata: {name: g2, tenant: fine, workspace: w2}\nspec: {namespaceSelector: [\"west/a\"]}\n",
    );
    write(&manifests, "ignored.txt", "not a manifest");
    let out = server.weft(&admin, &["apply", "-f", manifests.to_str().unwrap()]);
    assert_eq!(out.code, 3, "{out:?}");
    for expected in [
        "b.yaml#1: spec.colour: unknown field",
        "b.yaml#2: spec.region: is required",
        "b.yaml#2: metadata.name: \"Bad_Name\" is not a DNS label",
        "c.yml#3: spec.namespaceSelector[0]: \"west/a\" is outside the workspace's namespaces (east/a)",
    ] {
        assert!(
            out.stderr.contains(expected),
            "missing {expected:?} in {out:?}"
        );
    }
    let tenants = server.weft(&admin, &["get", "tenants", "-o", "json"]);
    assert_eq!(
        tenants.stdout.trim(),
        "[]",
        "nothing may be stored: {tenants:?}"
    );

    // A missing parent is reported with the field that names it.
    let orphan = write(
        dir.path(),
        "orphan.yaml",
        "apiVersion: weft.dev/v1alpha1\nkind: Workspace\nmetadata: {name: w, tenant: nobody}\nspec: {namespaceSelector: [\"*/w\"]}\n",
    );
    let out = server.weft(&admin, &["apply", "-f", &orphan]);
    assert_eq!(out.code, 3, "{out:?}");
    assert!(
        out.stderr
            .contains("orphan.yaml#1: metadata.tenant: tenants/nobody does not exist"),
        "{out:?}"
    );

    // Broken YAML and bad UTF-8 are caught before anything is sent.
    let broken = write(
        dir.path(),
        "broken.yaml",
        "kind: Tenant\nmetadata: {name: [x\n",
    );
    let out = server.weft(&admin, &["apply", "-f", &broken]);
    assert_eq!(out.code, 3, "{out:?}");
    assert!(
        out.stderr.contains("broken.yaml#1:") && out.stderr.contains("line"),
        "{out:?}"
    );
    std::fs::write(
        dir.path().join("latin1.yaml"),
        b"kind: Tenant\nmetadata: {name: caf\xe9}\n",
    )
    .unwrap();
    let out = server.weft(
        &admin,
        &[
            "apply",
            "-f",
            dir.path().join("latin1.yaml").to_str().unwrap(),
        ],
    );
    assert_eq!(out.code, 3, "{out:?}");
    assert!(out.stderr.contains("not UTF-8"), "{out:?}");

    let huge = format!(
        "apiVersion: weft.dev/v1alpha1\nkind: Tenant\nmetadata: {{name: big}}\nspec: {{description: {}}}\n",
        "x".repeat(5 << 20)
    );
    let huge = write(dir.path(), "huge.yaml", &huge);
    let out = server.weft(&admin, &["apply", "-f", &huge]);
    assert_eq!(out.code, 3, "{out:?}");
    assert!(out.stderr.contains("the server takes at most"), "{out:?}");
}

#[test]
fn exit_codes_login_and_help() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), None);
    let admin = server.admin_token();

    let missing = server.weft(&admin, &["get", "tenant", "nope"]);
    assert_eq!(missing.code, 6, "{missing:?}");
    let unknown = server.weft(&admin, &["get", "gizmos"]);
    assert_eq!(unknown.code, 3, "{unknown:?}");
    assert!(
        unknown.stderr.contains("kinds: organizations, tenants"),
        "{unknown:?}"
    );
    let no_parent = server.weft(&admin, &["get", "workspace", "w"]);
    assert_eq!(no_parent.code, 3, "{no_parent:?}");
    assert!(
        no_parent.stderr.contains("a Workspace sits under a Tenant"),
        "{no_parent:?}"
    );
    let bad_token = server.weft("weft_not-a-token", &["get", "tenants"]);
    assert_eq!(bad_token.code, 5, "{bad_token:?}");
    assert!(
        bad_token.stderr.contains("not recognized") && bad_token.stderr.contains("hint:"),
        "{bad_token:?}"
    );
    let unreachable = run(std::process::Command::new(support::WEFT).args([
        "get",
        "tenants",
        "--server",
        "http://127.0.0.1:9",
        "--token",
        "x",
    ]));
    assert_eq!(unreachable.code, 7, "{unreachable:?}");
    let usage = run(std::process::Command::new(support::WEFT).args(["apply"]));
    assert_eq!(usage.code, 2, "{usage:?}");

    // login saves the server and token (0600); later commands need neither flag.
    let config = dir.path().join("cfg").join("config.yaml");
    let token_file = server.data.join("admin.token");
    let login = run(std::process::Command::new(support::WEFT)
        .args([
            "login",
            "--server",
            &server.url,
            "--token-file",
            token_file.to_str().unwrap(),
        ])
        .env("WEFT_CONFIG", &config));
    assert_eq!(login.code, 0, "{login:?}");
    assert!(login.stdout.contains("as admin"), "{login:?}");
    assert_eq!(mode(&config), 0o600);
    let me = run(std::process::Command::new(support::WEFT)
        .args(["whoami"])
        .env("WEFT_CONFIG", &config));
    assert_eq!(me.code, 0, "{me:?}");
    assert!(
        me.stdout
            .contains("admin   (top level)   accessbindings/bootstrap-admin"),
        "{me:?}"
    );
    let bad_login = run(std::process::Command::new(support::WEFT)
        .args(["login", "--server", &server.url, "--token", "weft_wrong"])
        .env("WEFT_CONFIG", dir.path().join("other.yaml")));
    assert_eq!(bad_login.code, 5, "{bad_login:?}");
    assert!(
        !dir.path().join("other.yaml").exists(),
        "a failed login saves nothing"
    );

    // Flags and the environment win over the saved login.
    let overridden = run(std::process::Command::new(support::WEFT)
        .args(["whoami"])
        .env("WEFT_CONFIG", &config)
        .env("WEFT_TOKEN", "weft_wrong"));
    assert_eq!(overridden.code, 5, "{overridden:?}");
    let flagged = run(std::process::Command::new(support::WEFT)
        .args(["whoami", "--server", "http://127.0.0.1:9"])
        .env("WEFT_CONFIG", &config));
    assert_eq!(flagged.code, 7, "{flagged:?}");

    // Manifests on stdin.
    let mut child = std::process::Command::new(support::WEFT)
        .args(["apply", "-f", "-"])
        .env("WEFT_CONFIG", &config)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"apiVersion: weft.dev/v1alpha1\nkind: Tenant\nmetadata: {name: piped}\n")
        .unwrap();
    let piped = child.wait_with_output().unwrap();
    assert!(piped.status.success());
    assert_eq!(
        String::from_utf8_lossy(&piped.stdout),
        "tenants/piped created\n"
    );

    // Every command has examples in its help; completions are generated.
    let commands: [&[&str]; 13] = [
        &["server"],
        &["apply"],
        &["get"],
        &["delete"],
        &["diff"],
        &["audit"],
        &["login"],
        &["whoami"],
        &["completions"],
        &["token"],
        &["token", "create"],
        &["token", "list"],
        &["token", "revoke"],
    ];
    for command in commands {
        let help = run(std::process::Command::new(support::WEFT)
            .args(command)
            .arg("--help"));
        assert!(help.stdout.contains("Examples:"), "{command:?}: {help:?}");
    }
    let bash = run(std::process::Command::new(support::WEFT).args(["completions", "bash"]));
    assert!(bash.code == 0 && bash.stdout.contains("weft"), "{bash:?}");
}

#[test]
fn traffic_kinds_follow_their_concern_and_their_parents() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), None);
    let admin = server.admin_token();
    assert_eq!(server.weft(&admin, &["apply", "-f", EXAMPLES]).code, 0);
    let traffic = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/traffic");
    // ann is in the payments team, traffic-editor on the checkout workspace;
    // sam is security-editor on the retail tenant.
    let token = |user: &str| {
        let out = server.weft(&admin, &["token", "create", "--user", user]);
        assert_eq!(out.code, 0, "{out:?}");
        out.stdout.trim().to_string()
    };
    let (ann, sam) = (token("ann"), token("sam"));
    let refused = server.weft(&sam, &["apply", "-f", traffic]);
    assert_eq!(
        refused.code, 5,
        "a security editor cannot change traffic: {refused:?}"
    );
    let applied = server.weft(&ann, &["apply", "-f", traffic]);
    assert_eq!(applied.code, 0, "{applied:?}");
    // The README's security example (callers, end-user tokens) is sam's.
    // The README's multi-cluster example applies too.
    let clusters = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/multicluster");
    let spanned = server.weft(&admin, &["apply", "-f", clusters]);
    assert_eq!(spanned.code, 0, "{spanned:?}");
    // The README's gateway example.
    let gateway = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/gateway");
    let fronted = server.weft(&admin, &["apply", "-f", gateway]);
    assert!(
        fronted.code == 0 && fronted.stdout.contains("gateways/ingress created"),
        "{fronted:?}"
    );
    let security = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/security");
    let secured = server.weft(&sam, &["apply", "-f", security]);
    assert!(
        secured.code == 0
            && secured
                .stdout
                .contains("securitysettings/reviews-users created"),
        "{secured:?}"
    );
    assert!(
        applied
            .stdout
            .contains("trafficgroups/checkout-traffic/serviceroutes/reviews created"),
        "{applied:?}"
    );
    let listed = server.weft(
        &ann,
        &[
            "get",
            "serviceroutes",
            "--tenant",
            "retail",
            "--workspace",
            "checkout",
            "--traffic-group",
            "checkout-traffic",
        ],
    );
    assert!(
        listed.stdout.contains("name=reviews,namespace=checkout"),
        "{listed:?}"
    );

    // A service outside the group's namespaces, and a bad setting.
    let bad = write(
        dir.path(),
        "bad-traffic.yaml",
        "apiVersion: weft.dev/v1alpha1\nkind: TrafficSetting\nmetadata: {name: other, tenant: retail, workspace: checkout, trafficGroup: checkout-traffic}\nspec:\n  service: {name: ledger, namespace: billing}\n  timeout: 1s\n  retries: {attempts: 3, perTryTimeout: 2s}\n",
    );
    let out = server.weft(&ann, &["apply", "-f", &bad]);
    assert_eq!(out.code, 3, "{out:?}");
    assert!(out.stderr.contains("bad-traffic.yaml#1: spec.retries.perTryTimeout: is longer than the whole request's timeout"), "{out:?}");
    let fixed = std::fs::read_to_string(&bad)
        .unwrap()
        .replace("perTryTimeout: 2s", "perTryTimeout: 500ms");
    let fixed = write(dir.path(), "fixed.yaml", &fixed);
    let out = server.weft(&ann, &["apply", "-f", &fixed]);
    assert_eq!(out.code, 3, "{out:?}");
    assert!(out.stderr.contains("spec.service.namespace: \"billing\" is not among the namespaces this is attached to (*/checkout)"), "{out:?}");
}

#[test]
fn concurrent_applies_of_different_documents_all_succeed() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), None);
    let admin = server.admin_token();
    let files: Vec<String> = (0..8)
        .map(|i| {
            write(
                dir.path(),
                &format!("t{i}.yaml"),
                &format!("apiVersion: weft.dev/v1alpha1\nkind: Tenant\nmetadata: {{name: t{i}}}\n"),
            )
        })
        .collect();
    let results: Vec<support::Run> = std::thread::scope(|s| {
        let handles: Vec<_> = files
            .iter()
            .map(|f| s.spawn(|| server.weft(&admin, &["apply", "-f", f])))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for r in &results {
        assert_eq!(r.code, 0, "{r:?}");
    }
    let tenants = server.weft(&admin, &["get", "tenants", "-o", "json"]);
    assert_eq!(
        tenants.stdout.matches("\"kind\": \"Tenant\"").count(),
        8,
        "{tenants:?}"
    );
}

#[test]
fn organization_trust_domain_names_identities_and_new_roots() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start_with(&data, None, &["--trust-domain", "acme.test"]);
    let admin = server.admin_token();
    let org = server.weft(&admin, &["get", "organization", "-o", "json"]);
    assert!(
        org.stdout.contains("\"trustDomain\": \"acme.test\""),
        "{org:?}"
    );
    let roots = server.weft(&admin, &["ca", "list"]);
    assert!(
        roots.code == 0 && roots.stdout.contains("acme.test") && roots.stdout.contains("signing"),
        "{roots:?}"
    );

    // A bad trust domain is refused with its field path.
    let org_name = serde_json::from_str::<serde_json::Value>(&org.stdout).unwrap();
    let org_name = org_name
        .pointer("/0/metadata/name")
        .or_else(|| org_name.pointer("/metadata/name"))
        .and_then(|v| v.as_str())
        .unwrap()
        .to_string();
    let manifest = |td: &str| {
        format!(
            "apiVersion: weft.dev/v1alpha1\nkind: Organization\nmetadata: {{name: {org_name}}}\nspec: {{trustDomain: {td}}}\n"
        )
    };
    let bad = write(dir.path(), "bad-org.yaml", &manifest("Acme_Test"));
    let out = server.weft(&admin, &["apply", "-f", &bad]);
    assert_eq!(out.code, 3, "{out:?}");
    assert!(out.stderr.contains("spec.trustDomain"), "{out:?}");

    // A new trust domain applies with the next root.
    let good = write(dir.path(), "org.yaml", &manifest("corp.test"));
    assert_eq!(server.weft(&admin, &["apply", "-f", &good]).code, 0);
    let added = server.weft(&admin, &["ca", "add"]);
    assert_eq!(added.code, 0, "{added:?}");
    let roots = server.weft(&admin, &["ca", "list", "-o", "json"]);
    let roots: Vec<serde_json::Value> = serde_json::from_str(&roots.stdout).unwrap();
    let states: Vec<(&str, &str)> = roots
        .iter()
        .map(|r| {
            (
                r["trustDomain"].as_str().unwrap(),
                r["state"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(states, [("acme.test", "signing"), ("corp.test", "trusted")]);
    // Only admins of the organization manage roots.
    let bob = server.weft(&admin, &["token", "create", "--user", "bob"]);
    let bob = bob.stdout.trim().to_string();
    let refused = server.weft(&bob, &["ca", "add"]);
    assert_eq!(refused.code, 5, "{refused:?}");
    server.stop();

    // The flag only applies at the first start; a root of another trust
    // domain cannot be imported.
    let root = dir.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "30",
            "-subj",
            "/O=other",
            "-addext",
            "subjectAltName=URI:spiffe://other.test",
            "-addext",
            "basicConstraints=critical,CA:true",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ])
        .arg("-keyout")
        .arg(root.join("key.pem"))
        .arg("-out")
        .arg(root.join("cert.pem"))
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let out = run(std::process::Command::new(support::WEFT)
        .args([
            "server",
            "--listen",
            "127.0.0.1:0",
            "--edge-listen",
            "127.0.0.1:0",
            "--data",
        ])
        .arg(dir.path().join("other"))
        .arg("--ca-cert")
        .arg(root.join("cert.pem"))
        .arg("--ca-key")
        .arg(root.join("key.pem")));
    assert_ne!(out.code, 0, "{out:?}");
    assert!(
        out.stderr
            .contains("the root CA is for trust domain \"other.test\""),
        "{out:?}"
    );
}

/// An upgrade on a store of the release before schema versions: `weft
/// server --migrate-only` migrates it and exits; a store a newer release
/// wrote is refused with a message that says what to do.
#[test]
fn migrate_only_upgrades_the_store_and_a_newer_store_is_refused() {
    let data = tempfile::tempdir().unwrap();
    let db = data.path().join("weft.db");
    std::fs::copy(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../store/tests/fixtures/store-before-versions.sqlite"
        ),
        &db,
    )
    .unwrap();
    let migrate = || {
        run(std::process::Command::new(support::WEFT)
            .args(["server", "--migrate-only", "--data"])
            .arg(data.path()))
    };
    let first = migrate();
    assert_eq!(first.code, 0, "{first:?}");
    assert!(first.stdout.contains("is now at version 1"), "{first:?}");
    assert!(
        !data.path().join("admin.token").exists(),
        "--migrate-only does not bootstrap"
    );
    let again = migrate();
    assert_eq!(again.code, 0, "{again:?}");
    assert!(
        again.stdout.contains("at version 1, this release's"),
        "{again:?}"
    );

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        use sqlx::Connection;
        sqlx::any::install_default_drivers();
        let mut conn = sqlx::AnyConnection::connect(&format!("sqlite://{}", db.display()))
            .await
            .unwrap();
        sqlx::query(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
             VALUES (2, 'from a newer release', TRUE, x'00', 0)",
        )
        .execute(&mut conn)
        .await
        .unwrap();
        conn.close().await.unwrap();
    });
    let refused = migrate();
    assert_eq!(refused.code, 8, "{refused:?}");
    assert!(
        refused
            .stderr
            .contains("the store's schema is version 2, newer than this weft knows (up to 1)"),
        "{refused:?}"
    );
}

/// Logs written to a file or a pipe carry no terminal colour codes.
#[test]
fn logs_to_a_pipe_have_no_colour_codes() {
    let data = tempfile::tempdir().unwrap();
    let out = run(std::process::Command::new(support::WEFT)
        .args(["server", "--migrate-only", "--data"])
        .arg(data.path()));
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("opening the store"), "{out:?}");
    assert!(!out.stderr.contains('\u{1b}'), "{out:?}");
}

/// The example systemd units in deploy/systemd pass `systemd-analyze
/// verify` (with this build's binary in place of /usr/local/bin/weft, and
/// the sidecar template as an instance).
#[test]
fn example_systemd_units_pass_systemd_analyze_verify() {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/systemd");
    let units = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&source).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if !name.ends_with(".service") {
            continue;
        }
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("/usr/local/bin/weft", support::WEFT);
        let target = units
            .path()
            .join(name.replace("@.service", "@example.service"));
        std::fs::write(&target, text).unwrap();
        files.push(target);
    }
    assert_eq!(files.len(), 4, "server, edge, sidecar, eastwest: {files:?}");
    let out = std::process::Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(&files)
        .output()
        .expect("systemd-analyze runs (scripts/setup installs Debian's systemd package)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // Warnings go to stderr with a zero exit: none are expected.
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| files.iter().any(|f| l.contains(&*f.to_string_lossy())))
        .collect();
    assert!(warnings.is_empty(), "{stderr}");
}

/// A backup taken while the server writes, restored into a new data
/// directory: a server there has the resources of the backup's revision,
/// its tokens still work, and its audit chain verifies; the file is 0600.
#[test]
fn backup_under_write_load_restores_into_a_new_directory() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, None);
    let admin = server.admin_token();
    let applied = server.weft(&admin, &["apply", "-f", EXAMPLES]);
    assert_eq!(applied.code, 0, "{applied:?}");

    // Writers keep creating tenants while the backup runs.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, url, admin, scratch) = (
            stop.clone(),
            server.url.clone(),
            admin.clone(),
            dir.path().to_path_buf(),
        );
        std::thread::spawn(move || {
            let mut written = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let manifest = write(
                    &scratch,
                    &format!("load/{written}.yaml"),
                    &format!(
                        "apiVersion: weft.dev/v1alpha1\nkind: Tenant\nmetadata: {{name: load-{written}}}\nspec: {{}}\n"
                    ),
                );
                let out = run(std::process::Command::new(support::WEFT)
                    .args(["apply", "-f", &manifest])
                    .env("WEFT_SERVER", &url)
                    .env("WEFT_TOKEN", &admin));
                assert_eq!(out.code, 0, "{out:?}");
                written += 1;
            }
            written
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(300));
    let file = dir.path().join("backup.db");
    let backup = run(std::process::Command::new(support::WEFT)
        .args(["admin", "backup", "--data"])
        .arg(&data)
        .arg(&file));
    std::thread::sleep(std::time::Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let written = writer.join().unwrap();
    assert_eq!(backup.code, 0, "{backup:?}");
    assert!(written > 2, "the load wrote {written} tenants");
    assert_eq!(mode(&file), 0o600);
    let again = run(std::process::Command::new(support::WEFT)
        .args(["admin", "backup", "--data"])
        .arg(&data)
        .arg(&file));
    assert_eq!(again.code, 8, "an existing file is not replaced: {again:?}");
    let tenants = |server: &Server| -> Vec<String> {
        let out = server.weft(&admin, &["get", "tenants", "-o", "json"]);
        let list: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        let mut names: Vec<String> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["metadata"]["name"].as_str().unwrap().to_string())
            .collect();
        names.sort();
        names
    };
    let all = tenants(&server);
    let roots = server.weft(&admin, &["ca", "list"]);
    assert_eq!(roots.code, 0, "{roots:?}");
    server.stop();

    let restored = dir.path().join("restored");
    let restore = run(std::process::Command::new(support::WEFT)
        .args(["admin", "restore"])
        .arg(&file)
        .arg("--data")
        .arg(&restored));
    assert_eq!(restore.code, 0, "{restore:?}");
    assert_eq!(mode(&restored.join("weft.db")), 0o600);
    let twice = run(std::process::Command::new(support::WEFT)
        .args(["admin", "restore"])
        .arg(&file)
        .arg("--data")
        .arg(&restored));
    assert_eq!(
        twice.code, 8,
        "a store is not restored over another: {twice:?}"
    );

    // The restored server has no admin.token file of its own: the token
    // from the original one, kept in the store as a hash, still works.
    std::fs::copy(data.join("admin.token"), restored.join("admin.token")).unwrap();
    let server = Server::start(&restored, None);
    let kept = tenants(&server);
    assert!(kept.contains(&"retail".to_string()), "{kept:?}");
    assert!(
        kept.iter().all(|t| all.contains(t)),
        "the restored tenants are some of the ones written: {kept:?}"
    );
    let verify = server.weft(&admin, &["audit", "verify"]);
    assert_eq!(verify.code, 0, "{verify:?}");
    let restored_roots = server.weft(&admin, &["ca", "list"]);
    assert_eq!(restored_roots.stdout, roots.stdout, "the same root CAs");
}

/// Every daemon takes its settings from a file as well: a flag beats its
/// environment variable, which beats the file, which beats the default;
/// a key that is no setting of the daemon is refused with its name.
#[test]
fn daemons_read_settings_from_a_file_under_environment_and_flags() {
    let dir = tempfile::tempdir().unwrap();
    // (daemon, what the file must also give it, the setting, its variable)
    let daemons: [(&str, &str, &str, &str); 4] = [
        ("server", "", "listen", "WEFT_LISTEN"),
        (
            "edge",
            "cluster: east\ncredential-file: /etc/weft/edge.token\n",
            "xds-listen",
            "WEFT_XDS_LISTEN",
        ),
        (
            "sidecar",
            "service: reviews\ncredential-file: /etc/weft/reviews.token\n",
            "edge",
            "WEFT_EDGE",
        ),
        (
            "eastwest",
            "credential-file: /etc/weft/eastwest.token\n",
            "edge",
            "WEFT_EDGE",
        ),
    ];
    for (daemon, required, setting, variable) in daemons {
        let file = write(
            dir.path(),
            &format!("{daemon}.yaml"),
            &format!("{required}{setting}: 127.0.0.1:1001\n"),
        );
        let settings = |env: Option<&str>, flag: Option<&str>| -> String {
            let mut command = std::process::Command::new(support::WEFT);
            command
                .arg(daemon)
                .args(["--config-file", &file, "--print-settings"]);
            if let Some(flag) = flag {
                command.arg(format!("--{setting}")).arg(flag);
            }
            command.env_remove(variable);
            if let Some(env) = env {
                command.env(variable, env);
            }
            let out = run(&mut command);
            assert_eq!(out.code, 0, "{daemon}: {out:?}");
            out.stdout
                .lines()
                .find(|l| l.starts_with(&format!("{setting}: ")))
                .unwrap_or_else(|| panic!("{daemon}: no {setting} in {out:?}"))
                .to_string()
        };
        assert_eq!(
            settings(None, None),
            format!("{setting}: 127.0.0.1:1001  # file"),
            "{daemon}"
        );
        assert_eq!(
            settings(Some("127.0.0.1:1002"), None),
            format!("{setting}: 127.0.0.1:1002  # environment"),
            "{daemon}"
        );
        assert_eq!(
            settings(Some("127.0.0.1:1002"), Some("127.0.0.1:1003")),
            format!("{setting}: 127.0.0.1:1003  # flag"),
            "{daemon}"
        );

        let bad = write(
            dir.path(),
            &format!("{daemon}-bad.yaml"),
            &format!("{required}{setting}s: 127.0.0.1:1001\n"),
        );
        let refused = run(std::process::Command::new(support::WEFT)
            .arg(daemon)
            .args(["--config-file", &bad]));
        assert_eq!(refused.code, 3, "{daemon}: {refused:?}");
        assert!(
            refused.stderr.contains(&format!(
                "{bad}: {setting}s: not a setting of `weft {daemon}`"
            )),
            "{daemon}: {refused:?}"
        );
    }
}

#[test]
fn translate_prints_the_envoy_resources_each_proxy_would_get() {
    let dir = tempfile::tempdir().unwrap();
    let registry = write(
        dir.path(),
        "workloads.yaml",
        "- {node: checkout-1, service: checkout, namespace: checkout, serviceAccount: checkout, address: 10.0.0.5, port: 15006, appPort: 8080, outboundPort: 15001}\n",
    );
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/quickstart");
    let translate = |format: &str| {
        run(std::process::Command::new(support::WEFT).args([
            "x",
            "translate",
            "-f",
            examples,
            "--registry",
            &registry,
            "--cluster",
            "us-east",
            "--format",
            format,
        ]))
    };
    let envoy = translate("envoy");
    assert_eq!(envoy.code, 0, "{envoy:?}");
    let dump: serde_json::Value = serde_json::from_str(&envoy.stdout).unwrap();
    let configs = dump["proxies"]["checkout-1"]["configs"].as_array().unwrap();
    let of = |kind: &str| {
        configs
            .iter()
            .find(|c| c["@type"] == format!("type.googleapis.com/envoy.admin.v3.{kind}"))
            .unwrap_or_else(|| panic!("no {kind}"))
    };
    let listeners = of("ListenersConfigDump")["dynamic_listeners"]
        .as_array()
        .unwrap();
    assert!(
        listeners
            .iter()
            .any(|l| l["active_state"]["listener"]["@type"]
                == "type.googleapis.com/envoy.config.listener.v3.Listener"),
        "{listeners:?}"
    );
    assert!(
        !of("ClustersConfigDump")["dynamic_active_clusters"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    // The readable form is still the default's.
    let readable = translate("readable");
    assert_eq!(readable.code, 0, "{readable:?}");
    assert!(readable.stdout.contains("checkout-1"), "{readable:?}");
    let refused = translate("xml");
    assert_eq!(refused.code, 2, "{refused:?}");
}

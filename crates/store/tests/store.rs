//! The store suite: every test runs against a real SQLite file and a real
//! PostgreSQL database.

use serde_json::{Value, json};
use sqlx::any::install_default_drivers;
use sqlx::{AnyConnection, Connection, Executor};
use weft_api::validate;
use weft_store::{
    AuditFilter, Change, Expect, Op, Outcome, Reason, Store, StoreError, TokenRecord,
};

/// A store on a fresh database, its URL, and (for SQLite) the directory
/// that must outlive it.
struct Fixture {
    store: Store,
    url: String,
    _dir: Option<tempfile::TempDir>,
}

async fn sqlite() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/weft.db", dir.path().display());
    Fixture {
        store: Store::open(&url).await.unwrap(),
        url,
        _dir: Some(dir),
    }
}

async fn postgres() -> Fixture {
    let url = weft_store::testing::fresh_postgres_database().await;
    Fixture {
        store: Store::open(&url).await.unwrap(),
        url,
        _dir: None,
    }
}

fn put(doc: Value) -> Change {
    put_expecting(doc, Expect::Any)
}

fn put_expecting(doc: Value, expect: Expect) -> Change {
    let v = validate(&doc).unwrap_or_else(|p| panic!("test manifest invalid: {p:?}"));
    Change::put(v, expect)
}

fn delete(path: &str) -> Change {
    Change::Delete {
        path: path.into(),
        expect: Expect::Present,
    }
}

fn tenant(name: &str, description: &str) -> Value {
    json!({"apiVersion": "weft.dev/v1alpha1", "kind": "Tenant", "metadata": {"name": name},
           "spec": {"description": description}})
}

fn workspace(tenant: &str, name: &str) -> Value {
    json!({"apiVersion": "weft.dev/v1alpha1", "kind": "Workspace",
           "metadata": {"name": name, "tenant": tenant}, "spec": {"namespaceSelector": [format!("*/{name}")]}})
}

fn refusals(result: Result<Vec<weft_store::Applied>, StoreError>) -> Vec<weft_store::Refusal> {
    match result {
        Err(StoreError::Refused { refusals }) => refusals,
        other => panic!("expected refusals, got {other:?}"),
    }
}

async fn raw(url: &str) -> AnyConnection {
    install_default_drivers();
    AnyConnection::connect(url).await.unwrap()
}

async fn create_update_unchanged_and_versions(f: Fixture) {
    let s = &f.store;
    let out = s
        .apply(&[put(tenant("retail", "a"))], "ann", false)
        .await
        .unwrap();
    assert_eq!(out[0].outcome, Outcome::Created);
    let v1 = s.get("tenants/retail").await.unwrap().unwrap();
    assert_eq!(
        v1.resource.metadata.resource_version,
        Some(v1.version.to_string())
    );
    assert!(v1.resource.metadata.created_at.is_some());

    let out = s
        .apply(&[put(tenant("retail", "a"))], "ann", false)
        .await
        .unwrap();
    assert_eq!(out[0].outcome, Outcome::Unchanged);
    assert_eq!(
        s.get("tenants/retail").await.unwrap().unwrap().version,
        v1.version
    );

    let out = s
        .apply(&[put(tenant("retail", "b"))], "ann", false)
        .await
        .unwrap();
    assert_eq!(out[0].outcome, Outcome::Updated);
    let v2 = s.get("tenants/retail").await.unwrap().unwrap();
    assert!(v2.version > v1.version);
    assert_eq!(
        v2.resource.metadata.created_at,
        v1.resource.metadata.created_at
    );
    assert_eq!(v2.resource.spec["description"], "b");
    assert_eq!(out[0].before.as_ref().unwrap().spec["description"], "a");
}

async fn stale_version_is_a_conflict(f: Fixture) {
    let s = &f.store;
    s.apply(&[put(tenant("retail", "a"))], "ann", false)
        .await
        .unwrap();
    let seen = s.get("tenants/retail").await.unwrap().unwrap().version;
    s.apply(
        &[put_expecting(tenant("retail", "b"), Expect::Version(seen))],
        "ann",
        false,
    )
    .await
    .unwrap();
    let r = refusals(
        s.apply(
            &[put_expecting(tenant("retail", "c"), Expect::Version(seen))],
            "bob",
            false,
        )
        .await,
    );
    assert_eq!(r[0].reason, Reason::Stale);
    assert!(
        r[0].message.contains(&format!("based on version {seen}")),
        "{}",
        r[0].message
    );
    assert_eq!(
        s.get("tenants/retail")
            .await
            .unwrap()
            .unwrap()
            .resource
            .spec["description"],
        "b"
    );
    let r = refusals(
        s.apply(
            &[put_expecting(tenant("retail", "d"), Expect::Absent)],
            "bob",
            false,
        )
        .await,
    );
    assert_eq!(r[0].reason, Reason::Exists);
}

async fn concurrent_writers_of_one_version_exactly_one_wins(f: Fixture) {
    f.store
        .apply(&[put(tenant("retail", "start"))], "ann", false)
        .await
        .unwrap();
    for round in 0..5 {
        let seen = f
            .store
            .get("tenants/retail")
            .await
            .unwrap()
            .unwrap()
            .version;
        let mut writers = Vec::new();
        for w in 0..6 {
            let s = f.store.clone();
            let doc = tenant("retail", &format!("round {round} writer {w}"));
            writers.push(tokio::spawn(async move {
                s.apply(&[put_expecting(doc, Expect::Version(seen))], "ann", false)
                    .await
            }));
        }
        let mut won = 0;
        for w in writers {
            match w.await.unwrap() {
                Ok(_) => won += 1,
                Err(StoreError::Refused { refusals }) => {
                    assert_eq!(refusals[0].reason, Reason::Stale)
                }
                Err(other) => panic!("{other}"),
            }
        }
        assert_eq!(
            won, 1,
            "round {round}: exactly one writer of version {seen} may win"
        );
    }
}

async fn change_set_is_atomic_and_reports_every_refusal(f: Fixture) {
    let s = &f.store;
    let r = refusals(
        s.apply(
            &[
                put(tenant("retail", "a")),
                put(workspace("nope", "w1")),
                put(workspace("gone", "w2")),
            ],
            "ann",
            false,
        )
        .await,
    );
    assert_eq!(r.len(), 2, "{r:?}");
    assert_eq!(
        (r[0].change, r[0].field.as_str(), r[0].reason),
        (1, "metadata.tenant", Reason::Dangling)
    );
    assert!(r[0].message.contains("tenants/nope does not exist"));
    assert_eq!(r[1].change, 2);
    assert!(
        s.get("tenants/retail").await.unwrap().is_none(),
        "nothing may be half-written"
    );
    assert!(
        s.audit(&AuditFilter {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .is_empty()
    );
}

async fn children_and_parents_in_one_set_in_any_order(f: Fixture) {
    let s = &f.store;
    let out = s
        .apply(
            &[
                put(workspace("retail", "checkout")),
                put(tenant("retail", "a")),
            ],
            "ann",
            false,
        )
        .await
        .unwrap();
    assert!(out.iter().all(|a| a.outcome == Outcome::Created));
    s.apply(
        &[
            delete("tenants/retail"),
            delete("tenants/retail/workspaces/checkout"),
        ],
        "ann",
        false,
    )
    .await
    .unwrap();
    assert!(s.list("Workspace").await.unwrap().is_empty());
}

async fn delete_is_refused_while_referenced(f: Fixture) {
    let s = &f.store;
    s.apply(
        &[
            put(tenant("retail", "a")),
            put(workspace("retail", "checkout")),
            put(workspace("retail", "cart")),
        ],
        "ann",
        false,
    )
    .await
    .unwrap();
    let r = refusals(s.apply(&[delete("tenants/retail")], "ann", false).await);
    assert_eq!(r[0].reason, Reason::Referenced);
    assert!(
        r[0].message
            .contains("tenants/retail/workspaces/cart (metadata.tenant)"),
        "{}",
        r[0].message
    );
    assert!(
        r[0].message.contains("tenants/retail/workspaces/checkout"),
        "{}",
        r[0].message
    );
    assert!(s.get("tenants/retail").await.unwrap().is_some());
    let r = refusals(s.apply(&[delete("tenants/absent")], "ann", false).await);
    assert_eq!(r[0].reason, Reason::Missing);
}

async fn dry_run_checks_everything_and_writes_nothing(f: Fixture) {
    let s = &f.store;
    let out = s
        .apply(&[put(tenant("retail", "a"))], "ann", true)
        .await
        .unwrap();
    assert_eq!(out[0].outcome, Outcome::Created);
    assert!(s.get("tenants/retail").await.unwrap().is_none());
    assert!(s.verify_audit().await.unwrap().entries == 0);
    refusals(s.apply(&[put(workspace("retail", "w"))], "ann", true).await);
}

async fn concurrent_writes_of_different_resources_all_succeed(f: Fixture) {
    let mut tasks = Vec::new();
    for i in 0..24 {
        let s = f.store.clone();
        tasks.push(tokio::spawn(async move {
            s.apply(&[put(tenant(&format!("t{i}"), "x"))], "ann", false)
                .await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(f.store.list("Tenant").await.unwrap().len(), 24);
    let report = f.store.verify_audit().await.unwrap();
    assert!(report.intact, "{report:?}");
    assert_eq!(report.entries, 24);
}

async fn singleton_kind_allows_one(f: Fixture) {
    let org = |name: &str| json!({"apiVersion": "weft.dev/v1alpha1", "kind": "Organization", "metadata": {"name": name}});
    f.store
        .apply(&[put(org("acme"))], "ann", false)
        .await
        .unwrap();
    f.store
        .apply(&[put(org("acme"))], "ann", false)
        .await
        .unwrap();
    let r = refusals(f.store.apply(&[put(org("other"))], "ann", false).await);
    assert_eq!(r[0].reason, Reason::Duplicate);
    assert!(r[0].message.contains("organizations/acme"));
    let r = refusals(
        f.store
            .apply(&[delete("organizations/acme")], "ann", false)
            .await,
    );
    assert!(r[0].message.contains("cannot be deleted"), "{r:?}");
}

async fn audit_chain_detects_edits_and_removals(f: Fixture) {
    let s = &f.store;
    for i in 0..4 {
        s.apply(&[put(tenant("retail", &format!("v{i}")))], "ann", false)
            .await
            .unwrap();
    }
    let entries = s
        .audit(&AuditFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(entries.len(), 4);
    assert_eq!(entries[0].action, "create");
    assert_eq!(
        entries[3].before.as_ref().unwrap()["spec"]["description"],
        "v2"
    );
    assert_eq!(
        entries[3].after.as_ref().unwrap()["spec"]["description"],
        "v3"
    );
    let good = s.verify_audit().await.unwrap();
    assert!(good.intact && good.entries == 4, "{good:?}");

    let mut conn = raw(&f.url).await;
    conn.execute("UPDATE audit SET actor = 'mallory' WHERE seq = 2")
        .await
        .unwrap();
    let report = s.verify_audit().await.unwrap();
    assert!(!report.intact);
    assert!(
        report.problem.as_deref().unwrap().contains("entry 2"),
        "{report:?}"
    );
    conn.execute("UPDATE audit SET actor = 'ann' WHERE seq = 2")
        .await
        .unwrap();
    assert!(s.verify_audit().await.unwrap().intact);

    conn.execute("DELETE FROM audit WHERE seq = 3")
        .await
        .unwrap();
    let report = s.verify_audit().await.unwrap();
    assert!(
        report
            .problem
            .as_deref()
            .unwrap()
            .contains("entry 3 is missing"),
        "{report:?}"
    );
}

async fn audit_chain_detects_a_cut_off_end(f: Fixture) {
    let s = &f.store;
    for i in 0..3 {
        s.apply(&[put(tenant("retail", &format!("v{i}")))], "ann", false)
            .await
            .unwrap();
    }
    raw(&f.url)
        .await
        .execute("DELETE FROM audit WHERE seq = 3")
        .await
        .unwrap();
    let report = s.verify_audit().await.unwrap();
    assert!(!report.intact);
    assert!(report.problem.unwrap().contains("3 entries were recorded"));
}

async fn audit_filters_by_path_actor_and_time(f: Fixture) {
    let s = &f.store;
    s.apply(
        &[put(tenant("a", "x")), put(tenant("b", "x"))],
        "ann",
        false,
    )
    .await
    .unwrap();
    s.apply(&[put(workspace("a", "w"))], "bob", false)
        .await
        .unwrap();
    let only = |filter: AuditFilter| async move {
        s.audit(&AuditFilter {
            limit: 100,
            ..filter
        })
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.path)
        .collect::<Vec<_>>()
    };
    assert_eq!(
        only(AuditFilter {
            path: Some("tenants/a".into()),
            ..Default::default()
        })
        .await,
        vec!["tenants/a", "tenants/a/workspaces/w"]
    );
    assert_eq!(
        only(AuditFilter {
            actor: Some("bob".into()),
            ..Default::default()
        })
        .await,
        vec!["tenants/a/workspaces/w"]
    );
    assert!(
        only(AuditFilter {
            since: Some("2999-01-01T00:00:00Z".into()),
            ..Default::default()
        })
        .await
        .is_empty()
    );
    assert!(
        only(AuditFilter {
            until: Some("2000-01-01T00:00:00Z".into()),
            ..Default::default()
        })
        .await
        .is_empty()
    );
    assert_eq!(
        s.audit(&AuditFilter {
            limit: 1,
            ..Default::default()
        })
        .await
        .unwrap()[0]
            .path,
        "tenants/a/workspaces/w"
    );
}

async fn tokens_are_found_by_hash_and_revoked(f: Fixture) {
    let s = &f.store;
    let token = TokenRecord {
        id: "t1".into(),
        user: "ann".into(),
        description: "ci".into(),
        created_at: weft_store::now_rfc3339(),
        expires_at: None,
        revoked_at: None,
    };
    s.create_token(&token, "hash-1", "admin").await.unwrap();
    assert_eq!(
        s.token_by_hash("hash-1").await.unwrap().unwrap().user,
        "ann"
    );
    assert!(s.token_by_hash("hash-2").await.unwrap().is_none());
    assert!(
        s.revoke_token(&token, "2026-01-01T00:00:00Z", "admin")
            .await
            .unwrap()
    );
    assert!(
        !s.revoke_token(&token, "2026-01-01T00:00:00Z", "admin")
            .await
            .unwrap()
    );
    assert!(
        s.token_by_hash("hash-1")
            .await
            .unwrap()
            .unwrap()
            .revoked_at
            .is_some()
    );
    assert_eq!(s.list_tokens(Some("ann")).await.unwrap().len(), 1);
    assert!(s.list_tokens(Some("bob")).await.unwrap().is_empty());
    let actions: Vec<String> = s
        .audit(&AuditFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert_eq!(actions, vec!["token.create", "token.revoke"]);
}

async fn reopening_keeps_everything(f: Fixture) {
    f.store
        .apply(
            &[put(tenant("retail", "a")), put(workspace("retail", "w"))],
            "ann",
            false,
        )
        .await
        .unwrap();
    let revision = f.store.revision().await.unwrap();
    f.store.close().await;
    let again = Store::open(&f.url).await.unwrap();
    assert_eq!(
        again.list("Workspace").await.unwrap()[0].path,
        "tenants/retail/workspaces/w"
    );
    assert_eq!(again.revision().await.unwrap(), revision);
    assert!(again.verify_audit().await.unwrap().intact);
}

async fn change_feed_lists_committed_changes_in_order(f: Fixture) {
    let s = &f.store;
    let start = s.revision().await.unwrap();
    s.apply(
        &[put(tenant("a", "x")), put(workspace("a", "w"))],
        "ann",
        false,
    )
    .await
    .unwrap();
    s.apply(&[put(tenant("a", "x"))], "ann", false)
        .await
        .unwrap(); // unchanged
    s.apply(&[put(tenant("b", "x"))], "ann", true)
        .await
        .unwrap(); // dry run
    refusals(s.apply(&[put(workspace("nope", "w"))], "ann", false).await);
    s.apply(&[delete("tenants/a/workspaces/w")], "ann", false)
        .await
        .unwrap();
    let now = s.revision().await.unwrap();
    let events: Vec<(Op, String)> = s
        .changes_since(start, now)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.op, e.path))
        .collect();
    assert_eq!(
        events,
        vec![
            (Op::Put, "tenants/a".to_string()),
            (Op::Put, "tenants/a/workspaces/w".to_string()),
            (Op::Delete, "tenants/a/workspaces/w".to_string()),
        ]
    );
    let revisions: Vec<i64> = s
        .changes_since(start, now)
        .await
        .unwrap()
        .iter()
        .map(|e| e.revision)
        .collect();
    assert!(revisions.windows(2).all(|w| w[0] <= w[1]), "{revisions:?}");
    assert!(s.changes_since(now, now).await.unwrap().is_empty());
}

async fn change_feed_is_bounded_and_says_so(f: Fixture) {
    let s = f.store.clone().with_change_retention(3);
    let start = s.revision().await.unwrap();
    for i in 0..5 {
        s.apply(&[put(tenant("a", &format!("v{i}")))], "ann", false)
            .await
            .unwrap();
    }
    let now = s.revision().await.unwrap();
    match s.changes_since(start, now).await {
        Err(StoreError::Compacted { since, oldest }) => {
            assert_eq!((since, oldest), (start, now - 2))
        }
        other => panic!("expected Compacted, got {other:?}"),
    }
    assert_eq!(s.changes_since(now - 3, now).await.unwrap().len(), 3);
}

async fn waiting_for_a_change_wakes_on_commit(f: Fixture) {
    let before = f.store.revision().await.unwrap();
    let waiter = {
        let s = f.store.clone();
        tokio::spawn(async move { s.wait_for_change(before).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert!(!waiter.is_finished(), "nothing changed yet");
    f.store
        .apply(&[put(tenant("a", "x"))], "ann", false)
        .await
        .unwrap();
    let woke = tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(woke > before);
}

async fn root_authorities_are_added_activated_and_retired(f: Fixture) {
    let root = |id: &str, created_at: &str, activated_at: Option<&str>| weft_store::RootAuthority {
        id: id.into(),
        trust_domain: "acme".into(),
        cert_pem: format!("cert {id}"),
        key_pem: format!("key {id}"),
        created_at: created_at.into(),
        activated_at: activated_at.map(str::to_string),
        retired_at: None,
    };
    let changes = f.store.credential_changes();
    f.store
        .add_root_authority(&root("b", "2026-02-01T00:00:00Z", None))
        .await
        .unwrap();
    f.store
        .add_root_authority(&root(
            "a",
            "2026-01-01T00:00:00Z",
            Some("2026-01-01T00:00:00Z"),
        ))
        .await
        .unwrap();
    // Adding it again changes nothing.
    f.store
        .add_root_authority(&root("a", "2026-03-01T00:00:00Z", None))
        .await
        .unwrap();
    assert!(changes.has_changed().unwrap(), "edges are woken");
    let ids = |roots: Vec<weft_store::RootAuthority>| -> Vec<String> {
        roots.into_iter().map(|r| r.id).collect()
    };
    assert_eq!(ids(f.store.root_authorities().await.unwrap()), ["a", "b"]);
    assert!(f.store.activate_root_authority("b").await.unwrap());
    let live = f.store.root_authorities().await.unwrap();
    assert!(live[1].activated_at.as_deref() > live[0].activated_at.as_deref());
    assert!(f.store.retire_root_authority("a").await.unwrap());
    assert!(
        !f.store.retire_root_authority("a").await.unwrap(),
        "retired once"
    );
    assert!(
        !f.store.activate_root_authority("a").await.unwrap(),
        "a retired root stays retired"
    );
    assert!(!f.store.activate_root_authority("nope").await.unwrap());
    assert_eq!(ids(f.store.root_authorities().await.unwrap()), ["b"]);
    let all = f.store.all_root_authorities().await.unwrap();
    assert_eq!(all.len(), 2);
    assert!(all[0].retired_at.is_some() && all[0].key_pem == "key a");
}

async fn directory_publications_write_only_what_changed(f: Fixture) {
    let items = |pairs: &[(&str, &str)]| -> std::collections::BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let store = &f.store;
    assert_eq!(store.directory_revision().await.unwrap(), 0);
    let first = items(&[
        ("site", "{}"),
        ("service/shop/a", "1"),
        ("service/shop/b", "1"),
    ]);
    let (r1, written) = store
        .publish_directory("east", &first)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(written, 3);
    // The same entry again writes nothing and keeps the revision.
    assert_eq!(store.publish_directory("east", &first).await.unwrap(), None);
    assert_eq!(store.directory_revision().await.unwrap(), r1);
    // Another cluster; then one count changes and one service goes.
    let (r2, _) = store
        .publish_directory("west", &items(&[("site", "{}")]))
        .await
        .unwrap()
        .unwrap();
    let waiter = {
        let s = store.clone();
        tokio::spawn(async move { s.wait_for_directory(r2).await })
    };
    let (r3, written) = store
        .publish_directory("east", &items(&[("site", "{}"), ("service/shop/a", "2")]))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(written, 2);
    let woke = tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(woke, r3);
    let since: Vec<(String, String, Option<String>)> = store
        .directory_since(r2)
        .await
        .unwrap()
        .into_iter()
        .map(|row| (row.cluster, row.item, row.body))
        .collect();
    assert_eq!(
        since,
        vec![
            ("east".into(), "service/shop/a".into(), Some("2".into())),
            ("east".into(), "service/shop/b".into(), None),
        ]
    );
    // From the start: only live items, no tombstones.
    let live: Vec<String> = store
        .directory_since(0)
        .await
        .unwrap()
        .into_iter()
        .map(|row| format!("{}/{}", row.cluster, row.item))
        .collect();
    assert_eq!(live, ["east/site", "west/site", "east/service/shop/a"]);
    // A withdrawn cluster leaves tombstones only.
    let withdrawn = store.withdraw_directory("west").await.unwrap().unwrap();
    let rows = store.directory_since(r3).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].body.as_deref(), rows[0].revision),
        (None, withdrawn)
    );
}

macro_rules! suite {
    ($($test:ident),* $(,)?) => {
        mod on_sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() { super::$test(super::sqlite().await).await })*
        }
        mod on_postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() { super::$test(super::postgres().await).await })*
        }
    };
}

suite!(
    create_update_unchanged_and_versions,
    stale_version_is_a_conflict,
    concurrent_writers_of_one_version_exactly_one_wins,
    change_set_is_atomic_and_reports_every_refusal,
    children_and_parents_in_one_set_in_any_order,
    delete_is_refused_while_referenced,
    dry_run_checks_everything_and_writes_nothing,
    concurrent_writes_of_different_resources_all_succeed,
    singleton_kind_allows_one,
    audit_chain_detects_edits_and_removals,
    audit_chain_detects_a_cut_off_end,
    audit_filters_by_path_actor_and_time,
    tokens_are_found_by_hash_and_revoked,
    reopening_keeps_everything,
    change_feed_lists_committed_changes_in_order,
    change_feed_is_bounded_and_says_so,
    waiting_for_a_change_wakes_on_commit,
    root_authorities_are_added_activated_and_retired,
    directory_publications_write_only_what_changed,
);

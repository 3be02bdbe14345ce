//! Resource endpoints, generic over the kind descriptors:
//! `GET|PUT|POST|DELETE /v1/<hierarchical path>` and the atomic bulk
//! endpoints `POST /v1/apply` and `POST /v1/delete` that the CLI uses.
//!
//! Every write goes through [`write`]: validate every document (all problems
//! at once), check each against its parent, authorize each, then hand the
//! whole change set to the store, which applies it in one transaction.

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use weft_api::conflicts::Placed;
use weft_api::{Problems, Resource, Validated, Verb, validate};
use weft_store::{Applied, Change, Expect, Outcome, Reason, StoreError};

use crate::AppState;
use crate::error::{ApiError, Detail};
use crate::iam::{Caller, record_denial};
use crate::request::{CollectionUrl, ItemUrl, JsonBody, ResourceUrl, Target};

/// `POST /v1/apply` and `POST /v1/delete`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BulkRequest {
    pub resources: Vec<Value>,
    #[serde(default)]
    pub dry_run: bool,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BulkResponse {
    pub dry_run: bool,
    pub results: Vec<Applied>,
    /// Accepted, but worth knowing: what depends on running instances
    /// (a route's subset none carries right now).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<weft_api::analysis::Finding>,
}

#[derive(Debug, Serialize)]
pub struct List {
    pub items: Vec<Resource>,
    /// The store revision the list was read at: watch from here.
    pub revision: i64,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeleteQuery {
    /// Delete only if the resource is still at this version.
    pub resource_version: Option<i64>,
}

/// What a request wants done with its documents.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// Create or update each.
    Apply,
    /// Create each; it must not exist yet.
    Create,
    Delete,
}

/// `GET`: one resource, or a collection filtered to what the caller may read.
pub async fn read(
    State(state): State<AppState>,
    ResourceUrl(target): ResourceUrl,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    match target {
        Target::Item { kind, path } => {
            caller
                .require(&state.store, Verb::Read, kind.name, &path)
                .await?;
            let stored = state
                .store
                .get(&path)
                .await?
                .ok_or_else(|| ApiError::not_found(format!("{path} does not exist")))?;
            let mut items = vec![stored.resource];
            with_edge_status(&state, kind.name, &mut items, &[path]).await?;
            Ok(Json(
                serde_json::to_value(&items[0]).expect("a resource serializes"),
            ))
        }
        Target::Collection { kind, parent } => {
            // Read before listing: a watch from here may repeat a change
            // the list already shows, but never misses one.
            let revision = state.store.revision().await?;
            let (paths, mut items): (Vec<String>, Vec<weft_api::Resource>) = state
                .store
                .list(kind.name)
                .await?
                .into_iter()
                .filter(|s| parent.as_ref().is_none_or(|p| &s.parent == p))
                .filter(|s| caller.can(Verb::Read, kind.name, &s.path))
                .map(|s| (s.path, s.resource))
                .unzip();
            with_edge_status(&state, kind.name, &mut items, &paths).await?;
            Ok(Json(
                serde_json::to_value(List { items, revision }).expect("a list serializes"),
            ))
        }
    }
}

/// Clusters carry their edge's last report as `status`; Gateways, what
/// the edges report of the gateways running them.
async fn with_edge_status(
    state: &AppState,
    kind: &str,
    items: &mut [weft_api::Resource],
    paths: &[String],
) -> Result<(), ApiError> {
    if kind != "Cluster" && kind != "Gateway" {
        return Ok(());
    }
    let reports = state.store.edge_reports().await?;
    for (item, path) in items.iter_mut().zip(paths) {
        item.status = Some(if kind == "Cluster" {
            let report = reports.iter().find(|r| r.cluster == item.metadata.name);
            crate::edges::cluster_status(report)
        } else {
            crate::edges::gateway_status(&reports, path, item)
        });
    }
    Ok(())
}

/// Any other method on a resource URL: 405, with what that URL takes.
pub async fn other_method(
    method: axum::http::Method,
    ResourceUrl(target): ResourceUrl,
) -> ApiError {
    let allow = match target {
        Target::Collection { .. } => crate::request::COLLECTION_METHODS,
        Target::Item { .. } => crate::request::ITEM_METHODS,
    };
    ApiError::method_not_allowed(method.as_str(), allow)
}

/// `PUT` on an item: create or update it; the document must name it.
pub async fn replace(
    State(state): State<AppState>,
    ItemUrl { path, .. }: ItemUrl,
    caller: Caller,
    JsonBody(doc): JsonBody<Value>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    single(
        write(
            &state,
            &caller,
            vec![doc],
            Mode::Apply,
            false,
            Some(Pin::Item(&path)),
        )
        .await?,
    )
}

/// `POST` on a collection: create a resource in it.
pub async fn create(
    State(state): State<AppState>,
    CollectionUrl { kind, parent }: CollectionUrl,
    caller: Caller,
    JsonBody(doc): JsonBody<Value>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let collection = match parent.filter(|p| !p.is_empty()) {
        Some(parent) => format!("{parent}/{}", kind.plural),
        None => kind.plural.to_string(),
    };
    let pin = Pin::Collection(&collection);
    single(write(&state, &caller, vec![doc], Mode::Create, false, Some(pin)).await?)
}

/// `DELETE` on an item, optionally only at `?resourceVersion=N`.
pub async fn remove(
    State(state): State<AppState>,
    ItemUrl { kind, path }: ItemUrl,
    caller: Caller,
    Query(query): Query<DeleteQuery>,
) -> Result<Json<Value>, ApiError> {
    caller
        .require(&state.store, Verb::Delete, kind.name, &path)
        .await?;
    let expect = query
        .resource_version
        .map_or(Expect::Present, Expect::Version);
    let changes = [Change::Delete { path, expect }];
    crate::conflicts::check(&state, &caller, &changes, &[0]).await?;
    let applied = store_apply(&state, &caller, &changes, &[None], false).await?;
    Ok(Json(serde_json::to_value(&applied[0]).expect("serializes")))
}

/// `POST /v1/apply`: every document is stored, or none is.
pub async fn apply(
    state: State<AppState>,
    caller: Caller,
    body: JsonBody<BulkRequest>,
) -> Result<Json<BulkResponse>, ApiError> {
    bulk(state, caller, body, Mode::Apply).await
}

/// `POST /v1/delete`: deletes what the documents name, all or nothing.
pub async fn delete_documents(
    state: State<AppState>,
    caller: Caller,
    body: JsonBody<BulkRequest>,
) -> Result<Json<BulkResponse>, ApiError> {
    bulk(state, caller, body, Mode::Delete).await
}

async fn bulk(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(request): JsonBody<BulkRequest>,
    mode: Mode,
) -> Result<Json<BulkResponse>, ApiError> {
    let results = write(
        &state,
        &caller,
        request.resources,
        mode,
        request.dry_run,
        None,
    )
    .await?;
    let placed: Vec<Placed> = results
        .iter()
        .filter_map(|a| {
            Some(Placed {
                path: &a.path,
                parent: "",
                resource: a.after.as_ref()?,
            })
        })
        .collect();
    let warnings = crate::analyze::running_warnings(&state, &placed).await?;
    Ok(Json(BulkResponse {
        dry_run: request.dry_run,
        results,
        warnings,
    }))
}

fn single(mut applied: Vec<Applied>) -> Result<(StatusCode, Json<Value>), ApiError> {
    let a = applied.remove(0);
    let status = if a.outcome == Outcome::Created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(serde_json::to_value(a.after).expect("serializes")),
    ))
}

fn details(document: usize, path: &str, problems: Problems) -> Vec<Detail> {
    problems
        .into_vec()
        .into_iter()
        .map(|p| Detail {
            document: Some(document),
            path: path.to_string(),
            field: p.field,
            message: p.message,
        })
        .collect()
}

/// What the URL of a single-resource request says its document must be.
#[derive(Clone, Copy)]
enum Pin<'a> {
    /// `PUT …/plural/name`: exactly this resource.
    Item(&'a str),
    /// `POST …/plural`: a resource in this collection.
    Collection(&'a str),
}

/// Validates, checks, authorizes and stores a set of documents atomically.
/// `pin` ties a single document to what its URL names.
async fn write(
    state: &AppState,
    caller: &Caller,
    docs: Vec<Value>,
    mode: Mode,
    dry_run: bool,
    pin: Option<Pin<'_>>,
) -> Result<Vec<Applied>, ApiError> {
    if docs.is_empty() {
        return Err(ApiError::bad_request("the request names no resources"));
    }
    let mut problems = Vec::new();
    let mut valid = Vec::new();
    for (i, doc) in docs.iter().enumerate() {
        match validate(doc) {
            Ok(v) => valid.push((i, v)),
            Err(p) => problems.extend(details(i, "", p)),
        }
    }
    if mode != Mode::Delete {
        problems.extend(check_against_parents(state, &valid).await?);
        problems.extend(check_gateway_targets(state, &valid).await?);
    }
    if !problems.is_empty() {
        let documents = problems
            .iter()
            .filter_map(|d| d.document)
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        return Err(ApiError::invalid(
            format!(
                "{documents} of {} documents have problems; nothing was stored",
                docs.len()
            ),
            problems,
        ));
    }
    if let (Some(pin), Some((_, v))) = (pin, valid.first()) {
        let collection = v.path.rsplit_once('/').map_or("", |(c, _)| c);
        match pin {
            Pin::Item(url) if v.path != url => {
                return Err(ApiError::bad_request(format!(
                    "the document names {}, but the URL names {url}",
                    v.path
                )));
            }
            Pin::Collection(url) if collection != url => {
                return Err(ApiError::bad_request(format!(
                    "the document names {}, which is not in the collection the URL names ({url})",
                    v.path
                )));
            }
            _ => {}
        }
    }

    let mut changes = Vec::with_capacity(valid.len());
    let mut documents = Vec::with_capacity(valid.len());
    let mut lacking = Vec::with_capacity(valid.len());
    let mut denied = Vec::new();
    for (i, v) in valid {
        let can = |verb| caller.can(verb, v.kind.name, &v.path);
        let (may_create, may_update) = (can(Verb::Create), can(Verb::Update));
        let expect = match (mode, v.expected_version) {
            (Mode::Delete, version) if can(Verb::Delete) => {
                version.map_or(Expect::Present, Expect::Version)
            }
            (Mode::Delete, _) => {
                denied.push((i, Verb::Delete, v));
                continue;
            }
            (Mode::Create, _) if may_create => Expect::Absent,
            (Mode::Apply, Some(version)) if may_update => Expect::Version(version),
            (Mode::Apply, None) if may_create && may_update => Expect::Any,
            (Mode::Apply, None) if may_create => Expect::Absent,
            (Mode::Apply, None) if may_update => Expect::Present,
            (Mode::Create, _) => {
                denied.push((i, Verb::Create, v));
                continue;
            }
            (Mode::Apply, _) => {
                denied.push((
                    i,
                    if may_create {
                        Verb::Update
                    } else {
                        Verb::Create
                    },
                    v,
                ));
                continue;
            }
        };
        // What a refusal of this change really means for this caller: a
        // create-only caller who meets an existing resource lacks update,
        // an update-only caller who meets none lacks create.
        lacking.push(match expect {
            Expect::Absent if mode == Mode::Apply && !may_update => {
                Some((Reason::Exists, Verb::Update))
            }
            Expect::Present if mode == Mode::Apply && !may_create => {
                Some((Reason::Missing, Verb::Create))
            }
            _ => None,
        });
        documents.push(i);
        changes.push(if mode == Mode::Delete {
            Change::Delete {
                path: v.path,
                expect,
            }
        } else {
            Change::put(v, expect)
        });
    }
    if let Some((_, verb, v)) = denied.first() {
        let mut error = caller.forbidden(*verb, v.kind.name, &v.path);
        let mut details = Vec::new();
        for (i, verb, v) in &denied {
            let message = caller.forbidden(*verb, v.kind.name, &v.path).body.message;
            record_denial(
                &state.store,
                &caller.user,
                *verb,
                v.kind.name,
                &v.path,
                &message,
            )
            .await;
            details.push(Detail {
                document: Some(*i),
                path: v.path.clone(),
                field: String::new(),
                message,
            });
        }
        if denied.len() > 1 {
            error.body.message = format!(
                "{} documents need permissions you lack; nothing was stored",
                denied.len()
            );
        }
        return Err(error.with_details(details));
    }
    crate::conflicts::check(state, caller, &changes, &documents).await?;
    store_apply(state, caller, &changes, &lacking, dry_run).await
}

/// Runs the change set and maps refusals. `lacking[i]` is the refusal
/// reason that, for change `i`, means the caller lacks a permission: then
/// the answer is a 403 naming it, not a conflict.
async fn store_apply(
    state: &AppState,
    caller: &Caller,
    changes: &[Change],
    lacking: &[Option<(Reason, Verb)>],
    dry_run: bool,
) -> Result<Vec<Applied>, ApiError> {
    crate::iam::check_someone_stays_admin(&state.store, changes).await?;
    match state.store.apply(changes, &caller.user, dry_run).await {
        Ok(applied) => {
            if !dry_run {
                for a in &applied {
                    let outcome = match a.outcome {
                        Outcome::Created => "created",
                        Outcome::Updated => "updated",
                        Outcome::Deleted => "deleted",
                        Outcome::Unchanged => continue,
                    };
                    state
                        .metrics
                        .changes
                        .get_or_create(&vec![("outcome", outcome)])
                        .inc();
                }
                crate::directory::withdraw_deleted_clusters(state, &applied).await;
            }
            Ok(applied)
        }
        Err(StoreError::Refused { refusals }) => {
            for r in &refusals {
                if let Some((_, verb)) = lacking[r.change].filter(|(reason, _)| *reason == r.reason)
                {
                    let kind =
                        weft_api::kinds::kind_of_path(&r.path).map_or("resource", |k| k.name);
                    caller.require(&state.store, verb, kind, &r.path).await?;
                }
            }
            Err(StoreError::Refused { refusals }.into())
        }
        Err(other) => Err(other.into()),
    }
}

/// A Gateway route to a service in a namespace that no workspace selects
/// (stored, or in the same request) can never reach anything: refused.
/// A service not deployed yet in a selected namespace is fine: manifests
/// may come before workloads.
async fn check_gateway_targets(
    state: &AppState,
    valid: &[(usize, Validated)],
) -> Result<Vec<Detail>, ApiError> {
    let gateways: Vec<&(usize, Validated)> = valid
        .iter()
        .filter(|(_, v)| v.kind.id == weft_api::KindId::Gateway)
        .collect();
    if gateways.is_empty() {
        return Ok(Vec::new());
    }
    let selector = |spec: &Value| -> Vec<String> {
        spec.get("namespaceSelector")
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default()
    };
    let mut selectors: Vec<String> = valid
        .iter()
        .filter(|(_, v)| v.kind.id == weft_api::KindId::Workspace)
        .flat_map(|(_, v)| selector(&v.resource.spec))
        .collect();
    for stored in state.store.list("Workspace").await? {
        selectors.extend(selector(&stored.resource.spec));
    }
    let selected = |namespace: &str| {
        selectors.iter().any(|entry| {
            entry
                .split_once('/')
                .is_some_and(|(_, ns)| ns == namespace || ns == "*")
        })
    };
    let mut problems = Vec::new();
    for (i, v) in gateways {
        let Ok(spec) =
            serde_json::from_value::<weft_api::gateway::GatewaySpec>(v.resource.spec.clone())
        else {
            continue;
        };
        let mut p = Problems::default();
        for (s, server) in spec.http.iter().enumerate() {
            for (r, route) in server.routes.iter().enumerate() {
                for (t, target) in route.to.iter().enumerate() {
                    let Ok((namespace, name)) = weft_api::gateway::parse_service(&target.service)
                    else {
                        continue;
                    };
                    if !selected(namespace) {
                        p.add(
                            format!("spec.http[{s}].routes[{r}].to[{t}].service"),
                            format!(
                                "no service {namespace}/{name} can exist: no workspace selects namespace {namespace}; apply its Workspace first (or in the same request)"
                            ),
                        );
                    }
                }
            }
        }
        problems.extend(details(*i, &v.path, p));
    }
    Ok(problems)
}

/// Runs each kind's check against its parent (a group's namespaces must lie
/// within its workspace's). The parent comes from the same request or the
/// store; a missing parent is left to the store's reference check.
async fn check_against_parents(
    state: &AppState,
    valid: &[(usize, Validated)],
) -> Result<Vec<Detail>, ApiError> {
    let mut problems = Vec::new();
    for (i, v) in valid {
        if !v.kind.checks_parent() || v.parent.is_empty() {
            continue;
        }
        let parent_spec = match valid.iter().find(|(_, p)| p.path == v.parent) {
            Some((_, p)) => Some(p.resource.spec.clone()),
            None => state.store.get(&v.parent).await?.map(|s| s.resource.spec),
        };
        if let Some(parent_spec) = parent_spec {
            let mut p = Problems::default();
            v.kind
                .check_against_parent(&v.resource.spec, &parent_spec, &mut p);
            problems.extend(details(*i, &v.path, p));
        }
    }
    Ok(problems)
}

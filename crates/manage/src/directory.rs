//! The global directory, the server's side. Each edge publishes its own
//! cluster's entry (`PUT /v1/edge/directory`: its site and its services
//! with healthy-instance counts, never endpoints) and follows every other
//! cluster's (`GET /v1/edge/directory?since=R&wait=S`: a long poll that
//! answers with the items changed after directory revision R, or with
//! everything when R is 0 or unknown). A publication that changes nothing
//! writes nothing, and a follower that comes back with its revision gets
//! only what it missed, so edges reconnecting after an outage cause no
//! resync storm.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use weft_api::edge::{DirectoryChange, DirectoryEntry, DirectoryItem, DirectoryUpdate, Locality};
use weft_api::kinds::top_level_path;
use weft_api::problems::check_dns_label;
use weft_identity::transport::Peer;
use weft_store::Applied;

use crate::AppState;
use crate::edge_port::require_edge_certificate;
use crate::edges::edge_cluster;
use crate::error::{ApiError, Detail};
use crate::request::JsonBody;

/// Longest long poll a follower may ask for.
const MAX_WAIT: Duration = Duration::from_secs(60);

/// Where `cluster` is, from its Cluster resource (default when it has
/// none: the edge's credential check has already found the cluster).
pub(crate) async fn locality_of(state: &AppState, cluster: &str) -> Result<Locality, ApiError> {
    let Some(stored) = state.store.get(&top_level_path("Cluster", cluster)).await? else {
        return Ok(Locality::default());
    };
    let spec = &stored.resource.spec;
    let text = |key: &str| {
        spec.get(key)
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    Ok(Locality {
        region: text("region"),
        zone: text("zone"),
        network: text("network"),
        labels: stored.resource.metadata.labels.clone(),
    })
}

/// Every problem of an entry, by field path.
fn check_entry(entry: &DirectoryEntry) -> Vec<Detail> {
    let mut problems = Vec::new();
    let mut problem = |field: String, message: String| {
        problems.push(Detail {
            field,
            message,
            ..Detail::default()
        })
    };
    for (i, gateway) in entry.site.gateways.iter().enumerate() {
        if gateway.parse::<std::net::SocketAddr>().is_err() {
            problem(
                format!("site.gateways[{i}]"),
                format!("{gateway:?} is not IP:PORT"),
            );
        }
    }
    let mut seen = BTreeSet::new();
    for (i, service) in entry.services.iter().enumerate() {
        let at = format!("services[{i}]");
        for (field, value) in [("namespace", &service.namespace), ("name", &service.name)] {
            if let Err(e) = check_dns_label(value) {
                problem(format!("{at}.{field}"), e);
            }
        }
        for (j, account) in service.service_accounts.iter().enumerate() {
            if let Err(e) = check_dns_label(account) {
                problem(format!("{at}.serviceAccounts[{j}]"), e);
            }
        }
        if !seen.insert((&service.namespace, &service.name)) {
            problem(
                at,
                format!("{}.{} is listed twice", service.name, service.namespace),
            );
        }
    }
    let mut hostnames = BTreeSet::new();
    for (i, ingress) in entry.ingress.iter().enumerate() {
        let at = format!("ingress[{i}]");
        let name = ingress
            .hostname
            .strip_prefix("*.")
            .unwrap_or(&ingress.hostname);
        if let Err(e) = weft_api::problems::check_dns_name(name) {
            problem(format!("{at}.hostname"), e);
        }
        if !hostnames.insert(&ingress.hostname) {
            problem(at.clone(), format!("{} is listed twice", ingress.hostname));
        }
        for (j, identity) in ingress.identities.iter().enumerate() {
            let valid = identity
                .split_once('/')
                .is_some_and(|(ns, sa)| check_dns_label(ns).is_ok() && check_dns_label(sa).is_ok());
            if !valid {
                problem(
                    format!("{at}.identities[{j}]"),
                    format!("{identity:?} is not namespace/serviceAccount"),
                );
            }
        }
    }
    problems
}

/// What a publication did.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Published {
    /// The directory revision it was written at; none: nothing changed.
    pub revision: Option<i64>,
    pub items_written: usize,
}

pub async fn publish(
    State(state): State<AppState>,
    headers: HeaderMap,
    Extension(peer): Extension<Peer>,
    JsonBody(mut entry): JsonBody<DirectoryEntry>,
) -> Result<Json<Published>, ApiError> {
    let cluster = edge_cluster(&state, &headers).await?;
    require_edge_certificate(&peer, &cluster)?;
    let problems = check_entry(&entry);
    if !problems.is_empty() {
        return Err(ApiError::invalid(
            format!("the directory entry of cluster {cluster} has problems"),
            problems,
        ));
    }
    // Where a cluster is comes from its Cluster resource, whatever the
    // edge says.
    entry.site.locality = locality_of(&state, &cluster).await?;
    let items: BTreeMap<String, String> = entry
        .items()
        .iter()
        .map(|item| (item.key(), serde_json::to_string(item).unwrap_or_default()))
        .collect();
    let published = state.store.publish_directory(&cluster, &items).await?;
    let metrics = &state.metrics;
    let outcome = if published.is_some() {
        "changed"
    } else {
        "unchanged"
    };
    metrics
        .directory_publications
        .get_or_create(&vec![("outcome", outcome)])
        .inc();
    let (revision, items_written) = match published {
        Some((revision, written)) => {
            metrics.directory_items_written.inc_by(written as u64);
            tracing::debug!(%cluster, revision, written, "directory entry published");
            (Some(revision), written)
        }
        None => (None, 0),
    };
    Ok(Json(Published {
        revision,
        items_written,
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FollowQuery {
    /// The directory revision the edge has; 0: none yet.
    #[serde(default)]
    pub since: i64,
    /// Seconds to wait for a change before answering with none.
    #[serde(default)]
    pub wait: u64,
}

/// The other clusters' items in `rows`.
fn changes(rows: Vec<weft_store::DirectoryRow>, own: &str) -> Vec<DirectoryChange> {
    rows.into_iter()
        .filter(|row| row.cluster != own)
        .filter_map(|row| {
            let item = match row.body.as_deref().map(serde_json::from_str::<DirectoryItem>) {
                None => None,
                Some(Ok(item)) => Some(item),
                Some(Err(error)) => {
                    tracing::error!(cluster = %row.cluster, item = %row.item, %error, "unreadable directory item left out");
                    return None;
                }
            };
            Some(DirectoryChange {
                cluster: row.cluster,
                key: row.item,
                item,
            })
        })
        .collect()
}

pub async fn follow(
    State(state): State<AppState>,
    headers: HeaderMap,
    Extension(peer): Extension<Peer>,
    Query(query): Query<FollowQuery>,
) -> Result<Json<DirectoryUpdate>, ApiError> {
    let cluster = edge_cluster(&state, &headers).await?;
    require_edge_certificate(&peer, &cluster)?;
    let store = &state.store;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(query.wait).min(MAX_WAIT);
    let current = store.directory_revision().await?;
    // A revision this store never reached (another installation, a
    // restored backup) is as good as none.
    if query.since <= 0 || query.since > current {
        let changes = changes(store.directory_since(0).await?, &cluster);
        return Ok(Json(DirectoryUpdate {
            revision: current,
            full: true,
            changes,
        }));
    }
    let mut since = query.since;
    loop {
        let current = store.directory_revision().await?;
        if current > since {
            let rows = store.directory_since(since).await?;
            let revision = rows.iter().map(|r| r.revision).fold(current, i64::max);
            let changes = changes(rows, &cluster);
            if !changes.is_empty() {
                return Ok(Json(DirectoryUpdate {
                    revision,
                    full: false,
                    changes,
                }));
            }
            // Only this cluster's own publications: nothing to send.
            since = revision;
        }
        tokio::select! {
            waited = store.wait_for_directory(since) => { waited?; }
            () = state.stopping() => {
                return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "stopping", "the server is stopping")
                    .with_hint("the edge keeps routing with the directory it has and asks again"));
            }
            () = tokio::time::sleep_until(deadline) => {
                return Ok(Json(DirectoryUpdate { revision: since, full: false, changes: Vec::new() }));
            }
        }
    }
}

/// Clusters deleted by `applied` leave the directory, so no edge keeps
/// sending traffic to them.
pub(crate) async fn withdraw_deleted_clusters(state: &AppState, applied: &[Applied]) {
    for a in applied {
        if a.kind != "Cluster" || a.outcome != weft_store::Outcome::Deleted {
            continue;
        }
        let Some(name) = a.before.as_ref().map(|r| r.metadata.name.clone()) else {
            continue;
        };
        if let Err(error) = state.store.withdraw_directory(&name).await {
            tracing::error!(cluster = %name, %error, "cannot withdraw a deleted cluster's directory entry; other edges keep its last entry");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_api::edge::{DirectoryService, Site};

    #[test]
    fn a_bad_entry_names_every_problem_by_field() {
        let service = |namespace: &str, name: &str, account: &str| DirectoryService {
            namespace: namespace.into(),
            name: name.into(),
            healthy: 1,
            service_accounts: vec![account.into()],
        };
        let entry = DirectoryEntry {
            site: Site {
                locality: Locality::default(),
                gateways: vec!["10.0.0.1:15443".into(), "gateway".into()],
            },
            services: vec![
                service("shop", "reviews", "reviews"),
                service("shop", "Reviews", "x_y"),
                service("shop", "reviews", "reviews"),
            ],
            ingress: vec![
                weft_api::edge::DirectoryIngress {
                    hostname: "*.shop.example.com".into(),
                    healthy: 1,
                    identities: vec!["edge/ingress".into(), "ingress".into()],
                },
                weft_api::edge::DirectoryIngress {
                    hostname: "shop..example".into(),
                    healthy: 1,
                    identities: Vec::new(),
                },
            ],
        };
        let problems: Vec<(String, bool)> = check_entry(&entry)
            .into_iter()
            .map(|d| (d.field, !d.message.is_empty()))
            .collect();
        assert_eq!(
            problems,
            vec![
                ("site.gateways[1]".to_string(), true),
                ("services[1].name".to_string(), true),
                ("services[1].serviceAccounts[0]".to_string(), true),
                ("services[2]".to_string(), true),
                ("ingress[0].identities[1]".to_string(), true),
                ("ingress[1].hostname".to_string(), true),
            ]
        );
        let good = DirectoryEntry {
            services: vec![service("shop", "reviews", "reviews")],
            ..DirectoryEntry::default()
        };
        assert!(check_entry(&good).is_empty());
    }
}

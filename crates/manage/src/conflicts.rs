//! Refusing at apply what would conflict once stored
//! ([`weft_api::conflicts`]): the configuration after the change set is
//! checked, and a conflict it would add (not one already stored) refuses
//! the whole set with the field paths of both sides. A side the caller
//! may not read is named only as "a resource you may not read".

use std::collections::{BTreeMap, BTreeSet};

use axum::http::StatusCode;
use weft_api::Resource;
use weft_api::Verb;
use weft_api::conflicts::{Conflict, INVOLVED as KINDS, Placed, find};
use weft_api::kinds::kind_of_path;
use weft_store::Change;

use crate::AppState;
use crate::error::{ApiError, Detail};
use crate::iam::Caller;

type Resources = BTreeMap<String, (String, Resource)>;

fn conflicts_in(resources: &Resources) -> Vec<Conflict> {
    let placed: Vec<Placed> = resources
        .iter()
        .map(|(path, (parent, resource))| Placed {
            path,
            parent,
            resource,
        })
        .collect();
    find(&placed)
}

/// What each conflict is keyed by, to tell new ones from old.
fn key(c: &Conflict) -> (String, String, String, String) {
    (
        c.path.clone(),
        c.field.clone(),
        c.other_path.clone(),
        c.other_field.clone(),
    )
}

/// Refuses `changes` (`documents[i]` is change `i`'s document in the
/// request) if they would add a conflict.
pub async fn check(
    state: &AppState,
    caller: &Caller,
    changes: &[Change],
    documents: &[usize],
) -> Result<(), ApiError> {
    let touches = changes
        .iter()
        .any(|c| kind_of_path(c.path()).is_some_and(|k| KINDS.contains(&k.name)));
    if !touches {
        return Ok(());
    }
    let mut before: Resources = BTreeMap::new();
    for kind in KINDS {
        for stored in state.store.list(kind).await? {
            before.insert(stored.path, (stored.parent, stored.resource));
        }
    }
    let mut after = before.clone();
    let mut changed: BTreeMap<&str, usize> = BTreeMap::new();
    for (change, &document) in changes.iter().zip(documents) {
        changed.insert(change.path(), document);
        match change {
            Change::Put {
                path,
                parent,
                resource,
                ..
            } => {
                if kind_of_path(path).is_some_and(|k| KINDS.contains(&k.name)) {
                    after.insert(path.clone(), (parent.clone(), resource.clone()));
                }
            }
            Change::Delete { path, .. } => {
                after.remove(path);
            }
        }
    }
    let old: BTreeSet<_> = conflicts_in(&before).iter().map(key).collect();
    let mut details = Vec::new();
    for mut conflict in conflicts_in(&after) {
        if old.contains(&key(&conflict)) {
            continue;
        }
        // Blame the side this request changes.
        if !changed.contains_key(conflict.path.as_str())
            && changed.contains_key(conflict.other_path.as_str())
        {
            std::mem::swap(&mut conflict.path, &mut conflict.other_path);
            std::mem::swap(&mut conflict.field, &mut conflict.other_field);
        }
        let readable =
            |path: &str| kind_of_path(path).is_some_and(|k| caller.can(Verb::Read, k.name, path));
        let other = if conflict.other_path.is_empty() {
            String::new()
        } else if readable(&conflict.other_path) {
            format!(
                " (the other side: {} {})",
                conflict.other_path, conflict.other_field
            )
        } else {
            " (the other side is a resource you may not read)".to_string()
        };
        details.push(Detail {
            document: changed.get(conflict.path.as_str()).copied(),
            path: conflict.path.clone(),
            field: conflict.field.clone(),
            message: format!("{}{other}", conflict.message),
        });
        if !conflict.other_path.is_empty() && readable(&conflict.other_path) {
            details.push(Detail {
                document: changed.get(conflict.other_path.as_str()).copied(),
                path: conflict.other_path.clone(),
                field: conflict.other_field.clone(),
                message: format!(
                    "the other side of the conflict at {} {}",
                    conflict.path, conflict.field
                ),
            });
        }
    }
    if details.is_empty() {
        return Ok(());
    }
    let conflicts = details
        .iter()
        .filter(|d| !d.message.starts_with("the other side of"))
        .count();
    Err(ApiError::new(
        StatusCode::CONFLICT,
        "conflict",
        format!(
            "{conflicts} conflict(s) with the stored or submitted configuration; nothing was stored"
        ),
    )
    .with_details(details)
    .with_hint("change one side so both can apply (the edge would apply only one); weft analyze lists what is already stored"))
}

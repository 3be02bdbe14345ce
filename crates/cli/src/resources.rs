//! `weft apply`, `get`, `delete` and `diff`.

use std::path::PathBuf;

use reqwest::Method;
use serde_json::Value;
use weft_api::kinds::{TOP_LEVEL, child_path};
use weft_api::{Kind, Resource};
use weft_manage::request::MAX_BODY_BYTES;
use weft_manage::resources::{BulkRequest, BulkResponse};
use weft_store::{Applied, Outcome};

use crate::client::{CliError, Client, Exit};
use crate::manifests;
use crate::output::{self, Format};

/// Where in the hierarchy a `get` or `delete` looks.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Place {
    /// The tenant the resource is in
    #[arg(long)]
    pub tenant: Option<String>,
    /// The workspace the resource is in (with --tenant)
    #[arg(long)]
    pub workspace: Option<String>,
    /// The traffic group the resource is in (with --tenant and --workspace)
    #[arg(long)]
    pub traffic_group: Option<String>,
    /// The security group the resource is in (with --tenant and --workspace)
    #[arg(long)]
    pub security_group: Option<String>,
    /// The gateway group the resource is in (with --tenant and --workspace)
    #[arg(long)]
    pub gateway_group: Option<String>,
}

impl Place {
    /// The node the flags name: its path and kind ("" for the top level).
    fn node(&self) -> Result<(String, &'static str), CliError> {
        let given = [
            ("--tenant", "Tenant", &self.tenant),
            ("--workspace", "Workspace", &self.workspace),
            ("--traffic-group", "TrafficGroup", &self.traffic_group),
            ("--security-group", "SecurityGroup", &self.security_group),
            ("--gateway-group", "GatewayGroup", &self.gateway_group),
        ];
        let mut path = String::new();
        let mut node_kind = TOP_LEVEL;
        for (flag, kind_name, value) in given {
            let Some(name) = value else { continue };
            let kind = Kind::named(kind_name).expect("hierarchy kinds exist");
            if !kind.parents.contains(&node_kind) {
                let needs = kind.parents.first().copied().unwrap_or(TOP_LEVEL);
                return Err(CliError::new(
                    Exit::Invalid,
                    format!("{flag} needs the {} it is in", needs.to_lowercase()),
                )
                .with_hint(
                    "give every level above it: --tenant T --workspace W --traffic-group G",
                ));
            }
            path = child_path(&path, kind, name);
            node_kind = kind.name;
        }
        Ok((path, node_kind))
    }

    /// The API path of `kind` resources here, or of the one named `name`.
    fn api_path(&self, kind: &Kind, name: Option<&str>) -> Result<String, CliError> {
        let (node, node_kind) = self.node()?;
        let anywhere = node.is_empty() && name.is_none();
        if !anywhere && !kind.parents.contains(&node_kind) {
            return Err(CliError::new(
                Exit::Invalid,
                format!("a {} sits under {}", kind.name, kind.places()),
            )
            .with_hint("name where it is with --tenant, --workspace and the group flags"));
        }
        let collection = if node.is_empty() {
            kind.plural.to_string()
        } else {
            format!("{node}/{}", kind.plural)
        };
        Ok(match name {
            Some(name) => format!("{collection}/{name}"),
            None => collection,
        })
    }
}

/// The kind a user typed, or a usage error listing the kinds.
pub fn kind_named(word: &str) -> Result<&'static Kind, CliError> {
    Kind::lookup(word).ok_or_else(|| {
        let known: Vec<&str> = weft_api::KINDS.iter().map(|k| k.plural).collect();
        CliError::new(Exit::Invalid, format!("unknown kind {word:?}"))
            .with_hint(format!("kinds: {}", known.join(", ")))
    })
}

async fn bulk(
    client: &Client,
    endpoint: &str,
    files: &[PathBuf],
    dry_run: bool,
) -> Result<(Vec<String>, BulkResponse), CliError> {
    let documents = manifests::read(files)?;
    let sources: Vec<String> = documents.iter().map(|d| d.source.clone()).collect();
    let request = BulkRequest {
        resources: documents.into_iter().map(|d| d.value).collect(),
        dry_run,
    };
    // Said here rather than by a 413, which can arrive as a reset connection
    // while the body is still being sent.
    let size = serde_json::to_vec(&request).map_or(0, |b| b.len());
    if size > MAX_BODY_BYTES {
        return Err(CliError::new(
            Exit::Invalid,
            format!("the manifests make a request of {size} bytes; the server takes at most {MAX_BODY_BYTES}"),
        )
        .with_hint("apply them in parts (one directory at a time)"));
    }
    let response = client
        .send(Method::POST, endpoint, Some(&request))
        .await
        .map_err(|e| e.with_sources(&sources))?;
    Ok((sources, response))
}

fn report_results(results: &[Applied], dry_run: bool) {
    let suffix = if dry_run { " (dry run)" } else { "" };
    for r in results {
        let word = match r.outcome {
            Outcome::Created => "created",
            Outcome::Updated => "configured",
            Outcome::Unchanged => "unchanged",
            Outcome::Deleted => "deleted",
        };
        println!("{} {word}{suffix}", r.path);
    }
}

pub async fn apply(client: &Client, files: &[PathBuf], dry_run: bool) -> Result<(), CliError> {
    let (_, response) = bulk(client, "apply", files, dry_run).await?;
    report_results(&response.results, dry_run);
    for w in &response.warnings {
        eprintln!("warning: {} {}: {}", w.path, w.field, w.message);
    }
    Ok(())
}

pub async fn delete_files(
    client: &Client,
    files: &[PathBuf],
    dry_run: bool,
) -> Result<(), CliError> {
    let (_, response) = bulk(client, "delete", files, dry_run).await?;
    report_results(&response.results, dry_run);
    Ok(())
}

pub async fn delete_one(
    client: &Client,
    kind: &str,
    name: &str,
    place: &Place,
) -> Result<(), CliError> {
    let path = place.api_path(kind_named(kind)?, Some(name))?;
    let applied: Applied = client.send(Method::DELETE, &path, None::<&()>).await?;
    report_results(&[applied], false);
    Ok(())
}

/// Shows what `apply` would change, as a unified diff of YAML per resource.
/// Returns whether anything differs.
pub async fn diff(client: &Client, files: &[PathBuf]) -> Result<bool, CliError> {
    let (_, response) = bulk(client, "apply", files, true).await?;
    let render = |r: &Option<Resource>| {
        r.as_ref()
            .map_or(String::new(), |r| output::yaml(&r.desired()))
    };
    let mut differs = false;
    for r in &response.results {
        let text = output::diff(
            &render(&r.before),
            &render(&r.after),
            &format!("{} (live)", r.path),
            &format!("{} (manifest)", r.path),
        );
        if !text.is_empty() {
            differs = true;
            print!("{text}");
        }
    }
    Ok(differs)
}

pub async fn get(
    client: &Client,
    kind: &str,
    name: Option<&str>,
    place: &Place,
    format: Format,
) -> Result<(), CliError> {
    let kind = kind_named(kind)?;
    let path = place.api_path(kind, name)?;
    let items: Vec<Resource> = if name.is_some() {
        vec![client.get(&path).await?]
    } else {
        let list: Value = client.get(&path).await?;
        serde_json::from_value(list["items"].clone()).map_err(|e| {
            CliError::new(
                Exit::Failed,
                format!("unexpected list from the server: {e}"),
            )
        })?
    };
    match (format, name) {
        (Format::Json, Some(_)) => print!("{}", output::json(&items[0])),
        (Format::Json, None) => print!("{}", output::json(&items)),
        (Format::Yaml, _) => {
            let docs: Vec<String> = items.iter().map(output::yaml).collect();
            print!("{}", docs.join("---\n"));
        }
        (Format::Table, _) if items.is_empty() => eprintln!("no {} found", kind.plural),
        (Format::Table, _) => print!("{}", resource_table(kind, &items)),
    }
    Ok(())
}

fn resource_table(kind: &Kind, items: &[Resource]) -> String {
    let nested = kind.parents != [TOP_LEVEL];
    let mut headers = vec!["NAME"];
    if nested {
        headers.push("PARENT");
    }
    headers.extend(kind.columns.iter().map(|(header, _)| *header));
    headers.extend(["VERSION", "AGE"]);
    let rows: Vec<Vec<String>> =
        items
            .iter()
            .map(|r| {
                let mut row = vec![r.metadata.name.clone()];
                if nested {
                    let parent =
                        r.metadata
                            .parents()
                            .iter()
                            .fold(String::new(), |path, (_, k, n)| {
                                Kind::named(k).map_or(path.clone(), |k| child_path(&path, k, n))
                            });
                    row.push(if parent.is_empty() {
                        "(top level)".into()
                    } else {
                        parent
                    });
                }
                row.extend(kind.columns.iter().map(
                    |(_, field)| match field.strip_prefix("status.") {
                        Some(field) => output::cell(r.status.as_ref().and_then(|s| s.get(field))),
                        None => output::cell(r.spec.get(*field)),
                    },
                ));
                row.push(r.metadata.resource_version.clone().unwrap_or_default());
                row.push(output::age(r.metadata.created_at.as_deref()));
                row
            })
            .collect();
    output::table(&headers, &rows)
}

//! `weft analyze`: conflicts and warnings in the stored configuration
//! (`GET /v1/analyze`), or in manifests, offline.

use std::path::PathBuf;

use weft_api::analysis::{Finding, Report, Severity, analyze};
use weft_api::conflicts::Placed;
use weft_api::validate::validate;

use crate::client::{CliError, Client, Exit};
use crate::manifests;
use crate::output::{Format, json, table, yaml};

/// The findings of `files` (every document valid), offline.
fn of_manifests(files: &[PathBuf]) -> Result<Report, CliError> {
    let mut valid = Vec::new();
    for doc in manifests::read(files)? {
        let v = validate(&doc.value).map_err(|problems| {
            let first = problems
                .iter()
                .next()
                .map(|p| format!("{} {}", p.field, p.message));
            CliError::new(
                Exit::Invalid,
                format!(
                    "{}: not a valid resource: {}",
                    doc.source,
                    first.unwrap_or_default()
                ),
            )
            .with_hint("weft apply --dry-run lists every problem")
        })?;
        valid.push(v);
    }
    let placed: Vec<Placed> = valid
        .iter()
        .map(|v| Placed {
            path: &v.path,
            parent: &v.parent,
            resource: &v.resource,
        })
        .collect();
    Ok(Report {
        findings: analyze(&placed),
    })
}

fn render(findings: &[Finding]) -> String {
    if findings.is_empty() {
        return "no conflicts, no warnings\n".into();
    }
    let rows: Vec<Vec<String>> = findings
        .iter()
        .map(|f| {
            let mut message = f.message.clone();
            if !f.other_path.is_empty() {
                message.push_str(&format!(
                    " [other side: {} {}]",
                    f.other_path, f.other_field
                ));
            }
            vec![
                match f.severity {
                    Severity::Conflict => "conflict".into(),
                    Severity::Warning => "warning".into(),
                },
                format!("{} {}", f.path, f.field).trim().to_string(),
                message,
            ]
        })
        .collect();
    table(&["SEVERITY", "WHERE", "WHAT"], &rows)
}

/// Prints the findings; conflicts make it fail (exit 4), warnings not.
pub async fn run(
    client: Option<&Client>,
    files: &[PathBuf],
    format: Format,
) -> Result<(), CliError> {
    let report = match client {
        Some(client) if files.is_empty() => client.get("analyze").await?,
        _ => of_manifests(files)?,
    };
    match format {
        Format::Table => print!("{}", render(&report.findings)),
        Format::Yaml => print!("{}", yaml(&report)),
        Format::Json => print!("{}", json(&report)),
    }
    let conflicts = report
        .findings
        .iter()
        .filter(|f| f.severity == Severity::Conflict)
        .count();
    if conflicts > 0 {
        return Err(CliError::new(
            Exit::Conflict,
            format!("{conflicts} conflict(s): the edge applies only one side of each"),
        ));
    }
    Ok(())
}

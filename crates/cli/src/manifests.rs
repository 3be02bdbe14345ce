//! Reading manifests: files, directories (recursively) or stdin, each holding
//! one or more YAML or JSON documents. Every problem of every file is
//! reported together, with the file and document it is in.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;
use weft_manage::error::Detail;

use crate::client::{CliError, Exit};

/// One document and where it came from (`dir/app.yaml#2`).
pub struct Document {
    pub source: String,
    pub value: Value,
}

/// Reads every document under `paths` (`-` is stdin). Directories are read
/// recursively in name order; only `.yaml`, `.yml` and `.json` files count.
pub fn read(paths: &[PathBuf]) -> Result<Vec<Document>, CliError> {
    let mut files = Vec::new();
    for path in paths {
        collect(path, &mut files)?;
    }
    let mut documents = Vec::new();
    let mut problems = Vec::new();
    for file in files {
        let label = if file == Path::new("-") {
            "<stdin>".to_string()
        } else {
            file.display().to_string()
        };
        let mut bytes = Vec::new();
        let read = if file == Path::new("-") {
            std::io::stdin().read_to_end(&mut bytes).map(|_| ())
        } else {
            std::fs::File::open(&file)
                .and_then(|mut f| f.read_to_end(&mut bytes))
                .map(|_| ())
        };
        if let Err(e) = read {
            problems.push(format!("{label}: cannot read: {e}"));
            continue;
        }
        let text = match String::from_utf8(bytes) {
            Ok(text) => text,
            Err(e) => {
                problems.push(format!(
                    "{label}: not UTF-8 text (at byte {})",
                    e.utf8_error().valid_up_to()
                ));
                continue;
            }
        };
        parse(&label, &text, &mut documents, &mut problems);
    }
    if !problems.is_empty() {
        let mut error = CliError::new(Exit::Invalid, "cannot read the manifests; nothing was sent");
        error.details = problems
            .into_iter()
            .map(|message| Detail {
                document: None,
                path: String::new(),
                field: String::new(),
                message,
            })
            .collect();
        return Err(error);
    }
    if documents.is_empty() {
        return Err(CliError::new(
            Exit::Invalid,
            "the manifests hold no documents",
        ));
    }
    Ok(documents)
}

fn collect(path: &Path, files: &mut Vec<PathBuf>) -> Result<(), CliError> {
    if path == Path::new("-") {
        files.push(path.to_path_buf());
        return Ok(());
    }
    let metadata = std::fs::metadata(path)
        .map_err(|e| CliError::new(Exit::Invalid, format!("{}: {e}", path.display())))?;
    if !metadata.is_dir() {
        files.push(path.to_path_buf());
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| CliError::new(Exit::Invalid, format!("{}: {e}", path.display())))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for entry in entries {
        let is_manifest = entry
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"));
        if entry.is_dir() {
            collect(&entry, files)?;
        } else if is_manifest {
            files.push(entry);
        }
    }
    Ok(())
}

/// Splits a YAML stream into documents; empty documents are skipped.
fn parse(label: &str, text: &str, documents: &mut Vec<Document>, problems: &mut Vec<String>) {
    for (i, document) in serde_norway::Deserializer::from_str(text).enumerate() {
        let source = format!("{label}#{}", i + 1);
        match Value::deserialize(document) {
            Ok(Value::Null) => {}
            Ok(value) => documents.push(Document { source, value }),
            Err(e) => {
                problems.push(format!("{source}: {e}"));
                // The stream cannot be resynchronized after a syntax error.
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_document_yaml_skips_empty_documents_and_labels_each() {
        let (mut docs, mut problems) = (Vec::new(), Vec::new());
        parse(
            "a.yaml",
            "---\nkind: Tenant\n---\n---\nkind: Cluster\n",
            &mut docs,
            &mut problems,
        );
        assert!(problems.is_empty(), "{problems:?}");
        let labels: Vec<&str> = docs.iter().map(|d| d.source.as_str()).collect();
        assert_eq!(labels, vec!["a.yaml#1", "a.yaml#3"]);
        assert_eq!(docs[1].value["kind"], "Cluster");
    }

    #[test]
    fn syntax_errors_name_the_document_and_line() {
        let (mut docs, mut problems) = (Vec::new(), Vec::new());
        parse(
            "b.yaml",
            "kind: Tenant\nmetadata: {name: [unclosed\n",
            &mut docs,
            &mut problems,
        );
        assert_eq!(problems.len(), 1);
        assert!(problems[0].starts_with("b.yaml#1: "), "{}", problems[0]);
        assert!(problems[0].contains("line"), "{}", problems[0]);
    }
}

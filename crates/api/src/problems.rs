//! Validation problems, each tied to the field it is about.

use serde::{Deserialize, Serialize};

/// One thing wrong with a document, at a field path such as
/// `spec.namespaceSelector[1]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

/// Collects every problem of a document so the user sees them all at once.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Problems(Vec<Problem>);

impl Problems {
    pub fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            field: field.into(),
            message: message.into(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn into_vec(self) -> Vec<Problem> {
        self.0
    }

    /// Whether a problem is at `part` or inside it.
    pub fn any_within(&self, part: &str) -> bool {
        self.0.iter().any(|p| {
            p.field == part
                || p.field
                    .strip_prefix(part)
                    .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
        })
    }

    pub fn iter(&self) -> impl Iterator<Item = &Problem> {
        self.0.iter()
    }
}

/// `parent.child`, or `child` at the top.
pub fn field(parent: &str, child: &str) -> String {
    if parent.is_empty() {
        child.to_string()
    } else {
        format!("{parent}.{child}")
    }
}

/// `parent[index]`.
pub fn index(parent: &str, i: usize) -> String {
    format!("{parent}[{i}]")
}

/// Checks an RFC 1123 DNS label: what names of resources, clusters and
/// namespaces must be, so they are safe in URLs, hostnames and SPIFFE IDs.
pub fn check_dns_label(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("must not be empty".into());
    }
    if value.len() > 63 {
        return Err(format!("{value:?} is longer than 63 characters"));
    }
    let ok_chars = value
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let ok_ends = !value.starts_with('-') && !value.ends_with('-');
    if ok_chars && ok_ends {
        Ok(())
    } else {
        Err(format!(
            "{value:?} is not a DNS label (lowercase letters, digits and '-', starting and ending with a letter or digit)"
        ))
    }
}

/// Checks a DNS name: dot-separated DNS labels, at most 253 characters
/// (`shop.example.com`).
pub fn check_dns_name(value: &str) -> Result<(), String> {
    if value.len() > 253 {
        return Err(format!("{value:?} is longer than 253 characters"));
    }
    if value.split('.').all(|label| check_dns_label(label).is_ok()) {
        Ok(())
    } else {
        Err(format!(
            "{value:?} is not a DNS name (lowercase labels of letters, digits and '-', separated by dots)"
        ))
    }
}

//! How the CLI prints: aligned tables, YAML, JSON, ages and diffs.

use std::time::SystemTime;

use serde::Serialize;

/// `-o` choices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Yaml,
    Json,
}

/// Columns padded to their widest cell; the last column is not padded.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let mut out = String::new();
        for (i, cell) in cells.into_iter().enumerate() {
            out.push_str(cell);
            if i < last {
                out.push_str(&" ".repeat(widths[i] - cell.chars().count() + 3));
            }
        }
        out.trim_end().to_string() + "\n"
    };
    let mut out = line(headers.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

pub fn yaml<T: Serialize>(value: &T) -> String {
    serde_norway::to_string(value).expect("JSON values serialize to YAML")
}

pub fn json<T: Serialize>(value: &T) -> String {
    serde_json::to_string_pretty(value).expect("values serialize to JSON") + "\n"
}

/// "42s", "5m", "3h", "12d" since an RFC 3339 time; "-" if unknown.
pub fn age(rfc3339: Option<&str>) -> String {
    let Some(then) = rfc3339.and_then(|t| humantime::parse_rfc3339_weak(t).ok()) else {
        return "-".into();
    };
    let seconds = SystemTime::now()
        .duration_since(then)
        .map_or(0, |d| d.as_secs());
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// A unified diff of two texts; empty when they are equal.
pub fn diff(before: &str, after: &str, from: &str, to: &str) -> String {
    if before == after {
        return String::new();
    }
    similar::TextDiff::from_lines(before, after)
        .unified_diff()
        .context_radius(4)
        .header(from, to)
        .to_string()
}

/// A cell for a JSON value: strings bare, lists joined, objects compact.
pub fn cell(value: Option<&serde_json::Value>) -> String {
    match value {
        None | Some(serde_json::Value::Null) => "-".into(),
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .map(|i| cell(Some(i)))
            .collect::<Vec<_>>()
            .join(","),
        Some(serde_json::Value::Object(map)) => map
            .iter()
            .map(|(k, v)| format!("{k}={}", cell(Some(v))))
            .collect::<Vec<_>>()
            .join(","),
        Some(other) => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_cells_flatten() {
        let t = table(
            &["NAME", "REGION"],
            &[
                vec!["east".into(), "us-east-1".into()],
                vec!["a".into(), "-".into()],
            ],
        );
        assert_eq!(t, "NAME   REGION\neast   us-east-1\na      -\n");
        let v = serde_json::json!([{"user": "ann"}, {"team": "sre"}]);
        assert_eq!(cell(Some(&v)), "user=ann,team=sre");
    }

    #[test]
    fn diff_is_empty_for_equal_texts() {
        assert_eq!(diff("a\n", "a\n", "x", "y"), "");
        let d = diff("a\nb\n", "a\nc\n", "live", "manifest");
        assert!(
            d.contains("-b\n") && d.contains("+c\n") && d.contains("--- live"),
            "{d}"
        );
    }
}

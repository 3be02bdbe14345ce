//! Resources as YAML, and line diffs between two versions of one.

use maud::{Markup, html};
use serde_json::Value;
use similar::{ChangeTag, TextDiff};

/// Lines kept around each change.
const CONTEXT: usize = 3;

/// A resource (or a version of one from the audit log) as YAML; nothing
/// for a version that does not exist (before a create, after a delete).
pub fn yaml(value: Option<&Value>) -> String {
    value
        .map(|v| {
            serde_norway::to_string(v).unwrap_or_else(|e| format!("# cannot show as YAML: {e}\n"))
        })
        .unwrap_or_default()
}

/// A unified diff from `before` to `after`; removed lines in `del`,
/// added lines in `ins`, so the change reads without colour.
pub fn render(before: &str, after: &str) -> Markup {
    let diff = TextDiff::from_lines(before, after);
    let groups = diff.grouped_ops(CONTEXT);
    html! {
        @if groups.is_empty() {
            p.help { "No difference." }
        } @else {
            pre.diff tabindex="0" role="region" aria-label="Changes" {
                @for (g, group) in groups.iter().enumerate() {
                    @if g > 0 { span.gap { "⋯\n" } }
                    @for op in group {
                        @for change in diff.iter_changes(op) {
                            @match change.tag() {
                                ChangeTag::Delete => { del { "- " (change.value()) } }
                                ChangeTag::Insert => { ins { "+ " (change.value()) } }
                                ChangeTag::Equal => { span { "  " (change.value()) } }
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_shows_as_removed_and_added_lines() {
        let before = yaml(Some(
            &serde_json::json!({"spec": {"weight": 10, "name": "a"}}),
        ));
        let after = yaml(Some(
            &serde_json::json!({"spec": {"weight": 90, "name": "a"}}),
        ));
        let html = render(&before, &after).into_string();
        assert!(html.contains("<del>-   weight: 10\n</del>"), "{html}");
        assert!(html.contains("<ins>+   weight: 90\n</ins>"), "{html}");
        assert!(
            render(&before, &before)
                .into_string()
                .contains("No difference")
        );
    }
}

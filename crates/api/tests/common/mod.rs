//! The table runner the validation tests share.

use serde_json::Value;

/// What a case is about, the manifest, and (field, text in the message)
/// for every problem it must report.
pub type Case = (&'static str, Value, Vec<(&'static str, &'static str)>);

/// Each manifest must be refused with exactly the expected problems.
pub fn assert_problems(cases: Vec<Case>) {
    for (what, manifest, expected) in cases {
        let problems = match weft_api::validate(&manifest) {
            Ok(v) => panic!("{what}: expected problems, got a valid {}", v.path),
            Err(p) => p.into_vec(),
        };
        for (field, text) in &expected {
            assert!(
                problems
                    .iter()
                    .any(|p| p.field == *field && p.message.contains(text)),
                "{what}: expected a problem at {field:?} containing {text:?}, got {problems:#?}"
            );
        }
        assert_eq!(
            problems.len(),
            expected.len(),
            "{what}: unexpected extra problems {problems:#?}"
        );
    }
}

//! From a raw document to a [`Validated`] resource, or every problem found.
//!
//! Two passes: the whole document is checked against the kind's JSON Schema
//! (the same schema the OpenAPI document publishes), which finds every
//! structural problem at once: unknown fields, wrong types, missing fields.
//! Only a structurally sound document gets the second pass: names, the
//! place in the hierarchy and the kind's own rules.

use std::sync::OnceLock;

use jsonschema::JsonType;
use jsonschema::error::{TypeKind, ValidationErrorKind};
use jsonschema::paths::LocationSegment;
use jsonschema::{ValidationError, Validator};
use schemars::generate::SchemaSettings;
use schemars::{Schema, SchemaGenerator, json_schema};
use serde_json::Value;

use crate::kinds::{KINDS, Kind, TOP_LEVEL, child_path};
use crate::problems::{Problems, check_dns_label, field, index};
use crate::resource::{API_VERSION, Metadata, Resource};

/// A resource another one names: `field` is where, `target` the path that
/// must exist (the parent is a reference too).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub field: String,
    pub target: String,
}

impl Reference {
    pub fn new(field: impl Into<String>, target: impl Into<String>) -> Reference {
        Reference {
            field: field.into(),
            target: target.into(),
        }
    }
}

/// A document that passed validation, ready to store.
#[derive(Debug, Clone)]
pub struct Validated {
    pub kind: &'static Kind,
    /// What the user wrote, without server-set fields or status.
    pub resource: Resource,
    /// Hierarchical path, e.g. `tenants/retail/workspaces/checkout`.
    pub path: String,
    /// Path of the parent node ("" at the top).
    pub parent: String,
    /// The parent first, then what the spec names.
    pub references: Vec<Reference>,
    /// `metadata.resourceVersion` as sent: the write must be based on it.
    pub expected_version: Option<i64>,
}

/// Validates one document and reports every problem with its field path.
pub fn validate(doc: &Value) -> Result<Validated, Problems> {
    let mut problems = Problems::default();
    let Some(object) = doc.as_object() else {
        problems.add(
            "",
            "a resource must be a mapping with apiVersion, kind, metadata and spec",
        );
        return Err(problems);
    };
    match object.get("apiVersion") {
        Some(Value::String(v)) if v == API_VERSION => {}
        Some(other) => problems.add(
            "apiVersion",
            format!("must be {API_VERSION:?}, not {other}"),
        ),
        None => problems.add("apiVersion", format!("is required ({API_VERSION:?})")),
    }
    let kind = match object.get("kind") {
        Some(Value::String(name)) => Kind::named(name).or_else(|| {
            let hint = Kind::lookup(name)
                .map_or(String::new(), |k| format!(" (did you mean {:?}?)", k.name));
            problems.add("kind", format!("unknown kind {name:?}{hint}"));
            None
        }),
        Some(other) => {
            problems.add("kind", format!("must be a string, not {other}"));
            None
        }
        None => {
            problems.add("kind", "is required");
            None
        }
    };
    let Some(kind) = kind else {
        return Err(problems);
    };

    let mut doc = doc.clone();
    if let Some(object) = doc.as_object_mut() {
        object
            .entry("spec")
            .or_insert_with(|| Value::Object(Default::default()));
        // apiVersion was reported above already; don't report it twice.
        object.insert("apiVersion".into(), API_VERSION.into());
        // Status is the server's to set; a document read back with
        // `weft get -o yaml` may carry it and is still a valid apply.
        object.remove("status");
    }
    let mut unknown_fields = Vec::new();
    for error in validator(kind).iter_errors(&doc) {
        add_schema_problem(&error, &mut problems, &mut unknown_fields);
    }
    // The second pass runs on every part the schema found sound, so one
    // unknown field does not hide a bad name elsewhere.
    let (metadata_flawed, spec_flawed) =
        (problems.any_within("metadata"), problems.any_within("spec"));
    let structural_problems = !problems.is_empty();
    let metadata: Option<Metadata> = if metadata_flawed {
        None
    } else {
        serde_json::from_value(doc["metadata"].clone()).ok()
    };
    let mut parent = None;
    let mut expected_version = None;
    if let Some(meta) = &metadata {
        if let Err(e) = check_dns_label(&meta.name).and_then(|()| kind.check_name(&meta.name)) {
            problems.add("metadata.name", e);
        }
        check_map_keys(&meta.labels, "metadata.labels", true, &mut problems);
        check_map_keys(
            &meta.annotations,
            "metadata.annotations",
            false,
            &mut problems,
        );
        expected_version = meta
            .resource_version
            .as_deref()
            .and_then(|v| match v.parse::<i64>() {
                Ok(n) if n > 0 => Some(n),
                _ => {
                    problems.add(
                        "metadata.resourceVersion",
                        format!("{v:?} is not a version this server issued"),
                    );
                    None
                }
            });
        parent = parent_path(kind, meta, &mut problems);
    }
    // A misspelt field should not hide the spec's other problems: when
    // unknown fields are all that is wrong with the spec, check the rest.
    let only_unknown_in_spec = problems
        .iter()
        .filter(|p| {
            p.field == "spec" || p.field.starts_with("spec.") || p.field.starts_with("spec[")
        })
        .all(|p| p.message == "unknown field");
    let spec_references = if !spec_flawed {
        kind.check_spec(&doc["spec"], &mut problems)
    } else if only_unknown_in_spec {
        let mut pruned = doc.clone();
        for (pointer, names) in &unknown_fields {
            if let Some(Value::Object(object)) = pruned.pointer_mut(pointer) {
                names.iter().for_each(|n| drop(object.remove(n)));
            }
        }
        kind.check_spec(&pruned["spec"], &mut problems);
        Vec::new()
    } else {
        Vec::new()
    };
    if structural_problems || !problems.is_empty() {
        return Err(problems);
    }
    let (Some(meta), Some((parent, parent_field))) = (metadata, parent) else {
        return Err(problems);
    };
    let resource = Resource {
        api_version: API_VERSION.to_string(),
        kind: kind.name.to_string(),
        metadata: meta,
        spec: doc["spec"].clone(),
        status: None,
    };
    let mut references = Vec::new();
    if let Some(field) = parent_field {
        references.push(Reference::new(field, parent.clone()));
    }
    references.extend(spec_references);
    Ok(Validated {
        path: child_path(&parent, kind, &resource.metadata.name),
        kind,
        resource: resource.desired(),
        parent,
        references,
        expected_version,
    })
}

/// Works out the parent from the metadata parent fields and checks it is a
/// place this kind may sit. Returns the parent path and the field that
/// names it (None at the top).
fn parent_path(
    kind: &Kind,
    meta: &Metadata,
    problems: &mut Problems,
) -> Option<(String, Option<String>)> {
    let chain = meta.parents();
    let mut ok = true;
    for (field, _, name) in &chain {
        if let Err(e) = check_dns_label(name) {
            problems.add(format!("metadata.{field}"), e);
            ok = false;
        }
    }
    // The fields must spell a path down the hierarchy: each one's kind sits
    // under the one before it.
    for pair in chain.windows(2) {
        let (outer, inner) = (pair[0], pair[1]);
        let fits = Kind::named(inner.1).is_some_and(|k| k.parents.contains(&outer.1));
        if !fits {
            problems.add(
                format!("metadata.{}", inner.0),
                format!("cannot be combined with metadata.{}", outer.0),
            );
            ok = false;
        }
    }
    if let Some(first) = chain.first()
        && !Kind::named(first.1).is_some_and(|k| k.parents.contains(&TOP_LEVEL))
    {
        let needed = Kind::named(first.1)
            .and_then(|k| k.parents.first())
            .and_then(|p| Kind::named(p))
            .and_then(|p| p.parent_field)
            .unwrap_or("tenant");
        problems.add(
            format!("metadata.{needed}"),
            format!("is required with metadata.{}", first.0),
        );
        ok = false;
    }
    if !ok {
        return None;
    }
    let parent_kind = chain.last().map_or(TOP_LEVEL, |(_, k, _)| *k);
    if !kind.parents.contains(&parent_kind) {
        let (at, what) = match chain.last() {
            Some((field, _, _)) => (format!("metadata.{field}"), "is not allowed".to_string()),
            None => ("metadata".to_string(), "names no parent".to_string()),
        };
        problems.add(
            at,
            format!("{what}: a {} sits under {}", kind.name, kind.places()),
        );
        return None;
    }
    let mut path = String::new();
    for (_, parent_kind, name) in &chain {
        let parent_kind = Kind::named(parent_kind)?;
        path = child_path(&path, parent_kind, name);
    }
    let field = chain.last().map(|(f, _, _)| format!("metadata.{f}"));
    Some((path, field))
}

/// Label keys may carry a DNS prefix (`example.com/team`); label values
/// are short and plain so they can be matched on.
fn check_map_keys(
    map: &std::collections::BTreeMap<String, String>,
    at: &str,
    values_too: bool,
    problems: &mut Problems,
) {
    let plain = |s: &str| {
        !s.is_empty()
            && s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    };
    for (key, value) in map {
        let name = key.rsplit_once('/').map_or(key.as_str(), |(_, n)| n);
        if !plain(name) || key.len() > 253 {
            problems.add(
                field(at, key),
                "key must be 1-63 letters, digits, '-', '_' or '.', with an optional prefix/",
            );
        }
        if values_too && !value.is_empty() && !plain(value) {
            problems.add(
                field(at, key),
                format!("value {value:?} must be at most 63 letters, digits, '-', '_' or '.'"),
            );
        }
    }
}

/// Turns a schema error into problems at field paths. `unknown` collects
/// where unknown fields are, so they can be set aside for the second pass.
fn add_schema_problem(
    error: &ValidationError,
    problems: &mut Problems,
    unknown: &mut Vec<(String, Vec<String>)>,
) {
    let mut at = String::new();
    for segment in error.instance_path().segments() {
        at = match segment {
            LocationSegment::Property(name) => field(&at, &name),
            LocationSegment::Index(i) => index(&at, i),
        };
    }
    match error.kind() {
        ValidationErrorKind::AdditionalProperties { unexpected } => {
            for name in unexpected {
                problems.add(field(&at, name), "unknown field");
            }
            unknown.push((
                error.instance_path().as_str().to_string(),
                unexpected.clone(),
            ));
        }
        ValidationErrorKind::Required { property } => {
            let name = property.as_str().unwrap_or_default();
            problems.add(field(&at, name), "is required");
        }
        ValidationErrorKind::AnyOf { context } | ValidationErrorKind::OneOfNotValid { context } => {
            // An optional object is "it, or null": what is wrong is inside it.
            let is_null_branch = |branch: &Vec<ValidationError>| {
                matches!(branch.as_slice(), [only] if matches!(
                    only.kind(),
                    ValidationErrorKind::Type { kind: TypeKind::Single(JsonType::Null) }
                ))
            };
            let others: Vec<&Vec<ValidationError>> =
                context.iter().filter(|b| !is_null_branch(b)).collect();
            if let [branch] = others.as_slice() {
                for inner in branch.iter() {
                    add_schema_problem(inner, problems, unknown);
                }
                return;
            }
            // A documented enum is a choice of constants: list them.
            let allowed: Option<Vec<String>> = others
                .iter()
                .map(|branch| match branch.as_slice() {
                    [only] => match only.kind() {
                        ValidationErrorKind::Constant { expected_value } => {
                            Some(vec![expected_value.to_string()])
                        }
                        ValidationErrorKind::Enum { options } => options
                            .as_array()
                            .map(|a| a.iter().map(Value::to_string).collect()),
                        _ => None,
                    },
                    _ => None,
                })
                .collect::<Option<Vec<Vec<String>>>>()
                .map(|lists| lists.concat());
            match allowed {
                Some(allowed) => problems.add(at, format!("must be one of {}", allowed.join(", "))),
                None => problems.add(at, error.to_string()),
            }
        }
        ValidationErrorKind::Enum { options } => {
            let allowed: Vec<String> = options
                .as_array()
                .into_iter()
                .flatten()
                .map(Value::to_string)
                .collect();
            problems.add(at, format!("must be one of {}", allowed.join(", ")));
        }
        _ => problems.add(at, error.to_string()),
    }
}

/// The JSON Schema of a whole document of `kind`. Definitions it shares
/// are left in `generator`, so the caller decides where they live.
pub fn document_schema(kind: &Kind, generator: &mut SchemaGenerator) -> Schema {
    let metadata = generator.subschema_for::<Metadata>();
    let spec = kind.spec_schema(generator);
    json_schema!({
        "type": "object",
        "additionalProperties": false,
        "required": ["apiVersion", "kind", "metadata"],
        "properties": {
            "apiVersion": {"const": API_VERSION},
            "kind": {"const": kind.name},
            "metadata": metadata,
            "spec": spec,
            "status": {"description": "Set by the server; ignored when submitted."}
        }
    })
}

fn validator(kind: &Kind) -> &'static Validator {
    static VALIDATORS: OnceLock<Vec<Validator>> = OnceLock::new();
    let all = VALIDATORS.get_or_init(|| {
        KINDS
            .iter()
            .map(|k| {
                let mut generator = SchemaSettings::draft2020_12().into_generator();
                let mut schema = document_schema(k, &mut generator).to_value();
                schema["$defs"] = Value::Object(generator.take_definitions(true));
                jsonschema::validator_for(&schema).expect("derived schemas are valid JSON Schema")
            })
            .collect()
    });
    let position = KINDS
        .iter()
        .position(|k| k.name == kind.name)
        .expect("kind is in KINDS");
    &all[position]
}

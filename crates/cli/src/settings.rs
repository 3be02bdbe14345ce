//! Settings files for the daemons (`weft server`, `weft edge`, `weft
//! sidecar`, `weft eastwest`): `--config-file FILE` (or `WEFT_CONFIG_FILE`)
//! names a YAML map from a command's long flags to values, so a unit file
//! or a config-management tool can keep them in one place.
//!
//! One precedence everywhere: a flag on the command line, then its
//! environment variable, then the file, then the default. The file's
//! settings become command-line flags for exactly those settings the
//! command line and the environment left unset, so clap parses and checks
//! them as it does everything else; a key that is no setting of the
//! command is refused with its name and the settings there are.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Command};

/// The environment variable naming the settings file.
pub const FILE_ENV: &str = "WEFT_CONFIG_FILE";

/// A command line with the settings of its `--config-file` added.
pub struct Resolved {
    pub args: Vec<OsString>,
    /// The settings that came from the file, by long name.
    pub from_file: BTreeSet<String>,
}

/// The file named on the command line or in the environment, if any.
fn config_file(matches: &ArgMatches) -> Option<PathBuf> {
    matches.get_one::<PathBuf>("config_file").cloned()
}

fn scalar(file: &Path, key: &str, value: &serde_norway::Value) -> Result<String, String> {
    match value {
        serde_norway::Value::String(s) => Ok(s.clone()),
        serde_norway::Value::Number(n) => Ok(n.to_string()),
        serde_norway::Value::Bool(b) => Ok(b.to_string()),
        _ => Err(format!(
            "{}: {key}: expected a string, number or boolean",
            file.display()
        )),
    }
}

/// Adds the settings of the `--config-file` (if one is given) to `args`,
/// for `root` (the whole CLI). Errors name the file and the key.
pub fn resolve(root: &Command, args: Vec<OsString>) -> Result<Resolved, String> {
    let unchanged = |args| Resolved {
        args,
        from_file: BTreeSet::new(),
    };
    // A command line clap refuses is left for the real parse to report.
    // Required settings may be in the file: a partial parse tells the
    // command and what the command line and environment set.
    let Ok(matches) = root.clone().ignore_errors(true).try_get_matches_from(&args) else {
        return Ok(unchanged(args));
    };
    let (Some(file), Some((name, sub))) = (config_file(&matches), matches.subcommand()) else {
        return Ok(unchanged(args));
    };
    let command = root
        .find_subcommand(name)
        .ok_or_else(|| format!("no command {name}"))?;
    let text = std::fs::read_to_string(&file)
        .map_err(|e| format!("cannot read --config-file {}: {e}", file.display()))?;
    let settings: BTreeMap<String, serde_norway::Value> = if text.trim().is_empty() {
        BTreeMap::new()
    } else {
        serde_norway::from_str(&text).map_err(|e| {
            format!(
                "{}: not a map of settings (long flag names to values): {e}",
                file.display()
            )
        })?
    };
    let known: BTreeMap<&str, &clap::Arg> = command
        .get_arguments()
        .filter(|a| !a.is_global_set() && a.get_id() != "config_file")
        .filter_map(|a| a.get_long().map(|long| (long, a)))
        .collect();
    let mut added: Vec<OsString> = Vec::new();
    let mut from_file = BTreeSet::new();
    for (key, value) in &settings {
        let Some(arg) = known.get(key.as_str()) else {
            let names: Vec<&str> = known.keys().copied().collect();
            return Err(format!(
                "{}: {key}: not a setting of `weft {name}` (its settings: {})",
                file.display(),
                names.join(", ")
            ));
        };
        let id = arg.get_id().as_str();
        if matches!(
            sub.value_source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue;
        }
        let flag = OsString::from(format!("--{key}"));
        match arg.get_action() {
            ArgAction::SetTrue => match value {
                serde_norway::Value::Bool(true) => added.push(flag),
                serde_norway::Value::Bool(false) => {}
                _ => return Err(format!("{}: {key}: expected true or false", file.display())),
            },
            _ => {
                let values: Vec<String> = match value {
                    serde_norway::Value::Sequence(items) => items
                        .iter()
                        .map(|item| scalar(&file, key, item))
                        .collect::<Result<_, _>>()?,
                    other => vec![scalar(&file, key, other)?],
                };
                for value in values {
                    added.push(flag.clone());
                    added.push(value.into());
                }
            }
        }
        from_file.insert(key.clone());
    }
    // Right after the command's name, before anything after `--`.
    let at = args
        .iter()
        .position(|a| a == name)
        .map_or(args.len(), |i| i + 1);
    let mut resolved = args;
    resolved.splice(at..at, added);
    Ok(Resolved {
        args: resolved,
        from_file,
    })
}

/// Each setting of the command that ran and where its value came from,
/// as YAML comments beside the values: what `--print-settings` shows.
pub fn describe(root: &Command, matches: &ArgMatches, from_file: &BTreeSet<String>) -> String {
    let Some((name, sub)) = matches.subcommand() else {
        return String::new();
    };
    let Some(command) = root.find_subcommand(name) else {
        return String::new();
    };
    let mut out = String::new();
    for arg in command.get_arguments() {
        let (Some(long), id) = (arg.get_long(), arg.get_id().as_str()) else {
            continue;
        };
        if arg.is_global_set() || id == "config_file" || id == "print_settings" {
            continue;
        }
        let Some(values) = sub.get_raw(id) else {
            continue;
        };
        let values: Vec<String> = values.map(|v| v.to_string_lossy().into_owned()).collect();
        let source = match sub.value_source(id) {
            _ if from_file.contains(long) => "file",
            Some(ValueSource::CommandLine) => "flag",
            Some(ValueSource::EnvVariable) => "environment",
            _ => "default",
        };
        // Settings that may hold secrets (a store URL with a password).
        let shown = if arg.is_hide_env_values_set() {
            "(hidden)".to_string()
        } else {
            values.join(",")
        };
        out.push_str(&format!("{long}: {shown}  # {source}\n"));
    }
    out
}

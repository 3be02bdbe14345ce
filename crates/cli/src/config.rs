//! The client configuration `weft login` writes: server URL and token.
//! The file holds a secret, so it is written 0600 in a 0700 directory.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::client::{CliError, Exit};

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// `$XDG_CONFIG_HOME/weft/config.yaml`, else `~/.config/weft/config.yaml`.
pub fn default_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("weft").join("config.yaml"))
}

impl Config {
    /// The saved configuration; empty when there is none.
    pub fn load(path: Option<&Path>) -> Result<Config, CliError> {
        let Some(path) = path.map(Path::to_path_buf).or_else(default_path) else {
            return Ok(Config::default());
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_norway::from_str(&text).map_err(|e| {
                CliError::new(Exit::Invalid, format!("{}: {e}", path.display()))
                    .with_hint("fix or remove the file, or run 'weft login' again")
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Config::default()),
            Err(e) => Err(CliError::new(
                Exit::Failed,
                format!("cannot read {}: {e}", path.display()),
            )),
        }
    }

    pub fn save(&self, path: Option<&Path>) -> Result<PathBuf, CliError> {
        let path = path
            .map(Path::to_path_buf)
            .or_else(default_path)
            .ok_or_else(|| {
                CliError::new(Exit::Failed, "no HOME or XDG_CONFIG_HOME: pass --config")
            })?;
        let fail = |e: std::io::Error| {
            CliError::new(
                Exit::Failed,
                format!("cannot write {}: {e}", path.display()),
            )
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(fail)?;
        }
        let text = serde_norway::to_string(self).expect("config serializes");
        weft_manage::bootstrap::write_secret_file(&path, text.trim_end()).map_err(fail)?;
        Ok(path)
    }
}

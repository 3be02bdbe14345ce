//! Records the commit `weft version` reports: from git when the build runs
//! in a checkout, else `WEFT_COMMIT` from the environment (a release build
//! outside git), else "unknown".

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=WEFT_COMMIT");
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    for watched in [".git/HEAD", ".git/refs/heads", ".git/packed-refs"] {
        println!("cargo:rerun-if-changed={root}/{watched}");
    }
    let from_git = Command::new("git")
        .args(["-C", root, "rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|c| !c.is_empty());
    let commit = from_git
        .or_else(|| std::env::var("WEFT_COMMIT").ok())
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=WEFT_COMMIT={commit}");
}

//! `weft admin backup` and `weft admin restore`: the embedded store, copied
//! consistently while the server runs, and restored into a new data
//! directory.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use weft_store::backup;

use crate::server::default_data_dir;

pub async fn backup(data: Option<PathBuf>, file: &Path) -> Result<()> {
    let data = match data {
        Some(dir) => dir,
        None => default_data_dir()?,
    };
    let copied = backup::backup(&data.join("weft.db"), file)
        .await
        .with_context(|| format!("cannot back up the store in {}", data.display()))?;
    println!(
        "backed up revision {} ({} resources, {} audit entries, {} bytes) to {} (readable by its owner only: it holds the root CAs' keys)",
        copied.revision,
        copied.resources,
        copied.audit_entries,
        copied.bytes,
        file.display()
    );
    Ok(())
}

pub async fn restore(file: &Path, data: &Path) -> Result<()> {
    let copied = backup::restore(file, data)
        .await
        .with_context(|| format!("cannot restore {}", file.display()))?;
    println!(
        "restored revision {} ({} resources, {} audit entries; the audit chain verifies) into {}; start it with: weft server --data {}",
        copied.revision,
        copied.resources,
        copied.audit_entries,
        data.display(),
        data.display()
    );
    Ok(())
}

//! The files an edge keeps in its data directory (`config.json`,
//! `directory.json`) so a restart without the server serves what it had.
//!
//! Each file says which format wrote it (`"format": N` beside the kept
//! value's own fields). An edge reads its own format and every earlier one
//! (a file without the field is format 0, written before formats existed,
//! with the same fields), so an upgraded edge starts from the files of the
//! release before. A file of a newer format is not guessed at: the edge
//! says so and waits for the server. The cluster CA in `ca/` is PEM and a
//! hex fingerprint, formats of their own.

use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::write_private;

/// The format this release writes.
pub const FORMAT: u64 = 1;

/// Why a kept file was not used.
#[derive(Debug, thiserror::Error)]
pub enum KeptError {
    #[error("cannot read it: {0}")]
    Io(#[from] std::io::Error),
    #[error("not JSON of the expected shape: {0}")]
    Shape(#[from] serde_json::Error),
    #[error(
        "written in format {found} by a newer weft (this one reads up to {FORMAT}); ignored until the server answers"
    )]
    Newer { found: u64 },
}

#[derive(Serialize)]
struct Versioned<'a, T> {
    format: u64,
    #[serde(flatten)]
    kept: &'a T,
}

/// Keeps `value` in `path` (0600, replaced atomically).
pub fn write<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(&Versioned {
        format: FORMAT,
        kept: value,
    })
    .map_err(std::io::Error::other)?;
    write_private(path, &bytes)
}

/// What `path` keeps; None when there is no such file.
pub fn read<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, KeptError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let mut value: serde_json::Value = serde_json::from_slice(&bytes)?;
    let found = match value.as_object_mut().and_then(|o| o.remove("format")) {
        None => 0,
        Some(format) => format.as_u64().ok_or_else(|| {
            <serde_json::Error as serde::de::Error>::custom("format is not a number")
        })?,
    };
    if found > FORMAT {
        return Err(KeptError::Newer { found });
    }
    Ok(Some(serde_json::from_value(value)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_api::edge::EdgeConfig;

    use crate::directory::Directory;

    fn fixture(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("testdata/kept-format-0")
            .join(name)
    }

    /// Files an edge of the release before formats wrote (`weft up
    /// --multi-cluster`, copied from an edge's data directory).
    #[test]
    fn files_of_the_previous_release_are_read() {
        let config: EdgeConfig = read(&fixture("config.json")).unwrap().unwrap();
        assert_eq!(config.cluster, "east-1");
        assert!(!config.resources.is_empty());
        let directory: Directory = read(&fixture("directory.json")).unwrap().unwrap();
        assert!(directory.clusters.len() >= 2, "{directory:?}");
    }

    #[test]
    fn what_is_written_is_read_back_and_a_newer_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("directory.json");
        let directory: Directory = read(&fixture("directory.json")).unwrap().unwrap();
        write(&path, &directory).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("{\"format\":1,"), "{text}");
        let again: Directory = read(&path).unwrap().unwrap();
        assert_eq!(again, directory);

        std::fs::write(&path, text.replace("\"format\":1", "\"format\":2")).unwrap();
        let error = read::<Directory>(&path).unwrap_err();
        assert!(matches!(error, KeptError::Newer { found: 2 }), "{error}");
        assert!(
            read::<Directory>(&dir.path().join("none.json"))
                .unwrap()
                .is_none()
        );
    }
}

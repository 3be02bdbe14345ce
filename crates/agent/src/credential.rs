//! Credential files, as `weft token create --cluster …` writes them: the
//! secret on the first line, then the trust domain's roots (PEM), so an
//! agent can check its edge before it has a certificate of its own.

use std::path::Path;

use weft_identity::Bundle;

use crate::AgentError;

/// The secret on a credential file's first line.
pub fn read_secret(path: &Path) -> Result<String, AgentError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| AgentError::file("cannot read the credential file", path, e))?;
    let secret = text.lines().next().unwrap_or_default().trim().to_string();
    if secret.is_empty() {
        return Err(AgentError::Credential {
            path: path.to_path_buf(),
            problem: "it is empty".into(),
        });
    }
    Ok(secret)
}

/// The trust bundle after the secret.
pub fn read_trust_bundle(path: &Path) -> Result<Bundle, AgentError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| AgentError::file("cannot read the credential file", path, e))?;
    let pem: String = text.lines().skip(1).collect::<Vec<_>>().join("\n");
    let problem = |problem: String| AgentError::Credential {
        path: path.to_path_buf(),
        problem,
    };
    if !pem.contains("BEGIN CERTIFICATE") {
        return Err(problem(
            "it holds no trust bundle after the credential (`weft token create` adds it)".into(),
        ));
    }
    Bundle::from_roots_pem(&pem)
        .map_err(|e| problem(format!("its trust bundle is unreadable: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_and_one_without_a_bundle_are_refused_with_a_hint() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.token");
        std::fs::write(&empty, "\n").unwrap();
        let refused = read_secret(&empty).unwrap_err().to_string();
        assert!(
            refused.contains("it is empty") && refused.contains("hint:"),
            "{refused}"
        );
        let bare = dir.path().join("bare.token");
        std::fs::write(&bare, "wft_secret\n").unwrap();
        assert_eq!(read_secret(&bare).unwrap(), "wft_secret");
        let refused = read_trust_bundle(&bare).unwrap_err().to_string();
        assert!(refused.contains("no trust bundle"), "{refused}");
    }
}

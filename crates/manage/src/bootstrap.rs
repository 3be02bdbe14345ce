//! First start: the organization, an `admin` user bound to the admin role at
//! the top level, and a token for it in `DATA/admin.token` (mode 0600).

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde_json::json;
use weft_api::{API_VERSION, validate};
use weft_store::{Change, Expect, Reason, Store, StoreError, TokenRecord};

use crate::iam::{hash_secret, new_secret, new_token_id};

/// Who the audit log names for what bootstrap writes.
pub const BOOTSTRAP_ACTOR: &str = "system:bootstrap";
pub const ADMIN_USER: &str = "admin";
pub const TOKEN_FILE: &str = "admin.token";

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot write the admin token to {path}: {source}")]
    TokenFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("organization name {name:?}: {message}")]
    Name { name: String, message: String },
}

/// Creates the organization and the first admin unless the store already
/// has an organization. Returns the token file when it wrote one.
pub async fn bootstrap(
    store: &Store,
    data_dir: &Path,
    organization: &str,
    trust_domain: Option<&str>,
) -> Result<Option<PathBuf>, BootstrapError> {
    if !store.list("Organization").await?.is_empty() {
        return Ok(None);
    }
    let spec = match trust_domain {
        Some(trust_domain) => json!({"trustDomain": trust_domain}),
        None => json!({}),
    };
    let docs = [
        json!({"apiVersion": API_VERSION, "kind": "Organization", "metadata": {"name": organization}, "spec": spec}),
        json!({"apiVersion": API_VERSION, "kind": "User", "metadata": {"name": ADMIN_USER},
               "spec": {"displayName": "Bootstrap administrator"}}),
        json!({"apiVersion": API_VERSION, "kind": "AccessBinding", "metadata": {"name": "bootstrap-admin"},
               "spec": {"role": "admin", "subjects": [{"user": ADMIN_USER}]}}),
    ];
    let mut changes = Vec::new();
    for doc in &docs {
        let v = validate(doc).map_err(|problems| BootstrapError::Name {
            name: organization.to_string(),
            message: problems
                .iter()
                .map(|p| p.message.clone())
                .collect::<Vec<_>>()
                .join("; "),
        })?;
        changes.push(Change::put(v, Expect::Absent));
    }
    match store.apply(&changes, BOOTSTRAP_ACTOR, false).await {
        Ok(_) => {}
        // Another replica on the same store bootstrapped first.
        Err(StoreError::Refused { refusals })
            if refusals
                .iter()
                .all(|r| matches!(r.reason, Reason::Exists | Reason::Duplicate)) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(e.into()),
    }
    let secret = new_secret();
    let token = TokenRecord {
        id: new_token_id(),
        user: ADMIN_USER.into(),
        description: "bootstrap admin token".into(),
        created_at: weft_store::now_rfc3339(),
        expires_at: None,
        revoked_at: None,
    };
    store
        .create_token(&token, &hash_secret(&secret), BOOTSTRAP_ACTOR)
        .await?;
    let path = data_dir.join(TOKEN_FILE);
    write_secret_file(&path, &secret).map_err(|source| BootstrapError::TokenFile {
        path: path.clone(),
        source,
    })?;
    Ok(Some(path))
}

/// Writes a file only its owner can read, even if it existed before.
pub fn write_secret_file(path: &Path, secret: &str) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    writeln!(file, "{secret}")?;
    file.sync_all()
}

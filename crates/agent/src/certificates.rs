//! Server certificates from files on the gateway's own host, served to
//! its Envoy over SDS: in one directory, `NAME.crt` (the chain, leaf
//! first) with `NAME.key` is the server certificate
//! [`sds::server_certificate`]`(NAME)`; a `NAME.crt` alone is a CA bundle
//! for client certificates, [`sds::client_ca`]`(NAME)`. Private keys go to
//! Envoy only, never to the edge or the server.
//!
//! The directory is read again every few seconds and what changed is
//! published: a replaced file is served within that time, with no restart
//! and no dropped connection (Envoy takes new secrets for new handshakes).
//! A pair that does not fit (unreadable, or a key that is not the
//! certificate's) keeps the last good one and is reported until fixed.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::DataSource;
use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::secret::Type;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, TlsCertificate,
};
use weft_api::problems::check_dns_name;

use crate::sds::{self, SdsServer};

/// The SDS source the certificates are published as.
const SOURCE: &str = "certificates";

fn inline(text: String) -> Option<DataSource> {
    Some(DataSource {
        specifier: Some(Specifier::InlineBytes(text.into_bytes())),
        ..Default::default()
    })
}

/// What one read of the directory gives: secrets by name, and what is
/// wrong (each naming its file and what to do).
#[derive(Debug, Default, PartialEq)]
pub struct Read {
    pub secrets: BTreeMap<String, Secret>,
    pub problems: Vec<String>,
}

/// Reads `dir`; a pair that does not fit keeps its secret from `last`.
pub fn read(dir: &Path, last: &BTreeMap<String, Secret>) -> Read {
    let mut read = Read::default();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            read.problems.push(format!(
                "cannot read the certificate directory {}: {e}",
                dir.display()
            ));
            read.secrets = last.clone();
            return read;
        }
    };
    let mut stems: BTreeMap<String, (bool, bool)> = BTreeMap::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let (Some(stem), Some(extension)) = (
            path.file_stem().and_then(|s| s.to_str()),
            path.extension().and_then(|s| s.to_str()),
        ) else {
            continue;
        };
        let found = stems.entry(stem.to_string()).or_default();
        match extension {
            "crt" => found.0 = true,
            "key" => found.1 = true,
            _ => {}
        }
    }
    for (name, (crt, key)) in stems {
        if !crt && !key {
            continue;
        }
        let file = |extension: &str| dir.join(format!("{name}.{extension}"));
        if let Err(e) = check_dns_name(&name) {
            read.problems.push(format!(
                "{}: ignored, certificate names are DNS names ({e})",
                file(if crt { "crt" } else { "key" }).display()
            ));
            continue;
        }
        let outcome = match (crt, key) {
            (true, true) => server_certificate(&file("crt"), &file("key")),
            (true, false) => client_ca(&file("crt")),
            (false, _) => Err(format!(
                "{}: no {name}.crt beside it; a key is served with its certificate",
                file("key").display()
            )),
        };
        let secret_name = if key {
            sds::server_certificate(&name)
        } else {
            sds::client_ca(&name)
        };
        match outcome {
            Ok(mut secret) => {
                secret.name = secret_name.clone();
                read.secrets.insert(secret_name, secret);
            }
            Err(problem) => {
                read.problems.push(problem);
                if let Some(kept) = last.get(&secret_name) {
                    read.secrets.insert(secret_name, kept.clone());
                }
            }
        }
    }
    read
}

fn read_text(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn server_certificate(crt: &Path, key: &Path) -> Result<Secret, String> {
    let chain = read_text(crt)?;
    let private_key = read_text(key)?;
    weft_identity::tls::check_certificate_and_key(&chain, &private_key).map_err(|e| {
        format!(
            "{} with {}: {e}; the last good pair is served",
            crt.display(),
            key.display()
        )
    })?;
    if std::fs::metadata(key).is_ok_and(|m| m.mode() & 0o077 != 0) {
        tracing::warn!(key = %key.display(), "the private key is readable by others; chmod 600 it");
    }
    Ok(Secret {
        name: String::new(),
        r#type: Some(Type::TlsCertificate(TlsCertificate {
            certificate_chain: inline(chain),
            private_key: inline(private_key),
            ..Default::default()
        })),
    })
}

fn client_ca(crt: &Path) -> Result<Secret, String> {
    let bundle = read_text(crt)?;
    weft_identity::certificates_from_pem("the CA bundle", &bundle)
        .map_err(|e| format!("{}: {e}; the last good bundle is served", crt.display()))?;
    Ok(Secret {
        name: String::new(),
        r#type: Some(Type::ValidationContext(CertificateValidationContext {
            trusted_ca: inline(bundle),
            ..Default::default()
        })),
    })
}

/// Serves `dir`'s certificates on `sds`, reading it again every `every`,
/// in a task that runs until the process ends.
pub fn watch(dir: PathBuf, sds: SdsServer, every: Duration) {
    tokio::spawn(async move {
        let mut published: Option<BTreeMap<String, Secret>> = None;
        let mut reported: Vec<String> = Vec::new();
        loop {
            let last = published.clone().unwrap_or_default();
            let read = read(&dir, &last);
            // Each problem once, until it changes.
            if read.problems != reported {
                for problem in &read.problems {
                    tracing::error!("server certificate: {problem}");
                }
                reported = read.problems.clone();
            }
            if published.as_ref() != Some(&read.secrets) {
                match sds.set(SOURCE, read.secrets.values().cloned().collect()) {
                    Ok(()) => {
                        tracing::info!(
                            certificates = ?read.secrets.keys().collect::<Vec<_>>(),
                            dir = %dir.display(),
                            "serving the server certificates"
                        );
                        published = Some(read.secrets);
                    }
                    Err(error) => tracing::error!(%error, "cannot serve the server certificates"),
                }
            }
            tokio::time::sleep(every).await;
        }
    });
}

/// The certificate files a secret name stands for, if it is one of the
/// gateway's ([`sds::server_certificate`], [`sds::client_ca`]).
fn files_of(secret: &str) -> Option<String> {
    let certificate = sds::server_certificate("");
    let ca = sds::client_ca("");
    if let Some(name) = secret.strip_prefix(&certificate) {
        Some(format!("{name}.crt and {name}.key"))
    } else {
        secret.strip_prefix(&ca).map(|name| format!("{name}.crt"))
    }
}

/// The secret names in an Envoy config dump of warming secrets: what
/// Envoy asked for and has not got.
fn awaited(dump: &serde_json::Value) -> Vec<String> {
    let mut names = Vec::new();
    let mut stack = vec![dump];
    while let Some(value) = stack.pop() {
        match value {
            serde_json::Value::Object(fields) => {
                if let Some(serde_json::Value::String(name)) = fields.get("name") {
                    names.push(name.clone());
                }
                stack.extend(fields.values());
            }
            serde_json::Value::Array(items) => stack.extend(items),
            _ => {}
        }
    }
    names.sort();
    names.dedup();
    names
}

/// Reports, every `every`, the server certificates Envoy waits for that
/// the gateway cannot serve (no files in `dir`, or no `--certificates`):
/// the servers that use one do not listen until it is there, and nothing
/// else would say why.
pub fn report_awaited(admin_port: u16, dir: Option<PathBuf>, every: Duration) {
    let url = format!("http://127.0.0.1:{admin_port}/config_dump?resource=dynamic_warming_secrets");
    tokio::spawn(async move {
        let http = reqwest::Client::new();
        let mut reported: Vec<String> = Vec::new();
        loop {
            tokio::time::sleep(every).await;
            let Ok(response) = http.get(&url).send().await else {
                continue;
            };
            let Ok(dump) = response.json::<serde_json::Value>().await else {
                continue;
            };
            let missing: Vec<String> = awaited(&dump)
                .into_iter()
                .filter_map(|secret| files_of(&secret))
                .collect();
            if missing == reported {
                continue;
            }
            for files in &missing {
                match &dir {
                    Some(dir) => tracing::error!(
                        "a Gateway names a certificate whose files are missing: {files} in {}; the servers that use it do not listen until they are there",
                        dir.display()
                    ),
                    None => tracing::error!(
                        "a Gateway names a certificate ({files}), but weft gateway has no --certificates directory; the servers that use it do not listen"
                    ),
                }
            }
            if missing.is_empty() {
                tracing::info!("every certificate the Gateways name is served");
            }
            reported = missing;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate and its key for `name`, as PEM.
    fn pair(name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn chain_of(secret: &Secret) -> String {
        match &secret.r#type {
            Some(Type::TlsCertificate(tls)) => match &tls.certificate_chain {
                Some(DataSource {
                    specifier: Some(Specifier::InlineBytes(bytes)),
                    ..
                }) => String::from_utf8(bytes.clone()).unwrap(),
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn pairs_bundles_and_mistakes() {
        let dir = tempfile::tempdir().unwrap();
        let write = |file: &str, text: &str| std::fs::write(dir.path().join(file), text).unwrap();
        let (shop_crt, shop_key) = pair("shop.example.com");
        let (ca, _) = pair("partners-ca");
        let (other_crt, other_key) = pair("other.example.com");
        write("shop.example.com.crt", &shop_crt);
        write("shop.example.com.key", &shop_key);
        write("partners.crt", &ca);
        write("Bad_Name.crt", &ca);
        write("orphan.key", &other_key);
        let first = read(dir.path(), &BTreeMap::new());
        assert_eq!(
            first.secrets.keys().collect::<Vec<_>>(),
            ["ca/partners", "certificate/shop.example.com"]
        );
        assert_eq!(
            chain_of(&first.secrets["certificate/shop.example.com"]),
            shop_crt
        );
        assert_eq!(first.problems.len(), 2, "{:?}", first.problems);
        assert!(
            first
                .problems
                .iter()
                .any(|p| p.contains("Bad_Name.crt: ignored"))
        );
        assert!(
            first
                .problems
                .iter()
                .any(|p| p.contains("no orphan.crt beside it"))
        );

        // A key that is not the certificate's keeps the last good pair.
        write("shop.example.com.crt", &other_crt);
        let mismatched = read(dir.path(), &first.secrets);
        assert_eq!(
            chain_of(&mismatched.secrets["certificate/shop.example.com"]),
            shop_crt
        );
        assert!(
            mismatched
                .problems
                .iter()
                .any(|p| p.contains("not the certificate's key")),
            "{:?}",
            mismatched.problems
        );
        // A whole new pair is served.
        write("shop.example.com.key", &other_key);
        let replaced = read(dir.path(), &mismatched.secrets);
        assert_eq!(
            chain_of(&replaced.secrets["certificate/shop.example.com"]),
            other_crt
        );
    }

    #[test]
    fn the_certificates_envoy_waits_for_are_named_by_their_files() {
        // As Envoy's admin answers /config_dump?resource=dynamic_warming_secrets.
        let dump = serde_json::json!({"configs": [
            {"@type": "type.googleapis.com/envoy.admin.v3.SecretsConfigDump.DynamicSecret",
             "name": "certificate/shop.example.com", "version_info": "uninitialized"},
            {"@type": "type.googleapis.com/envoy.admin.v3.SecretsConfigDump.DynamicSecret",
             "name": "ca/partners"},
            {"@type": "type.googleapis.com/envoy.admin.v3.SecretsConfigDump.DynamicSecret",
             "name": "default"}
        ]});
        let missing: Vec<String> = awaited(&dump)
            .into_iter()
            .filter_map(|s| files_of(&s))
            .collect();
        assert_eq!(
            missing,
            [
                "partners.crt",
                "shop.example.com.crt and shop.example.com.key"
            ]
        );
    }
}

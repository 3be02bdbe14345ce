//! The certificates of `weft up`'s ingress gateway: a demo CA, made once
//! and kept in the data directory, and a server certificate it signs for
//! the demo's hostname, in the directory `weft gateway --certificates`
//! reads. Only for the demo: a real gateway's certificates come from the
//! operator's own CA or ACME.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// Where the demo's certificates are.
pub struct DemoTls {
    /// The CA certificate clients trust (`curl --cacert`).
    pub ca: PathBuf,
    /// The gateway's certificate directory.
    pub certificates: PathBuf,
}

impl DemoTls {
    /// The certificates in `dir`, made the first time: a CA and a
    /// certificate for `hostname` named after it.
    pub fn ensure(dir: &Path, hostname: &str) -> Result<DemoTls> {
        let tls = DemoTls {
            ca: dir.join("demo-ca.crt"),
            certificates: dir.join("certificates"),
        };
        let (cert_file, key_file) = (
            tls.certificates.join(format!("{hostname}.crt")),
            tls.certificates.join(format!("{hostname}.key")),
        );
        if tls.ca.exists() && cert_file.exists() && key_file.exists() {
            return Ok(tls);
        }
        std::fs::create_dir_all(&tls.certificates)
            .with_context(|| format!("cannot create {}", tls.certificates.display()))?;
        let issue = |e: rcgen::Error| anyhow::anyhow!("cannot make the demo certificates: {e}");
        let ca_key = KeyPair::generate().map_err(issue)?;
        let mut ca = CertificateParams::new(Vec::new()).map_err(issue)?;
        ca.distinguished_name
            .push(DnType::CommonName, "weft up demo CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_pem = ca.self_signed(&ca_key).map_err(issue)?.pem();
        let key = KeyPair::generate().map_err(issue)?;
        let mut leaf = CertificateParams::new(vec![hostname.to_string()]).map_err(issue)?;
        leaf.distinguished_name.push(DnType::CommonName, hostname);
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let leaf_pem = leaf
            .signed_by(&key, &Issuer::from_params(&ca, &ca_key))
            .map_err(issue)?
            .pem();
        write(&key_file, &key.serialize_pem(), 0o600)?;
        write(&cert_file, &leaf_pem, 0o644)?;
        write(&tls.ca, &ca_pem, 0o644)?;
        Ok(tls)
    }
}

fn write(path: &Path, text: &str, mode: u32) -> Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(text.as_bytes())?;
    Ok(())
}

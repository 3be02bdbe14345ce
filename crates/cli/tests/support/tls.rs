//! TLS for clients outside the mesh in tests: a certificate authority
//! that signs server and client certificates (and writes them as `weft
//! gateway --certificates` reads them), and an HTTPS client that trusts it.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// A certificate authority for the servers' (and clients') certificates.
pub struct TestCa {
    params: rcgen::CertificateParams,
    key: rcgen::KeyPair,
    pub pem: String,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let pem = params.self_signed(&key).unwrap().pem();
        TestCa { params, key, pem }
    }

    /// A leaf for `names` (DNS names; a client certificate when `client`):
    /// its PEM, key PEM and DER.
    pub fn leaf(&self, names: &[&str], client: bool) -> (String, String, Vec<u8>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, names[0]);
        params.extended_key_usages = vec![if client {
            rcgen::ExtendedKeyUsagePurpose::ClientAuth
        } else {
            rcgen::ExtendedKeyUsagePurpose::ServerAuth
        }];
        let issuer = rcgen::Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        (cert.pem(), key.serialize_pem(), cert.der().to_vec())
    }

    /// Writes a server certificate as the gateway reads it: `NAME.crt`
    /// and `NAME.key`, each replaced whole (renamed into place).
    pub fn install(&self, dir: &Path, name: &str, hostnames: &[&str]) -> Vec<u8> {
        let (cert, key, der) = self.leaf(hostnames, false);
        for (file, text) in [(format!("{name}.key"), key), (format!("{name}.crt"), cert)] {
            use std::os::unix::fs::PermissionsExt;
            let staged = dir.join(format!(".{file}.new"));
            std::fs::write(&staged, text).unwrap();
            std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600)).unwrap();
            std::fs::rename(&staged, dir.join(file)).unwrap();
        }
        der
    }
}

/// An HTTPS (and HTTP) client that reaches `hosts` on 127.0.0.1 (at the
/// URL's port), trusts `ca`, and with `identity` shows a client
/// certificate; with `fresh_connections`, each request makes a new one.
pub fn client(
    ca: &str,
    identity: Option<(&str, &str)>,
    hosts: &[&str],
    fresh_connections: bool,
) -> reqwest::Client {
    let mut roots = rustls::RootCertStore::empty();
    for cert in pem::parse_many(ca).unwrap() {
        roots
            .add(rustls::pki_types::CertificateDer::from(
                cert.contents().to_vec(),
            ))
            .unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let tls = match identity {
        Some((cert, key)) => {
            let chain = pem::parse_many(cert)
                .unwrap()
                .into_iter()
                .map(|c| rustls::pki_types::CertificateDer::from(c.contents().to_vec()))
                .collect();
            let key = rustls::pki_types::PrivateKeyDer::try_from(
                pem::parse(key).unwrap().contents().to_vec(),
            )
            .unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    let local: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut builder = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .tls_info(true)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10));
    for host in hosts {
        builder = builder.resolve(host, local);
    }
    if fresh_connections {
        builder = builder.pool_max_idle_per_host(0);
    }
    builder.build().unwrap()
}

/// The leaf certificate a response came over.
pub fn served_certificate(response: &reqwest::Response) -> Option<Vec<u8>> {
    response
        .extensions()
        .get::<reqwest::tls::TlsInfo>()?
        .peer_certificate()
        .map(<[u8]>::to_vec)
}

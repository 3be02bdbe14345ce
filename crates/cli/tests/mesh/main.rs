//! End-to-end mesh tests: the real `weft server`, `weft edge`, `weft
//! sidecar` with real Envoy (and weft-proxy), and `weft x echo` workloads,
//! on loopback, by topic in the modules below.
//! Every assertion is about real requests through the sidecars.

#[path = "../support/mod.rs"]
mod support;

mod certificates;
mod lifecycle;
mod routing;
mod security;
mod weft_proxy;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::mesh::{DataPlane, Mesh, logged, on_both_data_planes, sidecar, with_echo_app};
use support::tokens::{Issuer, JwksServer};
use support::{Proc, WEFT, free_port, metric, until, weft_up, write};

fn route(spec: &str) -> String {
    format!(
        "apiVersion: weft.dev/v1alpha1
kind: ServiceRoute
metadata: {{name: reviews, tenant: retail, workspace: shop, trafficGroup: traffic}}
spec:
  service: {{name: reviews, namespace: shop}}
  subsets:
    - {{name: v1, labels: {{version: v1}}}}
    - {{name: v2, labels: {{version: v2}}}}
{spec}"
    )
}

fn setting(spec: &str) -> String {
    format!(
        "apiVersion: weft.dev/v1alpha1
kind: TrafficSetting
metadata: {{name: reviews, tenant: retail, workspace: shop, trafficGroup: traffic}}
spec:
  service: {{name: reviews, namespace: shop}}
{spec}"
    )
}

/// Sends one HTTP/1.1 request over TLS with `openssl s_client` (a client
/// that is not weft's), presenting `identity` (certificate chain and key
/// files) if given. Returns what came back.
fn openssl_request(port: u16, ca: &Path, identity: Option<(&Path, &Path)>) -> String {
    use std::io::Write;
    let mut command = Command::new("openssl");
    command
        .args([
            "s_client",
            "-quiet",
            "-connect",
            &format!("127.0.0.1:{port}"),
        ])
        .arg("-CAfile")
        .arg(ca);
    if let Some((chain, key)) = identity {
        // -cert sends only the first certificate; the chain follows it.
        command
            .arg("-cert")
            .arg(chain)
            .arg("-cert_chain")
            .arg(chain)
            .arg("-key")
            .arg(key);
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl runs (scripts/setup installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"GET / HTTP/1.1\r\nHost: reviews\r\nConnection: close\r\n\r\n")
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
}

/// A workload certificate from the edge for `credential`, written as
/// chain and key files; returns them and the trust bundle file.
async fn workload_identity(
    mesh: &Mesh,
    credential: &Path,
    name: &str,
) -> (PathBuf, PathBuf, PathBuf) {
    let key = weft_identity::CertRequest::workload_key().unwrap();
    let file = std::fs::read_to_string(credential).unwrap();
    let secret = file.lines().next().unwrap();
    let svid: Value = edge_client(credential)
        .post(format!("https://127.0.0.1:{}/v1/svid", mesh.edge.xds_port))
        .bearer_auth(secret)
        .json(&serde_json::json!({"csr": weft_identity::csr_to_pem(&key.csr)}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let chain = PathBuf::from(write(
        mesh.dir.path(),
        &format!("{name}.chain.pem"),
        svid["certificateChain"].as_str().unwrap(),
    ));
    let key_file = PathBuf::from(write(
        mesh.dir.path(),
        &format!("{name}.key.pem"),
        &key.key.serialize_pem(),
    ));
    let bundle = PathBuf::from(write(
        mesh.dir.path(),
        "bundle.pem",
        svid["trust"]["bundle"].as_str().unwrap(),
    ));
    (chain, key_file, bundle)
}

/// An HTTPS client for the edge's xDS port, as a sidecar makes one: the
/// edge must show its SVID of the bundle in `credential`.
fn edge_client(credential: &Path) -> reqwest::Client {
    let file = std::fs::read_to_string(credential).unwrap();
    let pem: Vec<&str> = file.lines().skip(1).collect();
    let trust = std::sync::Arc::new(weft_identity::tls::TrustStore::default());
    trust.set(weft_identity::Bundle::from_roots_pem(&pem.join("\n")).unwrap());
    let tls = weft_identity::tls::client_config(
        trust,
        |bundle| {
            weft_identity::SpiffeId::edge(bundle.trust_domain())
                .unwrap()
                .to_string()
        },
        None,
    )
    .unwrap();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .build()
        .unwrap()
}

/// Requests to reviews through a client sidecar until stopped: new
/// connections now and then, so fresh handshakes use new certificates, and
/// requests on open ones in between.
struct Load {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<(u32, Vec<String>)>,
}

impl Load {
    fn start(port: u16) -> Load {
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !*stopped.borrow_and_update() {
                let client = reqwest::Client::builder()
                    .timeout(Duration::from_secs(5))
                    .build()
                    .unwrap();
                for _ in 0..20 {
                    match client
                        .get(format!("http://127.0.0.1:{port}/"))
                        .header("host", "reviews")
                        .send()
                        .await
                    {
                        Ok(r) if r.status() == 200 => ok += 1,
                        Ok(r) => failed.push(r.status().to_string()),
                        Err(e) => failed.push(e.to_string()),
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (ok, failed)
        });
        Load { stop, task }
    }

    /// Requests that succeeded, and how the others failed.
    async fn stop(self) -> (u32, Vec<String>) {
        let _ = self.stop.send(true);
        self.task.await.unwrap()
    }
}

/// The inbound port of a workload, as its edge reports it.
async fn inbound_port(mesh: &Mesh, node: &str) -> u16 {
    let status = mesh.edge_status().await;
    status["proxies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["node"] == node)
        .and_then(|p| p["address"].as_str())
        .and_then(|a| a.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("the edge reports no inbound address for {node}: {status}"))
}

/// The leaf certificate (PEM) a sidecar's inbound listener presents.
fn served_certificate(port: u16, ca: &Path, chain: &Path, key: &Path) -> String {
    let out = Command::new("openssl")
        .args([
            "s_client",
            "-showcerts",
            "-connect",
            &format!("127.0.0.1:{port}"),
        ])
        .arg("-CAfile")
        .arg(ca)
        .arg("-cert")
        .arg(chain)
        .arg("-cert_chain")
        .arg(chain)
        .arg("-key")
        .arg(key)
        .stdin(Stdio::null())
        .output()
        .expect("openssl runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let start = text.find("-----BEGIN CERTIFICATE-----").unwrap_or(0);
    let marker = "-----END CERTIFICATE-----";
    let end = text[start..]
        .find(marker)
        .map_or(text.len(), |e| start + e + marker.len());
    text[start..end].to_string()
}

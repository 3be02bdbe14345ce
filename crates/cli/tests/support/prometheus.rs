//! A real Prometheus (Debian's `prometheus` package, installed by
//! `scripts/setup`) on a free loopback port with its own data directory,
//! stopped when dropped; and its query API.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::{Proc, free_port, until};

pub struct Prometheus {
    pub port: u16,
    _process: Proc,
}

impl Prometheus {
    /// Starts it with `config` (a prometheus.yml) and waits until it is
    /// ready.
    pub async fn start(config: &Path, dir: &Path, http: &reqwest::Client) -> Prometheus {
        let port = free_port();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("prometheus-data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus (install it with scripts/setup)");
        let prometheus = Prometheus {
            port,
            _process: Proc(child),
        };
        let ready = format!("http://127.0.0.1:{port}/-/ready");
        until("Prometheus is ready", Duration::from_secs(30), async || {
            http.get(&ready)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await;
        prometheus
    }

    /// The result of an instant query (the vector's elements); panics on
    /// an error, which names the query.
    pub async fn query(&self, http: &reqwest::Client, expr: &str) -> Vec<Value> {
        let url = format!("http://127.0.0.1:{}/api/v1/query", self.port);
        let answer: Value = http
            .get(&url)
            .query(&[("query", expr)])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(answer["status"], "success", "{expr}: {answer}");
        answer["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Its scrape targets, as its API shows them.
    pub async fn targets(&self, http: &reqwest::Client) -> Value {
        let url = format!("http://127.0.0.1:{}/api/v1/targets", self.port);
        http.get(&url).send().await.unwrap().json().await.unwrap()
    }
}

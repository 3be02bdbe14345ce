//! A real OpenID provider (`oidc-provider` on Node) and a real browser
//! (Debian's Chromium driven by `playwright-core`, with `axe-core` for
//! accessibility checks), all installed by `scripts/setup` into
//! `.tools/node`, for the sign-in and web UI tests.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use super::free_port;

fn scripts() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

fn node_modules() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.tools/node/node_modules")
}

/// An OpenID provider on 127.0.0.1 with one client.
pub struct Provider {
    pub port: u16,
    clients: String,
    token_ttl: u64,
    log: PathBuf,
    child: Option<Child>,
}

impl Provider {
    /// The provider for client `shop` (secret `secret`), which may send
    /// browsers back to `redirect` and after sign-out to `after_logout`;
    /// its tokens live `token_ttl` seconds.
    pub async fn start(
        log: PathBuf,
        secret: &str,
        redirect: &str,
        after_logout: &str,
        token_ttl: u64,
    ) -> Provider {
        let clients = serde_json::json!([{
            "client_id": "shop",
            "client_secret": secret,
            "redirect_uris": [redirect],
            "post_logout_redirect_uris": [after_logout],
        }])
        .to_string();
        let mut provider = Provider {
            port: free_port(),
            clients,
            token_ttl,
            log,
            child: None,
        };
        provider.resume().await;
        provider
    }

    pub fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts it (again), and waits for its discovery document.
    pub async fn resume(&mut self) {
        let log = std::fs::File::create(&self.log).unwrap();
        let child = Command::new("node")
            .arg(scripts().join("provider.mjs"))
            .env("WEFT_NODE_MODULES", node_modules())
            .env("PORT", self.port.to_string())
            .env("CLIENTS", &self.clients)
            .env("TOKEN_TTL", self.token_ttl.to_string())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("node (install it with scripts/setup)");
        self.child = Some(child);
        let url = format!("{}/.well-known/openid-configuration", self.issuer());
        super::until(
            "the OpenID provider answers",
            Duration::from_secs(30),
            async || reqwest::get(&url).await.is_ok_and(|r| r.status() == 200),
        )
        .await;
    }

    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }
}

/// A browser: one page, its cookies kept.
pub struct Browser {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl Browser {
    /// A browser that reaches `hosts` at 127.0.0.1 and does not check
    /// certificates.
    pub fn start(hosts: &[&str], callback_path: &str, log: PathBuf) -> Browser {
        let rules: Vec<String> = hosts.iter().map(|h| format!("MAP {h} 127.0.0.1")).collect();
        let mut child = Command::new("node")
            .arg(scripts().join("browser.mjs"))
            .env("WEFT_NODE_MODULES", node_modules())
            .env("HOST_RULES", rules.join(","))
            .env("CALLBACK_PATH", callback_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log).unwrap())
            .kill_on_drop(true)
            .spawn()
            .expect("node (install it with scripts/setup)");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        Browser {
            child,
            stdin,
            stdout,
        }
    }

    async fn send(&mut self, command: Value) -> Value {
        let line = format!("{command}\n");
        self.stdin.write_all(line.as_bytes()).await.unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(60), self.stdout.next_line())
            .await
            .expect("the browser answers within a minute")
            .unwrap()
            .expect("the browser is running");
        let answer: Value = serde_json::from_str(&answer).unwrap();
        assert!(answer.get("error").is_none(), "{command}: {answer}");
        answer
    }

    /// Opens `url`; returns where the browser ended up, and the page's text.
    pub async fn goto(&mut self, url: &str) -> (String, String) {
        let answer = self
            .send(serde_json::json!({"op": "goto", "url": url}))
            .await;
        page(answer)
    }

    /// Signs in at the provider's page the browser is on, as `login`.
    pub async fn sign_in(&mut self, login: &str) -> (String, String) {
        let answer = self
            .send(serde_json::json!({"op": "signIn", "login": login}))
            .await;
        page(answer)
    }

    /// Types `value` into the field `selector`.
    pub async fn fill(&mut self, selector: &str, value: &str) {
        self.send(serde_json::json!({"op": "fill", "selector": selector, "value": value}))
            .await;
    }

    /// Clicks `selector` and waits for the page it loads; returns where
    /// the browser is, and the page's text.
    pub async fn submit(&mut self, selector: &str) -> (String, String) {
        page(
            self.send(serde_json::json!({"op": "submit", "selector": selector}))
                .await,
        )
    }

    /// The text of every element matching `selector`.
    pub async fn texts(&mut self, selector: &str) -> Vec<String> {
        let answer = self
            .send(serde_json::json!({"op": "texts", "selector": selector}))
            .await;
        strings(&answer["texts"])
    }

    /// Attribute `name` of every element matching `selector`.
    pub async fn attrs(&mut self, selector: &str, name: &str) -> Vec<String> {
        let answer = self
            .send(serde_json::json!({"op": "attrs", "selector": selector, "name": name}))
            .await;
        strings(&answer["values"])
    }

    /// Saves the whole page as a PNG.
    pub async fn screenshot(&mut self, path: &std::path::Path) {
        self.send(serde_json::json!({"op": "screenshot", "path": path}))
            .await;
    }

    /// axe-core's serious and critical findings on the page.
    pub async fn accessibility_violations(&mut self) -> Vec<Value> {
        let answer = self.send(serde_json::json!({"op": "axe"})).await;
        answer["violations"].as_array().cloned().unwrap_or_default()
    }

    /// Console errors, failed requests and failed assets since the last
    /// ask.
    pub async fn problems(&mut self) -> Vec<String> {
        let answer = self.send(serde_json::json!({"op": "problems"})).await;
        strings(&answer["problems"])
    }

    /// Milliseconds from navigation to the page's first contentful paint.
    pub async fn first_paint_ms(&mut self) -> Option<f64> {
        let answer = self.send(serde_json::json!({"op": "firstPaint"})).await;
        answer["ms"].as_f64()
    }

    pub async fn cookies(&mut self) -> Vec<Value> {
        let answer = self.send(serde_json::json!({"op": "cookies"})).await;
        answer["cookies"].as_array().cloned().unwrap_or_default()
    }

    /// The sign-in callbacks the browser has requested so far.
    pub async fn callbacks(&mut self) -> Vec<String> {
        let answer = self.send(serde_json::json!({"op": "callbacks"})).await;
        answer["urls"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|u| u.as_str().map(str::to_string))
            .collect()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

fn strings(list: &Value) -> Vec<String> {
    list.as_array()
        .into_iter()
        .flatten()
        .map(|v| v.as_str().unwrap_or_default().to_string())
        .collect()
}

fn page(answer: Value) -> (String, String) {
    (
        answer["url"].as_str().unwrap_or_default().to_string(),
        answer["text"].as_str().unwrap_or_default().to_string(),
    )
}

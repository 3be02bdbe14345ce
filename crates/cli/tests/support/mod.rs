//! Harness for end-to-end tests: the real `weft` binary, started on a free
//! loopback port with its own data directory, stopped when dropped.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

pub const WEFT: &str = env!("CARGO_BIN_EXE_weft");

pub struct Server {
    child: Child,
    pub url: String,
    /// Where edges connect (mutual TLS).
    pub edge_url: String,
    pub data: PathBuf,
    /// Everything the server printed on stdout.
    pub banner: Vec<String>,
}

impl Server {
    /// Starts `weft server` on SQLite in `data`, or on `store` if given.
    pub fn start(data: &Path, store: Option<&str>) -> Server {
        Server::start_with(data, store, &[])
    }

    /// Starts `weft server` with extra flags.
    pub fn start_with(data: &Path, store: Option<&str>, flags: &[&str]) -> Server {
        // Every test starts a server first: the place to give reqwest its
        // TLS provider.
        weft_identity::tls::install_provider();
        let mut command = Command::new(WEFT);
        command
            .args([
                "server",
                "--listen",
                "127.0.0.1:0",
                "--edge-listen",
                "127.0.0.1:0",
                "--data",
            ])
            .arg(data)
            .args(flags)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(store) = store {
            command.args(["--store", store]);
        }
        let mut child = command.spawn().expect("weft server starts");
        let stdout = child.stdout.take().unwrap();
        let (lines_tx, lines_rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = lines_tx.send(line);
            }
        });
        let mut banner = Vec::new();
        let url = loop {
            let line = lines_rx
                .recv_timeout(Duration::from_secs(30))
                .expect("weft server prints where it listens within 30 s");
            banner.push(line.clone());
            if let Some(at) = line.find("http://") {
                break line[at..].split_whitespace().next().unwrap().to_string();
            }
        };
        // The rest of the banner follows right away.
        while let Ok(line) = lines_rx.recv_timeout(Duration::from_millis(300)) {
            banner.push(line);
        }
        let edge_url = banner
            .iter()
            .find(|l| l.contains("edges connect to"))
            .and_then(|l| l.split_whitespace().find(|w| w.starts_with("https://")))
            .unwrap_or_default()
            .to_string();
        Server {
            child,
            url,
            edge_url,
            data: data.to_path_buf(),
            banner,
        }
    }

    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.data.join("admin.token"))
            .unwrap()
            .trim()
            .to_string()
    }

    /// Runs a client command against this server with `token`.
    pub fn weft(&self, token: &str, args: &[&str]) -> Run {
        run(Command::new(WEFT)
            .args(args)
            .env("WEFT_SERVER", &self.url)
            .env("WEFT_TOKEN", token))
    }

    /// Stops the server with SIGTERM and waits for it.
    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A finished CLI command.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs a command with no client configuration but what it was given.
pub fn run(command: &mut Command) -> Run {
    let given: Vec<String> = command
        .get_envs()
        .map(|(k, _)| k.to_string_lossy().into_owned())
        .collect();
    for name in ["WEFT_SERVER", "WEFT_TOKEN"] {
        if !given.iter().any(|g| g == name) {
            command.env_remove(name);
        }
    }
    if !given.iter().any(|g| g == "WEFT_CONFIG") {
        command.env(
            "WEFT_CONFIG",
            std::env::temp_dir().join("weft-tests-no-config.yaml"),
        );
    }
    let Output {
        status,
        stdout,
        stderr,
    } = command.stdin(Stdio::null()).output().expect("weft runs");
    Run {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

pub fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Raw HTTP against the API.
pub async fn api(
    server: &Server,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> (u16, Value) {
    let client = reqwest::Client::new();
    let mut request = client.request(method.parse().unwrap(), format!("{}{path}", server.url));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(body);
    }
    let response = request.send().await.expect("the server answers");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Creates a user and a token for it, as `admin`; returns the token.
pub async fn user_with_token(server: &Server, admin: &str, name: &str) -> String {
    let user = serde_json::json!({"apiVersion": "weft.dev/v1alpha1", "kind": "User", "metadata": {"name": name}});
    let (status, body) = api(
        server,
        "PUT",
        &format!("/v1/users/{name}"),
        Some(admin),
        Some(&user),
    )
    .await;
    assert!(status == 201 || status == 200, "{status} {body}");
    let (status, body) = api(
        server,
        "POST",
        "/v1/tokens",
        Some(admin),
        Some(&serde_json::json!({"user": name})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    body["secret"].as_str().unwrap().to_string()
}

/// Writes `text` to `dir/name` and returns the path as a string.
pub fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

//! Harness for end-to-end tests: the real `weft` binary, started on a free
//! loopback port with its own data directory, stopped when dropped.

#![allow(dead_code)]

pub mod browser;
pub mod gateway;
pub mod load;
pub mod mesh;
pub mod otlp;
pub mod prometheus;
pub mod redis;
pub mod tls;
pub mod tokens;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

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
        command.args(["server", "--listen", "127.0.0.1:0", "--data"]);
        command.arg(data).args(flags);
        // A test that restarts the server keeps its edge port.
        if !flags.contains(&"--edge-listen") {
            command.args(["--edge-listen", "127.0.0.1:0"]);
        }
        command
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

pub fn envoy() -> PathBuf {
    if let Some(path) = std::env::var_os("WEFT_ENVOY") {
        return PathBuf::from(path);
    }
    let local = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.tools/venv/bin/envoy");
    assert!(
        local.exists(),
        "Envoy is missing: run scripts/setup (or set WEFT_ENVOY)"
    );
    local
}

/// A port for a listener a test starts. Taken below the kernel's
/// ephemeral range (32768 and up), so no outgoing connection of Envoy or a
/// client can be holding it when the listener binds, and never handed out
/// twice in this process; free when it is handed out.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    const FIRST: u16 = 20_000;
    const LAST: u16 = 32_000;
    // Each run starts elsewhere in the range, away from the last run's
    // ports.
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let _ = NEXT.compare_exchange(
        0,
        FIRST + (std::process::id() % 100) as u16 * 100,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    loop {
        let port = NEXT.fetch_add(1, Ordering::SeqCst);
        let port = FIRST + port.wrapping_sub(FIRST) % (LAST - FIRST);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A process stopped with SIGTERM (so a sidecar stops its Envoy too).
pub struct Proc(pub Child);

impl Proc {
    /// Sends SIGTERM; returns false if the process had to be killed after
    /// 10 s.
    pub fn stop(&mut self) -> bool {
        if let Ok(Some(_)) = self.0.try_wait() {
            return true;
        }
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
        false
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// Prints the end of every log in `dir`: when a test fails, the logs of
/// the components tell why.
pub fn show_log_tails(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "log") {
            let log = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(40)..].join("\n");
            eprintln!("--- last lines of {}\n{tail}", path.display());
        }
    }
}

pub async fn until(what: &str, deadline: Duration, mut check: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    while started.elapsed() < deadline {
        if check().await {
            eprintln!("waited {:?} until {what}", started.elapsed());
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out after {deadline:?} waiting until {what}");
}

/// Runs `weft up` (with `extra` flags) until it says the mesh is ready;
/// returns it with what it printed.
pub fn weft_up(data: &Path, port: u16, extra: &[&str]) -> (Proc, String) {
    let mut command = Command::new(WEFT);
    command
        .args(["up", "--listen", "127.0.0.1:0", "--port", &port.to_string()])
        .arg("--data")
        .arg(data)
        .arg("--envoy")
        .arg(envoy())
        .args(extra);
    // Tests run side by side: the ingress gateway's port must be free too.
    if !extra.contains(&"--https-port") {
        command.args(["--https-port", &free_port().to_string()]);
    }
    start_up(&mut command, data)
}

/// Starts `command` (a `weft up`) and waits until it says it is ready.
pub fn start_up(command: &mut Command, data: &Path) -> (Proc, String) {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let mut printed = String::new();
    let up = Proc(child);
    let deadline = Instant::now() + Duration::from_secs(90);
    while !printed.contains("Stop with Ctrl-C") {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => printed.push_str(&format!("{line}\n")),
            Err(_) => {
                show_log_tails(&data.join("logs"));
                panic!("weft up was not ready within 90 s; it printed:\n{printed}")
            }
        }
    }
    (up, printed)
}

/// The value of metric `name` on the Prometheus page at `url`, if the page
/// has it.
pub async fn metric(http: &reqwest::Client, url: &str, name: &str) -> Option<i64> {
    let text = http.get(url).send().await.ok()?.text().await.ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
}

/// Whether process `pid` exists (a zombie counts as gone).
pub fn alive(pid: u32) -> bool {
    weft_agent::procfs::stat(pid).is_some()
}

/// SIGKILL to `pid`.
pub fn kill9(pid: u32) {
    let status = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -KILL {pid}");
}

/// Waits until none of `pids` runs.
pub async fn until_gone(what: &str, pids: &[u32]) {
    until(what, Duration::from_secs(10), async || {
        !pids.iter().any(|pid| alive(*pid))
    })
    .await;
}

//! `weft x chaos`: runs `weft up --multi-cluster`, sends it a steady load,
//! and SIGKILLs a random process of it every few seconds — the server, an
//! edge, an east-west gateway, a sidecar (its Envoy and app go with it),
//! an Envoy alone, an app alone — then prints what was sent, what failed
//! (when and why), every kill with how long the mesh took to heal, and the
//! memory of each kind of process at the start and the end.
//!
//! Before each kill the mesh must be whole again (every component
//! running, every edge serving all its proxies in sync, the server
//! ready), so each fault is met alone: a failed request is weft's fault.
//! The client's sidecar is never killed: it is the load's way in, and an
//! app whose own proxy is dead fails by definition.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::supervise::{COMPONENTS, Running};
use weft_agent::children;
use weft_agent::procfs;

#[derive(Debug, clap::Args)]
pub struct ChaosArgs {
    /// How long the load and the kills go on
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Time between kills (each waits for the mesh to heal first)
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub every: Duration,
    /// Requests per second, over all connections
    #[arg(long, default_value_t = 40)]
    pub rate: u32,
    /// Connections the load keeps open, each sending in turn
    #[arg(long, default_value_t = 4)]
    pub connections: u32,
    /// Seed for choosing victims, to replay a run [default: random]
    #[arg(long)]
    pub seed: Option<u64>,
    /// The mesh's data directory [default: a temporary one, removed after]
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// The Envoy binary [default: as `weft up` finds it]
    #[arg(long, env = "WEFT_ENVOY")]
    pub envoy: Option<PathBuf>,
    /// Also write the report as JSON to FILE
    #[arg(long)]
    pub report: Option<PathBuf>,
}

/// The longest the mesh may take to heal after a kill.
const HEAL_LIMIT: Duration = Duration::from_secs(60);
/// Each request's limit (the demo's routes time out after 5 s and retry).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// The kinds of process a kill chooses among, each equally likely.
const KINDS: [&str; 6] = ["server", "edge", "eastwest", "sidecar", "envoy", "app"];

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Kill {
    /// Seconds since the load started.
    at: f64,
    name: String,
    kind: String,
    pid: u32,
    /// Seconds until the mesh was whole again; None if it was not within
    /// the limit.
    healed_after: Option<f64>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Failure {
    at: f64,
    cause: String,
}

/// Resident memory of one kind of process.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
struct Memory {
    processes: usize,
    total_mib: f64,
    largest_mib: f64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Report {
    seconds: f64,
    seed: u64,
    rate: u32,
    connections: u32,
    sent: u64,
    failed: u64,
    failures: Vec<Failure>,
    kills: Vec<Kill>,
    memory_start: BTreeMap<String, Memory>,
    memory_end: BTreeMap<String, Memory>,
    /// What the client's Envoy counted for its calls to reviews: how the
    /// faults were absorbed (retries, connect failures, ejections).
    client_envoy: BTreeMap<String, u64>,
}

impl Report {
    fn passed(&self) -> bool {
        self.failed == 0 && self.kills.iter().all(|k| k.healed_after.is_some())
    }
}

/// The running `weft up` and what it printed.
struct Up {
    child: tokio::process::Child,
    runtime: PathBuf,
    server: String,
    port: u16,
}

pub async fn run(args: ChaosArgs) -> Result<i32> {
    let temporary = match &args.data {
        Some(_) => None,
        None => Some(tempfile::tempdir()?),
    };
    let data = args
        .data
        .clone()
        .or_else(|| temporary.as_ref().map(|t| t.path().to_path_buf()))
        .expect("one of them is set");
    let seed = args.seed.unwrap_or_else(rand::random);
    let mut up = start_up(&data, args.envoy.as_deref()).await?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let expected = proxies_per_edge(&up, &http).await?;
    eprintln!(
        "weft x chaos: the mesh is up; {} for {}, a kill every {} (seed {seed})",
        format_args!(
            "{} requests/s over {} connections",
            args.rate, args.connections
        ),
        humantime::format_duration(args.duration),
        humantime::format_duration(args.every),
    );
    let memory_start = memory(&up);

    let load = Load::start(up.port, args.rate, args.connections);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut kills: Vec<Kill> = Vec::new();
    let started = load.started;
    // Ctrl-C ends the run early, with the report of what ran.
    let interrupted = crate::server::shutdown_signal();
    tokio::pin!(interrupted);
    let mut stopped_early = false;
    while started.elapsed() + args.every < args.duration {
        tokio::select! {
            () = tokio::time::sleep(args.every) => {}
            () = &mut interrupted => {
                stopped_early = true;
                break;
            }
        }
        let Some(Process { name, kind, pid }) = choose(&up, &mut rng) else {
            continue;
        };
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_raw(pid as i32).expect("a pid is positive"),
            rustix::process::Signal::KILL,
        );
        let at = started.elapsed();
        eprintln!(
            "weft x chaos: +{:.1}s SIGKILL {name} ({kind}, pid {pid})",
            at.as_secs_f64()
        );
        // Let the supervisor see the death before judging the mesh whole.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let healed_after = until_whole(&up, &http, &expected)
            .await
            .then(|| (started.elapsed() - at).as_secs_f64());
        match healed_after {
            Some(seconds) => eprintln!("weft x chaos: healed after {seconds:.1}s"),
            None => eprintln!("weft x chaos: not whole {HEAL_LIMIT:?} after the kill"),
        }
        kills.push(Kill {
            at: at.as_secs_f64(),
            name,
            kind,
            pid,
            healed_after,
        });
    }
    if !stopped_early {
        let remaining = args.duration.saturating_sub(started.elapsed());
        tokio::select! {
            () = tokio::time::sleep(remaining) => {}
            () = &mut interrupted => {}
        }
    }
    let (sent, failures) = load.stop().await;
    let memory_end = memory(&up);
    let client_envoy = client_envoy_counters(&data, &http).await;
    children::stop(&mut up.child).await;

    let report = Report {
        seconds: started.elapsed().as_secs_f64(),
        seed,
        rate: args.rate,
        connections: args.connections,
        sent,
        failed: failures.len() as u64,
        failures,
        kills,
        memory_start,
        memory_end,
        client_envoy,
    };
    print_report(&report);
    if let Some(path) = &args.report {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(if report.passed() { 0 } else { 1 })
}

/// Starts `weft up --multi-cluster` in `data` and waits until it is ready.
async fn start_up(data: &Path, envoy: Option<&Path>) -> Result<Up> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    std::fs::create_dir_all(data)?;
    let log = std::fs::File::create(data.join("up.log"))?;
    let mut command = children::tied(std::env::current_exe()?);
    command
        .args(["up", "--multi-cluster", "--listen", "127.0.0.1:0"])
        .args(["--port", &port.to_string()])
        .arg("--data")
        .arg(data);
    if let Some(envoy) = envoy {
        command.arg("--envoy").arg(envoy);
    }
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .context("cannot start weft up")?;
    let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    let mut server = None;
    let ready = tokio::time::timeout(Duration::from_secs(180), async {
        while let Some(line) = lines.next_line().await? {
            if let Some(url) = line.trim().strip_prefix("server") {
                server = url.split_whitespace().next().map(str::to_string);
            }
            if line.starts_with("Stop with Ctrl-C") {
                return Ok::<bool, std::io::Error>(true);
            }
        }
        Ok(false)
    })
    .await;
    // Keep reading what it prints, so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    if !matches!(ready, Ok(Ok(true))) {
        bail!(
            "weft up did not get ready; see {}",
            data.join("up.log").display()
        );
    }
    Ok(Up {
        child,
        runtime: data.join("multi-cluster/run"),
        server: server.context("weft up did not print the server's URL")?,
        port,
    })
}

fn components(up: &Up) -> Vec<Running> {
    std::fs::read(up.runtime.join(COMPONENTS))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}

/// The proxies each edge serves once the mesh is up: what "whole" means.
async fn proxies_per_edge(up: &Up, http: &reqwest::Client) -> Result<BTreeMap<String, usize>> {
    let mut expected = BTreeMap::new();
    for edge in components(up).iter().filter(|c| c.kind == "edge") {
        let admin = edge
            .admin
            .as_deref()
            .context("an edge without an admin address")?;
        let status = edge_status(http, admin)
            .await
            .context("an edge does not answer")?;
        expected.insert(edge.name.clone(), in_sync(&status));
    }
    Ok(expected)
}

async fn edge_status(http: &reqwest::Client, admin: &str) -> Option<serde_json::Value> {
    let response = http
        .get(format!("http://{admin}/status"))
        .send()
        .await
        .ok()?;
    response.json().await.ok()
}

/// The proxies an edge reports connected and in sync.
fn in_sync(status: &serde_json::Value) -> usize {
    status["proxies"].as_array().map_or(0, |proxies| {
        proxies
            .iter()
            .filter(|p| p["connected"] == true && p["inSync"] == true)
            .count()
    })
}

/// Waits until every component runs, the server is ready and every edge
/// serves all its proxies in sync; false if that takes over the limit.
async fn until_whole(up: &Up, http: &reqwest::Client, expected: &BTreeMap<String, usize>) -> bool {
    let deadline = Instant::now() + HEAL_LIMIT;
    while Instant::now() < deadline {
        if whole(up, http, expected).await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

async fn whole(up: &Up, http: &reqwest::Client, expected: &BTreeMap<String, usize>) -> bool {
    let running = components(up);
    if running.is_empty() || running.iter().any(|c| c.pid.is_none()) {
        return false;
    }
    let ready = http.get(format!("{}/readyz", up.server)).send().await;
    if !ready.is_ok_and(|r| r.status().is_success()) {
        return false;
    }
    for edge in running.iter().filter(|c| c.kind == "edge") {
        let Some(admin) = edge.admin.as_deref() else {
            return false;
        };
        let Some(status) = edge_status(http, admin).await else {
            return false;
        };
        if Some(&in_sync(&status)) != expected.get(&edge.name) {
            return false;
        }
    }
    true
}

/// One process of the mesh: what to call it, its kind, its pid.
struct Process {
    name: String,
    kind: String,
    pid: u32,
}

/// The running components and the Envoys and apps they started.
fn processes(up: &Up) -> Vec<Process> {
    let mut processes = Vec::new();
    for component in components(up) {
        let Some(pid) = component.pid else { continue };
        for child in procfs::children_of(pid) {
            let kind = match procfs::program(child).as_deref() {
                Some("envoy") => "envoy",
                _ => "app",
            };
            processes.push(Process {
                name: format!("{}'s {kind}", component.name),
                kind: kind.into(),
                pid: child,
            });
        }
        processes.push(Process {
            name: component.name,
            kind: component.kind,
            pid,
        });
    }
    processes
}

/// A victim: a kind chosen at random, then one process of that kind.
/// The client's sidecar and what it runs (the load's way in) are left
/// alone.
fn choose(up: &Up, rng: &mut impl Rng) -> Option<Process> {
    let mut by_kind: BTreeMap<&str, Vec<Process>> = BTreeMap::new();
    for process in processes(up) {
        if process.name == "client" || process.name.starts_with("client's ") {
            continue;
        }
        if let Some(kind) = KINDS.iter().find(|k| **k == process.kind) {
            by_kind.entry(kind).or_default().push(process);
        }
    }
    let kinds: Vec<&&str> = KINDS.iter().filter(|k| by_kind.contains_key(**k)).collect();
    let kind = **kinds.get(rng.random_range(0..kinds.len().max(1)))?;
    let mut victims = by_kind.remove(kind)?;
    let i = rng.random_range(0..victims.len());
    Some(victims.swap_remove(i))
}

/// The counters of the client's Envoy that say how faults were met,
/// summed over its clusters for reviews. Its admin port is in its log.
async fn client_envoy_counters(data: &Path, http: &reqwest::Client) -> BTreeMap<String, u64> {
    const COUNTERS: [&str; 6] = [
        "upstream_rq_retry",
        "upstream_rq_retry_success",
        "upstream_rq_retry_overflow",
        "upstream_cx_connect_fail",
        "upstream_rq_pending_overflow",
        "outlier_detection.ejections_enforced_total",
    ];
    let mut counters = BTreeMap::new();
    let log =
        std::fs::read_to_string(data.join("multi-cluster/logs/client.log")).unwrap_or_default();
    let Some(admin) = log
        .split("Envoy admin ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
    else {
        return counters;
    };
    let Ok(response) = http.get(format!("{admin}/stats")).send().await else {
        return counters;
    };
    let text = response.text().await.unwrap_or_default();
    for line in text.lines() {
        let Some((name, value)) = line.split_once(": ") else {
            continue;
        };
        if !name.starts_with("cluster.") || !name.contains("reviews") {
            continue;
        }
        if let Some(counter) = COUNTERS.iter().find(|c| name.ends_with(&format!(".{c}")))
            && let Ok(value) = value.trim().parse::<u64>()
        {
            *counters.entry(counter.to_string()).or_default() += value;
        }
    }
    counters
}

/// Resident memory by kind: `weft up`, its components, their Envoys and apps.
fn memory(up: &Up) -> BTreeMap<String, Memory> {
    let mut processes: Vec<(String, u32)> =
        processes(up).into_iter().map(|p| (p.kind, p.pid)).collect();
    if let Some(pid) = up.child.id() {
        processes.push(("weft up".into(), pid));
    }
    let mut memory: BTreeMap<String, Memory> = BTreeMap::new();
    for (kind, pid) in processes {
        let Some(bytes) = procfs::rss(pid) else {
            continue;
        };
        let mib = bytes as f64 / (1024.0 * 1024.0);
        let entry = memory.entry(kind).or_default();
        entry.processes += 1;
        entry.total_mib += mib;
        entry.largest_mib = entry.largest_mib.max(mib);
    }
    memory
}

fn print_report(report: &Report) {
    println!(
        "weft x chaos: {:.0} s at {} requests/s over {} connections, seed {}",
        report.seconds, report.rate, report.connections, report.seed
    );
    println!(
        "requests: {} sent, {} failed ({:.1}/s achieved)",
        report.sent,
        report.failed,
        report.sent as f64 / report.seconds.max(1.0)
    );
    for failure in &report.failures {
        println!("  failed at +{:.1}s: {}", failure.at, failure.cause);
    }
    println!("kills: {}", report.kills.len());
    for kill in &report.kills {
        let healed = kill
            .healed_after
            .map_or("NOT HEALED".to_string(), |s| format!("healed in {s:.1}s"));
        println!(
            "  +{:.1}s SIGKILL {} ({}, pid {}); {healed}",
            kill.at, kill.name, kill.kind, kill.pid
        );
    }
    println!("memory (RSS)        start                      end");
    let kinds: std::collections::BTreeSet<&String> = report
        .memory_start
        .keys()
        .chain(report.memory_end.keys())
        .collect();
    let cell = |m: Option<&Memory>| {
        m.map_or("-".to_string(), |m| {
            format!(
                "{} × ≤{:.0} MiB = {:.0} MiB",
                m.processes, m.largest_mib, m.total_mib
            )
        })
    };
    for kind in kinds {
        println!(
            "  {kind:<10} {:>26} {:>26}",
            cell(report.memory_start.get(kind)),
            cell(report.memory_end.get(kind))
        );
    }
    let counters: Vec<String> = report
        .client_envoy
        .iter()
        .map(|(name, value)| format!("{name} {value}"))
        .collect();
    println!("client Envoy, calls to reviews: {}", counters.join(", "));
    println!(
        "{}",
        if report.passed() {
            "PASSED: no failed request; the mesh healed after every kill"
        } else {
            "FAILED"
        }
    );
}

/// Requests at a fixed rate through the client's sidecar, each connection
/// sending in turn.
struct Load {
    started: Instant,
    stop: tokio::sync::watch::Sender<bool>,
    workers: Vec<tokio::task::JoinHandle<u64>>,
    failures: Arc<Mutex<Vec<Failure>>>,
}

impl Load {
    fn start(port: u16, rate: u32, connections: u32) -> Load {
        let started = Instant::now();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let failures = Arc::new(Mutex::new(Vec::new()));
        let connections = connections.max(1);
        let period = Duration::from_secs_f64(f64::from(connections) / f64::from(rate.max(1)));
        let workers = (0..connections)
            .map(|i| {
                let mut stopped = stopped.clone();
                let failures = failures.clone();
                tokio::spawn(async move {
                    // One connection each: no pool sharing between workers.
                    let http = reqwest::Client::builder()
                        .timeout(REQUEST_TIMEOUT)
                        .pool_max_idle_per_host(1)
                        .build()
                        .expect("a plain HTTP client builds");
                    // Spread the connections' turns over one period.
                    tokio::time::sleep(period * i / connections).await;
                    let mut ticks = tokio::time::interval(period);
                    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    let mut sent = 0;
                    loop {
                        tokio::select! {
                            _ = ticks.tick() => {}
                            _ = stopped.changed() => return sent,
                        }
                        sent += 1;
                        if let Err(cause) = request(&http, port).await {
                            let at = started.elapsed().as_secs_f64();
                            eprintln!("weft x chaos: +{at:.1}s a request failed: {cause}");
                            failures
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .push(Failure { at, cause });
                        }
                    }
                })
            })
            .collect();
        Load {
            started,
            stop,
            workers,
            failures,
        }
    }

    /// Stops sending; the requests sent and those that failed.
    async fn stop(self) -> (u64, Vec<Failure>) {
        let _ = self.stop.send(true);
        let mut sent = 0;
        for worker in self.workers {
            sent += worker.await.unwrap_or_default();
        }
        let failures =
            std::mem::take(&mut *self.failures.lock().unwrap_or_else(|p| p.into_inner()));
        (sent, failures)
    }
}

/// One request to reviews; Err says why it failed.
async fn request(http: &reqwest::Client, port: u16) -> Result<(), String> {
    let response = http
        .get(format!("http://127.0.0.1:{port}/"))
        .header("host", "reviews")
        .send()
        .await
        .map_err(|e| format!("{:#}", anyhow::Error::from(e)))?;
    let status = response.status();
    let body = response
        .text()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?;
    if !status.is_success() {
        let snippet: String = body.chars().take(160).collect();
        return Err(format!("status {status}: {snippet}"));
    }
    let answer: serde_json::Value =
        serde_json::from_str(&body).map_err(|_| "an answer that is not the app's".to_string())?;
    if answer["instance"].is_string() {
        Ok(())
    } else {
        Err(format!("an answer without an instance: {body}"))
    }
}

//! Load for the benchmarks: a fixed rate (open loop: requests start on
//! schedule whether or not earlier ones finished) on several paths in
//! interleaved rounds, so that the machine's noise falls on all of them
//! alike, with the achieved rate and p50/p99 of each; and a closed loop
//! (clients as fast as they are answered).

use std::time::{Duration, Instant};

/// The fixed load: WEFT_BENCH_RATE requests/s (300) for WEFT_BENCH_SECONDS
/// (10) per round.
pub fn fixed_load() -> (u32, u64) {
    let var = |name: &str| std::env::var(name).ok().and_then(|v| v.parse().ok());
    (
        var("WEFT_BENCH_RATE").map_or(300, |v| v as u32),
        var("WEFT_BENCH_SECONDS").unwrap_or(10),
    )
}

/// One path under test: how to build its requests.
pub struct Path {
    pub name: &'static str,
    pub client: reqwest::Client,
    pub url: String,
    pub host: &'static str,
    /// A `cookie` header to send (a session).
    pub cookie: Option<String>,
}

impl Path {
    fn request(&self) -> reqwest::RequestBuilder {
        let request = self.client.get(&self.url).header("host", self.host);
        match &self.cookie {
            Some(cookie) => request.header("cookie", cookie),
            None => request,
        }
    }

    /// Whether it answers 200 now.
    pub async fn answers(&self) -> bool {
        self.request().send().await.is_ok_and(|r| r.status() == 200)
    }
}

/// Latencies of the requests that succeeded, and how many failed.
struct Round {
    latencies: Vec<Duration>,
    failed: usize,
    elapsed: Duration,
}

/// `rate` requests per second for `seconds`, started on schedule.
async fn round(path: &Path, rate: u32, seconds: u64) -> Round {
    let total = rate as u64 * seconds;
    let every = Duration::from_secs_f64(1.0 / f64::from(rate));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let due = started + every * i as u32;
        tokio::time::sleep_until(due.into()).await;
        let request = path.request();
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            match request.send().await {
                Ok(r) if r.status() == 200 => r.bytes().await.ok().map(|_| sent.elapsed()),
                _ => None,
            }
        }));
    }
    let mut round = Round {
        latencies: Vec::new(),
        failed: 0,
        elapsed: Duration::ZERO,
    };
    for task in tasks {
        match task.await.ok().flatten() {
            Some(latency) => round.latencies.push(latency),
            None => round.failed += 1,
        }
    }
    round.elapsed = started.elapsed();
    round
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// The same fixed load on every path, two interleaved rounds each;
/// prints a line per path.
pub async fn compare(paths: &[Path], rate: u32, seconds: u64) {
    println!(
        "fixed load: {rate} requests/s for {seconds} s per round, 2 rounds per path, interleaved"
    );
    let mut results: Vec<Vec<Round>> = paths.iter().map(|_| Vec::new()).collect();
    for _ in 0..2 {
        for (i, path) in paths.iter().enumerate() {
            results[i].push(round(path, rate, seconds).await);
        }
    }
    println!(
        "{:<40} {:>10} {:>8} {:>10} {:>10}",
        "path", "req/s", "failed", "p50", "p99"
    );
    for (path, rounds) in paths.iter().zip(results) {
        let mut latencies: Vec<Duration> =
            rounds.iter().flat_map(|r| r.latencies.clone()).collect();
        latencies.sort();
        let failed: usize = rounds.iter().map(|r| r.failed).sum();
        let elapsed: Duration = rounds.iter().map(|r| r.elapsed).sum();
        println!(
            "{:<40} {:>10.0} {:>8} {:>10.2?} {:>10.2?}",
            path.name,
            latencies.len() as f64 / elapsed.as_secs_f64(),
            failed,
            percentile(&latencies, 0.50),
            percentile(&latencies, 0.99),
        );
    }
}

/// `clients` clients sending `path` requests as fast as they are answered
/// for `seconds`; returns how many got 200, and how long it took.
pub async fn closed_loop(path: &Path, clients: usize, seconds: u64) -> (u64, Duration) {
    let started = Instant::now();
    let end = started + Duration::from_secs(seconds);
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (client, url, host, cookie) = (
                path.client.clone(),
                path.url.clone(),
                path.host,
                path.cookie.clone(),
            );
            tokio::spawn(async move {
                let mut ok = 0u64;
                while Instant::now() < end {
                    let mut request = client.get(&url).header("host", host);
                    if let Some(cookie) = &cookie {
                        request = request.header("cookie", cookie);
                    }
                    if request.send().await.is_ok_and(|r| r.status() == 200) {
                        ok += 1;
                    }
                }
                ok
            })
        })
        .collect();
    let mut ok = 0;
    for task in tasks {
        ok += task.await.unwrap_or_default();
    }
    (ok, started.elapsed())
}

/// The sum of the series on a `/metrics` page whose line has every one of
/// `parts` (a metric's name, and label values).
pub async fn metric_sum(http: &reqwest::Client, url: &str, parts: &[&str]) -> f64 {
    let text = http.get(url).send().await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#') && parts.iter().all(|p| l.contains(p)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

//! `weft stat services|pairs` and `weft top`: requests between services
//! across clusters, from the window the server keeps of the edges'
//! rollups (only what the caller may read).

use std::time::Duration;

use clap::{Args, ValueEnum};
use weft_api::traffic_stats::{ServiceAt, TrafficReport, TrafficRow};

use crate::client::{CliError, Client};
use crate::output::{Format, json, table, yaml};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StatOf {
    /// Each service, from all its callers
    Services,
    /// Each caller and callee
    Pairs,
}

#[derive(Debug, Args)]
pub struct StatArgs {
    /// Only callees in this cluster
    #[arg(long)]
    cluster: Option<String>,
    /// How far back: 30s, 5m, 1h (the server keeps an hour)
    #[arg(long, default_value = "5m")]
    since: String,
    /// Keep clusters apart (a service's rows per cluster) instead of summing them
    #[arg(long)]
    by_cluster: bool,
}

impl StatArgs {
    async fn report(&self, client: &Client, of: StatOf) -> Result<TrafficReport, CliError> {
        let path = match of {
            StatOf::Services => "traffic/services",
            StatOf::Pairs => "traffic/pairs",
        };
        let mut query = vec![("since", self.since.clone())];
        if let Some(cluster) = &self.cluster {
            query.push(("cluster", cluster.clone()));
        }
        if self.by_cluster {
            query.push(("byCluster", "true".into()));
        }
        client.get_with(path, &query).await
    }
}

fn service(at: &ServiceAt) -> String {
    let name = format!("{}.{}", at.service, at.namespace);
    if at.cluster.is_empty() {
        name
    } else {
        format!("{name}@{}", at.cluster)
    }
}

fn millis(seconds: Option<f64>) -> String {
    seconds.map_or("-".into(), |s| format!("{:.1}ms", s * 1000.0))
}

/// The report as a table: busiest first.
fn render(of: StatOf, report: &TrafficReport) -> String {
    let mut rows: Vec<&TrafficRow> = report.rows.iter().collect();
    rows.sort_by_key(|r| std::cmp::Reverse(r.requests));
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            let mut cells = Vec::new();
            if of == StatOf::Pairs {
                cells.push(row.source.as_ref().map(service).unwrap_or_default());
            }
            cells.extend([
                service(&row.destination),
                format!("{:.1}", row.requests_per_second),
                format!("{:.2}%", row.success_rate * 100.0),
                format!("{:.0}%", row.mtls_share * 100.0),
                millis(row.p50_seconds),
                millis(row.p95_seconds),
                millis(row.p99_seconds),
                row.requests.to_string(),
            ]);
            cells
        })
        .collect();
    let mut headers = Vec::new();
    if of == StatOf::Pairs {
        headers.push("SOURCE");
    }
    headers.extend([
        "DESTINATION",
        "RPS",
        "SUCCESS",
        "MTLS",
        "P50",
        "P95",
        "P99",
        "REQUESTS",
    ]);
    if cells.is_empty() {
        return format!(
            "no requests in the last {:.0}s that you may read\n",
            report.seconds
        );
    }
    table(&headers, &cells)
}

pub async fn stat(
    client: &Client,
    of: StatOf,
    args: &StatArgs,
    format: Format,
) -> Result<(), CliError> {
    let report = args.report(client, of).await?;
    match format {
        Format::Table => print!("{}", render(of, &report)),
        Format::Yaml => print!("{}", yaml(&report)),
        Format::Json => println!("{}", json(&report)),
    }
    Ok(())
}

/// Redraws the services (or pairs) every `every` until interrupted.
pub async fn top(
    client: &Client,
    of: StatOf,
    args: &StatArgs,
    every: Duration,
) -> Result<(), CliError> {
    loop {
        let report = args.report(client, of).await?;
        // Clear the screen and go home, as top(1) does.
        print!("\x1b[2J\x1b[H");
        println!(
            "weft top: {} over the last {:.0}s (every {}s; Ctrl-C to stop)\n",
            match of {
                StatOf::Services => "services",
                StatOf::Pairs => "service pairs",
            },
            report.seconds,
            every.as_secs()
        );
        print!("{}", render(of, &report));
        tokio::select! {
            () = tokio::time::sleep(every) => {},
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

#[derive(Debug, Args)]
pub struct PrometheusConfigArgs {
    /// The token file Prometheus sends to the server (a token that may read the clusters)
    #[arg(long)]
    token_file: std::path::PathBuf,
    /// How often Prometheus scrapes each edge
    #[arg(long, default_value = "15s")]
    scrape_interval: String,
}

/// A Prometheus configuration whose one job scrapes every edge, found
/// through the server's HTTP service discovery (it follows edges as they
/// come and go).
pub fn prometheus_config(client: &Client, args: &PrometheusConfigArgs) -> String {
    let token_file = std::path::absolute(&args.token_file).unwrap_or(args.token_file.clone());
    let quote = |s: &str| serde_json::Value::String(s.to_string()).to_string();
    format!(
        "# Prometheus scrapes every weft edge's /metrics: the request series of
# its cluster (weft_requests_total, weft_request_duration_seconds) and the
# edge's own. Made by `weft x prometheus-config`.
global:
  scrape_interval: {interval}
  evaluation_interval: {interval}
scrape_configs:
  - job_name: weft-edges
    http_sd_configs:
      - url: {url}
        refresh_interval: 30s
        # Prometheus 2.42 (Debian 12) sends the file's content bare
        # unless the type is given.
        authorization:
          type: Bearer
          credentials_file: {token_file}
",
        interval = quote(&args.scrape_interval),
        url = quote(&format!("{}/v1/prometheus/targets", client.server)),
        token_file = quote(&token_file.display().to_string()),
    )
}

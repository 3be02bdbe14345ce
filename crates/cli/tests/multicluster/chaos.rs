//! Random processes killed under load: no request fails.

use super::*;

/// The chaos test: `weft x chaos` runs `weft up --multi-cluster` under a
/// steady load and SIGKILLs a random process of it every few seconds (the
/// server, an edge, a gateway, a sidecar, an Envoy, an app); no request
/// may fail and the mesh must heal after every kill. 60 s here; 10
/// minutes with `WEFT_LONG_TESTS=1` (before a release).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_fails_while_random_processes_are_killed() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let long = std::env::var_os("WEFT_LONG_TESTS").is_some_and(|v| !v.is_empty());
    let (duration, seconds) = if long { ("10m", 600.0) } else { ("60s", 60.0) };
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.json");
    let run = support::run(
        Command::new(WEFT)
            .args(["x", "chaos", "--duration", duration, "--every", "5s"])
            // Enough in flight that a dead instance's requests outnumber
            // Envoy's default cap of 3 concurrent retries.
            .args(["--rate", "100", "--connections", "8"])
            .arg("--data")
            .arg(dir.path().join("mesh"))
            .arg("--report")
            .arg(&report)
            .arg("--envoy")
            .arg(envoy()),
    );
    println!("{}", run.stdout);
    if run.code != 0 {
        show_log_tails(&dir.path().join("mesh/multi-cluster/logs"));
    }
    assert_eq!(run.code, 0, "{run:?}");
    let report: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(report["failed"], 0, "{report}");
    let kills = report["kills"].as_array().unwrap();
    // A kill every 5 s, each after the mesh healed from the last.
    assert!(kills.len() as f64 >= seconds / 10.0, "{report}");
    assert!(
        kills.iter().all(|k| k["healedAfter"].is_number()),
        "{report}"
    );
    // The load kept its pace: 100 requests/s, within a tenth.
    let sent = report["sent"].as_f64().unwrap();
    assert!(sent >= 100.0 * seconds * 0.9, "{sent} requests sent");
}

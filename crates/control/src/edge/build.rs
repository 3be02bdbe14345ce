//! The build loop: translation and publishing of every proxy's snapshot
//! whenever the configuration, the registry or the directory changes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use weft_api::edge::{ConfigError, EdgeConfig};

use super::Edge;
use crate::publish::{Publisher, coalesce};
use crate::translate::{Config, translate};

/// The configuration as translation reads it.
pub(super) fn parse(config: &EdgeConfig) -> Config {
    Config::parse(&config.cluster, &config.resources)
        .with_trust_domain(config.trust.as_ref().map(|t| t.trust_domain.clone()))
        .with_locality(config.locality.clone())
}

/// Translates and publishes whenever the configuration or the registry
/// changes. Changes that arrive together are built once.
pub(super) async fn build_loop(edge: Arc<Edge>, hold: Duration, mut stop: watch::Receiver<bool>) {
    if !hold.is_zero() {
        tracing::info!(
            ?hold,
            "waiting for the proxies to reconnect before the first build"
        );
        tokio::select! {
            () = tokio::time::sleep(hold) => {}
            _ = stop.changed() => return,
        }
    }
    // One change counter for the three sources, so a burst across them
    // settles as one.
    let (changes_tx, mut changes) = watch::channel(0u64);
    {
        let mut config_rx = edge.config_tx.subscribe();
        let mut registry_rx = edge.registry.subscribe();
        let mut directory_rx = edge.directory_tx.subscribe();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    r = config_rx.changed() => if r.is_err() { return },
                    r = registry_rx.changed() => if r.is_err() { return },
                    r = directory_rx.changed() => if r.is_err() { return },
                    _ = stop.changed() => return,
                }
                changes_tx.send_modify(|n| *n += 1);
            }
        });
    }
    let mut parsed: Option<(String, Config)> = None;
    let mut publisher = Publisher::new();
    // Proxies that left the registry while a stream of theirs was still
    // open: their snapshots go once the stream closes.
    let mut leaving: std::collections::BTreeSet<String> = Default::default();
    loop {
        changes.borrow_and_update();
        let config = edge.config_tx.borrow().clone();
        let directory = edge.directory_tx.borrow().0.clone();
        if let Some(config) = config {
            let started = Instant::now();
            // Parsing validates every resource: once per configuration.
            if parsed.as_ref().is_some_and(|(v, _)| *v != config.version) {
                parsed = None;
            }
            let (_, parsed_config) =
                parsed.get_or_insert_with(|| (config.version.clone(), parse(&config)));
            let workloads = edge.registry.workloads();
            edge.metrics.workloads.set(workloads.len() as i64);
            let translation = translate(parsed_config, &workloads, &directory);
            edge.ingress_tx.send_if_modified(|ingress| {
                let changed = *ingress != translation.ingress;
                if changed {
                    ingress.clone_from(&translation.ingress);
                }
                changed
            });
            let outcome = publisher.publish(&translation);
            let mut errors = translation.errors;
            // Proxies that left the registry: drop what was kept for them.
            leaving.extend(outcome.removed.iter().cloned());
            leaving
                .retain(|node| !translation.proxies.contains_key(node) && !edge.cache.remove(node));
            edge.ca
                .retain_nodes(|node| translation.proxies.contains_key(node));
            let mut largest = 0;
            for (node, snapshot) in outcome.snapshots {
                largest = largest.max(snapshot.encoded_len());
                edge.cache.set(&node, snapshot);
            }
            for (node, e) in outcome.refused {
                tracing::error!(node, error = %e, "inconsistent snapshot not published; the proxy keeps its previous one");
                errors.push(ConfigError {
                    path: format!("proxies/{node}"),
                    field: String::new(),
                    message: format!("not published: {e}"),
                });
            }
            if largest > 0 {
                edge.metrics.proxy_config_bytes.set(largest as i64);
            }
            for e in &errors {
                tracing::debug!(path = %e.path, field = %e.field, message = %e.message, "configuration problem");
            }
            {
                let mut current = edge.lock();
                current.errors = errors;
                current.published = config.version.clone();
            }
            let stats = outcome.stats;
            edge.metrics.builds.inc();
            edge.metrics
                .services_encoded
                .inc_by(stats.services_encoded as u64);
            edge.metrics
                .proxies_updated
                .inc_by(stats.proxies_updated as u64);
            edge.metrics
                .build_seconds
                .observe(started.elapsed().as_secs_f64());
            tracing::debug!(
                services_encoded = stats.services_encoded,
                groups_rebuilt = stats.groups_rebuilt,
                proxies_updated = stats.proxies_updated,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "snapshots built"
            );
        }
        tokio::select! {
            r = changes.changed() => if r.is_err() { return },
            _ = stop.changed() => return,
        }
        if !coalesce(&mut changes).await {
            return;
        }
    }
}

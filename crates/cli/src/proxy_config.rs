//! `weft proxy-config NODE --cluster C [section]`: what a live proxy
//! holds, asked of its edge through the server (`GET
//! /v1/proxy-config/{cluster}/{node}`).

use clap::ValueEnum;
use serde_json::Value;
use weft_api::edge::ProxyConfig;

use crate::client::{CliError, Client};
use crate::output::{Format, json, table, yaml};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Section {
    /// Versions sent and accepted, and the certificate
    Summary,
    Listeners,
    Routes,
    Clusters,
    /// Each cluster's endpoints with their priority, locality and health
    Endpoints,
    /// Names only: the edge sends trust bundles, never keys
    Secrets,
}

impl Section {
    /// The config dump's part and the list in it.
    fn part(self) -> (&'static str, &'static str) {
        match self {
            Section::Summary => ("", ""),
            Section::Listeners => ("ListenersConfigDump", "dynamic_listeners"),
            Section::Routes => ("RoutesConfigDump", "dynamic_route_configs"),
            Section::Clusters => ("ClustersConfigDump", "dynamic_active_clusters"),
            Section::Endpoints => ("EndpointsConfigDump", "dynamic_endpoint_configs"),
            Section::Secrets => ("SecretsConfigDump", "dynamic_active_secrets"),
        }
    }
}

/// The entries of one part of a config dump.
fn entries(dump: &Value, section: Section) -> Vec<&Value> {
    let (kind, list) = section.part();
    dump["configs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["@type"].as_str().is_some_and(|t| t.ends_with(kind)))
        .flat_map(|c| c[list].as_array().into_iter().flatten())
        .collect()
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn render(config: &ProxyConfig, section: Section) -> String {
    let dump = &config.config_dump;
    match section {
        Section::Summary => {
            let mut rows: Vec<Vec<String>> = config
                .versions
                .iter()
                .map(|(t, v)| {
                    let acked = v.acked.clone().unwrap_or_else(|| "-".into());
                    let state = if v.acked.as_deref() == Some(v.sent.as_str()) {
                        "in sync"
                    } else {
                        "not accepted"
                    };
                    vec![t.clone(), v.sent.clone(), acked, state.into()]
                })
                .collect();
            if let Some(c) = &config.certificate {
                rows.push(vec![
                    "certificate".into(),
                    c.identity.clone(),
                    c.expires_at.clone(),
                    if c.overdue {
                        "overdue".into()
                    } else {
                        String::new()
                    },
                ]);
            }
            table(&["TYPE", "SENT", "ACCEPTED", ""], &rows)
        }
        Section::Endpoints => {
            let mut rows = Vec::new();
            for assignment in entries(dump, section) {
                let config = &assignment["endpoint_config"];
                for group in config["endpoints"].as_array().into_iter().flatten() {
                    let locality = &group["locality"];
                    let place = [&locality["region"], &locality["zone"]]
                        .iter()
                        .map(|v| text(v))
                        .filter(|s| !s.is_empty())
                        .collect::<Vec<_>>()
                        .join("/");
                    for endpoint in group["lb_endpoints"].as_array().into_iter().flatten() {
                        let address = &endpoint["endpoint"]["address"]["socket_address"];
                        rows.push(vec![
                            text(&config["cluster_name"]),
                            format!(
                                "{}:{}",
                                text(&address["address"]),
                                text(&address["port_value"])
                            ),
                            // Envoy leaves out priority 0.
                            group["priority"].as_u64().unwrap_or(0).to_string(),
                            place.clone(),
                            text(&endpoint["health_status"]),
                            text(&endpoint["load_balancing_weight"]),
                        ]);
                    }
                }
            }
            table(
                &[
                    "CLUSTER", "ADDRESS", "PRIORITY", "LOCALITY", "HEALTH", "WEIGHT",
                ],
                &rows,
            )
        }
        _ => {
            let rows: Vec<Vec<String>> = entries(dump, section)
                .into_iter()
                .map(|e| {
                    let resource = ["listener", "route_config", "cluster", "secret"]
                        .iter()
                        .map(|k| {
                            if *k == "listener" {
                                &e["active_state"][k]
                            } else {
                                &e[k]
                            }
                        })
                        .find(|r| !r.is_null())
                        .cloned()
                        .unwrap_or_default();
                    let version = if section == Section::Listeners {
                        &e["active_state"]["version_info"]
                    } else {
                        &e["version_info"]
                    };
                    vec![text(&resource["name"]), text(version)]
                })
                .collect();
            table(&["NAME", "VERSION"], &rows)
        }
    }
}

pub async fn run(
    client: &Client,
    node: &str,
    cluster: &str,
    section: Section,
    format: Format,
) -> Result<(), CliError> {
    let encode = |s: &str| {
        percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
    };
    let config: ProxyConfig = client
        .get(&format!(
            "proxy-config/{}/{}",
            encode(cluster),
            encode(node)
        ))
        .await?;
    match (format, section) {
        (Format::Table, _) => print!("{}", render(&config, section)),
        (Format::Json, Section::Summary) => print!("{}", json(&config)),
        (Format::Yaml, Section::Summary) => print!("{}", yaml(&config)),
        (Format::Json, _) => print!("{}", json(&entries(&config.config_dump, section))),
        (Format::Yaml, _) => print!("{}", yaml(&entries(&config.config_dump, section))),
    }
    Ok(())
}

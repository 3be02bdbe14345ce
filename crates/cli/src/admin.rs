//! `weft audit`, `token`, `login` and `whoami`.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use reqwest::Method;
use serde_json::Value;
use weft_api::edge::{NewRootCa, RootCa, RootState};
use weft_manage::tokens::{CreateToken, CreatedToken};
use weft_store::{AuditEntry, ChainReport, TokenRecord};

use crate::client::{CliError, Client, Connection, Exit};
use crate::config::Config;
use crate::output::{self, Format};

/// `weft audit` filters.
#[derive(Debug, Clone, clap::Args)]
pub struct AuditArgs {
    /// Entries from this time on: RFC 3339, or a duration ago ("90m", "2d")
    #[arg(long)]
    pub since: Option<String>,
    /// Entries before this time: RFC 3339, or a duration ago
    #[arg(long)]
    pub until: Option<String>,
    /// Entries about this resource path and everything below it
    /// (e.g. tenants/retail)
    #[arg(long)]
    pub path: Option<String>,
    /// Entries by this user
    #[arg(long)]
    pub user: Option<String>,
    /// At most this many entries, the newest
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
    /// Show what each change did, as a diff
    #[arg(long)]
    pub diff: bool,
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

/// RFC 3339 as given, or "a duration ago" turned into RFC 3339.
fn point_in_time(flag: &str, value: &str) -> Result<String, CliError> {
    if let Ok(ago) = humantime::parse_duration(value) {
        let at = SystemTime::now().checked_sub(ago).ok_or_else(|| {
            CliError::new(Exit::Invalid, format!("{flag}: {value:?} is too far back"))
        })?;
        return Ok(humantime::format_rfc3339_millis(at).to_string());
    }
    humantime::parse_rfc3339_weak(value)
        .map(|_| value.to_string())
        .map_err(|_| {
            CliError::new(
                Exit::Invalid,
                format!("{flag}: {value:?} is neither an RFC 3339 time nor a duration like 2h"),
            )
        })
}

pub async fn audit(client: &Client, args: &AuditArgs) -> Result<(), CliError> {
    let mut query = vec![("limit", args.limit.to_string())];
    if let Some(since) = &args.since {
        query.push(("since", point_in_time("--since", since)?));
    }
    if let Some(until) = &args.until {
        query.push(("until", point_in_time("--until", until)?));
    }
    if let Some(path) = &args.path {
        query.push(("path", path.clone()));
    }
    if let Some(user) = &args.user {
        query.push(("user", user.clone()));
    }
    let entries: Vec<AuditEntry> = client.get_with("audit", &query).await?;
    match args.format {
        Format::Json => print!("{}", output::json(&entries)),
        Format::Yaml => print!("{}", output::yaml(&entries)),
        Format::Table => {
            let rows: Vec<Vec<String>> = entries
                .iter()
                .map(|e| {
                    let path = if e.path.is_empty() {
                        "(top level)".into()
                    } else {
                        e.path.clone()
                    };
                    vec![
                        e.seq.to_string(),
                        e.at.clone(),
                        e.actor.clone(),
                        e.action.clone(),
                        e.outcome.clone(),
                        path,
                        e.message.clone(),
                    ]
                })
                .collect();
            if entries.is_empty() {
                eprintln!("no audit entries you may read match");
            } else if !args.diff {
                print!(
                    "{}",
                    output::table(
                        &[
                            "SEQ", "TIME", "USER", "ACTION", "OUTCOME", "PATH", "MESSAGE"
                        ],
                        &rows
                    )
                );
            }
            if args.diff {
                for (e, row) in entries.iter().zip(&rows) {
                    println!("{}", row.join("  ").trim_end());
                    let render = |v: &Option<Value>| v.as_ref().map_or(String::new(), output::yaml);
                    print!(
                        "{}",
                        output::diff(&render(&e.before), &render(&e.after), "before", "after")
                    );
                }
            }
        }
    }
    Ok(())
}

/// Prints the chain report; returns whether the chain is intact.
pub async fn verify(client: &Client) -> Result<bool, CliError> {
    let report: ChainReport = client.get("audit/verify").await?;
    if report.intact {
        println!(
            "audit log intact: {} entries, head {}",
            report.entries, report.head
        );
    } else {
        println!(
            "audit log BROKEN: {} (checked {} entries; recorded head {})",
            report.problem.unwrap_or_default(),
            report.entries,
            report.head
        );
    }
    Ok(report.intact)
}

pub async fn token_create(
    client: &Client,
    request: CreateToken,
    ttl: Option<String>,
) -> Result<(), CliError> {
    let ttl_seconds = ttl
        .map(|t| {
            humantime::parse_duration(&t)
                .map(|d| d.as_secs())
                .map_err(|e| CliError::new(Exit::Invalid, format!("--ttl: {t:?}: {e}")))
        })
        .transpose()?;
    let request = CreateToken {
        ttl_seconds,
        ..request
    };
    let created: CreatedToken = client.send(Method::POST, "tokens", Some(&request)).await?;
    let until = created
        .token
        .expires_at
        .as_deref()
        .map_or("until revoked".to_string(), |at| format!("until {at}"));
    eprintln!(
        "token {} for {:?} created, valid {until}. This is the only time the secret is shown:",
        created.token.id, created.token.user
    );
    print!("{}", created.credential_file());
    Ok(())
}

pub async fn token_list(
    client: &Client,
    user: Option<String>,
    cluster: Option<String>,
    format: Format,
) -> Result<(), CliError> {
    let query: Vec<(&str, String)> = user
        .map(|u| ("user", u))
        .into_iter()
        .chain(cluster.map(|c| ("cluster", c)))
        .collect();
    let tokens: Vec<TokenRecord> = client.get_with("tokens", &query).await?;
    match format {
        Format::Json => print!("{}", output::json(&tokens)),
        Format::Yaml => print!("{}", output::yaml(&tokens)),
        Format::Table => {
            let rows: Vec<Vec<String>> = tokens
                .iter()
                .map(|t| {
                    let state = match (&t.revoked_at, &t.expires_at) {
                        (Some(at), _) => format!("revoked {at}"),
                        (None, Some(at)) => format!("expires {at}"),
                        (None, None) => "active".into(),
                    };
                    vec![
                        t.id.clone(),
                        t.user.clone(),
                        t.created_at.clone(),
                        state,
                        t.description.clone(),
                    ]
                })
                .collect();
            print!(
                "{}",
                output::table(&["ID", "USER", "CREATED", "STATE", "DESCRIPTION"], &rows)
            );
        }
    }
    Ok(())
}

pub async fn token_revoke(client: &Client, id: &str) -> Result<(), CliError> {
    let token: TokenRecord = client
        .send(Method::DELETE, &format!("tokens/{id}"), None::<&()>)
        .await?;
    println!("token {} of user {:?} revoked", token.id, token.user);
    Ok(())
}

pub async fn ca_list(client: &Client, format: Format) -> Result<(), CliError> {
    let roots: Vec<RootCa> = client.get("ca/roots").await?;
    match format {
        Format::Json => print!("{}", output::json(&roots)),
        Format::Yaml => print!("{}", output::yaml(&roots)),
        Format::Table => {
            let rows: Vec<Vec<String>> = roots
                .iter()
                .map(|r| {
                    vec![
                        r.id.clone(),
                        r.trust_domain.clone(),
                        output::yaml(&r.state).trim().to_string(),
                        r.created_at.clone(),
                        r.expires_at.clone(),
                    ]
                })
                .collect();
            print!(
                "{}",
                output::table(
                    &["ID", "TRUST DOMAIN", "STATE", "CREATED", "EXPIRES"],
                    &rows
                )
            );
        }
    }
    Ok(())
}

pub async fn ca_add(client: &Client, import: Option<(PathBuf, PathBuf)>) -> Result<(), CliError> {
    let read = |flag: &str, path: &Path| {
        std::fs::read_to_string(path).map_err(|e| {
            CliError::new(
                Exit::Invalid,
                format!("{flag}: cannot read {}: {e}", path.display()),
            )
        })
    };
    let request = match import {
        Some((cert, key)) => NewRootCa {
            certificate: Some(read("--cert", &cert)?),
            key: Some(read("--key", &key)?),
        },
        None => NewRootCa::default(),
    };
    let root: RootCa = client
        .send(Method::POST, "ca/roots", Some(&request))
        .await?;
    println!(
        "root {} added: trusted, not signing. Once every proxy trusts it, run: weft ca activate {}",
        root.id, root.id
    );
    Ok(())
}

/// `activate` or `retire` the root whose id starts with `id`.
pub async fn ca_change(client: &Client, id: &str, change: &str) -> Result<(), CliError> {
    let roots: Vec<RootCa> = client.get("ca/roots").await?;
    let matching: Vec<&RootCa> = roots
        .iter()
        .filter(|r| r.id.starts_with(id) && r.state != RootState::Retired)
        .collect();
    let root = match matching[..] {
        [one] => one,
        [] => {
            return Err(CliError::new(
                Exit::NotFound,
                format!("no root CA that is not retired has an id starting with {id:?}"),
            )
            .with_hint("weft ca list shows them"));
        }
        _ => {
            return Err(CliError::new(
                Exit::Invalid,
                format!("{id:?} names more than one root CA; give more of its id"),
            ));
        }
    };
    let changed: RootCa = client
        .send(
            Method::POST,
            &format!("ca/roots/{}/{change}", root.id),
            None::<&()>,
        )
        .await?;
    println!(
        "root {} is now {}",
        changed.id,
        output::yaml(&changed.state).trim()
    );
    Ok(())
}

/// Checks the credential against the server, then saves both.
pub async fn login(connection: &Connection, token_file: Option<&Path>) -> Result<(), CliError> {
    let token = match token_file {
        Some(file) => std::fs::read_to_string(file)
            .map_err(|e| {
                CliError::new(
                    Exit::Invalid,
                    format!("--token-file {}: {e}", file.display()),
                )
            })?
            .trim()
            .to_string(),
        None => connection.token.clone().ok_or_else(|| {
            CliError::new(
                Exit::Invalid,
                "give the credential with --token-file FILE (or --token)",
            )
        })?,
    };
    let server = connection
        .server
        .clone()
        .unwrap_or_else(|| crate::client::DEFAULT_SERVER.to_string());
    let client = Client::to(&server, Some(token.clone()));
    let me: Value = client.get("whoami").await?;
    let config = Config {
        server: Some(client.server.clone()),
        token: Some(token),
    };
    let path = config.save(connection.config.as_deref())?;
    println!(
        "logged in to {} as {}; saved to {}",
        client.server,
        me["user"].as_str().unwrap_or("?"),
        path.display()
    );
    Ok(())
}

pub async fn whoami(client: &Client, format: Format) -> Result<(), CliError> {
    let me: Value = client.get("whoami").await?;
    match format {
        Format::Json => print!("{}", output::json(&me)),
        Format::Yaml => print!("{}", output::yaml(&me)),
        Format::Table => {
            println!("user: {}", me["user"].as_str().unwrap_or("?"));
            let teams = output::cell(me.get("teams"));
            println!(
                "teams: {}",
                if teams.is_empty() { "(none)" } else { &teams }
            );
            let rows: Vec<Vec<String>> = me["grants"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|g| {
                    let scope = g["scope"]
                        .as_str()
                        .filter(|s| !s.is_empty())
                        .unwrap_or("(top level)");
                    vec![
                        output::cell(g.get("role")),
                        scope.to_string(),
                        output::cell(g.get("binding")),
                    ]
                })
                .collect();
            print!("{}", output::table(&["ROLE", "ON", "BINDING"], &rows));
        }
    }
    Ok(())
}

//! `weft`: the server and the client commands in one binary.
//!
//! `weft server` runs the management plane; every other command is a client
//! of its REST API (see `client.rs`), resolving the server and token from
//! flags, then the environment, then the file `weft login` writes.

mod addons;
mod admin;
mod analyze;
mod backup;
mod chaos;
mod client;
mod commands;
mod config;
mod demo_tls;
mod echo;
mod edge;
mod envoy;
mod explain;
mod manifests;
mod output;
mod proxy_config;
mod resources;
mod server;
mod settings;
mod sidecar;
mod stat;
mod supervise;
mod translate;
mod up;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};
use tracing_subscriber::EnvFilter;

use crate::client::{CliError, Client, Exit};
use crate::commands::{
    AdminCommand, AuditCommand, CaCommand, Cli, Command, EnvoyCommand, TokenCommand, XCommand,
};
use weft_manage::tokens::CreateToken;

fn init_logging(format: &str) {
    init_logging_at(format, "info");
}

/// Logging at `level` unless RUST_LOG says otherwise.
fn init_logging_at(format: &str, level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    // Colours only for a person at a terminal: a log file or journal
    // would keep the escape codes as text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    weft_identity::tls::install_provider();
    let root = Cli::command();
    let resolved = match settings::resolve(&root, std::env::args_os().collect()) {
        Ok(resolved) => resolved,
        Err(message) => {
            CliError::new(Exit::Invalid, message).report();
            return ExitCode::from(Exit::Invalid as u8);
        }
    };
    let matches = root.clone().get_matches_from(&resolved.args);
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if cli.print_settings {
        print!(
            "{}",
            settings::describe(&root, &matches, &resolved.from_file)
        );
        return ExitCode::SUCCESS;
    }
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            e.report();
            ExitCode::from(e.exit as u8)
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode, CliError> {
    let ok = Ok(ExitCode::SUCCESS);
    let differs = |d: bool| Ok(ExitCode::from(if d { Exit::Differs as u8 } else { 0 }));
    let client = || Client::new(&cli.connection);
    match cli.command {
        Command::Server(args) => {
            init_logging(&cli.log_format);
            server::run(args)
                .await
                .map_err(|e| CliError::new(Exit::Failed, format!("{e:#}")))?;
            ok
        }
        Command::Edge(args) => {
            init_logging(&cli.log_format);
            // Not the API's URL from `weft login`: edges have a port of
            // their own.
            let server = cli
                .connection
                .server
                .clone()
                .unwrap_or_else(|| edge::DEFAULT_SERVER.to_string());
            if !server.starts_with("https://") {
                return Err(CliError::new(
                    Exit::Invalid,
                    format!("--server {server}: an edge talks to the server's edge port over mutual TLS"),
                )
                .with_hint("give its https:// URL, which weft server prints (\"edges connect to ...\"; --edge-listen, default 127.0.0.1:7071)"));
            }
            edge::run_edge(args, server)
                .await
                .map_err(|e| CliError::new(Exit::Failed, format!("{e:#}")))?;
            ok
        }
        Command::Up(args) => {
            init_logging(&cli.log_format);
            let code = up::run(args)
                .await
                .map_err(|e| CliError::new(Exit::Failed, format!("{e:#}")))?;
            Ok(ExitCode::from(code.clamp(0, 255) as u8))
        }
        Command::Sidecar(args) => {
            init_logging(&cli.log_format);
            let code = sidecar::run(args)
                .await
                .map_err(|e| CliError::new(Exit::Failed, format!("{e:#}")))?;
            Ok(ExitCode::from(code.clamp(0, 255) as u8))
        }
        Command::Eastwest(args) => {
            init_logging(&cli.log_format);
            let code = sidecar::run_eastwest(args)
                .await
                .map_err(|e| CliError::new(Exit::Failed, format!("{e:#}")))?;
            Ok(ExitCode::from(code.clamp(0, 255) as u8))
        }
        Command::Gateway(args) => {
            init_logging(&cli.log_format);
            let code = sidecar::run_gateway(args)
                .await
                .map_err(|e| CliError::new(Exit::Failed, format!("{e:#}")))?;
            Ok(ExitCode::from(code.clamp(0, 255) as u8))
        }
        Command::Authservice(args) => {
            init_logging(&cli.log_format);
            addons::run_authservice(args)
                .await
                .map_err(|e| CliError::new(Exit::Failed, format!("{e:#}")))?;
            ok
        }
        Command::Ratelimit(args) => {
            init_logging(&cli.log_format);
            addons::run_ratelimit(args)
                .await
                .map_err(|e| CliError::new(Exit::Failed, format!("{e:#}")))?;
            ok
        }
        Command::Admin(command) => {
            init_logging(&cli.log_format);
            let done = match command {
                AdminCommand::Backup { file, data } => backup::backup(data, &file).await,
                AdminCommand::Restore { file, data } => backup::restore(&file, &data).await,
            };
            done.map_err(|e| CliError::new(Exit::Failed, format!("{e:#}")))?;
            ok
        }
        Command::Version => {
            println!(
                "weft {} (commit {})",
                env!("CARGO_PKG_VERSION"),
                env!("WEFT_COMMIT")
            );
            println!("expects Envoy {}", envoy::ENVOY_VERSION);
            ok
        }
        Command::Envoy(EnvoyCommand::Install { dir }) => {
            let binary =
                envoy::install(dir).map_err(|e| CliError::new(Exit::Failed, format!("{e:#}")))?;
            println!("{}", binary.display());
            ok
        }
        Command::Envoy(EnvoyCommand::Path) => {
            let binary =
                envoy::find(None).map_err(|e| CliError::new(Exit::NotFound, format!("{e:#}")))?;
            let version = envoy::version_of(&binary).unwrap_or_else(|| "does not run".into());
            println!("{} ({version})", binary.display());
            ok
        }
        Command::X(XCommand::Translate(args)) => {
            if translate::run(args)? {
                ok
            } else {
                Ok(ExitCode::from(Exit::Invalid as u8))
            }
        }
        Command::X(XCommand::PrometheusConfig(args)) => {
            print!("{}", stat::prometheus_config(&client()?, &args));
            ok
        }
        Command::X(XCommand::Tie { parent, command }) => {
            let failed = weft_agent::children::exec_tied(parent, &command);
            Err(CliError::new(Exit::Failed, failed))
        }
        Command::X(XCommand::Chaos(args)) => {
            init_logging(&cli.log_format);
            let code = chaos::run(args)
                .await
                .map_err(|e| CliError::new(Exit::Failed, format!("{e:#}")))?;
            Ok(ExitCode::from(code.clamp(0, 255) as u8))
        }
        Command::X(XCommand::Proxy(args)) => {
            let level = match args.log_level.as_str() {
                "warning" => "warn",
                "critical" => "error",
                other => other,
            };
            init_logging_at(&cli.log_format, level);
            weft_proxy::run::run(args.bootstrap, args.admin_address_path)
                .await
                .map_err(|e| CliError::new(Exit::Failed, e.to_string()))?;
            ok
        }
        Command::X(XCommand::Echo(args)) => {
            init_logging(&cli.log_format);
            echo::run(args)
                .await
                .map_err(|e| CliError::new(Exit::Failed, format!("{e:#}")))?;
            ok
        }
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "weft", &mut std::io::stdout());
            ok
        }
        Command::Login { token_file } => admin::login(&cli.connection, token_file.as_deref())
            .await
            .and(ok),
        Command::Apply { files, dry_run } => {
            resources::apply(&client()?, &files, dry_run).await.and(ok)
        }
        Command::Get {
            kind,
            name,
            place,
            format,
        } => resources::get(&client()?, &kind, name.as_deref(), &place, format)
            .await
            .and(ok),
        Command::Delete { files, dry_run, .. } if !files.is_empty() => {
            resources::delete_files(&client()?, &files, dry_run)
                .await
                .and(ok)
        }
        Command::Delete {
            kind, name, place, ..
        } => {
            let (Some(kind), Some(name)) = (kind, name) else {
                return Err(CliError::new(Exit::Invalid, "give KIND NAME, or -f FILE"));
            };
            resources::delete_one(&client()?, &kind, &name, &place)
                .await
                .and(ok)
        }
        Command::Analyze { files, format } => {
            let client = if files.is_empty() {
                Some(client()?)
            } else {
                None
            };
            analyze::run(client.as_ref(), &files, format).await.and(ok)
        }
        Command::ProxyConfig {
            node,
            cluster,
            section,
            format,
        } => proxy_config::run(&client()?, &node, &cluster, section, format)
            .await
            .and(ok),
        Command::Explain(args) => {
            let client = if args.inputs.files.is_empty() {
                Some(client()?)
            } else {
                None
            };
            explain::run(client.as_ref(), args).await.and(ok)
        }
        Command::Diff { files } => differs(resources::diff(&client()?, &files).await?),
        Command::Audit {
            check: Some(AuditCommand::Verify),
            ..
        } => differs(!admin::verify(&client()?).await?),
        Command::Audit {
            check: None,
            filters,
        } => admin::audit(&client()?, &filters).await.and(ok),
        Command::Token(TokenCommand::Create {
            user,
            cluster,
            namespace,
            service_account,
            gateway,
            eastwest,
            ratelimit,
            authservice,
            description,
            ttl,
        }) => {
            let own = if eastwest {
                Some(weft_identity::EASTWEST_ACCOUNT)
            } else if ratelimit {
                Some(weft_identity::RATELIMIT_ACCOUNT)
            } else if authservice {
                Some(weft_identity::AUTHSERVICE_ACCOUNT)
            } else {
                None
            };
            let (namespace, service_account) = if let Some(account) = own {
                (
                    Some(weft_identity::RESERVED_NAMESPACE.to_string()),
                    Some(account.to_string()),
                )
            } else {
                (namespace, service_account)
            };
            let request = CreateToken {
                user,
                cluster,
                namespace,
                service_account,
                gateway,
                description,
                ttl_seconds: None,
            };
            admin::token_create(&client()?, request, ttl).await.and(ok)
        }
        Command::Token(TokenCommand::List {
            user,
            cluster,
            format,
        }) => admin::token_list(&client()?, user, cluster, format)
            .await
            .and(ok),
        Command::Token(TokenCommand::Revoke { id }) => {
            admin::token_revoke(&client()?, &id).await.and(ok)
        }
        Command::Whoami { format } => admin::whoami(&client()?, format).await.and(ok),
        Command::Stat { of, args, format } => {
            stat::stat(&client()?, of, &args, format).await.and(ok)
        }
        Command::Top { of, args, every } => stat::top(&client()?, of, &args, every).await.and(ok),
        Command::Ca(CaCommand::List { format }) => admin::ca_list(&client()?, format).await.and(ok),
        Command::Ca(CaCommand::Add { cert, key }) => {
            admin::ca_add(&client()?, cert.zip(key)).await.and(ok)
        }
        Command::Ca(CaCommand::Activate { id }) => {
            admin::ca_change(&client()?, &id, "activate").await.and(ok)
        }
        Command::Ca(CaCommand::Retire { id }) => {
            admin::ca_change(&client()?, &id, "retire").await.and(ok)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}

//! Runs one proxy: claims the instance's runtime directory, gets the
//! workload certificate, serves it over SDS, writes the bootstrap, and
//! runs the data plane — Envoy, or weft-proxy from the same bootstrap —
//! (and the app, if any), both tied to this process, until one exits or
//! `stop` completes; then stops the other.

use std::ffi::OsString;
use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use std::sync::Arc;
use tokio::process::Command;

use prost::Message;
use weft_identity::SpiffeId;
use weft_identity::tls::TrustStore;

use crate::AgentError;
use crate::bootstrap::{self, Params};
use crate::children::{self, RuntimeDir};
use crate::credential;
use crate::sds::SdsServer;
use crate::svid::{self, EdgeLink};
use crate::workload::{Role, Workload};

/// The longest path a Unix socket address holds (`sun_path` is 108 bytes,
/// with its terminating NUL).
const MAX_SOCKET_PATH: usize = 107;

/// How to run a proxy, whatever its role.
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    /// The edge's xDS address.
    pub edge: SocketAddr,
    pub credential_file: PathBuf,
    /// The node id; none: the one kept from a crashed run of this
    /// instance, else `SERVICE-<random>`.
    pub node_id: Option<String>,
    /// The proxy that runs.
    pub data_plane: DataPlane,
    /// The proxy's admin port on 127.0.0.1 (0: it picks a free one).
    pub admin_port: u16,
    pub envoy_log_level: String,
    /// Delta xDS (else state of the world).
    pub delta: bool,
    /// Where instances keep their runtime directories.
    pub runtime_base: PathBuf,
    /// A gateway's directory of server certificates
    /// ([`crate::certificates`]), served alongside the workload's.
    pub certificates: Option<PathBuf>,
}

/// Which proxy runs from the bootstrap.
#[derive(Debug, Clone)]
pub enum DataPlane {
    /// Envoy: this binary.
    Envoy(PathBuf),
    /// weft-proxy: this program with these arguments, to which the
    /// bootstrap (`--bootstrap FILE`) and `--admin-address-path FILE`
    /// are added (`weft x proxy`). It speaks delta xDS only.
    Weft {
        program: PathBuf,
        args: Vec<OsString>,
    },
}

impl DataPlane {
    fn name(&self) -> &'static str {
        match self {
            DataPlane::Envoy(_) => "Envoy",
            DataPlane::Weft { .. } => "weft-proxy",
        }
    }

    /// The command line that runs it.
    fn command(&self, options: &ProxyOptions, bootstrap: &Path, admin_address: &Path) -> Command {
        match self {
            DataPlane::Envoy(envoy) => {
                let mut command = children::tied(envoy.as_os_str());
                command
                    .args([
                        "--use-dynamic-base-id",
                        // Access log lines (authorization verdicts) within a
                        // second, not Envoy's default ten.
                        "--file-flush-interval-msec",
                        "1000",
                        // A changed listener (say, mTLS strict again) takes
                        // over at once: connections on the old one are asked
                        // to close now.
                        "--drain-strategy",
                        "immediate",
                        "--drain-time-s",
                        "5",
                        "--log-level",
                        &options.envoy_log_level,
                        "--admin-address-path",
                    ])
                    .arg(admin_address)
                    .arg("-c")
                    .arg(bootstrap);
                command
            }
            DataPlane::Weft { program, args } => {
                let mut command = children::tied(program.as_os_str());
                command
                    .args(args)
                    .arg("--bootstrap")
                    .arg(bootstrap)
                    .arg("--admin-address-path")
                    .arg(admin_address);
                command
            }
        }
    }
}

/// How often a gateway's certificate directory is read again.
const CERTIFICATES_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// The runtime directory's name for a proxy: what no other proxy on this
/// host can share — the address a sidecar or east-west gateway listens
/// on, a gateway's identity and address.
fn instance_name(workload: &Workload) -> String {
    match workload.role {
        Role::Eastwest => format!("eastwest-{}-{}", workload.address, workload.port),
        Role::Sidecar | Role::Ratelimit | Role::Authservice => {
            format!(
                "{}-{}-{}",
                workload.role.as_str(),
                workload.address,
                workload.port
            )
        }
        Role::Gateway => format!(
            "gateway-{}-{}-{}",
            workload.namespace, workload.service, workload.address
        ),
    }
}

/// The admin port Envoy bound (it was given port 0 and writes where it
/// listens to `file`): a port picked here and released would be free to
/// any other process until Envoy took it.
async fn bound_admin_port(file: &std::path::Path) -> Result<u16, AgentError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let written = std::fs::read_to_string(file).unwrap_or_default();
        if let Some(port) = written
            .trim()
            .rsplit_once(':')
            .and_then(|(_, port)| port.parse::<u16>().ok())
        {
            return Ok(port);
        }
        if std::time::Instant::now() > deadline {
            return Err(AgentError::RuntimeDir(format!(
                "Envoy did not say where its admin listens ({} stayed empty for 30 s); see its log above",
                file.display()
            )));
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Runs the proxy of `workload` (its `node` is filled in here) and `app`
/// (a program and its arguments; empty: none) until one exits or `stop`
/// completes. `announce` gets the workload once its node id is known and
/// Envoy runs, with Envoy's admin port. The exit code is the app's, or
/// 0 after `stop`; Envoy exiting on its own is an error.
pub async fn run(
    mut workload: Workload,
    options: &ProxyOptions,
    app: &[String],
    announce: impl FnOnce(&Workload, u16),
    stop: impl Future<Output = ()>,
) -> Result<i32, AgentError> {
    let credential = credential::read_secret(&options.credential_file)?;
    let trust = Arc::new(TrustStore::default());
    trust.set(credential::read_trust_bundle(&options.credential_file)?);
    let runtime = RuntimeDir::claim(&options.runtime_base, &instance_name(&workload))?;
    workload.node = match &options.node_id {
        Some(node) => node.clone(),
        None => runtime.node_id(|| Workload::new_node_id(&workload.service))?,
    };
    // The runtime directory is private (0700); the bootstrap carries the
    // credential, so it is 0600 too.
    let path = runtime.path().join("envoy.pb");
    let sds_socket = runtime.path().join("sds.sock");
    let admin_address = runtime.path().join("admin.address");
    // A crashed run's file must not be taken for this Envoy's.
    let _ = std::fs::remove_file(&admin_address);
    if sds_socket.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(AgentError::RuntimeDir(format!(
            "the SDS socket path {} is longer than {MAX_SOCKET_PATH} bytes, the most a Unix \
             socket takes; hint: pass a shorter --runtime-dir",
            sds_socket.display()
        )));
    }
    // The workload's identity first: Envoy starts with its certificate.
    let link = EdgeLink::new(
        options.edge,
        credential.clone(),
        workload.node.clone(),
        trust,
    )?;
    let issued = svid::first(&link).await?;
    let edge_id = SpiffeId::edge(&issued.svid.trust.trust_domain)?.to_string();
    tracing::info!(id = %issued.svid.id, expires = %issued.svid.expires_at, "got the workload certificate");
    let sds = SdsServer::start(&sds_socket, &workload.node)?;
    if let Some(dir) = &options.certificates {
        crate::certificates::watch(dir.clone(), sds.clone(), CERTIFICATES_EVERY);
    }
    svid::keep_renewed(sds, issued, link)?;
    let bootstrap = bootstrap::bootstrap(&Params {
        workload: &workload,
        edge: options.edge,
        edge_id: &edge_id,
        credential: &credential,
        sds_socket: &sds_socket,
        admin_port: options.admin_port,
        // weft-proxy speaks delta xDS only.
        delta: options.delta || matches!(options.data_plane, DataPlane::Weft { .. }),
    })
    .encode_to_vec();
    {
        use std::io::Write;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut file| file.write_all(&bootstrap))
            .map_err(|e| AgentError::file("cannot write the Envoy bootstrap", &path, e))?;
    }
    let mut envoy = runtime
        .spawn(
            "envoy",
            options
                .data_plane
                .command(options, &path, &admin_address)
                .stdin(Stdio::null()),
        )
        .map_err(|source| AgentError::Start {
            what: options.data_plane.name(),
            program: match &options.data_plane {
                DataPlane::Envoy(envoy) => format!(
                    "{}; install it with `weft envoy install` or pass --envoy PATH",
                    envoy.display()
                ),
                DataPlane::Weft { program, .. } => program.display().to_string(),
            },
            source,
        })?;
    let admin_port = match options.admin_port {
        0 => bound_admin_port(&admin_address).await?,
        port => port,
    };
    announce(&workload, admin_port);
    if workload.role == Role::Gateway {
        crate::certificates::report_awaited(
            admin_port,
            options.certificates.clone(),
            CERTIFICATES_EVERY,
        );
    }
    let runs_app = !app.is_empty();
    let mut app = match app.split_first() {
        Some((program, rest)) => Some(
            runtime
                .spawn(
                    "app",
                    children::tied(program).args(rest).stdin(Stdio::null()),
                )
                .map_err(|source| AgentError::Start {
                    what: "the app",
                    program: program.clone(),
                    source,
                })?,
        ),
        None => None,
    };
    let app_exit = async {
        match app.as_mut() {
            Some(app) => app.wait().await,
            None => std::future::pending().await,
        }
    };
    let waited =
        |e: std::io::Error| AgentError::RuntimeDir(format!("cannot wait for a child: {e}"));
    let code = tokio::select! {
        status = envoy.wait() => {
            let status = status.map_err(waited)?;
            tracing::error!(%status, proxy = options.data_plane.name(), "the proxy exited");
            if let Some(app) = app.as_mut() { children::stop(app).await; }
            status.code().unwrap_or(1).max(1)
        }
        status = app_exit => {
            let status = status.map_err(waited)?;
            tracing::info!(%status, "the app exited; stopping the proxy");
            children::stop(&mut envoy).await;
            status.code().unwrap_or(1)
        }
        () = stop => {
            if let Some(app) = app.as_mut() { children::stop(app).await; }
            children::stop(&mut envoy).await;
            0
        }
    };
    runtime.remove();
    if code != 0 && !runs_app {
        return Err(AgentError::EnvoyExited(code));
    }
    Ok(code)
}

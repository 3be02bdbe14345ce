//! weft-proxy as a process: read the bootstrap, follow the agent's SDS
//! socket and the edge's ADS stream (over mutual TLS with the workload
//! certificate, the edge's identity checked), rebuild the runtime form on
//! every change of either, serve the admin port and the listeners.
//!
//! One multi-threaded tokio runtime serves everything: the process is
//! pinned or limited from outside (taskset, cgroups), and tokio sizes its
//! workers to the cores it may use. See docs/dataplane.md for the
//! measurements behind that choice.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::bootstrap::{self, AdsLink, Source, Start};
use crate::listen::Sockets;
use crate::runtime::Runtime;
use crate::stats::Stats;
use crate::tls::Secrets;
use crate::xds::{self, Resources, XdsError};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Bootstrap(#[from] bootstrap::BootstrapError),
    #[error("the admin port {address}: {source}; hint: pick another with --admin-port")]
    Admin {
        address: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Listen(String),
    #[error("cannot write the admin address to {path}: {source}")]
    AdminPath {
        path: String,
        source: std::io::Error,
    },
}

/// The secret names the configuration uses, and the ADS stream's.
fn secret_names(link: &AdsLink, resources: &Resources) -> BTreeSet<String> {
    let mut names: BTreeSet<String> = [link.tls.certificate.clone(), link.tls.trust.clone()].into();
    for cluster in resources.clusters.values() {
        if let Some(tls) = &cluster.tls {
            names.insert(tls.certificate.clone());
            names.insert(tls.trust.clone());
        }
    }
    for listener in resources.listeners.values() {
        for chain in &listener.chains {
            if let Some(tls) = &chain.tls {
                names.insert(tls.certificate.clone());
                names.insert(tls.trust.clone());
            }
        }
    }
    names
}

/// A gRPC channel to the ADS server over mutual TLS with the current
/// secrets.
async fn ads_channel(
    link: &AdsLink,
    secrets: &watch::Receiver<Arc<Secrets>>,
) -> Result<tonic::transport::Channel, XdsError> {
    let config = secrets
        .borrow()
        .client_config(&link.tls)
        .map_err(|e| XdsError::Connect(format!("{e} (waiting for the agent's SDS)")))?;
    let config = Arc::new(config);
    let address = link.address;
    let sni = link.tls.sni.clone();
    tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .map_err(|e| XdsError::Connect(e.to_string()))?
        .connect_with_connector(tower::service_fn(move |_| {
            let config = config.clone();
            let sni = sni.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(address).await?;
                let _ = tcp.set_nodelay(true);
                let name = ServerName::try_from(sni)
                    .unwrap_or_else(|_| ServerName::IpAddress(address.ip().into()));
                let tls = tokio_rustls::TlsConnector::from(config)
                    .connect(name, tcp)
                    .await?;
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        }))
        .await
        .map_err(|e| XdsError::Connect(e.to_string()))
}

/// Follows the edge and the agent: resources by ADS (each change checked
/// by `sockets`), secrets by SDS for the names they use, stats exported.
fn follow_edge(
    start: &Start,
    link: &Arc<AdsLink>,
    sockets: &Arc<Sockets>,
    stats: &Arc<Stats>,
    held_tx: watch::Sender<Arc<Resources>>,
    secrets_tx: watch::Sender<Arc<Secrets>>,
) {
    let (names_tx, names) = watch::channel(secret_names(link, &Resources::default()));
    let secrets = secrets_tx.subscribe();
    tokio::spawn(crate::sds::follow(
        link.sds_socket.clone(),
        start.node.clone(),
        names,
        secrets_tx,
    ));
    let (ads_link, ads_secrets) = (link.clone(), secrets.clone());
    let connect = async move || ads_channel(&ads_link, &ads_secrets).await;
    let binds = sockets.clone();
    let mut held = held_tx.subscribe();
    tokio::spawn(xds::follow(
        connect,
        start.node.clone(),
        link.metadata.clone(),
        Box::new(move |resources| binds.check(resources)),
        held_tx,
    ));
    if let Some(sink) = link.metrics.clone() {
        let (export_link, export_secrets) = (link.clone(), secrets);
        let connect = async move || ads_channel(&export_link, &export_secrets).await;
        tokio::spawn(crate::export::run(sink, stats.clone(), connect));
    }
    // The secrets follow the names the resources use.
    let names_link = link.clone();
    tokio::spawn(async move {
        loop {
            let resources = held.borrow_and_update().clone();
            names_tx.send_if_modified(|names| {
                let now = secret_names(&names_link, &resources);
                let changed = *names != now;
                *names = now;
                changed
            });
            if held.changed().await.is_err() {
                return;
            }
        }
    });
}

/// Runs the proxy of the bootstrap at `bootstrap`; writes where its admin
/// port listens to `admin_address_path`, as Envoy's flag of that name.
/// Returns only on a startup error.
pub async fn run(bootstrap: PathBuf, admin_address_path: Option<PathBuf>) -> Result<(), RunError> {
    let start = bootstrap::read(&bootstrap)?;
    let stats = Arc::new(Stats::new(start.histogram_bounds.clone()));
    let sockets = Arc::new(Sockets::default());
    let (held_tx, held) = watch::channel(Arc::new(Resources::default()));
    let (secrets_tx, secrets) = watch::channel(Arc::new(Secrets::default()));
    // A static configuration's senders stay open while the proxy runs:
    // closing them would end the runtime's builder.
    let static_senders = match &start.source {
        Source::Ads(link) => {
            let link = Arc::new((**link).clone());
            follow_edge(&start, &link, &sockets, &stats, held_tx, secrets_tx);
            None
        }
        Source::Static(resources, static_secrets) => {
            sockets
                .check(resources)
                .map_err(|problems| RunError::Listen(problems.join("; ")))?;
            secrets_tx.send_replace(static_secrets.clone());
            held_tx.send_replace(Arc::new(resources.clone()));
            Some((held_tx, secrets_tx))
        }
    };

    let (runtime_tx, runtime) = watch::channel(Arc::new(Runtime::empty()));
    let builder_stats = stats.clone();
    tokio::spawn(async move {
        let (mut held, mut secrets) = (held, secrets);
        loop {
            let resources = held.borrow_and_update().clone();
            let current = secrets.borrow_and_update().clone();
            let previous = runtime_tx.borrow().clone();
            let next = Runtime::build(&previous, resources, current, &builder_stats);
            runtime_tx.send_replace(Arc::new(next));
            tokio::select! {
                r = held.changed() => if r.is_err() { return },
                r = secrets.changed() => if r.is_err() { return },
            }
        }
    });

    let admin = TcpListener::bind(start.admin)
        .await
        .map_err(|source| RunError::Admin {
            address: start.admin,
            source,
        })?;
    let bound = admin.local_addr().map_err(|source| RunError::Admin {
        address: start.admin,
        source,
    })?;
    if let Some(path) = &admin_address_path {
        std::fs::write(path, bound.to_string()).map_err(|source| RunError::AdminPath {
            path: path.display().to_string(),
            source,
        })?;
    }
    tracing::info!(node = %start.node.id, admin = %bound, "weft-proxy started");
    tokio::spawn(crate::admin::serve(admin, runtime.clone(), stats.clone()));
    crate::listen::run(runtime, sockets, stats, Arc::default()).await;
    drop(static_senders);
    Ok(())
}

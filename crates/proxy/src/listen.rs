//! Listeners at run time: each configured address bound and accepting;
//! a connection gets the first filter chain whose conditions hold (TLS or
//! plaintext, told by the first byte when the listener inspects it), the
//! chain's mutual TLS, and HTTP/1.1 or HTTP/2 (prior knowledge or ALPN)
//! served by the connection manager. A listener removed stops accepting;
//! a listener whose settings change drains its connections (each
//! finishes the requests it has, then closes) while new ones get the new
//! settings, as Envoy's immediate drain does.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use sha2::{Digest, Sha256};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::manager::{Downstream, handle};
use crate::runtime::{ListenerRuntime, Runtime};
use crate::stats::Stats;
use crate::tokens::KeyStore;
use crate::xds::Resources;

/// How long a connection may take to send its first byte (TLS or not).
const FIRST_BYTE: Duration = Duration::from_secs(10);

/// The listening sockets: bound when a listener's configuration arrives,
/// so one that cannot bind is refused in the NACK (as Envoy refuses
/// it), and kept while the listener exists.
#[derive(Default)]
pub struct Sockets(Mutex<HashMap<SocketAddr, std::net::TcpListener>>);

impl Sockets {
    /// Binds the addresses of `resources`' listeners not bound yet; any
    /// that cannot be bound refuses the whole change.
    pub fn check(&self, resources: &Resources) -> Result<(), Vec<String>> {
        let mut held = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let wanted: HashMap<SocketAddr, &str> = resources
            .listeners
            .values()
            .map(|l| (l.address, l.name.as_str()))
            .collect();
        let mut problems = Vec::new();
        let mut fresh = Vec::new();
        for (address, name) in &wanted {
            if held.contains_key(address) {
                continue;
            }
            match bind(*address) {
                Ok(socket) => fresh.push((*address, socket)),
                Err(e) => problems.push(format!("Listener {name}: cannot bind {address}: {e}")),
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        held.retain(|address, _| wanted.contains_key(address));
        held.extend(fresh);
        Ok(())
    }

    fn take(&self, address: &SocketAddr) -> std::io::Result<TcpListener> {
        let held = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let socket = held.get(address).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::NotFound, "the socket was not bound")
        })?;
        TcpListener::from_std(socket.try_clone()?)
    }
}

fn bind(address: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = if address.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(1024)?.into_std()
}

/// A listener serves once it is warm, as Envoy's: its route tables are
/// held and its TLS has its secrets. Until then connections are refused
/// (a listener that exists keeps its last warm settings).
fn warm(listener: &ListenerRuntime, runtime: &Runtime) -> bool {
    listener.chains.iter().all(|c| {
        let http = &c.config.http;
        (http.inline_routes.is_some() || runtime.resources.routes.contains_key(&http.route_table))
            && !matches!(c.tls, Some(Err(_)))
    })
}

struct Running {
    address: SocketAddr,
    accepting: JoinHandle<()>,
    settings: watch::Sender<Arc<ListenerRuntime>>,
    /// Bumped to drain the connections accepted before.
    drain: watch::Sender<u64>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.accepting.abort();
        self.drain.send_modify(|g| *g += 1);
    }
}

/// Keeps the listeners `runtime` holds serving (from the sockets
/// `sockets` bound), until the runtime's sender is gone.
pub async fn run(
    mut runtime: watch::Receiver<Arc<Runtime>>,
    sockets: Arc<Sockets>,
    stats: Arc<Stats>,
    keys: Arc<KeyStore>,
) {
    let mut running: HashMap<String, Running> = HashMap::new();
    loop {
        let current = runtime.borrow_and_update().clone();
        running.retain(|name, r| {
            current
                .listeners
                .get(name)
                .is_some_and(|l| l.config.address == r.address)
        });
        for (name, listener) in &current.listeners {
            if !warm(listener, &current) {
                continue;
            }
            if let Some(r) = running.get_mut(name) {
                if !Arc::ptr_eq(&r.settings.borrow(), listener) {
                    r.settings.send_replace(listener.clone());
                    r.drain.send_modify(|g| *g += 1);
                }
                continue;
            }
            match sockets.take(&listener.config.address) {
                Ok(socket) => {
                    let (drain, _) = watch::channel(0);
                    let (settings, settings_rx) = watch::channel(listener.clone());
                    let accepting = tokio::spawn(accept(
                        socket,
                        settings_rx,
                        runtime.clone(),
                        stats.clone(),
                        keys.clone(),
                        drain.subscribe(),
                    ));
                    tracing::info!(listener = %name, address = %listener.config.address, "listening");
                    running.insert(
                        name.clone(),
                        Running {
                            address: listener.config.address,
                            accepting,
                            settings,
                            drain,
                        },
                    );
                }
                Err(e) => {
                    tracing::error!(listener = %name, address = %listener.config.address, error = %e, "cannot listen");
                }
            }
        }
        if runtime.changed().await.is_err() {
            return;
        }
    }
}

async fn accept(
    socket: TcpListener,
    settings: watch::Receiver<Arc<ListenerRuntime>>,
    runtime: watch::Receiver<Arc<Runtime>>,
    stats: Arc<Stats>,
    keys: Arc<KeyStore>,
    drain: watch::Receiver<u64>,
) {
    loop {
        let (tcp, remote) = match socket.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let listener = settings.borrow().clone();
        let runtime = runtime.clone();
        let stats = stats.clone();
        let keys = keys.clone();
        let mut drain = drain.clone();
        drain.mark_unchanged();
        tokio::spawn(async move {
            if let Err(e) = connection(tcp, remote, listener, runtime, stats, keys, drain).await {
                tracing::debug!(%remote, error = %e, "connection closed");
            }
        });
    }
}

async fn connection(
    tcp: TcpStream,
    remote: SocketAddr,
    listener: Arc<ListenerRuntime>,
    runtime: watch::Receiver<Arc<Runtime>>,
    stats: Arc<Stats>,
    keys: Arc<KeyStore>,
    drain: watch::Receiver<u64>,
) -> Result<(), String> {
    let is_tls = if listener.config.inspects_tls {
        let mut first = [0u8; 1];
        match tokio::time::timeout(FIRST_BYTE, tcp.peek(&mut first)).await {
            Ok(Ok(1)) => first[0] == 0x16,
            _ => return Err("no first byte".into()),
        }
    } else {
        false
    };
    let chain = listener
        .chains
        .iter()
        .find(|c| c.config.tls_only.is_none_or(|tls| tls == is_tls))
        .cloned()
        .ok_or("no filter chain matches")?;
    match &chain.tls {
        None => {
            let downstream = Arc::new(Downstream {
                chain,
                peer: None,
                peer_hash: None,
                remote,
                runtime,
                stats,
                keys,
            });
            serve(TokioIo::new(tcp), downstream, drain).await
        }
        Some(Err(e)) => Err(format!("TLS not ready: {e}")),
        Some(Ok(config)) => {
            let tls = tokio::time::timeout(
                FIRST_BYTE,
                tokio_rustls::TlsAcceptor::from(config.clone()).accept(tcp),
            )
            .await
            .map_err(|_| "TLS handshake timed out".to_string())?
            .map_err(|e| format!("TLS handshake: {e}"))?;
            let leaf = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .cloned();
            let downstream = Arc::new(Downstream {
                chain,
                peer: leaf
                    .as_ref()
                    .and_then(weft_identity::first_uri_san)
                    .map(Arc::from),
                peer_hash: leaf.map(|l| hex::encode(Sha256::digest(l.as_ref()))),
                remote,
                runtime,
                stats,
                keys,
            });
            serve(TokioIo::new(tls), downstream, drain).await
        }
    }
}

async fn serve<I>(
    io: TokioIo<I>,
    downstream: Arc<Downstream>,
    mut drain: watch::Receiver<u64>,
) -> Result<(), String>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let service = hyper::service::service_fn(move |request| handle(downstream.clone(), request));
    let connection = builder.serve_connection(io, service);
    tokio::pin!(connection);
    tokio::select! {
        done = connection.as_mut() => return done.map_err(|e| e.to_string()),
        _ = drain.changed() => connection.as_mut().graceful_shutdown(),
    }
    connection.await.map_err(|e| e.to_string())
}

//! Connections to endpoints, pooled: one pool per cluster, endpoint and
//! protocol. HTTP/2 shares one connection for every request; HTTP/1.1
//! keeps idle connections and reuses one once its last response has been
//! read whole. Mutual TLS checks the endpoint's SPIFFE ID and records it
//! (`%UPSTREAM_PEER_URI_SAN%`). A pool counts its open connections for
//! the cluster's circuit breaker.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

use crate::body::Boxed as Body;

/// How to reach one endpoint.
#[derive(Clone)]
pub struct Dial {
    pub address: SocketAddr,
    pub connect_timeout: Duration,
    /// Mutual TLS: the settings and the server name sent.
    pub tls: Option<(Arc<rustls::ClientConfig>, String)>,
    pub http2: bool,
}

/// Why a request did not get a response from the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The connection could not be made (refused, timed out, TLS).
    Connect,
    /// The connection broke before the response began.
    Reset,
    /// The cluster's connection limit is reached.
    Overflow,
}

/// One endpoint's connections.
struct Pool {
    idle: Mutex<Vec<http1::SendRequest<Body>>>,
    shared: Mutex<Option<http2::SendRequest<Body>>>,
    open: Arc<AtomicUsize>,
}

/// An open connection's response to a request, and the peer it reached.
pub struct Answer {
    pub response: hyper::Response<Incoming>,
    pub peer: Option<Arc<str>>,
}

/// A cluster's connections, by endpoint and protocol; they live as long
/// as the cluster's settings do.
#[derive(Default)]
pub struct Pools {
    pools: Mutex<HashMap<(SocketAddr, bool), Arc<PoolEntry>>>,
    /// Connections open to all of the cluster's endpoints.
    open: Arc<AtomicUsize>,
}

struct PoolEntry {
    pool: Pool,
    peer: Mutex<Option<Arc<str>>>,
}

impl Pools {
    /// Sends `request` to the endpoint `dial` names; the cluster's
    /// connections number at most `max_connections`.
    pub async fn send(
        &self,
        dial: &Dial,
        max_connections: usize,
        request: hyper::Request<Body>,
    ) -> Result<Answer, Failure> {
        let entry = {
            let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
            pools
                .entry((dial.address, dial.http2))
                .or_insert_with(|| {
                    Arc::new(PoolEntry {
                        pool: Pool {
                            idle: Mutex::default(),
                            shared: Mutex::default(),
                            open: self.open.clone(),
                        },
                        peer: Mutex::default(),
                    })
                })
                .clone()
        };
        let peer = || entry.peer.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if dial.http2 {
            let sender = {
                let shared = entry.pool.shared.lock().unwrap_or_else(|p| p.into_inner());
                shared.as_ref().filter(|s| !s.is_closed()).cloned()
            };
            let mut sender = match sender {
                Some(sender) => sender,
                None => {
                    let (sender, peer) = connect_h2(dial, &entry.pool, max_connections).await?;
                    *entry.peer.lock().unwrap_or_else(|p| p.into_inner()) = peer;
                    *entry.pool.shared.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some(sender.clone());
                    sender
                }
            };
            let response = sender
                .send_request(request)
                .await
                .map_err(|_| Failure::Reset)?;
            return Ok(Answer {
                response,
                peer: peer(),
            });
        }
        let idle = loop {
            let next = entry
                .pool
                .idle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop();
            match next {
                Some(sender) if sender.is_ready() => break Some(sender),
                Some(_) => continue,
                None => break None,
            }
        };
        let mut sender = match idle {
            Some(sender) => sender,
            None => {
                let (sender, peer) = connect_h1(dial, &entry.pool, max_connections).await?;
                *entry.peer.lock().unwrap_or_else(|p| p.into_inner()) = peer;
                sender
            }
        };
        let response = sender
            .send_request(request)
            .await
            .map_err(|_| Failure::Reset)?;
        // The connection is free again once this response is read whole.
        let entry_back = entry.clone();
        tokio::spawn(async move {
            if sender.ready().await.is_ok() {
                entry_back
                    .pool
                    .idle
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(sender);
            }
        });
        Ok(Answer {
            response,
            peer: peer(),
        })
    }

    /// Forgets the pools of endpoints no longer in the cluster: their
    /// connections close once their requests are done.
    pub fn retain(&self, keep: impl Fn(&SocketAddr) -> bool) {
        self.pools
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(address, _), _| keep(address));
    }
}

/// Counts a connection open until dropped.
struct Opened(Arc<AtomicUsize>);

impl Drop for Opened {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A stream to the endpoint: plain TCP or mutual TLS.
enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

async fn open(
    dial: &Dial,
    pool: &Pool,
    max_connections: usize,
) -> Result<(Stream, Option<Arc<str>>, Opened), Failure> {
    if pool.open.fetch_add(1, Ordering::Relaxed) >= max_connections {
        pool.open.fetch_sub(1, Ordering::Relaxed);
        return Err(Failure::Overflow);
    }
    let opened = Opened(pool.open.clone());
    let tcp = tokio::time::timeout(dial.connect_timeout, TcpStream::connect(dial.address))
        .await
        .map_err(|_| Failure::Connect)?
        .map_err(|_| Failure::Connect)?;
    let _ = tcp.set_nodelay(true);
    let Some((config, sni)) = &dial.tls else {
        return Ok((Stream::Plain(tcp), None, opened));
    };
    // No SNI for a name that is not one (weft sends `*.mesh` names).
    let name = ServerName::try_from(sni.clone())
        .unwrap_or_else(|_| ServerName::IpAddress(dial.address.ip().into()));
    let connector = tokio_rustls::TlsConnector::from(config.clone());
    let tls = tokio::time::timeout(dial.connect_timeout, connector.connect(name, tcp))
        .await
        .map_err(|_| Failure::Connect)?
        .map_err(|e| {
            tracing::debug!(error = %e, address = %dial.address, "upstream TLS refused");
            Failure::Connect
        })?;
    let peer = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(weft_identity::first_uri_san)
        .map(Arc::from);
    Ok((Stream::Tls(Box::new(tls)), peer, opened))
}

macro_rules! with_stream {
    ($stream:expr, |$io:ident| $body:expr) => {
        match $stream {
            Stream::Plain(s) => {
                let $io = TokioIo::new(s);
                $body
            }
            Stream::Tls(s) => {
                let $io = TokioIo::new(s);
                $body
            }
        }
    };
}

async fn connect_h1(
    dial: &Dial,
    pool: &Pool,
    max_connections: usize,
) -> Result<(http1::SendRequest<Body>, Option<Arc<str>>), Failure> {
    let (stream, peer, opened) = open(dial, pool, max_connections).await?;
    let sender = with_stream!(stream, |io| {
        let (sender, connection) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|_| Failure::Connect)?;
        tokio::spawn(async move {
            let _opened = opened;
            let _ = connection.await;
        });
        sender
    });
    Ok((sender, peer))
}

async fn connect_h2(
    dial: &Dial,
    pool: &Pool,
    max_connections: usize,
) -> Result<(http2::SendRequest<Body>, Option<Arc<str>>), Failure> {
    let (stream, peer, opened) = open(dial, pool, max_connections).await?;
    let sender = with_stream!(stream, |io| {
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .handshake(io)
            .await
            .map_err(|_| Failure::Connect)?;
        tokio::spawn(async move {
            let _opened = opened;
            let _ = connection.await;
        });
        sender
    });
    Ok((sender, peer))
}

//! Serving TLS to weft's own components (the edge's xDS port, the
//! server's edge port): the server shows its SVID, and a peer may show one
//! (a proxy's ADS stream must; a sidecar or an edge asking for its first
//! certificate cannot). What the handshake proved travels with every
//! request of the connection as a [`Peer`] extension.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

use crate::SpiffeId;
use crate::tls::{HANDSHAKE_TIMEOUT, TrustStore};

/// Who is on the other end of a connection.
#[derive(Debug, Clone)]
pub struct Peer {
    pub address: std::net::SocketAddr,
    /// The SPIFFE ID of the certificate it showed, checked against the
    /// trust bundle; none if it showed none.
    pub id: Option<SpiffeId>,
    /// The chain it showed (leaf first), if any.
    pub chain: Vec<CertificateDer<'static>>,
}

/// One accepted TLS connection.
pub struct TlsConnection {
    stream: TlsStream<TcpStream>,
    peer: Peer,
}

impl tonic::transport::server::Connected for TlsConnection {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        self.peer.clone()
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

impl TlsConnection {
    pub fn peer(&self) -> &Peer {
        &self.peer
    }
}

/// Accepts connections on `listener` and hands over those whose TLS
/// handshake succeeds. Handshakes run side by side, so a slow or silent
/// client holds up nobody; each failed one is logged (naming `port`) and
/// reported to `failed`.
pub fn incoming(
    listener: TcpListener,
    port: &'static str,
    config: rustls::ServerConfig,
    trust: Arc<TrustStore>,
    failed: impl Fn() + Clone + Send + Sync + 'static,
) -> ReceiverStream<io::Result<TlsConnection>> {
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            // Stops with the server (which drops the receiving end).
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = tx.closed() => return,
            };
            let (tcp, address) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, port, "cannot accept a connection");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            // Answers go out as they are written: with Nagle's algorithm
            // a small HTTP/2 frame waits for the peer's delayed ACK, tens
            // of milliseconds on the request path of a gateway.
            if let Err(error) = tcp.set_nodelay(true) {
                tracing::debug!(%error, port, "cannot turn off Nagle's algorithm");
            }
            let (acceptor, tx, trust, failed) =
                (acceptor.clone(), tx.clone(), trust.clone(), failed.clone());
            tokio::spawn(async move {
                let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
                let stream = match handshake {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(error)) => {
                        failed();
                        tracing::warn!(peer = %address, %error, port, "refused a connection: TLS with a certificate of this trust domain is required");
                        return;
                    }
                    Err(_) => {
                        failed();
                        tracing::warn!(peer = %address, port, "refused a connection: no TLS handshake within {HANDSHAKE_TIMEOUT:?}");
                        return;
                    }
                };
                // The verifier checked the chain; this names what it proved.
                let chain: Vec<CertificateDer<'static>> = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
                    .unwrap_or_default();
                let id = if chain.is_empty() {
                    None
                } else {
                    trust.verify(&chain).ok()
                };
                let peer = Peer { address, id, chain };
                let _ = tx.send(Ok(TlsConnection { stream, peer })).await;
            });
        }
    });
    ReceiverStream::new(rx)
}

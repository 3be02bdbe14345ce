//! weft-proxy's mutual TLS, in real handshakes on loopback: SVIDs from a
//! real CA hierarchy; a peer whose SPIFFE ID the configuration accepts
//! gets through, one it does not (or one of another trust domain, or one
//! with no certificate) is refused with the reason.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use weft_identity::tls::{ServingCertificate, TrustStore};
use weft_identity::{Authority, Bundle, CertRequest, SpiffeId};
use weft_proxy::config::{DownstreamTls, PeerCheck, UpstreamTls};
use weft_proxy::tls::Secrets;

const HOUR: Duration = Duration::from_secs(3600);

struct Domain {
    edge: Authority,
    bundle: Bundle,
}

fn domain(trust_domain: &str) -> Domain {
    let root = Authority::root(trust_domain, 24 * HOUR).unwrap();
    let request = CertRequest::intermediate(trust_domain, "east").unwrap();
    let cert = root
        .sign_intermediate(&request.csr, "east", 12 * HOUR)
        .unwrap();
    let edge = Authority::from_parts(cert, request.key, Vec::new()).unwrap();
    let bundle = Bundle::new(trust_domain, vec![root.certificate().clone()]);
    Domain { edge, bundle }
}

/// The secrets of a workload running as `account` in `domain`, trusting
/// `trusts`.
fn secrets(domain: &Domain, account: &str, trusts: &Domain) -> Secrets {
    let id = SpiffeId::workload(domain.edge.trust_domain(), "shop", account).unwrap();
    let request = CertRequest::workload(&id).unwrap();
    let leaf = domain.edge.issue_svid(&request.csr, &id, HOUR).unwrap();
    let certificate = ServingCertificate::default();
    certificate
        .set(
            std::iter::once(leaf).chain(domain.edge.chain()).collect(),
            request.key.serialize_der(),
        )
        .unwrap();
    let trust = TrustStore::default();
    trust.set(trusts.bundle.clone());
    Secrets {
        certificates: [("default".to_string(), Arc::new(certificate))].into(),
        roots: [("ROOTCA".to_string(), Arc::new(trust))].into(),
        uris: Default::default(),
    }
}

fn exact(ids: &[&str]) -> PeerCheck {
    PeerCheck {
        exact: ids.iter().map(|s| s.to_string()).collect(),
        prefixes: Vec::new(),
    }
}

/// One handshake and one byte each way; the client's and the server's
/// errors.
async fn handshake(
    server: &Secrets,
    accepts: PeerCheck,
    client: &Secrets,
    expects: PeerCheck,
) -> (Result<(), String>, Result<(), String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let downstream = DownstreamTls {
        certificate: "default".into(),
        trust: "ROOTCA".into(),
        peers: accepts,
    };
    let acceptor = TlsAcceptor::from(Arc::new(server.server_config(&downstream).unwrap()));
    let serving = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let mut tls = acceptor.accept(stream).await.map_err(|e| e.to_string())?;
        let mut byte = [0u8; 1];
        tls.read_exact(&mut byte).await.map_err(|e| e.to_string())?;
        tls.write_all(&byte).await.map_err(|e| e.to_string())?;
        tls.flush().await.map_err(|e| e.to_string())
    });
    let upstream = UpstreamTls {
        sni: "reviews.shop.mesh".into(),
        certificate: "default".into(),
        trust: "ROOTCA".into(),
        peers: expects,
        alpn: Vec::new(),
    };
    let connector = TlsConnector::from(Arc::new(client.client_config(&upstream).unwrap()));
    let calling = async {
        let stream = TcpStream::connect(address)
            .await
            .map_err(|e| e.to_string())?;
        let name = rustls::pki_types::ServerName::try_from("reviews.shop.mesh").unwrap();
        let mut tls = connector
            .connect(name, stream)
            .await
            .map_err(|e| e.to_string())?;
        tls.write_all(b"x").await.map_err(|e| e.to_string())?;
        let mut byte = [0u8; 1];
        tls.read_exact(&mut byte).await.map_err(|e| e.to_string())?;
        Ok(())
    };
    let called = calling.await;
    let served = tokio::time::timeout(Duration::from_secs(5), serving)
        .await
        .map_or(Err("the server hung".to_string()), |r| r.unwrap());
    (called, served)
}

#[tokio::test]
async fn peers_are_checked_by_spiffe_id_both_ways() {
    let weft = domain("weft");
    let reviews = secrets(&weft, "reviews", &weft);
    let client = secrets(&weft, "client", &weft);
    let anyone = PeerCheck {
        exact: Vec::new(),
        prefixes: vec!["spiffe://weft/".into()],
    };

    // Both sides accept each other.
    let (called, served) = handshake(
        &reviews,
        anyone.clone(),
        &client,
        exact(&["spiffe://weft/ns/shop/sa/reviews"]),
    )
    .await;
    assert_eq!(
        (called.clone(), served.clone()),
        (Ok(()), Ok(())),
        "{called:?} {served:?}"
    );

    // The caller expects ratings: reviews' certificate is refused.
    let (called, _) = handshake(
        &reviews,
        anyone.clone(),
        &client,
        exact(&["spiffe://weft/ns/shop/sa/ratings"]),
    )
    .await;
    let refused = called.unwrap_err();
    assert!(
        refused.contains("spiffe://weft/ns/shop/sa/reviews is not one this proxy accepts"),
        "{refused}"
    );

    // The listener accepts only the client: another workload is refused.
    let intruder = secrets(&weft, "intruder", &weft);
    let (_, served) = handshake(
        &reviews,
        exact(&["spiffe://weft/ns/shop/sa/client"]),
        &intruder,
        anyone.clone(),
    )
    .await;
    let refused = served.unwrap_err();
    assert!(
        refused.contains("intruder is not one this proxy accepts"),
        "{refused}"
    );

    // A certificate of another trust domain does not verify at all.
    let other = domain("other.example");
    let stranger = secrets(&other, "client", &weft);
    let (_, served) = handshake(&reviews, anyone.clone(), &stranger, anyone.clone()).await;
    assert!(served.is_err(), "a stranger got in");

    // A secret the configuration names and the proxy does not hold.
    let upstream = UpstreamTls {
        sni: String::new(),
        certificate: "missing".into(),
        trust: "ROOTCA".into(),
        peers: anyone,
        alpn: Vec::new(),
    };
    let error = client.client_config(&upstream).unwrap_err().to_string();
    assert_eq!(error, "no secret \"missing\" is held");
}

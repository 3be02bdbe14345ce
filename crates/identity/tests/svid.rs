//! The CA hierarchy end to end: a root, a cluster intermediate from the
//! edge's CSR, workload SVIDs from sidecar CSRs; checked by weft's own
//! verifier and by OpenSSL.

use std::process::Command;
use std::time::{Duration, SystemTime};

use weft_identity::{
    Authority, Bundle, CertRequest, CertificateDer, IdentityError, SpiffeId, certificates_to_pem,
    verify_svid,
};
use x509_parser::extensions::GeneralName;

const HOUR: Duration = Duration::from_secs(3600);

/// A root, and the intermediate of cluster `east` (its key made "at the
/// edge", from a CSR).
fn hierarchy(trust_domain: &str) -> (Authority, Authority) {
    let root = Authority::root(trust_domain, 24 * HOUR).unwrap();
    let request = CertRequest::intermediate(trust_domain, "east").unwrap();
    let cert = root
        .sign_intermediate(&request.csr, "east", 12 * HOUR)
        .unwrap();
    let edge = Authority::from_parts(cert, request.key, Vec::new()).unwrap();
    (root, edge)
}

fn svid(edge: &Authority, id: &SpiffeId, lifetime: Duration) -> Vec<CertificateDer<'static>> {
    let request = CertRequest::workload(id).unwrap();
    let leaf = edge.issue_svid(&request.csr, id, lifetime).unwrap();
    std::iter::once(leaf).chain(edge.chain()).collect()
}

fn reviews(trust_domain: &str) -> SpiffeId {
    SpiffeId::workload(trust_domain, "shop", "reviews").unwrap()
}

#[test]
fn svids_have_the_x509_svid_shape_and_verify_to_the_root() {
    let (root, edge) = hierarchy("acme.example");
    let id = reviews("acme.example");
    let chain = svid(&edge, &id, HOUR);
    let bundle = Bundle::new("acme.example", vec![root.certificate().clone()]);
    assert_eq!(verify_svid(&chain, &bundle, SystemTime::now()).unwrap(), id);
    assert_eq!(id.to_string(), "spiffe://acme.example/ns/shop/sa/reviews");

    let (_, leaf) = x509_parser::parse_x509_certificate(&chain[0]).unwrap();
    assert_eq!(leaf.subject().iter().count(), 0, "the subject is empty");
    let names = &leaf
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names;
    assert_eq!(
        names.as_slice(),
        [GeneralName::URI("spiffe://acme.example/ns/shop/sa/reviews")]
    );
    let basic = leaf.basic_constraints().unwrap().unwrap();
    assert!(!basic.value.ca);
    let usage = leaf.key_usage().unwrap().unwrap().value;
    assert!(usage.digital_signature() && !usage.key_cert_sign() && !usage.crl_sign());
    let eku = leaf.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    let lifetime = leaf.validity().time_to_expiration().unwrap();
    assert!(
        lifetime <= time::Duration::hours(1) && lifetime > time::Duration::minutes(59),
        "{lifetime}"
    );

    // The intermediate is a CA that can sign only leaves.
    let (_, intermediate) = x509_parser::parse_x509_certificate(&chain[1]).unwrap();
    let basic = intermediate.basic_constraints().unwrap().unwrap().value;
    assert!(basic.ca);
    assert_eq!(basic.path_len_constraint, Some(0));

    // OpenSSL agrees, for both TLS roles.
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, certs: &[CertificateDer<'_>]| {
        let path = dir.path().join(name);
        std::fs::write(&path, certificates_to_pem(certs)).unwrap();
        path
    };
    let root_pem = file("root.pem", std::slice::from_ref(root.certificate()));
    let untrusted = file("intermediate.pem", &chain[1..]);
    let leaf_pem = file("leaf.pem", &chain[..1]);
    for purpose in ["sslclient", "sslserver"] {
        let out = Command::new("openssl")
            .arg("verify")
            .arg("-CAfile")
            .arg(&root_pem)
            .arg("-untrusted")
            .arg(&untrusted)
            .args(["-purpose", purpose])
            .arg(&leaf_pem)
            .output()
            .expect("openssl runs (scripts/setup installs it)");
        let said = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && said.contains(": OK"),
            "{purpose}: {said}"
        );
    }
}

#[test]
fn a_csr_gets_only_the_identity_its_credential_allows() {
    let (_, edge) = hierarchy("acme.example");
    let asked =
        CertRequest::workload(&SpiffeId::workload("acme.example", "shop", "admin").unwrap())
            .unwrap();
    let err = edge
        .issue_svid(&asked.csr, &reviews("acme.example"), HOUR)
        .unwrap_err();
    assert!(
        matches!(&err, IdentityError::Request(m) if m.contains("sa/admin") && m.contains("allows only spiffe://acme.example/ns/shop/sa/reviews")),
        "{err}"
    );

    // A CSR that names no identity gets the one its credential allows.
    let anonymous = CertRequest::workload_key().unwrap();
    let leaf = edge
        .issue_svid(&anonymous.csr, &reviews("acme.example"), HOUR)
        .unwrap();
    let (_, parsed) = x509_parser::parse_x509_certificate(&leaf).unwrap();
    let names = &parsed
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names;
    assert_eq!(
        names.as_slice(),
        [GeneralName::URI("spiffe://acme.example/ns/shop/sa/reviews")]
    );

    // A CSR asking to be a CA is refused.
    let ca_request = CertRequest::intermediate("acme.example", "rogue").unwrap();
    let err = edge
        .issue_svid(&ca_request.csr, &reviews("acme.example"), HOUR)
        .unwrap_err();
    assert!(matches!(err, IdentityError::Request(_)), "{err}");

    // A damaged CSR (its signature no longer matches) is refused.
    let mut damaged = CertRequest::workload(&reviews("acme.example")).unwrap().csr;
    let last = damaged.len() - 5;
    damaged[last] ^= 0xff;
    let err = edge
        .issue_svid(&damaged, &reviews("acme.example"), HOUR)
        .unwrap_err();
    assert!(matches!(err, IdentityError::Request(_)), "{err}");

    // An identity of another trust domain is not this CA's to give.
    let request = CertRequest::workload(&reviews("other.example")).unwrap();
    assert!(
        edge.issue_svid(&request.csr, &reviews("other.example"), HOUR)
            .is_err()
    );

    // Only the root signs cluster CAs.
    let request = CertRequest::intermediate("acme.example", "west").unwrap();
    assert!(edge.sign_intermediate(&request.csr, "west", HOUR).is_err());
}

#[test]
fn verification_refuses_other_roots_expired_svids_and_ca_certificates() {
    let (root, edge) = hierarchy("acme.example");
    let bundle = Bundle::new("acme.example", vec![root.certificate().clone()]);
    let id = reviews("acme.example");

    // Same trust domain name, another root: not trusted.
    let (_, stranger) = hierarchy("acme.example");
    let err = verify_svid(&svid(&stranger, &id, HOUR), &bundle, SystemTime::now()).unwrap_err();
    assert!(matches!(err, IdentityError::Untrusted(_)), "{err}");

    // Another trust domain: not trusted, and said so.
    let (_, foreign) = hierarchy("other.example");
    let err = verify_svid(
        &svid(&foreign, &reviews("other.example"), HOUR),
        &bundle,
        SystemTime::now(),
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("not in trust domain acme.example"),
        "{err}"
    );

    // Expired: valid now, refused two hours from now.
    let chain = svid(&edge, &id, HOUR);
    let later = SystemTime::now() + 2 * HOUR;
    let err = verify_svid(&chain, &bundle, later).unwrap_err();
    assert!(err.to_string().contains("Expired"), "{err}");

    // A CA certificate is not an SVID.
    let err = verify_svid(&edge.chain(), &bundle, SystemTime::now()).unwrap_err();
    assert!(matches!(err, IdentityError::NotAnSvid(_)), "{err}");

    // An SVID never outlives the CA that signed it.
    let long = svid(&edge, &id, 100 * HOUR);
    let (_, leaf) = x509_parser::parse_x509_certificate(&long[0]).unwrap();
    assert!(leaf.validity().time_to_expiration().unwrap() <= time::Duration::hours(12));
}

#[test]
fn a_bundle_with_two_roots_trusts_both_during_a_root_rotation() {
    let (old_root, old_edge) = hierarchy("acme.example");
    let (new_root, new_edge) = hierarchy("acme.example");
    let id = reviews("acme.example");
    let both = Bundle::new(
        "acme.example",
        vec![
            old_root.certificate().clone(),
            new_root.certificate().clone(),
        ],
    );
    for edge in [&old_edge, &new_edge] {
        assert_eq!(
            verify_svid(&svid(edge, &id, HOUR), &both, SystemTime::now()).unwrap(),
            id
        );
    }
    // The bundle survives PEM.
    let reread = Bundle::from_pem("acme.example", &both.to_pem()).unwrap();
    assert_eq!(reread, both);
    // Once the old root is gone from the bundle, its SVIDs are refused.
    let new_only = Bundle::new("acme.example", vec![new_root.certificate().clone()]);
    assert!(verify_svid(&svid(&old_edge, &id, HOUR), &new_only, SystemTime::now()).is_err());
}

#[test]
fn authorities_survive_pem_and_refuse_a_key_that_is_not_theirs() {
    let (root, edge) = hierarchy("acme.example");
    let reloaded = Authority::from_pem(&root.cert_pem(), &root.key_pem(), "").unwrap();
    assert_eq!(reloaded.trust_domain(), "acme.example");
    let request = CertRequest::intermediate("acme.example", "west").unwrap();
    assert!(
        reloaded
            .sign_intermediate(&request.csr, "west", HOUR)
            .is_ok()
    );

    let err = Authority::from_pem(&root.cert_pem(), &edge.key_pem(), "").unwrap_err();
    assert!(err.to_string().contains("does not belong"), "{err}");
    let err = Authority::from_pem("not pem", &root.key_pem(), "").unwrap_err();
    assert!(err.to_string().contains("CA certificate"), "{err}");
}

#[test]
fn spiffe_ids_are_checked() {
    for bad in [
        "http://acme.example/ns/shop/sa/reviews",
        "spiffe://Acme.example/ns/shop/sa/reviews",
        "spiffe://acme.example/ns/shop",
        "spiffe://acme.example/ns/../sa/reviews",
        "spiffe://acme.example/ns/shop/sa/re views",
        "spiffe:///ns/shop/sa/reviews",
    ] {
        assert!(SpiffeId::parse(bad).is_err(), "{bad} was accepted");
    }
    let id = SpiffeId::parse("spiffe://acme.example/ns/shop/sa/reviews").unwrap();
    assert_eq!(
        (id.trust_domain(), id.namespace(), id.service_account()),
        ("acme.example", "shop", "reviews")
    );
}

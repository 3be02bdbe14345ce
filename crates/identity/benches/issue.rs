//! How fast certificates are made: a sidecar's key and CSR, and an edge
//! signing a workload certificate from a CSR (the edge's CSRs per second).
//! Prints figures; asserts nothing.
//!
//! cargo bench -p weft-identity --bench issue

use std::time::{Duration, Instant};

use weft_identity::{Authority, CertRequest, SpiffeId};

const N: usize = 2000;

fn main() {
    let root = Authority::root("bench.example", Duration::from_secs(3600 * 24)).unwrap();
    let request = CertRequest::intermediate("bench.example", "east").unwrap();
    let cert = root
        .sign_intermediate(&request.csr, "east", Duration::from_secs(3600 * 12))
        .unwrap();
    let edge = Authority::from_parts(cert, request.key, Vec::new()).unwrap();
    let id = SpiffeId::workload("bench.example", "shop", "reviews").unwrap();

    let started = Instant::now();
    let requests: Vec<CertRequest> = (0..N)
        .map(|_| CertRequest::workload_key().unwrap())
        .collect();
    let made = started.elapsed();

    let started = Instant::now();
    let mut bytes = 0;
    for request in &requests {
        bytes += edge
            .issue_svid(&request.csr, &id, Duration::from_secs(3600))
            .unwrap()
            .len();
    }
    let signed = started.elapsed();
    let per_second = |d: Duration| N as f64 / d.as_secs_f64();
    println!(
        "sidecar: key + CSR {:.0}/s ({:.0} µs each); edge: CSR checked and signed {:.0}/s ({:.0} µs each) on one core; certificates {} bytes",
        per_second(made),
        made.as_secs_f64() * 1e6 / N as f64,
        per_second(signed),
        signed.as_secs_f64() * 1e6 / N as f64,
        bytes / N
    );
}

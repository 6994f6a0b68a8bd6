//! The CA's and the data path's crypto costs (bench/RESULTS.md):
//! - certificate signings per second, with an ECDSA P-256 CA and an RSA 2048 CA;
//! - full mutual-TLS handshakes per second with ECDSA P-256 and RSA 2048 SVIDs,
//!   in memory (no sockets), SPIFFE ids checked on both sides.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use oxmesh_identity::ca::{Authority, Lifetimes};
use oxmesh_identity::credentials::Credentials;
use oxmesh_identity::csr::{self, SigningRequest};
use oxmesh_identity::verify::PeerPolicy;
use oxmesh_identity::{SpiffeId, TrustDomain};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("oxmesh-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn conformance_certs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/conformance/istio/certs")
}

/// An RSA 2048 PKCS#8 key: ring cannot generate RSA keys, openssl can.
fn rsa_key() -> rcgen::KeyPair {
    let out = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ])
        .output()
        .expect("openssl genpkey");
    rcgen::KeyPair::from_pem(&String::from_utf8_lossy(&out.stdout)).expect("PKCS#8 RSA key")
}

fn bench_signing(c: &mut Criterion) {
    let dir = temp("sign");
    let ecdsa_ca =
        Authority::self_signed(&dir, &TrustDomain::cluster_local(), Lifetimes::default())
            .expect("CA");
    let rsa_ca =
        Authority::plug_in(&conformance_certs(), Lifetimes::default()).expect("plug-in CA");
    let identity: SpiffeId = "spiffe://cluster.local/ns/foo/sa/bar".parse().expect("id");
    let (pem, _) = csr::generate(&identity).expect("csr");
    let mut group = c.benchmark_group("ca");
    group.throughput(Throughput::Elements(1));
    group.bench_function("parse_check_and_sign_ecdsa_ca", |b| {
        b.iter(|| {
            let request = SigningRequest::from_pem(&pem).expect("csr");
            request.check_identity(&identity).expect("identity");
            ecdsa_ca.sign(&request, &identity, None).expect("sign")
        })
    });
    group.bench_function("parse_check_and_sign_rsa2048_ca", |b| {
        b.iter(|| {
            let request = SigningRequest::from_pem(&pem).expect("csr");
            rsa_ca.sign(&request, &identity, None).expect("sign")
        })
    });
    group.finish();
    let _ = std::fs::remove_dir_all(dir);
}

fn credentials(ca: &Authority, identity: &str, key: rcgen::KeyPair) -> Arc<Credentials> {
    let identity: SpiffeId = identity.parse().expect("id");
    let pem = csr::request_for(&identity, &key).expect("csr");
    let request = SigningRequest::from_pem(&pem).expect("parse");
    let chain = ca.sign(&request, &identity, None).expect("sign");
    let credentials = Credentials::new(identity);
    let key: PrivateKeyDer<'static> = PrivatePkcs8KeyDer::from(key.serialize_der()).into();
    credentials
        .install(
            chain.presented(),
            key,
            oxmesh_identity::bundle::TrustBundle::new(chain.roots).expect("bundle"),
        )
        .expect("install");
    credentials
}

/// One full handshake between in-memory client and server connections.
fn handshake(client: &Arc<rustls::ClientConfig>, server: &Arc<rustls::ServerConfig>) {
    let name = ServerName::try_from("mesh.invalid").expect("name");
    let mut c = rustls::ClientConnection::new(client.clone(), name).expect("client");
    let mut s = rustls::ServerConnection::new(server.clone()).expect("server");
    let mut buf = Vec::with_capacity(16 * 1024);
    while c.is_handshaking() || s.is_handshaking() {
        buf.clear();
        while c.wants_write() {
            c.write_tls(&mut buf).expect("client write");
        }
        let mut slice = buf.as_slice();
        while !slice.is_empty() {
            s.read_tls(&mut slice).expect("server read");
        }
        s.process_new_packets().expect("server handshake");
        buf.clear();
        while s.wants_write() {
            s.write_tls(&mut buf).expect("server write");
        }
        let mut slice = buf.as_slice();
        while !slice.is_empty() {
            c.read_tls(&mut slice).expect("client read");
        }
        c.process_new_packets().expect("client handshake");
    }
}

fn bench_handshakes(c: &mut Criterion) {
    let dir = temp("tls");
    let ca = Authority::self_signed(&dir, &TrustDomain::cluster_local(), Lifetimes::default())
        .expect("CA");
    let server_id = "spiffe://cluster.local/ns/foo/sa/bar";
    let client_id = "spiffe://cluster.local/ns/web/sa/frontend";
    let mut group = c.benchmark_group("mtls_handshake");
    group.throughput(Throughput::Elements(1));
    for (label, make_key) in [
        (
            "ecdsa_p256_svids",
            (|| rcgen::KeyPair::generate().expect("key")) as fn() -> rcgen::KeyPair,
        ),
        ("rsa2048_svids", rsa_key as fn() -> rcgen::KeyPair),
    ] {
        let server = credentials(&ca, server_id, make_key());
        let client = credentials(&ca, client_id, make_key());

        let server_config = Arc::new(
            server.server_config(PeerPolicy::TrustDomains(vec![TrustDomain::cluster_local()])),
        );
        let client_config = Arc::new(
            client.client_config(PeerPolicy::Identities(vec![server_id.parse().expect("id")])),
        );
        group.bench_function(label, |b| {
            b.iter(|| handshake(&client_config, &server_config))
        });
    }
    group.finish();
    let _ = std::fs::remove_dir_all(dir);
}

criterion_group!(benches, bench_signing, bench_handshakes);
criterion_main!(benches);

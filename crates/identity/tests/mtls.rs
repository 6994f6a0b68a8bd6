//! Mutual TLS between workloads over real loopback sockets: SPIFFE ids checked both
//! ways, trust-domain aliases, root rotation, and intermediates swapped under one root.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;

use oxmesh_identity::bundle::TrustBundle;
use oxmesh_identity::ca::{Authority, CaFiles, Lifetimes};
use oxmesh_identity::certificate::identity_of;
use oxmesh_identity::credentials::Credentials;
use oxmesh_identity::verify::PeerPolicy;
use oxmesh_identity::{SpiffeId, TrustDomain};
use rustls::pki_types::ServerName;
use support::{LocalCa, TempDir, id, self_signed, workload};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const SERVER: &str = "spiffe://cluster.local/ns/foo/sa/bar";
const CLIENT: &str = "spiffe://cluster.local/ns/web/sa/frontend";

/// Accepts one connection; answers with the client's identity as the server saw it.
async fn serve_once(
    server: Arc<Credentials>,
    policy: PeerPolicy,
) -> (
    SocketAddr,
    tokio::task::JoinHandle<Result<SpiffeId, String>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server.server_config(policy)));
    let task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.map_err(|e| e.to_string())?;
        let mut tls = acceptor
            .accept(tcp)
            .await
            .map_err(|e| format!("server handshake: {e}"))?;
        let peer = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|leaf| identity_of(leaf.as_ref()))
            .ok_or("no peer identity")?;
        tls.write_all(peer.to_string().as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        tls.shutdown().await.map_err(|e| e.to_string())?;
        Ok(peer)
    });
    (addr, task)
}

/// Connects, reads everything; `Err` with the TLS error when the handshake fails.
async fn call(
    client: &Arc<Credentials>,
    addr: SocketAddr,
    expect: PeerPolicy,
) -> Result<String, String> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client.client_config(expect)));
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = ServerName::try_from("mesh.invalid").map_err(|e| e.to_string())?;
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    tls.read_to_string(&mut answer)
        .await
        .map_err(|e| e.to_string())?;
    Ok(answer)
}

fn mesh() -> PeerPolicy {
    PeerPolicy::TrustDomains(vec![TrustDomain::cluster_local()])
}

#[tokio::test]
async fn both_sides_see_and_check_each_others_identity() {
    let dir = TempDir::new("mtls-ok");
    let ca = LocalCa::new(self_signed(&dir, "cluster.local"));
    let server = workload(&ca, SERVER).await;
    let client = workload(&ca, CLIENT).await;
    let (addr, seen) = serve_once(server, mesh()).await;
    let answer = call(&client, addr, PeerPolicy::Identities(vec![id(SERVER)]))
        .await
        .expect("connects");
    assert_eq!(answer, CLIENT, "the server saw the client's SPIFFE id");
    assert_eq!(seen.await.expect("task").expect("served"), id(CLIENT));
}

#[tokio::test]
async fn a_client_refuses_a_server_with_another_identity() {
    let dir = TempDir::new("mtls-wrong-server");
    let ca = LocalCa::new(self_signed(&dir, "cluster.local"));
    let server = workload(&ca, "spiffe://cluster.local/ns/foo/sa/impostor").await;
    let client = workload(&ca, CLIENT).await;
    let (addr, _seen) = serve_once(server, mesh()).await;
    let err = call(&client, addr, PeerPolicy::Identities(vec![id(SERVER)]))
        .await
        .expect_err("refused");
    assert!(err.contains("the peer is spiffe://cluster.local/ns/foo/sa/impostor, expected one of [spiffe://cluster.local/ns/foo/sa/bar]"), "{err}");
}

#[tokio::test]
async fn a_server_refuses_clients_of_another_mesh_or_without_a_certificate() {
    let dir = TempDir::new("mtls-foreign");
    let other_dir = TempDir::new("mtls-foreign-2");
    let ca = LocalCa::new(self_signed(&dir, "cluster.local"));
    let stranger_ca = LocalCa::new(self_signed(&other_dir, "cluster.local"));
    let server = workload(&ca, SERVER).await;
    let stranger = workload(&stranger_ca, CLIENT).await;
    // The stranger trusts our root, so only the server's check can stop it.
    stranger.set_bundle(server.bundle().merged(&stranger.bundle()));
    let (addr, seen) = serve_once(server.clone(), mesh()).await;
    assert!(
        call(&stranger, addr, PeerPolicy::Identities(vec![id(SERVER)]))
            .await
            .is_err()
    );
    let err = seen.await.expect("task").expect_err("server refuses");
    // Both roots are `O=cluster.local`: the chain finds a namesake root whose
    // signature does not match.
    assert!(
        err.contains("invalid peer certificate: BadSignature"),
        "{err}"
    );

    let anonymous = Credentials::new(id(CLIENT));
    anonymous.set_bundle(server.bundle().as_ref().clone());
    let (addr, seen) = serve_once(server, mesh()).await;
    assert!(
        call(&anonymous, addr, PeerPolicy::Identities(vec![id(SERVER)]))
            .await
            .is_err()
    );
    let err = seen.await.expect("task").expect_err("server refuses");
    assert!(err.contains("certificate"), "{err}");
}

#[tokio::test]
async fn trust_domain_aliases_count_as_the_same_workload() {
    let dir = TempDir::new("mtls-alias");
    let old = TrustDomain::new("old.example").expect("td");
    let ca = LocalCa::new(self_signed(&dir, "cluster.local"));
    let server = workload(&ca, "spiffe://old.example/ns/foo/sa/bar").await;
    let client = workload(&ca, CLIENT).await;
    let (addr, _) = serve_once(server.clone(), mesh()).await;
    assert!(
        call(&client, addr, PeerPolicy::Identities(vec![id(SERVER)]))
            .await
            .is_err(),
        "no alias, no match"
    );
    let (addr, _) = serve_once(server, mesh()).await;
    let expect = PeerPolicy::Identities(vec![id(SERVER)]).with_aliases(std::slice::from_ref(&old));
    assert_eq!(
        call(&client, addr, expect).await.expect("alias matches"),
        CLIENT
    );
}

/// A cacerts directory: a root of its own and one intermediate signed by it.
fn intermediate_under(
    root: &rcgen::Issuer<'static, rcgen::KeyPair>,
    root_der: &rustls::pki_types::CertificateDer<'static>,
    name: &str,
    dir: &TempDir,
) -> Authority {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let cert = params.signed_by(&key, root).expect("intermediate");
    let files = CaFiles {
        cert: cert.der().clone(),
        key_pem: key.serialize_pem(),
        chain: vec![cert.der().clone()],
        roots: vec![root_der.clone()],
    };
    files.write(&dir.0).expect("write cacerts");
    Authority::plug_in(&dir.0, Lifetimes::default()).expect("plug-in CA")
}

fn root(
    name: &str,
) -> (
    rcgen::Issuer<'static, rcgen::KeyPair>,
    rustls::pki_types::CertificateDer<'static>,
) {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let cert = params.self_signed(&key).expect("root");
    (rcgen::Issuer::new(params, key), cert.der().clone())
}

#[tokio::test]
async fn swapping_the_intermediate_under_one_root_breaks_no_connection() {
    let (root_issuer, root_der) = root("Operator Root");
    let (first_dir, second_dir) = (TempDir::new("mtls-int-1"), TempDir::new("mtls-int-2"));
    let first = LocalCa::new(intermediate_under(
        &root_issuer,
        &root_der,
        "Intermediate 1",
        &first_dir,
    ));
    let second = LocalCa::new(intermediate_under(
        &root_issuer,
        &root_der,
        "Intermediate 2",
        &second_dir,
    ));
    let server = workload(&first, SERVER).await;
    let client = workload(&first, CLIENT).await;

    // A connection opened under the first intermediate...
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server.server_config(mesh())));
    let echo = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        let mut tls = acceptor.accept(tcp).await.expect("handshake");
        let mut buf = [0u8; 5];
        for _ in 0..2 {
            tls.read_exact(&mut buf).await.expect("read");
            tls.write_all(&buf).await.expect("write");
        }
    });
    let connector = tokio_rustls::TlsConnector::from(Arc::new(
        client.client_config(PeerPolicy::Identities(vec![id(SERVER)])),
    ));
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let mut live = connector
        .connect(ServerName::try_from("mesh.invalid").expect("name"), tcp)
        .await
        .expect("handshake");
    let mut buf = [0u8; 5];
    live.write_all(b"hello").await.expect("write");
    live.read_exact(&mut buf).await.expect("read");

    // ...survives both workloads moving to the second intermediate...
    let renewed_server = oxmesh_identity::manager::CertificateManager::new(
        second.clone(),
        server.clone(),
        Default::default(),
    );
    renewed_server.refresh().await.expect("server renewed");
    let renewed_client = oxmesh_identity::manager::CertificateManager::new(
        second.clone(),
        client.clone(),
        Default::default(),
    );
    renewed_client.refresh().await.expect("client renewed");
    live.write_all(b"again")
        .await
        .expect("write after the swap");
    live.read_exact(&mut buf)
        .await
        .expect("read after the swap");
    assert_eq!(&buf, b"again");
    echo.await.expect("echo");

    // ...and new connections mix the two generations: a client still on the first
    // intermediate reaches a server on the second.
    let old_client = workload(&first, CLIENT).await;
    let (addr, _) = serve_once(server, mesh()).await;
    assert_eq!(
        call(&old_client, addr, PeerPolicy::Identities(vec![id(SERVER)]))
            .await
            .expect("mixed generations"),
        CLIENT
    );
}

#[tokio::test]
async fn during_a_root_rotation_old_and_new_roots_are_both_trusted() {
    let (old_root, old_der) = root("Old Root");
    let (new_root, new_der) = root("New Root");
    let (old_dir, new_dir) = (TempDir::new("mtls-old-root"), TempDir::new("mtls-new-root"));
    let old_ca = LocalCa::new(intermediate_under(
        &old_root,
        &old_der,
        "Old Intermediate",
        &old_dir,
    ));
    let new_ca = LocalCa::new(intermediate_under(
        &new_root,
        &new_der,
        "New Intermediate",
        &new_dir,
    ));
    let server = workload(&old_ca, SERVER).await;
    let client = workload(&new_ca, CLIENT).await;
    let both = TrustBundle::new(vec![old_der, new_der]).expect("bundle");
    server.set_bundle(both.clone());
    client.set_bundle(both);
    let (addr, seen) = serve_once(server, mesh()).await;
    assert_eq!(
        call(&client, addr, PeerPolicy::Identities(vec![id(SERVER)]))
            .await
            .expect("connects"),
        CLIENT
    );
    assert_eq!(seen.await.expect("task").expect("served"), id(CLIENT));
}

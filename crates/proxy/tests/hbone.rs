//! HBONE over real loopback sockets and real mutual TLS: a tunnel carries a
//! TCP connection, each side proves its SPIFFE identity to the other, tunnels
//! between the same two workloads share one connection, and refusals come
//! back as Istio's statuses.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use oxmesh_identity::ca::{Authority, Lifetimes};
use oxmesh_identity::credentials::Credentials;
use oxmesh_identity::csr::SigningRequest;
use oxmesh_identity::manager::{CaClient, CaClientError, CertificateManager, Rotation};
use oxmesh_identity::{SpiffeId, TrustDomain};
use oxmesh_proxy::hbone::HboneError;
use oxmesh_proxy::hbone::client::{Client, Target};
use oxmesh_proxy::hbone::server::{self, Direct, Inbound, Refusal, Upstream};
use oxmesh_testkit::TempDir;
use support::tcp_echo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const SERVER: &str = "spiffe://cluster.local/ns/foo/sa/server";
const CLIENT: &str = "spiffe://cluster.local/ns/bar/sa/client";

fn id(s: &str) -> SpiffeId {
    s.parse().expect("SPIFFE id")
}

/// The CA, signing for whoever asks (the test decides who asks).
struct Signer {
    authority: Authority,
    identity: SpiffeId,
}

impl CaClient for Signer {
    async fn create_certificate(
        &self,
        csr_pem: String,
        ttl: Duration,
    ) -> Result<Vec<String>, CaClientError> {
        let request = SigningRequest::from_pem(&csr_pem)
            .map_err(|e| CaClientError::Refused(e.to_string()))?;
        let chain = self
            .authority
            .sign(&request, &self.identity, Some(ttl))
            .map_err(|e| CaClientError::Refused(e.to_string()))?;
        Ok(chain.to_pem_elements())
    }
}

async fn credentials(ca: &TempDir, identity: &str) -> Arc<Credentials> {
    let authority =
        Authority::self_signed(&ca.0, &TrustDomain::cluster_local(), Lifetimes::default())
            .expect("CA");
    let signer = Signer {
        authority,
        identity: id(identity),
    };
    let manager =
        CertificateManager::new(signer, Credentials::new(id(identity)), Rotation::default());
    manager.refresh().await.expect("issued");
    manager.credentials().clone()
}

/// A CA in its own directory (kept while the test runs) and the server's and
/// client's credentials from it.
async fn pair(name: &str) -> (TempDir, Arc<Credentials>, Arc<Credentials>) {
    let ca = TempDir::new(name);
    let server = credentials(&ca, SERVER).await;
    let client = credentials(&ca, CLIENT).await;
    (ca, server, client)
}

/// Connects as [`Direct`] does, and keeps what each tunnel said of itself.
#[derive(Default)]
struct Recording(Mutex<Vec<Inbound>>);

impl Upstream for Recording {
    type Stream = TcpStream;

    async fn open(&self, inbound: Inbound) -> Result<TcpStream, Refusal> {
        self.0.lock().expect("lock").push(inbound.clone());
        Direct.open(inbound).await
    }
}

/// Refuses every tunnel, as authorization would.
struct Deny;

impl Upstream for Deny {
    type Stream = TcpStream;

    async fn open(&self, inbound: Inbound) -> Result<TcpStream, Refusal> {
        Err(Refusal::Denied(format!("{} may not", inbound.peer)))
    }
}

async fn hbone_server<U: Upstream>(credentials: Arc<Credentials>, upstream: Arc<U>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(server::serve(listener, credentials, upstream));
    addr
}

fn target(peer: SocketAddr, identity: &str, authority: SocketAddr) -> Target {
    let mut headers = http::HeaderMap::new();
    headers.insert(
        "forwarded",
        "for=\"198.18.0.7:40000\"".parse().expect("header"),
    );
    Target {
        peer,
        identities: vec![id(identity)],
        authority,
        headers,
    }
}

async fn round_trip(client: &Client, target: &Target, text: &[u8]) -> Vec<u8> {
    let mut tunnel = client.open(target).await.expect("tunnel");
    tunnel.write_all(text).await.expect("write");
    let mut back = vec![0; text.len()];
    tunnel.read_exact(&mut back).await.expect("read");
    back
}

#[tokio::test]
async fn a_tunnel_carries_tcp_between_two_proven_identities() {
    let (_ca, server_creds, client_creds) = pair("hbone-ca").await;
    let recording = Arc::new(Recording::default());
    let peer = hbone_server(server_creds, recording.clone()).await;
    let app = tcp_echo().await;
    let client = Client::new(client_creds);

    let target = target(peer, SERVER, app);
    assert_eq!(round_trip(&client, &target, b"hello").await, b"hello");
    assert_eq!(round_trip(&client, &target, b"again").await, b"again");

    let seen = recording.0.lock().expect("lock").clone();
    assert_eq!(seen.len(), 2);
    assert_eq!(
        seen[0].peer,
        id(CLIENT),
        "the server saw the client's identity"
    );
    assert_eq!(seen[0].authority, app);
    assert_eq!(seen[0].local, peer);
    assert_eq!(
        seen[0]
            .headers
            .get("forwarded")
            .and_then(|v| v.to_str().ok()),
        Some("for=\"198.18.0.7:40000\"")
    );
    assert_eq!(
        seen[0].remote, seen[1].remote,
        "both tunnels rode one pooled connection"
    );
}

#[tokio::test]
async fn tunnels_opened_together_share_one_dial() {
    let (_ca, server_creds, client_creds) = pair("hbone-ca-together").await;
    let recording = Arc::new(Recording::default());
    let peer = hbone_server(server_creds, recording.clone()).await;
    let app = tcp_echo().await;
    let client = Client::new(client_creds);
    let target = target(peer, SERVER, app);
    let (a, b, c) = tokio::join!(
        round_trip(&client, &target, b"one"),
        round_trip(&client, &target, b"two"),
        round_trip(&client, &target, b"three"),
    );
    assert_eq!(
        (a, b, c),
        (b"one".to_vec(), b"two".to_vec(), b"three".to_vec())
    );
    let seen = recording.0.lock().expect("lock").clone();
    let remotes: std::collections::BTreeSet<SocketAddr> = seen.iter().map(|i| i.remote).collect();
    assert_eq!(
        remotes.len(),
        1,
        "one connection for all three: {remotes:?}"
    );
}

#[tokio::test]
async fn a_server_that_is_not_the_expected_identity_is_refused() {
    let (_ca, server_creds, client_creds) = pair("hbone-ca-wrong").await;
    let peer = hbone_server(server_creds, Arc::new(Direct)).await;
    let client = Client::new(client_creds);
    let wanted = target(
        peer,
        "spiffe://cluster.local/ns/foo/sa/someone-else",
        tcp_echo().await,
    );
    match client.open(&wanted).await {
        Err(HboneError::Tls { .. }) => {}
        other => panic!("expected a TLS refusal, got {:?}", other.map(|_| ())),
    }
}

#[tokio::test]
async fn refusals_come_back_as_istios_statuses() {
    let (_ca, server_creds, client_creds) = pair("hbone-ca-refuse").await;
    let client = Client::new(client_creds);

    let denying = hbone_server(server_creds.clone(), Arc::new(Deny)).await;
    let status = |result: Result<_, HboneError>| match result {
        Err(HboneError::Refused { status, .. }) => status,
        other => panic!(
            "expected a refusal, got {:?}",
            other.map(|_: oxmesh_proxy::hbone::client::Tunnel| ())
        ),
    };
    let denied = status(
        client
            .open(&target(denying, SERVER, tcp_echo().await))
            .await,
    );
    assert_eq!(denied, http::StatusCode::UNAUTHORIZED);

    // Nothing listens where the tunnel should go.
    let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let nowhere = closed.local_addr().expect("addr");
    drop(closed);
    let direct = hbone_server(server_creds, Arc::new(Direct)).await;
    let unavailable = status(client.open(&target(direct, SERVER, nowhere)).await);
    assert_eq!(unavailable, http::StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn a_request_that_is_not_connect_is_a_bad_request() {
    use http_body_util::Empty;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use oxmesh_identity::verify::PeerPolicy;

    let (_ca, server_creds, client_creds) = pair("hbone-ca-get").await;
    let peer = hbone_server(server_creds, Arc::new(Direct)).await;
    let mut config = client_creds.client_config(PeerPolicy::Identities(vec![id(SERVER)]));
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = TcpStream::connect(peer).await.expect("connect");
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(
            rustls::pki_types::ServerName::IpAddress(peer.ip().into()),
            tcp,
        )
        .await
        .expect("handshake");
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .expect("h2");
    tokio::spawn(connection);
    let request = http::Request::get(format!("http://{peer}/"))
        .body(Empty::<bytes::Bytes>::new())
        .expect("request");
    let response = sender.send_request(request).await.expect("answered");
    assert_eq!(response.status(), http::StatusCode::BAD_REQUEST);
}

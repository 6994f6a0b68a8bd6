//! Hostile callers against the control plane, over real gRPC on loopback: a
//! flood of ADS streams, an oversized and a malformed DiscoveryRequest, and a
//! storm of certificate requests. Each is bounded and refused with a status
//! that says why, and the proxies already connected go on being served.

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use oxmesh_control::authenticate::LocalTokens;
use oxmesh_control::ca_service::CaService;
use oxmesh_control::control_plane::ControlPlane;
use oxmesh_identity::ca::{Authority, IssuedChain, Lifetimes, SignError, Signer};
use oxmesh_identity::csr::{self, SigningRequest};
use oxmesh_identity::token::{CA_AUDIENCE, TokenAuthority};
use oxmesh_identity::{SpiffeId, TrustDomain};
use oxmesh_testkit::TempDir;
use oxmesh_xds::ads::client::{ClientError, SotwClient};
use oxmesh_xds::ads::types;
use oxmesh_xds::istio_ca::IstioCertificateRequest;
use oxmesh_xds::istio_ca::istio_certificate_service_client::IstioCertificateServiceClient;
use oxmesh_xds::istio_ca::istio_certificate_service_server::IstioCertificateServiceServer;
use support::{PUSH_WAIT, Sotw, sidecar_node};
use tokio::sync::watch;
use tonic::Code;

const MESH: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: default}
spec:
  clusterIP: 198.18.100.10
  selector: {app: reviews}
  ports: [{name: http, port: 9080}]
"#;

fn node(n: usize) -> envoy_types::pb::envoy::config::core::v3::Node {
    sidecar_node(
        &format!("198.18.9.{n}"),
        &format!("flood-{n}"),
        "default",
        &[("app", "flood")],
    )
}

async fn start(name: &str, xds_streams: usize) -> (ControlPlane, TempDir, TempDir) {
    let state = TempDir::new(&format!("{name}-state"));
    let config = TempDir::new(&format!("{name}-config"));
    config.write("mesh.yaml", MESH);
    let mut options = support::options(&state, Some(config.0.clone()));
    options.limits.xds_streams = xds_streams;
    let cp = ControlPlane::start(options).await.expect("starts");
    support::services_read(&cp, 1).await;
    (cp, state, config)
}

/// The status a stream ended with, once it ends.
async fn ended_with(client: &mut SotwClient) -> tonic::Status {
    match tokio::time::timeout(PUSH_WAIT, client.recv()).await {
        Ok(Err(ClientError::Refused(status))) => status,
        other => panic!("expected the stream to end with a status, got {other:?}"),
    }
}

#[tokio::test]
async fn a_flood_of_xds_streams_is_bounded_and_the_connected_stay_served() {
    let (cp, _state, config) = start("hostile-flood", 20).await;
    let mut proxy = Sotw::connect(cp.xds_addr, node(0)).await;
    proxy.subscribe(types::CLUSTER, &[]).await;
    let mut flood = Vec::new();
    for n in 1..20 {
        let mut stream = Sotw::connect(cp.xds_addr, node(n)).await;
        stream.subscribe(types::CLUSTER, &[]).await;
        flood.push(stream);
    }
    // The limit is reached: the next stream is refused, saying why.
    let refused = SotwClient::connect(&cp.xds_addr.to_string(), node(20)).await;
    let Err(ClientError::Refused(status)) = refused else {
        panic!("the 21st stream was admitted");
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{status}");
    assert!(
        status.message().contains("limit of xDS streams"),
        "{status}"
    );

    // The proxy already connected still gets pushes.
    config.write(
        "mesh.yaml",
        &MESH.replace("port: 9080", "port: 9080}, {name: grpc, port: 9090"),
    );
    let push = proxy.recv().await;
    assert_eq!(push.type_url, types::CLUSTER);

    // Streams that end give their places back.
    flood.truncate(10);
    let deadline = tokio::time::Instant::now() + PUSH_WAIT;
    let mut admitted = loop {
        match SotwClient::connect(&cp.xds_addr.to_string(), node(21)).await {
            Ok(client) => break client,
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("no place came back: {e}"),
        }
    };
    admitted
        .subscribe(types::CLUSTER, &[])
        .await
        .expect("subscribe");
    let clusters = tokio::time::timeout(PUSH_WAIT, admitted.recv()).await;
    assert!(matches!(clusters, Ok(Ok(_))), "served: {clusters:?}");
    cp.shutdown().await;
}

#[tokio::test]
async fn an_oversized_discovery_request_ends_its_stream_with_out_of_range() {
    let (cp, _state, _config) = start("hostile-oversized", 100).await;
    let mut attacker = SotwClient::connect(&cp.xds_addr.to_string(), node(1))
        .await
        .expect("connect");
    // 5 MiB of resource names: past the 4 MiB a request may take.
    let name = "x".repeat(1024);
    let names: Vec<&str> = std::iter::repeat_n(name.as_str(), 5 * 1024).collect();
    attacker
        .subscribe(types::ENDPOINT, &names)
        .await
        .expect("sent");
    let status = ended_with(&mut attacker).await;
    assert_eq!(status.code(), Code::OutOfRange, "{status}");

    let mut proxy = Sotw::connect(cp.xds_addr, node(2)).await;
    proxy.subscribe(types::CLUSTER, &[]).await;
    cp.shutdown().await;
}

/// Sends `message` as the one gRPC message of an ADS stream, in raw HTTP/2;
/// the `grpc-status` and `grpc-message` the stream ended with.
async fn raw_ads_call(address: std::net::SocketAddr, message: &[u8]) -> (String, String) {
    let tcp = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .expect("h2 handshake");
    tokio::spawn(conn);
    let mut framed = vec![0u8];
    framed.extend(u32::try_from(message.len()).expect("len").to_be_bytes());
    framed.extend(message);
    let request = http::Request::post(
        "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources",
    )
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(http_body_util::Full::new(Bytes::from(framed)))
    .expect("request");
    let response = tokio::time::timeout(PUSH_WAIT, sender.send_request(request))
        .await
        .expect("answered in time")
        .expect("response");
    let header = |map: &http::HeaderMap, name: &str| {
        map.get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    // A refusal may come as trailers-only headers, or as trailers after DATA.
    if let Some(status) = header(response.headers(), "grpc-status") {
        let message = header(response.headers(), "grpc-message").unwrap_or_default();
        return (status, message);
    }
    let body = tokio::time::timeout(PUSH_WAIT, response.into_body().collect())
        .await
        .expect("ended in time")
        .expect("body");
    let trailers = body.trailers().cloned().unwrap_or_default();
    (
        header(&trailers, "grpc-status").unwrap_or_default(),
        header(&trailers, "grpc-message").unwrap_or_default(),
    )
}

#[tokio::test]
async fn a_request_that_is_not_protobuf_ends_its_stream_with_a_status() {
    let (cp, _state, _config) = start("hostile-malformed", 100).await;
    // Field 1 with wire type 7, which protobuf does not have.
    let (status, message) = raw_ads_call(cp.xds_addr, &[0x0f, 0xff, 0xff, 0xff]).await;
    assert_eq!(status, "13", "INTERNAL: {message}");
    assert!(!message.is_empty(), "the status says why");
    let mut proxy = Sotw::connect(cp.xds_addr, node(2)).await;
    proxy.subscribe(types::CLUSTER, &[]).await;
    cp.shutdown().await;
}

/// The real CA, signing only once the gate opens: requests pile up in hand.
struct Gated {
    authority: Authority,
    open: watch::Receiver<bool>,
}

impl Signer for Gated {
    async fn issue(
        &self,
        request: &SigningRequest,
        identity: &SpiffeId,
        ttl: Option<Duration>,
    ) -> Result<IssuedChain, SignError> {
        let _ = self.open.clone().wait_for(|open| *open).await;
        self.authority.sign(request, identity, ttl)
    }
}

#[tokio::test]
async fn a_storm_of_certificate_requests_is_bounded_and_refused_with_a_status() {
    let dir = TempDir::new("hostile-csr-storm");
    let trust = TrustDomain::cluster_local();
    let authority = Authority::self_signed(&dir.0, &trust, Lifetimes::default()).expect("a CA");
    let tokens = Arc::new(TokenAuthority::load_or_create(&dir.0, trust).expect("token key"));
    let token = tokens
        .mint("foo", "bar", CA_AUDIENCE, Duration::from_secs(600))
        .expect("token");
    let (gate, open) = watch::channel(false);
    let service = CaService::new(Gated { authority, open }, LocalTokens(tokens)).with_limit(4);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(IstioCertificateServiceServer::new(service))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let identity: SpiffeId = "spiffe://cluster.local/ns/foo/sa/bar".parse().expect("id");
    let (pem, _key) = csr::generate(&identity).expect("csr");
    let calls: Vec<_> = (0..50)
        .map(|_| {
            let mut client = IstioCertificateServiceClient::new(channel.clone());
            let mut request = tonic::Request::new(IstioCertificateRequest {
                csr: pem.clone(),
                validity_duration: 3600,
                ..Default::default()
            });
            let bearer = format!("Bearer {token}").parse().expect("header");
            request.metadata_mut().insert("authorization", bearer);
            tokio::spawn(async move { client.create_certificate(request).await })
        })
        .collect();
    // While four wait at the CA, the other 46 are refused at once.
    let deadline = tokio::time::Instant::now() + PUSH_WAIT;
    while calls.iter().filter(|c| c.is_finished()).count() < 46
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (answered, pending): (Vec<_>, Vec<_>) = calls.into_iter().partition(|c| c.is_finished());
    assert_eq!(pending.len(), 4, "four in hand");
    for call in answered {
        let status = call.await.expect("task").expect_err("refused");
        assert_eq!(status.code(), Code::ResourceExhausted, "{status}");
        assert!(status.message().contains("retry with back-off"), "{status}");
    }
    gate.send_replace(true);
    for call in pending {
        let response = call.await.expect("task").expect("signed");
        assert!(!response.into_inner().cert_chain.is_empty());
    }
}

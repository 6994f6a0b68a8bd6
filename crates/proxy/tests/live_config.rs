//! What a push does to connections already open, and how upstream connections
//! are shared and let go: in-process proxies configured from bootstrap text,
//! real sockets on loopback. A new snapshot is stored exactly as the xDS agent
//! stores one.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use oxmesh_proxy::bootstrap;
use oxmesh_proxy::process::Proxy;
use oxmesh_testkit::TempDir;
use tokio::net::{TcpListener, TcpStream};

/// A backend app answering `<name>`; it counts the connections it accepted
/// and those that have closed since. HTTP/2 (h2c) when `h2`.
struct Backend {
    address: SocketAddr,
    accepted: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
}

async fn backend(name: &'static str, h2: bool) -> Backend {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let accepted = Arc::new(AtomicUsize::new(0));
    let closed = Arc::new(AtomicUsize::new(0));
    let (a, c) = (accepted.clone(), closed.clone());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            a.fetch_add(1, Ordering::Relaxed);
            let c = c.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |_req: Request<Incoming>| async move {
                        // Slow enough that a burst overlaps the first dial.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(name))))
                    });
                let io = TokioIo::new(stream);
                if h2 {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(io, service)
                        .await;
                } else {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                }
                c.fetch_add(1, Ordering::Relaxed);
            });
        }
    });
    Backend {
        address,
        accepted,
        closed,
    }
}

/// Cluster `c` over `endpoint`; HTTP/2 upstream when `h2`; an idle timeout
/// when given.
fn cluster(endpoint: SocketAddr, h2: bool, idle_timeout: Option<&str>) -> String {
    let common = idle_timeout
        .map(|t| format!("        common_http_protocol_options: {{idle_timeout: {t}}}\n"))
        .unwrap_or_default();
    let protocol = if h2 {
        "explicit_http_config: {http2_protocol_options: {}}"
    } else {
        "explicit_http_config: {http_protocol_options: {}}"
    };
    format!(
        r#"  - name: c
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
{common}        {protocol}
    load_assignment:
      cluster_name: c
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: '{}', port_value: {}}}}}}}}}]}}]
"#,
        endpoint.ip(),
        endpoint.port()
    )
}

/// A listener `front` sending everything to cluster `c`.
fn bootstrap_text(cluster: &str) -> String {
    format!(
        r#"
static_resources:
  listeners:
  - name: front
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: front
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
          route_config:
            name: front
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes: [{{match: {{prefix: /}}, route: {{cluster: c}}}}]
  clusters:
{cluster}
"#
    )
}

async fn proxy(dir: &TempDir, cluster: &str) -> (Proxy, SocketAddr) {
    let proxy = support::start(
        dir,
        &bootstrap_text(cluster),
        support::workload("default", "client"),
    );
    let address = proxy.listeners.bound("front")[0];
    (proxy, address)
}

/// Pushes cluster `c` anew, as the agent applies a CDS update: the listeners
/// keep running, the clusters are replaced.
fn push_cluster(proxy: &Proxy, cluster: &str) {
    let mut next = bootstrap::from_text(&bootstrap_text(cluster), "push").expect("converts");
    let current = proxy.ctx.snapshot();
    next.listeners = current.listeners.clone();
    proxy.ctx.config.store(Arc::new(next));
}

fn request() -> Request<Full<Bytes>> {
    Request::get("http://svc/")
        .header("host", "svc")
        .body(Full::new(Bytes::new()))
        .expect("request")
}

async fn body_of(response: Response<Incoming>) -> String {
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    String::from_utf8_lossy(&bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_and_http2_clients_follow_a_push_mid_connection() {
    let dir = TempDir::new("live-config-follow");
    let (a, b) = (backend("a", false).await, backend("b", false).await);
    let (proxy, address) = proxy(&dir, &cluster(a.address, false, None)).await;

    // One HTTP/1.1 keep-alive connection and one HTTP/2 connection, opened
    // before the push and used after it.
    let stream = TcpStream::connect(address).await.expect("connect");
    let (mut h1, conn) = http1::handshake(TokioIo::new(stream)).await.expect("h1");
    tokio::spawn(conn);
    let stream = TcpStream::connect(address).await.expect("connect");
    let (mut h2, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .expect("h2");
    tokio::spawn(conn);

    for _ in 0..3 {
        assert_eq!(
            body_of(h1.send_request(request()).await.expect("h1")).await,
            "a"
        );
        assert_eq!(
            body_of(h2.send_request(request()).await.expect("h2")).await,
            "a"
        );
    }
    push_cluster(&proxy, &cluster(b.address, false, None));
    for _ in 0..3 {
        assert_eq!(
            body_of(h1.send_request(request()).await.expect("h1")).await,
            "b",
            "the keep-alive connection's next request takes the new cluster"
        );
        assert_eq!(
            body_of(h2.send_request(request()).await.expect("h2")).await,
            "b",
            "the HTTP/2 connection's next stream takes the new cluster"
        );
    }
}

/// An inline route table (an inbound listener's) pushed anew reaches a
/// keep-alive connection opened before it: the route now answers directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_inline_route_reaches_an_open_connection() {
    let dir = TempDir::new("live-config-inline");
    let a = backend("a", false).await;
    let cluster_text = cluster(a.address, false, None);
    let (proxy, address) = proxy(&dir, &cluster_text).await;
    let stream = TcpStream::connect(address).await.expect("connect");
    let (mut h1, conn) = http1::handshake(TokioIo::new(stream)).await.expect("h1");
    tokio::spawn(conn);
    assert_eq!(
        body_of(h1.send_request(request()).await.expect("h1")).await,
        "a"
    );
    let answered = bootstrap_text(&cluster_text).replace(
        "route: {cluster: c}",
        "direct_response: {status: 200, body: {inline_string: pushed}}",
    );
    let mut next = bootstrap::from_text(&answered, "push").expect("converts");
    // The listener keeps its address: only its chain's routes changed.
    let current = proxy.ctx.snapshot();
    next.clusters = current.clusters.clone();
    proxy.ctx.config.store(Arc::new(next));
    assert_eq!(
        body_of(h1.send_request(request()).await.expect("h1")).await,
        "pushed",
        "the open connection's next request takes the pushed inline route"
    );
}

/// One worker thread, so one pool: a burst of clients to an endpoint with no
/// connection yet dials it once.
#[tokio::test(flavor = "current_thread")]
async fn a_burst_to_a_cold_http2_endpoint_dials_once() {
    let dir = TempDir::new("live-config-burst");
    let upstream = backend("h2", true).await;
    let (_proxy, address) = proxy(&dir, &cluster(upstream.address, true, None)).await;

    let mut clients = Vec::new();
    for _ in 0..20 {
        clients.push(tokio::spawn(async move {
            let stream = TcpStream::connect(address).await.expect("connect");
            let (mut sender, conn) = http1::handshake(TokioIo::new(stream)).await.expect("h1");
            tokio::spawn(conn);
            let response = sender.send_request(request()).await.expect("response");
            (response.status(), body_of(response).await)
        }));
    }
    for client in clients {
        let (status, body) = client.await.expect("client");
        assert_eq!((status, body.as_str()), (StatusCode::OK, "h2"));
    }
    assert_eq!(
        upstream.accepted.load(Ordering::Relaxed),
        1,
        "twenty requests at once share one HTTP/2 connection"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn idle_upstream_connections_close_after_the_clusters_idle_timeout() {
    let dir = TempDir::new("live-config-idle");
    let (short, long) = (backend("short", false).await, backend("long", false).await);
    let (proxy, address) = proxy(&dir, &cluster(short.address, false, Some("0.3s"))).await;
    let stream = TcpStream::connect(address).await.expect("connect");
    let (mut client, conn) = http1::handshake(TokioIo::new(stream)).await.expect("h1");
    tokio::spawn(conn);
    for _ in 0..2 {
        assert_eq!(
            body_of(client.send_request(request()).await.expect("ok")).await,
            "short"
        );
    }
    // Pooled, not closed after use: the second request reused the connection.
    assert_eq!(
        short.accepted.load(Ordering::Relaxed),
        1,
        "reused within the timeout"
    );
    assert_eq!(short.closed.load(Ordering::Relaxed), 0);

    // The sweep runs every second: well within ten, the pooled connection goes.
    let mut waited = Duration::ZERO;
    while short.closed.load(Ordering::Relaxed) == 0 && waited < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        waited += Duration::from_millis(100);
    }
    assert_eq!(
        short.closed.load(Ordering::Relaxed),
        1,
        "the idle connection was closed"
    );

    // Without a timeout (Envoy's hour), the connection stays for reuse.
    push_cluster(&proxy, &cluster(long.address, false, None));
    assert_eq!(
        body_of(client.send_request(request()).await.expect("ok")).await,
        "long"
    );
    assert_eq!(
        body_of(client.send_request(request()).await.expect("ok")).await,
        "long"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(long.closed.load(Ordering::Relaxed), 0);
    assert_eq!(
        long.accepted.load(Ordering::Relaxed),
        1,
        "reused, not redialled"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_says_connection_close_and_goaway() {
    let dir = TempDir::new("live-config-drain");
    let upstream = backend("up", false).await;
    let (proxy, address) = proxy(&dir, &cluster(upstream.address, false, None)).await;
    let stream = TcpStream::connect(address).await.expect("connect");
    let (mut h1, h1_conn) = http1::handshake(TokioIo::new(stream)).await.expect("h1");
    let h1_conn = tokio::spawn(h1_conn);
    let stream = TcpStream::connect(address).await.expect("connect");
    let (mut h2, h2_conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .expect("h2");
    let h2_conn = tokio::spawn(h2_conn);
    let first = h1.send_request(request()).await.expect("h1");
    assert!(first.headers().get("connection").is_none());
    body_of(first).await;
    body_of(h2.send_request(request()).await.expect("h2")).await;

    proxy.ctx.start_draining();

    // HTTP/1.1: the next response is served, and says the connection closes.
    let last = h1
        .send_request(request())
        .await
        .expect("served while draining");
    assert_eq!(last.status(), StatusCode::OK);
    assert_eq!(
        last.headers().get("connection").map(|v| v.as_bytes()),
        Some(&b"close"[..])
    );
    body_of(last).await;
    // HTTP/2: GOAWAY ends the client's connection cleanly.
    let ended = tokio::time::timeout(Duration::from_secs(5), h2_conn).await;
    assert!(
        matches!(ended, Ok(Ok(Ok(())))),
        "the HTTP/2 connection ended with GOAWAY: {ended:?}"
    );
    let ended = tokio::time::timeout(Duration::from_secs(5), h1_conn).await;
    assert!(matches!(ended, Ok(Ok(Ok(())))), "{ended:?}");
}

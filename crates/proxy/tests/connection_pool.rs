//! Connection pools over real sockets. Circuit breakers as Istio's
//! circuit-breaking task uses them: one connection and one pending request to
//! a slow backend give some 503 `UO` and some 200 under concurrent clients; a
//! TCP connection over `max_connections` is closed; a retry over
//! `max_retries` is not made. And how connections are reused: retired after
//! `max_connection_duration`, kept alive with TCP keep-alive probes; HTTP/2
//! connections carry at most `max_concurrent_streams` requests, and PINGs
//! find one whose peer went silent.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use oxmesh_proxy::process::Proxy;
use oxmesh_testkit::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

mod support;

/// What the backend saw: requests (in all, in flight now and at most, also
/// on any one connection) and connections opened.
#[derive(Default)]
struct Seen {
    requests: AtomicUsize,
    opened: AtomicUsize,
    busy: AtomicUsize,
    most_busy: AtomicUsize,
    most_busy_on_one: AtomicUsize,
}

/// HTTP/1.1 that answers `/status/503` with 503 at once, `/slow/503` with
/// 503 after `delay`, and anything else with 200 after `delay`.
async fn slow_backend(delay: Duration) -> (SocketAddr, Arc<Seen>) {
    slow_backend_speaking(delay, false).await
}

/// The same, over HTTP/2 (h2c) when `h2`.
async fn slow_backend_speaking(delay: Duration, h2: bool) -> (SocketAddr, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let seen = Arc::new(Seen::default());
    let counted = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let seen = counted.clone();
            tokio::spawn(async move {
                seen.opened.fetch_add(1, Ordering::SeqCst);
                let on_this = Arc::new(AtomicUsize::new(0));
                let service = hyper::service::service_fn(|req: hyper::Request<_>| {
                    let seen = seen.clone();
                    let on_this = on_this.clone();
                    async move {
                        seen.requests.fetch_add(1, Ordering::SeqCst);
                        let now = seen.busy.fetch_add(1, Ordering::SeqCst) + 1;
                        seen.most_busy.fetch_max(now, Ordering::SeqCst);
                        let here = on_this.fetch_add(1, Ordering::SeqCst) + 1;
                        seen.most_busy_on_one.fetch_max(here, Ordering::SeqCst);
                        let status = match req.uri().path() {
                            "/status/503" => 503,
                            "/slow/503" => {
                                tokio::time::sleep(delay).await;
                                503
                            }
                            _ => {
                                tokio::time::sleep(delay).await;
                                200
                            }
                        };
                        seen.busy.fetch_sub(1, Ordering::SeqCst);
                        on_this.fetch_sub(1, Ordering::SeqCst);
                        let mut response =
                            hyper::Response::new(http_body_util::Full::new(bytes::Bytes::new()));
                        *response.status_mut() =
                            http::StatusCode::from_u16(status).expect("status");
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                if h2 {
                    let _ = hyper::server::conn::http2::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(io, service)
                    .await;
                } else {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                }
            });
        }
    });
    (address, seen)
}

/// Cluster `web` with these thresholds (YAML flow mapping fields) and HTTP
/// protocol options, and a route that retries 503 twice.
fn http_proxy(dir: &TempDir, backend: SocketAddr, thresholds: &str, options: &str) -> Proxy {
    let listener = support::http_listener("web", "", "").replace(
        "route: {cluster: web}",
        "route: {cluster: web, retry_policy: {retry_on: retriable-status-codes, num_retries: 2, retriable_status_codes: [503]}}",
    );
    let cluster = format!(
        "{}    circuit_breakers: {{thresholds: [{{{thresholds}}}]}}\n{options}",
        support::static_cluster("web", &[backend], "ROUND_ROBIN")
    );
    support::start(
        dir,
        &support::bootstrap(&listener, &cluster),
        support::workload("foo", "sleep"),
    )
}

const ONE_REQUEST_PER_CONNECTION: &str = "    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        common_http_protocol_options: {max_requests_per_connection: 1}\n        explicit_http_config: {http_protocol_options: {}}\n";

/// HTTP/2 upstream with these `http2_protocol_options` (YAML flow fields).
fn http2_options(fields: &str) -> String {
    format!(
        "    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        explicit_http_config: {{http2_protocol_options: {{{fields}}}}}\n"
    )
}

/// `n` clients at once, each on its own connection; their statuses.
async fn concurrent_gets(address: SocketAddr, n: usize) -> Vec<u16> {
    let clients: Vec<_> = (0..n)
        .map(|_| tokio::spawn(async move { support::get(address, "/get", &[]).await.0 }))
        .collect();
    let mut statuses = Vec::new();
    for client in clients {
        statuses.push(client.await.expect("client").as_u16());
    }
    statuses
}

fn metric(proxy: &Proxy, name: &str) -> u64 {
    let text = proxy.ctx.metrics.encode();
    text.lines()
        .find(|l| l.starts_with(name) && l.contains("cluster_name=\"web\""))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn one_connection_and_one_pending_request_overflow_the_rest_with_uo() {
    let dir = TempDir::new("breaker-http");
    let (backend, seen) = slow_backend(Duration::from_millis(300)).await;
    let proxy = http_proxy(
        &dir,
        backend,
        "max_connections: 1, max_pending_requests: 1",
        ONE_REQUEST_PER_CONNECTION,
    );
    let address = proxy.listeners.bound("web")[0];
    let clients: Vec<_> = (0..6)
        .map(|_| tokio::spawn(async move { support::get(address, "/get", &[]).await }))
        .collect();
    let mut ok = 0;
    let mut overflowed = 0;
    for client in clients {
        let (status, headers, body) = client.await.expect("client");
        match status.as_u16() {
            200 => ok += 1,
            503 => {
                assert_eq!(headers["x-envoy-overloaded"], "true");
                assert!(body.ends_with("reset reason: overflow"), "{body}");
                overflowed += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(ok >= 1, "some requests get through");
    assert!(overflowed >= 3, "{overflowed} of 6 overflowed");
    assert_eq!(ok + overflowed, 6);
    assert_eq!(
        seen.most_busy.load(Ordering::SeqCst),
        1,
        "one request at a time over the one connection"
    );
    // Refused requests never reached the backend (nor were retried).
    assert_eq!(seen.requests.load(Ordering::SeqCst), ok);
    assert_eq!(
        metric(&proxy, "envoy_cluster_upstream_rq_pending_overflow"),
        overflowed as u64
    );
    // One at a time, everything gets through again.
    for _ in 0..3 {
        assert_eq!(support::get(address, "/get", &[]).await.0, 200);
    }
}

#[tokio::test]
async fn a_pending_request_waits_for_the_connection_and_is_served() {
    let dir = TempDir::new("breaker-pending");
    let (backend, seen) = slow_backend(Duration::from_millis(200)).await;
    let proxy = http_proxy(
        &dir,
        backend,
        "max_connections: 1, max_pending_requests: 10",
        "",
    );
    let address = proxy.listeners.bound("web")[0];
    let clients: Vec<_> = (0..4)
        .map(|_| tokio::spawn(async move { support::get(address, "/get", &[]).await.0 }))
        .collect();
    for client in clients {
        assert_eq!(client.await.expect("client"), 200);
    }
    // Served one after another over the one connection.
    assert_eq!(seen.most_busy.load(Ordering::SeqCst), 1);
    assert_eq!(seen.opened.load(Ordering::SeqCst), 1);
    assert_eq!(seen.requests.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn max_requests_bounds_requests_in_flight() {
    let dir = TempDir::new("breaker-requests");
    // Long enough that all five are in flight together.
    let (backend, seen) = slow_backend(Duration::from_secs(1)).await;
    let proxy = http_proxy(&dir, backend, "max_requests: 2", "");
    let address = proxy.listeners.bound("web")[0];
    let clients: Vec<_> = (0..5)
        .map(|_| tokio::spawn(async move { support::get(address, "/get", &[]).await.0 }))
        .collect();
    let mut statuses = Vec::new();
    for client in clients {
        statuses.push(client.await.expect("client").as_u16());
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 200, 503, 503, 503]);
    assert_eq!(seen.requests.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_retry_over_max_retries_is_not_made_and_the_answer_stands() {
    let dir = TempDir::new("breaker-retries");
    let (backend, seen) = slow_backend(Duration::ZERO).await;
    let proxy = http_proxy(&dir, backend, "max_retries: 0", "");
    let address = proxy.listeners.bound("web")[0];
    let (status, headers, _) = support::get(address, "/status/503", &[]).await;
    assert_eq!(status, 503);
    assert!(
        headers.get("x-envoy-overloaded").is_none(),
        "the upstream's own 503"
    );
    assert_eq!(seen.requests.load(Ordering::SeqCst), 1, "no retry");
    assert_eq!(
        metric(&proxy, "envoy_cluster_upstream_rq_retry_overflow"),
        1
    );

    // With room for retries, the route's two are made.
    let dir = TempDir::new("breaker-retries-room");
    let (backend, seen) = slow_backend(Duration::ZERO).await;
    let proxy = http_proxy(&dir, backend, "max_retries: 5", "");
    let address = proxy.listeners.bound("web")[0];
    assert_eq!(support::get(address, "/status/503", &[]).await.0, 503);
    assert_eq!(seen.requests.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_connection_past_its_max_duration_takes_no_more_requests() {
    let dir = TempDir::new("pool-duration");
    let (backend, seen) = slow_backend(Duration::ZERO).await;
    let options = "    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        common_http_protocol_options: {max_connection_duration: 1s}\n        explicit_http_config: {http_protocol_options: {}}\n";
    let proxy = http_proxy(&dir, backend, "max_connections: 100", options);
    let address = proxy.listeners.bound("web")[0];
    assert_eq!(support::get(address, "/get", &[]).await.0, 200);
    assert_eq!(support::get(address, "/get", &[]).await.0, 200);
    assert_eq!(seen.opened.load(Ordering::SeqCst), 1, "reused while young");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(support::get(address, "/get", &[]).await.0, 200);
    assert_eq!(
        seen.opened.load(Ordering::SeqCst),
        2,
        "a new one once retired"
    );
}

#[tokio::test]
async fn http2_streams_over_max_concurrent_streams_open_another_connection() {
    let dir = TempDir::new("pool-h2-streams");
    // Slow enough that all six are in flight together.
    let (backend, seen) = slow_backend_speaking(Duration::from_secs(1), true).await;
    let options = http2_options("max_concurrent_streams: 2");
    let proxy = http_proxy(&dir, backend, "max_connections: 100", &options);
    let address = proxy.listeners.bound("web")[0];
    assert_eq!(concurrent_gets(address, 6).await, [200; 6]);
    assert!(seen.most_busy_on_one.load(Ordering::SeqCst) <= 2);
    assert_eq!(
        seen.most_busy.load(Ordering::SeqCst),
        6,
        "none waited: full connections were joined by new ones"
    );
    assert!(seen.opened.load(Ordering::SeqCst) >= 3);
}

#[tokio::test]
async fn at_the_connection_limit_an_http2_request_waits_for_a_stream() {
    let dir = TempDir::new("pool-h2-wait");
    let (backend, seen) = slow_backend_speaking(Duration::from_millis(100), true).await;
    let options = http2_options("max_concurrent_streams: 1");
    let proxy = http_proxy(
        &dir,
        backend,
        "max_connections: 1, max_pending_requests: 100",
        &options,
    );
    let address = proxy.listeners.bound("web")[0];
    let served = tokio::time::timeout(Duration::from_secs(10), concurrent_gets(address, 4))
        .await
        .expect("every waiting request is handed a stream");
    assert_eq!(served, [200; 4]);
    assert_eq!(seen.most_busy_on_one.load(Ordering::SeqCst), 1);
    assert_eq!(seen.requests.load(Ordering::SeqCst), 4);
    // One worker, one connection: the rest waited for its stream.
    assert_eq!(seen.opened.load(Ordering::SeqCst), 1);
    assert!(metric(&proxy, "envoy_cluster_upstream_cx_overflow") >= 1);
}

/// A TCP relay that can stop relaying: the connection stays open but
/// nothing crosses it, as when a peer's host vanishes. It reports when the
/// client's side closes.
async fn freezable_relay(
    to: SocketAddr,
) -> (
    SocketAddr,
    Arc<std::sync::atomic::AtomicBool>,
    tokio::sync::mpsc::Receiver<()>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let frozen = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (closed_tx, closed_rx) = tokio::sync::mpsc::channel(8);
    let flag = frozen.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let (frozen, closed) = (flag.clone(), closed_tx.clone());
            tokio::spawn(async move {
                let Ok(mut server) = TcpStream::connect(to).await else {
                    return;
                };
                let mut up = [0u8; 4096];
                let mut down = [0u8; 4096];
                loop {
                    tokio::select! {
                        n = client.read(&mut up) => match n {
                            Ok(0) | Err(_) => break,
                            Ok(n) if !frozen.load(Ordering::SeqCst) => {
                                if server.write_all(&up[..n]).await.is_err() { break; }
                            }
                            Ok(_) => {}
                        },
                        n = server.read(&mut down) => match n {
                            Ok(0) | Err(_) => return,
                            Ok(n) if !frozen.load(Ordering::SeqCst) => {
                                if client.write_all(&down[..n]).await.is_err() { break; }
                            }
                            Ok(_) => {}
                        },
                    }
                }
                let _ = closed.send(()).await;
            });
        }
    });
    (address, frozen, closed_rx)
}

#[tokio::test]
async fn http2_pings_close_a_connection_whose_peer_went_silent() {
    let dir = TempDir::new("pool-h2-ping");
    let (backend, _) = slow_backend_speaking(Duration::ZERO, true).await;
    let (relay, frozen, mut closed) = freezable_relay(backend).await;
    let options = http2_options("connection_keepalive: {interval: 0.3s, timeout: 2s}");
    let proxy = http_proxy(&dir, relay, "max_connections: 100", &options);
    let address = proxy.listeners.bound("web")[0];
    assert_eq!(support::get(address, "/get", &[]).await.0, 200);
    // Answered PINGs keep the idle connection open.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(closed.try_recv().is_err(), "closed while the peer answered");
    frozen.store(true, Ordering::SeqCst);
    tokio::time::timeout(Duration::from_secs(10), closed.recv())
        .await
        .expect("the silent connection is closed (the pool's idle timeout is an hour)");
    // The next request gets a new connection.
    frozen.store(false, Ordering::SeqCst);
    assert_eq!(support::get(address, "/get", &[]).await.0, 200);
}

#[tokio::test]
async fn upstream_connections_carry_the_clusters_keepalive() {
    let dir = TempDir::new("pool-keepalive");
    let (backend, _) = slow_backend(Duration::ZERO).await;
    let options = "    upstream_connection_options: {tcp_keepalive: {keepalive_time: 77, keepalive_interval: 5, keepalive_probes: 3}}\n";
    let proxy = http_proxy(&dir, backend, "max_connections: 100", options);
    let address = proxy.listeners.bound("web")[0];
    assert_eq!(support::get(address, "/get", &[]).await.0, 200);
    // The pooled connection's keep-alive timer, as the kernel reports it.
    let out = std::process::Command::new("ss")
        .args(["-tnoH", "state", "established"])
        .arg(format!("( dport = :{} )", backend.port()))
        .output()
        .expect("ss (iproute2) runs");
    let sockets = String::from_utf8_lossy(&out.stdout);
    assert!(
        sockets.contains("timer:(keepalive,1min1") || sockets.contains("timer:(keepalive,1min16"),
        "no keep-alive timer of 77 s on the upstream socket:\n{sockets}"
    );
}

#[tokio::test]
async fn a_retry_is_not_refused_by_its_own_first_attempt() {
    // One request in flight at most: the retry must not count the attempt
    // it replaces, so the upstream's own 503 comes back, not UO.
    let dir = TempDir::new("breaker-retry-requests");
    let (backend, seen) = slow_backend(Duration::ZERO).await;
    let proxy = http_proxy(&dir, backend, "max_requests: 1, max_connections: 1", "");
    let address = proxy.listeners.bound("web")[0];
    let (status, headers, _) = support::get(address, "/status/503", &[]).await;
    assert_eq!(status, 503);
    assert!(headers.get("x-envoy-overloaded").is_none());
    assert_eq!(
        seen.requests.load(Ordering::SeqCst),
        3,
        "the route's two retries"
    );
}

#[tokio::test]
async fn max_retries_counts_retries_in_flight() {
    // One retry at a time. The first client's retry is in flight (its
    // back-off long over) when the second client's first attempt fails, so
    // the second gets its first answer; the first retries twice.
    let dir = TempDir::new("breaker-retries-in-flight");
    let (backend, seen) = slow_backend(Duration::from_millis(500)).await;
    let proxy = http_proxy(&dir, backend, "max_retries: 1", "");
    let address = proxy.listeners.bound("web")[0];
    let first = tokio::spawn(async move { support::get(address, "/slow/503", &[]).await.0 });
    tokio::time::sleep(Duration::from_millis(250)).await;
    let second = tokio::spawn(async move { support::get(address, "/slow/503", &[]).await.0 });
    assert_eq!(second.await.expect("second"), 503);
    assert_eq!(first.await.expect("first"), 503);
    assert_eq!(seen.requests.load(Ordering::SeqCst), 4, "3 + 1 attempts");
    assert_eq!(
        metric(&proxy, "envoy_cluster_upstream_rq_retry_overflow"),
        1
    );
}

/// Echoes what arrives; counts the connections it accepted.
async fn tcp_echo() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    (address, accepted)
}

async fn echoes(stream: &mut TcpStream) -> bool {
    if stream.write_all(b"ping").await.is_err() {
        return false;
    }
    let mut buf = [0u8; 4];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut buf)).await,
        Ok(Ok(_))
    ) && &buf == b"ping"
}

#[tokio::test]
async fn a_tcp_connection_over_max_connections_is_closed() {
    let dir = TempDir::new("breaker-tcp");
    let (echo, accepted) = tcp_echo().await;
    let listener = "  - name: tcp\n    address: {socket_address: {address: 127.0.0.1, port_value: 0}}\n    filter_chains:\n    - filters:\n      - name: envoy.filters.network.tcp_proxy\n        typed_config:\n          \"@type\": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy\n          stat_prefix: echo\n          cluster: web\n";
    let cluster = format!(
        "{}    circuit_breakers: {{thresholds: [{{max_connections: 1}}]}}\n",
        support::static_cluster("web", &[echo], "ROUND_ROBIN")
    );
    let proxy = support::start(
        &dir,
        &support::bootstrap(listener, &cluster),
        support::workload("foo", "sleep"),
    );
    let address = proxy.listeners.bound("tcp")[0];
    let mut first = TcpStream::connect(address).await.expect("connect");
    assert!(echoes(&mut first).await);
    let mut second = TcpStream::connect(address).await.expect("connect");
    assert!(!echoes(&mut second).await, "over the limit: closed");
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    assert_eq!(metric(&proxy, "envoy_cluster_upstream_cx_overflow"), 1);
    // The first one closing makes room.
    drop(first);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let mut third = TcpStream::connect(address).await.expect("connect");
        if echoes(&mut third).await {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "room never came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

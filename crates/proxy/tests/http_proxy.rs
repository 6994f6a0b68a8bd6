//! The HTTP proxy in-process, configured from a bootstrap file, between real
//! sockets on loopback: routing, weights, retries, response flags, bad input,
//! upgrades, and connections returning to baseline after a storm.

mod support;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use oxmesh_proxy::process::Proxy;
use oxmesh_testkit::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A backend app: answers `<name> <path>` (or 503, if it is "failing"), counts
/// what it served.
struct Backend {
    address: SocketAddr,
    served: Arc<AtomicUsize>,
}

async fn backend(name: &'static str) -> Backend {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let served = Arc::new(AtomicUsize::new(0));
    let counter = served.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let counter = counter.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    counter.fetch_add(1, Ordering::Relaxed);
                    answer(name, req)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    Backend { address, served }
}

async fn answer(
    name: &'static str,
    mut req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_owned();
    if path == "/body" {
        // What arrived, however it was framed.
        let body = req.into_body().collect().await.map(|b| b.to_bytes());
        return Ok(Response::new(Full::new(body.unwrap_or_default())));
    }
    let mut response = Response::new(Full::new(Bytes::from(format!("{name} {path}"))));
    match path.as_str() {
        _ if name == "failing" => *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE,
        "/ws" => {
            let upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(upgraded) = upgrade.await {
                    let mut io = TokioIo::new(upgraded);
                    let mut buf = [0u8; 64];
                    while let Ok(n) = io.read(&mut buf).await {
                        if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            });
            *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            response
                .headers_mut()
                .insert("connection", "upgrade".parse().expect("value"));
            response
                .headers_mut()
                .insert("upgrade", "websocket".parse().expect("value"));
        }
        _ => {}
    }
    Ok(response)
}

/// A static cluster over `endpoints`.
fn cluster(name: &str, endpoints: &[SocketAddr]) -> String {
    balanced_cluster(name, endpoints, "ROUND_ROBIN")
}

fn balanced_cluster(name: &str, endpoints: &[SocketAddr], lb_policy: &str) -> String {
    support::static_cluster(name, endpoints, lb_policy)
}

/// A proxy whose listener `front` routes by path prefix, with `clusters`.
async fn proxy(dir: &TempDir, routes: &str, clusters: &[String]) -> (Proxy, SocketAddr) {
    let text = format!(
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
          request_headers_timeout: 0.3s
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
          route_config:
            name: front
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
{routes}
  clusters:
{}
"#,
        clusters.concat()
    );
    let proxy = support::start(dir, &text, support::workload("default", "client"));
    let address = proxy.listeners.bound("front")[0];
    (proxy, address)
}

async fn get(proxy: SocketAddr, path: &str) -> (StatusCode, String) {
    let (status, _, body) = get_with(proxy, path, &[]).await;
    (status, body)
}

async fn get_with(
    proxy: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, http::HeaderMap, String) {
    let stream = TcpStream::connect(proxy).await.expect("connect");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(connection);
    let mut request = Request::get(path).header("host", "svc");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Full::new(Bytes::new())).expect("request");
    let response = sender.send_request(request).await.expect("response");
    let status = response.status();
    let head = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, head, String::from_utf8_lossy(&body).into_owned())
}

const PREFIX_ROUTES: &str = r#"              - match: {prefix: /weighted}
                route:
                  weighted_clusters:
                    clusters: [{name: a, weight: 80}, {name: b, weight: 20}]
              - match: {prefix: /retry}
                route:
                  cluster: flaky
                  prefix_rewrite: /rewritten
                  retry_policy: {retry_on: retriable-status-codes, num_retries: 2, retriable_status_codes: [503]}
              - match: {prefix: /missing-cluster}
                route: {cluster: nowhere}
              - match: {prefix: /refused}
                route: {cluster: closed}
              - match: {prefix: /}
                route: {cluster: a}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_weights_and_response_flags() {
    let dir = TempDir::new("http-proxy-routes");
    let (a, b) = (backend("a").await, backend("b").await);
    let failing = backend("failing").await;
    let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let closed_address = closed.local_addr().expect("address");
    drop(closed);
    let (proxy, address) = proxy(
        &dir,
        PREFIX_ROUTES,
        &[
            cluster("a", &[a.address]),
            cluster("b", &[b.address]),
            // The first endpoint always fails; a retry must go to the other.
            cluster("flaky", &[failing.address, a.address]),
            cluster("closed", &[closed_address]),
        ],
    )
    .await;

    assert_eq!(
        get(address, "/x").await,
        (StatusCode::OK, "a /x".to_owned())
    );

    let mut seen: HashMap<String, usize> = HashMap::new();
    for _ in 0..1000 {
        let (_, body) = get(address, "/weighted").await;
        let backend = body.split(' ').next().unwrap_or_default().to_owned();
        *seen.entry(backend).or_default() += 1;
    }
    let share_a = seen.get("a").copied().unwrap_or(0);
    assert!((740..=860).contains(&share_a), "80/20 split gave {seen:?}");

    // The retry lands on the healthy endpoint: the client never sees the 503.
    for _ in 0..20 {
        assert_eq!(
            get(address, "/retry/me").await,
            (StatusCode::OK, "a /rewritten/me".to_owned())
        );
    }
    assert!(
        failing.served.load(Ordering::Relaxed) > 0,
        "the failing endpoint was tried"
    );

    assert_eq!(
        get(address, "/missing-cluster").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        get(address, "/refused").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let metrics = proxy.ctx.metrics.encode();
    for flag in ["NC", "UF"] {
        assert!(
            metrics.contains(&format!("response_flags=\"{flag}\"")),
            "no {flag} in:\n{metrics}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_exhausted_are_flagged() {
    let dir = TempDir::new("http-proxy-urx");
    let failing = backend("failing").await;
    let routes = r#"              - match: {prefix: /}
                route:
                  cluster: flaky
                  retry_policy: {retry_on: retriable-status-codes, num_retries: 2, retriable_status_codes: [503]}
"#;
    let (proxy, address) = proxy(&dir, routes, &[cluster("flaky", &[failing.address])]).await;
    assert_eq!(get(address, "/").await.0, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        failing.served.load(Ordering::Relaxed),
        3,
        "one try and two retries"
    );
    let metrics = proxy.ctx.metrics.encode();
    assert!(metrics.contains("response_flags=\"URX\""), "{metrics}");
}

const ALL_TO_A: &str = "              - match: {prefix: /}\n                route: {cluster: a}\n";

/// Reads one HTTP/1.1 response with a content-length off `stream`.
async fn response(stream: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(str::to_owned)
                })
                .and_then(|v| v.trim().parse::<usize>().ok());
            if length.is_some_and(|n| body.len() >= n) || head.starts_with("HTTP/1.1 100") {
                return text;
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(3), stream.read(&mut buf))
            .await
            .expect("a response in time")
            .expect("read");
        assert!(n > 0, "closed mid-response: {text:?}");
        got.extend_from_slice(&buf[..n]);
    }
}

/// HTTP/1.1 as clients use it: several requests on one kept-alive connection,
/// a chunked upload, and `Expect: 100-continue` answered before the body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_keep_alive_chunked_and_100_continue() {
    let dir = TempDir::new("http-proxy-h1");
    let a = backend("a").await;
    let (proxy, address) = proxy(&dir, ALL_TO_A, &[cluster("a", &[a.address])]).await;
    let mut conn = TcpStream::connect(address).await.expect("connect");

    for path in ["/one", "/two", "/three"] {
        let request = format!("GET {path} HTTP/1.1\r\nhost: svc\r\n\r\n");
        conn.write_all(request.as_bytes()).await.expect("write");
        let reply = response(&mut conn).await;
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply:?}");
        assert!(reply.ends_with(&format!("a {path}")), "{reply:?}");
    }
    assert_eq!(
        proxy.ctx.active_connections(),
        1,
        "one connection carried all three"
    );

    conn.write_all(
        b"POST /body HTTP/1.1\r\nhost: svc\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    )
    .await
    .expect("write");
    let reply = response(&mut conn).await;
    assert!(reply.ends_with("\r\n\r\nhello world"), "{reply:?}");

    conn.write_all(
        b"POST /body HTTP/1.1\r\nhost: svc\r\ncontent-length: 8\r\nexpect: 100-continue\r\n\r\n",
    )
    .await
    .expect("write");
    let interim = response(&mut conn).await;
    assert!(interim.starts_with("HTTP/1.1 100 Continue"), "{interim:?}");
    conn.write_all(b"continue").await.expect("write");
    let reply = response(&mut conn).await;
    assert!(
        reply.starts_with("HTTP/1.1 200") && reply.ends_with("\r\n\r\ncontinue"),
        "{reply:?}"
    );
}

/// Sends raw bytes, returns what comes back until the proxy closes or 3 s pass.
async fn raw(address: SocketAddr, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(address).await.expect("connect");
    stream.write_all(bytes).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_clients_get_errors_and_leave_nothing_behind() {
    let dir = TempDir::new("http-proxy-bad");
    let a = backend("a").await;
    let (proxy, address) = proxy(&dir, ALL_TO_A, &[cluster("a", &[a.address])]).await;

    let reply = raw(address, b"GARBAGE\r\n\r\n").await;
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply:?}");

    let big = format!(
        "GET / HTTP/1.1\r\nhost: svc\r\nx-big: {}\r\n\r\n",
        "x".repeat(70 * 1024)
    );
    let reply = raw(address, big.as_bytes()).await;
    assert!(reply.starts_with("HTTP/1.1 431"), "{reply:?}");

    // Slowloris: headers that never finish are cut off (timeout 0.3 s here).
    let mut slow = Vec::new();
    for _ in 0..50 {
        let mut s = TcpStream::connect(address).await.expect("connect");
        s.write_all(b"GET / HTTP/1.1\r\nhost: svc\r\n")
            .await
            .expect("write");
        slow.push(s);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(proxy.ctx.active_connections() >= 50);
    for mut s in slow {
        let mut buf = [0u8; 256];
        let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf))
            .await
            .expect("the proxy closes a slow client")
            .unwrap_or(0);
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(n == 0 || text.starts_with("HTTP/1.1 408"), "{text:?}");
    }

    // After the storm the proxy holds no downstream connection.
    for _ in 0..200 {
        let _ = get(address, "/").await;
    }
    let mut waited = 0;
    while proxy.ctx.active_connections() > 0 && waited < 50 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        waited += 1;
    }
    assert_eq!(proxy.ctx.active_connections(), 0);
    assert_eq!(get(address, "/").await.0, StatusCode::OK, "still serving");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_are_spliced() {
    let dir = TempDir::new("http-proxy-upgrade");
    let a = backend("a").await;
    let (_proxy, address) = proxy(&dir, ALL_TO_A, &[cluster("a", &[a.address])]).await;
    upgrade_echoes(address, b"ping frames").await;
}

/// A WebSocket upgrade through the proxy gets 101, then `payload` echoed
/// by the backend over the upgraded connection, which stays open.
async fn upgrade_echoes(address: SocketAddr, payload: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(address).await.expect("connect");
    stream
        .write_all(
            b"GET /ws HTTP/1.1\r\nhost: svc\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n",
        )
        .await
        .expect("write");
    let mut head = vec![0u8; 1024];
    let n = stream.read(&mut head).await.expect("read");
    let head = String::from_utf8_lossy(&head[..n]);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    stream.write_all(payload).await.expect("write");
    let mut echo = vec![0u8; payload.len()];
    tokio::time::timeout(Duration::from_secs(3), stream.read_exact(&mut echo))
        .await
        .expect("echo in time")
        .expect("echo");
    assert_eq!(echo, payload);
    stream
}

/// A cluster upgraded to HTTP/2 still carries a WebSocket: the upgrade goes
/// upstream as HTTP/1.1 (the backend here speaks nothing else).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_reach_an_http2_cluster_as_http1() {
    let dir = TempDir::new("http-proxy-upgrade-h2");
    let a = backend("a").await;
    let h2 = format!(
        "{}    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        explicit_http_config: {{http2_protocol_options: {{}}}}\n",
        cluster("a", &[a.address])
    );
    let (_proxy, address) = proxy(&dir, ALL_TO_A, &[h2]).await;
    upgrade_echoes(address, b"over an h2 cluster").await;
}

/// An upgraded connection counts toward `max_connections` until it closes,
/// as in Envoy: with a limit of one, a request while a WebSocket is open
/// goes over the limit (a worker's first connection may) and is counted as
/// an overflow; once the WebSocket closes, its place is given back. (One
/// thread, as a proxy worker is: pools are per thread.)
#[tokio::test]
async fn an_upgraded_connection_counts_until_it_closes() {
    let dir = TempDir::new("http-proxy-upgrade-count");
    let a = backend("a").await;
    let limited = format!(
        "{}    circuit_breakers: {{thresholds: [{{max_connections: 1}}]}}\n",
        cluster("a", &[a.address])
    );
    let (proxy, address) = proxy(&dir, ALL_TO_A, &[limited]).await;
    let open = || {
        proxy
            .ctx
            .snapshot()
            .cluster_named("a")
            .map(|c| c.load.open(oxmesh_proxy::breaker::Resource::Connection))
    };
    let overflows = || {
        proxy
            .ctx
            .metrics
            .encode()
            .lines()
            .find(|l| l.starts_with("envoy_cluster_upstream_cx_overflow") && l.contains("\"a\""))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let websocket = upgrade_echoes(address, b"held open").await;
    assert_eq!(open(), Some(1), "the WebSocket's connection");
    assert_eq!(get(address, "/").await.0, StatusCode::OK);
    assert!(overflows() >= 1, "the request met the WebSocket's place");
    drop(websocket);
    let mut waited = 0;
    while open() != Some(1) && waited < 100 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        waited += 1;
    }
    assert_eq!(open(), Some(1), "only the request's pooled connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hashing_keeps_users_on_one_endpoint() {
    let dir = TempDir::new("http-proxy-hash");
    let backends = [backend("a").await, backend("b").await, backend("c").await];
    let addresses: Vec<SocketAddr> = backends.iter().map(|b| b.address).collect();
    let routes = r#"              - match: {prefix: /ring}
                route:
                  cluster: ring
                  hash_policy: [{header: {header_name: x-user}}]
              - match: {prefix: /maglev}
                route:
                  cluster: maglev
                  hash_policy: [{cookie: {name: session, ttl: 60s, path: /}}]
"#;
    let (_proxy, address) = proxy(
        &dir,
        routes,
        &[
            balanced_cluster("ring", &addresses, "RING_HASH"),
            balanced_cluster("maglev", &addresses, "MAGLEV"),
        ],
    )
    .await;
    let backend_of = |body: &str| body.split(' ').next().unwrap_or_default().to_owned();
    let mut used = std::collections::BTreeSet::new();
    for user in 0..12 {
        let user = format!("user-{user}");
        let (_, _, first) = get_with(address, "/ring", &[("x-user", &user)]).await;
        for _ in 0..10 {
            let (_, _, again) = get_with(address, "/ring", &[("x-user", &user)]).await;
            assert_eq!(backend_of(&again), backend_of(&first), "{user} moved");
        }
        used.insert(backend_of(&first));
    }
    assert!(used.len() > 1, "12 users all hashed to {used:?}");

    // A cookie policy with a TTL gives a new client its cookie; with it, the
    // client sticks to one endpoint.
    let (_, head, first) = get_with(address, "/maglev", &[]).await;
    let set = head
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .expect("a session cookie is set");
    assert!(
        set.starts_with("session=") && set.contains("Max-Age=60"),
        "{set}"
    );
    let cookie = set.split(';').next().unwrap_or_default().to_owned();
    for _ in 0..10 {
        let (_, head, again) = get_with(address, "/maglev", &[("cookie", &cookie)]).await;
        assert_eq!(backend_of(&again), backend_of(&first));
        assert!(head.get("set-cookie").is_none());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_abort_and_delay_as_routes_ask() {
    let dir = TempDir::new("http-proxy-fault");
    let a = backend("a").await;
    let routes = r#"              - match: {prefix: /abort}
                route: {cluster: a}
                typed_per_filter_config:
                  envoy.filters.http.fault:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
                    abort: {http_status: 418, percentage: {numerator: 100, denominator: HUNDRED}}
              - match: {prefix: /delay}
                route: {cluster: a}
                typed_per_filter_config:
                  envoy.filters.http.fault:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
                    delay: {fixed_delay: 0.05s, percentage: {numerator: 100, denominator: HUNDRED}}
              - match: {prefix: /never}
                route: {cluster: a}
                typed_per_filter_config:
                  envoy.filters.http.fault:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
                    abort: {http_status: 500, percentage: {numerator: 0}}
"#;
    let (proxy, address) = proxy(&dir, routes, &[cluster("a", &[a.address])]).await;
    assert_eq!(get(address, "/abort").await.0, StatusCode::IM_A_TEAPOT);
    assert_eq!(
        a.served.load(Ordering::Relaxed),
        0,
        "an aborted request never leaves"
    );
    assert_eq!(
        get(address, "/delay").await,
        (StatusCode::OK, "a /delay".to_owned())
    );
    for _ in 0..20 {
        assert_eq!(
            get(address, "/never").await.0,
            StatusCode::OK,
            "a 0% fault never fires"
        );
    }
    let metrics = proxy.ctx.metrics.encode();
    for flag in ["FI", "DI"] {
        assert!(
            metrics.contains(&format!("response_flags=\"{flag}\"")),
            "no {flag}: {metrics}"
        );
    }
}

/// An upstream that promises 100 bytes, sends 7 and hangs up.
async fn resetting_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = stream.read(&mut buf).await;
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial")
                    .await;
            });
        }
    });
    address
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_reset_mid_body_reaches_the_client_and_nothing_else() {
    let dir = TempDir::new("http-proxy-reset");
    let a = backend("a").await;
    let broken = resetting_backend().await;
    let routes = "              - match: {prefix: /broken}\n                route: {cluster: broken}\n              - match: {prefix: /}\n                route: {cluster: a}\n";
    let (proxy, address) = proxy(
        &dir,
        routes,
        &[cluster("a", &[a.address]), cluster("broken", &[broken])],
    )
    .await;
    for _ in 0..10 {
        let stream = TcpStream::connect(address).await.expect("connect");
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(connection);
        let request = Request::get("/broken")
            .header("host", "svc")
            .body(Full::new(Bytes::new()))
            .expect("request");
        // The head may or may not be out when the upstream hangs up; either
        // way the client must see a broken exchange, never a complete body.
        if let Ok(response) = sender.send_request(request).await {
            assert!(
                response.into_body().collect().await.is_err(),
                "a truncated body must not look complete"
            );
        }
    }
    assert_eq!(
        get(address, "/fine").await.0,
        StatusCode::OK,
        "others unaffected"
    );
    let mut waited = 0;
    while proxy.ctx.active_connections() > 0 && waited < 100 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        waited += 1;
    }
    assert_eq!(
        proxy.ctx.active_connections(),
        0,
        "connections back to baseline"
    );
}

/// Outlier detection as Istio configures it (consecutive 5xx, half the
/// endpoints may be out): the failing endpoint is ejected after its third 5xx
/// in a row, and every request after that goes to the healthy one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_endpoint_is_ejected() {
    let dir = TempDir::new("http-proxy-outlier");
    let failing = backend("failing").await;
    let a = backend("a").await;
    let cluster = format!(
        "{}    outlier_detection: {{consecutive_5xx: 3, enforcing_consecutive_5xx: 100, enforcing_success_rate: 0, base_ejection_time: 30s, max_ejection_percent: 50}}\n    common_lb_config: {{healthy_panic_threshold: {{value: 0}}}}\n",
        cluster("pair", &[failing.address, a.address])
    );
    let routes = "              - match: {prefix: /}\n                route: {cluster: pair}\n";
    let (_proxy, address) = proxy(&dir, routes, &[cluster]).await;
    let mut statuses = Vec::new();
    for _ in 0..20 {
        statuses.push(get(address, "/").await.0);
    }
    assert_eq!(
        failing.served.load(Ordering::Relaxed),
        3,
        "ejected after three 5xx in a row: {statuses:?}"
    );
    assert!(
        statuses[10..].iter().all(|s| *s == StatusCode::OK),
        "{statuses:?}"
    );
    assert_eq!(a.served.load(Ordering::Relaxed), 17);
}

//! The app's probes and metrics through the proxy's 15020, as kubelet and
//! Prometheus reach them in an injected pod: real app servers (HTTP, HTTPS with
//! a self-signed certificate, TCP, gRPC health) on loopback, a running proxy,
//! and plain HTTP requests to its metrics port.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use oxmesh_proxy::app_metrics::AppMetrics;
use oxmesh_proxy::app_probe::AppProbers;
use oxmesh_proxy::process::{AdminPorts, Options, Proxy};
use oxmesh_testkit::TempDir;
use tokio::net::{TcpListener, TcpStream};

async fn listen() -> (TcpListener, u16) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    (listener, port)
}

/// A port nothing listens on (bound, then released).
async fn free_port() -> u16 {
    listen().await.1
}

/// The app's HTTP endpoints: healthy, sick, a redirect, its headers echoed, metrics.
async fn app(
    peer: SocketAddr,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, body) = match request.uri().path() {
        "/peer" => (StatusCode::OK, peer.ip().to_string()),
        "/ready" => (StatusCode::OK, "ok".to_owned()),
        "/sick" => (StatusCode::SERVICE_UNAVAILABLE, "database down".to_owned()),
        "/moved" => (StatusCode::FOUND, String::new()),
        "/headers" => {
            let probe = request
                .headers()
                .get("x-probe")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            let status = if probe == "from-the-pod-spec" {
                StatusCode::OK
            } else {
                StatusCode::BAD_REQUEST
            };
            (status, probe.to_owned())
        }
        "/metrics" => (
            StatusCode::OK,
            "# TYPE app_orders_total counter\napp_orders_total 7\n".to_owned(),
        ),
        _ => (StatusCode::NOT_FOUND, String::new()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    Ok(response)
}

async fn serve_http(listener: TcpListener) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let service = hyper::service::service_fn(move |request| app(peer, request));
        tokio::spawn(
            hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service),
        );
    }
}

async fn serve_https(listener: TcpListener) {
    let (tls, _) = oxmesh_testkit::tls::self_signed(&["web.local"]);
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            if let Ok(tls) = acceptor.accept(stream).await {
                let service = hyper::service::service_fn(move |request| app(peer, request));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            }
        });
    }
}

type GrpcBody =
    StreamBody<tokio_stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

/// gRPC health: the whole server SERVING, service `down` NOT_SERVING.
async fn health(request: Request<Incoming>) -> Result<Response<GrpcBody>, Infallible> {
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let service = body.get(7..).unwrap_or_default();
    let status: u8 = if service == b"down" { 2 } else { 1 };
    let message = Bytes::from(vec![0, 0, 0, 0, 2, 0x08, status]);
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    let frames = vec![Ok(Frame::data(message)), Ok(Frame::trailers(trailers))];
    let mut response = Response::new(StreamBody::new(tokio_stream::iter(frames)));
    response.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("application/grpc"),
    );
    Ok(response)
}

async fn serve_grpc(listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(
            hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), hyper::service::service_fn(health)),
        );
    }
}

async fn get(port: u16, path: &str) -> (StatusCode, String) {
    let stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(connection);
    let request = Request::get(path)
        .header("host", format!("10.1.2.3:{port}"))
        .header("user-agent", "kube-probe/1.33")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let response = sender.send_request(request).await.expect("response");
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_probes_and_prometheus_reach_the_app_through_the_proxy() {
    let (http, http_port) = listen().await;
    let (https, https_port) = listen().await;
    let (grpc, grpc_port) = listen().await;
    let (tcp, tcp_port) = listen().await;
    let closed = free_port().await;
    tokio::spawn(serve_http(http));
    tokio::spawn(serve_https(https));
    tokio::spawn(serve_grpc(grpc));
    // The TCP "app" only accepts.
    tokio::spawn(async move {
        loop {
            let _ = tcp.accept().await;
        }
    });
    let probers = serde_json::json!({
        "/app-health/web/readyz": {"httpGet": {"path": "/ready", "port": http_port}},
        "/app-health/peer/readyz": {"httpGet": {"path": "/peer", "port": http_port}},
        "/app-health/web/livez": {"httpGet": {"path": "/sick", "port": http_port}},
        "/app-health/web/startupz": {"httpGet": {"path": "/moved", "port": http_port}},
        "/app-health/headers/readyz": {"httpGet": {"path": "/headers", "port": http_port,
            "httpHeaders": [{"name": "X-Probe", "value": "from-the-pod-spec"}]}},
        "/app-health/secure/readyz": {"httpGet": {"path": "/ready", "port": https_port, "scheme": "HTTPS"}},
        "/app-health/tcp/readyz": {"tcpSocket": {"port": tcp_port}},
        "/app-health/tcp/livez": {"tcpSocket": {"port": closed}, "timeoutSeconds": 2},
        "/app-health/grpc/readyz": {"grpc": {"port": grpc_port}},
        "/app-health/grpc/livez": {"grpc": {"port": grpc_port, "service": "down"}},
    });
    let ip = "127.0.0.1".parse().expect("ip");
    let app_probes = AppProbers::parse(&probers.to_string(), ip).expect("probers");
    let metrics_json = format!(r#"{{"scrape":"true","port":"{http_port}","path":"/metrics"}}"#);
    let app_metrics = AppMetrics::parse(&metrics_json, ip).expect("annotations");

    let dir = TempDir::new("app-health");
    dir.write(
        "bootstrap.yaml",
        "static_resources: {listeners: [], clusters: []}\n",
    );
    let status_port = free_port().await;
    let options = Options {
        ports: Some(AdminPorts {
            admin: free_port().await,
            health: free_port().await,
            metrics: vec![free_port().await],
            status: Some(status_port),
        }),
        app_probes,
        app_metrics,
        ..support::options(&dir)
    };
    let _proxy = Proxy::start(
        options,
        support::workload("default", "web"),
        vec![tokio::runtime::Handle::current()],
    )
    .expect("proxy starts");
    // The ports are bound on the proxy's own runtime; wait until one answers.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", status_port))
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the status port never opened"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let expect = [
        ("/app-health/web/readyz", StatusCode::OK),
        ("/app-health/web/livez", StatusCode::SERVICE_UNAVAILABLE),
        ("/app-health/web/startupz", StatusCode::OK),
        ("/app-health/headers/readyz", StatusCode::OK),
        ("/app-health/secure/readyz", StatusCode::OK),
        ("/app-health/tcp/readyz", StatusCode::OK),
        ("/app-health/tcp/livez", StatusCode::INTERNAL_SERVER_ERROR),
        ("/app-health/grpc/readyz", StatusCode::OK),
        ("/app-health/grpc/livez", StatusCode::INTERNAL_SERVER_ERROR),
        ("/app-health/nobody/readyz", StatusCode::BAD_REQUEST),
    ];
    for (path, status) in expect {
        let (got, body) = get(status_port, path).await;
        assert_eq!(got, status, "{path}: {body}");
    }
    let (_, peer) = get(status_port, "/app-health/peer/readyz").await;
    assert_eq!(
        peer, "127.0.0.6",
        "probes leave from the address interception lets through"
    );
    let (_, sick) = get(status_port, "/app-health/web/livez").await;
    assert_eq!(sick, "database down", "the app's answer is passed on");

    let (status, metrics) = get(status_port, "/stats/prometheus").await;
    assert_eq!(status, StatusCode::OK);
    assert!(metrics.contains("app_orders_total 7"), "{metrics}");
    assert_eq!(
        metrics.matches("# EOF").count(),
        1,
        "one exposition, the app's inside it: {metrics}"
    );
    assert!(metrics.trim_end().ends_with("# EOF"), "{metrics}");
}

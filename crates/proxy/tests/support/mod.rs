//! What the proxy's in-process tests share: a workload, and a proxy started
//! from a bootstrap text on the test's runtime.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use oxmesh_identity::TrustDomain;
use oxmesh_proxy::process::{Drain, Options, Proxy, Source};
use oxmesh_proxy::workload::{Mode, Workload};
use oxmesh_testkit::TempDir;

/// A sidecar's workload `name` in `namespace`, with the service account of its
/// name, on 127.0.0.1.
pub fn workload(namespace: &str, name: &str) -> Workload {
    Workload {
        mode: Mode::Sidecar,
        pod_name: format!("{name}-7d4b9c8f6-x2x4b"),
        namespace: namespace.to_owned(),
        ips: vec!["127.0.0.1".parse().expect("ip")],
        service_account: name.to_owned(),
        workload_name: name.to_owned(),
        labels: Default::default(),
        cluster_id: "Kubernetes".into(),
        dns_domain: "cluster.local".into(),
        metadata: Default::default(),
    }
}

/// Options for a proxy configured by the bootstrap at `path`: no CA, no
/// admin ports, a one-second drain.
pub fn options(dir: &TempDir) -> Options {
    Options {
        source: Source::Bootstrap(dir.path("bootstrap.yaml")),
        ca: None,
        root_cert: None,
        control_plane_name: "istiod.istio-system.svc".into(),
        trust_domain: TrustDomain::cluster_local(),
        ports: None,
        drain: Drain {
            duration: Duration::from_secs(1),
            minimum: Duration::ZERO,
        },
        app_probes: Default::default(),
        app_metrics: None,
    }
}

/// Writes `bootstrap` into `dir` and starts a proxy from it on the current
/// runtime.
pub fn start(dir: &TempDir, bootstrap: &str, workload: Workload) -> Proxy {
    dir.write("bootstrap.yaml", bootstrap);
    Proxy::start(
        options(dir),
        workload,
        vec![tokio::runtime::Handle::current()],
    )
    .expect("proxy starts")
}

/// A static cluster `name` over `endpoints`, balanced by `lb_policy`, as
/// bootstrap YAML under `clusters:`.
pub fn static_cluster(name: &str, endpoints: &[SocketAddr], lb_policy: &str) -> String {
    let lb: Vec<String> = endpoints
        .iter()
        .map(|e| {
            format!(
                "{{endpoint: {{address: {{socket_address: {{address: '{}', port_value: {}}}}}}}}}",
                e.ip(),
                e.port()
            )
        })
        .collect();
    format!(
        "  - name: {name}\n    type: STATIC\n    connect_timeout: 1s\n    lb_policy: {lb_policy}\n    load_assignment:\n      cluster_name: {name}\n      endpoints: [{{lb_endpoints: [{}]}}]\n",
        lb.join(", ")
    )
}

/// A static cluster `name` over one endpoint whose upstream protocol is
/// explicit: HTTP/2 when `h2`, else HTTP/1.1.
pub fn http_cluster(name: &str, endpoint: SocketAddr, h2: bool) -> String {
    let protocol = if h2 {
        "explicit_http_config: {http2_protocol_options: {}}"
    } else {
        "explicit_http_config: {http_protocol_options: {}}"
    };
    format!(
        r#"  - name: {name}
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        {protocol}
    load_assignment:
      cluster_name: {name}
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: '{}', port_value: {}}}}}}}}}]}}]
"#,
        endpoint.ip(),
        endpoint.port()
    )
}

/// Answers with the request's path (a `:path: ...` line) and headers, one
/// `name: value` per line.
pub async fn header_backend() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    |req: hyper::Request<hyper::body::Incoming>| async move {
                        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
                        let lines: String = std::iter::once(format!(":path: {path}\n"))
                            .chain(
                                req.headers()
                                    .iter()
                                    .map(|(k, v)| format!("{k}: {}\n", v.to_str().unwrap_or("?"))),
                            )
                            .collect();
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from(lines)),
                        ))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    address
}

/// Echoes every byte it reads back on the same connection.
pub async fn tcp_echo() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    address
}

/// A GET of `path` (Host `httpbin.foo:8000`) on a new HTTP/1.1 connection to
/// `address`: status, headers and body.
pub async fn get(
    address: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (http::StatusCode, http::HeaderMap, String) {
    request(address, "GET", path, headers, "").await
}

/// A request (Host `httpbin.foo:8000`) on a new HTTP/1.1 connection to
/// `address`: status, headers and body.
pub async fn request(
    address: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &'static str,
) -> (http::StatusCode, http::HeaderMap, String) {
    use http_body_util::BodyExt;
    let stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("handshake");
    tokio::spawn(conn);
    let mut request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "httpbin.foo:8000");
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let body = http_body_util::Full::new(bytes::Bytes::from(body));
    let response = sender
        .send_request(request.body(body).expect("request"))
        .await
        .expect("response");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// Bootstrap YAML for a listener `name` on 127.0.0.1 whose connection
/// manager (stat prefix `inbound_0.0.0.0_8000`, plus `options`: more of its
/// fields, ten spaces in) runs `filters` (`http_filters` items, ten spaces in)
/// before the router, which sends every request to cluster `web`.
pub fn http_listener(name: &str, options: &str, filters: &str) -> String {
    format!(
        r#"  - name: {name}
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: inbound_0.0.0.0_8000
{options}          http_filters:
{filters}          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
          route_config:
            name: web
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes: [{{match: {{prefix: /}}, route: {{cluster: web}}}}]
"#
    )
}

/// A bootstrap of `listeners` and `clusters` (YAML list items).
pub fn bootstrap(listeners: &str, clusters: &str) -> String {
    format!("static_resources:\n  listeners:\n{listeners}  clusters:\n{clusters}")
}

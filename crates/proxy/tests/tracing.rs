//! Spans from a running proxy to real collectors: an OTLP/gRPC receiver
//! (HTTP/2, the collector's messages decoded) and a Zipkin v2 receiver, each
//! reached through a cluster of the proxy; the trace context the upstream
//! sees, the sampling mark in x-request-id, names, kinds, parents and tags.

mod support;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use oxmesh_testkit::TempDir;
use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// What a collector received: the body of each report.
type Reports = mpsc::UnboundedReceiver<Bytes>;

/// A collector on 127.0.0.1: gRPC over h2c (OTLP's `Export`, answered with
/// an empty response) when `grpc`, else HTTP/1.1 answering 202 (Zipkin).
async fn collector(grpc: bool) -> (SocketAddr, Reports) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let tx = tx.clone();
                    async move {
                        let path = req.uri().path().to_owned();
                        let body = req.into_body().collect().await.expect("body").to_bytes();
                        let _ = tx.send(body);
                        Ok::<_, Infallible>(answer(grpc, &path))
                    }
                });
                let io = TokioIo::new(stream);
                if grpc {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
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
    (address, rx)
}

fn answer(grpc: bool, path: &str) -> Response<Full<Bytes>> {
    if !grpc {
        let status = if path == "/api/v2/spans" {
            StatusCode::ACCEPTED
        } else {
            StatusCode::NOT_FOUND
        };
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = status;
        return response;
    }
    assert_eq!(
        path,
        "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
    );
    // An empty ExportTraceServiceResponse, its status in the headers.
    Response::builder()
        .header("content-type", "application/grpc")
        .header("grpc-status", "0")
        .body(Full::new(Bytes::from_static(&[0, 0, 0, 0, 0])))
        .expect("response")
}

/// A listener `name` in `direction` whose connection manager traces with
/// `tracing` (the HCM's `tracing` fields, twelve spaces in) and routes `/`
/// to cluster `web` under the decorator `web.foo:8000/*`.
fn listener(name: &str, direction: &str, tracing: &str) -> String {
    format!(
        r#"  - name: {name}
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    traffic_direction: {direction}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}
          tracing:
{tracing}          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
          route_config:
            name: web
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: /}}
                route: {{cluster: web}}
                decorator: {{operation: "web.foo:8000/*"}}
"#
    )
}

const OTEL_GRPC: &str = r#"            random_sampling: {value: 100}
            custom_tags:
            - {tag: istio.mesh_id, literal: {value: mesh1}}
            - {tag: team, request_header: {name: x-team, default_value: none}}
            provider:
              name: envoy.tracers.opentelemetry
              typed_config:
                "@type": type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig
                grpc_service: {envoy_grpc: {cluster_name: otel, authority: otel.observability.svc.cluster.local}}
                service_name: httpbin.foo
"#;

/// The backend's echo of the request's headers, by name.
fn echoed(body: &str) -> HashMap<String, String> {
    body.lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// The spans of reports that come within a few seconds, until `count`.
async fn otlp_spans(
    reports: &mut Reports,
    count: usize,
) -> Vec<(
    opentelemetry_proto::tonic::trace::v1::Span,
    HashMap<String, String>,
)> {
    let mut spans = Vec::new();
    while spans.len() < count {
        let body = tokio::time::timeout(Duration::from_secs(10), reports.recv())
            .await
            .expect("a report within 10 s")
            .expect("collector running");
        let request = ExportTraceServiceRequest::decode(&body[5..]).expect("an OTLP request");
        for resource in request.resource_spans {
            let attributes = strings(&resource.resource.expect("resource").attributes);
            assert_eq!(attributes["service.name"], "httpbin.foo");
            for scope in resource.scope_spans {
                for span in scope.spans {
                    let tags = strings(&span.attributes);
                    spans.push((span, tags));
                }
            }
        }
    }
    spans
}

fn strings(
    attributes: &[opentelemetry_proto::tonic::common::v1::KeyValue],
) -> HashMap<String, String> {
    attributes
        .iter()
        .filter_map(|kv| match kv.value.as_ref()?.value.as_ref()? {
            any_value::Value::StringValue(s) => Some((kv.key.clone(), s.clone())),
            _ => None,
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn outbound_requests_become_client_spans_sent_over_otlp_grpc() {
    let dir = TempDir::new("proxy-tracing-otlp");
    let backend = support::header_backend().await;
    let (otel, mut reports) = collector(true).await;
    let text = support::bootstrap(
        &listener("out", "OUTBOUND", OTEL_GRPC),
        &(support::static_cluster("web", &[backend], "ROUND_ROBIN")
            + &support::http_cluster("otel", otel, true)),
    );
    let proxy = support::start(&dir, &text, support::workload("foo", "httpbin"));
    let address = proxy.listeners.bound("out")[0];

    // A request with no trace starts one; the upstream sees our span as its
    // parent, the decision in x-request-id, and the route's operation.
    let (status, _, body) = support::get(address, "/a?x=1", &[("x-team", "blue")]).await;
    assert_eq!(status, StatusCode::OK);
    let seen = echoed(&body);
    let first_body = body.len();
    let traceparent = &seen["traceparent"];
    let fields: Vec<&str> = traceparent.split('-').collect();
    assert_eq!((fields[0], fields[3]), ("00", "01"), "{traceparent}");
    assert_eq!(seen["x-request-id"].as_bytes()[14], b'9', "marked sampled");
    assert_eq!(seen["x-envoy-decorator-operation"], "web.foo:8000/*");

    // A request that continues the app's trace.
    let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let (_, _, body) = support::get(address, "/b", &[("traceparent", parent)]).await;
    let continued = echoed(&body)["traceparent"].clone();
    assert!(continued.starts_with("00-0af7651916cd43dd8448eb211c80319c-"));
    assert!(!continued.contains("b7ad6b7169203331"), "a span of our own");

    let spans = otlp_spans(&mut reports, 2).await;
    let (first, tags) = spans
        .iter()
        .find(|(s, _)| hex(&s.span_id) == fields[2])
        .expect("the first request's span");
    assert_eq!(hex(&first.trace_id), fields[1]);
    assert!(first.parent_span_id.is_empty(), "a root span");
    assert_eq!(first.name, "web.foo:8000/*");
    assert_eq!(first.kind, SpanKind::Client as i32);
    assert!(first.end_time_unix_nano >= first.start_time_unix_nano);
    for (tag, value) in [
        ("http.method", "GET"),
        ("http.url", "http://httpbin.foo:8000/a?x=1"),
        ("http.status_code", "200"),
        ("http.protocol", "HTTP/1.1"),
        ("response_flags", "-"),
        ("upstream_cluster", "web"),
        ("component", "proxy"),
        ("istio.mesh_id", "mesh1"),
        ("team", "blue"),
        ("guid:x-request-id", seen["x-request-id"].as_str()),
    ] {
        assert_eq!(
            tags.get(tag).map(String::as_str),
            Some(value),
            "{tag}: {tags:?}"
        );
    }
    assert_eq!(tags["response_size"], first_body.to_string());
    let (second, tags) = spans
        .iter()
        .find(|(s, _)| hex(&s.trace_id) == "0af7651916cd43dd8448eb211c80319c")
        .expect("the continued trace's span");
    assert_eq!(hex(&second.parent_span_id), "b7ad6b7169203331");
    assert_eq!(tags["team"], "none", "the header's default");
}

/// A listener that samples nothing at random.
const OTEL_NONE: &str = r#"            random_sampling: {value: 0}
            provider:
              name: envoy.tracers.opentelemetry
              typed_config:
                "@type": type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig
                grpc_service: {envoy_grpc: {cluster_name: otel}}
                service_name: httpbin.foo
"#;

#[tokio::test]
async fn unsampled_requests_pass_their_context_on_and_a_client_trace_id_forces_a_span() {
    let dir = TempDir::new("proxy-tracing-unsampled");
    let backend = support::header_backend().await;
    let (otel, mut reports) = collector(true).await;
    let text = support::bootstrap(
        &listener("out", "OUTBOUND", OTEL_NONE),
        &(support::static_cluster("web", &[backend], "ROUND_ROBIN")
            + &support::http_cluster("otel", otel, true)),
    );
    let proxy = support::start(&dir, &text, support::workload("foo", "httpbin"));
    let address = proxy.listeners.bound("out")[0];

    let (_, _, body) = support::get(address, "/", &[]).await;
    let seen = echoed(&body);
    assert!(
        seen["traceparent"].ends_with("-00"),
        "not sampled: {seen:?}"
    );
    assert_eq!(seen["x-request-id"].as_bytes()[14], b'4');
    assert!(!seen.contains_key("x-envoy-decorator-operation"));
    // An app's sampled parent does not outvote the proxy (Envoy's
    // OpenTelemetry tracer takes both).
    let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let (_, _, body) = support::get(address, "/", &[("traceparent", parent)]).await;
    assert!(echoed(&body)["traceparent"].ends_with("-00"));

    let (_, _, body) = support::get(address, "/forced", &[("x-client-trace-id", "t-1")]).await;
    let seen = echoed(&body);
    assert_eq!(seen["x-request-id"].as_bytes()[14], b'b', "client forced");
    let spans = otlp_spans(&mut reports, 1).await;
    assert_eq!(spans.len(), 1, "only the forced request: {spans:?}");
    assert_eq!(spans[0].1["guid:x-client-trace-id"], "t-1");
    assert_eq!(spans[0].1["http.url"], "http://httpbin.foo:8000/forced");
}

const ZIPKIN: &str = r#"            random_sampling: {value: 100}
            provider:
              name: envoy.tracers.zipkin
              typed_config:
                "@type": type.googleapis.com/envoy.config.trace.v3.ZipkinConfig
                collector_cluster: zipkin
                collector_endpoint: /api/v2/spans
                collector_endpoint_version: HTTP_JSON
                collector_hostname: zipkin.istio-system.svc.cluster.local
                trace_id_128bit: true
                shared_span_context: false
"#;

#[tokio::test]
async fn inbound_requests_become_server_spans_in_zipkin_with_b3_context() {
    let dir = TempDir::new("proxy-tracing-zipkin");
    let backend = support::header_backend().await;
    let (zipkin, mut reports) = collector(false).await;
    let text = support::bootstrap(
        &listener("in", "INBOUND", ZIPKIN),
        &(support::static_cluster("web", &[backend], "ROUND_ROBIN")
            + &support::http_cluster("zipkin", zipkin, false)),
    );
    let proxy = support::start(&dir, &text, support::workload("foo", "httpbin"));
    let address = proxy.listeners.bound("in")[0];

    // The client's proxy sent B3 and its route's name.
    let (status, _, body) = support::get(
        address,
        "/status/503",
        &[
            ("x-b3-traceid", "463ac35c9f6413ad48485a3953bb6124"),
            ("x-b3-spanid", "a2fb4a1d1a96d312"),
            ("x-b3-sampled", "1"),
            (
                "x-envoy-decorator-operation",
                "httpbin.foo.svc.cluster.local:8000/*",
            ),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let seen = echoed(&body);
    assert_eq!(seen["x-b3-traceid"], "463ac35c9f6413ad48485a3953bb6124");
    assert_eq!(seen["x-b3-parentspanid"], "a2fb4a1d1a96d312");
    assert_eq!(seen["x-b3-sampled"], "1");
    assert!(!seen.contains_key("traceparent"), "B3 only");
    assert!(
        !seen.contains_key("x-envoy-decorator-operation"),
        "the server's proxy takes the name and keeps it from the app"
    );

    let report = tokio::time::timeout(Duration::from_secs(10), reports.recv())
        .await
        .expect("a report")
        .expect("collector running");
    let spans: serde_json::Value = serde_json::from_slice(&report).expect("JSON");
    let span = &spans[0];
    assert_eq!(span["traceId"], "463ac35c9f6413ad48485a3953bb6124");
    assert_eq!(span["id"], seen["x-b3-spanid"].as_str());
    assert_eq!(span["parentId"], "a2fb4a1d1a96d312");
    assert_eq!(span["kind"], "SERVER");
    assert_eq!(span["name"], "httpbin.foo.svc.cluster.local:8000/*");
    assert_eq!(span["localEndpoint"]["serviceName"], "httpbin.foo");
    assert_eq!(span["tags"]["http.status_code"], "200");
    assert!(span["timestamp"].as_u64().is_some() && span["duration"].as_u64().is_some());
    drop(proxy);
}

#[tokio::test]
async fn spans_for_a_collector_that_is_away_are_dropped_and_counted_and_requests_go_on() {
    let dir = TempDir::new("proxy-tracing-away");
    let backend = support::header_backend().await;
    // A port nothing listens on.
    let away = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind")
        .local_addr()
        .expect("address");
    let text = support::bootstrap(
        &listener("out", "OUTBOUND", OTEL_GRPC),
        &(support::static_cluster("web", &[backend], "ROUND_ROBIN")
            + &support::http_cluster("otel", away, true)),
    );
    let proxy = support::start(&dir, &text, support::workload("foo", "httpbin"));
    let address = proxy.listeners.bound("out")[0];
    for _ in 0..5 {
        let (status, _, _) = support::get(address, "/", &[]).await;
        assert_eq!(status, StatusCode::OK);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let stats = proxy.ctx.metrics.encode();
        let dropped = stats
            .lines()
            .find_map(|l| l.strip_prefix("envoy_tracing_opentelemetry_spans_dropped_total "))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        if dropped >= 5.0 {
            assert!(stats.contains("envoy_tracing_opentelemetry_reports_failed_total 1"));
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{stats}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

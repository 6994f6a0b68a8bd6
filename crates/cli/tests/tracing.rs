//! Distributed tracing end to end on `oxmesh up`: Istio's bookinfo behind
//! its ingress gateway, the mesh config's `opentelemetry` extension provider
//! and a mesh-wide Telemetry at 100 %, as Istio's tracing task sets them up,
//! and an OTLP collector pod (`oxmesh demo otel-collector`, for the image of
//! Istio's sample). One request at the ingress gives one trace through every
//! proxy, the apps passing the context on. Needs root, iproute2, iptables and
//! curl.

use std::collections::{HashMap, HashSet};
use std::process::Command;
use std::time::{Duration, Instant};

use oxmesh_testkit::TempDir;
use serde_json::Value;
use support::mesh::Mesh;
use support::up::start_up;

mod support;

const COLLECTOR: &str = r#"apiVersion: v1
kind: Namespace
metadata: {name: observability}
---
apiVersion: v1
kind: Service
metadata: {name: opentelemetry-collector, namespace: observability}
spec:
  selector: {app: opentelemetry-collector}
  ports: [{name: grpc-otlp, port: 4317, targetPort: 4317}, {name: http-otlp, port: 4318, targetPort: 4318}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: opentelemetry-collector, namespace: observability}
spec:
  selector: {matchLabels: {app: opentelemetry-collector}}
  template:
    metadata: {labels: {app: opentelemetry-collector}}
    spec:
      containers: [{name: opentelemetry-collector, image: otel/opentelemetry-collector-contrib:0.129.1}]
"#;

const MESH_CONFIG: &str = r#"apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |
    extensionProviders:
    - name: otel-tracing
      opentelemetry:
        service: opentelemetry-collector.observability.svc.cluster.local
        port: 4317
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: otel-demo, namespace: istio-system}
spec:
  tracing:
  - providers: [{name: otel-tracing}]
    randomSamplingPercentage: 100
"#;

/// The services a request for jason's product page passes: reviews v2
/// calls ratings. Eight spans: the gateway's, then a server span at each
/// service and a client span for each of its calls (productpage to details
/// and reviews, reviews to ratings).
const SERVICES: [&str; 5] = [
    "istio-ingressgateway.istio-system",
    "productpage.default",
    "details.default",
    "reviews.default",
    "ratings.default",
];

fn bookinfo(dir: &TempDir) {
    support::up::write_istio_bookinfo(dir);
    dir.write("collector.yaml", COLLECTOR);
    dir.write("tracing.yaml", MESH_CONFIG);
}

/// jason's product page from the host, continuing the trace `trace_id`.
fn product_page(port: u16, trace_id: &str) -> String {
    let out = Command::new("curl")
        .args(["-s", "-m", "5", "-H", "Host: bookinfo.example.com", "-H"])
        .arg(format!("traceparent: 00-{trace_id}-00f067aa0ba902b7-01"))
        .arg(format!("http://127.0.0.1:{port}/productpage?u=jason"))
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The spans of `trace_id` the collector printed.
fn spans_of(mesh: &Mesh, trace_id: &str) -> Vec<Value> {
    mesh.logs(
        "observability",
        "opentelemetry-collector",
        "opentelemetry-collector",
    )
    .lines()
    .filter_map(|l| serde_json::from_str::<Value>(l).ok())
    .filter(|span| span["traceId"] == trace_id)
    .collect()
}

fn text<'a>(span: &'a Value, field: &str) -> &'a str {
    span[field].as_str().unwrap_or_default()
}

/// Requests (a new trace each) until one trace has a span from every
/// proxy on the way: the first ones may come before the tracer reached them.
fn whole_trace(mesh: &Mesh, port: u16) -> (String, Vec<Value>) {
    let deadline = Instant::now() + Duration::from_secs(45);
    for attempt in 1u32.. {
        let trace_id = format!("4bf92f3577b34da6a3ce929d{attempt:08x}");
        let page = product_page(port, &trace_id);
        let settle = Instant::now() + Duration::from_secs(4);
        loop {
            let spans = spans_of(mesh, &trace_id);
            let services: HashSet<&str> = spans.iter().map(|s| text(s, "service")).collect();
            if SERVICES.iter().all(|s| services.contains(s)) && spans.len() >= 8 {
                assert!(page.contains("Book Reviews"), "{page}");
                return (trace_id, spans);
            }
            if Instant::now() > settle {
                break;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        assert!(
            Instant::now() < deadline,
            "no whole trace; the last, {trace_id}: {:#?}\npage: {page}",
            spans_of(mesh, &trace_id)
        );
    }
    unreachable!("the loop returns or fails")
}

#[test]
fn one_request_at_the_ingress_is_one_trace_through_every_proxy() {
    let dir = TempDir::new("tracing-e2e");
    bookinfo(&dir);
    let (up, port) = start_up(&dir);
    let mesh = Mesh::new(dir, up, "default");
    let (trace_id, spans) = whole_trace(&mesh, port);

    let by_id: HashMap<&str, &Value> = spans.iter().map(|s| (text(s, "spanId"), s)).collect();
    assert_eq!(by_id.len(), spans.len(), "span ids are unique: {spans:#?}");
    // The gateway's span continues the caller's; every other span's parent
    // is a span of the trace: a client span for a server span, a server span
    // (through the app) for a client span.
    let gateway: Vec<&Value> = spans
        .iter()
        .filter(|s| text(s, "service") == SERVICES[0])
        .collect();
    assert_eq!(gateway.len(), 1, "{gateway:#?}");
    assert_eq!(text(gateway[0], "parentSpanId"), "00f067aa0ba902b7");
    assert_eq!(
        text(gateway[0], "name"),
        "productpage.default.svc.cluster.local:9080/productpage"
    );
    for span in spans.iter().filter(|s| text(s, "service") != SERVICES[0]) {
        let parent = by_id
            .get(text(span, "parentSpanId"))
            .unwrap_or_else(|| panic!("the parent of {span:#} is in trace {trace_id}"));
        let expected = if text(span, "kind") == "SERVER" {
            "CLIENT"
        } else {
            "SERVER"
        };
        let parent_kind = text(parent, "kind");
        let from_gateway = text(parent, "service") == SERVICES[0];
        assert!(
            parent_kind == expected || from_gateway,
            "{span:#}\nhas parent {parent:#}"
        );
        assert_eq!(span["attributes"]["http.status_code"], "200", "{span:#}");
        assert_eq!(
            span["attributes"]["istio.canonical_service"],
            text(span, "service").split('.').next().unwrap_or_default(),
            "{span:#}"
        );
    }
    // reviews' server span is named by productpage's route, its call to
    // ratings by its own.
    let named = |service: &str, kind: &str| -> Vec<&str> {
        spans
            .iter()
            .filter(|s| text(s, "service") == service && text(s, "kind") == kind)
            .map(|s| text(s, "name"))
            .collect()
    };
    assert_eq!(
        named("reviews.default", "SERVER"),
        ["reviews.default.svc.cluster.local:9080/*"]
    );
    assert_eq!(
        named("reviews.default", "CLIENT"),
        ["ratings.default.svc.cluster.local:9080/*"]
    );
    let client_of_ratings = spans
        .iter()
        .find(|s| text(s, "service") == "reviews.default" && text(s, "kind") == "CLIENT")
        .expect("reviews calls ratings");
    assert_eq!(
        client_of_ratings["attributes"]["upstream_cluster"],
        "outbound|9080||ratings.default.svc.cluster.local"
    );
}

const ZIPKIN: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata: {name: zipkin, namespace: istio-system}
spec:
  selector: {matchLabels: {app: zipkin}}
  template:
    metadata: {labels: {app: zipkin}, annotations: {sidecar.istio.io/inject: "false"}}
    spec:
      containers: [{name: zipkin, image: openzipkin/zipkin-slim:3.4.3, ports: [{containerPort: 9411}]}]
---
apiVersion: v1
kind: Service
metadata: {name: zipkin, namespace: istio-system}
spec:
  selector: {app: zipkin}
  ports: [{name: http-query, port: 9411, targetPort: 9411}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |
    extensionProviders:
    - name: zipkin
      zipkin:
        service: zipkin.istio-system.svc.cluster.local
        port: 9411
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  tracing:
  - providers: [{name: zipkin}]
    randomSamplingPercentage: 100
"#;

/// `curl -s URL` in a pod of `namespace`, as JSON.
fn curl_json(mesh: &Mesh, namespace: &str, pod: &str, url: &str) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_oxmesh"))
        .args(["exec", "--mesh", &mesh.path(), "-n", namespace, pod])
        .args(["--", "curl", "-s", "-m", "5", url])
        .output()
        .expect("curl in a pod");
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

#[test]
fn zipkin_gets_the_trace_and_the_dashboard_shows_it() {
    let dir = TempDir::new("tracing-zipkin");
    support::up::write_istio_bookinfo(&dir);
    dir.write("zipkin.yaml", ZIPKIN);
    let (up, port) = start_up(&dir);
    let mesh = Mesh::new(dir, up, "default");
    // B3 from the client, as Zipkin's instrumented callers send it.
    let deadline = Instant::now() + Duration::from_secs(45);
    let (trace_id, spans) = 'found: {
        for attempt in 1u32.. {
            let trace_id = format!("80f198ee56343ba864fe8b2a{attempt:08x}");
            let out = Command::new("curl")
                .args(["-s", "-m", "5", "-o", "/dev/null"])
                .args(["-H", &format!("x-b3-traceid: {trace_id}")])
                .args([
                    "-H",
                    "x-b3-spanid: e457b5a2e4d86bd1",
                    "-H",
                    "x-b3-sampled: 1",
                ])
                .arg(format!("http://127.0.0.1:{port}/productpage?u=jason"))
                .status();
            assert!(out.is_ok_and(|s| s.success()));
            let settle = Instant::now() + Duration::from_secs(4);
            while Instant::now() < settle {
                let traces = curl_json(
                    &mesh,
                    "istio-system",
                    "deploy/zipkin",
                    "http://127.0.0.1:9411/api/v2/traces?serviceName=productpage.default&limit=20",
                );
                let ours = traces
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|t| t[0]["traceId"] == trace_id.as_str());
                if let Some(spans) = ours.and_then(Value::as_array)
                    && spans.len() >= 8
                {
                    break 'found (trace_id, spans.clone());
                }
                std::thread::sleep(Duration::from_millis(300));
            }
            assert!(Instant::now() < deadline, "no whole trace in Zipkin");
        }
        unreachable!("the loop breaks or fails")
    };
    let services: HashSet<&str> = spans
        .iter()
        .filter_map(|s| s["localEndpoint"]["serviceName"].as_str())
        .collect();
    for service in SERVICES {
        assert!(services.contains(service), "{service} in {services:?}");
    }
    // The gateway's span continues the caller's B3 context.
    let gateway = spans
        .iter()
        .find(|s| s["localEndpoint"]["serviceName"] == SERVICES[0])
        .expect("the gateway's span");
    assert_eq!(gateway["parentId"], "e457b5a2e4d86bd1", "{gateway:#}");

    // The dashboard's drill-down lists the trace from the mesh's Zipkin.
    let detail = curl_json(
        &mesh,
        "istio-system",
        "istiod",
        "http://127.0.0.1:15014/api/service?id=productpage.default",
    );
    assert_eq!(
        detail["tracing"], "http://zipkin.istio-system.svc.cluster.local:9411",
        "{detail:#}"
    );
    let listed = detail["traces"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|t| t["traceId"] == trace_id.as_str())
        .unwrap_or_else(|| panic!("trace {trace_id} in {detail:#}"));
    assert!(listed["spans"].as_u64() >= Some(8), "{listed}");
    assert!(listed["durationMs"].as_f64() > Some(0.0), "{listed}");
}

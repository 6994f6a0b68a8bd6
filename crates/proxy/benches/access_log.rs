//! What one access log line costs the proxy (bench/RESULTS.md): formatting
//! Istio's default text and JSON lines for one request, and a CEL filter
//! deciding whether to write it. The writer thread's file writes are not
//! counted here; the mesh bench's access-log scenario counts everything.

use std::time::{Duration, SystemTime};

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderName, HeaderValue};
use oxmesh_control::generate::access_log::{ISTIO_JSON_FIELDS, ISTIO_TEXT_FORMAT};
use oxmesh_proxy::access_log::cel;
use oxmesh_proxy::access_log::format::{Format, LogFormat, Template};
use oxmesh_proxy::access_log::{Entry, RequestHead};

fn head() -> RequestHead {
    let header = |n: &'static str, v: &'static str| {
        (HeaderName::from_static(n), HeaderValue::from_static(v))
    };
    RequestHead {
        method: "GET".to_owned(),
        path: "/productpage?u=normal".to_owned(),
        authority: Some("productpage.default:9080".to_owned()),
        scheme: Some("http"),
        protocol: "HTTP/1.1",
        headers: vec![
            header("user-agent", "curl/8.5.0"),
            header("x-request-id", "5f1c0c6e-0000-4000-8000-000000000001"),
        ],
    }
}

fn entry<'a>(request: &'a RequestHead, response: &'a [(HeaderName, HeaderValue)]) -> Entry<'a> {
    Entry {
        start: SystemTime::now(),
        duration: Duration::from_millis(3),
        request: Some(request),
        response_headers: response,
        response_code: 200,
        flags: "",
        details: Some("via_upstream"),
        termination_details: None,
        transport_failure: None,
        bytes_received: 0,
        bytes_sent: 5183,
        upstream_host: Some("198.18.0.12:9080".parse().expect("address")),
        upstream_local: Some("127.0.0.6:43211".parse().expect("address")),
        upstream_cluster: Some("inbound|9080||"),
        upstream_peer_uri: None,
        downstream_local: "198.18.0.12:9080".parse().expect("address"),
        downstream_remote: "198.18.0.10:51234".parse().expect("address"),
        downstream_direct: "198.18.0.10:51234".parse().expect("address"),
        downstream_peer_uri: Some("spiffe://cluster.local/ns/default/sa/bookinfo-gateway"),
        local_uri: None,
        sni: Some("outbound_.9080_._.productpage.default.svc.cluster.local"),
        route_name: Some("default"),
    }
}

fn lines(c: &mut Criterion) {
    let text = LogFormat {
        format: Format::Text(Template::parse(ISTIO_TEXT_FORMAT).expect("text")),
        omit_empty: false,
    };
    let json = LogFormat {
        format: Format::Json(
            ISTIO_JSON_FIELDS
                .iter()
                .map(|(k, v)| ((*k).to_owned(), Template::parse(v).expect("json")))
                .collect(),
        ),
        omit_empty: false,
    };
    let filter =
        cel::compile("response.code >= 400 || request.headers['x-debug'] == 'on'").expect("cel");
    let request = head();
    let response = [(
        HeaderName::from_static("x-envoy-upstream-service-time"),
        HeaderValue::from_static("2"),
    )];
    let e = entry(&request, &response);
    c.bench_function("access log: Istio's text line", |b| {
        b.iter(|| text.render(&e))
    });
    c.bench_function("access log: Istio's JSON line", |b| {
        b.iter(|| json.render(&e))
    });
    c.bench_function("access log: a CEL filter deciding", |b| {
        b.iter(|| filter.admits(&e))
    });
}

criterion_group!(benches, lines);
criterion_main!(benches);

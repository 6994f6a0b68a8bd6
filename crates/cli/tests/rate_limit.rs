//! Istio's rate-limiting tasks end to end on `oxmesh up`: the EnvoyFilters
//! as Istio's docs write them, on Istio's httpbin and curl samples; local
//! limits in httpbin's sidecar, global limits at the ingress gateway asked
//! of a rate limit service (the demo one, where the docs run
//! envoyproxy/ratelimit). Needs root, iproute2, iptables and curl.

use std::process::Command;
use std::time::{Duration, Instant};

use support::mesh::Mesh;

mod support;

/// `curl -D -` from a pod: the status line's code and the whole answer.
fn curl(mesh: &Mesh, url: &str) -> (String, String) {
    answer(&mesh.run("curl", &["curl", "-s", "-m", "5", "-D", "-", url]))
}

/// The status code and the whole answer (lower case) `curl -D -` printed.
fn answer(out: &std::process::Output) -> (String, String) {
    let text = String::from_utf8_lossy(&out.stdout).to_lowercase();
    let status = text
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    (status, text)
}

/// An example of the bookinfo mesh (Istio's task as its docs write it).
fn example(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/bookinfo/networking")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The local example for httpbin (service port 8000) instead of productpage.
fn local_example() -> String {
    example("ratelimit-local.yaml")
        .replace("{app: productpage}", "{app: httpbin}")
        .replace("inbound|http|9080", "inbound|http|8000")
}

/// The global example, the once-a-minute path one httpbin has.
fn global_example() -> String {
    example("ratelimit-global.yaml").replace("PATH=/productpage:", "PATH=/status/200:")
}

/// Requests until one is limited; the limited answer.
fn until_limited(what: &str, mut request: impl FnMut() -> (String, String)) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, text) = request();
        if status == "429" {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: never limited; last {text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Istio's local rate-limit task with the bucket per route (4 tokens a
/// minute): httpbin's sidecar answers 429 with the docs' marker header once
/// they are spent, and counts it.
#[test]
fn local_rate_limit_follows_istios_task() {
    let (mesh, _) = Mesh::istio_samples("ratelimit-local");
    let url = "http://httpbin:8000/headers";
    mesh.settles("curl", "GET", url, "200");
    mesh.apply("local.yaml", &local_example());
    let limited = until_limited("httpbin", || curl(&mesh, url));
    assert!(limited.contains("x-local-rate-limit: true"), "{limited}");
    assert!(limited.ends_with("local_rate_limited"), "{limited}");
    let metrics = mesh.metrics("httpbin");
    assert!(
        metrics.contains("envoy_http_local_rate_limit_enforced_total{envoy_http_local_rate_limit_prefix=\"http_local_rate_limiter\"}"),
        "{metrics}"
    );
    let limited_requests = metrics
        .lines()
        .find(|l| {
            l.starts_with("istio_requests_total")
                && l.contains("reporter=\"destination\"")
                && l.contains("response_code=\"429\"")
        })
        .unwrap_or_default();
    assert!(
        limited_requests.contains("response_flags=\"RL\""),
        "{metrics}"
    );
    // The caller's own sidecar limits nothing: the EnvoyFilter selects httpbin.
    assert!(
        !mesh.metrics("curl").contains("local_rate_limit_enforced"),
        "curl's sidecar has no limit"
    );
}

/// Istio's global rate-limit task at the ingress gateway: `/status/200` is
/// allowed once a minute by the rate limit service, other paths 100 times;
/// the second request to it gets 429 with `x-envoy-ratelimited`.
#[test]
fn global_rate_limit_at_the_gateway_follows_istios_task() {
    let (mesh, ingress) = Mesh::istio_samples("ratelimit-global");
    mesh.apply("gateway.yaml", GATEWAY);
    let through_gateway = |path: &str| {
        let out = Command::new("curl")
            .args(["-s", "-m", "5", "-D", "-"])
            .arg(format!("http://127.0.0.1:{ingress}{path}"))
            .output()
            .expect("curl");
        answer(&out)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while through_gateway("/headers").0 != "200" {
        assert!(
            Instant::now() < deadline,
            "the gateway never routed to httpbin"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    mesh.apply("global.yaml", &global_example());
    let limited = until_limited("/status/200 through the gateway", || {
        through_gateway("/status/200")
    });
    assert!(limited.contains("x-envoy-ratelimited: true"), "{limited}");
    for _ in 0..3 {
        assert_eq!(
            through_gateway("/headers").0,
            "200",
            "other paths are under their limit"
        );
    }
}

/// httpbin behind the ingress gateway.
const GATEWAY: &str = r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: httpbin-gateway, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: httpbin, namespace: default}
spec:
  hosts: ["*"]
  gateways: [httpbin-gateway]
  http:
  - route:
    - destination: {host: httpbin, port: {number: 8000}}
"#;

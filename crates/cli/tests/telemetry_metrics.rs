//! Telemetry `metrics` end to end on `oxmesh up`, as Istio's "Customizing
//! Istio Metrics" task writes them: a mesh-wide Telemetry adds tags from
//! request attributes to `istio_requests_total`, removes one, and disables
//! request durations and TCP bytes sent, and tags opened connections with
//! their port; the sidecars' own metrics show it.
//! A tag whose expression is not CEL is refused when applied. Needs root,
//! iproute2, iptables and curl.

use std::process::Command;
use std::time::{Duration, Instant};

use support::edge::{mesh_with, sample};
use support::mesh::Mesh;

mod support;

const TELEMETRY: &str = r#"apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  metrics:
  - providers: [{name: prometheus}]
    overrides:
    - match: {metric: REQUEST_COUNT, mode: CLIENT_AND_SERVER}
      tagOverrides:
        request_host: {value: request.host}
        destination_port: {value: string(destination.port)}
        request_user: {value: "request.headers['x-user']"}
        response_flags: {operation: REMOVE}
    - match: {metric: REQUEST_DURATION}
      disabled: true
    - match: {metric: TCP_SENT_BYTES}
      disabled: true
    - match: {metric: TCP_OPENED_CONNECTIONS}
      tagOverrides:
        destination_port: {value: string(destination.port)}
"#;

const NOT_CEL: &str = r#"apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: broken, namespace: default}
spec:
  metrics:
  - overrides:
    - tagOverrides:
        request_host: {value: "request.host =="}
"#;

/// The `istio_*` lines of `deployment`'s sidecar with `reporter`.
fn lines(mesh: &Mesh, deployment: &str, metric: &str, reporter: &str) -> Vec<String> {
    let reporter = format!("reporter=\"{reporter}\"");
    mesh.metrics(deployment)
        .lines()
        .filter(|l| l.starts_with(metric) && l.contains(&reporter))
        .map(str::to_owned)
        .collect()
}

/// Requests from curl (as alice) to httpbin, and a line through tcp-echo,
/// until the server's sidecar counts them with the Telemetry's tags.
fn traffic_until_tagged(mesh: &Mesh) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, _) = mesh.http_with(
            "curl",
            "GET",
            "http://httpbin:8000/status/200",
            Some("x-user: alice"),
        );
        assert_eq!(status, "200");
        mesh.tcp("curl");
        let tagged = lines(mesh, "httpbin", "istio_requests_total", "destination");
        if tagged.iter().any(|l| l.contains("request_user=\"alice\"")) {
            return tagged;
        }
        assert!(Instant::now() < deadline, "never tagged: {tagged:#?}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn telemetry_overrides_reshape_the_standard_metrics() {
    let mesh = mesh_with(
        "telemetry-metrics",
        &[
            ("httpbin.yaml", sample("httpbin.yaml")),
            ("curl.yaml", sample("curl.yaml")),
            ("tcp-echo.yaml", sample("tcp-echo-tcp-echo.yaml")),
            // From the start, so no request is counted the standard way.
            ("telemetry.yaml", TELEMETRY.to_owned()),
        ],
    );
    let server = traffic_until_tagged(&mesh);
    let line = server
        .iter()
        .find(|l| l.contains("request_user=\"alice\""))
        .expect("a tagged line");
    // The server's sidecar sees the Host the client sent and the port it
    // was reached on; response_flags is gone.
    assert!(line.contains("request_host=\"httpbin:8000\""), "{line}");
    assert!(line.contains("destination_port=\"8080\""), "{line}");
    assert!(!line.contains("response_flags="), "{line}");
    assert!(
        line.contains("destination_canonical_service=\"httpbin\""),
        "{line}"
    );
    // The client's sidecar tags its own view: the Service's port.
    let client = lines(&mesh, "curl", "istio_requests_total", "source");
    assert!(
        client.iter().any(
            |l| l.contains("request_user=\"alice\"") && l.contains("destination_port=\"8000\"")
        ),
        "{client:#?}"
    );
    // Other metrics keep Istio's labels; durations are not reported.
    let sizes = lines(&mesh, "httpbin", "istio_request_bytes_count", "destination");
    assert!(
        sizes
            .iter()
            .any(|l| l.contains("response_flags=\"-\"") && !l.contains("request_user")),
        "{sizes:#?}"
    );
    assert!(
        lines(
            &mesh,
            "httpbin",
            "istio_request_duration_milliseconds",
            "destination"
        )
        .is_empty()
    );
    assert!(
        lines(
            &mesh,
            "curl",
            "istio_request_duration_milliseconds",
            "source"
        )
        .is_empty()
    );
    // TCP: bytes received are counted (with Istio's labels), bytes sent are
    // not, and opened connections carry the port tcp-echo was reached on.
    let received = lines(
        &mesh,
        "tcp-echo",
        "istio_tcp_received_bytes_total",
        "destination",
    );
    assert!(
        received.iter().any(|l| !l.contains("destination_port")),
        "{received:#?}"
    );
    let opened = lines(
        &mesh,
        "tcp-echo",
        "istio_tcp_connections_opened_total",
        "destination",
    );
    assert!(
        opened
            .iter()
            .any(|l| l.contains("destination_port=\"9000\"")),
        "{opened:#?}"
    );
    assert!(
        lines(
            &mesh,
            "tcp-echo",
            "istio_tcp_sent_bytes_total",
            "destination"
        )
        .is_empty()
    );

    // An expression that does not parse is refused where it is written.
    mesh.dir.write("broken.yaml", NOT_CEL);
    let out = Command::new(env!("CARGO_BIN_EXE_oxmesh"))
        .args(["apply", "--mesh", &mesh.path(), "-f"])
        .arg(mesh.dir.path("broken.yaml"))
        .output()
        .expect("oxmesh apply");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("Telemetry default/broken")
            && stderr.contains("spec.metrics[0].overrides[0].tagOverrides.request_host.value")
            && stderr.contains("must be a valid CEL expression"),
        "{stderr}"
    );
}

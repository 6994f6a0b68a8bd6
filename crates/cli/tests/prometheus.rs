//! Prometheus on `oxmesh up --prometheus`: Debian's server in the mesh,
//! configured as Istio's addon, scrapes every sidecar and gateway on 15020
//! and istiod on 15014, and the PromQL of Istio's docs and dashboards
//! (request counts, success rate, latency percentiles, TCP bytes) gives
//! what the traffic sent. Needs root, iproute2, iptables, curl and the
//! `prometheus` package (which `.ci/run` installs).

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::edge::{mesh_with_args, sample};
use support::mesh::Mesh;

mod support;

/// A series' labels and its value.
type Sample = (BTreeMap<String, String>, f64);

struct Prometheus {
    port: u16,
}

impl Prometheus {
    fn get(&self, path: &str, query: Option<&str>) -> Value {
        let mut curl = Command::new("curl");
        curl.args(["-s", "-m", "5", "--get"]);
        if let Some(q) = query {
            curl.args(["--data-urlencode", &format!("query={q}")]);
        }
        let out = curl
            .arg(format!("http://127.0.0.1:{}{path}", self.port))
            .output()
            .expect("curl");
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }

    /// An instant query's samples.
    fn query(&self, promql: &str) -> Vec<Sample> {
        let answer = self.get("/api/v1/query", Some(promql));
        answer["data"]["result"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                let labels = r["metric"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                    .collect();
                let value = r["value"][1].as_str().and_then(|v| v.parse().ok());
                (labels, value.unwrap_or(f64::NAN))
            })
            .collect()
    }

    /// The one value of a query that sums to a single series.
    fn value(&self, promql: &str) -> Option<f64> {
        self.query(promql).first().map(|(_, v)| *v)
    }

    /// Polls `promql` until `want` holds of its samples (scrapes come every
    /// second), returning them.
    fn settles(&self, promql: &str, want: impl Fn(&[Sample]) -> bool) -> Vec<Sample> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let samples = self.query(promql);
            if want(&samples) {
                return samples;
            }
            assert!(Instant::now() < deadline, "{promql}: {samples:?}");
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// `statuses` requests for `/status/<code>` from curl to httpbin, one after
/// another, and `slow` at once that take a second each.
fn traffic(mesh: &Mesh, statuses: &[(u16, usize)], slow: usize) {
    let mut script = String::new();
    for (code, n) in statuses {
        script.push_str(&format!(
            "for i in $(seq {n}); do curl -s -o /dev/null httpbin:8000/status/{code}; done\n"
        ));
    }
    script.push_str(&format!(
        "for i in $(seq {slow}); do curl -s -o /dev/null httpbin:8000/delay/1 & done\nwait\n"
    ));
    let out = mesh.run("curl", &["sh", "-c", &script]);
    assert!(out.status.success(), "{out:?}");
}

/// 1,000 bytes and a newline to tcp-echo, read back with its `hello `
/// prefix: how many bytes came back.
fn tcp_echo(mesh: &Mesh) -> usize {
    let script = "import socket\ns=socket.create_connection(('tcp-echo',9000),timeout=3)\ns.sendall(b'x'*1000+b'\\n')\ngot=b''\nwhile not got.endswith(b'\\n'):\n  c=s.recv(4096)\n  if not c: break\n  got+=c\ns.close()\nprint(len(got))\n";
    let out = mesh.run("curl", &["python3", "-c", script]);
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("bytes echoed")
}

fn by(samples: &[Sample], label: &str, value: &str) -> Option<f64> {
    samples
        .iter()
        .find(|(labels, _)| labels.get(label).map(String::as_str) == Some(value))
        .map(|(_, v)| *v)
}

const HTTPBIN: &str = r#"{reporter="destination",destination_workload="httpbin"}"#;

#[test]
fn prometheus_scrapes_the_mesh_as_istios_addon_and_answers_istios_queries() {
    let port = free_port();
    let manifests = [
        ("httpbin.yaml", sample("httpbin.yaml")),
        ("tcp-echo.yaml", sample("tcp-echo-tcp-echo.yaml")),
        ("curl.yaml", sample("curl.yaml")),
    ];
    let port_arg = port.to_string();
    let mesh = mesh_with_args(
        "prometheus",
        &manifests,
        &[
            "--prometheus",
            "--prometheus-port",
            &port_arg,
            "--scrape-interval",
            "1s",
        ],
    );
    let prometheus = Prometheus { port };

    // Every pod with a proxy on 15020 and istiod on 15014, found through the
    // annotations and labelled by Istio's relabelling; the pod outside the
    // mesh has no annotations and is not scraped.
    let up = prometheus.settles(r#"up{job="kubernetes-pods"}"#, |s| {
        s.len() == 5 && s.iter().all(|(_, v)| *v == 1.0)
    });
    let instance = |app: &str| {
        up.iter()
            .find(|(l, _)| l.get("app").map(String::as_str) == Some(app))
            .map(|(l, _)| (l["namespace"].clone(), l["instance"].clone()))
    };
    assert_eq!(
        instance("istiod"),
        Some(("istio-system".into(), "198.18.0.2:15014".into()))
    );
    assert_eq!(
        instance("istio-ingressgateway"),
        Some(("istio-system".into(), "198.18.0.4:15020".into()))
    );
    for app in ["httpbin", "curl", "tcp-echo"] {
        let (namespace, address) = instance(app).unwrap_or_else(|| panic!("{app}: {up:?}"));
        assert_eq!(namespace, "default");
        assert!(address.ends_with(":15020"), "{app}: {address}");
    }
    let targets = prometheus.get("/api/v1/targets", None);
    let urls: Vec<&str> = targets["data"]["activeTargets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["scrapeUrl"].as_str())
        .collect();
    assert!(
        urls.iter()
            .filter(|u| u.ends_with(":15020/stats/prometheus"))
            .count()
            == 4,
        "{urls:?}"
    );

    // A first 200 and 503 make the series; Prometheus counts increases from
    // a series' first sample on, as on any cluster.
    traffic(&mesh, &[(200, 1), (503, 1)], 0);
    let query = format!("sum(istio_requests_total{HTTPBIN}) by (response_code)");
    // The client's sidecar retries a 503 twice (Istio's default retry
    // policy): the server's proxy reports three.
    prometheus.settles(&query, |s| {
        by(s, "response_code", "200") == Some(1.0) && by(s, "response_code", "503") == Some(3.0)
    });
    std::thread::sleep(Duration::from_secs(5));

    traffic(&mesh, &[(200, 10), (503, 5)], 10);
    let echoed = tcp_echo(&mesh);
    assert_eq!(echoed, "hello ".len() + 1001);
    prometheus.settles(&query, |s| {
        by(s, "response_code", "200") == Some(21.0) && by(s, "response_code", "503") == Some(18.0)
    });
    // The client saw each 503 once.
    let source = r#"sum(istio_requests_total{reporter="source",source_workload="curl",destination_service_name="httpbin"}) by (response_code)"#;
    prometheus.settles(source, |s| {
        by(s, "response_code", "200") == Some(21.0) && by(s, "response_code", "503") == Some(6.0)
    });
    std::thread::sleep(Duration::from_secs(3));

    // Istio's dashboards: request rate and success rate over a minute.
    let increase = prometheus
        .value(&format!("sum(increase(istio_requests_total{HTTPBIN}[1m]))"))
        .expect("increase");
    // 10 + 10 answered 200 and 5 × 3 answered 503 since the first samples;
    // Prometheus extrapolates a little towards the window's edges.
    assert!((35.0..=42.0).contains(&increase), "{increase}");
    let success = format!(
        r#"sum(rate(istio_requests_total{{reporter="destination",destination_workload="httpbin",response_code!~"5.*"}}[1m])) / sum(rate(istio_requests_total{HTTPBIN}[1m]))"#
    );
    let success = prometheus.value(&success).expect("success rate");
    assert!((success - 20.0 / 35.0).abs() < 0.03, "{success}");

    // 25 answers in well under 5 ms and 10 that took a second: the median
    // is in the fast buckets, p90 and p99 in the (1000, 2500] one.
    let quantile = |q: f64| {
        prometheus
            .value(&format!(
                "histogram_quantile({q}, sum(rate(istio_request_duration_milliseconds_bucket{HTTPBIN}[1m])) by (le))"
            ))
            .expect("quantile")
    };
    let (p50, p90, p99) = (quantile(0.5), quantile(0.9), quantile(0.99));
    assert!(p50 < 5.0, "p50 {p50}");
    assert!(
        1000.0 < p90 && p90 < p99 && p99 <= 2500.0,
        "p90 {p90} p99 {p99}"
    );

    // TCP bytes as the server's proxy counted them: the 1,001 the client
    // sent and what tcp-echo sent back.
    let tcp = |metric: &str| {
        format!(r#"sum({metric}{{reporter="destination",destination_workload="tcp-echo"}})"#)
    };
    let received = tcp("istio_tcp_received_bytes_total");
    prometheus.settles(&received, |s| s.first().map(|(_, v)| *v) == Some(1001.0));
    let sent = tcp("istio_tcp_sent_bytes_total");
    let echoed = echoed as f64;
    prometheus.settles(&sent, |s| s.first().map(|(_, v)| *v) == Some(echoed));

    // istiod's own metrics: the four proxies connected (curl, httpbin,
    // tcp-echo, the ingress gateway).
    let xds = prometheus.value(r#"sum(pilot_xds{namespace="istio-system"})"#);
    assert_eq!(xds, Some(4.0));

    // The dashboard reads its graph from this Prometheus (`up --prometheus`
    // told the control plane, which reaches it by its Service name).
    let out = Command::new(env!("CARGO_BIN_EXE_oxmesh"))
        .args([
            "exec",
            "--mesh",
            &mesh.path(),
            "-n",
            "istio-system",
            "istiod",
        ])
        .args([
            "--",
            "curl",
            "-s",
            "-m",
            "10",
            "http://127.0.0.1:15014/api/graph",
        ])
        .output()
        .expect("curl in istiod");
    let graph: Value = serde_json::from_slice(&out.stdout).expect("the dashboard's graph");
    assert_eq!(graph["source"], "prometheus", "{graph}");
    let edge = graph["edges"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["source"] == "curl.default" && e["destination"] == "httpbin.default")
        .unwrap_or_else(|| panic!("curl -> httpbin in {graph}"));
    assert_eq!(edge["mtls"], true, "{edge}");
    assert!(edge["requestsPerSecond"].as_f64() > Some(0.0), "{edge}");
    let errors = edge["errorRate"].as_f64().unwrap_or_default();
    assert!((errors - 15.0 / 35.0).abs() < 0.05, "{edge}");
}

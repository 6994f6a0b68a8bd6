//! What tracing costs: the latency scenario's fixed rate through two mTLS
//! sidecars with tracing off, Istio's default (each request decided and
//! marked, no tracer), and spans to an OTLP collector over gRPC at 1 % and at
//! 100 %, as Istio's tracing task configures it.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::bed::{Bed, COLLECTOR_HOST};
use crate::report::Table;
use crate::scenarios::{Settings, added_percent, cost_cells, costed_run, mesh_path};

struct Case {
    name: &'static str,
    /// More mesh config.
    mesh: &'static str,
    /// A mesh-wide Telemetry sending spans at this percentage.
    sampling: Option<f64>,
}

const CASES: [Case; 4] = [
    Case {
        name: "tracing off (enableTracing: false)",
        mesh: "enableTracing: false\n",
        sampling: None,
    },
    Case {
        name: "Istio's default: 1 % decided, no tracer",
        mesh: "",
        sampling: None,
    },
    Case {
        name: "OpenTelemetry (OTLP gRPC), 1 %",
        mesh: "",
        sampling: Some(1.0),
    },
    Case {
        name: "OpenTelemetry (OTLP gRPC), 100 %",
        mesh: "",
        sampling: Some(100.0),
    },
];

fn mesh_config(case: &Case) -> String {
    let provider = format!(
        "extensionProviders:\n- name: otel\n  opentelemetry: {{service: {COLLECTOR_HOST}, port: 4317}}\n{}",
        case.mesh
    );
    let indented: String = provider.lines().map(|l| format!("    {l}\n")).collect();
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: istio, namespace: istio-system}}\ndata:\n  mesh: |\n{indented}"
    )
}

fn telemetry(sampling: f64) -> String {
    format!(
        "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {{name: mesh-default, namespace: istio-system}}\nspec:\n  tracing:\n  - providers: [{{name: otel}}]\n    randomSamplingPercentage: {sampling}\n"
    )
}

/// The spans `pod`'s sidecar has sent.
fn spans_sent(bed: &Bed, pod: &str) -> f64 {
    let (_, stats) = bed.curl(pod, "http://127.0.0.1:15090/stats/prometheus");
    stats
        .lines()
        .find_map(|l| l.strip_prefix("envoy_tracing_opentelemetry_spans_sent_total "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Waits until the sidecars hold the case: with a tracer, a request forced by
/// `x-client-trace-id` reaches the collector; without, the config has had
/// its push (a few seconds; nothing to observe but the absence of spans).
fn wait_for(bed: &Bed, url: &str, case: &Case) {
    if case.sampling.is_none() {
        std::thread::sleep(Duration::from_secs(3));
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let before = spans_sent(bed, "client");
        let _ = bed.pod("client").output(
            "curl",
            &["-s", "-m", "5", "-H", "x-client-trace-id: probe", url],
        );
        std::thread::sleep(Duration::from_millis(1500));
        if spans_sent(bed, "client") > before {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the sidecars never sent spans for {}",
            case.name
        );
    }
}

pub fn tracing(bed: &Bed, s: &Settings) -> Vec<Table> {
    let path = mesh_path(bed);
    let istio = bed.config_file("istio.yaml");
    let telemetry_file = bed.config_file("telemetry.yaml");
    let pod = bed.pod(path.pod);
    let proxies = [bed.client_proxy, bed.server_proxy];
    let sent = || spans_sent(bed, "client") + spans_sent(bed, "server");
    let mut results: Vec<(Value, f64, f64)> = Vec::new();
    for case in &CASES {
        std::fs::write(&istio, mesh_config(case)).expect("istio.yaml");
        match case.sampling {
            Some(share) => std::fs::write(&telemetry_file, telemetry(share)).expect("Telemetry"),
            None => {
                let _ = std::fs::remove_file(&telemetry_file);
            }
        }
        wait_for(bed, &path.url, case);
        let mut before = 0.0;
        let (r, cost) = costed_run(pod, &path.url, s, &[], &proxies, || before = sent());
        // The last batch leaves within a second.
        std::thread::sleep(Duration::from_millis(1500));
        let spans = sent() - before;
        results.push((r, cost, spans));
    }
    let _ = std::fs::remove_file(&istio);
    let _ = std::fs::remove_file(&telemetry_file);
    let mut table = Table::new(
        format!(
            "Tracing cost, both sidecars: HTTP/1.1 through two mTLS sidecars, {} rps, {} connections, {} s",
            s.rps, s.connections, s.seconds
        ),
        &[
            "tracing",
            "p50 ms",
            "p99 ms",
            "both sidecars' CPU s per 1,000 requests",
            "CPU added",
            "spans sent per 1,000 requests",
            "non-200",
        ],
    );
    let count = |r: &Value| r["count"].as_f64().unwrap_or(0.0).max(1.0);
    let base = results[0].1;
    for (case, (r, cost, spans)) in CASES.iter().zip(&results) {
        let added = added_percent(*cost, base);
        let per_thousand = spans / (count(r) / 1000.0);
        let mut cells = cost_cells(case.name, r, *cost, base);
        cells.push(format!("{per_thousand:.0}"));
        cells.push(format!("{}", r["errors"].as_f64().unwrap_or(0.0)));
        table.row(
            cells,
            json!({"case": case.name, "cpu_s_per_1000": cost, "added_percent": added, "spans_per_1000": per_thousand, "result": r}),
        );
    }
    table.note("The mesh config's `opentelemetry` provider (a collector pod without a sidecar, `oxmesh demo otel-collector`) and a mesh-wide Telemetry at the given `randomSamplingPercentage`, against tracing off, in one run; each case replaces the last and the run starts once the sidecars hold it. Each traced request makes two spans, one per sidecar; the CPU is the two sidecars' only, not the collector's.");
    vec![table]
}

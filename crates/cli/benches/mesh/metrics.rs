//! What Telemetry `metrics` overrides cost: the latency scenario's fixed
//! rate through two mTLS sidecars with Istio's standard metrics, with every
//! metric disabled, and with the tags of Istio's "Customizing Istio Metrics"
//! task (two tags from CEL expressions on requests, one removed), alone and
//! with request durations disabled.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::bed::Bed;
use crate::report::Table;
use crate::scenarios::{Settings, added_percent, cost_cells, costed_run, mesh_path};

struct Case {
    name: &'static str,
    /// A mesh-wide Telemetry's `metrics`; none for Istio's default.
    metrics: Option<&'static str>,
    /// What the client's sidecar shows once it holds the case.
    shows: Option<&'static str>,
}

const TAGS: &str = "  - providers: [{name: prometheus}]\n    overrides:\n    - match: {metric: REQUEST_COUNT}\n      tagOverrides:\n        request_host: {value: request.host}\n        user_agent: {value: \"request.headers['user-agent']\"}\n        response_flags: {operation: REMOVE}\n";

const CASES: [Case; 4] = [
    Case {
        name: "Istio's standard metrics",
        metrics: None,
        shows: None,
    },
    Case {
        name: "every metric disabled",
        metrics: Some("  - overrides: [{disabled: true}]\n"),
        shows: None,
    },
    Case {
        name: "two tags from CEL, one removed",
        metrics: Some(TAGS),
        shows: Some("request_host="),
    },
    Case {
        name: "those tags, durations disabled",
        metrics: Some(
            "  - providers: [{name: prometheus}]\n    overrides:\n    - match: {metric: REQUEST_COUNT}\n      tagOverrides:\n        request_host: {value: request.host}\n        user_agent: {value: \"request.headers['user-agent']\"}\n        response_flags: {operation: REMOVE}\n    - match: {metric: REQUEST_DURATION}\n      disabled: true\n",
        ),
        shows: Some("user_agent="),
    },
];

fn telemetry(metrics: &str) -> String {
    format!(
        "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {{name: mesh-default, namespace: istio-system}}\nspec:\n  metrics:\n{metrics}"
    )
}

/// Waits until the client's sidecar reports what the case shows, or, for
/// a case with nothing to see, for its push (a few seconds).
fn wait_for(bed: &Bed, url: &str, case: &Case) {
    let Some(shows) = case.shows else {
        std::thread::sleep(Duration::from_secs(3));
        return;
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let _ = bed.pod("client").output("curl", &["-s", "-m", "5", url]);
        let (_, stats) = bed.curl("client", "http://127.0.0.1:15090/stats/prometheus");
        if stats.contains(shows) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the sidecars never held {}",
            case.name
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

pub fn metrics(bed: &Bed, s: &Settings) -> Vec<Table> {
    let path = mesh_path(bed);
    let file = bed.config_file("telemetry.yaml");
    let pod = bed.pod(path.pod);
    let proxies = [bed.client_proxy, bed.server_proxy];
    let mut results: Vec<(Value, f64)> = Vec::new();
    for case in &CASES {
        match case.metrics {
            Some(metrics) => std::fs::write(&file, telemetry(metrics)).expect("Telemetry"),
            None => {
                let _ = std::fs::remove_file(&file);
            }
        }
        wait_for(bed, &path.url, case);
        results.push(costed_run(pod, &path.url, s, &[], &proxies, || {}));
    }
    let _ = std::fs::remove_file(&file);
    let mut table = Table::new(
        format!(
            "Metrics cost, both sidecars: HTTP/1.1 through two mTLS sidecars, {} rps, {} connections, {} s",
            s.rps, s.connections, s.seconds
        ),
        &[
            "metrics",
            "p50 ms",
            "p99 ms",
            "both sidecars' CPU s per 1,000 requests",
            "CPU added",
            "non-200",
        ],
    );
    let base = results[0].1;
    for (case, (r, cost)) in CASES.iter().zip(&results) {
        let mut cells = cost_cells(case.name, r, *cost, base);
        cells.push(format!("{}", r["errors"].as_f64().unwrap_or(0.0)));
        table.row(
            cells,
            json!({"case": case.name, "cpu_s_per_1000": cost, "added_percent": added_percent(*cost, base), "result": r}),
        );
    }
    table.note("A mesh-wide Telemetry's `metrics` (Istio's Customizing Istio Metrics task: `request_host` from `request.host`, `user_agent` from the `user-agent` header, `response_flags` removed, on `REQUEST_COUNT`), against Istio's standard metrics, in one run; each case replaces the last and the run starts once the sidecars hold it. Expressions are evaluated once per request, on both sidecars, and only requests on a chain whose `istio.stats` changes something leave the fast path.");
    vec![table]
}

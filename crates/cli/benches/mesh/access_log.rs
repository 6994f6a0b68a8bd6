//! What access logging costs: the latency scenario's fixed rate through two
//! mTLS sidecars with no log, Istio's text format and Istio's JSON format,
//! both sidecars writing to a real file (as a container's stdout is one).

use std::time::Duration;

use serde_json::{Value, json};

use crate::bed::Bed;
use crate::report::Table;
use crate::scenarios::{Settings, added_percent, cost_cells, costed_run, mesh_path};

struct Case {
    name: &'static str,
    /// The mesh config's access-log lines; empty: no log.
    mesh: &'static str,
    /// What a fresh line of the log starts with once the case is in place.
    line_starts: Option<char>,
}

const CASES: [Case; 3] = [
    Case {
        name: "no access log",
        mesh: "",
        line_starts: None,
    },
    Case {
        name: "Istio's text format",
        mesh: "accessLogEncoding: TEXT",
        line_starts: Some('['),
    },
    Case {
        name: "Istio's JSON format",
        mesh: "accessLogEncoding: JSON",
        line_starts: Some('{'),
    },
];

fn mesh_config(file: &std::path::Path, case: &Case) -> String {
    let log = if case.mesh.is_empty() {
        String::new()
    } else {
        format!("    accessLogFile: {}\n    {}\n", file.display(), case.mesh)
    };
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: istio, namespace: istio-system}}\ndata:\n  mesh: |\n    connectTimeout: 10s\n{log}"
    )
}

/// Waits until both sidecars hold the case: a probe request's lines are in
/// the case's format (or, with no log, the file stops growing).
fn wait_for(bed: &Bed, url: &str, log: &std::path::Path, case: &Case) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let _ = std::fs::write(log, "");
        bed.curl("client", url);
        std::thread::sleep(Duration::from_millis(400));
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let settled = match case.line_starts {
            None => lines.is_empty(),
            Some(first) => lines.len() >= 2 && lines.iter().all(|l| l.starts_with(first)),
        };
        if settled {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the sidecars never logged as {}: {text:?}",
            case.name
        );
    }
}

pub fn access_log(bed: &Bed, s: &Settings) -> Vec<Table> {
    let path = mesh_path(bed);
    let log = std::env::temp_dir().join(format!("oxmesh-bench-access-{}.log", std::process::id()));
    std::fs::write(&log, "").expect("log file");
    // The sidecars run as uid 1337.
    let _ = std::process::Command::new("chown")
        .args(["1337:1337"])
        .arg(&log)
        .status();
    let config = bed.config_file("istio.yaml");
    let pod = bed.pod(path.pod);
    let proxies = [bed.client_proxy, bed.server_proxy];
    let mut results: Vec<(Value, f64, u64)> = Vec::new();
    for case in &CASES {
        std::fs::write(&config, mesh_config(&log, case)).expect("istio.yaml");
        wait_for(bed, &path.url, &log, case);
        let (r, cost) = costed_run(pod, &path.url, s, &[], &proxies, || {
            let _ = std::fs::write(&log, "");
        });
        let bytes = std::fs::metadata(&log).map_or(0, |m| m.len());
        results.push((r, cost, bytes));
    }
    let _ = std::fs::remove_file(&config);
    let _ = std::fs::remove_file(&log);
    let mut table = Table::new(
        format!(
            "Access log cost, both sidecars: HTTP/1.1 through two mTLS sidecars, {} rps, {} connections, {} s",
            s.rps, s.connections, s.seconds
        ),
        &[
            "access log",
            "p50 ms",
            "p99 ms",
            "both sidecars' CPU s per 1,000 requests",
            "CPU added",
            "bytes logged per request",
            "non-200",
        ],
    );
    let count = |r: &Value| r["count"].as_f64().unwrap_or(0.0).max(1.0);
    let base = results[0].1;
    for (case, result) in CASES.iter().zip(&results) {
        let (r, cost) = (&result.0, result.1);
        let added = added_percent(cost, base);
        let per_request = result.2 as f64 / count(r);
        let mut cells = cost_cells(case.name, r, cost, base);
        cells.push(format!("{per_request:.0}"));
        cells.push(format!("{}", r["errors"].as_f64().unwrap_or(0.0)));
        table.row(
            cells,
            json!({"case": case.name, "cpu_s_per_1000": cost, "added_percent": added, "bytes_per_request": per_request, "result": r}),
        );
    }
    table.note("The mesh config's accessLogFile (a file on the host's disk, both sidecars appending to it) in each encoding, against none, in one run; each case replaces the last and the run starts once both sidecars log in its format. Each request is logged twice, once per sidecar.");
    vec![table]
}

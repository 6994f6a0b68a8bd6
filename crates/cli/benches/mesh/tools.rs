//! The standard load tools, run inside a pod with a hard time limit, and what
//! their output says. oha drives fixed-rate latency, wrk HTTP/1.1 saturation,
//! h2load HTTP/2 saturation, iperf3 bulk TCP.

use std::process::Command;

use oxmesh_testbed::Netns;
use serde_json::{Value, json};

/// Where `oha` is: `OXMESH_OHA`, else the copy `bench/run` installs, else PATH.
fn oha() -> String {
    if let Ok(path) = std::env::var("OXMESH_OHA") {
        return path;
    }
    let installed = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../target/bench-tools/bin/oha"
    );
    if std::path::Path::new(installed).exists() {
        installed.to_owned()
    } else {
        "oha".to_owned()
    }
}

/// Runs `program args` in `pod`, killed after `limit` seconds; its stdout.
fn run(pod: &Netns, limit: u64, program: &str, args: &[String]) -> String {
    let mut command: Command = pod.command("timeout");
    command
        .arg("--kill-after=5")
        .arg(limit.to_string())
        .arg(program)
        .args(args);
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    if !out.status.success() {
        eprintln!(
            "{program} {args:?} exited {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// oha at a fixed `rps` over `connections` keep-alive connections, latency
/// corrected for coordinated omission. Percentiles in µs.
pub fn fixed_rate(pod: &Netns, url: &str, rps: u64, connections: usize, seconds: u64) -> Value {
    fixed_rate_with(pod, url, rps, connections, seconds, &[])
}

/// [`fixed_rate`] with request headers (`Name: value`).
pub fn fixed_rate_with(
    pod: &Netns,
    url: &str,
    rps: u64,
    connections: usize,
    seconds: u64,
    headers: &[String],
) -> Value {
    let headers = headers.iter().flat_map(|h| ["-H".to_owned(), h.clone()]);
    let args: Vec<String> = [
        "--no-tui",
        "--output-format",
        "json",
        "--latency-correction",
        "-q",
        &rps.to_string(),
        "-c",
        &connections.to_string(),
        "-z",
        &format!("{seconds}s"),
        url,
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .chain(headers)
    .collect();
    let text = run(pod, seconds + 30, &oha(), &args);
    let report: Value = serde_json::from_str(text.trim()).unwrap_or(Value::Null);
    let secs = |key: &str| report["latencyPercentiles"][key].as_f64().unwrap_or(0.0) * 1e6;
    let ok = report["statusCodeDistribution"]["200"]
        .as_u64()
        .unwrap_or(0);
    let total: u64 = report["statusCodeDistribution"]
        .as_object()
        .map(|codes| codes.values().filter_map(Value::as_u64).sum())
        .unwrap_or(0);
    // oha counts the requests still in flight when the duration ends as
    // "aborted due to deadline": those are not failures.
    let errors: u64 = report["errorDistribution"]
        .as_object()
        .map(|e| {
            e.iter()
                .filter(|(kind, _)| !kind.contains("deadline"))
                .filter_map(|(_, n)| n.as_u64())
                .sum()
        })
        .unwrap_or(0);
    json!({
        "count": ok, "errors": errors + total - ok,
        "rps": report["summary"]["requestsPerSec"].as_f64().unwrap_or(0.0),
        "p50": secs("p50"), "p90": secs("p90"), "p99": secs("p99"), "p999": secs("p99.9"),
        "error_kinds": report["errorDistribution"],
    })
}

/// wrk: as many HTTP/1.1 requests as `connections` connections carry.
pub fn http1_saturation(pod: &Netns, url: &str, connections: usize, seconds: u64) -> Value {
    let args: Vec<String> = vec![
        "-t1".into(),
        format!("-c{connections}"),
        format!("-d{seconds}s"),
        "--latency".into(),
        url.into(),
    ];
    let text = run(pod, seconds + 30, "wrk", &args);
    let rps = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    let errors: u64 = text
        .lines()
        .filter(|l| l.contains("Non-2xx") || l.contains("Socket errors"))
        .flat_map(|l| l.split(|c: char| !c.is_ascii_digit()))
        .filter_map(|n| n.parse::<u64>().ok())
        .sum();
    let percentile = |label: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(label))
            .and_then(|v| duration_micros(v.trim()))
            .unwrap_or(0.0)
    };
    json!({"rps": rps, "errors": errors, "p50": percentile("50%"), "p99": percentile("99%")})
}

/// wrk's "1.23ms", "456.00us", "1.02s" in µs.
fn duration_micros(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().ok()?;
    let scale = match unit {
        "us" => 1.0,
        "ms" => 1e3,
        "s" => 1e6,
        "m" => 60e6,
        _ => return None,
    };
    Some(value * scale)
}

/// h2load: HTTP/2 with prior knowledge, `connections` × `streams` in flight.
pub fn http2_saturation(
    pod: &Netns,
    url: &str,
    connections: usize,
    streams: usize,
    seconds: u64,
) -> Value {
    let args: Vec<String> = vec![
        "-c".into(),
        connections.to_string(),
        "-m".into(),
        streams.to_string(),
        "-t1".into(),
        "-D".into(),
        seconds.to_string(),
        url.into(),
    ];
    let text = run(pod, seconds + 30, "h2load", &args);
    let rps = text
        .lines()
        .find(|l| l.starts_with("finished in"))
        .and_then(|l| l.split(", ").nth(1))
        .and_then(|v| v.trim_end_matches(" req/s").parse::<f64>().ok())
        .unwrap_or(0.0);
    let count = |label: &str| {
        text.lines()
            .find(|l| l.starts_with("requests:"))
            .and_then(|l| {
                l.split(", ")
                    .find(|part| part.ends_with(label))
                    .and_then(|part| part.split_whitespace().next())
                    .and_then(|n| n.trim_start_matches("requests:").trim().parse::<u64>().ok())
            })
            .unwrap_or(0)
    };
    json!({"rps": rps, "succeeded": count("succeeded"), "errors": count("failed") + count("errored")})
}

/// iperf3: one TCP stream from `pod` to `host` for `seconds`, MB/s received.
pub fn bulk(pod: &Netns, host: &str, port: u16, seconds: u64) -> Value {
    let args: Vec<String> = vec![
        "-c".into(),
        host.into(),
        "-p".into(),
        port.to_string(),
        "-t".into(),
        seconds.to_string(),
        "-J".into(),
    ];
    let text = run(pod, seconds + 30, "iperf3", &args);
    let report: Value = serde_json::from_str(text.trim()).unwrap_or(Value::Null);
    let bits = report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0);
    json!({"mb_per_s": bits / 8e6})
}

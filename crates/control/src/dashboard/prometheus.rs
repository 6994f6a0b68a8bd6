//! The dashboard's traffic from a Prometheus that scrapes the mesh (as
//! Istio's addon configures it): the growth of Istio's standard metrics over
//! the window, by the labels the graph needs, read through Prometheus's
//! HTTP API and counted as the proxies' own readings are.

use std::borrow::Cow;
use std::time::Duration;

use serde_json::Value;

use super::exposition::Sample;
use super::traffic::Totals;

const TIMEOUT: Duration = Duration::from_secs(5);
const MAX_ANSWER: usize = 32 * 1024 * 1024;

/// The labels an edge is told by (see `traffic::edge_key`).
const EDGE: &str = "reporter,source_canonical_service,source_workload_namespace,destination_canonical_service,destination_workload_namespace,destination_service_name,destination_service_namespace,destination_service,connection_security_policy";

/// Every edge's growth over `window`.
pub async fn graph(url: &str, window: Duration) -> Result<Totals, String> {
    let range = format!("{}s", window.as_secs().max(1));
    let queries = [
        (
            "istio_requests_total",
            format!(
                "sum by ({EDGE},response_code,request_protocol) (increase(istio_requests_total[{range}]))"
            ),
        ),
        (
            "istio_request_duration_milliseconds_bucket",
            format!(
                "sum by ({EDGE},le) (increase(istio_request_duration_milliseconds_bucket[{range}]))"
            ),
        ),
        (
            "istio_tcp_connections_opened_total",
            format!("sum by ({EDGE}) (increase(istio_tcp_connections_opened_total[{range}]))"),
        ),
        (
            "istio_tcp_sent_bytes_total",
            format!("sum by ({EDGE}) (increase(istio_tcp_sent_bytes_total[{range}]))"),
        ),
        (
            "istio_tcp_received_bytes_total",
            format!("sum by ({EDGE}) (increase(istio_tcp_received_bytes_total[{range}]))"),
        ),
    ];
    let mut totals = Totals::default();
    for (metric, promql) in &queries {
        let answer = query(url, promql).await?;
        for result in answer["data"]["result"].as_array().into_iter().flatten() {
            let labels: Vec<(&str, Cow<'_, str>)> = result["metric"]
                .as_object()
                .into_iter()
                .flatten()
                .filter_map(|(k, v)| Some((k.as_str(), Cow::Borrowed(v.as_str()?))))
                .collect();
            let value = result["value"][1]
                .as_str()
                .and_then(|v| v.parse::<f64>().ok())
                .filter(|v| v.is_finite());
            if let Some(value) = value {
                totals.add(&Sample::new(metric, labels, value));
            }
        }
    }
    Ok(totals)
}

/// How far back a service's signals go, and their resolution.
const SERIES_RANGE: Duration = Duration::from_secs(600);
const SERIES_STEP: Duration = Duration::from_secs(10);

/// A node's (`name.namespace`) golden signals over the last ten minutes, as
/// the callee's proxies reported them: the points the drill-down draws.
pub async fn series(url: &str, id: &str) -> Result<Vec<Value>, String> {
    let (name, namespace) = id.rsplit_once('.').unwrap_or((id, ""));
    let selector = format!(
        r#"reporter="destination",destination_canonical_service="{}",destination_workload_namespace="{}""#,
        escape(name),
        escape(namespace)
    );
    let signals = [
        format!("sum(rate(istio_requests_total{{{selector}}}[1m]))"),
        format!(
            r#"sum(rate(istio_requests_total{{{selector},response_code=~"5.*|0"}}[1m])) / sum(rate(istio_requests_total{{{selector}}}[1m]))"#
        ),
        format!(
            "histogram_quantile(0.99, sum by (le) (rate(istio_request_duration_milliseconds_bucket{{{selector}}}[1m])))"
        ),
    ];
    let end = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let start = end.saturating_sub(SERIES_RANGE.as_secs());
    let mut points: std::collections::BTreeMap<u64, [Option<f64>; 3]> = Default::default();
    for (i, promql) in signals.iter().enumerate() {
        let path = format!(
            "/api/v1/query_range?query={}&start={start}&end={end}&step={}",
            encode(promql),
            SERIES_STEP.as_secs()
        );
        let answer = get(url, &path).await?;
        let values = answer["data"]["result"][0]["values"].as_array().cloned();
        for value in values.into_iter().flatten() {
            let at = value[0].as_f64().map_or(0, |t| t as u64);
            let v = value[1].as_str().and_then(|v| v.parse::<f64>().ok());
            points.entry(at).or_default()[i] = v.filter(|v| v.is_finite());
        }
    }
    Ok(points
        .into_iter()
        .map(|(t, [rps, errors, p99])| {
            serde_json::json!({
                "t": t,
                "requestsPerSecond": rps.unwrap_or(0.0),
                "errorRate": errors.unwrap_or(0.0),
                "p99Ms": p99,
            })
        })
        .collect())
}

/// A PromQL label value, quoted safely.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"")
}

/// One instant query.
async fn query(url: &str, promql: &str) -> Result<Value, String> {
    get(url, &format!("/api/v1/query?query={}", encode(promql))).await
}

/// One call of Prometheus's HTTP API; its own error when it refuses it.
async fn get(url: &str, path: &str) -> Result<Value, String> {
    let base = url.trim_end_matches('/');
    let body = crate::http_get::get_url(
        &format!("{base}{path}"),
        "application/json",
        MAX_ANSWER,
        TIMEOUT,
    )
    .await
    .map_err(|e| format!("Prometheus at {url}: {e}"))?;
    let answer: Value =
        serde_json::from_slice(&body).map_err(|e| format!("Prometheus at {url}: {e}"))?;
    if answer["status"] != "success" {
        return Err(format!("Prometheus at {url}: {}", answer["error"]));
    }
    Ok(answer)
}

/// Percent-encodes everything but letters and digits.
fn encode(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_quoted() {
        assert_eq!(escape(r#"a"b\c"#), r#"a\"b\\c"#);
    }

    #[test]
    fn queries_are_encoded_for_the_url() {
        assert_eq!(
            encode(r#"sum(rate(x{a="b"}[1m]))"#),
            "sum%28rate%28x%7Ba%3D%22b%22%7D%5B1m%5D%29%29"
        );
    }
}

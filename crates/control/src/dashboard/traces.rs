//! Recent traces for the dashboard's drill-down, from the mesh's Zipkin
//! (the `zipkin` extension provider's service, which answers Zipkin's query
//! API on the port spans go to): the last traces through a service, each
//! summed up as its root operation, span count, services and duration.

use std::collections::BTreeSet;
use std::time::Duration;

use oxmesh_config::extension_provider::ProviderKind;
use serde_json::{Value, json};

use crate::mesh_config::MeshConfig;

const TIMEOUT: Duration = Duration::from_secs(3);
const MAX_ANSWER: usize = 8 * 1024 * 1024;
const LIMIT: usize = 10;
/// What a query value escapes: all but RFC 3986's unreserved characters.
const UNRESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The query API of the mesh's first Zipkin provider: `http://<host>:<port>`
/// (a `<namespace>/<host>` service is its host).
pub fn zipkin_url(mesh: &MeshConfig) -> Option<String> {
    mesh.extension_providers
        .iter()
        .find_map(|p| match &p.kind {
            ProviderKind::Zipkin(z) => Some(z),
            _ => None,
        })
        .map(|z| {
            let host = z.service.rsplit('/').next().unwrap_or(&z.service);
            format!("http://{host}:{}", z.port)
        })
}

/// The last traces through `service` (`<name>.<namespace>`, the services'
/// `service.name`), newest first.
pub async fn recent(url: &str, service: &str) -> Result<Vec<Value>, String> {
    let encoded = percent_encoding::utf8_percent_encode(service, UNRESERVED);
    let target = format!("{url}/api/v2/traces?serviceName={encoded}&limit={LIMIT}");
    let body = crate::http_get::get_url(&target, "application/json", MAX_ANSWER, TIMEOUT)
        .await
        .map_err(|e| format!("Zipkin at {url}: {e}"))?;
    let traces: Value =
        serde_json::from_slice(&body).map_err(|e| format!("Zipkin at {url}: {e}"))?;
    Ok(traces
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| summary(t.as_array()?))
        .collect())
}

/// One trace: its id, root operation, spans, services, start and duration.
fn summary(spans: &[Value]) -> Option<Value> {
    let first = spans.first()?;
    let start = spans.iter().filter_map(|s| s["timestamp"].as_u64()).min()?;
    let end = spans
        .iter()
        .filter_map(|s| Some(s["timestamp"].as_u64()? + s["duration"].as_u64().unwrap_or(0)))
        .max()
        .unwrap_or(start);
    let root = spans
        .iter()
        .find(|s| s["parentId"].as_str().is_none_or(str::is_empty))
        .unwrap_or(first);
    let services: BTreeSet<&str> = spans
        .iter()
        .filter_map(|s| s["localEndpoint"]["serviceName"].as_str())
        .collect();
    let errors = spans
        .iter()
        .filter(|s| s["tags"].get("error").is_some())
        .count();
    Some(json!({
        "traceId": first["traceId"],
        "root": root["name"],
        "spans": spans.len(),
        "errors": errors,
        "services": services,
        "startMicros": start,
        "durationMs": (end - start) as f64 / 1000.0,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trace_is_summed_up_from_its_spans() {
        let spans = serde_json::json!([
            {"traceId": "ab", "id": "2", "parentId": "1", "name": "details.default.svc.cluster.local:9080/*", "timestamp": 1_000_300, "duration": 200, "localEndpoint": {"serviceName": "details.default"}, "tags": {}},
            {"traceId": "ab", "id": "1", "name": "productpage.default.svc.cluster.local:9080/productpage", "timestamp": 1_000_000, "duration": 2_500, "localEndpoint": {"serviceName": "productpage.default"}, "tags": {"error": "true"}},
        ]);
        let summary = summary(spans.as_array().expect("spans")).expect("a trace");
        assert_eq!(
            summary["root"],
            "productpage.default.svc.cluster.local:9080/productpage"
        );
        assert_eq!(summary["spans"], 2);
        assert_eq!(summary["errors"], 1);
        assert_eq!(summary["durationMs"], 2.5);
        assert_eq!(
            summary["services"],
            json!(["details.default", "productpage.default"])
        );
    }
}

//! Spans as Zipkin's v2 JSON (`POST /api/v2/spans`): ids in hex, times in
//! microseconds, the workload's service name on every span's local endpoint.

use std::net::IpAddr;

use serde_json::{Map, Value, json};

use super::span::{Kind, Span};

pub fn json(service_name: &str, ip: Option<IpAddr>, spans: &[Span]) -> Vec<u8> {
    let mut endpoint = Map::new();
    endpoint.insert("serviceName".to_owned(), json!(service_name));
    match ip {
        Some(IpAddr::V4(v4)) => {
            endpoint.insert("ipv4".to_owned(), json!(v4.to_string()));
        }
        Some(IpAddr::V6(v6)) => {
            endpoint.insert("ipv6".to_owned(), json!(v6.to_string()));
        }
        None => {}
    }
    let endpoint = Value::Object(endpoint);
    let list: Vec<Value> = spans.iter().map(|s| one(s, &endpoint)).collect();
    serde_json::to_vec(&list).unwrap_or_default()
}

fn one(span: &Span, endpoint: &Value) -> Value {
    let id = u128::from_be_bytes(span.trace_id.to_bytes());
    // A 64-bit trace (the high half zero) keeps its 16-digit form.
    let trace_id = if id >> 64 == 0 {
        format!("{:016x}", id as u64)
    } else {
        format!("{id:032x}")
    };
    let (start, end) = span.start_end_nanos();
    let tags: Map<String, Value> = span
        .tags
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    let mut out = Map::new();
    out.insert("traceId".to_owned(), json!(trace_id));
    out.insert("id".to_owned(), json!(span.span_id.to_string()));
    if let Some(parent) = span.parent_id {
        out.insert("parentId".to_owned(), json!(parent.to_string()));
    }
    out.insert("name".to_owned(), json!(span.name));
    let kind = match span.kind {
        Kind::Server => "SERVER",
        Kind::Client => "CLIENT",
    };
    out.insert("kind".to_owned(), json!(kind));
    out.insert("timestamp".to_owned(), json!(start / 1_000));
    out.insert("duration".to_owned(), json!((end - start) / 1_000));
    out.insert("localEndpoint".to_owned(), endpoint.clone());
    out.insert("tags".to_owned(), Value::Object(tags));
    Value::Object(out)
}

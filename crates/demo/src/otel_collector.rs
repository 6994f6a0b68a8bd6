//! A trace collector for the local mesh, in place of the OpenTelemetry
//! Collector of Istio's sample and of its Zipkin addon: it takes OTLP over
//! gRPC (`TraceService/Export` on h2c) and over HTTP (`POST /v1/traces`,
//! protobuf), and Zipkin's v2 JSON (`POST /api/v2/spans`), and prints each
//! span as one JSON line on stdout (trace and span ids in hex, the parent,
//! name, kind, the service and the string attributes), so `oxmesh logs`
//! shows the traces. The last spans are kept for Zipkin's query API on the
//! Zipkin port (`GET /api/v2/traces?serviceName=&limit=`,
//! `/api/v2/services`), which the dashboard reads for recent traces.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use prost::Message;
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;

const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
/// Reports beyond this are refused.
const MAX_REPORT: usize = 4 * 1024 * 1024;
/// Spans kept for queries; older ones go first.
const KEPT: usize = 10_000;

/// The spans received last, as printed.
type Store = Arc<Mutex<VecDeque<Value>>>;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Port {
    OtlpGrpc,
    OtlpHttp,
    Zipkin,
}

pub async fn run(grpc_port: u16, http_port: u16, zipkin_port: u16) -> std::io::Result<()> {
    let bind = |port: u16| TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port)));
    let (grpc, http, zipkin) = (
        bind(grpc_port).await?,
        bind(http_port).await?,
        bind(zipkin_port).await?,
    );
    let store = Store::default();
    tokio::try_join!(
        accept(grpc, Port::OtlpGrpc, store.clone()),
        accept(http, Port::OtlpHttp, store.clone()),
        accept(zipkin, Port::Zipkin, store),
    )?;
    Ok(())
}

async fn accept(listener: TcpListener, port: Port, store: Store) -> std::io::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        let store = store.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let store = store.clone();
                async move { Ok::<_, Infallible>(handle(req, port, &store).await) }
            });
            let io = TokioIo::new(stream);
            let served = if port == Port::OtlpGrpc {
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(io, service)
                    .await
            } else {
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await
            };
            if let Err(e) = served {
                tracing::debug!(error = %e, "collector connection ended");
            }
        });
    }
}

async fn handle(req: Request<Incoming>, port: Port, store: &Store) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    match (port, req.method(), path.as_str()) {
        (Port::OtlpGrpc, _, EXPORT_PATH) | (Port::OtlpHttp, _, "/v1/traces") => {
            otlp(req, port == Port::OtlpGrpc, store).await
        }
        (Port::Zipkin, &Method::POST, "/api/v2/spans") => zipkin_spans(req, store).await,
        (Port::Zipkin, &Method::GET, "/api/v2/traces") => {
            let query = req.uri().query().unwrap_or_default();
            json_response(&traces(store, query))
        }
        (Port::Zipkin, &Method::GET, "/api/v2/services") => json_response(&services(store)),
        _ => status(StatusCode::NOT_FOUND),
    }
}

async fn otlp(req: Request<Incoming>, grpc: bool, store: &Store) -> Response<Full<Bytes>> {
    let Ok(body) = Limited::new(req.into_body(), MAX_REPORT).collect().await else {
        return status(StatusCode::PAYLOAD_TOO_LARGE);
    };
    let body = body.to_bytes();
    // A gRPC message comes after a 5-byte frame header.
    let message = if grpc { body.get(5..) } else { Some(&body[..]) };
    let Some(request) = message.and_then(|m| ExportTraceServiceRequest::decode(m).ok()) else {
        return status(StatusCode::BAD_REQUEST);
    };
    keep(store, otlp_spans(&request));
    if grpc {
        // An empty ExportTraceServiceResponse, OK in the headers.
        Response::builder()
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .header("grpc-status", "0")
            .body(Full::new(Bytes::from_static(&[0, 0, 0, 0, 0])))
            .unwrap_or_else(|_| status(StatusCode::INTERNAL_SERVER_ERROR))
    } else {
        status(StatusCode::OK)
    }
}

/// Zipkin's v2 JSON: an array of spans.
async fn zipkin_spans(req: Request<Incoming>, store: &Store) -> Response<Full<Bytes>> {
    let Ok(body) = Limited::new(req.into_body(), MAX_REPORT).collect().await else {
        return status(StatusCode::PAYLOAD_TOO_LARGE);
    };
    let Ok(Value::Array(spans)) = serde_json::from_slice::<Value>(&body.to_bytes()) else {
        return status(StatusCode::BAD_REQUEST);
    };
    keep(store, spans.iter().map(from_zipkin).collect());
    status(StatusCode::ACCEPTED)
}

/// Prints the spans and keeps them for queries.
fn keep(store: &Store, spans: Vec<Value>) {
    let mut out = std::io::stdout().lock();
    for span in &spans {
        let _ = writeln!(out, "{span}");
    }
    let _ = out.flush();
    let mut kept = store
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    kept.extend(spans);
    while kept.len() > KEPT {
        kept.pop_front();
    }
}

fn json_response(value: &Value) -> Response<Full<Bytes>> {
    Response::builder()
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(value.to_string())))
        .unwrap_or_else(|_| status(StatusCode::INTERNAL_SERVER_ERROR))
}

/// Zipkin's `GET /api/v2/traces`: the latest `limit` (10) traces with a span
/// of `serviceName`, each its spans in Zipkin's v2 form.
fn traces(store: &Store, query: &str) -> Value {
    let param = |name: &str| {
        query
            .split('&')
            .filter_map(|p| p.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| {
                percent_encoding::percent_decode_str(v)
                    .decode_utf8_lossy()
                    .into_owned()
            })
    };
    let service = param("serviceName").map(|s| s.to_ascii_lowercase());
    let limit = param("limit")
        .and_then(|l| l.parse().ok())
        .unwrap_or(10usize);
    let kept = store
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut by_trace: BTreeMap<&str, Vec<&Value>> = BTreeMap::new();
    for span in kept.iter() {
        by_trace
            .entry(span["traceId"].as_str().unwrap_or_default())
            .or_default()
            .push(span);
    }
    let mut traces: Vec<(u64, Vec<Value>)> = by_trace
        .into_values()
        .filter(|spans| {
            service.as_deref().is_none_or(|wanted| {
                spans.iter().any(|s| {
                    s["service"]
                        .as_str()
                        .is_some_and(|n| n.eq_ignore_ascii_case(wanted))
                })
            })
        })
        .map(|spans| {
            let latest = spans
                .iter()
                .filter_map(|s| s["endTimeUnixNano"].as_u64())
                .max();
            (
                latest.unwrap_or(0),
                spans.into_iter().map(to_zipkin).collect(),
            )
        })
        .collect();
    traces.sort_by_key(|t| std::cmp::Reverse(t.0));
    Value::Array(
        traces
            .into_iter()
            .take(limit)
            .map(|(_, t)| Value::Array(t))
            .collect(),
    )
}

fn services(store: &Store) -> Value {
    let kept = store
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let names: std::collections::BTreeSet<&str> =
        kept.iter().filter_map(|s| s["service"].as_str()).collect();
    json!(names)
}

/// A kept span in Zipkin's v2 JSON (times in microseconds).
fn to_zipkin(span: &Value) -> Value {
    let start = span["startTimeUnixNano"].as_u64().unwrap_or(0);
    let end = span["endTimeUnixNano"].as_u64().unwrap_or(start);
    let mut zipkin = json!({
        "traceId": span["traceId"],
        "id": span["spanId"],
        "name": span["name"],
        "kind": span["kind"],
        "timestamp": start / 1000,
        "duration": end.saturating_sub(start) / 1000,
        "localEndpoint": {"serviceName": span["service"]},
        "tags": span["attributes"],
    });
    if span["parentSpanId"].as_str().is_some_and(|p| !p.is_empty()) {
        zipkin["parentId"] = span["parentSpanId"].clone();
    }
    zipkin
}

/// A Zipkin v2 span as the collector prints spans.
fn from_zipkin(span: &Value) -> Value {
    let start = span["timestamp"].as_u64().unwrap_or(0) * 1000;
    let duration = span["duration"].as_u64().unwrap_or(0) * 1000;
    json!({
        "traceId": span["traceId"],
        "spanId": span["id"],
        "parentSpanId": span["parentId"].as_str().unwrap_or(""),
        "name": span["name"],
        "kind": span["kind"],
        "service": span["localEndpoint"]["serviceName"],
        "startTimeUnixNano": start,
        "endTimeUnixNano": start + duration,
        "error": span["tags"].get("error").is_some(),
        "attributes": span["tags"],
    })
}

fn status(code: StatusCode) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = code;
    response
}

/// OTLP's spans as the collector prints them.
fn otlp_spans(request: &ExportTraceServiceRequest) -> Vec<Value> {
    let mut spans = Vec::new();
    for resource in &request.resource_spans {
        let attributes = resource
            .resource
            .as_ref()
            .map(|r| strings(&r.attributes))
            .unwrap_or_default();
        let service = attributes
            .get("service.name")
            .cloned()
            .unwrap_or(Value::Null);
        for span in resource.scope_spans.iter().flat_map(|s| &s.spans) {
            spans.push(json!({
                "traceId": hex(&span.trace_id),
                "spanId": hex(&span.span_id),
                "parentSpanId": hex(&span.parent_span_id),
                "name": span.name,
                "kind": kind(span.kind),
                "service": service,
                "startTimeUnixNano": span.start_time_unix_nano,
                "endTimeUnixNano": span.end_time_unix_nano,
                "error": span.status.as_ref().is_some_and(|s| s.code == 2),
                "attributes": Value::Object(strings(&span.attributes)),
            }));
        }
    }
    spans
}

fn strings(attributes: &[KeyValue]) -> Map<String, Value> {
    attributes
        .iter()
        .filter_map(|kv| match kv.value.as_ref()?.value.as_ref()? {
            any_value::Value::StringValue(s) => Some((kv.key.clone(), json!(s))),
            _ => None,
        })
        .collect()
}

fn kind(kind: i32) -> &'static str {
    match kind {
        2 => "SERVER",
        3 => "CLIENT",
        4 => "PRODUCER",
        5 => "CONSUMER",
        1 => "INTERNAL",
        _ => "UNSPECIFIED",
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

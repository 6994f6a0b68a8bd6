//! A trace collector for the local mesh, in place of the OpenTelemetry
//! Collector of Istio's sample: it takes OTLP over gRPC (`TraceService/Export`
//! on h2c) and over HTTP (`POST /v1/traces`, protobuf) and prints each span as
//! one JSON line on stdout (trace and span ids in hex, the parent, name,
//! kind, the resource's `service.name` and the string attributes), so
//! `oxmesh logs` shows the traces.

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
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

pub async fn run(grpc_port: u16, http_port: u16) -> std::io::Result<()> {
    let grpc = TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], grpc_port))).await?;
    let http = TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], http_port))).await?;
    tokio::try_join!(accept(grpc, true), accept(http, false))?;
    Ok(())
}

async fn accept(listener: TcpListener, grpc: bool) -> std::io::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| async move {
                Ok::<_, Infallible>(handle(req, grpc).await)
            });
            let io = TokioIo::new(stream);
            let served = if grpc {
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

async fn handle(req: Request<Incoming>, grpc: bool) -> Response<Full<Bytes>> {
    let expected = if grpc { EXPORT_PATH } else { "/v1/traces" };
    if req.uri().path() != expected {
        return status(StatusCode::NOT_FOUND);
    }
    let Ok(body) = Limited::new(req.into_body(), MAX_REPORT).collect().await else {
        return status(StatusCode::PAYLOAD_TOO_LARGE);
    };
    let body = body.to_bytes();
    // A gRPC message comes after a 5-byte frame header.
    let message = if grpc { body.get(5..) } else { Some(&body[..]) };
    let Some(request) = message.and_then(|m| ExportTraceServiceRequest::decode(m).ok()) else {
        return status(StatusCode::BAD_REQUEST);
    };
    print_spans(&request);
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

fn status(code: StatusCode) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = code;
    response
}

fn print_spans(request: &ExportTraceServiceRequest) {
    let mut out = std::io::stdout().lock();
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
            let line = json!({
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
            });
            let _ = writeln!(out, "{line}");
        }
    }
    let _ = out.flush();
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

//! Spans as an OTLP `ExportTraceServiceRequest`: one resource (the
//! workload's `service.name`), one scope, every tag a string attribute, and
//! an ERROR status by Envoy's rules.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    ResourceSpans, ScopeSpans, Span as OtlpSpan, Status, span::SpanKind, status::StatusCode,
};

use super::span::{Kind, Span};

/// The gRPC method a collector serves.
pub const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

const SDK_NAME: &str = "oxmesh";

pub fn export_request(service_name: &str, spans: &[Span]) -> ExportTraceServiceRequest {
    let resource = Resource {
        attributes: vec![
            attribute("service.name", service_name),
            attribute("telemetry.sdk.language", "rust"),
            attribute("telemetry.sdk.name", SDK_NAME),
            attribute("telemetry.sdk.version", env!("CARGO_PKG_VERSION")),
        ],
        ..Resource::default()
    };
    let scope = InstrumentationScope {
        name: SDK_NAME.to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        ..InstrumentationScope::default()
    };
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(resource),
            scope_spans: vec![ScopeSpans {
                scope: Some(scope),
                spans: spans.iter().map(otlp_span).collect(),
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

fn otlp_span(span: &Span) -> OtlpSpan {
    let (start, end) = span.start_end_nanos();
    let kind = match span.kind {
        Kind::Server => SpanKind::Server,
        Kind::Client => SpanKind::Client,
    };
    let status = span.is_error().then(|| Status {
        code: StatusCode::Error as i32,
        message: String::new(),
    });
    OtlpSpan {
        trace_id: span.trace_id.to_bytes().to_vec(),
        span_id: span.span_id.to_bytes().to_vec(),
        trace_state: span
            .trace_state
            .as_ref()
            .and_then(|s| s.to_str().ok())
            .unwrap_or_default()
            .to_owned(),
        parent_span_id: span
            .parent_id
            .map(|p| p.to_bytes().to_vec())
            .unwrap_or_default(),
        name: span.name.clone(),
        kind: kind as i32,
        start_time_unix_nano: start,
        end_time_unix_nano: end,
        attributes: span
            .tags
            .iter()
            .map(|(key, value)| attribute(key, value))
            .collect(),
        status,
        ..OtlpSpan::default()
    }
}

fn attribute(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_owned())),
        }),
        ..KeyValue::default()
    }
}

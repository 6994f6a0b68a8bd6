//! A request's span: decided, given its place in the trace and passed on to
//! the upstream when the request comes in (after `x-request-id` is set), named
//! by the route it takes, and reported when its response ends.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use http::{HeaderMap, HeaderName, HeaderValue, Request};
use opentelemetry::trace::SpanId;

use super::Downstream;
use crate::config::listener::Direction;
use crate::config::tracing::{CustomTag, Propagation, Tracing};
use crate::context::Context;
use crate::trace::context::{self as trace_context, Extracted, SpanContext};
use crate::trace::sampling::{self, FORCE_TRACE};
use crate::trace::span::Tags;
use crate::trace::{Kind, Reporter, Span};

/// The client's route name for the server's span (Envoy's header).
pub static DECORATOR_OPERATION: HeaderName = HeaderName::from_static("x-envoy-decorator-operation");
static DOWNSTREAM_CLUSTER: HeaderName =
    HeaderName::from_static("x-envoy-downstream-service-cluster");
static FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// A sampled request's span until its response ends.
pub struct OpenSpan {
    reporter: Arc<Reporter>,
    context: SpanContext,
    parent: Option<SpanId>,
    kind: Kind,
    /// The name so far: the caller's operation on the server's side, else
    /// the tracer's default until a route's decorator names it.
    name: String,
    /// The server's name came from the client and stays.
    name_fixed: bool,
    start: SystemTime,
    started: Instant,
    tags: Tags,
    http_status: u16,
}

/// Decides for `req`, marks its `x-request-id` and writes the trace context
/// for the upstream; the span to record when the request is sampled and the
/// connection manager has a tracer.
pub(super) fn begin<B>(
    tracing: &Tracing,
    req: &mut Request<B>,
    downstream: &Downstream,
    ctx: &Context,
    authority: &str,
) -> Option<Box<OpenSpan>> {
    let headers = req.headers_mut();
    // An internal header: a client at the edge may not force a trace.
    if downstream.edge {
        headers.remove(&FORCE_TRACE);
    }
    let roll = (crate::balance::random_u64() % u64::from(sampling::Sampling::ALL)) as u32;
    let decision = sampling::decide(headers, &tracing.sampling, roll);
    let tracer = tracing.tracer.as_ref()?;
    let extracted = match tracer.propagation {
        Propagation::W3c => trace_context::extract_w3c(headers),
        Propagation::B3 { w3c } => trace_context::extract_b3(headers, w3c, decision.traced()),
    };
    let parent = match extracted {
        Extracted::Invalid => return None,
        Extracted::Root => None,
        Extracted::Parent(p) => Some(p),
    };
    let sampled = match (&parent, tracer.propagation) {
        // Envoy's OpenTelemetry tracer: the caller's flag and our decision.
        (Some(p), Propagation::W3c) => p.sampled && decision.traced(),
        // Its Zipkin tracer: the caller's say wins.
        (Some(p), Propagation::B3 { .. }) => p.sampled,
        (None, _) => decision.traced(),
    };
    let ours = SpanContext {
        trace_id: parent
            .as_ref()
            .map_or_else(trace_context::new_trace_id, |p| p.trace_id),
        span_id: trace_context::new_span_id(),
        sampled,
        trace_state: parent.as_ref().and_then(|p| p.trace_state.clone()),
    };
    let parent_id = parent.as_ref().map(|p| p.span_id);
    match tracer.propagation {
        Propagation::W3c => trace_context::inject_w3c(headers, &ours),
        Propagation::B3 { w3c } => {
            trace_context::inject_b3(headers, &ours, parent_id);
            if w3c {
                trace_context::inject_w3c(headers, &ours);
            }
        }
    }
    let kind = match downstream.direction {
        Direction::Outbound => Kind::Client,
        _ => Kind::Server,
    };
    let called_as = match kind {
        Kind::Server => headers.remove(&DECORATOR_OPERATION),
        Kind::Client => None,
    };
    if !sampled {
        return None;
    }
    let called_as = called_as.and_then(|v| v.to_str().ok().map(str::to_owned));
    let name = called_as
        .clone()
        .unwrap_or_else(|| match (tracer.propagation, kind) {
            (Propagation::W3c, Kind::Server) => "ingress".to_owned(),
            (Propagation::W3c, Kind::Client) => format!("egress {authority}"),
            (Propagation::B3 { .. }, _) => authority.to_owned(),
        });
    Some(Box::new(OpenSpan {
        reporter: tracer.reporter.clone(),
        context: ours,
        parent: parent_id,
        kind,
        name,
        name_fixed: called_as.is_some(),
        start: SystemTime::now(),
        started: Instant::now(),
        tags: request_tags(tracing, req, downstream, ctx, authority),
        http_status: 0,
    }))
}

/// The tags Envoy takes from the request, then the custom ones.
fn request_tags<B>(
    tracing: &Tracing,
    req: &Request<B>,
    downstream: &Downstream,
    ctx: &Context,
    authority: &str,
) -> Tags {
    let headers = req.headers();
    let text = |name: &HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    let or_dash = |v: Option<&str>| v.unwrap_or("-").to_owned();
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let path = truncate(path, tracing.max_path_tag_length);
    let scheme = text(&FORWARDED_PROTO).unwrap_or("http");
    let mut tags: Tags = vec![
        ("node_id".into(), ctx.workload.node_id()),
        ("component".into(), "proxy".to_owned()),
        ("http.url".into(), format!("{scheme}://{authority}{path}")),
        ("http.method".into(), req.method().as_str().to_owned()),
        (
            "http.protocol".into(),
            super::logged::protocol(req.version()).to_owned(),
        ),
        (
            "downstream_cluster".into(),
            or_dash(text(&DOWNSTREAM_CLUSTER)),
        ),
        (
            "user_agent".into(),
            or_dash(text(&http::header::USER_AGENT)),
        ),
        ("peer.address".into(), downstream.client.ip().to_string()),
    ];
    let mut add = |tag: &'static str, value: Option<&str>| {
        if let Some(v) = value {
            tags.push((Cow::Borrowed(tag), v.to_owned()));
        }
    };
    add(
        "guid:x-request-id",
        text(&HeaderName::from_static("x-request-id")),
    );
    add("guid:x-client-trace-id", text(&sampling::CLIENT_TRACE_ID));
    if super::headers::is_grpc(headers) {
        add("grpc.path", Some(req.uri().path()));
        add("grpc.authority", Some(authority));
        add("grpc.content_type", text(&http::header::CONTENT_TYPE));
        add("grpc.timeout", text(&GRPC_TIMEOUT));
    }
    tags.extend(custom_tags(&tracing.custom_tags, headers));
    tags
}

fn custom_tags<'a>(
    tags: &'a [CustomTag],
    headers: &'a HeaderMap,
) -> impl Iterator<Item = (Cow<'static, str>, String)> + 'a {
    tags.iter().filter_map(|tag| {
        let (name, value) = match tag {
            CustomTag::Fixed { tag, value } => (tag, value.clone()),
            CustomTag::RequestHeader {
                tag,
                header,
                default,
            } => (
                tag,
                headers
                    .get(header)
                    .and_then(|v| v.to_str().ok())
                    .map_or_else(|| default.clone(), str::to_owned),
            ),
        };
        (!value.is_empty()).then(|| (Cow::Owned(name.clone()), value))
    })
}

/// At most `max` bytes, cut on a character boundary.
fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The route's decorator for an outbound request to pass on.
pub(super) fn propagate_operation<B>(req: &mut Request<B>, operation: &str) {
    if let Ok(value) = HeaderValue::from_str(operation) {
        req.headers_mut().insert(DECORATOR_OPERATION.clone(), value);
    }
}

/// How the request was answered, for the span's tags.
pub(super) struct Answered<'a> {
    pub status: u16,
    pub flags: &'static str,
    pub cluster: Option<&'a str>,
    /// The route's decorator, when it has one.
    pub operation: Option<&'a str>,
}

impl OpenSpan {
    pub(super) fn answered(&mut self, a: Answered<'_>) {
        if let Some(operation) = a.operation.filter(|_| !self.name_fixed) {
            operation.clone_into(&mut self.name);
        }
        self.http_status = a.status;
        let flags = if a.flags.is_empty() { "-" } else { a.flags };
        self.tags.extend([
            ("http.status_code".into(), a.status.to_string()),
            ("response_flags".into(), flags.to_owned()),
        ]);
        if let Some(cluster) = a.cluster {
            self.tags.extend([
                ("upstream_cluster".into(), cluster.to_owned()),
                ("upstream_cluster.name".into(), cluster.to_owned()),
            ]);
        }
    }

    /// Reports the span: the response has ended.
    pub(super) fn finish(
        self,
        ctx: &Arc<Context>,
        request_bytes: u64,
        response_bytes: u64,
        grpc_status: &str,
    ) {
        let OpenSpan {
            reporter,
            context,
            parent,
            kind,
            name,
            start,
            started,
            mut tags,
            http_status,
            ..
        } = self;
        let grpc_status = grpc_status.parse::<u32>().ok();
        tags.extend([
            ("request_size".into(), request_bytes.to_string()),
            ("response_size".into(), response_bytes.to_string()),
        ]);
        if let Some(code) = grpc_status {
            tags.push(("grpc.status_code".into(), code.to_string()));
        }
        let mut span = Span {
            trace_id: context.trace_id,
            span_id: context.span_id,
            parent_id: parent,
            trace_state: context.trace_state,
            name,
            kind,
            start,
            duration: started.elapsed(),
            tags,
            http_status,
            grpc_status,
        };
        // Envoy's error tag: no answer, a 5xx, or a gRPC code that means
        // the server failed (Unknown, DeadlineExceeded, ResourceExhausted,
        // Unimplemented, Internal, Unavailable, DataLoss).
        let failed_grpc = grpc_status.is_some_and(|c| matches!(c, 2 | 4 | 8 | 12 | 13 | 14 | 15));
        if http_status == 0 || http_status >= 500 || failed_grpc {
            span.tags.push(("error".into(), "true".to_owned()));
        }
        reporter.report(ctx, span);
    }
}

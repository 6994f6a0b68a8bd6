//! A span's place in its trace as request headers carry it: W3C Trace
//! Context (`traceparent`, `tracestate`), which Envoy's OpenTelemetry tracer
//! reads and writes, and B3 (`b3`, `x-b3-*`), which its Zipkin tracer reads;
//! the Zipkin tracer writes the multi-header form only, as Envoy's does.

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::trace::{SpanId, TraceId};

pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
static B3: HeaderName = HeaderName::from_static("b3");
static B3_TRACE_ID: HeaderName = HeaderName::from_static("x-b3-traceid");
static B3_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-spanid");
static B3_PARENT_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
static B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");

/// Where a span sits: its trace, its own id, whether the trace is sampled,
/// and the vendors' `tracestate` passed along untouched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpanContext {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub sampled: bool,
    pub trace_state: Option<HeaderValue>,
}

/// What a request's headers say about its trace.
#[derive(Debug, PartialEq, Eq)]
pub enum Extracted {
    /// The caller's span: ours becomes its child.
    Parent(SpanContext),
    /// No trace context: ours starts a trace.
    Root,
    /// Headers that do not parse: as Envoy, nothing is recorded or passed on.
    Invalid,
}

/// The W3C context of `headers` (`00-<trace>-<parent>-<flags>`): exactly the
/// version 00 layout, ids not all zero; every `tracestate` joined by commas.
pub fn extract_w3c(headers: &HeaderMap) -> Extracted {
    let Some(parent) = headers.get(&TRACEPARENT) else {
        return Extracted::Root;
    };
    let Some((trace_id, span_id, flags)) = parent.to_str().ok().and_then(traceparent) else {
        return Extracted::Invalid;
    };
    Extracted::Parent(SpanContext {
        trace_id,
        span_id,
        sampled: flags & 1 == 1,
        trace_state: trace_state(headers),
    })
}

fn traceparent(text: &str) -> Option<(TraceId, SpanId, u8)> {
    if text.len() != 55 {
        return None;
    }
    let mut fields = text.split('-');
    let (version, trace, span, flags) = (
        fields.next()?,
        fields.next()?,
        fields.next()?,
        fields.next()?,
    );
    if version.len() != 2 || trace.len() != 32 || span.len() != 16 || flags.len() != 2 {
        return None;
    }
    let trace_id = TraceId::from(hex_u128(trace)?);
    let span_id = SpanId::from(hex_u64(span)?);
    hex_u64(version)?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    (trace_id != TraceId::INVALID && span_id != SpanId::INVALID)
        .then_some((trace_id, span_id, flags))
}

fn trace_state(headers: &HeaderMap) -> Option<HeaderValue> {
    let mut values = headers.get_all(&TRACESTATE).iter();
    let first = values.next()?;
    let rest: Vec<&[u8]> = values.map(HeaderValue::as_bytes).collect();
    if rest.is_empty() {
        return Some(first.clone());
    }
    let joined = std::iter::once(first.as_bytes())
        .chain(rest)
        .collect::<Vec<_>>()
        .join(&b","[..]);
    HeaderValue::from_bytes(&joined).ok()
}

/// The B3 context of `headers`: the single `b3` header before the
/// `x-b3-*` ones, which count only with both a trace and a span id. A
/// sampling state in the headers wins over `decided`, the proxy's own
/// decision (Envoy's Zipkin tracer). With `w3c_fallback` a request with no B3
/// header is read as W3C.
pub fn extract_b3(headers: &HeaderMap, w3c_fallback: bool, decided: bool) -> Extracted {
    if let Some(single) = headers.get(&B3) {
        return single
            .to_str()
            .ok()
            .and_then(|text| b3_single(text, decided))
            .map_or(Extracted::Invalid, Extracted::Parent);
    }
    let text = |name: &HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    match (text(&B3_TRACE_ID), text(&B3_SPAN_ID)) {
        (Some(trace), Some(span)) => {
            let sampled = text(&B3_SAMPLED).map_or(decided, |s| s == "1" || s == "true");
            b3_ids(trace, span)
                .map(|(trace_id, span_id)| SpanContext {
                    trace_id,
                    span_id,
                    sampled,
                    trace_state: None,
                })
                .map_or(Extracted::Invalid, Extracted::Parent)
        }
        _ if w3c_fallback => extract_w3c(headers),
        _ => Extracted::Root,
    }
}

/// `<trace>-<span>[-<sampling>[-<parent>]]`; a lone sampling state (`0`,
/// `1`, `d`) has no ids to continue, so it is not a parent.
fn b3_single(text: &str, decided: bool) -> Option<SpanContext> {
    let mut fields = text.split('-');
    let (trace, span) = (fields.next()?, fields.next()?);
    let sampled = fields.next().map_or(decided, |s| s == "1" || s == "d");
    let (trace_id, span_id) = b3_ids(trace, span)?;
    Some(SpanContext {
        trace_id,
        span_id,
        sampled,
        trace_state: None,
    })
}

fn b3_ids(trace: &str, span: &str) -> Option<(TraceId, SpanId)> {
    if !(trace.len() == 16 || trace.len() == 32) || span.len() != 16 {
        return None;
    }
    let trace_id = TraceId::from(hex_u128(trace)?);
    let span_id = SpanId::from(hex_u64(span)?);
    (trace_id != TraceId::INVALID && span_id != SpanId::INVALID).then_some((trace_id, span_id))
}

fn hex_u128(text: &str) -> Option<u128> {
    // `from_str_radix` takes a sign: W3C and B3 ids are bare hex.
    text.bytes()
        .all(|b| b.is_ascii_hexdigit())
        .then(|| u128::from_str_radix(text, 16).ok())
        .flatten()
}

fn hex_u64(text: &str) -> Option<u64> {
    hex_u128(text).and_then(|v| u64::try_from(v).ok())
}

/// Writes `span` as the upstream's parent in W3C form.
pub fn inject_w3c(headers: &mut HeaderMap, span: &SpanContext) {
    let flags = if span.sampled { "01" } else { "00" };
    let text = format!("00-{}-{}-{flags}", span.trace_id, span.span_id);
    if let Ok(value) = HeaderValue::from_str(&text) {
        headers.insert(TRACEPARENT.clone(), value);
    }
    match &span.trace_state {
        Some(state) => {
            headers.insert(TRACESTATE.clone(), state.clone());
        }
        None => {
            headers.remove(&TRACESTATE);
        }
    }
}

/// Writes `span` as the upstream's parent in B3's multi-header form; a trace
/// id whose high half is zero keeps its 64-bit (16 digit) form.
pub fn inject_b3(headers: &mut HeaderMap, span: &SpanContext, parent: Option<SpanId>) {
    let id = u128::from_be_bytes(span.trace_id.to_bytes());
    let trace = if id >> 64 == 0 {
        format!("{:016x}", id as u64)
    } else {
        format!("{id:032x}")
    };
    headers.remove(&B3);
    headers.remove(&B3_PARENT_SPAN_ID);
    let parent = parent.map(|p| (&B3_PARENT_SPAN_ID, p.to_string()));
    let sampled = if span.sampled { "1" } else { "0" };
    let fields = [
        Some((&B3_TRACE_ID, trace)),
        Some((&B3_SPAN_ID, span.span_id.to_string())),
        parent,
        Some((&B3_SAMPLED, sampled.to_owned())),
    ];
    for (name, text) in fields.into_iter().flatten() {
        if let Ok(value) = HeaderValue::from_str(&text) {
            headers.insert(name.clone(), value);
        }
    }
}

/// A new span id, never the invalid all-zero one.
pub fn new_span_id() -> SpanId {
    SpanId::from(crate::balance::random_u64().max(1))
}

/// A new 128-bit trace id.
pub fn new_trace_id() -> TraceId {
    let high = u128::from(crate::balance::random_u64());
    let low = u128::from(crate::balance::random_u64().max(1));
    TraceId::from(high << 64 | low)
}

#[cfg(test)]
mod tests;

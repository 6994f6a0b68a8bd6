//! A finished span: what the reporters send, whatever the collector.

use std::borrow::Cow;
use std::time::{Duration, SystemTime};

use http::HeaderValue;
use opentelemetry::trace::{SpanId, TraceId};

/// A sidecar's inbound spans are the server's side of a call, its outbound
/// ones the client's (Envoy's ingress and egress operations).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Server,
    Client,
}

/// Tags as Envoy names them; all values are strings on the wire.
pub type Tags = Vec<(Cow<'static, str>, String)>;

#[derive(Clone, Debug)]
pub struct Span {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent_id: Option<SpanId>,
    pub trace_state: Option<HeaderValue>,
    pub name: String,
    pub kind: Kind,
    pub start: SystemTime,
    pub duration: Duration,
    pub tags: Tags,
    /// The response's status; 0 when there was none.
    pub http_status: u16,
    /// A gRPC answer's `grpc-status`.
    pub grpc_status: Option<u32>,
}

impl Span {
    /// Nanoseconds since the epoch at the start and the end.
    pub fn start_end_nanos(&self) -> (u64, u64) {
        let start = self
            .start
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        (nanos(start), nanos(start + self.duration))
    }

    /// Whether the span records a failure, by Envoy's rules: no response or
    /// a 5xx; a 4xx only on the client's side; for gRPC the codes that mean
    /// the server failed (any but OK on the client's side).
    pub fn is_error(&self) -> bool {
        let http = match self.http_status {
            0 | 500.. => true,
            400..=499 => self.kind == Kind::Client,
            _ => false,
        };
        // Unknown, DeadlineExceeded, Unimplemented, Internal, Unavailable, DataLoss.
        let grpc = self.grpc_status.is_some_and(|code| match self.kind {
            Kind::Client => code != 0,
            Kind::Server => matches!(code, 2 | 4 | 12 | 13 | 14 | 15),
        });
        http || grpc
    }
}

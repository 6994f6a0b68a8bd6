//! Distributed tracing as Envoy's tracers do it for Istio: the sampling
//! decision carried in `x-request-id`, the trace context read from and
//! written to requests (W3C for OpenTelemetry, B3 for Zipkin), one span per
//! request a connection manager serves, and reporters that batch the spans
//! to a collector through one of the proxy's own clusters.

pub mod context;
pub mod otlp;
pub mod reporter;
pub mod sampling;
pub mod span;
pub mod zipkin;

pub use reporter::{Collector, Reporter, ReporterConfig};
pub use sampling::{Decision, Sampling};
pub use span::{Kind, Span};

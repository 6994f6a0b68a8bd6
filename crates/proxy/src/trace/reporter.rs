//! Sends finished spans to a collector in batches, from a task of its own:
//! a request only puts its span on a bounded queue, and when the queue is
//! full (the collector is away or slow) the span is dropped and counted,
//! never waited for. The collector is reached through one of the proxy's
//! clusters (`outbound|4317||otel-collector...`), mTLS included, as Envoy's
//! tracers send through `envoy_grpc` and `http_service` clusters.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method};
use http_body_util::{Either, Full};
use prost::Message;
use tokio::sync::mpsc;

use super::span::Span;
use super::{otlp, zipkin};
use crate::config::ext_authz::GrpcService;
use crate::context::Context;
use crate::metrics::{TraceStat, Tracer};

/// A batch goes out a second after its first span came (Envoy waits 5 s,
/// or until 5 spans wait: at a thousand spans a second that is two hundred
/// reports, each a gRPC call)...
const FLUSH_AFTER: Duration = Duration::from_secs(1);
/// ...or once it has this many spans: a report is encoded on a worker that
/// also serves requests, so it stays small (512 cost a 6 ms p99 at 1,000
/// spans a second; see bench/RESULTS.md).
const MAX_BATCH: usize = 64;

/// An HTTP collector: OTLP/HTTP or Zipkin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpCollector {
    pub cluster: String,
    /// The Host header.
    pub authority: String,
    pub path: String,
    pub timeout: Duration,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Collector {
    OtlpGrpc(GrpcService),
    OtlpHttp(HttpCollector),
    Zipkin(HttpCollector),
}

impl Collector {
    fn tracer(&self) -> Tracer {
        match self {
            Collector::OtlpGrpc(_) | Collector::OtlpHttp(_) => Tracer::OpenTelemetry,
            Collector::Zipkin(_) => Tracer::Zipkin,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReporterConfig {
    pub collector: Collector,
    /// The spans' `service.name` (Zipkin: the local endpoint's name).
    pub service_name: String,
    /// Spans waiting at most (Envoy's `max_cache_size`, 1,024 unless set).
    pub max_queued: usize,
}

pub struct Reporter {
    config: Arc<ReporterConfig>,
    /// Started with the first span, on the runtime that reported it.
    queue: OnceLock<mpsc::Sender<Span>>,
}

impl std::fmt::Debug for Reporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reporter")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Reporter {
    pub fn new(config: ReporterConfig) -> Self {
        Self {
            config: Arc::new(config),
            queue: OnceLock::new(),
        }
    }

    pub fn config(&self) -> &ReporterConfig {
        &self.config
    }

    /// Queues `span`; drops it, counted, when the queue is full. The
    /// sending task ends once this reporter is dropped (a push replaced the
    /// config) and its queue is sent.
    pub fn report(&self, ctx: &Arc<Context>, span: Span) {
        let queue = self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::channel(self.config.max_queued.max(1));
            tokio::spawn(run(ctx.clone(), self.config.clone(), rx));
            tx
        });
        if queue.try_send(span).is_err() {
            let tracer = self.config.collector.tracer();
            ctx.metrics.traced(tracer, TraceStat::SpansDropped, 1);
        }
    }
}

async fn run(ctx: Arc<Context>, config: Arc<ReporterConfig>, mut rx: mpsc::Receiver<Span>) {
    let mut open = true;
    while open {
        let Some(first) = rx.recv().await else {
            break;
        };
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + FLUSH_AFTER;
        while batch.len() < MAX_BATCH {
            let room = MAX_BATCH - batch.len();
            match tokio::time::timeout_at(deadline, rx.recv_many(&mut batch, room)).await {
                // Nothing more will come: the reporter was dropped.
                Ok(0) => {
                    open = false;
                    break;
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        send(&ctx, &config, &batch).await;
    }
}

async fn send(ctx: &Context, config: &ReporterConfig, batch: &[Span]) {
    let tracer = config.collector.tracer();
    let service_name = if config.service_name.is_empty() {
        ctx.workload.service_cluster()
    } else {
        config.service_name.clone()
    };
    let sent = match &config.collector {
        Collector::OtlpGrpc(service) => {
            let request = otlp::export_request(&service_name, batch);
            grpc_export(ctx, service, &request).await
        }
        Collector::OtlpHttp(http) => {
            let body = otlp::export_request(&service_name, batch).encode_to_vec();
            post(ctx, http, "application/x-protobuf", body).await
        }
        Collector::Zipkin(http) => {
            let ip = ctx.workload.ips.first().copied();
            let body = zipkin::json(&service_name, ip, batch);
            post(ctx, http, "application/json", body).await
        }
    };
    let count = batch.len() as u64;
    match sent {
        Ok(()) => ctx.metrics.traced(tracer, TraceStat::SpansSent, count),
        Err(e) => {
            tracing::debug!(error = %e, spans = count, "trace report failed");
            ctx.metrics.traced(tracer, TraceStat::ReportsFailed, 1);
            ctx.metrics.traced(tracer, TraceStat::SpansDropped, count);
        }
    }
}

/// No original destination: collector clusters are not passthrough ones.
fn nowhere() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 0))
}

async fn grpc_export(
    ctx: &Context,
    service: &GrpcService,
    request: &impl Message,
) -> Result<(), String> {
    let snapshot = ctx.snapshot();
    let _: opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse =
        crate::grpc_call::unary(
            ctx,
            &snapshot,
            service,
            otlp::EXPORT_PATH,
            nowhere(),
            request,
        )
        .await?;
    Ok(())
}

async fn post(
    ctx: &Context,
    collector: &HttpCollector,
    content_type: &'static str,
    body: Vec<u8>,
) -> Result<(), String> {
    let mut request = http::Request::new(Either::Left(Full::new(Bytes::from(body))));
    *request.method_mut() = Method::POST;
    *request.uri_mut() = collector
        .path
        .parse()
        .map_err(|e| format!("path {:?}: {e}", collector.path))?;
    let headers = request.headers_mut();
    for (name, value) in &collector.headers {
        headers.insert(name.clone(), value.clone());
    }
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    if let Ok(host) = HeaderValue::from_str(&collector.authority) {
        headers.insert(http::header::HOST, host);
    }
    let snapshot = ctx.snapshot();
    let (parts, _) = crate::grpc_call::exchange(
        ctx,
        &snapshot,
        &collector.cluster,
        nowhere(),
        request,
        collector.timeout,
    )
    .await?;
    if parts.status.is_success() {
        Ok(())
    } else {
        Err(format!("the collector answered {}", parts.status))
    }
}

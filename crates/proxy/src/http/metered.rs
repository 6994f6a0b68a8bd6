//! Records a request's metrics when its response body ends (or is abandoned), so
//! the duration and response size cover the whole exchange, as Envoy's do.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::Response;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};

use super::ProxyBody;
use crate::config::stats::Shaped;
use crate::context::Context;
use crate::metrics::RequestLabels;

pub struct Record {
    pub ctx: Arc<Context>,
    pub labels: RequestLabels,
    /// What each metric reports when a Telemetry reshaped them.
    pub shaped: Option<Box<[Shaped<RequestLabels>; 4]>>,
    pub started: Instant,
    pub request_bytes: u64,
    /// Held until the response ends: the connection is busy till then.
    pub in_flight: super::read_deadlines::InFlight,
    /// The access log line to write when the response ends.
    pub log: Option<Box<crate::access_log::Pending>>,
    /// The span to report when the response ends.
    pub span: Option<Box<super::traced::OpenSpan>>,
}

impl Record {
    /// gRPC's status, on every label set.
    fn grpc_status(&mut self, status: &str) {
        self.labels.grpc_response_status = status.to_owned();
        for shape in self.shaped.iter_mut().flat_map(|s| s.iter_mut()) {
            if let Shaped::Custom(labels) = shape {
                labels.grpc_response_status = status.to_owned();
            }
        }
    }
}

struct Metered {
    inner: ProxyBody,
    sent: u64,
    record: Option<Record>,
}

pub fn wrap(response: Response<ProxyBody>, mut record: Record) -> Response<ProxyBody> {
    // A trailers-only gRPC answer carries its status in the headers.
    if let Some(status) = response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
    {
        record.grpc_status(status);
    }
    response.map(|inner| {
        Metered {
            inner,
            sent: 0,
            record: Some(record),
        }
        .boxed()
    })
}

impl Body for Metered {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.sent += data.len() as u64;
                }
                // gRPC's status comes in the trailers.
                if let (Some(trailers), Some(r)) = (frame.trailers_ref(), self.record.as_mut())
                    && let Some(status) = trailers.get("grpc-status").and_then(|v| v.to_str().ok())
                {
                    r.grpc_status(status);
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => self.finish(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Metered {
    fn finish(&mut self) {
        if let Some(r) = self.record.take() {
            // The connection waits for its next request from here.
            drop(r.in_flight);
            let elapsed = r.started.elapsed();
            let millis = elapsed.as_secs_f64() * 1000.0;
            match &r.shaped {
                None => r
                    .ctx
                    .metrics
                    .record_request(&r.labels, millis, r.request_bytes, self.sent),
                Some(shaped) => r.ctx.metrics.record_request_shaped(
                    &r.labels,
                    shaped,
                    millis,
                    r.request_bytes,
                    self.sent,
                ),
            }
            if let Some(log) = r.log {
                log.write(elapsed, r.request_bytes, self.sent);
            }
            if let Some(span) = r.span {
                let grpc = &r.labels.grpc_response_status;
                (*span).finish(&r.ctx, r.request_bytes, self.sent, grpc);
            }
        }
    }
}

impl Drop for Metered {
    fn drop(&mut self) {
        self.finish();
    }
}

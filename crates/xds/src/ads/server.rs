//! The tonic service: one task per stream.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryService;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::metrics::AdsMetrics;
use super::session::Session;
use super::status::StatusRegistry;
use super::{Generator, delta, session, sotw};

/// Responses waiting to be written to one proxy. Pushes coalesce before this queue,
/// so it stays short however slow the proxy reads.
const QUEUE: usize = 4;

/// How many proxies may have a push outstanding (sent, not yet answered) at once,
/// as Istio's PILOT_PUSH_THROTTLE: it bounds the memory a config change costs.
pub const DEFAULT_PUSH_THROTTLE: usize = 32;

pub struct AdsServer<G> {
    generator: Arc<G>,
    status: StatusRegistry,
    metrics: Arc<AdsMetrics>,
    throttle: Arc<Semaphore>,
    next_connection: AtomicU64,
}

impl<G: Generator> AdsServer<G> {
    pub fn new(generator: Arc<G>, status: StatusRegistry, metrics: Arc<AdsMetrics>) -> Self {
        Self {
            generator,
            status,
            metrics,
            throttle: Arc::new(Semaphore::new(DEFAULT_PUSH_THROTTLE)),
            next_connection: AtomicU64::new(1),
        }
    }
}

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl<G: Generator> AggregatedDiscoveryService for AdsServer<G> {
    type StreamAggregatedResourcesStream = ResponseStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = ResponseStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        Ok(self.open::<sotw::Connection<G>>(request.into_inner()))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        Ok(self.open::<delta::Connection<G>>(request.into_inner()))
    }
}

impl<G: Generator> AdsServer<G> {
    /// Serves one stream in its own task; its responses flow through a short queue.
    fn open<S: Session<G> + 'static>(
        &self,
        requests: Streaming<S::Request>,
    ) -> Response<ResponseStream<S::Response>> {
        let (sender, receiver) = mpsc::channel(QUEUE);
        let id = self.next_connection.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(session::serve::<G, S>(
            self.generator.clone(),
            requests,
            sender,
            id,
            self.status.clone(),
            self.metrics.clone(),
            self.throttle.clone(),
        ));
        Response::new(Box::pin(ReceiverStream::new(receiver)))
    }
}

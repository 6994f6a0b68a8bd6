//! The tonic service: one task per stream.

use std::pin::Pin;
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryService;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use oxmesh_identity::SpiffeId;
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};

use super::metrics::AdsMetrics;
use super::session::Session;
use super::status::StatusRegistry;
use super::{Authenticate, Generator, delta, session, sotw};

/// Responses waiting to be written to one proxy. Pushes coalesce before this queue,
/// so it stays short however slow the proxy reads.
const QUEUE: usize = 4;

/// How many proxies may have a push outstanding (sent, not yet answered) at once,
/// as Istio's PILOT_PUSH_THROTTLE: it bounds the memory a config change costs.
pub const DEFAULT_PUSH_THROTTLE: usize = 32;

/// How many xDS streams one server (port) serves at once. Beyond it a new
/// stream is refused with RESOURCE_EXHAUSTED (the proxy retries with back-off,
/// or reaches another replica), so a flood of streams costs bounded memory.
pub const DEFAULT_MAX_STREAMS: usize = 10_000;

pub struct AdsServer<G> {
    generator: Arc<G>,
    /// Set on the authenticated port: every stream must prove its caller.
    authenticate: Option<Arc<dyn Authenticate>>,
    status: StatusRegistry,
    metrics: Arc<AdsMetrics>,
    throttle: Arc<Semaphore>,
    /// One permit per open stream.
    streams: Arc<Semaphore>,
}

impl<G: Generator> AdsServer<G> {
    pub fn new(generator: Arc<G>, status: StatusRegistry, metrics: Arc<AdsMetrics>) -> Self {
        Self {
            generator,
            authenticate: None,
            status,
            metrics,
            throttle: Arc::new(Semaphore::new(DEFAULT_PUSH_THROTTLE)),
            streams: Arc::new(Semaphore::new(DEFAULT_MAX_STREAMS)),
        }
    }

    /// Shares the open-stream limit with another server; its permits are the
    /// number of streams served at once.
    pub fn with_stream_limit(mut self, streams: Arc<Semaphore>) -> Self {
        self.streams = streams;
        self
    }

    /// Shares push slots with another server (15010 and 15012 together hold
    /// the throttle's number, as one istiod does).
    pub fn with_throttle(mut self, throttle: Arc<Semaphore>) -> Self {
        self.throttle = throttle;
        self
    }

    /// Requires every stream to prove its caller, who must be allowed the
    /// config of the proxy the stream names.
    pub fn authenticated(mut self, authenticate: Arc<dyn Authenticate>) -> Self {
        self.authenticate = Some(authenticate);
        self
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
        let caller = self.caller(request.metadata()).await?;
        self.open::<sotw::Connection<G>>(request.into_inner(), caller)
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let caller = self.caller(request.metadata()).await?;
        self.open::<delta::Connection<G>>(request.into_inner(), caller)
    }
}

impl<G: Generator> AdsServer<G> {
    /// Who the stream's caller proved to be, on an authenticated port.
    pub(super) async fn caller(&self, metadata: &MetadataMap) -> Result<Option<SpiffeId>, Status> {
        let Some(authenticate) = &self.authenticate else {
            return Ok(None);
        };
        let authorization = metadata
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        authenticate.caller(authorization).await.map(Some)
    }

    /// Serves one stream in its own task; its responses flow through a short
    /// queue. Refused when the server already serves its limit of streams.
    pub(super) fn open<S: Session<G> + 'static>(
        &self,
        requests: Streaming<S::Request>,
        caller: Option<SpiffeId>,
    ) -> Result<Response<ResponseStream<S::Response>>, Status> {
        let Ok(permit) = self.streams.clone().try_acquire_owned() else {
            tracing::warn!("xDS stream refused: the stream limit is reached");
            return Err(Status::resource_exhausted(
                "this control plane serves its limit of xDS streams; retry with back-off or reach another replica",
            ));
        };
        let (sender, receiver) = mpsc::channel(QUEUE);
        let id = self.status.next_connection();
        let serve = session::serve::<G, S>(
            self.generator.clone(),
            caller,
            requests,
            sender,
            id,
            session::Shared {
                status: self.status.clone(),
                metrics: self.metrics.clone(),
                throttle: self.throttle.clone(),
            },
        );
        tokio::spawn(async move {
            serve.await;
            drop(permit);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }
}

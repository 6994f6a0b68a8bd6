//! What both ADS variants share: the handshake (the first request names the
//! proxy), the loop that interleaves the proxy's requests with config changes,
//! and the connection's place in the status registry.

use std::future::Future;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::Node;
use oxmesh_identity::SpiffeId;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::Instant;
use tokio_stream::StreamExt;
use tonic::{Code, Status, Streaming};

use super::Generator;
use super::metrics::AdsMetrics;
use super::status::StatusRegistry;

/// One connected proxy, as both variants see it.
pub struct Link<G: Generator, R> {
    pub generator: Arc<G>,
    pub proxy: G::Proxy,
    pub id: u64,
    pub status: StatusRegistry,
    pub metrics: Arc<AdsMetrics>,
    nonce: u64,
    pub responses: mpsc::Sender<Result<R, Status>>,
}

/// How long a proxy may take to answer a push before its turn passes anyway: a
/// proxy that never ACKs holds a push slot at most this long.
const ACK_WAIT: Duration = Duration::from_secs(5);

/// How long a response may wait for room in the proxy's queue.
const SEND_WAIT: Duration = Duration::from_secs(30);

impl<G: Generator, R> Link<G, R> {
    pub fn name(&self) -> String {
        G::proxy_id(&self.proxy)
    }

    pub fn next_nonce(&mut self) -> String {
        self.nonce += 1;
        self.nonce.to_string()
    }

    /// Queues a response; `false` when the stream is gone or the proxy has not
    /// read for `SEND_WAIT` (the stream is then dropped: a proxy that stopped
    /// reading must not hold its push slot).
    pub async fn send(&self, response: R) -> bool {
        match tokio::time::timeout(SEND_WAIT, self.responses.send(Ok(response))).await {
            Ok(sent) => sent.is_ok(),
            Err(_) => {
                tracing::warn!(proxy = %self.name(), "the proxy stopped reading its ADS stream; closing it");
                false
            }
        }
    }

    /// Changes whenever a response is sent.
    fn sent(&self) -> u64 {
        self.nonce
    }
}

/// A variant of the protocol: state of the world or delta.
pub trait Session<G: Generator>: Sized + Send {
    type Request: prost::Message + Default + Send + 'static;
    type Response: Send + 'static;
    /// For logs.
    const VARIANT: &'static str;

    fn node(request: &Self::Request) -> Option<&Node>;
    fn open(link: Link<G, Self::Response>) -> Self;
    fn link(&self) -> &Link<G, Self::Response>;
    /// Handles one request; `false` when the stream is gone.
    fn on_request(&mut self, request: Self::Request) -> impl Future<Output = bool> + Send;
    /// Sends what changed since the last push; `false` when the stream is gone.
    fn push_all(&mut self) -> impl Future<Output = bool> + Send;
}

/// What every stream of a server shares.
#[derive(Clone)]
pub struct Shared {
    pub status: StatusRegistry,
    pub metrics: Arc<AdsMetrics>,
    /// Push slots (see `DEFAULT_PUSH_THROTTLE`).
    pub throttle: Arc<Semaphore>,
}

/// Ends a stream whose request could not be read with the reason as its
/// status, so the proxy's log says why. A request too large or not protobuf
/// is worth a warning; a proxy that went away is not.
async fn refuse<R>(responses: &mpsc::Sender<Result<R, Status>>, refused: Status) {
    if matches!(refused.code(), Code::OutOfRange | Code::Internal) {
        tracing::warn!(status = %refused, "ended an ADS stream on an unreadable request");
    } else {
        tracing::debug!(status = %refused, "ADS stream ended");
    }
    let _ = tokio::time::timeout(SEND_WAIT, responses.send(Err(refused))).await;
}

/// How long a new stream may take to send its first request (Envoy sends it
/// at once): a stream that says nothing gives its place back.
const FIRST_REQUEST_WAIT: Duration = Duration::from_secs(30);

/// Serves one stream until the proxy goes away. `caller` is who the stream
/// proved to be, on an authenticated port.
pub async fn serve<G: Generator, S: Session<G>>(
    generator: Arc<G>,
    caller: Option<SpiffeId>,
    mut requests: Streaming<S::Request>,
    responses: mpsc::Sender<Result<S::Response, Status>>,
    id: u64,
    shared: Shared,
) {
    let Shared {
        status,
        metrics,
        throttle,
    } = shared;
    let first = match tokio::time::timeout(FIRST_REQUEST_WAIT, requests.next()).await {
        Ok(Some(Ok(request))) => request,
        Ok(Some(Err(refused))) => {
            refuse(&responses, refused).await;
            return;
        }
        Ok(None) => return,
        Err(_) => {
            let silent =
                Status::deadline_exceeded("no DiscoveryRequest within 30 s of opening the stream");
            refuse(&responses, silent).await;
            return;
        }
    };
    let node = S::node(&first).cloned().unwrap_or_default();
    let proxy = match S::node(&first)
        .ok_or_else(|| "the first request must carry the node".to_owned())
        .and_then(|node| {
            generator.connect(node, caller.as_ref()).inspect_err(
                |reason| tracing::warn!(node = %node.id, %reason, "refused an ADS connection"),
            )
        }) {
        Ok(proxy) => proxy,
        Err(reason) => {
            let _ = responses.send(Err(Status::invalid_argument(reason))).await;
            return;
        }
    };
    if let Some(caller) = &caller
        && let Err(reason) = generator.authorize(&proxy, caller)
    {
        tracing::warn!(node = %node.id, %caller, %reason, "refused an ADS connection");
        let _ = responses.send(Err(Status::permission_denied(reason))).await;
        return;
    }
    let mut changes = generator.changes();
    let link = Link {
        generator,
        proxy,
        id,
        status: status.clone(),
        metrics: metrics.clone(),
        nonce: 0,
        responses,
    };
    let name = link.name();
    status.connected(id, name.clone(), node);
    metrics.connected.inc();
    tracing::info!(proxy = %name, variant = S::VARIANT, "ADS stream connected");
    let mut session = S::open(link);
    let mut next = Some(first);
    // A push slot from `throttle`, held from a push until the proxy answers it:
    // it bounds how many large responses are in flight at once.
    let mut turn: Option<(OwnedSemaphorePermit, Instant)> = None;
    loop {
        if let Some(request) = next.take() {
            turn = None;
            let Ok(permit) = throttle.clone().acquire_owned().await else {
                break;
            };
            let before = session.link().sent();
            if !session.on_request(request).await {
                break;
            }
            if session.link().sent() != before {
                turn = Some((permit, Instant::now() + ACK_WAIT));
            }
        }
        let turn_ends = turn.as_ref().map(|(_, ends)| *ends);
        tokio::select! {
            request = requests.next() => match request {
                Some(Ok(request)) => next = Some(request),
                Some(Err(refused)) => {
                    refuse(&session.link().responses, refused).await;
                    break;
                }
                None => break,
            },
            changed = changes.changed() => {
                turn = None;
                let Ok(permit) = throttle.clone().acquire_owned().await else { break };
                let started = std::time::Instant::now();
                let before = session.link().sent();
                if changed.is_err() || !session.push_all().await {
                    break;
                }
                metrics.convergence.observe(started.elapsed().as_secs_f64());
                if session.link().sent() != before {
                    turn = Some((permit, Instant::now() + ACK_WAIT));
                }
            }
            () = tokio::time::sleep_until(turn_ends.unwrap_or_else(Instant::now)), if turn_ends.is_some() => {
                turn = None;
            }
        }
    }
    status.disconnected(id);
    metrics.connected.dec();
    tracing::info!(proxy = %session.link().name(), "ADS stream disconnected");
}

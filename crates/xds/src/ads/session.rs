//! What both ADS variants share: the handshake (the first request names the
//! proxy), the loop that interleaves the proxy's requests with config changes,
//! and the connection's place in the status registry.

use std::future::Future;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::Node;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tonic::{Status, Streaming};

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

impl<G: Generator, R> Link<G, R> {
    pub fn name(&self) -> String {
        G::proxy_id(&self.proxy)
    }

    pub fn next_nonce(&mut self) -> String {
        self.nonce += 1;
        self.nonce.to_string()
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

/// Serves one stream until the proxy goes away.
pub async fn serve<G: Generator, S: Session<G>>(
    generator: Arc<G>,
    mut requests: Streaming<S::Request>,
    responses: mpsc::Sender<Result<S::Response, Status>>,
    id: u64,
    status: StatusRegistry,
    metrics: Arc<AdsMetrics>,
) {
    let first = match requests.next().await {
        Some(Ok(request)) => request,
        _ => return,
    };
    let node = S::node(&first).cloned().unwrap_or_default();
    let proxy = match S::node(&first)
        .ok_or_else(|| "the first request must carry the node".to_owned())
        .and_then(|node| {
            generator.connect(node).inspect_err(
                |reason| tracing::warn!(node = %node.id, %reason, "refused an ADS connection"),
            )
        }) {
        Ok(proxy) => proxy,
        Err(reason) => {
            let _ = responses.send(Err(Status::invalid_argument(reason))).await;
            return;
        }
    };
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
    loop {
        if let Some(request) = next.take()
            && !session.on_request(request).await
        {
            break;
        }
        tokio::select! {
            request = requests.next() => match request {
                Some(Ok(request)) => next = Some(request),
                _ => break,
            },
            changed = changes.changed() => {
                let started = std::time::Instant::now();
                if changed.is_err() || !session.push_all().await {
                    break;
                }
                metrics.convergence.observe(started.elapsed().as_secs_f64());
            }
        }
    }
    status.disconnected(id);
    metrics.connected.dec();
    tracing::info!(proxy = %session.link().name(), "ADS stream disconnected");
}

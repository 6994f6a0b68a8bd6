//! A workload's outbound connections, captured to 15001: to a workload (or a
//! service's chosen workload) that takes HBONE, in an HBONE tunnel checked
//! against that workload's identity; to anything else, as they were. Each
//! is counted with `reporter="source"`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use arc_swap::ArcSwap;
use http::{HeaderMap, HeaderValue};
use oxmesh_proxy::hbone::client::{Client, Target};
use tokio::net::{TcpListener, TcpStream};

use oxmesh_proxy::metrics::{Metrics, Peer, Reporter, ServiceLabels, TcpLabels};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::inbound::Local;
use crate::inpod::sockets::Sockets;
use crate::state::{Destination, State};
use crate::telemetry::{self, Ends};

pub struct Outbound {
    pub state: Arc<ArcSwap<State>>,
    pub client: Client,
    /// The workload whose connections these are.
    pub local: Local,
    pub metrics: Arc<Metrics>,
    pub sockets: Sockets,
    /// Round-robin over a service's workloads.
    next: AtomicUsize,
}

impl Outbound {
    pub fn new(
        state: Arc<ArcSwap<State>>,
        client: Client,
        local: Local,
        metrics: Arc<Metrics>,
        sockets: Sockets,
    ) -> Self {
        Self {
            state,
            client,
            local,
            metrics,
            sockets,
            next: AtomicUsize::new(0),
        }
    }

    /// Serves connections captured to `listener` for ever.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        crate::accept::each(listener, |client, remote| {
            let outbound = self.clone();
            async move {
                if let Err(e) = outbound.carry(client, remote).await {
                    tracing::info!(%remote, error = %e, "outbound connection failed");
                }
            }
        })
        .await;
    }

    async fn carry(&self, mut client: TcpStream, remote: SocketAddr) -> Result<(), String> {
        let dst = oxmesh_proxy::original_dst::original_destination(&client)
            .map_err(|e| format!("no original destination: {e}"))?;
        let state = self.state.load_full();
        let destination = state.destination(dst, |n| self.next.fetch_add(1, Ordering::Relaxed) % n);
        // The caller is the workload at the connection's source address.
        let source = state
            .workload_at(remote.ip())
            .filter(|w| self.local.serves(w))
            .map_or_else(Peer::unknown, |w| telemetry::peer(w));
        let service = state
            .service_at(dst.ip())
            .map_or_else(ServiceLabels::unknown, |s| {
                ServiceLabels::from_host(&s.hostname)
            });
        match destination {
            Destination::Hbone {
                workload,
                hbone,
                authority,
            } => {
                let target = Target {
                    peer: hbone,
                    identities: vec![workload.identity.clone()],
                    authority,
                    headers: forwarded(remote),
                };
                let mut tunnel = self.client.open(&target).await.map_err(|e| e.to_string())?;
                tracing::debug!(%remote, %authority, identity = %workload.identity, "HBONE tunnel open");
                let destination = telemetry::peer(&workload);
                let labels =
                    telemetry::labels(Reporter::Source, &source, &destination, &service, true);
                let ends = Ends {
                    direction: "outbound",
                    src: remote,
                    dst: hbone,
                    hbone: Some(authority),
                };
                self.relay(&mut client, &mut tunnel, labels, ends).await;
            }
            Destination::Direct { to, workload } => {
                let mut server = self
                    .sockets
                    .connect(to)
                    .await
                    .map_err(|e| format!("{to}: {e}"))?;
                let destination = workload
                    .as_deref()
                    .map_or_else(Peer::unknown, telemetry::peer);
                let labels =
                    telemetry::labels(Reporter::Source, &source, &destination, &service, false);
                let ends = Ends {
                    direction: "outbound",
                    src: remote,
                    dst: to,
                    hbone: None,
                };
                self.relay(&mut client, &mut server, labels, ends).await;
            }
        }
        Ok(())
    }

    /// Copies both ways until either side closes, counting the connection.
    async fn relay<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        client: &mut TcpStream,
        server: &mut S,
        labels: TcpLabels,
        ends: Ends,
    ) {
        let counted = telemetry::Connection::open(self.metrics.clone(), labels, ends);
        let (up, down) = oxmesh_proxy::relay::relay(client, server)
            .await
            .unwrap_or_default();
        counted.closed(up, down);
    }
}

/// `forwarded: for="<client address>"`, as ztunnel names the caller.
fn forwarded(remote: SocketAddr) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Ok(value) = HeaderValue::from_str(&format!("for=\"{remote}\"")) {
        headers.insert("forwarded", value);
    }
    headers
}

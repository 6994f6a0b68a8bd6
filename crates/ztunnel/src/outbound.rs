//! A workload's outbound connections, captured to 15001: to a workload (or a
//! service's chosen workload) that takes HBONE, in an HBONE tunnel checked
//! against that workload's identity; to anything else, as they were.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use arc_swap::ArcSwap;
use http::{HeaderMap, HeaderValue};
use oxmesh_proxy::hbone::client::{Client, Target};
use tokio::net::{TcpListener, TcpStream};

use crate::state::{Destination, State};

pub struct Outbound {
    pub state: Arc<ArcSwap<State>>,
    pub client: Client,
    /// Round-robin over a service's workloads.
    next: AtomicUsize,
}

impl Outbound {
    pub fn new(state: Arc<ArcSwap<State>>, client: Client) -> Self {
        Self {
            state,
            client,
            next: AtomicUsize::new(0),
        }
    }

    /// Serves connections captured to `listener` for ever.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            let (client, remote) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(crate::node_proxy::ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            let outbound = self.clone();
            tokio::spawn(async move {
                if let Err(e) = outbound.carry(client, remote).await {
                    tracing::info!(%remote, error = %e, "outbound connection failed");
                }
            });
        }
    }

    async fn carry(&self, mut client: TcpStream, remote: SocketAddr) -> Result<(), String> {
        let dst = oxmesh_proxy::original_dst::original_destination(&client)
            .map_err(|e| format!("no original destination: {e}"))?;
        let destination = self
            .state
            .load()
            .destination(dst, |n| self.next.fetch_add(1, Ordering::Relaxed) % n);
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
                let _ = tokio::io::copy_bidirectional(&mut client, &mut tunnel).await;
            }
            Destination::Direct(to) => {
                let mut server = TcpStream::connect(to)
                    .await
                    .map_err(|e| format!("{to}: {e}"))?;
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            }
        }
        Ok(())
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

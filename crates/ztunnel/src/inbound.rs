//! Connections to the node proxy's workloads: HBONE on 15008 (the caller's
//! identity proven by its certificate) and plaintext captured to 15006 (no
//! identity: a STRICT policy refuses it). Either way the destination must be
//! one of this proxy's workloads, and its L4 policies decide.

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use oxmesh_identity::SpiffeId;
use oxmesh_proxy::hbone::server::{Inbound, Refusal, Upstream};
use tokio::net::{TcpListener, TcpStream};

use crate::rbac::{self, Connection};
use crate::state::{State, Workload};

/// The node proxy's own ports: never a tunnel's destination.
const OWN_PORTS: [u16; 3] = [15001, 15006, 15008];

/// Which workloads this proxy serves.
#[derive(Clone, Debug)]
pub struct Local {
    pub namespace: String,
    pub name: String,
}

impl Local {
    fn serves(&self, workload: &Workload) -> bool {
        workload.namespace == self.namespace && workload.name == self.name
    }
}

/// Opens HBONE tunnels to the local workload, as its policies allow.
pub struct ToWorkload {
    pub state: Arc<ArcSwap<State>>,
    pub local: Local,
}

impl ToWorkload {
    /// The policy decision and the address to connect to, for a connection
    /// from `source` (at `source_addr`) to `destination`.
    fn admit(
        &self,
        source: Option<SpiffeId>,
        source_addr: SocketAddr,
        destination: SocketAddr,
    ) -> Result<SocketAddr, Refusal> {
        if OWN_PORTS.contains(&destination.port()) {
            return Err(Refusal::Unavailable(format!(
                "{destination}: the node proxy's own port"
            )));
        }
        let state = self.state.load();
        let workload = state
            .workload_at(destination.ip())
            .filter(|w| self.local.serves(w))
            .ok_or_else(|| {
                Refusal::Unavailable(format!("{} is no workload of this proxy", destination.ip()))
            })?;
        let conn = Connection {
            source,
            source_ip: source_addr.ip(),
            destination,
        };
        rbac::check(state.policies_for(workload), &conn).map_err(Refusal::Denied)?;
        Ok(destination)
    }
}

impl Upstream for ToWorkload {
    type Stream = TcpStream;

    async fn open(&self, inbound: Inbound) -> Result<TcpStream, Refusal> {
        // The tunnel is for the address the caller dialled, as ztunnel insists.
        if inbound.authority.ip() != inbound.local.ip() {
            return Err(Refusal::BadRequest(format!(
                "the tunnel is for {} but came to {}",
                inbound.authority, inbound.local
            )));
        }
        let to = self
            .admit(Some(inbound.peer.clone()), inbound.remote, inbound.authority)
            .inspect_err(|refusal| {
                tracing::info!(peer = %inbound.peer, to = %inbound.authority, %refusal, "HBONE connection refused");
            })?;
        tracing::debug!(peer = %inbound.peer, %to, "HBONE tunnel admitted");
        oxmesh_proxy::upstream::dial_inbound(to)
            .await
            .map_err(|e| Refusal::Unavailable(format!("{to}: {e}")))
    }
}

/// Serves plaintext connections captured to `listener` (15006).
pub async fn plaintext(listener: TcpListener, upstream: Arc<ToWorkload>) {
    loop {
        let (mut client, remote) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(crate::node_proxy::ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let upstream = upstream.clone();
        tokio::spawn(async move {
            let destination = match oxmesh_proxy::original_dst::original_destination(&client) {
                Ok(destination) => destination,
                Err(e) => {
                    tracing::debug!(%remote, error = %e, "no original destination");
                    return;
                }
            };
            let to = match upstream.admit(None, remote, destination) {
                Ok(to) => to,
                Err(refusal) => {
                    tracing::info!(%remote, %destination, %refusal, "plaintext connection refused");
                    return;
                }
            };
            if let Ok(mut server) = oxmesh_proxy::upstream::dial_inbound(to).await {
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            }
        });
    }
}

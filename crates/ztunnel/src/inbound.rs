//! Connections to the node proxy's workloads: HBONE on 15008 (the caller's
//! identity proven by its certificate) and plaintext captured to 15006 (no
//! identity: a STRICT policy refuses it). Either way the destination must be
//! one of this proxy's workloads, and its L4 policies decide; what is let
//! through is counted with `reporter="destination"`.

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use oxmesh_identity::SpiffeId;
use oxmesh_proxy::hbone::server::{Inbound, Refusal, Upstream};
use oxmesh_proxy::metrics::{Metrics, Peer, Reporter, ServiceLabels};
use tokio::net::{TcpListener, TcpStream};

use crate::inpod::sockets::Sockets;
use crate::rbac::{self, Connection};
use crate::state::{State, Workload};
use crate::telemetry::{self, Counted};

/// The node proxy's own ports: never a tunnel's destination.
const OWN_PORTS: [u16; 3] = [15001, 15006, 15008];

/// Which workloads this proxy serves.
#[derive(Clone, Debug)]
pub struct Local {
    pub namespace: String,
    pub name: String,
}

impl Local {
    pub fn serves(&self, workload: &Workload) -> bool {
        workload.namespace == self.namespace && workload.name == self.name
    }
}

/// Opens connections to the local workload, as its policies allow.
pub struct ToWorkload {
    pub state: Arc<ArcSwap<State>>,
    pub local: Local,
    pub metrics: Arc<Metrics>,
    pub sockets: Sockets,
}

impl ToWorkload {
    /// Decides a connection from `source` (at `source_addr`) to
    /// `destination` and, if admitted, connects to the workload.
    async fn connect(
        &self,
        source: Option<SpiffeId>,
        source_addr: SocketAddr,
        destination: SocketAddr,
    ) -> Result<Counted<TcpStream>, Refusal> {
        if OWN_PORTS.contains(&destination.port()) {
            return Err(Refusal::Unavailable(format!(
                "{destination}: the node proxy's own port"
            )));
        }
        let state = self.state.load_full();
        let workload = state
            .workload_at(destination.ip())
            .filter(|w| self.local.serves(w))
            .ok_or_else(|| {
                Refusal::Unavailable(format!("{} is no workload of this proxy", destination.ip()))
            })?;
        let conn = Connection {
            source: source.clone(),
            source_ip: source_addr.ip(),
            destination,
        };
        rbac::check(state.policies_for(workload), &conn).map_err(Refusal::Denied)?;
        let stream = self
            .sockets
            .connect_to_workload(destination, source_addr)
            .await
            .map_err(|e| Refusal::Unavailable(format!("{destination}: {e}")))?;
        let labels = telemetry::labels(
            Reporter::Destination,
            &caller(&state, source.as_ref(), source_addr),
            &telemetry::peer(workload),
            &service_of(&state, workload, destination.port()),
            source.is_some(),
        );
        let ends = telemetry::Ends {
            direction: "inbound",
            src: source_addr,
            dst: destination,
            hbone: source.is_some().then_some(destination),
        };
        let counted = telemetry::Connection::open(self.metrics.clone(), labels, ends);
        Ok(Counted::new(stream, counted))
    }
}

/// Who called, as labels: the workload at the caller's address when its
/// identity is the one proven, else only the identity.
fn caller(state: &State, identity: Option<&SpiffeId>, addr: SocketAddr) -> Peer {
    let known = state
        .workload_at(addr.ip())
        .filter(|w| identity.is_none_or(|id| *id == w.identity));
    match (known, identity) {
        (Some(w), _) => {
            let mut peer = telemetry::peer(w);
            if identity.is_none() {
                peer.principal = "unknown".to_owned();
            }
            peer
        }
        (None, Some(id)) => Peer {
            principal: id.to_string(),
            ..Peer::unknown()
        },
        (None, None) => Peer::unknown(),
    }
}

/// The service the workload serves on `port`, as ztunnel guesses it for
/// inbound metrics: the first whose target port it is.
fn service_of(state: &State, workload: &Workload, port: u16) -> ServiceLabels {
    let mut keys: Vec<&String> = workload
        .services
        .iter()
        .filter(|(_, ports)| ports.iter().any(|(_, target)| *target == port))
        .map(|(key, _)| key)
        .collect();
    keys.sort();
    keys.first()
        .and_then(|key| state.service(key))
        .map_or_else(ServiceLabels::unknown, |s| {
            ServiceLabels::from_host(&s.hostname)
        })
}

impl Upstream for ToWorkload {
    type Stream = Counted<TcpStream>;

    async fn open(&self, inbound: Inbound) -> Result<Counted<TcpStream>, Refusal> {
        // The tunnel is for the address the caller dialled, as ztunnel insists.
        if inbound.authority.ip() != inbound.local.ip() {
            return Err(Refusal::BadRequest(format!(
                "the tunnel is for {} but came to {}",
                inbound.authority, inbound.local
            )));
        }
        self.connect(Some(inbound.peer.clone()), inbound.remote, inbound.authority)
            .await
            .inspect_err(|refusal| {
                tracing::info!(peer = %inbound.peer, to = %inbound.authority, %refusal, "HBONE connection refused");
            })
    }
}

/// Serves plaintext connections captured to `listener` (15006).
pub async fn plaintext(listener: TcpListener, upstream: Arc<ToWorkload>) {
    crate::accept::each(listener, |client, remote| {
        let upstream = upstream.clone();
        relay_plaintext(upstream, client, remote)
    })
    .await;
}

async fn relay_plaintext(upstream: Arc<ToWorkload>, mut client: TcpStream, remote: SocketAddr) {
    let destination = match oxmesh_proxy::original_dst::original_destination(&client) {
        Ok(destination) => destination,
        Err(e) => {
            tracing::debug!(%remote, error = %e, "no original destination");
            return;
        }
    };
    match upstream.connect(None, remote, destination).await {
        Ok(mut server) => {
            let _ = oxmesh_proxy::relay::relay(&mut client, &mut server).await;
        }
        Err(refusal) => {
            tracing::info!(%remote, %destination, %refusal, "plaintext connection refused");
        }
    }
}

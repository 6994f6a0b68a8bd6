//! One workload's proxy: its outbound (15001), plaintext inbound (15006) and
//! HBONE (15008) listeners and the tasks serving them with the workload's
//! certificate. Dedicated mode runs one; in-pod mode one per pod, each in
//! its pod's namespace, all sharing the node proxy's state and metrics.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use arc_swap::ArcSwap;
use oxmesh_identity::credentials::Credentials;
use oxmesh_proxy::hbone::client::Client;
use oxmesh_proxy::metrics::Metrics;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::inbound::{Local, ToWorkload};
use crate::inpod::sockets::Sockets;
use crate::outbound::Outbound;
use crate::state::State;

pub const OUTBOUND_PORT: u16 = 15001;
pub const INBOUND_PLAINTEXT_PORT: u16 = 15006;

/// What every workload proxy of a node proxy shares.
#[derive(Clone)]
pub struct Shared {
    pub state: Arc<ArcSwap<State>>,
    pub metrics: Arc<Metrics>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}")]
pub struct ListenError {
    pub addr: SocketAddr,
    pub source: std::io::Error,
}

pub struct Listeners {
    outbound: Vec<TcpListener>,
    plaintext: Vec<TcpListener>,
    hbone: Vec<TcpListener>,
}

impl Listeners {
    /// Listens on the three ports at `bind`, where `sockets` live.
    pub fn open(sockets: &Sockets, bind: IpAddr) -> Result<Self, ListenError> {
        Self::open_all(sockets, bind, None)
    }

    /// [`Listeners::open`] on IPv4's `bind`, and on IPv6's any address too
    /// where `sockets` have IPv6 (a pod without it gets the first only), so
    /// a pod's IPv6 is served as its IPv4 is.
    pub fn open_dual(sockets: &Sockets, bind: IpAddr) -> Result<Self, ListenError> {
        Self::open_all(
            sockets,
            bind,
            Some(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)),
        )
    }

    fn open_all(
        sockets: &Sockets,
        bind: IpAddr,
        also: Option<IpAddr>,
    ) -> Result<Self, ListenError> {
        let listen = |ip, port| {
            let addr = SocketAddr::new(ip, port);
            sockets
                .listen(addr)
                .map_err(|source| ListenError { addr, source })
        };
        let port = |port| -> Result<Vec<TcpListener>, ListenError> {
            let mut listeners = vec![listen(bind, port)?];
            match also.map(|ip| listen(ip, port)) {
                Some(Ok(listener)) => listeners.push(listener),
                Some(Err(e)) => tracing::debug!(error = %e, "no IPv6 listener"),
                None => {}
            }
            Ok(listeners)
        };
        Ok(Self {
            outbound: port(OUTBOUND_PORT)?,
            plaintext: port(INBOUND_PLAINTEXT_PORT)?,
            hbone: port(oxmesh_proxy::hbone::PORT)?,
        })
    }
}

/// The serving tasks of one workload; dropping it closes its listeners
/// (connections already carried run to their end).
pub struct Served {
    tasks: Vec<JoinHandle<()>>,
}

impl Served {
    /// Ties `task` to the workload too.
    pub fn also(&mut self, task: JoinHandle<()>) {
        self.tasks.push(task);
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

pub fn serve(
    listeners: Listeners,
    shared: &Shared,
    local: Local,
    credentials: Arc<Credentials>,
    sockets: Sockets,
) -> Served {
    let to_workload = Arc::new(ToWorkload {
        state: shared.state.clone(),
        local: local.clone(),
        metrics: shared.metrics.clone(),
        sockets: sockets.clone(),
    });
    let client = Client::with_sockets(credentials.clone(), Arc::new(sockets.clone()));
    let outbound = Arc::new(Outbound::new(
        shared.state.clone(),
        client,
        local,
        shared.metrics.clone(),
        sockets,
    ));
    let mut tasks = Vec::new();
    for listener in listeners.hbone {
        tasks.push(tokio::spawn(oxmesh_proxy::hbone::server::serve(
            listener,
            credentials.clone(),
            to_workload.clone(),
        )));
    }
    for listener in listeners.plaintext {
        tasks.push(tokio::spawn(crate::inbound::plaintext(
            listener,
            to_workload.clone(),
        )));
    }
    for listener in listeners.outbound {
        tasks.push(tokio::spawn(outbound.clone().serve(listener)));
    }
    Served { tasks }
}

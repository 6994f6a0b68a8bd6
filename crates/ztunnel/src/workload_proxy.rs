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
    outbound: TcpListener,
    plaintext: TcpListener,
    hbone: TcpListener,
}

impl Listeners {
    /// Listens on the three ports at `bind`, where `sockets` live.
    pub fn open(sockets: &Sockets, bind: IpAddr) -> Result<Self, ListenError> {
        let listen = |port| {
            let addr = SocketAddr::new(bind, port);
            sockets
                .listen(addr)
                .map_err(|source| ListenError { addr, source })
        };
        Ok(Self {
            outbound: listen(OUTBOUND_PORT)?,
            plaintext: listen(INBOUND_PLAINTEXT_PORT)?,
            hbone: listen(oxmesh_proxy::hbone::PORT)?,
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
    Served {
        tasks: vec![
            tokio::spawn(oxmesh_proxy::hbone::server::serve(
                listeners.hbone,
                credentials,
                to_workload.clone(),
            )),
            tokio::spawn(crate::inbound::plaintext(listeners.plaintext, to_workload)),
            tokio::spawn(outbound.serve(listeners.outbound)),
        ],
    }
}

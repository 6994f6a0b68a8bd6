//! The node proxy's side of ZDS: it connects to the node agent, says hello,
//! and answers each message with an `Ack` (empty, or the error). An
//! `AddWorkload` brings a pod and its network namespace: the proxy listens
//! inside it and gets the pod's certificate from the CA by impersonation.
//! On each (re)connection the agent first re-sends what it has, `Keep` for
//! pods already handed over, then `SnapshotSent`: pods not named by then
//! are gone. A message the proxy cannot act on is refused in its `Ack` and
//! changes nothing else.

use std::collections::{HashMap, HashSet};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use oxmesh_identity::credentials::Credentials;
use oxmesh_identity::manager::{CertificateManager, Rotation};
use oxmesh_identity::{SpiffeId, TrustDomain};
use oxmesh_xds::ca_client::GrpcCaClient;
use oxmesh_xds::zds::{
    Ack, AddWorkload, Version, WorkloadRequest, WorkloadResponse, ZdsHello, workload_request,
    workload_response,
};
use tokio::sync::watch;

use super::netns::NetNs;
use super::sockets::Sockets;
use crate::inbound::Local;
use crate::node_proxy::BIND_ALL;
use crate::workload_proxy::{self, Listeners, Served, Shared};
use crate::zds::{Channel, ZdsError};

/// Between attempts to reach the node agent.
const RECONNECT: Duration = Duration::from_millis(500);

/// The pod key the agent chose (Kubernetes' pod uid on a cluster).
type Uid = String;

struct Pod {
    credentials: Arc<Credentials>,
    /// Its listeners and certificate renewal; dropped, they stop.
    _served: Served,
}

/// What in-pod mode publishes for readiness and the admin port.
#[derive(Clone, Default)]
pub struct Published {
    /// Whether the agent's snapshot has been taken in since connecting.
    pub snapshot: bool,
    pub certificates: Vec<Arc<Credentials>>,
}

pub struct Pods {
    shared: Shared,
    ca: GrpcCaClient,
    trust_domain: TrustDomain,
    serving: HashMap<Uid, Pod>,
    /// The pods named since this connection's snapshot began; `None` once
    /// it has been sent.
    named: Option<HashSet<Uid>>,
    published: watch::Sender<Published>,
}

impl Pods {
    pub fn new(shared: Shared, ca: GrpcCaClient, trust_domain: TrustDomain) -> Self {
        Self {
            shared,
            ca,
            trust_domain,
            serving: HashMap::new(),
            named: None,
            published: watch::Sender::new(Published::default()),
        }
    }

    pub fn published(&self) -> watch::Receiver<Published> {
        self.published.subscribe()
    }

    /// Follows the node agent at `socket` for ever, reconnecting when the
    /// connection is lost. Pods keep being served meanwhile.
    pub async fn follow(mut self, socket: PathBuf) {
        let mut said = String::new();
        loop {
            let ended = match Channel::connect(&socket).await {
                Ok(channel) => {
                    said.clear();
                    tracing::info!(socket = %socket.display(), "connected to the node agent");
                    self.session(&channel).await
                }
                Err(e) => Err(e),
            };
            self.published.send_modify(|p| p.snapshot = false);
            match ended {
                Ok(()) => tracing::warn!("the node agent closed the ZDS connection"),
                // Said once per cause, not every half second.
                Err(e) if e.to_string() != said => {
                    said = e.to_string();
                    tracing::warn!(error = %e, "no ZDS connection to the node agent");
                }
                Err(_) => {}
            }
            tokio::time::sleep(RECONNECT).await;
        }
    }

    async fn session(&mut self, channel: &Channel) -> Result<(), ZdsError> {
        let hello = ZdsHello {
            version: Version::V1.into(),
        };
        channel.send(&hello, None).await?;
        self.named = Some(HashSet::new());
        while let Some((request, fd)) = channel.recv::<WorkloadRequest>().await? {
            let error = match self.handle(request, fd) {
                Ok(()) => String::new(),
                Err(e) => {
                    tracing::warn!(error = %e, "ZDS request refused");
                    e
                }
            };
            let ack = WorkloadResponse {
                payload: Some(workload_response::Payload::Ack(Ack { error })),
            };
            channel.send(&ack, None).await?;
        }
        Ok(())
    }

    fn handle(&mut self, request: WorkloadRequest, fd: Option<OwnedFd>) -> Result<(), String> {
        use workload_request::Payload;
        let done = match request.payload {
            Some(Payload::Add(add)) => self.add(add, fd),
            Some(Payload::Keep(keep)) => self.keep(keep.uid),
            Some(Payload::Del(del)) => self.delete(&del.uid),
            Some(Payload::SnapshotSent(_)) => {
                self.snapshot_sent();
                Ok(())
            }
            None => Err("a WorkloadRequest with no payload".to_owned()),
        };
        self.publish();
        done
    }

    fn add(&mut self, add: AddWorkload, fd: Option<OwnedFd>) -> Result<(), String> {
        let uid = add.uid;
        let Some(fd) = fd else {
            return Err(format!(
                "AddWorkload {uid:?} carries no network namespace descriptor"
            ));
        };
        let Some(info) = add.workload_info else {
            return Err(format!("AddWorkload {uid:?} has no workload_info"));
        };
        if let Some(named) = self.named.as_mut() {
            named.insert(uid.clone());
        }
        if self.serving.contains_key(&uid) {
            return Ok(());
        }
        let pod = format!("{}/{} (uid {uid})", info.namespace, info.name);
        let identity = SpiffeId::new(
            self.trust_domain.clone(),
            &info.namespace,
            &info.service_account,
        )
        .map_err(|e| format!("pod {pod}: its identity: {e}"))?;
        let sockets = Sockets::InPod(NetNs::from_fd(fd));
        let listeners = Listeners::open_dual(&sockets, BIND_ALL)
            .map_err(|e| format!("pod {pod}: cannot enter its network namespace: {e}"))?;
        let credentials = Credentials::new(identity.clone());
        let renewal = CertificateManager::new(
            self.ca.impersonating(identity),
            credentials.clone(),
            Rotation::default(),
        );
        let local = Local {
            namespace: info.namespace.clone(),
            name: info.name.clone(),
        };
        let mut served =
            workload_proxy::serve(listeners, &self.shared, local, credentials.clone(), sockets);
        served.also(tokio::spawn(renewal.run()));
        tracing::info!(%pod, "serving a pod in its network namespace");
        self.serving.insert(
            uid,
            Pod {
                credentials,
                _served: served,
            },
        );
        Ok(())
    }

    fn keep(&mut self, uid: Uid) -> Result<(), String> {
        if !self.serving.contains_key(&uid) {
            return Err(format!("KeepWorkload {uid:?}: no such pod is served"));
        }
        if let Some(named) = self.named.as_mut() {
            named.insert(uid);
        }
        Ok(())
    }

    fn delete(&mut self, uid: &str) -> Result<(), String> {
        match self.serving.remove(uid) {
            Some(_) => {
                tracing::info!(uid, "pod removed");
                Ok(())
            }
            None => Err(format!("DelWorkload {uid:?}: no such pod is served")),
        }
    }

    /// Stops serving every pod the snapshot did not name.
    fn snapshot_sent(&mut self) {
        let named = self.named.take().unwrap_or_default();
        self.serving.retain(|uid, _| {
            let kept = named.contains(uid);
            if !kept {
                tracing::info!(uid, "pod gone while the node agent was away");
            }
            kept
        });
        self.published.send_modify(|p| p.snapshot = true);
    }

    fn publish(&self) {
        let certificates = self
            .serving
            .values()
            .map(|pod| pod.credentials.clone())
            .collect();
        self.published
            .send_modify(|p| p.certificates = certificates);
    }
}

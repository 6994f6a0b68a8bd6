//! Ambient mode's node agent (Istio's CNI node agent): it enrolls a node's
//! ambient pods, installing each pod's redirection inside its network
//! namespace, and hands them to the node proxy over ZDS. It serves the ZDS
//! socket; a node proxy that connects (or reconnects) first gets every pod
//! enrolled, then `SnapshotSent`, then each enrollment and release as they
//! happen, one message at a time, each acknowledged before the next.

pub mod redirection;

use std::collections::BTreeMap;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use oxmesh_xds::zds::{
    AddWorkload, DelWorkload, SnapshotSent, WorkloadInfo as ZdsWorkloadInfo, WorkloadRequest,
    WorkloadResponse, ZdsHello, workload_request::Payload, workload_response,
};
use tokio::sync::watch;

use crate::inpod::netns::NetNs;
use crate::node_proxy::WorkloadInfo;
use crate::zds::{Channel, ZdsError};

pub use redirection::RedirectionError;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("pod {pod}: cannot open its network namespace {path}: {source}")]
    Netns {
        pod: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("pod {pod}: {source}")]
    Redirection {
        pod: String,
        source: RedirectionError,
    },
    #[error("no pod with uid {0:?} is enrolled")]
    Unknown(String),
    #[error(transparent)]
    Zds(#[from] ZdsError),
    #[error("the node proxy did not open with ZdsHello")]
    NoHello,
}

/// An enrolled pod.
#[derive(Debug)]
pub struct Enrolled {
    pub uid: String,
    pub info: WorkloadInfo,
    netns: NetNs,
}

impl Enrolled {
    fn name(&self) -> String {
        format!("{}/{}", self.info.namespace, self.info.name)
    }
}

type Pods = BTreeMap<String, Arc<Enrolled>>;

/// The node's enrolled pods; clones share them.
#[derive(Clone, Default)]
pub struct NodeAgent {
    pods: Arc<watch::Sender<Pods>>,
}

impl NodeAgent {
    /// Enrolls the pod whose network namespace is at `netns` (a path such
    /// as `/run/netns/NAME`). Enrolling it again replaces it.
    pub fn enroll(&self, uid: &str, info: WorkloadInfo, netns: &Path) -> Result<(), AgentError> {
        let pod = format!("{}/{}", info.namespace, info.name);
        let opened = NetNs::open(netns).map_err(|source| AgentError::Netns {
            pod: pod.clone(),
            path: netns.to_owned(),
            source,
        })?;
        redirection::install(&opened).map_err(|source| AgentError::Redirection { pod, source })?;
        let enrolled = Arc::new(Enrolled {
            uid: uid.to_owned(),
            info,
            netns: opened,
        });
        self.pods.send_modify(|pods| {
            pods.insert(uid.to_owned(), enrolled);
        });
        Ok(())
    }

    /// Releases a pod: its redirection removed, the node proxy told.
    pub fn release(&self, uid: &str) -> Result<(), AgentError> {
        let mut removed = None;
        self.pods.send_modify(|pods| removed = pods.remove(uid));
        let pod = removed.ok_or_else(|| AgentError::Unknown(uid.to_owned()))?;
        redirection::remove(&pod.netns);
        Ok(())
    }

    /// The enrolled pods' uids.
    pub fn uids(&self) -> Vec<String> {
        self.pods.borrow().keys().cloned().collect()
    }

    /// Serves node proxies on `socket` until the task is dropped.
    pub async fn serve(self, socket: &Path) -> Result<(), AgentError> {
        let listener = crate::zds::listen(socket)?;
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "ZDS accept failed");
                    tokio::time::sleep(crate::accept::BACKOFF).await;
                    continue;
                }
            };
            let agent = self.clone();
            tokio::spawn(async move {
                match agent.session(Channel::from(stream)).await {
                    Ok(()) => tracing::info!("node proxy disconnected"),
                    Err(e) => tracing::warn!(error = %e, "ZDS session with the node proxy ended"),
                }
            });
        }
    }

    async fn session(&self, channel: Channel) -> Result<(), AgentError> {
        match channel.recv::<ZdsHello>().await? {
            Some(_) => tracing::info!("node proxy connected"),
            None => return Err(AgentError::NoHello),
        }
        let mut pods = self.pods.subscribe();
        let mut sent = Pods::new();
        let current = pods.borrow_and_update().clone();
        sync(&channel, &mut sent, &current).await?;
        let snapshot = Payload::SnapshotSent(SnapshotSent {});
        request(&channel, snapshot, None, "the snapshot").await?;
        loop {
            if pods.changed().await.is_err() {
                return Ok(());
            }
            let current = pods.borrow_and_update().clone();
            sync(&channel, &mut sent, &current).await?;
        }
    }
}

/// Brings what the node proxy was sent up to `current`: releases first,
/// then enrollments (a re-enrolled pod is released and added again).
async fn sync(channel: &Channel, sent: &mut Pods, current: &Pods) -> Result<(), AgentError> {
    let stale: Vec<Arc<Enrolled>> = sent
        .values()
        .filter(|pod| {
            current
                .get(&pod.uid)
                .is_none_or(|now| !Arc::ptr_eq(now, pod))
        })
        .cloned()
        .collect();
    for pod in stale {
        let del = Payload::Del(DelWorkload {
            uid: pod.uid.clone(),
        });
        request(channel, del, None, &pod.name()).await?;
        sent.remove(&pod.uid);
    }
    for pod in current.values() {
        if sent.contains_key(&pod.uid) {
            continue;
        }
        let add = Payload::Add(AddWorkload {
            uid: pod.uid.clone(),
            workload_info: Some(ZdsWorkloadInfo {
                name: pod.info.name.clone(),
                namespace: pod.info.namespace.clone(),
                service_account: pod.info.service_account.clone(),
            }),
        });
        request(channel, add, Some(&pod.netns), &pod.name()).await?;
        sent.insert(pod.uid.clone(), pod.clone());
    }
    Ok(())
}

/// Sends one request and waits for its `Ack`; a refusal is logged (the
/// pod stays unserved; the others are not disturbed).
async fn request(
    channel: &Channel,
    payload: Payload,
    netns: Option<&NetNs>,
    about: &str,
) -> Result<(), AgentError> {
    let message = WorkloadRequest {
        payload: Some(payload),
    };
    channel
        .send(&message, netns.map(|n| n.fd().as_fd()))
        .await?;
    let Some((response, _)) = channel.recv::<WorkloadResponse>().await? else {
        return Err(ZdsError::Io(std::io::ErrorKind::UnexpectedEof.into()).into());
    };
    if let Some(workload_response::Payload::Ack(ack)) = response.payload
        && !ack.error.is_empty()
    {
        tracing::warn!(%about, error = %ack.error, "the node proxy refused");
    }
    Ok(())
}

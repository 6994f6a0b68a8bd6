//! Ambient mode on the testbed's node ([`NODE`]): Istio CNI's node agent
//! runs inside `up` (a thread serving ZDS on the run directory's
//! `ztunnel.sock`) and the node proxy as a pod of its own
//! (`istio-system/ztunnel-…` at 198.18.0.5, `oxmesh ztunnel --mode shared`
//! with a token bound to the node), both started when the first pod needs
//! them. An ambient pod is enrolled (Istio's in-pod rules inside its
//! namespace, the pod handed to the node proxy, its config annotated) before
//! its app starts, and the app is held until the node proxy is ready, where
//! Istio lets an app start before its traffic can flow. Changing a
//! namespace's `istio.io/dataplane-mode` with `oxmesh apply` enrolls or
//! releases its running pods on the spot, without restarting them.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use oxmesh_ztunnel::node_agent::NodeAgent;
use oxmesh_ztunnel::node_proxy::WorkloadInfo;

use super::{Cluster, UpError, control_plane_host, netns_command};
use crate::manifest;
use crate::plan::{CONTROL_PLANE_IP, DEFAULT_REVISION, NODE, NODE_PROXY_IP, PodId, PodPlan};

/// The node proxy's account, as Istio's chart names it (the control plane
/// trusts it to ask for its node's pods' certificates).
const NODE_PROXY_ACCOUNT: &str = "ztunnel";

pub(super) struct Ambient {
    agent: NodeAgent,
    enrolled: BTreeSet<PodId>,
}

/// The node proxy's pod: `ztunnel-` and a suffix, as a DaemonSet names it.
pub(crate) fn node_proxy_pod() -> PodId {
    let suffix = crate::plan::stable(NODE) & 0xf_ffff;
    PodId::new("istio-system", &format!("ztunnel-{suffix:05x}"))
}

impl Cluster {
    fn zds_socket(&self) -> PathBuf {
        self.run.join("ztunnel.sock")
    }

    /// The node proxy's pod, its address and whether it runs.
    pub(super) fn node_proxy_pods(&self) -> Option<(PodId, std::net::Ipv4Addr, bool)> {
        self.ambient
            .as_ref()
            .map(|_| (node_proxy_pod(), NODE_PROXY_IP, true))
    }

    /// Whether the node proxy serves `pod`.
    pub(super) fn is_enrolled(&self, pod: &PodId) -> bool {
        self.ambient
            .as_ref()
            .is_some_and(|a| a.enrolled.contains(pod))
    }

    /// The node agent, started with the node proxy on first use.
    fn node_agent(&mut self) -> Result<NodeAgent, UpError> {
        if let Some(ambient) = &self.ambient {
            return Ok(ambient.agent.clone());
        }
        let agent = NodeAgent::default();
        let serving = agent.clone();
        let socket = self.zds_socket();
        std::thread::Builder::new()
            .name("node-agent".into())
            .spawn(move || serve(serving, &socket))
            .map_err(|e| UpError::Start(format!("cannot start the node agent: {e}")))?;
        self.start_node_proxy()?;
        self.ambient = Some(Ambient {
            agent: agent.clone(),
            enrolled: BTreeSet::new(),
        });
        Ok(agent)
    }

    fn start_node_proxy(&mut self) -> Result<(), UpError> {
        let pod = node_proxy_pod();
        let ns = self.add_pod(&pod, NODE_PROXY_IP)?;
        self.write_netns_files(&ns, &pod, NODE_PROXY_IP)?;
        let token_file = self.mint_token(&pod, NODE_PROXY_ACCOUNT, Some(NODE))?;
        let binary = self.options.binary.clone();
        let mut c = netns_command(&ns, &binary.to_string_lossy());
        c.args(["ztunnel", "--mode", "shared", "--zds-socket"])
            .arg(self.zds_socket())
            .args([
                "--pod",
                &format!("{}/{}/{NODE_PROXY_ACCOUNT}", pod.namespace, pod.name),
                "--discovery-address",
                &format!("{CONTROL_PLANE_IP}:15012"),
                "--control-plane-name",
                &control_plane_host(DEFAULT_REVISION),
                "--instance-ip",
                &NODE_PROXY_IP.to_string(),
            ])
            .arg("--token-file")
            .arg(&token_file)
            .arg("--root-cert")
            .arg(self.run.join("root-cert.pem"));
        self.spawn(&pod, "istio-proxy", c)
    }

    /// Hands `pod` to the node proxy, its redirection installed.
    pub(super) fn enroll(&mut self, pod: &PodPlan) -> Result<(), UpError> {
        let id = pod.id();
        let ns = self
            .netns_names
            .get(&id)
            .cloned()
            .ok_or_else(|| UpError::Start(format!("pod {id} has no network namespace")))?;
        let agent = self.node_agent()?;
        let info = WorkloadInfo {
            namespace: pod.namespace.clone(),
            name: pod.name.clone(),
            service_account: pod.service_account.clone(),
        };
        agent
            .enroll(&id.to_string(), info, &Path::new("/run/netns").join(ns))
            .map_err(|e| UpError::Start(e.to_string()))?;
        if let Some(ambient) = self.ambient.as_mut() {
            ambient.enrolled.insert(id);
        }
        Ok(())
    }

    /// Takes `pod` back from the node proxy, if it was enrolled.
    pub(super) fn release(&mut self, pod: &PodId) {
        let Some(ambient) = self.ambient.as_mut() else {
            return;
        };
        if ambient.enrolled.remove(pod)
            && let Err(e) = ambient.agent.release(&pod.to_string())
        {
            tracing::warn!(%pod, error = %e, "cannot release the pod");
        }
    }

    /// The argv that holds an ambient pod's app until the node proxy is
    /// ready.
    pub(super) fn held_for_node_proxy(&self) -> String {
        format!(
            "{} proxy wait --timeout 60s --address {NODE_PROXY_IP}",
            self.options.binary.to_string_lossy()
        )
    }

    /// Brings every running pod's enrollment in line with the labels: what
    /// a Namespace change decides takes effect at once, as in Istio.
    pub(super) fn sync_enrollment(&mut self) {
        let config = self.state.join("config/cluster.yaml");
        let (enroll, release): (Vec<PodPlan>, Vec<PodPlan>) = self
            .plan
            .pods
            .iter()
            .filter(|p| !p.terminating && self.plan.is_ambient(p) != self.is_enrolled(&p.id()))
            .cloned()
            .partition(|p| self.plan.is_ambient(p));
        // The control plane hears of releases first, in one edit of its
        // config: callers stop tunnelling before the pods stop taking tunnels.
        let released: Vec<PodId> = release.iter().map(PodPlan::id).collect();
        if let Err(e) = manifest::set_pods_ambient(&config, &released, false) {
            tracing::warn!(error = %e, "cannot report released pods");
        }
        for id in &released {
            self.release(id);
            tracing::info!(pod = %id, "released from ambient mode");
        }
        let mut enrolled = Vec::new();
        for pod in &enroll {
            match self.enroll(pod) {
                Ok(()) => enrolled.push(pod.id()),
                Err(e) => tracing::warn!(pod = %pod.id(), error = %e, "cannot enroll"),
            }
        }
        // And of enrollments once the node proxy serves the pods.
        if let Err(e) = manifest::set_pods_ambient(&config, &enrolled, true) {
            tracing::warn!(error = %e, "cannot report enrolled pods");
        }
        for id in &enrolled {
            tracing::info!(pod = %id, "enrolled in ambient mode");
        }
    }
}

/// The node agent's thread: ZDS for as long as `up` runs.
fn serve(agent: NodeAgent, socket: &Path) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!(error = %e, "the node agent cannot start its runtime");
            return;
        }
    };
    if let Err(e) = runtime.block_on(agent.serve(socket)) {
        tracing::error!(error = %e, "the node agent stopped");
    }
}

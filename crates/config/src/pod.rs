//! A Pod as the mesh uses it: where it runs, whether it is ready, its account
//! and its named container ports. Kubernetes' own `Pod` type is kept only while
//! decoding; at thousands of pods its mostly-empty fields cost tens of megabytes.

use k8s_openapi::api::core::v1 as core;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pod {
    pub service_account: Option<String>,
    /// `status.podIP`.
    pub ip: Option<String>,
    /// `status.phase`.
    pub phase: Option<String>,
    /// The `Ready` condition; `None` when the status reports none.
    pub ready: Option<bool>,
    /// Container ports that have a name (a Service's `targetPort` may name one).
    pub named_ports: Vec<(String, u16)>,
    /// `spec.nodeName`: where the pod runs, whose labels give its locality.
    pub node_name: Option<String>,
}

impl From<core::Pod> for Pod {
    fn from(pod: core::Pod) -> Self {
        let spec = pod.spec.unwrap_or_default();
        let status = pod.status.unwrap_or_default();
        let named_ports = spec
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|p| Some((p.name.clone()?, u16::try_from(p.container_port).ok()?)))
            .collect();
        let ready = status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "Ready")
            .map(|c| c.status == "True");
        Pod {
            service_account: spec.service_account_name,
            ip: status.pod_ip,
            phase: status.phase,
            ready,
            named_ports,
            node_name: spec.node_name,
        }
    }
}

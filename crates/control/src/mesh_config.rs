//! Mesh-wide settings (Istio's MeshConfig): what applies when no object says
//! otherwise.

use std::time::Duration;

use oxmesh_identity::TrustDomain;

#[derive(Clone, Debug)]
pub struct MeshConfig {
    pub trust_domain: TrustDomain,
    /// The cluster DNS domain (`cluster.local`).
    pub domain: String,
    /// Where mesh-wide policies live (`istio-system`).
    pub root_namespace: String,
    pub outbound_traffic_policy: OutboundTrafficPolicy,
    pub connect_timeout: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutboundTrafficPolicy {
    /// Unknown destinations are reached directly (PassthroughCluster).
    AllowAny,
    /// Unknown destinations are refused (BlackHoleCluster).
    RegistryOnly,
}

impl Default for MeshConfig {
    fn default() -> Self {
        Self {
            trust_domain: TrustDomain::cluster_local(),
            domain: "cluster.local".to_owned(),
            root_namespace: "istio-system".to_owned(),
            outbound_traffic_policy: OutboundTrafficPolicy::AllowAny,
            connect_timeout: Duration::from_secs(10),
        }
    }
}

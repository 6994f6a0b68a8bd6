//! `oxmesh ztunnel`: ambient mode's node proxy. It learns the mesh's
//! workloads, services and L4 policies from Istio's workload API, carries a
//! workload's outbound connections to HBONE destinations in HBONE (and
//! others in plaintext), takes HBONE for its workloads on 15008 under L4
//! AuthorizationPolicy, and holds each workload's certificate.

mod accept;
pub mod admin;
pub mod inbound;
pub mod inpod;
pub mod node_agent;
pub mod node_proxy;
pub mod outbound;
pub mod rbac;
pub mod state;
pub mod telemetry;
pub mod workload_proxy;
pub mod xds;
pub mod zds;

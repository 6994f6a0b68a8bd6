//! The Kubernetes Gateway API kinds Istio implements (gateway.networking.k8s.io):
//! Gateway, HTTPRoute, GRPCRoute and ReferenceGrant from the standard channel,
//! TCPRoute and TLSRoute from the experimental one.

pub mod deployment;
mod gateway;
mod grpc_route;
mod http_route;
mod l4_route;
mod reference_grant;
mod shared;

pub use gateway::*;
pub use grpc_route::*;
pub use http_route::*;
pub use l4_route::*;
pub use reference_grant::*;
pub use shared::*;

/// The API group.
pub const GROUP: &str = "gateway.networking.k8s.io";
/// The GatewayClass Istio installs, and the only one oxmesh serves.
pub const CLASS: &str = "istio";
/// The label on a managed gateway's pods, which its Service selects.
pub const NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";
pub const CLASS_LABEL: &str = "gateway.networking.k8s.io/gateway-class-name";

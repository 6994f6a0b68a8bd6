//! The Kubernetes Gateway API kinds Istio implements (gateway.networking.k8s.io):
//! Gateway, HTTPRoute, GRPCRoute and ReferenceGrant from the standard channel,
//! TCPRoute and TLSRoute from the experimental one.

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

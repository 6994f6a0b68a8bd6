//! The mesh's wire protocols: Istio's protobufs (compiled here from `proto/`), the
//! client side of Istio's CA service, and the ADS server.

pub mod ads;
pub mod ca_client;
pub mod grpc_bootstrap;
pub mod json;
pub mod tls_connector;

/// Generated from `proto/istio/v1/auth/ca.proto`.
pub mod istio_ca {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("istio.v1.auth");
}

/// Istio's workload discovery API (`istio.workload`), what the node proxy
/// learns workloads and services from; generated from
/// `proto/istio/workload/workload.proto`.
pub mod workload {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("istio.workload");

    /// The type URL of [`Address`] in an `Any` and in ADS.
    pub const ADDRESS_TYPE: &str = "type.googleapis.com/istio.workload.Address";
}

/// Istio's L4 authorization for the node proxy (`istio.security`), generated
/// from `proto/istio/security/authorization.proto`.
pub mod security {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("istio.security");

    /// The type URL of [`Authorization`] in an `Any` and in ADS.
    pub const AUTHORIZATION_TYPE: &str = "type.googleapis.com/istio.security.Authorization";
}

/// ZDS, how ambient mode's node agent hands pods (and their network
/// namespaces) to the node proxy (`istio.workload.zds`), generated from
/// `proto/istio/zds/zds.proto`.
pub mod zds {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("istio.workload.zds");
}

/// Istio's stats filter config (`istio.stats`), generated from
/// `proto/stats/config.proto`.
pub mod stats {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("stats");

    /// The type URL of [`PluginConfig`] in an `Any`.
    pub const PLUGIN_CONFIG_TYPE: &str = "type.googleapis.com/stats.PluginConfig";
    /// The filter's name, on HTTP connection managers and TCP chains.
    pub const FILTER_NAME: &str = "istio.stats";
}

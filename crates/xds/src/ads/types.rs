//! The resource types served over ADS and the order they are pushed in: clusters
//! before the endpoints they load, both before the listeners and routes that point
//! at them, so no route ever names a cluster the proxy does not have yet. The
//! node proxy's types (workloads and services, then the policies naming them)
//! come last: no proxy watches both kinds.

pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
pub const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

/// Istio's workload discovery API, for the node proxy.
pub const ADDRESS: &str = crate::workload::ADDRESS_TYPE;
pub const AUTHORIZATION: &str = crate::security::AUTHORIZATION_TYPE;

/// Push order.
pub const ORDER: [&str; 7] = [
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
    SECRET,
    ADDRESS,
    AUTHORIZATION,
];

/// Types whose empty subscription means "everything" (listeners, clusters,
/// the node proxy's workloads and policies); the others are asked for by name.
pub fn is_wildcard_type(type_url: &str) -> bool {
    matches!(type_url, CLUSTER | LISTENER | ADDRESS | AUTHORIZATION)
}

pub fn is_known(type_url: &str) -> bool {
    ORDER.contains(&type_url)
}

/// `Cluster` from `type.googleapis.com/envoy.config.cluster.v3.Cluster`.
pub fn short_name(type_url: &str) -> &str {
    type_url.rsplit('.').next().unwrap_or(type_url)
}

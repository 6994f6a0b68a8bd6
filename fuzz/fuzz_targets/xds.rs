//! xDS resources as the proxy converts them from a DiscoveryResponse: the
//! first byte picks listener, cluster, route configuration or endpoints, the
//! rest is the resource's protobuf. Bytes that decode become config or a
//! NACK's reason, never a panic.
#![no_main]

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use libfuzzer_sys::fuzz_target;
use oxmesh_proxy::config::{cluster, endpoint, listener, route};
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Some((kind, bytes)) = data.split_first() else {
        return;
    };
    match kind % 4 {
        0 => {
            if let Ok(l) = Listener::decode(bytes) {
                let _ = listener::convert(&l);
            }
        }
        1 => {
            if let Ok(c) = Cluster::decode(bytes) {
                let _ = cluster::convert(&c);
            }
        }
        2 => {
            if let Ok(r) = RouteConfiguration::decode(bytes) {
                let _ = route::convert(&r);
            }
        }
        _ => {
            if let Ok(e) = ClusterLoadAssignment::decode(bytes) {
                let _ = endpoint::convert(&e);
            }
        }
    }
});

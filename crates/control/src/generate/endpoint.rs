//! EDS: a ClusterLoadAssignment per outbound EDS cluster, endpoints grouped by
//! locality, each marked with whether it accepts mesh mTLS.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::{HealthStatus, Locality};
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use oxmesh_config::service::Resolution;

use super::cluster::{self, Outbound};
use super::wire;
use crate::proxy::ProxyClass;
use crate::push_context::{PushContext, labels_include};
use crate::registry;

/// The metadata key Envoy matches `transport_socket_matches` against.
pub const TRANSPORT_SOCKET_MATCH: &str = "envoy.transport_socket_match";

pub fn generate(ctx: &PushContext, proxy: &ProxyClass) -> Vec<ClusterLoadAssignment> {
    cluster::outbound(ctx, proxy)
        .iter()
        .filter(|o| o.service.resolution == Resolution::Endpoints)
        .map(|o| assignment(ctx, o, o.name()))
        .collect()
}

/// The endpoints of one cluster: the service port's endpoints, narrowed to the
/// subset's labels.
pub fn assignment(
    ctx: &PushContext,
    outbound: &Outbound<'_>,
    name: String,
) -> ClusterLoadAssignment {
    let mut by_locality: BTreeMap<&str, Vec<&registry::Endpoint>> = BTreeMap::new();
    for endpoint in ctx
        .registry
        .endpoints(outbound.service, outbound.port.number)
    {
        if outbound
            .subset
            .is_some_and(|s| !labels_include(&endpoint.labels, &s.labels))
        {
            continue;
        }
        by_locality
            .entry(endpoint.locality.as_str())
            .or_default()
            .push(endpoint);
    }
    ClusterLoadAssignment {
        cluster_name: name,
        endpoints: by_locality
            .into_iter()
            .map(|(locality, endpoints)| group(ctx, locality, &endpoints))
            .collect(),
        ..Default::default()
    }
}

fn group(
    ctx: &PushContext,
    locality: &str,
    endpoints: &[&registry::Endpoint],
) -> LocalityLbEndpoints {
    let mut parts = locality.splitn(3, '/').map(str::to_owned);
    let locality = Locality {
        region: parts.next().unwrap_or_default(),
        zone: parts.next().unwrap_or_default(),
        sub_zone: parts.next().unwrap_or_default(),
    };
    let weight: u32 = endpoints
        .iter()
        .map(|e| e.weight)
        .fold(0, u32::saturating_add);
    LocalityLbEndpoints {
        locality: Some(locality),
        lb_endpoints: endpoints.iter().map(|e| lb_endpoint(ctx, e)).collect(),
        // gRPC's xDS client drops localities without a weight.
        load_balancing_weight: Some(wire::u32_value(weight.max(1))),
        ..Default::default()
    }
}

fn lb_endpoint(ctx: &PushContext, endpoint: &registry::Endpoint) -> LbEndpoint {
    LbEndpoint {
        host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
            address: Some(wire::socket_address(&endpoint.address, endpoint.port)),
            ..Default::default()
        })),
        health_status: if endpoint.healthy {
            HealthStatus::Healthy
        } else {
            HealthStatus::Unhealthy
        } as i32,
        // One map entry only: protobuf maps encode in hash order, and resource
        // versions are hashes of the encoding.
        metadata: ctx.accepts_mtls(endpoint).then(|| {
            wire::metadata([(
                TRANSPORT_SOCKET_MATCH,
                vec![("tlsMode", "istio".to_owned())],
            )])
        }),
        load_balancing_weight: Some(wire::u32_value(endpoint.weight.max(1))),
    }
}

//! EDS: a ClusterLoadAssignment per outbound EDS cluster, endpoints grouped by
//! locality (weighted and ranked for the proxy's own, see [`locality_lb`]),
//! each marked with whether it accepts mesh mTLS.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::{HealthStatus, Locality as EnvoyLocality};
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use oxmesh_config::service::Resolution;

use super::cluster::{self, Outbound};
use super::locality_lb::{self, Group};
use super::wire;
use crate::locality::Locality;
use crate::proxy::ProxyClass;
use crate::push_context::{PushContext, labels_include};
use crate::registry;

/// The metadata key Envoy matches `transport_socket_matches` against.
pub const TRANSPORT_SOCKET_MATCH: &str = "envoy.transport_socket_match";

pub fn generate(ctx: &PushContext, proxy: &ProxyClass) -> Vec<ClusterLoadAssignment> {
    cluster::outbound(ctx, proxy)
        .iter()
        .filter(|o| o.service.resolution == Resolution::Endpoints)
        .map(|o| {
            let mut groups = groups(ctx, o);
            let policy = o.policy();
            if let Some(setting) = locality_lb::setting(ctx, &policy) {
                let fails_over = locality_lb::fails_over(&policy);
                groups = locality_lb::apply(setting, fails_over, proxy, groups);
            }
            write(ctx, o.name(), &groups)
        })
        .collect()
}

/// The endpoints of one cluster: the service port's endpoints, narrowed to the
/// subset's labels, by locality (DNS clusters: no locality balancing).
pub fn assignment(
    ctx: &PushContext,
    outbound: &Outbound<'_>,
    name: String,
) -> ClusterLoadAssignment {
    write(ctx, name, &groups(ctx, outbound))
}

/// The endpoints of `outbound`, one group per locality, all at priority 0.
fn groups<'a>(ctx: &'a PushContext, outbound: &Outbound<'_>) -> Vec<Group<'a>> {
    let mut by_locality: BTreeMap<&Locality, Vec<&registry::Endpoint>> = BTreeMap::new();
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
            .entry(&endpoint.locality)
            .or_default()
            .push(endpoint);
    }
    by_locality
        .into_iter()
        .map(|(locality, endpoints)| Group::new(locality, endpoints))
        .collect()
}

fn write(ctx: &PushContext, name: String, groups: &[Group<'_>]) -> ClusterLoadAssignment {
    ClusterLoadAssignment {
        cluster_name: name,
        endpoints: groups.iter().map(|g| locality_endpoints(ctx, g)).collect(),
        ..Default::default()
    }
}

fn locality_endpoints(ctx: &PushContext, group: &Group<'_>) -> LocalityLbEndpoints {
    let locality = EnvoyLocality {
        region: group.locality.region.clone(),
        zone: group.locality.zone.clone(),
        sub_zone: group.locality.subzone.clone(),
    };
    LocalityLbEndpoints {
        locality: Some(locality),
        lb_endpoints: group
            .endpoints
            .iter()
            .map(|e| lb_endpoint(ctx, e))
            .collect(),
        // gRPC's xDS client drops localities without a weight.
        load_balancing_weight: Some(wire::u32_value(group.weight.max(1))),
        priority: group.priority,
        ..Default::default()
    }
}

/// How a proxy reaches the endpoint, as Istio marks it for
/// `transport_socket_matches`: in HBONE (`tunnel: http`) when the workload
/// takes it (ambient, where mesh mTLS to the app's port would meet the node
/// proxy's plaintext port), else mesh mTLS (`tlsMode: istio`) to a sidecar.
/// Istio points a tunnelled endpoint at an internal `connect_originate`
/// listener; oxmesh's proxy tunnels from the mark itself.
fn transport(
    ctx: &PushContext,
    endpoint: &registry::Endpoint,
) -> Option<(&'static str, &'static str)> {
    if endpoint.tunnel {
        Some(("tunnel", "http"))
    } else if ctx.accepts_mtls(endpoint) {
        Some(("tlsMode", "istio"))
    } else {
        None
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
        metadata: transport(ctx, endpoint).map(|(key, value)| {
            wire::metadata([(TRANSPORT_SOCKET_MATCH, vec![(key, value.to_owned())])])
        }),
        load_balancing_weight: Some(wire::u32_value(endpoint.weight.max(1))),
    }
}

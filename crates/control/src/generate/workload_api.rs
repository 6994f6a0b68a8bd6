//! Istio's workload discovery API, what node proxies (ztunnel) get instead
//! of Envoy's types: every workload and service of the mesh as an
//! `istio.workload.Address`, and the L4 side of AuthorizationPolicy (with
//! STRICT PeerAuthentication) as `istio.security.Authorization`. Names and
//! fields are istiod's, so Istio's own ztunnel reads them unchanged.

mod authorization;
mod service;
mod workload;

use std::net::IpAddr;

use envoy_types::pb::google::protobuf::Any;
use oxmesh_xds::ads::Named;
use oxmesh_xds::security::AUTHORIZATION_TYPE;
use oxmesh_xds::workload::{ADDRESS_TYPE, Address, address};
use prost::Message;

use crate::push_context::PushContext;

/// The cluster a workload's uid and `cluster_id` name until the control
/// plane knows several (istiod's default `CLUSTER_ID`).
const CLUSTER_ID: &str = "Kubernetes";

/// The trust domain istiod leaves out: ztunnel reads an empty one as it.
const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

/// Every workload (by uid) and service (by `namespace/hostname`).
pub(crate) fn addresses(ctx: &PushContext) -> Vec<Named> {
    let workloads = workload::workloads(ctx).into_iter().map(|w| {
        let name = w.uid.clone();
        (name, address::Type::Workload(w))
    });
    let services = service::services(ctx)
        .into_iter()
        .map(|s| (service::resource_name(&s), address::Type::Service(s)));
    workloads
        .chain(services)
        .map(|(name, kind)| {
            let encoded = Address { r#type: Some(kind) }.encode_to_vec();
            Named::new(name, any(ADDRESS_TYPE, encoded))
        })
        .collect()
}

/// Every policy a node proxy enforces, by `namespace/name`: the name
/// workloads list them by.
pub(crate) fn authorizations(ctx: &PushContext) -> Vec<Named> {
    authorization::policies(ctx)
        .into_iter()
        .map(|p| {
            let name = format!("{}/{}", p.namespace, p.name);
            Named::new(name, any(AUTHORIZATION_TYPE, p.encode_to_vec()))
        })
        .collect()
}

fn any(type_url: &str, value: Vec<u8>) -> Any {
    Any {
        type_url: type_url.to_owned(),
        value,
    }
}

/// An address as the workload API carries it: 4 or 16 raw bytes.
fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

/// The mesh's trust domain, empty when it is the default (as istiod sends it).
fn trust_domain(ctx: &PushContext) -> String {
    match ctx.mesh.trust_domain.as_str() {
        DEFAULT_TRUST_DOMAIN => String::new(),
        domain => domain.to_owned(),
    }
}

#[cfg(test)]
mod tests;

//! EDS: a cluster's endpoints, with what load balancing and auto mTLS need.

use std::net::{IpAddr, SocketAddr};
use std::sync::OnceLock;

use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::{Address, HealthStatus, Metadata};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::google::protobuf::value::Kind;

use super::ConvertError;

#[derive(Clone, Debug, PartialEq)]
pub struct Endpoint {
    pub address: SocketAddr,
    pub weight: u32,
    /// Labelled `tlsMode: istio`: a sidecar is there, so auto mTLS applies.
    pub mesh_tls: bool,
}

/// The healthy endpoints of one cluster; unhealthy and draining ones are left out
/// at conversion, so the balancer never has to skip them. Plain config: what
/// balancing counts per endpoint lives in [`crate::state`].
#[derive(Debug, Default)]
pub struct EndpointSet {
    pub endpoints: Vec<Endpoint>,
    /// The ring (RING_HASH) or table (MAGLEV), derived from the endpoints on
    /// first use.
    pub hash_table: OnceLock<crate::balance::HashTable>,
}

impl EndpointSet {
    pub fn new(endpoints: Vec<Endpoint>) -> Self {
        Self {
            endpoints,
            hash_table: OnceLock::new(),
        }
    }
}

pub fn convert(cla: &ClusterLoadAssignment) -> Result<EndpointSet, ConvertError> {
    let error =
        |reason: String| ConvertError::new("ClusterLoadAssignment", &cla.cluster_name, reason);
    let mut endpoints = Vec::new();
    for locality in &cla.endpoints {
        for lb in &locality.lb_endpoints {
            if !healthy(lb.health_status) {
                continue;
            }
            let Some(HostIdentifier::Endpoint(endpoint)) = &lb.host_identifier else {
                return Err(error("named endpoints are not supported".to_owned()));
            };
            let address = socket_address(endpoint.address.as_ref()).map_err(error)?;
            endpoints.push(Endpoint {
                address,
                weight: lb
                    .load_balancing_weight
                    .as_ref()
                    .map_or(1, |w| w.value.max(1)),
                mesh_tls: is_mesh_tls(lb.metadata.as_ref()),
            });
        }
    }
    Ok(EndpointSet::new(endpoints))
}

fn healthy(status: i32) -> bool {
    status == HealthStatus::Unknown as i32 || status == HealthStatus::Healthy as i32
}

/// A socket address from an Envoy `Address`.
pub fn socket_address(address: Option<&Address>) -> Result<SocketAddr, String> {
    let Some(AddressKind::SocketAddress(socket)) = address.and_then(|a| a.address.as_ref()) else {
        return Err("only socket addresses are supported".to_owned());
    };
    let ip: IpAddr = socket
        .address
        .parse()
        .map_err(|_| format!("{:?} is not an IP address", socket.address))?;
    let port = match socket.port_specifier {
        Some(PortSpecifier::PortValue(p)) => {
            u16::try_from(p).map_err(|_| format!("port {p} is out of range"))?
        }
        _ => return Err("named ports are not supported".to_owned()),
    };
    Ok(SocketAddr::new(ip, port))
}

/// `envoy.transport_socket_match: {tlsMode: istio}`, as Istio marks sidecar endpoints.
fn is_mesh_tls(metadata: Option<&Metadata>) -> bool {
    metadata
        .and_then(|m| m.filter_metadata.get("envoy.transport_socket_match"))
        .and_then(|s| s.fields.get("tlsMode"))
        .is_some_and(|v| matches!(&v.kind, Some(Kind::StringValue(s)) if s == "istio"))
}

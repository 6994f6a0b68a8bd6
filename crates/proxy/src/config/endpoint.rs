//! EDS: a cluster's endpoints, with what load balancing and auto mTLS need.

use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
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
    /// Labelled `tunnel: http`: the workload takes HBONE on 15008 (ambient),
    /// so connections to it go in a tunnel there.
    pub tunnel: bool,
}

/// The healthy endpoints of one cluster; unhealthy and draining ones are left out
/// at conversion, so the balancer never has to skip them. Plain config: what
/// balancing counts per endpoint lives in [`crate::state`].
#[derive(Debug)]
pub struct EndpointSet {
    /// Ordered by priority, then by locality: each level and locality is a
    /// run of this list.
    pub endpoints: Vec<Endpoint>,
    /// The priority levels that list hosts, highest (0) first; never empty
    /// while `endpoints` is not.
    pub levels: Vec<Level>,
    /// Envoy's overprovisioning factor, in percent (140 unless the
    /// assignment's policy says otherwise): a level this share healthy
    /// still takes all its load.
    pub overprovisioning: u32,
    /// The ring (RING_HASH) or table (MAGLEV), derived from the endpoints on
    /// first use.
    pub hash_table: OnceLock<crate::balance::HashTable>,
}

/// One priority level of an assignment.
#[derive(Clone, Debug, PartialEq)]
pub struct Level {
    pub priority: u32,
    /// Its healthy endpoints, a run of [`EndpointSet::endpoints`].
    pub endpoints: Range<usize>,
    /// The hosts EDS listed at this level, unhealthy ones too: a level's
    /// health is its healthy share of them.
    pub hosts: usize,
    pub localities: Vec<LocalityGroup>,
}

/// The endpoints of one locality within a level, with the locality's weight
/// (what locality-weighted balancing reads; 0 takes no load there).
#[derive(Clone, Debug, PartialEq)]
pub struct LocalityGroup {
    pub endpoints: Range<usize>,
    pub hosts: usize,
    pub weight: u32,
}

/// Envoy's default overprovisioning factor (1.4), in percent.
pub const DEFAULT_OVERPROVISIONING: u32 = 140;

impl Default for EndpointSet {
    fn default() -> Self {
        Self::new(Vec::new())
    }
}

impl EndpointSet {
    /// One level and one locality holding every endpoint (static and DNS
    /// clusters, which have no priorities).
    pub fn new(endpoints: Vec<Endpoint>) -> Self {
        let all = 0..endpoints.len();
        let levels = if endpoints.is_empty() {
            Vec::new()
        } else {
            vec![Level {
                priority: 0,
                endpoints: all.clone(),
                hosts: all.len(),
                localities: vec![LocalityGroup {
                    endpoints: all.clone(),
                    hosts: all.len(),
                    weight: 1,
                }],
            }]
        };
        Self {
            endpoints,
            levels,
            overprovisioning: DEFAULT_OVERPROVISIONING,
            hash_table: OnceLock::new(),
        }
    }
}

pub fn convert(cla: &ClusterLoadAssignment) -> Result<EndpointSet, ConvertError> {
    let error =
        |reason: String| ConvertError::new("ClusterLoadAssignment", &cla.cluster_name, reason);
    // Localities by priority, in the order given within one.
    let mut order: Vec<(u32, usize)> = cla
        .endpoints
        .iter()
        .enumerate()
        .map(|(i, l)| (l.priority, i))
        .collect();
    order.sort_unstable();
    let mut endpoints = Vec::new();
    let mut levels: Vec<Level> = Vec::new();
    for (priority, i) in order {
        let locality = &cla.endpoints[i];
        let start = endpoints.len();
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
                mesh_tls: transport_is(lb.metadata.as_ref(), "tlsMode", "istio"),
                tunnel: transport_is(lb.metadata.as_ref(), "tunnel", "http"),
            });
        }
        let group = LocalityGroup {
            endpoints: start..endpoints.len(),
            hosts: locality.lb_endpoints.len(),
            weight: locality
                .load_balancing_weight
                .as_ref()
                .map_or(0, |w| w.value),
        };
        match levels.last_mut() {
            Some(level) if level.priority == priority => {
                level.endpoints.end = group.endpoints.end;
                level.hosts += group.hosts;
                level.localities.push(group);
            }
            _ => levels.push(Level {
                priority,
                endpoints: group.endpoints.clone(),
                hosts: group.hosts,
                localities: vec![group],
            }),
        }
    }
    // A level without hosts takes no load, as Envoy's empty host sets.
    levels.retain(|l| l.hosts > 0);
    let overprovisioning = cla
        .policy
        .as_ref()
        .and_then(|p| p.overprovisioning_factor.as_ref())
        .map_or(DEFAULT_OVERPROVISIONING, |f| f.value);
    if overprovisioning == 0 {
        return Err(error("overprovisioning_factor must be above 0".to_owned()));
    }
    Ok(EndpointSet {
        endpoints,
        levels,
        overprovisioning,
        hash_table: OnceLock::new(),
    })
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

/// `envoy.transport_socket_match: {key: value}`: `tlsMode: istio` as Istio
/// marks sidecar endpoints, `tunnel: http` HBONE ones.
fn transport_is(metadata: Option<&Metadata>, key: &str, value: &str) -> bool {
    metadata
        .and_then(|m| m.filter_metadata.get("envoy.transport_socket_match"))
        .and_then(|s| s.fields.get(key))
        .is_some_and(|v| matches!(&v.kind, Some(Kind::StringValue(s)) if s == value))
}

//! The workload API's messages into the node proxy's types. Defaults are
//! ztunnel's: an empty trust domain is `cluster.local`, an empty service
//! account `default`.

use std::net::IpAddr;

use oxmesh_identity::{SpiffeId, TrustDomain};
use oxmesh_xds::workload as api;

use super::{Protocol, Service, Workload};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConvertError {
    #[error("{resource}: address of {len} bytes (4 or 16 expected)")]
    Address { resource: String, len: usize },
    #[error("{resource}: tunnel protocol {protocol} is not supported")]
    Tunnel { resource: String, protocol: i32 },
    #[error("{resource}: identity {reason}")]
    Identity { resource: String, reason: String },
    #[error("{resource}: port {port} is out of range")]
    Port { resource: String, port: u32 },
    #[error("{resource}: no workload or service in the Address")]
    Empty { resource: String },
    #[error("{resource}: {reason}")]
    Policy { resource: String, reason: String },
}

/// Raw address bytes as an address.
pub(crate) fn ip(resource: &str, bytes: &[u8]) -> Result<IpAddr, ConvertError> {
    match bytes.len() {
        4 => {
            let octets: [u8; 4] = bytes.try_into().unwrap_or_default();
            Ok(IpAddr::from(octets))
        }
        16 => {
            let octets: [u8; 16] = bytes.try_into().unwrap_or_default();
            Ok(IpAddr::from(octets))
        }
        len => Err(ConvertError::Address {
            resource: resource.to_owned(),
            len,
        }),
    }
}

fn port(resource: &str, value: u32) -> Result<u16, ConvertError> {
    u16::try_from(value).map_err(|_| ConvertError::Port {
        resource: resource.to_owned(),
        port: value,
    })
}

/// What one Address resource holds.
pub enum Converted {
    Workload(Box<Workload>),
    Service(Service),
}

impl Converted {
    pub fn from_address(name: &str, address: api::Address) -> Result<Self, ConvertError> {
        match address.r#type {
            Some(api::address::Type::Workload(w)) => {
                workload(name, w).map(|w| Converted::Workload(Box::new(w)))
            }
            Some(api::address::Type::Service(s)) => service(name, s).map(Converted::Service),
            None => Err(ConvertError::Empty {
                resource: name.to_owned(),
            }),
        }
    }
}

fn workload(name: &str, w: api::Workload) -> Result<Workload, ConvertError> {
    let addresses = w
        .addresses
        .iter()
        .map(|a| ip(name, a))
        .collect::<Result<Vec<_>, _>>()?;
    let protocol = match api::TunnelProtocol::try_from(w.tunnel_protocol) {
        Ok(api::TunnelProtocol::None) => Protocol::Tcp,
        Ok(api::TunnelProtocol::Hbone) => Protocol::Hbone,
        _ => {
            return Err(ConvertError::Tunnel {
                resource: name.to_owned(),
                protocol: w.tunnel_protocol,
            });
        }
    };
    let identity = identity(name, &w.trust_domain, &w.namespace, &w.service_account)?;
    let services = w
        .services
        .into_iter()
        .map(|(key, list)| {
            let ports = list
                .ports
                .iter()
                .map(|p| Ok((port(name, p.service_port)?, port(name, p.target_port)?)))
                .collect::<Result<Vec<_>, ConvertError>>()?;
            Ok((key, ports))
        })
        .collect::<Result<_, ConvertError>>()?;
    Ok(Workload {
        uid: w.uid,
        name: w.name,
        namespace: w.namespace,
        addresses,
        protocol,
        identity,
        node: w.node,
        policies: w.authorization_policies,
        services,
        healthy: w.status == api::WorkloadStatus::Healthy as i32,
        workload_name: w.workload_name,
        canonical_name: w.canonical_name,
        canonical_revision: w.canonical_revision,
        // ztunnel's default, as istiod's.
        cluster_id: if w.cluster_id.is_empty() {
            "Kubernetes".to_owned()
        } else {
            w.cluster_id
        },
    })
}

fn identity(
    name: &str,
    trust_domain: &str,
    namespace: &str,
    account: &str,
) -> Result<SpiffeId, ConvertError> {
    let fail = |reason: String| ConvertError::Identity {
        resource: name.to_owned(),
        reason,
    };
    let domain = match trust_domain {
        "" => TrustDomain::cluster_local(),
        other => TrustDomain::new(other).map_err(|e| fail(e.to_string()))?,
    };
    let account = if account.is_empty() {
        "default"
    } else {
        account
    };
    SpiffeId::new(domain, namespace, account).map_err(|e| fail(e.to_string()))
}

fn service(name: &str, s: api::Service) -> Result<Service, ConvertError> {
    let vips = s
        .addresses
        .iter()
        .map(|a| ip(name, &a.address))
        .collect::<Result<Vec<_>, _>>()?;
    let ports = s
        .ports
        .iter()
        .map(|p| Ok((port(name, p.service_port)?, port(name, p.target_port)?)))
        .collect::<Result<Vec<_>, ConvertError>>()?;
    Ok(Service {
        namespace: s.namespace,
        hostname: s.hostname,
        vips,
        ports,
    })
}

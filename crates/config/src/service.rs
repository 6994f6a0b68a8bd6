//! The mesh's services, as Istio derives them from Kubernetes Services and
//! ServiceEntries: a host name, addresses, ports with protocols, how endpoints are
//! found, and who may see it.

use std::collections::BTreeSet;
use std::net::IpAddr;

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::diagnostic::ObjectRef;
use crate::hostname::Hostname;
use crate::networking::service_entry::{Location, Resolution as EntryResolution, ServiceEntry};
use crate::object::{Object, Resource};
use crate::protocol::Protocol;
use crate::selector::Labels;

/// The annotation Istio reads for a Kubernetes Service's visibility.
pub const EXPORT_TO_ANNOTATION: &str = "networking.istio.io/exportTo";

#[derive(Clone, Debug, PartialEq)]
pub struct Service {
    pub hostname: Hostname,
    pub namespace: String,
    /// The Service's or ServiceEntry's name.
    pub name: String,
    pub addresses: Vec<IpAddr>,
    pub ports: Vec<ServicePort>,
    pub resolution: Resolution,
    /// MESH_EXTERNAL ServiceEntries: outside the mesh, no mTLS.
    pub external: bool,
    /// Which workloads are its endpoints (a Service's selector, a ServiceEntry's
    /// `workloadSelector`); `None` when endpoints are listed or resolved by DNS.
    pub selector: Option<Labels>,
    pub export_to: ExportTo,
    pub source: ObjectRef,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    pub name: String,
    pub number: u16,
    pub target: TargetPort,
    pub protocol: Protocol,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetPort {
    /// The service port itself.
    Same,
    Number(u16),
    /// A named container port, resolved per endpoint.
    Named(String),
}

/// How a proxy finds where to send this service's traffic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// Load-balance over known endpoints.
    Endpoints,
    /// Resolve a name (ExternalName, or each endpoint/host) by DNS.
    Dns,
    /// Resolve by DNS, use one address per connection.
    DnsRoundRobin,
    /// Send to the address the client dialled (headless services, NONE).
    Passthrough,
}

/// Which namespaces see a service (`exportTo`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExportTo {
    All,
    /// Only these namespaces; empty means nobody.
    Namespaces(BTreeSet<String>),
}

impl ExportTo {
    /// Reads an `exportTo` list for an object in `namespace` (`.` is that namespace).
    pub fn parse<'a>(entries: impl IntoIterator<Item = &'a str>, namespace: &str) -> ExportTo {
        let mut namespaces = BTreeSet::new();
        let mut any = false;
        for entry in entries {
            any = true;
            match entry.trim() {
                "*" => return ExportTo::All,
                "." => {
                    namespaces.insert(namespace.to_owned());
                }
                "~" | "" => {}
                other => {
                    namespaces.insert(other.to_owned());
                }
            }
        }
        if any {
            ExportTo::Namespaces(namespaces)
        } else {
            ExportTo::All
        }
    }

    pub fn visible_in(&self, namespace: &str) -> bool {
        match self {
            ExportTo::All => true,
            ExportTo::Namespaces(set) => set.contains(namespace),
        }
    }
}

/// Every service the objects define, Kubernetes Services first.
pub fn services(objects: &[&Object], domain: &str) -> Vec<Service> {
    let mut out = Vec::new();
    for object in objects {
        match &object.resource {
            Resource::Service(service) => out.extend(from_kubernetes(object, service, domain)),
            Resource::ServiceEntry(entry) => out.extend(from_service_entry(object, entry)),
            _ => {}
        }
    }
    out
}

fn from_kubernetes(
    object: &Object,
    service: &k8s_openapi::api::core::v1::Service,
    domain: &str,
) -> Option<Service> {
    let spec = service.spec.as_ref()?;
    let namespace = object.namespace().unwrap_or("default").to_owned();
    let name = object.name().to_owned();
    let headless = spec.cluster_ip.as_deref() == Some("None");
    let external_name = spec.type_.as_deref() == Some("ExternalName");
    let addresses = spec
        .cluster_ips
        .iter()
        .flatten()
        .chain(spec.cluster_ip.iter())
        .filter_map(|ip| ip.parse().ok())
        .fold(Vec::new(), |mut acc: Vec<IpAddr>, ip| {
            if !acc.contains(&ip) {
                acc.push(ip);
            }
            acc
        });
    let ports = spec
        .ports
        .iter()
        .flatten()
        // The mesh carries TCP; UDP and SCTP ports (kube-dns's 53/UDP beside
        // 53/TCP) are left out, as Istio does.
        .filter(|p| {
            p.protocol
                .as_deref()
                .is_none_or(|proto| proto.eq_ignore_ascii_case("TCP"))
        })
        .filter_map(|p| {
            let number = u16::try_from(p.port).ok()?;
            let target = match &p.target_port {
                None => TargetPort::Same,
                Some(IntOrString::Int(n)) => {
                    u16::try_from(*n).map_or(TargetPort::Same, TargetPort::Number)
                }
                Some(IntOrString::String(s)) => TargetPort::Named(s.clone()),
            };
            Some(ServicePort {
                name: p.name.clone().unwrap_or_default(),
                number,
                target,
                protocol: Protocol::of_service_port(p.name.as_deref(), p.app_protocol.as_deref()),
            })
        })
        .collect();
    let export_to = object
        .meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(EXPORT_TO_ANNOTATION))
        .map_or(ExportTo::All, |v| ExportTo::parse(v.split(','), &namespace));
    Some(Service {
        hostname: Hostname::new(&format!("{name}.{namespace}.svc.{domain}")),
        namespace,
        name,
        addresses,
        ports,
        resolution: if external_name {
            Resolution::Dns
        } else if headless {
            Resolution::Passthrough
        } else {
            Resolution::Endpoints
        },
        external: false,
        selector: if external_name {
            None
        } else {
            spec.selector.clone().map(|s| s.into_iter().collect())
        },
        export_to,
        source: object.reference(),
    })
}

/// One service per host of the entry, as Istio builds them.
fn from_service_entry(object: &Object, entry: &ServiceEntry) -> Vec<Service> {
    let namespace = object.namespace().unwrap_or("default").to_owned();
    let addresses: Vec<IpAddr> = entry
        .addresses
        .iter()
        .filter_map(|a| a.parse().ok())
        .collect();
    let ports: Vec<ServicePort> = entry
        .ports
        .iter()
        .filter_map(|p| {
            let number = u16::try_from(p.number).ok()?;
            Some(ServicePort {
                name: p.name.clone(),
                number,
                target: u16::try_from(p.target_port)
                    .ok()
                    .filter(|t| *t != 0)
                    .map_or(TargetPort::Same, TargetPort::Number),
                protocol: if p.protocol.is_empty() {
                    Protocol::from_port_name(&p.name)
                } else {
                    Protocol::parse(&p.protocol)
                },
            })
        })
        .collect();
    let resolution = match entry.resolution {
        EntryResolution::None => Resolution::Passthrough,
        EntryResolution::Static => Resolution::Endpoints,
        EntryResolution::Dns | EntryResolution::DynamicDns => Resolution::Dns,
        EntryResolution::DnsRoundRobin => Resolution::DnsRoundRobin,
    };
    entry
        .hosts
        .iter()
        .map(|host| Service {
            hostname: Hostname::new(host),
            namespace: namespace.clone(),
            name: object.name().to_owned(),
            addresses: addresses.clone(),
            ports: ports.clone(),
            resolution: resolution.clone(),
            external: entry.location == Location::MeshExternal,
            selector: entry.workload_selector.as_ref().map(|s| s.labels.clone()),
            export_to: ExportTo::parse(entry.export_to.iter().map(String::as_str), &namespace),
            source: object.reference(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::load_bytes;

    #[test]
    fn udp_ports_are_not_mesh_ports() {
        let yaml = "apiVersion: v1\nkind: Service\nmetadata: {name: kube-dns, namespace: kube-system}\nspec:\n  selector: {k8s-app: kube-dns}\n  ports:\n  - {name: dns, port: 53, protocol: UDP}\n  - {name: dns-tcp, port: 53, protocol: TCP}\n  - {name: metrics, port: 9153}\n";
        let loaded = load_bytes(std::path::Path::new("dns.yaml"), yaml.as_bytes());
        let objects: Vec<&Object> = loaded.objects.iter().map(|s| &*s.object).collect();
        let found = services(&objects, "cluster.local");
        let ports: Vec<(&str, u16)> = found[0]
            .ports
            .iter()
            .map(|p| (p.name.as_str(), p.number))
            .collect();
        assert_eq!(ports, [("dns-tcp", 53), ("metrics", 9153)]);
    }
}

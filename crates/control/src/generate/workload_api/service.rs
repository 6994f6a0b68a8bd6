//! Services as istiod describes them to node proxies: Kubernetes Services
//! (headless ones without addresses; ExternalName ones not at all) and each
//! host of a ServiceEntry, keyed `namespace/hostname`.

use oxmesh_config::Kind;
use oxmesh_config::protocol::Protocol;
use oxmesh_config::service::{ExportTo, Resolution, Service as MeshService, TargetPort};
use oxmesh_xds::workload::{
    AppProtocol, LoadBalancing, NetworkAddress, Port, Service, load_balancing,
};

use super::ip_bytes;
use crate::push_context::PushContext;

pub(super) fn services(ctx: &PushContext) -> Vec<Service> {
    let mut out: Vec<Service> = ctx
        .registry
        .services
        .iter()
        .filter(|s| is_sent(s))
        .map(|s| service(s))
        .collect();
    out.sort_by(|a, b| (&a.namespace, &a.hostname).cmp(&(&b.namespace, &b.hostname)));
    out
}

/// The resource name of a service, which workloads name it by too.
pub(super) fn resource_name(service: &Service) -> String {
    format!("{}/{}", service.namespace, service.hostname)
}

pub(super) fn resource_name_of(service: &MeshService) -> String {
    format!("{}/{}", service.namespace, service.hostname)
}

/// ExternalName Services are no service to a node proxy; a ServiceEntry
/// exported to nobody is none either.
fn is_sent(service: &MeshService) -> bool {
    let kubernetes = service.source.kind == Kind::Service;
    let external_name = kubernetes && service.resolution == Resolution::Dns;
    let hidden = matches!(&service.export_to, ExportTo::Namespaces(n) if n.is_empty());
    !external_name && !hidden
}

fn service(s: &MeshService) -> Service {
    let entry = s.source.kind == Kind::ServiceEntry;
    Service {
        name: s.name.clone(),
        namespace: s.namespace.clone(),
        hostname: s.hostname.to_string(),
        addresses: s
            .addresses
            .iter()
            .map(|ip| NetworkAddress {
                network: String::new(),
                address: ip_bytes(*ip),
                length: None,
            })
            .collect(),
        ports: s
            .ports
            .iter()
            .map(|p| Port {
                service_port: u32::from(p.number),
                target_port: match (&p.target, entry) {
                    (TargetPort::Number(n), _) => u32::from(*n),
                    (TargetPort::Same, _) => u32::from(p.number),
                    // Resolved per workload.
                    (TargetPort::Named(_), _) => 0,
                },
                app_protocol: app_protocol(p.protocol) as i32,
            })
            .collect(),
        // A ServiceEntry of resolution NONE passes traffic to the address
        // dialled, and to every endpoint, healthy or not.
        load_balancing: (entry && s.resolution == Resolution::Passthrough).then(|| LoadBalancing {
            mode: load_balancing::Mode::Passthrough as i32,
            health_policy: load_balancing::HealthPolicy::AllowAll as i32,
            ..LoadBalancing::default()
        }),
        canonical: true,
        ..Service::default()
    }
}

/// istiod's mapping: protocols ztunnel has no use for are UNKNOWN.
fn app_protocol(protocol: Protocol) -> AppProtocol {
    match protocol {
        Protocol::Http => AppProtocol::Http11,
        Protocol::Http2 => AppProtocol::Http2,
        Protocol::Grpc => AppProtocol::Grpc,
        Protocol::Https | Protocol::Tls => AppProtocol::Tls,
        Protocol::Tcp => AppProtocol::Tcp,
        _ => AppProtocol::Unknown,
    }
}

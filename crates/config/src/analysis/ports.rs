//! Service ports whose protocol Istio cannot tell from the name (IST0118).

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::mesh::{Mesh, namespace};
use super::{Code, Sink};
use crate::kind::Kind;
use crate::object::Resource;
use crate::path::FieldPath;
use crate::protocol::Protocol;

const SYSTEM: &[&str] = &[
    "kube-system",
    "kube-public",
    "kube-node-lease",
    "local-path-storage",
];
/// Ports Istio treats as TCP whatever their name (SMTP, DNS, MySQL, MongoDB).
const WELL_KNOWN_TCP: &[i32] = &[25, 53, 3306, 27017];

pub fn analyze(mesh: &Mesh<'_>, sink: &mut Sink) {
    for sourced in mesh.of_kind(Kind::Service) {
        let Resource::Service(service) = &sourced.object.resource else {
            continue;
        };
        if SYSTEM.contains(&namespace(sourced)) || is_control_plane(sourced) {
            continue;
        }
        let ports = service.spec.as_ref().and_then(|s| s.ports.as_ref());
        for (i, port) in ports.into_iter().flatten().enumerate() {
            if port.protocol.as_deref() == Some("UDP") || WELL_KNOWN_TCP.contains(&port.port) {
                continue;
            }
            if Protocol::of_service_port(port.name.as_deref(), port.app_protocol.as_deref())
                != Protocol::Unknown
            {
                continue;
            }
            let target = match &port.target_port {
                Some(IntOrString::Int(n)) => n.to_string(),
                Some(IntOrString::String(s)) => s.clone(),
                None => port.port.to_string(),
            };
            sink.report(
                Code::PortNameIsNotUnderNamingConvention,
                sourced,
                &FieldPath::parse("spec.ports").index(i).field("port"),
                format!(
                    "Port name {} (port: {}, targetPort: {target}) doesn't follow the naming convention of Istio port.",
                    port.name.as_deref().unwrap_or_default(),
                    port.port
                ),
            );
        }
    }
}

fn is_control_plane(sourced: &crate::decode::Sourced) -> bool {
    let labels = sourced.object.meta.labels.clone().unwrap_or_default();
    labels.contains_key("istio") || labels.get("release").is_some_and(|r| r == "istio")
}

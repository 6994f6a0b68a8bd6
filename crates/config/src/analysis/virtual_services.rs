//! VirtualService analyzers: destinations that do not exist (IST0101 host, port,
//! subset, gateway), ports that must be named (IST0112), hosts a bound Gateway does
//! not serve (IST0132), and mesh routes that fight over a host (IST0109).

use std::collections::{BTreeMap, BTreeSet};

use super::mesh::{Mesh, namespace};
use super::{Code, Sink};
use crate::decode::Sourced;
use crate::hostname::Hostname;
use crate::kind::Kind;
use crate::networking::virtual_service::{Destination, VirtualService};
use crate::object::Resource;
use crate::path::FieldPath;

fn virtual_services<'a>(
    mesh: &'a Mesh<'_>,
) -> impl Iterator<Item = (&'a Sourced, &'a VirtualService)> + 'a {
    mesh.of_kind(Kind::VirtualService)
        .filter_map(|s| match &s.object.resource {
            Resource::VirtualService(vs) => Some((s, vs.as_ref())),
            _ => None,
        })
}

pub fn analyze(mesh: &Mesh<'_>, sink: &mut Sink) {
    for (sourced, vs) in virtual_services(mesh) {
        for (destination, at, mirror) in destinations(vs) {
            destination_host(mesh, sourced, destination, &at, mirror, sink);
            destination_subset(mesh, sourced, destination, &at, mirror, sink);
        }
        gateways(mesh, sourced, vs, sink);
    }
    mesh_host_conflicts(mesh, sink);
}

/// Every destination, its path, and whether it is a mirror.
fn destinations(vs: &VirtualService) -> Vec<(&Destination, FieldPath, bool)> {
    let spec = FieldPath::root().field("spec");
    let mut out = Vec::new();
    let layer4 = [
        (
            "tcp",
            vs.tcp
                .iter()
                .map(|r| r.route.as_slice())
                .collect::<Vec<_>>(),
        ),
        ("tls", vs.tls.iter().map(|r| r.route.as_slice()).collect()),
    ];
    for (section, routes) in layer4 {
        for (i, route) in routes.into_iter().enumerate() {
            for (j, r) in route.iter().enumerate() {
                let at = spec
                    .field(section)
                    .index(i)
                    .field("route")
                    .index(j)
                    .field("destination");
                out.push((&r.destination, at, false));
            }
        }
    }
    for (i, route) in vs.http.iter().enumerate() {
        let here = spec.field("http").index(i);
        for (j, r) in route.route.iter().enumerate() {
            out.push((
                &r.destination,
                here.field("route").index(j).field("destination"),
                false,
            ));
        }
        if let Some(mirror) = &route.mirror {
            out.push((mirror, here.field("mirror"), true));
        }
        for (j, m) in route.mirrors.iter().enumerate() {
            out.push((
                &m.destination,
                here.field("mirrors").index(j).field("destination"),
                true,
            ));
        }
    }
    out
}

fn destination_host(
    mesh: &Mesh<'_>,
    sourced: &Sourced,
    d: &Destination,
    at: &FieldPath,
    mirror: bool,
    sink: &mut Sink,
) {
    let ns = namespace(sourced);
    let host_at = at.field("host");
    let Some(service) = mesh.service(&mesh.fqdn(&d.host, ns), ns) else {
        let what = if mirror { "mirror host" } else { "host" };
        sink.report(
            Code::ReferencedResourceNotFound,
            sourced,
            &host_at,
            format!("Referenced {what} not found: {:?}", d.host),
        );
        return;
    };
    let ports: Vec<u16> = service.ports.iter().map(|p| p.number).collect();
    match d.port.map(|p| p.number) {
        None if ports.len() > 1 => {
            let list: Vec<String> = ports.iter().map(ToString::to_string).collect();
            sink.report(
                Code::VirtualServiceDestinationPortSelectorRequired,
                sourced,
                &host_at,
                format!(
                    "This VirtualService routes to a service {:?} that exposes multiple ports [{}]. Specifying a port in the destination is required to disambiguate.",
                    d.host,
                    list.join(" ")
                ),
            );
        }
        Some(number) if !ports.is_empty() && !ports.iter().any(|p| u32::from(*p) == number) => {
            sink.report(
                Code::ReferencedResourceNotFound,
                sourced,
                &host_at,
                format!("Referenced host:port not found: \"{}:{number}\"", d.host),
            );
        }
        _ => {}
    }
}

fn destination_subset(
    mesh: &Mesh<'_>,
    sourced: &Sourced,
    d: &Destination,
    at: &FieldPath,
    mirror: bool,
    sink: &mut Sink,
) {
    if d.subset.is_empty() {
        return;
    }
    if !mesh.has_subset(&mesh.fqdn(&d.host, namespace(sourced)), &d.subset) {
        let what = if mirror {
            "mirror+subset"
        } else {
            "host+subset"
        };
        sink.report(
            Code::ReferencedResourceNotFound,
            sourced,
            &at.field("host"),
            format!(
                "Referenced {what} in destinationrule not found: \"{}+{}\"",
                d.host, d.subset
            ),
        );
    }
}

/// `ns/name`, or a name in the VirtualService's namespace (`name.ns` read too).
fn gateway_ref<'s>(gateway: &'s str, vs_namespace: &'s str) -> Vec<(&'s str, &'s str)> {
    match gateway.split_once('/') {
        Some((ns, name)) => vec![(ns, name)],
        None => {
            let mut refs = vec![(vs_namespace, gateway)];
            if let Some((name, ns)) = gateway.split_once('.') {
                refs.push((ns.split('.').next().unwrap_or(ns), name));
            }
            refs
        }
    }
}

fn gateways(mesh: &Mesh<'_>, sourced: &Sourced, vs: &VirtualService, sink: &mut Sink) {
    let ns = namespace(sourced);
    for (i, gateway) in vs.gateways.iter().enumerate() {
        if gateway == "mesh" {
            continue;
        }
        let at = FieldPath::root().field("spec").field("gateways").index(i);
        let refs = gateway_ref(gateway, ns);
        let found = mesh
            .of_kind(Kind::Gateway)
            .chain(mesh.of_kind(Kind::KubernetesGateway))
            .find(|g| {
                refs.iter()
                    .any(|(gns, gname)| namespace(g) == *gns && g.object.name() == *gname)
            });
        let Some(found) = found else {
            sink.report(
                Code::ReferencedResourceNotFound,
                sourced,
                &at,
                format!("Referenced gateway not found: {gateway:?}"),
            );
            continue;
        };
        if let Resource::Gateway(gw) = &found.object.resource {
            let gw_ns = namespace(found);
            let served: Vec<Hostname> = gw
                .servers
                .iter()
                .flat_map(|s| s.hosts.iter())
                .filter_map(|h| match h.split_once('/') {
                    Some((".", host)) if gw_ns == ns => Some(Hostname::new(host)),
                    Some(("*", host)) => Some(Hostname::new(host)),
                    Some((hns, host)) if hns == ns => Some(Hostname::new(host)),
                    Some(_) => None,
                    None => Some(Hostname::new(h)),
                })
                .collect();
            let matched = vs
                .hosts
                .iter()
                .any(|h| served.iter().any(|s| s.matches(&Hostname::new(h))));
            if !matched {
                sink.report(
                    Code::VirtualServiceHostNotFoundInGateway,
                    sourced,
                    &at,
                    format!(
                        "one or more host [{}] defined in VirtualService {}/{} not found in Gateway {}/{}.",
                        vs.hosts.join(" "),
                        ns,
                        sourced.object.name(),
                        gw_ns,
                        found.object.name()
                    ),
                );
            }
        }
    }
}

/// Two VirtualServices for the mesh that name the same host (in overlapping
/// visibility) leave it undefined which one applies.
fn mesh_host_conflicts(mesh: &Mesh<'_>, sink: &mut Sink) {
    let mut by_key: BTreeMap<(String, Hostname), Vec<&Sourced>> = BTreeMap::new();
    for (sourced, vs) in virtual_services(mesh) {
        if !(vs.gateways.is_empty() || vs.gateways.iter().any(|g| g == "mesh")) {
            continue;
        }
        let ns = namespace(sourced);
        let scopes: BTreeSet<String> =
            if vs.export_to.is_empty() || vs.export_to.iter().any(|e| e == "*") {
                BTreeSet::from(["*".to_owned()])
            } else {
                vs.export_to
                    .iter()
                    .map(|e| if e == "." { ns.to_owned() } else { e.clone() })
                    .collect()
            };
        for scope in &scopes {
            for host in &vs.hosts {
                let entry = by_key
                    .entry((scope.clone(), mesh.fqdn(host, ns)))
                    .or_default();
                if !entry.iter().any(|s| std::ptr::eq(*s, sourced)) {
                    entry.push(sourced);
                }
            }
        }
    }
    let keys: Vec<(String, Hostname)> = by_key.keys().cloned().collect();
    let mut reported: BTreeSet<(String, String)> = BTreeSet::new();
    for (scope, host) in &keys {
        let mut conflicting: Vec<&Sourced> = by_key[&(scope.clone(), host.clone())].clone();
        if scope != "*" {
            for (other_scope, other_host) in &keys {
                if other_scope == "*" && other_host.matches(host) {
                    conflicting.extend(
                        by_key[&(other_scope.clone(), other_host.clone())]
                            .iter()
                            .copied(),
                    );
                }
            }
        }
        conflicting.dedup_by(|a, b| std::ptr::eq(*a, *b));
        if conflicting.len() < 2 {
            continue;
        }
        let names: Vec<String> = conflicting
            .iter()
            .map(|s| format!("{}/{}", namespace(s), s.object.name()))
            .collect();
        for sourced in &conflicting {
            let id = (
                namespace(sourced).to_owned(),
                sourced.object.name().to_owned(),
            );
            if reported.insert(id) {
                sink.report(
                    Code::ConflictingMeshGatewayVirtualServiceHosts,
                    sourced,
                    &FieldPath::parse("metadata.name"),
                    format!(
                        "The VirtualServices {} associated with mesh gateway define the same host {scope}/{host} which can lead to undefined behavior. This can be fixed by merging the conflicting VirtualServices into a single resource.",
                        names.join(",")
                    ),
                );
            }
        }
    }
}

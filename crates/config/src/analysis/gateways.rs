//! Gateway analyzers: two Gateways claiming the same host on the same port of the
//! same gateway workloads (IST0145), a TLS secret that does not exist, and a
//! selector that picks no gateway workload (IST0101).

use std::collections::BTreeMap;

use super::mesh::{Mesh, namespace};
use super::{Code, Sink};
use crate::decode::Sourced;
use crate::hostname::Hostname;
use crate::kind::Kind;
use crate::networking::gateway::Gateway;
use crate::object::Resource;
use crate::path::FieldPath;
use crate::selector::Labels;

fn gateways<'a>(mesh: &'a Mesh<'_>) -> Vec<(&'a Sourced, &'a Gateway)> {
    mesh.of_kind(Kind::Gateway)
        .filter_map(|s| match &s.object.resource {
            Resource::Gateway(g) => Some((s, g.as_ref())),
            _ => None,
        })
        .collect()
}

/// `k1=v1,k2=v2`, keys sorted, as Kubernetes prints selectors.
pub fn selector_text(labels: &Labels) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

pub fn analyze(mesh: &Mesh<'_>, sink: &mut Sink) {
    let all = gateways(mesh);
    for (sourced, gw) in &all {
        selector_and_secrets(mesh, sourced, gw, sink);
    }
    conflicts(&all, sink);
}

fn selector_and_secrets(mesh: &Mesh<'_>, sourced: &Sourced, gw: &Gateway, sink: &mut Sink) {
    if !mesh.has_workloads() {
        return;
    }
    let Some(workload) = mesh.workloads_matching(None, &gw.selector).next() else {
        let first_key = gw.selector.keys().next().map_or_else(FieldPath::root, |k| {
            FieldPath::root().field("spec").field("selector").field(k)
        });
        sink.report(
            Code::ReferencedResourceNotFound,
            sourced,
            &first_key,
            format!(
                "Referenced selector not found: {:?}",
                selector_text(&gw.selector)
            ),
        );
        return;
    };
    // Secrets live with the gateway workload, not with the Gateway object.
    let secret_namespace = workload.namespace.as_str();
    let any_secrets = mesh.of_kind(Kind::Secret).next().is_some();
    for (i, server) in gw.servers.iter().enumerate() {
        let Some(tls) = &server.tls else { continue };
        if tls.credential_name.is_empty() || !any_secrets {
            continue;
        }
        let (ns, name) = tls
            .credential_name
            .split_once('/')
            .unwrap_or((secret_namespace, &tls.credential_name));
        if !mesh.secret_exists(ns, name) {
            let at = FieldPath::parse("spec.servers")
                .index(i)
                .field("tls")
                .field("credentialName");
            sink.report(
                Code::ReferencedResourceNotFound,
                sourced,
                &at,
                format!(
                    "Referenced credentialName not found: {:?}",
                    tls.credential_name
                ),
            );
        }
    }
}

/// Gateways for the same workloads (same selector) and port must not serve
/// overlapping hosts.
fn conflicts(all: &[(&Sourced, &Gateway)], sink: &mut Sink) {
    // (selector, port) → gateway → hosts served there.
    let mut claims: BTreeMap<(String, u32), BTreeMap<String, Vec<Hostname>>> = BTreeMap::new();
    for (sourced, gw) in all {
        let name = format!("{}/{}", namespace(sourced), sourced.object.name());
        for server in &gw.servers {
            let hosts = server
                .hosts
                .iter()
                .map(|h| Hostname::new(h.split_once('/').map_or(h.as_str(), |(_, h)| h)));
            claims
                .entry((selector_text(&gw.selector), server.port.number))
                .or_default()
                .entry(name.clone())
                .or_default()
                .extend(hosts);
        }
    }
    for (sourced, gw) in all {
        let name = format!("{}/{}", namespace(sourced), sourced.object.name());
        let selector = selector_text(&gw.selector);
        for server in &gw.servers {
            let Some(others) = claims.get(&(selector.clone(), server.port.number)) else {
                continue;
            };
            let mine: Vec<Hostname> = server
                .hosts
                .iter()
                .map(|h| Hostname::new(h.split_once('/').map_or(h.as_str(), |(_, h)| h)))
                .collect();
            let conflicting: Vec<&str> = others
                .iter()
                .filter(|(other, hosts)| {
                    **other != name && hosts.iter().any(|h| mine.iter().any(|m| m.matches(h)))
                })
                .map(|(other, _)| other.as_str())
                .collect();
            if !conflicting.is_empty() {
                sink.report(
                    Code::ConflictingGateways,
                    sourced,
                    &FieldPath::root(),
                    format!(
                        "Conflict with gateways {} (workload selector {selector}, port {}, hosts {}).",
                        conflicting.join(","),
                        server.port.number,
                        server.hosts.join(",")
                    ),
                );
            }
        }
    }
}

//! AuthorizationPolicy analyzers, as Istio's: a selector that picks no
//! workload (IST0127) and a source namespace that does not exist (IST0101).
//! Principals are not checked: they may name other trust domains or clusters.

use super::gateways::selector_text;
use super::mesh::{Mesh, namespace};
use super::{Code, Sink};
use crate::kind::Kind;
use crate::object::Resource;
use crate::path::FieldPath;

pub fn analyze(mesh: &Mesh<'_>, sink: &mut Sink) {
    missing_namespaces(mesh, sink);
    if !mesh.has_workloads() {
        return;
    }
    for sourced in mesh.of_kind(Kind::AuthorizationPolicy) {
        let Resource::AuthorizationPolicy(policy) = &sourced.object.resource else {
            continue;
        };
        // Policies attached by targetRef are not about workload labels.
        if policy.target_ref.is_some() || policy.target_refs.is_some() {
            continue;
        }
        let ns = namespace(sourced);
        let root = ns == mesh.options.root_namespace;
        let empty = Default::default();
        let labels = policy.selector.as_ref().map_or(&empty, |s| &s.match_labels);
        if root && policy.selector.is_none() {
            continue;
        }
        let scope = if root { None } else { Some(ns) };
        if mesh.workloads_matching(scope, labels).next().is_none() {
            sink.report(
                Code::NoMatchingWorkloadsFound,
                sourced,
                &FieldPath::root(),
                format!(
                    "No matching workloads for this resource with the following labels: {}",
                    selector_text(labels)
                ),
            );
        }
    }
}

/// Each `from.source.namespaces` value must match a namespace the config
/// defines (`*` as a prefix or suffix wildcard). Config that defines no
/// Namespace says nothing about which exist.
fn missing_namespaces(mesh: &Mesh<'_>, sink: &mut Sink) {
    let known: Vec<&str> = mesh
        .of_kind(Kind::Namespace)
        .map(|s| s.object.name())
        .collect();
    if known.is_empty() {
        return;
    }
    for sourced in mesh.of_kind(Kind::AuthorizationPolicy) {
        let Resource::AuthorizationPolicy(policy) = &sourced.object.resource else {
            continue;
        };
        let rules = policy.rules.as_deref().unwrap_or_default();
        for (i, rule) in rules.iter().enumerate() {
            for (j, from) in rule.from.iter().enumerate() {
                let Some(source) = &from.source else { continue };
                for (k, ns) in source.namespaces.iter().enumerate() {
                    if known.iter().any(|known| namespace_matches(ns, known)) {
                        continue;
                    }
                    let at = FieldPath::root()
                        .field("spec")
                        .field("rules")
                        .index(i)
                        .field("from")
                        .index(j)
                        .field("source")
                        .field("namespaces")
                        .index(k);
                    sink.report(
                        Code::ReferencedResourceNotFound,
                        sourced,
                        &at,
                        format!("Referenced namespace not found: {ns:?}"),
                    );
                }
            }
        }
    }
}

fn namespace_matches(pattern: &str, namespace: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    if let Some(suffix) = pattern.strip_prefix('*') {
        return namespace.ends_with(suffix);
    }
    if let Some(prefix) = pattern.strip_suffix('*') {
        return namespace.starts_with(prefix);
    }
    pattern == namespace
}

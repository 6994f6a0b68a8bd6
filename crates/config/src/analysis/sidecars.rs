//! Sidecar analyzers: a selector that picks nothing (IST0101), two Sidecars for one
//! workload (IST0110), two namespace-wide Sidecars (IST0111).

use std::collections::BTreeMap;

use super::gateways::selector_text;
use super::mesh::{Mesh, namespace};
use super::{Code, Sink};
use crate::decode::Sourced;
use crate::kind::Kind;
use crate::object::Resource;
use crate::path::FieldPath;

pub fn analyze(mesh: &Mesh<'_>, sink: &mut Sink) {
    let mut namespace_wide: BTreeMap<&str, Vec<&Sourced>> = BTreeMap::new();
    let mut by_workload: BTreeMap<(String, String), Vec<&Sourced>> = BTreeMap::new();
    for sourced in mesh.of_kind(Kind::Sidecar) {
        let Resource::Sidecar(sidecar) = &sourced.object.resource else {
            continue;
        };
        let ns = namespace(sourced);
        let labels = sidecar
            .workload_selector
            .as_ref()
            .map(|s| &s.labels)
            .filter(|l| !l.is_empty());
        let Some(labels) = labels else {
            namespace_wide.entry(ns).or_default().push(sourced);
            continue;
        };
        if !mesh.has_workloads() {
            continue;
        }
        let mut selected = mesh.workloads_matching(Some(ns), labels).peekable();
        if selected.peek().is_none() {
            let first = labels.keys().next().map_or_else(FieldPath::root, |k| {
                FieldPath::parse("spec.workloadSelector.labels").field(k)
            });
            sink.report(
                Code::ReferencedResourceNotFound,
                sourced,
                &first,
                format!("Referenced selector not found: {:?}", selector_text(labels)),
            );
        }
        for workload in selected {
            by_workload
                .entry((workload.namespace.clone(), workload.name.clone()))
                .or_default()
                .push(sourced);
        }
    }
    for ((ns, workload), sidecars) in &by_workload {
        if sidecars.len() < 2 {
            continue;
        }
        let names: Vec<&str> = sidecars.iter().map(|s| s.object.name()).collect();
        for sourced in sidecars {
            sink.report(
                Code::ConflictingSidecarWorkloadSelectors,
                sourced,
                &FieldPath::parse("metadata.name"),
                format!("The Sidecars [{}] in namespace {ns:?} select the same workload pod {workload:?}, which can lead to undefined behavior.", names.join(" ")),
            );
        }
    }
    for (ns, sidecars) in &namespace_wide {
        if sidecars.len() < 2 {
            continue;
        }
        let names: Vec<&str> = sidecars.iter().map(|s| s.object.name()).collect();
        for sourced in sidecars {
            sink.report(
                Code::MultipleSidecarsWithoutWorkloadSelectors,
                sourced,
                &FieldPath::root(),
                format!("The Sidecars [{}] in namespace {ns:?} have no workload selector, which can lead to undefined behavior.", names.join(" ")),
            );
        }
    }
}

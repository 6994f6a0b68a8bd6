//! An AuthorizationPolicy whose selector picks no workload (IST0127).

use super::gateways::selector_text;
use super::mesh::{Mesh, namespace};
use super::{Code, Sink};
use crate::kind::Kind;
use crate::object::Resource;
use crate::path::FieldPath;

pub fn analyze(mesh: &Mesh<'_>, sink: &mut Sink) {
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

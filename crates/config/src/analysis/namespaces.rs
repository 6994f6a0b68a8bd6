//! A namespace not labelled for sidecar injection (IST0102).

use super::mesh::Mesh;
use super::{Code, Sink};
use crate::kind::Kind;
use crate::path::FieldPath;

/// Namespaces Istio never injects and never asks about.
const SYSTEM: &[&str] = &[
    "istio-system",
    "kube-system",
    "kube-public",
    "kube-node-lease",
    "local-path-storage",
];

pub fn analyze(mesh: &Mesh<'_>, sink: &mut Sink) {
    for sourced in mesh.of_kind(Kind::Namespace) {
        let name = sourced.object.name();
        if SYSTEM.contains(&name) {
            continue;
        }
        let labels = sourced.object.meta.labels.clone().unwrap_or_default();
        let ambient = labels
            .get("istio.io/dataplane-mode")
            .is_some_and(|m| m == "ambient");
        let labelled = labels.get("istio-injection").is_some_and(|v| !v.is_empty())
            || labels.contains_key("istio.io/rev");
        if !labelled && !ambient {
            sink.report(
                Code::NamespaceNotInjected,
                sourced,
                &FieldPath::parse("metadata.name"),
                format!(
                    "The namespace is not enabled for Istio injection. Run 'kubectl label namespace {name} istio-injection=enabled' to enable it, or 'kubectl label namespace {name} istio-injection=disabled' to explicitly mark it as not needing injection."
                ),
            );
        }
    }
}

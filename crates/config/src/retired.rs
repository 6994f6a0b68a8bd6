//! Fields Istio has retired (reserved in its protos). The API server prunes them, so
//! they are dropped with a warning rather than refused as unknown.

use crate::diagnostic::Finding;
use crate::kind::Kind;
use crate::node::{Node, Value};
use crate::path::FieldPath;

/// (kind, path with `[*]` for "every element", what to use instead).
const RETIRED: &[(Kind, &str, &str)] = &[
    (
        Kind::VirtualService,
        "spec.http[*].websocketUpgrade",
        "WebSocket upgrades are always allowed; remove the field",
    ),
    (
        Kind::VirtualService,
        "spec.http[*].appendHeaders",
        "use headers.request.add",
    ),
    (
        Kind::VirtualService,
        "spec.http[*].appendRequestHeaders",
        "use headers.request.add",
    ),
    (
        Kind::VirtualService,
        "spec.http[*].removeRequestHeaders",
        "use headers.request.remove",
    ),
    (
        Kind::VirtualService,
        "spec.http[*].appendResponseHeaders",
        "use headers.response.add",
    ),
    (
        Kind::VirtualService,
        "spec.http[*].removeResponseHeaders",
        "use headers.response.remove",
    ),
    (
        Kind::VirtualService,
        "spec.http[*].route[*].appendRequestHeaders",
        "use headers.request.add",
    ),
    (
        Kind::VirtualService,
        "spec.http[*].route[*].removeRequestHeaders",
        "use headers.request.remove",
    ),
    (
        Kind::VirtualService,
        "spec.http[*].route[*].appendResponseHeaders",
        "use headers.response.add",
    ),
    (
        Kind::VirtualService,
        "spec.http[*].route[*].removeResponseHeaders",
        "use headers.response.remove",
    ),
    (
        Kind::VirtualService,
        "spec.tls[*].match[*].sourceSubnet",
        "TLS routes cannot match on the source subnet",
    ),
];

/// Removes every retired field from `tree`, with a warning for each.
pub fn strip(kind: Kind, tree: &mut Node) -> Vec<Finding> {
    let mut findings = Vec::new();
    for (_, pattern, advice) in RETIRED.iter().filter(|(k, _, _)| *k == kind) {
        let steps: Vec<&str> = pattern.split('.').collect();
        strip_at(tree, &steps, FieldPath::root(), &mut |path| {
            findings.push(Finding::warning(
                path,
                format!("field is retired in Istio and is ignored: {advice}"),
            ));
        });
    }
    findings
}

fn strip_at(node: &mut Node, steps: &[&str], at: FieldPath, found: &mut dyn FnMut(FieldPath)) {
    let Some((step, rest)) = steps.split_first() else {
        return;
    };
    let (name, every) = match step.strip_suffix("[*]") {
        Some(name) => (name, true),
        None => (*step, false),
    };
    let Value::Map(entries) = &mut node.value else {
        return;
    };
    let Some(position) = entries.iter().position(|e| e.key == name) else {
        return;
    };
    let here = at.field(name);
    if rest.is_empty() && !every {
        entries.remove(position);
        found(here);
        return;
    }
    let child = &mut entries[position].value;
    match (&mut child.value, every) {
        (Value::Seq(items), true) => {
            for (i, item) in items.iter_mut().enumerate() {
                strip_at(item, rest, here.index(i), found);
            }
        }
        (_, false) => strip_at(child, rest, here, found),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_retired_fields_with_a_warning() {
        let yaml = "spec:\n  http:\n  - websocketUpgrade: true\n    route: []\n  - route: []\n";
        let mut tree: Node = serde_saphyr::from_str(yaml).expect("yaml");
        let findings = strip(Kind::VirtualService, &mut tree);
        assert_eq!(findings.len(), 1);
        assert_eq!(
            findings[0].path.to_string(),
            "spec.http[0].websocketUpgrade"
        );
        assert!(tree.get("spec").and_then(|s| s.get("http")).is_some());
        assert_eq!(
            tree.to_json()["spec"]["http"][0],
            serde_json::json!({"route": []})
        );
    }
}

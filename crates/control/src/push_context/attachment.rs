//! Whether a workload policy applies to a proxy, by its `selector` or its
//! `targetRef`/`targetRefs`, as Istio's policy matcher decides it. Written for
//! AuthorizationPolicy; RequestAuthentication, Telemetry and WasmPlugin follow
//! the same rules.

use oxmesh_config::selector::{PolicyTargetReference, WorkloadSelector};

use crate::proxy::{ProxyClass, ProxyKind};

// The label Gateway API deployments carry: which Gateway they implement.
use oxmesh_config::gateway_api::NAME_LABEL as GATEWAY_NAME_LABEL;
/// The GatewayClass of waypoints; root-namespace policies may target it.
const WAYPOINT_GATEWAY_CLASS: &str = "istio-waypoint";

/// Whether a policy in `policy_namespace` (already known to be the proxy's or
/// the root namespace) applies to `proxy`:
/// - a proxy that is not a Gateway API gateway uses the selector only, and
///   ignores any policy with target references (they name Services,
///   ServiceEntries, Gateways or GatewayClasses, which a sidecar is not);
/// - a Gateway API gateway (labelled with its Gateway's name) takes policies of
///   its own namespace that target its Gateway, and selector policies too
///   (Istio's `ENABLE_SELECTOR_BASED_K8S_GATEWAY_POLICY`, on by default), but a
///   waypoint never takes selector policies;
/// - a waypoint also takes root-namespace policies targeting the
///   `istio-waypoint` GatewayClass. Service and ServiceEntry targets, which
///   waypoints match per service, come with waypoint listeners.
pub(super) fn attaches(
    selector: Option<&WorkloadSelector>,
    target_ref: Option<&PolicyTargetReference>,
    target_refs: Option<&[PolicyTargetReference]>,
    policy_namespace: &str,
    proxy: &ProxyClass,
    root_namespace: &str,
) -> bool {
    // `targetRefs`, else the legacy single `targetRef`.
    let targets = match target_refs {
        Some(refs) if !refs.is_empty() => refs,
        _ => target_ref.map(std::slice::from_ref).unwrap_or_default(),
    };
    let selected = || selector.is_none_or(|s| s.matches(&proxy.labels));
    let waypoint = proxy.kind == ProxyKind::Waypoint;
    let Some(gateway_name) = proxy.labels.get(GATEWAY_NAME_LABEL) else {
        return targets.is_empty() && selected();
    };
    if targets.is_empty() {
        return !waypoint && selected();
    }
    targets.iter().any(|target| {
        if waypoint
            && policy_namespace == root_namespace
            && is_gateway_api(target, "GatewayClass")
            && target.name == WAYPOINT_GATEWAY_CLASS
        {
            return true;
        }
        policy_namespace == proxy.namespace
            && (target.namespace.is_empty() || target.namespace == proxy.namespace)
            && is_gateway_api(target, "Gateway")
            && &target.name == gateway_name
    })
}

/// Whether a reference names a Gateway API `kind`.
fn is_gateway_api(target: &PolicyTargetReference, kind: &str) -> bool {
    target.group == "gateway.networking.k8s.io" && target.kind == kind
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxy(kind: ProxyKind, labels: &[(&str, &str)]) -> ProxyClass {
        ProxyClass {
            kind,
            namespace: "foo".to_owned(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            grpc: false,
            tproxy: false,
            proven: false,
            locality: Default::default(),
            network: String::new(),
        }
    }

    fn target(group: &str, kind: &str, name: &str) -> PolicyTargetReference {
        PolicyTargetReference {
            group: group.to_owned(),
            kind: kind.to_owned(),
            name: name.to_owned(),
            namespace: String::new(),
        }
    }

    fn selector(app: &str) -> WorkloadSelector {
        WorkloadSelector {
            match_labels: [("app".to_owned(), app.to_owned())].into_iter().collect(),
        }
    }

    const GATEWAY_API: &str = "gateway.networking.k8s.io";

    #[test]
    fn sidecars_and_istio_gateways_use_selectors_only() {
        for kind in [ProxyKind::Sidecar, ProxyKind::Router] {
            let workload = proxy(kind, &[("app", "a")]);
            let on = |sel: Option<&WorkloadSelector>, refs: &[PolicyTargetReference]| {
                attaches(sel, None, Some(refs), "foo", &workload, "istio-system")
            };
            assert!(on(None, &[]));
            assert!(on(Some(&selector("a")), &[]));
            assert!(!on(Some(&selector("b")), &[]));
            // Target references are for gateways and waypoints.
            assert!(!on(None, &[target("", "Service", "svc")]));
            assert!(!on(None, &[target(GATEWAY_API, "Gateway", "gw")]));
        }
    }

    #[test]
    fn gateway_api_gateways_take_their_gateways_policies() {
        let gateway = proxy(ProxyKind::Router, &[(GATEWAY_NAME_LABEL, "gw")]);
        let on = |namespace: &str, refs: &[PolicyTargetReference]| {
            attaches(None, None, Some(refs), namespace, &gateway, "istio-system")
        };
        assert!(on("foo", &[target(GATEWAY_API, "Gateway", "gw")]));
        assert!(on(
            "foo",
            &[
                target("", "Service", "svc"),
                target(GATEWAY_API, "Gateway", "gw")
            ]
        ));
        assert!(!on("foo", &[target(GATEWAY_API, "Gateway", "other")]));
        assert!(!on("foo", &[target("", "Gateway", "gw")]));
        // Only from the gateway's own namespace, naming it or no namespace.
        assert!(!on("istio-system", &[target(GATEWAY_API, "Gateway", "gw")]));
        let mut elsewhere = target(GATEWAY_API, "Gateway", "gw");
        elsewhere.namespace = "bar".to_owned();
        assert!(!on("foo", &[elsewhere]));
        // The legacy single reference counts when the list is empty.
        let single = target(GATEWAY_API, "Gateway", "gw");
        assert!(attaches(
            None,
            Some(&single),
            Some(&[]),
            "foo",
            &gateway,
            "istio-system"
        ));
        // Selector policies too.
        assert!(attaches(None, None, None, "foo", &gateway, "istio-system"));
    }

    #[test]
    fn waypoints_take_target_references_only() {
        let waypoint = proxy(ProxyKind::Waypoint, &[(GATEWAY_NAME_LABEL, "wp")]);
        let on = |namespace: &str, refs: &[PolicyTargetReference]| {
            attaches(None, None, Some(refs), namespace, &waypoint, "istio-system")
        };
        assert!(!on("foo", &[]));
        assert!(on("foo", &[target(GATEWAY_API, "Gateway", "wp")]));
        let class = [target(GATEWAY_API, "GatewayClass", "istio-waypoint")];
        assert!(on("istio-system", &class));
        assert!(!on("foo", &class));
    }
}

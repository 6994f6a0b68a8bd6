//! Where connections go, and which policies a workload answers to.

use super::*;
use crate::rbac::{Action, Scope};

fn workload(uid: &str, ip: &str, protocol: Protocol, services: &[(&str, u16, u16)]) -> Workload {
    Workload {
        uid: uid.into(),
        name: uid.into(),
        namespace: "default".into(),
        addresses: vec![ip.parse().expect("ip")],
        protocol,
        identity: format!("spiffe://cluster.local/ns/default/sa/{uid}")
            .parse()
            .expect("id"),
        node: "node-a".into(),
        policies: vec!["default/selected".into()],
        services: services
            .iter()
            .map(|(key, port, target)| ((*key).to_owned(), vec![(*port, *target)]))
            .collect(),
        healthy: true,
        workload_name: uid.into(),
        canonical_name: uid.into(),
        canonical_revision: "latest".into(),
        cluster_id: "Kubernetes".into(),
    }
}

fn policy(name: &str, namespace: &str, scope: Scope) -> Policy {
    Policy {
        name: name.into(),
        namespace: namespace.into(),
        scope,
        action: Action::Allow,
        dry_run: false,
        rules: vec![],
    }
}

fn state() -> State {
    let svc = "default/reviews.default.svc.cluster.local";
    State::new(
        [
            workload(
                "reviews-1",
                "198.18.0.1",
                Protocol::Hbone,
                &[(svc, 9080, 9081)],
            ),
            workload(
                "reviews-2",
                "198.18.0.2",
                Protocol::Tcp,
                &[(svc, 9080, 9081)],
            ),
        ],
        [Service {
            namespace: "default".into(),
            hostname: "reviews.default.svc.cluster.local".into(),
            vips: vec!["198.19.0.10".parse().expect("vip")],
            ports: vec![(9080, 0)],
        }],
        [
            policy("selected", "default", Scope::WorkloadSelector),
            policy("unselected", "default", Scope::WorkloadSelector),
            policy("namespace", "default", Scope::Namespace),
            policy("elsewhere", "other", Scope::Namespace),
            policy("mesh", "istio-system", Scope::Global),
        ],
    )
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("address")
}

#[test]
fn a_vip_goes_to_one_of_its_workloads_on_its_target_port() {
    let state = state();
    match state.destination(addr("198.19.0.10:9080"), |_| 0) {
        Destination::Hbone {
            workload,
            hbone,
            authority,
        } => {
            assert_eq!(workload.uid, "reviews-1");
            assert_eq!(hbone, addr("198.18.0.1:15008"));
            assert_eq!(
                authority,
                addr("198.18.0.1:9081"),
                "the workload's target port"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(
        matches!(
            state.destination(addr("198.19.0.10:9080"), |_| 1),
            Destination::Direct { to, workload: Some(w) } if to == addr("198.18.0.2:9081") && w.uid == "reviews-2"
        ),
        "a workload outside ambient is reached in plaintext"
    );
    assert_eq!(
        state.destination(addr("198.19.0.10:7000"), |_| 0),
        Destination::Direct {
            to: addr("198.19.0.10:7000"),
            workload: None
        },
        "a port the service lacks goes where it was sent"
    );
}

#[test]
fn a_workload_address_goes_to_that_workload_and_others_pass_through() {
    let state = state();
    assert!(matches!(
        state.destination(addr("198.18.0.1:8080"), |_| 0),
        Destination::Hbone { authority, .. } if authority == addr("198.18.0.1:8080")
    ));
    assert_eq!(
        state.destination(addr("192.0.2.1:443"), |_| 0),
        Destination::Direct {
            to: addr("192.0.2.1:443"),
            workload: None
        }
    );
}

#[test]
fn a_workload_answers_to_mesh_namespace_and_its_named_policies() {
    let state = state();
    let reviews = state
        .workload_at("198.18.0.1".parse().expect("ip"))
        .expect("workload");
    let mut names: Vec<String> = state.policies_for(reviews).map(Policy::key).collect();
    names.sort();
    assert_eq!(
        names,
        ["default/namespace", "default/selected", "istio-system/mesh"]
    );
}

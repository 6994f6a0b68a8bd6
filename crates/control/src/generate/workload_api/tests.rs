//! What a node proxy is sent: workloads, services and L4 policies from the
//! mesh's objects, decoded as ztunnel decodes them.

use std::sync::Arc;

use oxmesh_xds::security::{Authorization, Scope, string_match::MatchType};
use oxmesh_xds::workload::{Address, Service, TunnelProtocol, Workload, WorkloadStatus, address};
use prost::Message;

use super::*;
use crate::mesh_config::MeshConfig;

fn context(yaml: &str) -> PushContext {
    let loaded =
        oxmesh_config::load::load_bytes(std::path::Path::new("test.yaml"), yaml.as_bytes());
    assert!(!loaded.has_errors(), "{:?}", loaded.error_messages());
    let objects: Vec<_> = loaded.objects.into_iter().map(|s| s.object).collect();
    PushContext::build(&objects, MeshConfig::default(), Arc::from(&b""[..]), 1)
}

/// Resources by name.
type ByName<T> = Vec<(String, T)>;

fn decoded(ctx: &PushContext) -> (ByName<Workload>, ByName<Service>) {
    let mut workloads = Vec::new();
    let mut services = Vec::new();
    for named in addresses(ctx) {
        assert_eq!(named.resource.type_url, ADDRESS_TYPE);
        let address = Address::decode(named.resource.value.as_slice()).expect("decodes");
        match address.r#type.expect("a kind") {
            address::Type::Workload(w) => workloads.push((named.name, w)),
            address::Type::Service(s) => services.push((named.name, s)),
        }
    }
    (workloads, services)
}

fn policies(ctx: &PushContext) -> Vec<(String, Authorization)> {
    authorizations(ctx)
        .into_iter()
        .map(|named| {
            let policy = Authorization::decode(named.resource.value.as_slice()).expect("decodes");
            (named.name, policy)
        })
        .collect()
}

const MESH: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: reviews-v1-7d4b9c8f6-x2x9z
  namespace: bookinfo
  generateName: reviews-v1-7d4b9c8f6-
  labels: {app: reviews, version: v1, pod-template-hash: 7d4b9c8f6}
  annotations: {ambient.istio.io/redirection: enabled}
  ownerReferences:
  - {apiVersion: apps/v1, kind: ReplicaSet, name: reviews-v1-7d4b9c8f6, uid: u1, controller: true}
spec:
  serviceAccountName: bookinfo-reviews
  nodeName: node-a
  containers:
  - name: app
    image: reviews
    ports: [{name: http-web, containerPort: 9081}]
status:
  phase: Running
  podIP: 10.0.0.7
  conditions: [{type: Ready, status: "True"}]
---
apiVersion: v1
kind: Pod
metadata: {name: ratings, namespace: bookinfo, labels: {app: ratings}}
spec: {containers: [{name: app, image: ratings}]}
status: {phase: Running, podIP: 10.0.0.8, conditions: [{type: Ready, status: "False"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: done, namespace: bookinfo}
spec: {containers: [{name: app, image: job}]}
status: {phase: Succeeded, podIP: 10.0.0.9}
---
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: bookinfo}
spec:
  clusterIP: 10.96.0.10
  selector: {app: reviews}
  ports:
  - {name: http, port: 9080, targetPort: http-web}
  - {name: tcp-admin, port: 7000, targetPort: 7001}
  - {name: grpc-missing, port: 7100, targetPort: nope}
---
apiVersion: v1
kind: Service
metadata: {name: external, namespace: bookinfo}
spec: {type: ExternalName, externalName: example.com}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: vm-1, namespace: bookinfo}
spec:
  address: 192.0.2.10
  serviceAccount: vm
  labels: {app: reviews, networking.istio.io/tunnel: http}
  weight: 3
"#;

#[test]
fn every_running_pod_and_workload_entry_is_a_workload() {
    let (workloads, _) = decoded(&context(MESH));
    let names: Vec<&str> = workloads.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "Kubernetes//Pod/bookinfo/ratings",
            "Kubernetes//Pod/bookinfo/reviews-v1-7d4b9c8f6-x2x9z",
            "Kubernetes/networking.istio.io/WorkloadEntry/bookinfo/vm-1",
        ],
        "the finished pod is left out; names are uids"
    );
    let (_, reviews) = &workloads[1];
    assert_eq!(reviews.addresses, vec![vec![10, 0, 0, 7]]);
    assert_eq!(reviews.tunnel_protocol, TunnelProtocol::Hbone as i32);
    assert_eq!(reviews.service_account, "bookinfo-reviews");
    assert_eq!(reviews.node, "node-a");
    assert_eq!(
        reviews.workload_name, "reviews-v1",
        "the ReplicaSet without its hash"
    );
    assert_eq!(reviews.canonical_name, "reviews");
    assert_eq!(reviews.canonical_revision, "v1");
    assert_eq!(reviews.trust_domain, "", "cluster.local goes unsaid");
    assert_eq!(reviews.status, WorkloadStatus::Healthy as i32);
    let ports = &reviews.services["bookinfo/reviews.bookinfo.svc.cluster.local"].ports;
    let pairs: Vec<(u32, u32)> = ports
        .iter()
        .map(|p| (p.service_port, p.target_port))
        .collect();
    assert_eq!(
        pairs,
        [(9080, 9081), (7000, 7001)],
        "a named port it lacks is left out"
    );

    let (_, ratings) = &workloads[0];
    assert_eq!(
        ratings.tunnel_protocol,
        TunnelProtocol::None as i32,
        "not captured"
    );
    assert_eq!(ratings.status, WorkloadStatus::Unhealthy as i32);
    assert_eq!(ratings.service_account, "");
    assert_eq!(ratings.canonical_revision, "latest");

    let (_, vm) = &workloads[2];
    assert_eq!(vm.addresses, vec![vec![192, 0, 2, 10]]);
    assert!(vm.native_tunnel);
    assert_eq!(vm.tunnel_protocol, TunnelProtocol::Hbone as i32);
    assert_eq!(vm.capacity, Some(3));
    assert!(
        vm.services
            .contains_key("bookinfo/reviews.bookinfo.svc.cluster.local")
    );
}

#[test]
fn services_carry_their_vips_and_ports_but_external_names_are_left_out() {
    let (_, services) = decoded(&context(MESH));
    assert_eq!(services.len(), 1, "{services:?}");
    let (name, reviews) = &services[0];
    assert_eq!(name, "bookinfo/reviews.bookinfo.svc.cluster.local");
    assert_eq!(reviews.hostname, "reviews.bookinfo.svc.cluster.local");
    assert_eq!(reviews.addresses[0].address, vec![10, 96, 0, 10]);
    let ports: Vec<(u32, u32, i32)> = reviews
        .ports
        .iter()
        .map(|p| (p.service_port, p.target_port, p.app_protocol))
        .collect();
    use oxmesh_xds::workload::AppProtocol;
    assert_eq!(
        ports,
        [
            (9080, 0, AppProtocol::Http11 as i32),
            (7000, 7001, AppProtocol::Tcp as i32),
            (7100, 0, AppProtocol::Grpc as i32),
        ],
        "a named target port is resolved per workload"
    );
}

const POLICIES: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: app, namespace: foo, labels: {app: app}}
spec: {serviceAccountName: app, containers: [{name: app, image: app}]}
status: {phase: Running, podIP: 10.0.0.1, conditions: [{type: Ready, status: "True"}]}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-by-account, namespace: foo}
spec:
  selector: {matchLabels: {app: app}}
  rules:
  - from: [{source: {principals: ["cluster.local/ns/bar/sa/*"], namespaces: ["*"]}}]
    to: [{operation: {ports: ["8080"]}}]
    when: [{key: source.ip, values: ["192.0.2.0/24", "198.51.100.7"]}]
  - to: [{operation: {methods: [GET]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-get, namespace: foo}
spec:
  action: DENY
  rules:
  - from: [{source: {serviceAccounts: [sleep, other/curl]}}]
    to: [{operation: {methods: [GET]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: at-waypoint, namespace: foo}
spec:
  targetRefs: [{kind: Service, group: "", name: app}]
  rules: [{}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: audit, namespace: istio-system}
spec: {action: AUDIT, rules: [{}]}
"#;

#[test]
fn authorization_keeps_l4_and_drops_what_needs_http_as_istiod_does() {
    let ctx = context(POLICIES);
    let policies = policies(&ctx);
    let names: Vec<&str> = policies.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "foo/allow-by-account",
            "foo/deny-get",
            "istio-system/istio_converted_static_strict"
        ],
        "targetRefs (waypoints') and AUDIT policies are not sent"
    );
    let (_, allow) = &policies[0];
    assert_eq!(allow.scope, Scope::WorkloadSelector as i32);
    assert_eq!(allow.rules.len(), 1, "the rule needing HTTP is dropped");
    let clauses = &allow.rules[0].clauses;
    assert_eq!(clauses.len(), 3, "to, from, one per condition");
    assert_eq!(clauses[0].matches[0].destination_ports, [8080]);
    let from = &clauses[1].matches[0];
    assert_eq!(
        from.principals[0].match_type,
        Some(MatchType::Prefix("cluster.local/ns/bar/sa/".into()))
    );
    assert_eq!(from.namespaces[0].match_type, Some(MatchType::Presence(())));
    let ips = &clauses[2].matches[0].source_ips;
    assert_eq!(
        (ips[0].address.as_slice(), ips[0].length),
        (&[192, 0, 2, 0][..], 24)
    );
    assert_eq!(
        (ips[1].address.as_slice(), ips[1].length),
        (&[198, 51, 100, 7][..], 32)
    );

    let (_, deny) = &policies[1];
    assert_eq!(deny.scope, Scope::Namespace as i32);
    assert_eq!(deny.rules.len(), 1, "a DENY rule keeps its L4 part");
    let from = &deny.rules[0].clauses[1].matches[0];
    let accounts: Vec<(&str, &str)> = from
        .service_accounts
        .iter()
        .map(|a| (a.namespace.as_str(), a.service_account.as_str()))
        .collect();
    assert_eq!(accounts, [("foo", "sleep"), ("other", "curl")]);

    let (workloads, _) = decoded(&ctx);
    assert_eq!(
        workloads[0].1.authorization_policies,
        [
            "foo/allow-by-account",
            "istio-system/istio_converted_static_strict"
        ],
        "selector policies by name, then STRICT mTLS; namespace policies go by scope"
    );
}

#[test]
fn without_peer_authentication_there_is_no_strict_policy() {
    let ctx = context(MESH);
    assert!(policies(&ctx).is_empty());
}

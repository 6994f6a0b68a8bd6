//! The Kubernetes source against an API server fixture that serves real list and
//! watch streams over HTTPS (no kube-apiserver can be installed here): objects
//! reach a connected proxy, watches resume from their resourceVersion, a 410 Gone
//! re-lists, garbage and a lost API server leave the last snapshot serving.

mod support;

use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
use oxmesh_control::control_plane::ControlPlane;
use oxmesh_testkit::api_server::{self, ApiServer};
use oxmesh_xds::ads::types;
use serde_json::{Value, json};
use support::{Sotw, TempDir, decode, endpoint_ips, routed_cluster, sidecar_node};

const REVIEWS: &str = "reviews.default.svc.cluster.local";

/// Reconnects back off for up to several seconds; generous for slow machines.
const WAIT: Duration = Duration::from_secs(60);

const CLUSTER: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: default}
---
apiVersion: v1
kind: Node
metadata:
  name: node-a
  labels: {topology.kubernetes.io/region: us-east1, topology.kubernetes.io/zone: us-east1-b}
---
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: default}
spec:
  clusterIP: 198.18.100.10
  selector: {app: reviews}
  ports: [{name: http, port: 9080}]
---
apiVersion: v1
kind: Pod
metadata:
  name: reviews-v1
  namespace: default
  labels: {app: reviews, version: v1, security.istio.io/tlsMode: istio}
spec:
  serviceAccountName: bookinfo-reviews
  nodeName: node-a
  containers: [{name: reviews, image: reviews}]
status: {phase: Running, podIP: 198.18.1.1}
---
apiVersion: v1
kind: Pod
metadata:
  name: reviews-v2
  namespace: default
  labels: {app: reviews, version: v2, security.istio.io/tlsMode: istio}
spec:
  serviceAccountName: bookinfo-reviews
  containers: [{name: reviews, image: reviews}]
status: {phase: Running, podIP: 198.18.1.2}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: reviews-abc12
  namespace: default
  labels: {kubernetes.io/service-name: reviews}
addressType: IPv4
ports: [{name: http, port: 9080, protocol: TCP}]
endpoints:
- addresses: [198.18.1.1]
  conditions: {ready: true}
  targetRef: {kind: Pod, name: reviews-v1, namespace: default}
- addresses: [198.18.1.2]
  conditions: {ready: true}
  targetRef: {kind: Pod, name: reviews-v2, namespace: default}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
"#;

fn virtual_service(subset: &str) -> Value {
    json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "reviews", "namespace": "default"},
        "spec": {"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "reviews", "subset": subset}}]}]},
    })
}

/// The fixture with the cluster above, a control plane watching it, and a
/// proxy subscribed to clusters, reviews's endpoints and the 9080 routes.
struct Bed {
    api: ApiServer,
    cp: ControlPlane,
    _state: TempDir,
}

async fn bed(name: &str) -> Bed {
    let state = TempDir::new(name);
    let api = ApiServer::start(api_server::standard_types()).await;
    api.apply_yaml(CLUSTER);
    api.apply(virtual_service("v1"));
    let cp = support::kube_control_plane(&api, &state).await;
    Bed {
        api,
        cp,
        _state: state,
    }
}

fn productpage() -> envoy_types::pb::envoy::config::core::v3::Node {
    sidecar_node(
        "198.18.2.1",
        "productpage-v1-1",
        "default",
        &[("app", "productpage")],
    )
}

/// A push of one type that the test waits for.
type Expect<'a> = (&'a str, &'a dyn Fn(&DiscoveryResponse) -> bool);

/// Reads pushes, ACKing each with the names its type is subscribed to (the
/// routes' `9080`, the endpoints' `eds`), until one of `type_url` passes `check`.
async fn until(
    ads: &mut Sotw,
    eds: &str,
    type_url: &str,
    check: impl Fn(&DiscoveryResponse) -> bool,
) {
    until_all(ads, eds, &[(type_url, &check)]).await;
}

/// As `until`, for several expectations met in any order: one change in the
/// cluster can push its route and its endpoints in either order, so waiting
/// for one and then the other could miss the second as it went past.
async fn until_all(ads: &mut Sotw, eds: &str, expected: &[Expect<'_>]) {
    let mut met = vec![false; expected.len()];
    tokio::time::timeout(WAIT, async {
        while met.contains(&false) {
            let update = ads.recv().await;
            let names: &[&str] = match update.type_url.as_str() {
                types::ROUTE => &["9080"],
                types::ENDPOINT => &[eds],
                _ => &[],
            };
            ads.send(&update.type_url, names, Some(&update), None).await;
            for ((type_url, check), met) in expected.iter().zip(met.iter_mut()) {
                *met |= update.type_url == *type_url && check(&update);
            }
        }
    })
    .await
    .unwrap_or_else(|_| {
        let missing: Vec<&str> = expected
            .iter()
            .zip(&met)
            .filter(|(_, met)| !**met)
            .map(|((type_url, _), _)| *type_url)
            .collect();
        panic!("no push satisfied the checks for {missing:?} within {WAIT:?}")
    });
}

const V1: &str = "outbound|9080|v1|reviews.default.svc.cluster.local";

#[tokio::test]
async fn services_endpoints_and_an_istio_object_reach_a_connected_proxy() {
    let bed = bed("kube-source-reach").await;
    let mut ads = Sotw::connect(bed.cp.xds_addr, productpage()).await;
    let clusters = ads.subscribe(types::CLUSTER, &[]).await;
    let names: Vec<String> = clusters
        .resources
        .iter()
        .map(|r| decode::<Cluster>(r).name)
        .collect();
    assert!(names.contains(&V1.to_owned()), "{names:?}");
    let all = format!("outbound|9080||{REVIEWS}");
    let endpoints = ads.subscribe(types::ENDPOINT, &[&all]).await;
    let mut ips = endpoint_ips(&endpoints);
    ips.sort();
    assert_eq!(ips, ["198.18.1.1", "198.18.1.2"]);
    // The pod's locality is its node's.
    let assignment: ClusterLoadAssignment = decode(&endpoints.resources[0]);
    let localities: Vec<(String, String)> = assignment
        .endpoints
        .iter()
        .filter_map(|l| l.locality.as_ref())
        .map(|l| (l.region.clone(), l.zone.clone()))
        .collect();
    assert!(
        localities.contains(&("us-east1".to_owned(), "us-east1-b".to_owned())),
        "{localities:?}"
    );
    let routes = ads.subscribe(types::ROUTE, &["9080"]).await;
    assert_eq!(routed_cluster(&routes), V1);

    // An edit in the cluster reaches the proxy as a route push.
    bed.api.apply(virtual_service("v2"));
    until(&mut ads, &all, types::ROUTE, |r| {
        routed_cluster(r) == format!("outbound|9080|v2|{REVIEWS}")
    })
    .await;

    // The watches list once, then watch from the list's version with bookmarks.
    let requests = bed.api.requests();
    let vs_watch = requests
        .iter()
        .find(|r| r.contains("/virtualservices?") && r.contains("watch=true"))
        .expect("a VirtualService watch");
    assert!(vs_watch.contains("allowWatchBookmarks=true"), "{vs_watch}");
    assert!(vs_watch.contains("resourceVersion="), "{vs_watch}");
    assert!(
        requests.iter().any(
            |r| r.starts_with("GET /apis/networking.istio.io/v1/virtualservices?")
                && !r.contains("watch")
        ),
        "the newest served version (v1) is listed: {requests:#?}"
    );
    bed.cp.shutdown().await;
}

#[tokio::test]
async fn watches_resume_relist_after_410_and_survive_garbage_and_outages() {
    let bed = bed("kube-source-recover").await;
    let mut ads = Sotw::connect(bed.cp.xds_addr, productpage()).await;
    ads.subscribe(types::CLUSTER, &[]).await;
    let v1_endpoints = ads.subscribe(types::ENDPOINT, &[V1]).await;
    assert_eq!(endpoint_ips(&v1_endpoints), ["198.18.1.1"]);
    ads.subscribe(types::ROUTE, &["9080"]).await;

    // A dropped stream resumes from the last version seen: no new list.
    let lists_before = count_lists(&bed.api, "virtualservices");
    bed.api.drop_watches();
    bed.api.apply(virtual_service("v2"));
    until(&mut ads, V1, types::ROUTE, |r| {
        routed_cluster(r).contains("|v2|")
    })
    .await;
    assert_eq!(
        count_lists(&bed.api, "virtualservices"),
        lists_before,
        "resumed, not re-listed"
    );

    // A line of garbage on the stream is skipped; the stream carries on, with
    // no new list.
    let lists_before = count_lists(&bed.api, "virtualservices");
    bed.api.send_garbage();
    bed.api.apply(virtual_service("v1"));
    until(&mut ads, V1, types::ROUTE, |r| routed_cluster(r) == V1).await;
    assert_eq!(
        count_lists(&bed.api, "virtualservices"),
        lists_before,
        "the garbage did not cost a re-list"
    );

    // The API server goes away: the proxy keeps its config, and a proxy that
    // connects now still gets the last snapshot.
    bed.api.set_down(true);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut late = Sotw::connect(bed.cp.xds_addr, productpage()).await;
    late.subscribe(types::CLUSTER, &[]).await;
    assert_eq!(
        routed_cluster(&late.subscribe(types::ROUTE, &["9080"]).await),
        V1
    );

    // While it was away, v1's pod went and the route moved to v2, and the
    // history the watches would resume from is gone: they get 410 and re-list.
    bed.api.delete("v1", "Pod", "default", "reviews-v1");
    bed.api.apply(virtual_service("v2"));
    bed.api.compact();
    let lists_before = count_lists(&bed.api, "virtualservices");
    bed.api.set_down(false);
    let route_moved = |r: &DiscoveryResponse| routed_cluster(r).contains("|v2|");
    let pod_gone = |r: &DiscoveryResponse| endpoint_ips(r).is_empty();
    until_all(
        &mut ads,
        V1,
        &[(types::ROUTE, &route_moved), (types::ENDPOINT, &pod_gone)],
    )
    .await;
    assert!(
        count_lists(&bed.api, "virtualservices") > lists_before,
        "410 Gone led to a new list"
    );
    bed.cp.shutdown().await;
}

#[tokio::test]
async fn a_refused_object_keeps_its_last_good_version_and_says_where_it_lives() {
    let bed = bed("kube-source-refused").await;
    let mut ads = Sotw::connect(bed.cp.xds_addr, productpage()).await;
    ads.subscribe(types::CLUSTER, &[]).await;
    ads.subscribe(types::ROUTE, &["9080"]).await;

    let mut broken = virtual_service("v2");
    broken["spec"]["http"][0]["timeout"] = json!("soon");
    bed.api.apply(broken);
    let mut changes = oxmesh_xds::ads::Generator::changes(&*bed.cp.discovery);
    tokio::time::timeout(
        WAIT,
        changes.wait_for(|_| {
            bed.cp
                .discovery
                .config()
                .diagnostics
                .iter()
                .any(|d| d.is_error())
        }),
    )
    .await
    .expect("the refusal is reported")
    .expect("discovery runs");
    let config = bed.cp.discovery.config();
    let refusal = config
        .diagnostics
        .iter()
        .find(|d| d.is_error())
        .expect("refusal")
        .to_string();
    assert!(
        refusal.contains(
            "kubernetes:/apis/networking.istio.io/v1/namespaces/default/virtualservices/reviews"
        ) && refusal.contains("timeout"),
        "{refusal}"
    );
    let mut late = Sotw::connect(bed.cp.xds_addr, productpage()).await;
    late.subscribe(types::CLUSTER, &[]).await;
    assert_eq!(
        routed_cluster(&late.subscribe(types::ROUTE, &["9080"]).await),
        V1,
        "the last good version serves"
    );
    bed.cp.shutdown().await;
}

/// How many lists (not watches) of `plural` the API server has answered.
fn count_lists(api: &ApiServer, plural: &str) -> usize {
    api.requests()
        .iter()
        .filter(|r| {
            r.starts_with("GET ") && r.contains(&format!("/{plural}?")) && !r.contains("watch=true")
        })
        .count()
}

/// Native sidecars where the cluster has them (Kubernetes 1.29 on), classic
/// ones before.
#[tokio::test]
async fn native_sidecars_follow_the_clusters_version() {
    let dir = TempDir::new("kube-version");
    let api = ApiServer::start(api_server::standard_types()).await;
    let client = oxmesh_control::kube_api::connect(Some(&api.kubeconfig(&dir.0)))
        .await
        .expect("kubeconfig")
        .expect("client");
    assert!(oxmesh_control::kube_api::supports_native_sidecars(&client).await);
    api.set_minor_version(28);
    assert!(!oxmesh_control::kube_api::supports_native_sidecars(&client).await);
}

/// A CRD served only at a version oxmesh does not know is left out (and
/// looked for again); everything else serves.
#[tokio::test]
async fn a_kind_at_an_unknown_version_is_left_out_and_the_rest_serves() {
    let state = TempDir::new("kube-unknown-version");
    let mut types: Vec<api_server::ResourceType> = api_server::standard_types()
        .into_iter()
        .filter(|t| t.kind != "VirtualService")
        .collect();
    types.push(api_server::ResourceType::new(
        "networking.istio.io",
        "v2",
        "VirtualService",
        "virtualservices",
    ));
    let api = ApiServer::start(types).await;
    api.apply_yaml(CLUSTER);
    api.apply(virtual_service("v1"));
    let cp = support::kube_control_plane(&api, &state).await;
    assert_eq!(cp.discovery.current().registry.services.len(), 1);
    let config = cp.discovery.config();
    assert!(
        config
            .objects
            .iter()
            .all(|o| o.kind != oxmesh_config::Kind::VirtualService)
    );
    assert!(
        !api.requests()
            .iter()
            .any(|r| r.contains("/virtualservices")),
        "never listed at a version it cannot read"
    );
    cp.shutdown().await;
}

/// A control plane that starts while its API server is away waits for it,
/// then serves, instead of failing.
#[tokio::test]
async fn a_control_plane_started_before_its_api_server_waits_for_it() {
    let state = TempDir::new("kube-late-api");
    let api = ApiServer::start(api_server::standard_types()).await;
    api.apply_yaml(CLUSTER);
    api.set_down(true);
    let client = oxmesh_control::kube_api::connect(Some(&api.kubeconfig(&state.0)))
        .await
        .expect("kubeconfig")
        .expect("client");
    let options = oxmesh_control::control_plane::Options {
        kubernetes: Some(client),
        ..support::options(&state, None)
    };
    let starting = tokio::spawn(ControlPlane::start(options));
    // Longer than the client's own retries of a 503.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert!(
        !starting.is_finished(),
        "it waits while the API server is down"
    );
    api.set_down(false);
    let cp = tokio::time::timeout(WAIT, starting)
        .await
        .expect("starts once the API server is back")
        .expect("task")
        .expect("control plane");
    assert_eq!(cp.discovery.current().registry.services.len(), 1);
    cp.shutdown().await;
}

/// Mesh config comes from the root namespace's `istio` ConfigMap; gateway
/// credentials are read, service-account tokens and the CA's keys never are.
#[tokio::test]
async fn the_mesh_config_map_is_read_and_token_and_ca_secrets_are_not() {
    let state = TempDir::new("kube-mesh-config");
    let api = ApiServer::start(api_server::standard_types()).await;
    api.apply_yaml(CLUSTER);
    api.apply_yaml(
        r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: "outboundTrafficPolicy: {mode: REGISTRY_ONLY}"
---
apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: elsewhere}
data:
  mesh: "outboundTrafficPolicy: {mode: ALLOW_ANY}"
---
apiVersion: v1
kind: Secret
metadata: {name: shop-cert, namespace: istio-system}
type: kubernetes.io/tls
data: {tls.crt: "", tls.key: ""}
---
apiVersion: v1
kind: Secret
metadata: {name: default-token, namespace: default}
type: kubernetes.io/service-account-token
data: {token: ""}
---
apiVersion: v1
kind: Secret
metadata: {name: cacerts, namespace: istio-system}
type: Opaque
data: {ca-key.pem: ""}
"#,
    );
    let cp = support::kube_control_plane(&api, &state).await;
    assert_eq!(
        cp.discovery.current().mesh.outbound_traffic_policy,
        oxmesh_control::mesh_config::OutboundTrafficPolicy::RegistryOnly
    );
    let config = cp.discovery.config();
    let secrets: Vec<&str> = config
        .objects
        .iter()
        .filter(|o| o.kind == oxmesh_config::Kind::Secret)
        .map(|o| o.name())
        .collect();
    assert_eq!(
        secrets,
        ["shop-cert"],
        "not istio-ca-secret, cacerts or tokens"
    );
    let config_maps = config
        .objects
        .iter()
        .filter(|o| o.kind == oxmesh_config::Kind::ConfigMap)
        .count();
    assert_eq!(config_maps, 1, "only the root namespace's `istio`");
    cp.shutdown().await;
}

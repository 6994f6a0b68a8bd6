//! The ADS server as a proxy meets it: a real gRPC client on loopback subscribes,
//! ACKs, NACKs and receives the pushes that follow edits to the config directory.

mod support;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryResponse};
use oxmesh_xds::ads::types;
use support::{Delta, Sotw, decode, endpoint_ips, routed_cluster, sidecar_node};

const REVIEWS: &str = "reviews.default.svc.cluster.local";

const MESH: &str = r#"
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
"#;

fn destination_rule(subsets: &[&str]) -> String {
    let subsets: Vec<String> = subsets
        .iter()
        .map(|s| format!("{{name: {s}, labels: {{version: {s}}}}}"))
        .collect();
    format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: reviews, namespace: default}}\nspec: {{host: reviews, subsets: [{}]}}\n",
        subsets.join(", ")
    )
}

fn virtual_service(subset: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: reviews, namespace: default}}\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {{host: reviews, subset: {subset}}}\n"
    )
}

fn cluster_names(response: &DiscoveryResponse) -> Vec<String> {
    response
        .resources
        .iter()
        .map(|r| decode::<Cluster>(r).name)
        .collect()
}

fn productpage() -> envoy_types::pb::envoy::config::core::v3::Node {
    sidecar_node(
        "198.18.2.1",
        "productpage-v1-1",
        "default",
        &[("app", "productpage")],
    )
}

#[tokio::test]
async fn subscribe_ack_and_follow_a_file_change() {
    let (cp, _state, config) = support::control_plane("ads-sotw").await;
    config.write("mesh.yaml", MESH);
    config.write("dr.yaml", &destination_rule(&["v1", "v2"]));
    config.write("vs.yaml", &virtual_service("v1"));
    // Wait for the config to be read before the proxy connects.
    support::services_read(&cp, 1).await;

    let mut ads = Sotw::connect(cp.xds_addr, productpage()).await;
    let clusters = ads.subscribe(types::CLUSTER, &[]).await;
    let names = cluster_names(&clusters);
    for expected in [
        format!("outbound|9080||{REVIEWS}"),
        format!("outbound|9080|v1|{REVIEWS}"),
        format!("outbound|9080|v2|{REVIEWS}"),
        "PassthroughCluster".to_owned(),
        "BlackHoleCluster".to_owned(),
    ] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }

    let v1 = format!("outbound|9080|v1|{REVIEWS}");
    let endpoints = ads.subscribe(types::ENDPOINT, &[&v1]).await;
    assert_eq!(
        endpoints.resources.len(),
        1,
        "only the subscribed cluster is sent"
    );
    assert_eq!(
        endpoint_ips(&endpoints),
        vec!["198.18.1.1"],
        "subset v1 holds only the v1 pod"
    );

    let routes = ads.subscribe(types::ROUTE, &["9080"]).await;
    assert_eq!(routed_cluster(&routes), v1);

    // Edit the VirtualService: the new route arrives; nothing else changed, so
    // nothing else is pushed before it.
    config.write("vs.yaml", &virtual_service("v2"));
    let update = ads.recv().await;
    assert_eq!(update.type_url, types::ROUTE, "only routes changed");
    assert_eq!(
        routed_cluster(&update),
        format!("outbound|9080|v2|{REVIEWS}")
    );
    assert_ne!(update.version_info, routes.version_info);
    ads.send(types::ROUTE, &["9080"], Some(&update), None).await;

    let status = cp.status.snapshot();
    assert_eq!(status.len(), 1);
    assert_eq!(status[0].proxy, "productpage-v1-1.default");
    cp.shutdown().await;
}

#[tokio::test]
async fn an_endpoint_edit_sends_only_the_assignment_that_changed() {
    let (cp, _state, config) = support::control_plane("ads-sotw-eds").await;
    config.write("mesh.yaml", MESH);
    config.write("dr.yaml", &destination_rule(&["v1", "v2"]));
    support::services_read(&cp, 1).await;
    let mut ads = Sotw::connect(cp.xds_addr, productpage()).await;
    ads.subscribe(types::CLUSTER, &[]).await;
    let (v1, v2) = (
        format!("outbound|9080|v1|{REVIEWS}"),
        format!("outbound|9080|v2|{REVIEWS}"),
    );
    let first = ads.subscribe(types::ENDPOINT, &[&v1, &v2]).await;
    assert_eq!(
        first.resources.len(),
        2,
        "a new subscription gets everything"
    );

    // The v2 pod moves: only subset v2's assignment (and the unsubsetted
    // cluster, not subscribed here) changed.
    config.write("mesh.yaml", &MESH.replace("198.18.1.2", "198.18.1.9"));
    let update = ads.recv().await;
    assert_eq!(update.type_url, types::ENDPOINT);
    let names: Vec<String> = update
        .resources
        .iter()
        .map(|r| decode::<ClusterLoadAssignment>(r).cluster_name)
        .collect();
    assert_eq!(
        names,
        vec![v2.clone()],
        "only the changed assignment is sent"
    );
    assert_eq!(endpoint_ips(&update), vec!["198.18.1.9"]);
    assert_ne!(update.version_info, first.version_info);
    ads.send(types::ENDPOINT, &[&v1, &v2], Some(&update), None)
        .await;

    // Subscribing to one more name sends every subscribed assignment again.
    let all = format!("outbound|9080||{REVIEWS}");
    let again = ads.subscribe(types::ENDPOINT, &[&v1, &v2, &all]).await;
    assert_eq!(again.resources.len(), 3);
    cp.shutdown().await;
}

#[tokio::test]
async fn a_cluster_list_larger_than_grpcs_default_limit_arrives() {
    // gRPC refuses messages over 4 MiB unless told otherwise; the clusters of
    // a few thousand services are more than that in one response.
    let (cp, _state, config) = support::control_plane("ads-large").await;
    let services = 3_000;
    let mut text = String::new();
    for n in 0..services {
        text.push_str(&format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: service-with-a-long-name-{n}, namespace: default}}\nspec:\n  clusterIP: 198.19.{}.{}\n  ports: [{{name: http, port: 9080}}, {{name: http-admin, port: 9081}}, {{name: grpc, port: 9082}}]\n",
            n / 250,
            n % 250 + 1
        ));
    }
    config.write("services.yaml", &text);
    support::services_read(&cp, services).await;
    let mut ads = Sotw::connect(cp.xds_addr, productpage()).await;
    let clusters = ads.subscribe(types::CLUSTER, &[]).await;
    let size = prost::Message::encoded_len(&clusters);
    assert!(
        size > 4 << 20,
        "the response is {size} bytes: not over the default limit"
    );
    assert!(cluster_names(&clusters).len() > 3 * services);
    cp.shutdown().await;
}

#[tokio::test]
async fn a_nack_is_recorded_and_blocks_nothing_else() {
    let (cp, _state, config) = support::control_plane("ads-nack").await;
    config.write("mesh.yaml", MESH);
    config.write("dr.yaml", &destination_rule(&["v1"]));
    config.write("vs.yaml", &virtual_service("v1"));
    support::services_read(&cp, 1).await;

    let mut ads = Sotw::connect(cp.xds_addr, productpage()).await;
    ads.subscribe(types::CLUSTER, &[]).await;
    ads.send(types::ROUTE, &["9080"], None, None).await;
    let routes = ads.recv().await;
    ads.send(
        types::ROUTE,
        &["9080"],
        Some(&routes),
        Some("route 9080: rejected for the test"),
    )
    .await;

    // The NACK shows in status once the server has read it.
    let deadline = tokio::time::Instant::now() + support::PUSH_WAIT;
    loop {
        let nack = cp
            .status
            .snapshot()
            .first()
            .and_then(|p| p.types.get(types::ROUTE))
            .and_then(|t| t.nack.clone());
        if let Some(nack) = nack {
            assert!(nack.contains("rejected for the test"));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the NACK never reached status"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(cp.status.snapshot()[0].types[types::ROUTE].state(), "STALE");

    // Clusters still update after the NACKed routes.
    config.write("dr.yaml", &destination_rule(&["v1", "v3"]));
    let update = ads.recv().await;
    assert_eq!(update.type_url, types::CLUSTER);
    assert!(cluster_names(&update).contains(&format!("outbound|9080|v3|{REVIEWS}")));
    cp.shutdown().await;
}

#[tokio::test]
async fn an_invalid_edit_keeps_the_last_good_config() {
    let (cp, _state, config) = support::control_plane("ads-invalid").await;
    config.write("mesh.yaml", MESH);
    config.write("dr.yaml", &destination_rule(&["v1", "v2"]));
    config.write("vs.yaml", &virtual_service("v1"));
    support::services_read(&cp, 1).await;
    let mut ads = Sotw::connect(cp.xds_addr, productpage()).await;
    let routes = ads.subscribe(types::ROUTE, &["9080"]).await;
    let before = cp.discovery.current().version;

    // A typo: `destinaton`. The file is refused and the old route keeps serving.
    config.write(
        "vs.yaml",
        &virtual_service("v2").replace("destination", "destinaton"),
    );
    let mut changes = oxmesh_xds::ads::Generator::changes(&*cp.discovery);
    changes
        .wait_for(|v| *v != before)
        .await
        .expect("the edit was processed");
    // The connection regenerated from the new PushContext and found nothing to
    // send; prove it by a later, valid edit arriving as the very next push.
    config.write("dr.yaml", &destination_rule(&["v1", "v2", "v3"]));
    config.write("vs.yaml", &virtual_service("v3"));
    let update = ads.recv().await;
    assert_eq!(update.type_url, types::ROUTE);
    assert_eq!(
        routed_cluster(&update),
        format!("outbound|9080|v3|{REVIEWS}")
    );
    assert_ne!(
        routed_cluster(&routes),
        format!("outbound|9080|v2|{REVIEWS}")
    );
    cp.shutdown().await;
}

#[tokio::test]
async fn delta_sends_changes_and_removals() {
    let (cp, _state, config) = support::control_plane("ads-delta").await;
    config.write("mesh.yaml", MESH);
    config.write("dr.yaml", &destination_rule(&["v1", "v2"]));
    support::services_read(&cp, 1).await;

    let mut ads = Delta::connect(cp.xds_addr, productpage()).await;
    ads.send(DeltaDiscoveryRequest {
        type_url: types::CLUSTER.to_owned(),
        ..Default::default()
    })
    .await;
    let first = ads.recv().await;
    let names: Vec<&str> = first.resources.iter().map(|r| r.name.as_str()).collect();
    assert!(
        names.contains(&format!("outbound|9080|v2|{REVIEWS}").as_str()),
        "{names:?}"
    );
    assert!(first.removed_resources.is_empty());
    ads.ack(&first).await;

    // Drop subset v2: the update names it as removed and resends nothing else.
    config.write("dr.yaml", &destination_rule(&["v1"]));
    let update = ads.recv().await;
    assert_eq!(
        update.removed_resources,
        vec![format!("outbound|9080|v2|{REVIEWS}")]
    );
    assert!(
        update.resources.is_empty(),
        "unchanged clusters are not resent: {:?}",
        update.resources.iter().map(|r| &r.name).collect::<Vec<_>>()
    );
    ads.ack(&update).await;

    // A reconnecting proxy that says what it holds gets only what differs.
    let held: Vec<(String, String)> = first
        .resources
        .iter()
        .filter(|r| !r.name.contains("|v2|"))
        .map(|r| (r.name.clone(), r.version.clone()))
        .collect();
    let mut again = Delta::connect(cp.xds_addr, productpage()).await;
    again
        .send(DeltaDiscoveryRequest {
            type_url: types::CLUSTER.to_owned(),
            initial_resource_versions: held.into_iter().collect(),
            ..Default::default()
        })
        .await;
    let resumed = again.recv().await;
    assert!(resumed.resources.is_empty(), "nothing differs");
    cp.shutdown().await;
}

#[tokio::test]
async fn a_node_without_an_istio_id_is_refused() {
    let (cp, _state, _config) = support::control_plane("ads-badnode").await;
    let node = envoy_types::pb::envoy::config::core::v3::Node {
        id: "not-a-sidecar".to_owned(),
        ..Default::default()
    };
    let mut ads = Sotw::connect(cp.xds_addr, node).await;
    ads.send(types::CLUSTER, &[], None, None).await;
    let outcome = tokio::time::timeout(support::PUSH_WAIT, ads.next_message())
        .await
        .expect("an answer");
    let Err(oxmesh_xds::ads::client::ClientError::Refused(status)) = outcome else {
        panic!("expected a refusal, got {outcome:?}");
    };
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("not-a-sidecar"),
        "{}",
        status.message()
    );
    cp.shutdown().await;
}

/// After a control-plane restart, Envoy's first request on the new stream carries
/// the version and nonce it last saw; it must be answered, not taken for a stale ACK.
#[tokio::test]
async fn a_reconnecting_proxy_with_an_old_nonce_is_answered() {
    let (cp, _state, config) = support::control_plane("ads-reconnect").await;
    config.write("mesh.yaml", MESH);
    support::services_read(&cp, 1).await;
    let mut ads = Sotw::connect(cp.xds_addr, productpage()).await;
    let before_restart = DiscoveryResponse {
        type_url: types::CLUSTER.to_owned(),
        version_info: "from-the-old-control-plane".to_owned(),
        nonce: "17".to_owned(),
        ..Default::default()
    };
    ads.send(types::CLUSTER, &[], Some(&before_restart), None)
        .await;
    let clusters = ads.recv().await;
    assert!(cluster_names(&clusters).contains(&format!("outbound|9080||{REVIEWS}")));
    cp.shutdown().await;
}

/// Envoy puts delta subscription changes in the same request as its ACK or NACK
/// and never repeats them: even riding on a NACK, they apply.
#[tokio::test]
async fn delta_subscriptions_riding_on_a_nack_apply() {
    let (cp, _state, config) = support::control_plane("ads-delta-ack").await;
    config.write("mesh.yaml", MESH);
    config.write("dr.yaml", &destination_rule(&["v1", "v2"]));
    support::services_read(&cp, 1).await;
    let (v1, v2) = (
        format!("outbound|9080|v1|{REVIEWS}"),
        format!("outbound|9080|v2|{REVIEWS}"),
    );
    let mut ads = Delta::connect(cp.xds_addr, productpage()).await;
    ads.send(DeltaDiscoveryRequest {
        type_url: types::ENDPOINT.to_owned(),
        resource_names_subscribe: vec![v1.clone()],
        ..Default::default()
    })
    .await;
    let first = ads.recv().await;
    assert_eq!(
        first
            .resources
            .iter()
            .map(|r| r.name.clone())
            .collect::<Vec<_>>(),
        vec![v1]
    );
    ads.send(DeltaDiscoveryRequest {
        type_url: types::ENDPOINT.to_owned(),
        response_nonce: first.nonce.clone(),
        resource_names_subscribe: vec![v2.clone()],
        error_detail: Some(envoy_types::pb::google::rpc::Status {
            code: 3,
            message: "rejected for the test".to_owned(),
            details: Vec::new(),
        }),
        ..Default::default()
    })
    .await;
    let second = ads.recv().await;
    assert_eq!(
        second
            .resources
            .iter()
            .map(|r| r.name.clone())
            .collect::<Vec<_>>(),
        vec![v2]
    );
    cp.shutdown().await;
}

/// A proxy that stops reading (its HTTP/2 window full of a large CDS) holds
/// only its own stream: another proxy still gets every edit.
#[tokio::test]
async fn a_proxy_that_stops_reading_stalls_no_one_else() {
    let (cp, _state, config) = support::control_plane("ads-stalled").await;
    config.write("mesh.yaml", MESH);
    // Enough services that CDS is far larger than a stream's 64 KiB window.
    let many: String = (0..400)
        .map(|n| {
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: svc-{n}, namespace: default}}\nspec:\n  selector: {{app: svc-{n}}}\n  ports: [{{name: http, port: 8080}}]\n---\n"
            )
        })
        .collect();
    config.write("many.yaml", &many);
    config.write("dr.yaml", &destination_rule(&["v1", "v2"]));
    config.write("vs.yaml", &virtual_service("v1"));
    support::services_read(&cp, 401).await;

    // HTTP/2's smallest windows, so the stalled proxy's window fills at once.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", cp.xds_addr))
        .expect("endpoint")
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .connect()
        .await
        .expect("connect");
    let client = oxmesh_xds::ads::client::SotwClient::over(channel, productpage(), None)
        .await
        .expect("stream");
    let mut stalled = Sotw(client);
    stalled.send(types::CLUSTER, &[], None, None).await;
    stalled.send(types::ROUTE, &["9080"], None, None).await;

    let mut ads = Sotw::connect(
        cp.xds_addr,
        sidecar_node(
            "198.18.0.8",
            "ratings-v1-1",
            "default",
            &[("app", "ratings")],
        ),
    )
    .await;
    let clusters = ads.subscribe(types::CLUSTER, &[]).await;
    assert!(
        prost::Message::encoded_len(&clusters) > 2 * 65_535,
        "CDS is {} bytes",
        prost::Message::encoded_len(&clusters)
    );
    ads.subscribe(types::ROUTE, &["9080"]).await;
    // More edits than the stalled stream's queue holds: its session ends up
    // blocked in sending, and this proxy must still get each one.
    for subset in ["v2", "v1", "v2", "v1", "v2", "v1", "v2", "v1"] {
        config.write("vs.yaml", &virtual_service(subset));
        let update = ads.recv().await;
        assert_eq!(update.type_url, types::ROUTE);
        assert_eq!(
            routed_cluster(&update),
            format!("outbound|9080|{subset}|{REVIEWS}")
        );
        ads.send(types::ROUTE, &["9080"], Some(&update), None).await;
    }
    drop(stalled);
    cp.shutdown().await;
}

/// A proxy that reports no labels (not injected, or an older agent) is the
/// workload of the pod at its address, as istiod makes it: it gets that pod's
/// Service as its inbound chains.
#[tokio::test]
async fn a_proxy_without_labels_takes_its_pods() {
    let (cp, _state, config) = support::control_plane("ads-pod-labels").await;
    config.write("mesh.yaml", MESH);
    support::services_read(&cp, 1).await;
    let node = sidecar_node("198.18.1.1", "reviews-v1", "default", &[]);
    let mut ads = Sotw::connect(cp.xds_addr, node).await;
    ads.subscribe(types::CLUSTER, &[]).await;
    let listeners = ads.subscribe(types::LISTENER, &[]).await;
    let chains: Vec<String> = listeners
        .resources
        .iter()
        .map(decode::<envoy_types::pb::envoy::config::listener::v3::Listener>)
        .filter(|l| l.name == "virtualInbound")
        .flat_map(|l| l.filter_chains.into_iter().map(|c| c.name))
        .collect();
    assert!(
        chains.iter().any(|c| c.starts_with("inbound|9080|")),
        "the pod's Service port is served: {chains:?}"
    );
    cp.shutdown().await;
}

//! What the control plane's integration tests share: temporary directories, a
//! running control plane, and an ADS client speaking the wire protocol.

#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::core::v3::address::Address;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use oxmesh_control::control_plane::{ControlPlane, Options};
use oxmesh_control::mesh_config::MeshConfig;
use oxmesh_identity::TrustDomain;
use oxmesh_identity::ca::Lifetimes;
pub use oxmesh_testkit::TempDir;
use oxmesh_xds::ads::client::{ClientError, SotwClient};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

/// How long a test waits for a push before it fails. Generous: CI machines are
/// slow; how fast pushes really are is measured by the benchmarks.
pub const PUSH_WAIT: Duration = Duration::from_secs(15);

pub fn options(state: &TempDir, config_dir: Option<PathBuf>) -> Options {
    Options {
        state_dir: state.0.clone(),
        ca_dir: None,
        trust_domain: TrustDomain::cluster_local(),
        lifetimes: Lifetimes::default(),
        namespace: "istio-system".to_owned(),
        secure_addr: "127.0.0.1:0".parse().expect("addr"),
        xds_addr: "127.0.0.1:0".parse().expect("addr"),
        monitoring_addr: "127.0.0.1:0".parse().expect("addr"),
        webhook_addr: "127.0.0.1:0".parse().expect("addr"),
        injection: oxmesh_control::inject::Settings::default(),
        revision: "default".to_owned(),
        kubernetes: None,
        config_dir,
        mesh: MeshConfig::default(),
        jwks: Default::default(),
        limits: Default::default(),
        dashboard_prometheus: None,
        trusted_node_accounts: oxmesh_control::node_authorizer::DEFAULT_TRUSTED.to_owned(),
    }
}

/// A control plane with `config` as its config directory.
pub async fn control_plane(name: &str) -> (ControlPlane, TempDir, TempDir) {
    let state = TempDir::new(&format!("{name}-state"));
    let config = TempDir::new(&format!("{name}-config"));
    let cp = ControlPlane::start(options(&state, Some(config.0.clone())))
        .await
        .expect("control plane starts");
    (cp, state, config)
}

/// Waits until the control plane has read `count` services from its config,
/// so a proxy that connects next sees them.
pub async fn services_read(cp: &ControlPlane, count: usize) {
    let mut changes = oxmesh_xds::ads::Generator::changes(&*cp.discovery);
    changes
        .wait_for(|_| cp.discovery.current().registry.services.len() == count)
        .await
        .expect("config read");
}

fn string(s: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.to_owned())),
    }
}

/// An Istio sidecar's node: `sidecar~<ip>~<pod>.<ns>~<ns>.svc.cluster.local`.
pub fn sidecar_node(ip: &str, pod: &str, namespace: &str, labels: &[(&str, &str)]) -> Node {
    let labels = Struct {
        fields: labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), string(v)))
            .collect(),
    };
    let metadata = Struct {
        fields: [
            ("NAMESPACE".to_owned(), string(namespace)),
            ("SERVICE_ACCOUNT".to_owned(), string("default")),
            (
                "LABELS".to_owned(),
                Value {
                    kind: Some(Kind::StructValue(labels)),
                },
            ),
        ]
        .into_iter()
        .collect(),
    };
    Node {
        id: format!("sidecar~{ip}~{pod}.{namespace}~{namespace}.svc.cluster.local"),
        metadata: Some(metadata),
        ..Default::default()
    }
}

/// A state-of-the-world ADS stream that fails the test on errors.
pub struct Sotw(pub SotwClient);

impl Sotw {
    pub async fn connect(addr: std::net::SocketAddr, node: Node) -> Self {
        Self(
            SotwClient::connect(&addr.to_string(), node)
                .await
                .expect("connect"),
        )
    }

    /// A subscription (`acking: None`), an ACK, or with `error` a NACK.
    pub async fn send(
        &mut self,
        type_url: &str,
        names: &[&str],
        acking: Option<&DiscoveryResponse>,
        error: Option<&str>,
    ) {
        let sent = match (acking, error) {
            (None, _) => self.0.subscribe(type_url, names).await,
            (Some(response), None) => self.0.ack(response, names).await,
            (Some(response), Some(reason)) => self.0.nack(response, names, "", reason).await,
        };
        sent.expect("send request");
    }

    pub async fn recv(&mut self) -> DiscoveryResponse {
        tokio::time::timeout(PUSH_WAIT, self.0.recv())
            .await
            .expect("a push within the wait")
            .expect("stream healthy")
    }

    pub async fn next_message(&mut self) -> Result<DiscoveryResponse, ClientError> {
        self.0.recv().await
    }

    /// Subscribes, receives the first response and ACKs it.
    pub async fn subscribe(&mut self, type_url: &str, names: &[&str]) -> DiscoveryResponse {
        self.send(type_url, names, None, None).await;
        let response = self.recv().await;
        assert_eq!(response.type_url, type_url);
        self.send(type_url, names, Some(&response), None).await;
        response
    }
}

/// A delta ADS stream.
pub struct Delta {
    requests: mpsc::Sender<DeltaDiscoveryRequest>,
    responses: Streaming<DeltaDiscoveryResponse>,
    node: Option<Node>,
}

impl Delta {
    pub async fn connect(addr: std::net::SocketAddr, node: Node) -> Self {
        let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{addr}"))
            .await
            .expect("connect");
        let (requests, receiver) = mpsc::channel(16);
        let responses = client
            .delta_aggregated_resources(ReceiverStream::new(receiver))
            .await
            .expect("stream")
            .into_inner();
        Self {
            requests,
            responses,
            node: Some(node),
        }
    }

    pub async fn send(&mut self, request: DeltaDiscoveryRequest) {
        let request = DeltaDiscoveryRequest {
            node: self.node.take(),
            ..request
        };
        self.requests.send(request).await.expect("send request");
    }

    pub async fn ack(&mut self, response: &DeltaDiscoveryResponse) {
        self.send(DeltaDiscoveryRequest {
            type_url: response.type_url.clone(),
            response_nonce: response.nonce.clone(),
            ..Default::default()
        })
        .await;
    }

    pub async fn recv(&mut self) -> DeltaDiscoveryResponse {
        tokio::time::timeout(PUSH_WAIT, self.responses.message())
            .await
            .expect("a push within the wait")
            .expect("stream healthy")
            .expect("stream open")
    }
}

pub fn decode<T: prost::Message + Default>(any: &envoy_types::pb::google::protobuf::Any) -> T {
    T::decode(any.value.as_slice()).expect("decodes")
}

/// The cluster the first route of the service's virtual host sends to.
pub fn routed_cluster(response: &DiscoveryResponse) -> String {
    let config: RouteConfiguration = decode(&response.resources[0]);
    let host = config
        .virtual_hosts
        .iter()
        .find(|vh| vh.domains.iter().any(|d| d == "reviews:9080"))
        .expect("reviews vhost");
    match host.routes[0].action.as_ref() {
        Some(Action::Route(action)) => match &action.cluster_specifier {
            Some(ClusterSpecifier::Cluster(name)) => name.clone(),
            other => panic!("unexpected cluster specifier {other:?}"),
        },
        other => panic!("unexpected action {other:?}"),
    }
}

pub fn endpoint_ips(response: &DiscoveryResponse) -> Vec<String> {
    let assignment: ClusterLoadAssignment = decode(&response.resources[0]);
    assignment
        .endpoints
        .iter()
        .flat_map(|l| &l.lb_endpoints)
        .filter_map(|e| match &e.host_identifier {
            Some(HostIdentifier::Endpoint(ep)) => match ep.address.as_ref()?.address.as_ref()? {
                Address::SocketAddress(sa) => Some(sa.address.clone()),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// A control plane whose config is the fixture's cluster, reached over HTTPS
/// with the kubeconfig the fixture writes.
pub async fn kube_control_plane(
    api: &oxmesh_testkit::api_server::ApiServer,
    state: &TempDir,
) -> ControlPlane {
    let client = oxmesh_control::kube_api::connect(Some(&api.kubeconfig(&state.0)))
        .await
        .expect("kubeconfig")
        .expect("client");
    ControlPlane::start(Options {
        kubernetes: Some(client),
        ..options(state, None)
    })
    .await
    .expect("control plane starts")
}

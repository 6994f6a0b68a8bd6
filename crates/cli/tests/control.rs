//! `oxmesh control` as an operator runs it: a real process with a config
//! directory, a proxy connected over ADS, and `proxy-status`, `proxy-config` and
//! the monitoring port answering about it.

mod support;

use std::process::{Command, Output};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use oxmesh_testkit::TempDir;
use oxmesh_xds::ads::client::SotwClient;
use oxmesh_xds::ads::types;
use support::{WAIT, start};

fn oxmesh(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_oxmesh"))
        .args(args)
        .output()
        .expect("run oxmesh")
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn node() -> Node {
    let string = |s: &str| Value {
        kind: Some(Kind::StringValue(s.to_owned())),
    };
    let labels = Struct {
        fields: [("app".to_owned(), string("productpage"))]
            .into_iter()
            .collect(),
    };
    Node {
        id: "sidecar~198.18.2.1~productpage-v1-1.default~default.svc.cluster.local".to_owned(),
        metadata: Some(Struct {
            fields: [
                ("NAMESPACE".to_owned(), string("default")),
                (
                    "LABELS".to_owned(),
                    Value {
                        kind: Some(Kind::StructValue(labels)),
                    },
                ),
            ]
            .into_iter()
            .collect(),
        }),
        ..Default::default()
    }
}

const MESH: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: reviews, namespace: default}\nspec:\n  selector: {app: reviews}\n  ports: [{name: http, port: 9080}]\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews, namespace: default}\nspec: {host: reviews, subsets: [{name: v1, labels: {version: v1}}]}\n";

/// A proxy connected to `xds`, and the clusters it was sent first.
async fn clusters_of(
    xds: &str,
) -> (
    SotwClient,
    envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse,
) {
    let mut ads = SotwClient::connect(xds, node()).await.expect("connect");
    ads.subscribe(types::CLUSTER, &[]).await.expect("subscribe");
    let clusters = tokio::time::timeout(WAIT, ads.recv())
        .await
        .expect("in time")
        .expect("clusters");
    (ads, clusters)
}

fn http_get(address: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).expect("connect monitoring port");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut text = String::new();
    stream.read_to_string(&mut text).expect("response");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_status_config_and_metrics_describe_a_connected_proxy() {
    let (state, config) = (TempDir::new("state"), TempDir::new("config"));
    std::fs::write(config.0.join("mesh.yaml"), MESH).expect("write config");
    let cp = start(&state, &["--config-dir".as_ref(), config.0.as_os_str()]);

    let (mut ads, clusters) = clusters_of(&cp.xds).await;
    ads.ack(&clusters, &[]).await.expect("ack");

    // The ACK travels asynchronously; poll proxy-status until it shows.
    let deadline = std::time::Instant::now() + WAIT;
    let status = loop {
        let text = stdout(&oxmesh(&[
            "proxy-status",
            "--control-plane",
            &cp.monitoring,
        ]));
        if text
            .lines()
            .any(|l| l.starts_with("productpage-v1-1.default") && l.contains("SYNCED"))
        {
            break text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never SYNCED:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let header: Vec<&str> = status
        .lines()
        .next()
        .expect("header")
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "NAME", "CDS", "LDS", "EDS", "RDS", "SDS", "WDS", "WADS", "VERSION"
        ]
    );
    let row: Vec<&str> = status
        .lines()
        .nth(1)
        .expect("row")
        .split_whitespace()
        .collect();
    assert_eq!(
        &row[..3],
        ["productpage-v1-1.default", "SYNCED", "NOT"],
        "CDS synced, LDS never asked for: {status}"
    );

    let table = stdout(&oxmesh(&[
        "proxy-config",
        "clusters",
        "productpage-v1-1.default",
        "--control-plane",
        &cp.monitoring,
    ]));
    assert!(
        table
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>()
                == [
                    "reviews.default.svc.cluster.local",
                    "9080",
                    "v1",
                    "outbound",
                    "EDS"
                ]),
        "{table}"
    );
    let json = stdout(&oxmesh(&[
        "proxy-config",
        "routes",
        "productpage-v1-1.default",
        "-o",
        "json",
        "--control-plane",
        &cp.monitoring,
    ]));
    let routes: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(routes["rds"][0]["name"], "9080");

    let missing = oxmesh(&[
        "proxy-config",
        "clusters",
        "nobody.default",
        "--control-plane",
        &cp.monitoring,
    ]);
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("no connected proxy \"nobody.default\"")
    );

    let metrics = http_get(&cp.monitoring, "/metrics");
    assert!(metrics.contains("pilot_xds 1"), "{metrics}");
    assert!(
        metrics.contains("pilot_xds_pushes_total{type=\"cds\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("pilot_services 1"), "{metrics}");

    // A broken edit is refused, shown in configz, and the old object keeps serving.
    std::fs::write(
        config.0.join("mesh.yaml"),
        MESH.replace("subsets", "subsetz"),
    )
    .expect("write config");
    let deadline = std::time::Instant::now() + WAIT;
    let configz = loop {
        let text = http_get(&cp.monitoring, "/debug/configz");
        if text.contains("subsetz") {
            break text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the refusal never showed:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let body: serde_json::Value =
        serde_json::from_str(configz.split("\r\n\r\n").nth(1).expect("body")).expect("json");
    assert!(
        body["refused"][0]
            .as_str()
            .expect("refusal")
            .contains("DestinationRule default/reviews"),
        "{body}"
    );
    assert!(
        body["objects"]
            .as_array()
            .expect("objects")
            .iter()
            .any(|o| o["kind"] == "DestinationRule"),
        "the last good rule still serves: {body}"
    );
}

#[test]
fn proxy_status_without_a_control_plane_says_so() {
    let output = oxmesh(&["proxy-status", "--control-plane", "127.0.0.1:1"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot reach the control plane at 127.0.0.1:1"),
        "{stderr}"
    );
}

/// On Kubernetes (here the API server fixture, over HTTPS with a kubeconfig),
/// the cluster is the config: its services and Istio objects reach a proxy,
/// and `/ready` answers once they are read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_kubeconfig_the_control_plane_serves_the_cluster() {
    use oxmesh_testkit::api_server::{self, ApiServer};
    let state = TempDir::new("kube-control");
    let api = ApiServer::start(api_server::standard_types()).await;
    api.apply_yaml(MESH);
    let kubeconfig = api.kubeconfig(&state.0);
    let cp = start(&state, &["--kubeconfig".as_ref(), kubeconfig.as_os_str()]);
    assert!(http_get(&cp.monitoring, "/ready").starts_with("HTTP/1.1 200"));

    let (_ads, clusters) = clusters_of(&cp.xds).await;
    let names: Vec<String> = clusters
        .resources
        .iter()
        .map(|r| {
            <envoy_types::pb::envoy::config::cluster::v3::Cluster as prost::Message>::decode(
                r.value.as_slice(),
            )
            .expect("cluster")
            .name
        })
        .collect();
    assert!(
        names.contains(&"outbound|9080|v1|reviews.default.svc.cluster.local".to_owned()),
        "{names:?}"
    );
    assert!(
        api.requests()
            .iter()
            .any(|r| r.contains("/destinationrules?") && r.contains("watch=true")),
        "it watches"
    );
}

#[test]
fn a_config_dir_on_kubernetes_is_refused() {
    let out = oxmesh(&[
        "control",
        "--state-dir",
        "/nonexistent",
        "--config-dir",
        "/tmp",
        "--kubeconfig",
        "/nonexistent/kubeconfig",
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--config-dir") && stderr.contains("--kubeconfig"),
        "{stderr}"
    );
}

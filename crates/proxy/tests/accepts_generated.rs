//! The proxy accepts what the control plane generates: every resource the
//! generators produce for Istio's bookinfo samples converts into runtime types,
//! for sidecars and the ingress gateway alike. A sample the proxy cannot honour
//! yet is listed with the reason it gives, so a gap shows here, not in traffic.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use oxmesh_config::load::load_paths;
use oxmesh_control::generate;
use oxmesh_control::mesh_config::MeshConfig;
use oxmesh_control::proxy::Proxy;
use oxmesh_control::push_context::PushContext;
use oxmesh_proxy::config;
use oxmesh_xds::ads::types;
use prost::Message;

fn conformance(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/conformance/istio")
        .join(path)
}

fn context(extra: &Path) -> PushContext {
    let paths = vec![
        conformance("bookinfo/bookinfo.yaml"),
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../control/tests/golden/bookinfo-pods.yaml"),
        extra.to_path_buf(),
    ];
    let loaded = load_paths(&paths);
    let objects: Vec<_> = loaded.objects.into_iter().map(|s| s.object).collect();
    PushContext::build(&objects, MeshConfig::default(), Arc::from(&b""[..]), 1)
}

fn node(id: &str, namespace: &str, labels: &[(&str, &str)]) -> Node {
    let string = |s: &str| Value {
        kind: Some(Kind::StringValue(s.to_owned())),
    };
    let labels = Struct {
        fields: labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), string(v)))
            .collect(),
    };
    Node {
        id: id.to_owned(),
        metadata: Some(Struct {
            fields: [
                ("NAMESPACE".to_owned(), string(namespace)),
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

fn proxies() -> Vec<Proxy> {
    let sidecar = |pod: &str, app: &str| {
        node(
            &format!("sidecar~198.18.10.9~{pod}.default~default.svc.cluster.local"),
            "default",
            &[("app", app), ("version", "v1")],
        )
    };
    [
        sidecar("productpage-v1-5d8c7b9f4-x1", "productpage"),
        sidecar("reviews-v1-5d8c7b9f4-x1", "reviews"),
        sidecar("ratings-v1-5d8c7b9f4-x1", "ratings"),
        node(
            "router~198.18.0.5~istio-ingressgateway-1.istio-system~istio-system.svc.cluster.local",
            "istio-system",
            &[("istio", "ingressgateway")],
        ),
    ]
    .iter()
    .map(|n| Proxy::from_node(n).expect("valid node"))
    .collect()
}

/// Every conversion error for one sample, as `proxy: error` lines.
fn errors_for(sample: &Path) -> Vec<String> {
    let ctx = context(sample);
    let mut errors = Vec::new();
    for proxy in proxies() {
        for type_url in [
            types::CLUSTER,
            types::ENDPOINT,
            types::LISTENER,
            types::ROUTE,
        ] {
            for named in generate::resources(&ctx, &proxy, type_url).iter() {
                let bytes = named.resource.value.as_slice();
                let result = match type_url {
                    types::CLUSTER => {
                        config::cluster::convert(&Cluster::decode(bytes).expect("decodes"))
                            .map(drop)
                    }
                    types::ENDPOINT => config::endpoint::convert(
                        &ClusterLoadAssignment::decode(bytes).expect("decodes"),
                    )
                    .map(drop),
                    types::LISTENER => {
                        config::listener::convert(&Listener::decode(bytes).expect("decodes"))
                            .map(drop)
                    }
                    _ => {
                        config::route::convert(&RouteConfiguration::decode(bytes).expect("decodes"))
                            .map(drop)
                    }
                };
                if let Err(e) = result {
                    errors.push(format!("{}: {e}", proxy.id));
                }
            }
        }
    }
    errors
}

/// Samples the proxy refuses for now, with the reason it must give. Empty: the
/// proxy takes everything the generators make of bookinfo's samples.
const KNOWN_GAPS: &[(&str, &str)] = &[];

#[test]
fn bookinfo_samples_convert_without_rejections() {
    let dir = conformance("bookinfo/networking");
    let mut samples: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("samples")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    samples.sort();
    // The ingress gateway as Istio installs it, with a TLS Gateway.
    samples.push(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../control/tests/golden/ingress-gateway.yaml"),
    );
    // Istio's tasks as the examples write them (EnvoyFilters for rate limits
    // among them): what they make of the config the proxy must take too.
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/bookinfo/networking");
    let mut tasks: Vec<PathBuf> = std::fs::read_dir(&examples)
        .expect("examples")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    tasks.sort();
    samples.extend(tasks);
    // Outlier detection as the proxy now takes all of it.
    let dir = oxmesh_testkit::TempDir::new("accepts-outlier");
    dir.write(
        "outlier.yaml",
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews-outlier, namespace: default}\nspec:\n  host: reviews\n  trafficPolicy:\n    outlierDetection: {consecutive5xxErrors: 3, splitExternalLocalOriginErrors: true, consecutiveLocalOriginFailures: 2, minHealthPercent: 50}\n",
    );
    samples.push(dir.path("outlier.yaml"));
    assert!(
        samples.len() > 15,
        "the bookinfo networking samples are present"
    );
    let mut report = Vec::new();
    for sample in &samples {
        let name = sample
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let errors = errors_for(sample);
        let expected = KNOWN_GAPS
            .iter()
            .find(|(sample, _)| *sample == name)
            .map(|(_, reason)| *reason);
        match expected {
            None if !errors.is_empty() => {
                report.push(format!("{name}:\n  {}", errors.join("\n  ")))
            }
            Some(reason) if !errors.iter().all(|e| e.contains(reason)) || errors.is_empty() => {
                report.push(format!(
                    "{name} (expected {reason:?}):\n  {}",
                    errors.join("\n  ")
                ))
            }
            _ => {}
        }
    }
    assert!(report.is_empty(), "rejections:\n{}", report.join("\n"));
}

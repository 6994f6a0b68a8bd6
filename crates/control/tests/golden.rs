//! Golden tests: the generators' output for Istio's bookinfo sample, as JSON,
//! compared with files under `tests/golden/`. The files were read by hand once;
//! a change to them is a change in what proxies receive, and shows in review.
//!
//! `OXMESH_BLESS=1 cargo test -p oxmesh-control --test golden` rewrites them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use oxmesh_config::load::load_paths;
use oxmesh_control::generate;
use oxmesh_control::mesh_config::MeshConfig;
use oxmesh_control::proxy::Proxy;
use oxmesh_control::push_context::PushContext;
use oxmesh_xds::ads::types;

fn conformance(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/conformance/istio")
        .join(path)
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn context(extra: &[PathBuf]) -> PushContext {
    let mut paths = vec![
        conformance("bookinfo/bookinfo.yaml"),
        golden_dir().join("bookinfo-pods.yaml"),
    ];
    paths.extend_from_slice(extra);
    let loaded = load_paths(&paths);
    assert!(
        !loaded.has_errors(),
        "fixtures load cleanly: {:?}",
        loaded.diagnostics
    );
    let objects: Vec<_> = loaded.objects.into_iter().map(|s| s.object).collect();
    PushContext::build(
        &objects,
        MeshConfig::default(),
        Arc::from(&b"-----BEGIN CERTIFICATE-----\n"[..]),
        1,
    )
}

fn sidecar(pod: &str, app: &str, version: &str) -> Proxy {
    Proxy::from_node(&node(pod, app, version, None)).expect("valid node")
}

fn node(pod: &str, app: &str, version: &str, generator: Option<&str>) -> Node {
    let string = |s: &str| Value {
        kind: Some(Kind::StringValue(s.to_owned())),
    };
    let labels = Struct {
        fields: [("app", app), ("version", version)]
            .iter()
            .map(|(k, v)| ((*k).to_owned(), string(v)))
            .collect(),
    };
    let metadata = Struct {
        fields: [
            ("NAMESPACE".to_owned(), string("default")),
            (
                "SERVICE_ACCOUNT".to_owned(),
                string(&format!("bookinfo-{app}")),
            ),
            (
                "LABELS".to_owned(),
                Value {
                    kind: Some(Kind::StructValue(labels)),
                },
            ),
        ]
        .into_iter()
        .chain(generator.map(|g| ("GENERATOR".to_owned(), string(g))))
        .collect(),
    };
    Node {
        id: format!("sidecar~198.18.10.9~{pod}.default~default.svc.cluster.local"),
        metadata: Some(metadata),
        ..Default::default()
    }
}

fn render(ctx: &PushContext, proxy: &Proxy, type_url: &str) -> String {
    let resources: Vec<serde_json::Value> = generate::resources(ctx, proxy, type_url)
        .iter()
        .map(|named| oxmesh_xds::json::to_json(&named.resource).expect("renders"))
        .collect();
    let mut text = serde_json::to_string_pretty(&resources).expect("json");
    text.push('\n');
    text
}

/// The resources of `type_url` for `proxy`, as JSON.
fn rendered(ctx: &PushContext, proxy: &Proxy, type_url: &str) -> serde_json::Value {
    serde_json::from_str(&render(ctx, proxy, type_url)).expect("json")
}

/// A rendered cluster by name.
fn cluster_named<'a>(clusters: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    clusters
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no cluster {name}"))
}

/// The first route of the virtual host that answers to `host`, in rendered
/// route configurations.
fn first_route(routes: &str, host: &str) -> serde_json::Value {
    let routes: serde_json::Value = serde_json::from_str(routes).expect("json");
    routes
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|rc| rc["virtualHosts"].as_array().cloned().unwrap_or_default())
        .find(|vh| {
            vh["domains"]
                .as_array()
                .is_some_and(|d| d.iter().any(|x| x == host))
        })
        .map(|vh| vh["routes"][0].clone())
        .unwrap_or_default()
}

/// Compares with (or, blessing, writes) `tests/golden/<name>.json`.
fn check(name: &str, actual: &str) {
    let path = golden_dir().join(format!("{name}.json"));
    if std::env::var_os("OXMESH_BLESS").is_some() {
        std::fs::write(&path, actual).expect("write golden file");
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (bless with OXMESH_BLESS=1)", path.display()));
    if expected != actual {
        let line = expected
            .lines()
            .zip(actual.lines())
            .position(|(a, b)| a != b)
            .map_or(0, |i| i + 1);
        panic!(
            "{} differs from the generated output, first at line {line}:\n expected: {}\n   actual: {}\n(bless with OXMESH_BLESS=1 after reviewing)",
            path.display(),
            expected
                .lines()
                .nth(line.saturating_sub(1))
                .unwrap_or("<end>"),
            actual
                .lines()
                .nth(line.saturating_sub(1))
                .unwrap_or("<end>"),
        );
    }
}

#[test]
fn productpage_with_subsets() {
    let ctx = context(&[conformance("bookinfo/networking/destination-rule-all.yaml")]);
    let proxy = sidecar("productpage-v1-5d8c7b9f4-x1", "productpage", "v1");
    check(
        "productpage-clusters",
        &render(&ctx, &proxy, types::CLUSTER),
    );
    check(
        "productpage-endpoints",
        &render(&ctx, &proxy, types::ENDPOINT),
    );
    check(
        "productpage-listeners",
        &render(&ctx, &proxy, types::LISTENER),
    );
    check("productpage-routes", &render(&ctx, &proxy, types::ROUTE));
    check("productpage-secrets", &render(&ctx, &proxy, types::SECRET));
}

#[test]
fn reviews_routed_by_user_and_weight() {
    let ctx = context(&[
        conformance("bookinfo/networking/destination-rule-all.yaml"),
        conformance("bookinfo/networking/virtual-service-reviews-jason-v2-v3.yaml"),
        conformance("bookinfo/networking/virtual-service-ratings-test-delay.yaml"),
    ]);
    let proxy = sidecar("productpage-v1-5d8c7b9f4-x1", "productpage", "v1");
    check("jason-routes", &render(&ctx, &proxy, types::ROUTE));
    let ctx = context(&[
        conformance("bookinfo/networking/destination-rule-all.yaml"),
        conformance("bookinfo/networking/virtual-service-reviews-90-10.yaml"),
    ]);
    check("weighted-routes", &render(&ctx, &proxy, types::ROUTE));
}

#[test]
fn inbound_follows_peer_authentication() {
    let ctx = context(&[golden_dir().join("mesh-strict.yaml")]);
    check(
        "details-strict-permissive-listeners",
        &render(
            &ctx,
            &sidecar("details-v1-5d8c7b9f4-x1", "details", "v1"),
            types::LISTENER,
        ),
    );
    check(
        "ratings-strict-listeners",
        &render(
            &ctx,
            &sidecar("ratings-v1-5d8c7b9f4-x1", "ratings", "v1"),
            types::LISTENER,
        ),
    );
}

/// The ingress gateway: bookinfo's Gateway on 8080, a TLS-terminating one on 443
/// (listening on the Service's targetPort 8443) and its HTTP redirect on 80 (8080).
#[test]
fn ingress_gateway() {
    let ctx = context(&[
        conformance("bookinfo/networking/bookinfo-gateway.yaml"),
        golden_dir().join("ingress-gateway.yaml"),
    ]);
    let proxy = ingress_gateway_proxy();
    check("gateway-listeners", &render(&ctx, &proxy, types::LISTENER));
    check("gateway-routes", &render(&ctx, &proxy, types::ROUTE));
}

/// The ingress gateway in istio-system, labelled `istio: ingressgateway`.
fn ingress_gateway_proxy() -> Proxy {
    let node = Node {
        id: "router~198.18.0.5~istio-ingressgateway-1.istio-system~istio-system.svc.cluster.local"
            .to_owned(),
        metadata: Some(Struct {
            fields: [
                (
                    "NAMESPACE".to_owned(),
                    Value {
                        kind: Some(Kind::StringValue("istio-system".to_owned())),
                    },
                ),
                (
                    "LABELS".to_owned(),
                    Value {
                        kind: Some(Kind::StructValue(Struct {
                            fields: [(
                                "istio".to_owned(),
                                Value {
                                    kind: Some(Kind::StringValue("ingressgateway".to_owned())),
                                },
                            )]
                            .into_iter()
                            .collect(),
                        })),
                    },
                ),
            ]
            .into_iter()
            .collect(),
        }),
        ..Default::default()
    };
    Proxy::from_node(&node).expect("valid node")
}

/// A proxyless gRPC client: API listeners and clusters gRPC accepts, mTLS through
/// certificate providers because the DestinationRule asks for ISTIO_MUTUAL.
#[test]
fn proxyless_grpc_client() {
    let ctx = context(&[conformance(
        "bookinfo/networking/destination-rule-all-mtls.yaml",
    )]);
    let proxy =
        Proxy::from_node(&node("grpc-client-1", "client", "v1", Some("grpc"))).expect("valid node");
    check("grpc-listeners", &render(&ctx, &proxy, types::LISTENER));
    check("grpc-clusters", &render(&ctx, &proxy, types::CLUSTER));
}

/// Two PushContexts from the same input give byte-identical resources: versions
/// are content hashes, and a nondeterministic encoding would push for nothing.
#[test]
fn generation_is_deterministic() {
    let extra = [
        conformance("bookinfo/networking/destination-rule-all.yaml"),
        golden_dir().join("mesh-strict.yaml"),
    ];
    let (a, b) = (context(&extra), context(&extra));
    let proxy = sidecar("reviews-v1-5d8c7b9f4-x1", "reviews", "v1");
    for type_url in types::ORDER {
        assert_eq!(
            generate::resources(&a, &proxy, type_url),
            generate::resources(&b, &proxy, type_url),
            "{type_url}"
        );
    }
}

/// A DestinationRule's consistentHash becomes the cluster's RING_HASH or MAGLEV
/// and a hash policy on every route to the host (the default route included).
#[test]
fn consistent_hash_reaches_clusters_and_routes() {
    let dir = oxmesh_testkit::TempDir::new("golden-hash");
    dir.write(
        "dr.yaml",
        r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ratings, namespace: default}
spec:
  host: ratings
  trafficPolicy:
    loadBalancer:
      consistentHash: {httpHeaderName: x-user, ringHash: {minimumRingSize: 4096}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: details, namespace: default}
spec:
  host: details
  trafficPolicy:
    loadBalancer:
      consistentHash: {httpCookie: {name: session, ttl: 60s}, maglev: {tableSize: 1009}}
"#,
    );
    let ctx = context(&[dir.path("dr.yaml")]);
    let proxy = sidecar("productpage-v1-5d8c7b9f4-x1", "productpage", "v1");
    let clusters: serde_json::Value = rendered(&ctx, &proxy, types::CLUSTER);
    let find = |name: &str| {
        clusters
            .as_array()
            .and_then(|a| a.iter().find(|c| c["name"] == name))
            .cloned()
            .unwrap_or_default()
    };
    let ratings = find("outbound|9080||ratings.default.svc.cluster.local");
    assert_eq!(ratings["lbPolicy"], "RING_HASH");
    assert_eq!(ratings["ringHashLbConfig"]["minimumRingSize"], "4096");
    let details = find("outbound|9080||details.default.svc.cluster.local");
    assert_eq!(details["lbPolicy"], "MAGLEV");
    assert_eq!(details["maglevLbConfig"]["tableSize"], "1009");
    let routes = render(&ctx, &proxy, types::ROUTE);
    assert!(routes.contains(r#""headerName": "x-user""#), "{routes}");
    assert!(routes.contains(r#""name": "session""#), "{routes}");
}

/// Istio's circuit-breaking DestinationRule and the rest of `connectionPool`
/// reach the cluster as Istio writes them: thresholds (0 stays unlimited),
/// retry budget (Istio's 20 % default, its interval), keep-alive, connection
/// lifetimes; HTTP/2 stream limits and PINGs on HTTP/2 clusters only.
#[test]
fn connection_pools_become_circuit_breakers_and_options() {
    let dir = oxmesh_testkit::TempDir::new("golden-pool");
    dir.write(
        "dr.yaml",
        r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ratings, namespace: default}
spec:
  host: ratings
  trafficPolicy:
    retryBudget: {minRetryConcurrency: 5, budgetInterval: 2s}
    connectionPool:
      tcp:
        maxConnections: 1
        connectTimeout: 2s
        maxConnectionDuration: 30s
        idleTimeout: 90s
        tcpKeepalive: {time: 600s, interval: 75s, probes: 3}
      http:
        http1MaxPendingRequests: 1
        maxRequestsPerConnection: 1
        maxRetries: 0
        maxConcurrentStreams: 7
        http2KeepAlive: {interval: 10s, timeout: 3s}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: details, namespace: default}
spec:
  host: details
  trafficPolicy:
    connectionPool:
      http:
        h2UpgradePolicy: UPGRADE
        maxConcurrentStreams: 7
        http2KeepAlive: {interval: 10s, timeout: 3s}
"#,
    );
    let ctx = context(&[dir.path("dr.yaml")]);
    let proxy = sidecar("productpage-v1-5d8c7b9f4-x1", "productpage", "v1");
    let clusters: serde_json::Value = rendered(&ctx, &proxy, types::CLUSTER);
    let ratings = clusters
        .as_array()
        .and_then(|a| {
            a.iter()
                .find(|c| c["name"] == "outbound|9080||ratings.default.svc.cluster.local")
        })
        .cloned()
        .unwrap_or_default();
    let t = &ratings["circuitBreakers"]["thresholds"][0];
    assert_eq!(t["maxConnections"], 1);
    assert_eq!(t["maxPendingRequests"], 1);
    assert_eq!(t["maxRequests"], u32::MAX, "0 means unlimited");
    assert_eq!(t["maxRetries"], u32::MAX, "0 means unlimited");
    assert_eq!(t["retryBudget"]["budgetPercent"]["value"], 20.0);
    assert_eq!(t["retryBudget"]["minRetryConcurrency"], 5);
    assert_eq!(t["retryBudget"]["budgetInterval"], "2s");
    assert_eq!(ratings["connectTimeout"], "2s");
    let keepalive = &ratings["upstreamConnectionOptions"]["tcpKeepalive"];
    assert_eq!(keepalive["keepaliveTime"], 600);
    assert_eq!(keepalive["keepaliveInterval"], 75);
    assert_eq!(keepalive["keepaliveProbes"], 3);
    let common = &ratings["typedExtensionProtocolOptions"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
        ["commonHttpProtocolOptions"];
    assert_eq!(common["maxConnectionDuration"], "30s");
    assert_eq!(
        common["idleTimeout"], "90s",
        "the TCP idle timeout when HTTP sets none"
    );
    assert_eq!(common["maxRequestsPerConnection"], 1);
    let options = &ratings["typedExtensionProtocolOptions"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"];
    assert!(
        options.get("explicitHttpConfig").is_none(),
        "HTTP/1.1 clusters take no HTTP/2 options: {options}"
    );
    let details = clusters
        .as_array()
        .and_then(|a| {
            a.iter()
                .find(|c| c["name"] == "outbound|9080||details.default.svc.cluster.local")
        })
        .cloned()
        .unwrap_or_default();
    let h2 = &details["typedExtensionProtocolOptions"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
        ["explicitHttpConfig"]["http2ProtocolOptions"];
    assert_eq!(h2["maxConcurrentStreams"], 7);
    assert_eq!(h2["connectionKeepalive"]["interval"], "10s");
    assert_eq!(h2["connectionKeepalive"]["timeout"], "3s");
}

/// VirtualService `headers` become the route's mutations (set overwrites,
/// add appends, authority a host rewrite); with several destinations each
/// weighted cluster carries its own, with one they join the route's.
#[test]
fn virtual_service_headers_become_route_and_cluster_mutations() {
    let dir = oxmesh_testkit::TempDir::new("golden-headers");
    dir.write(
        "vs.yaml",
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - headers:
      request: {set: {x-set: s, ":authority": reviews.example}, add: {x-add: a}, remove: [x-gone]}
      response: {remove: [server]}
    route:
    - destination: {host: reviews, subset: v1}
      weight: 80
      headers: {response: {set: {x-version: v1}}}
    - destination: {host: reviews, subset: v2}
      weight: 20
      headers: {request: {set: {host: v2.example}}}
    - destination: {host: reviews, subset: v3}
      weight: 0
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings, namespace: default}
spec:
  hosts: [ratings]
  http:
  - headers: {request: {add: {x-route: r}}}
    route:
    - destination: {host: ratings}
      headers: {request: {add: {x-destination: d}}}
"#,
    );
    let ctx = context(&[
        dir.path("vs.yaml"),
        conformance("bookinfo/networking/destination-rule-all.yaml"),
    ]);
    let proxy = sidecar("productpage-v1-5d8c7b9f4-x1", "productpage", "v1");
    let routes = render(&ctx, &proxy, types::ROUTE);
    let route_of = |host: &str| first_route(&routes, host);
    let reviews = route_of("reviews");
    let adds: Vec<(String, String)> = reviews["requestHeadersToAdd"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|o| {
            (
                o["header"]["key"].as_str().unwrap_or_default().to_owned(),
                o["appendAction"]
                    .as_str()
                    .unwrap_or("APPEND_IF_EXISTS_OR_ADD")
                    .to_owned(),
            )
        })
        .collect();
    assert_eq!(
        adds,
        [
            ("x-set".to_owned(), "OVERWRITE_IF_EXISTS_OR_ADD".to_owned()),
            ("x-add".to_owned(), "APPEND_IF_EXISTS_OR_ADD".to_owned()),
        ]
    );
    assert_eq!(
        reviews["requestHeadersToRemove"],
        serde_json::json!(["x-gone"])
    );
    assert_eq!(
        reviews["responseHeadersToRemove"],
        serde_json::json!(["server"])
    );
    assert_eq!(reviews["route"]["hostRewriteLiteral"], "reviews.example");
    let clusters = &reviews["route"]["weightedClusters"]["clusters"];
    assert_eq!(
        clusters.as_array().map(Vec::len),
        Some(2),
        "weight 0 left out"
    );
    assert_eq!(
        clusters[0]["responseHeadersToAdd"][0]["header"]["key"],
        "x-version"
    );
    assert_eq!(clusters[1]["hostRewriteLiteral"], "v2.example");
    let ratings = route_of("ratings");
    let keys: Vec<&str> = ratings["requestHeadersToAdd"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o["header"]["key"].as_str())
        .collect();
    assert_eq!(keys, ["x-route", "x-destination"]);
}

/// `mirror`/`mirrors` become the route's mirror policies as istiod writes
/// them: shares in millionths (hundredths for `mirrorPercent`), 100 % when
/// none is given, none at 0, no `-shadow` suffix by default.
#[test]
fn mirrors_become_request_mirror_policies() {
    let dir = oxmesh_testkit::TempDir::new("golden-mirror");
    dir.write(
        "vs.yaml",
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v1}
    mirror: {host: reviews, subset: v2}
    mirrorPercentage: {value: 12.5}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings, namespace: default}
spec:
  hosts: [ratings]
  http:
  - route:
    - destination: {host: ratings}
    mirrors:
    - destination: {host: ratings, subset: v2}
    - destination: {host: ratings, subset: v1}
      percentage: {value: 0}
    - destination: {host: not-in-the-registry.example.com, port: {number: 80}}
      percentage: {value: 50}
"#,
    );
    let ctx = context(&[
        dir.path("vs.yaml"),
        conformance("bookinfo/networking/destination-rule-all.yaml"),
    ]);
    let proxy = sidecar("productpage-v1-5d8c7b9f4-x1", "productpage", "v1");
    let routes = render(&ctx, &proxy, types::ROUTE);
    let mirrors_of =
        |host: &str| first_route(&routes, host)["route"]["requestMirrorPolicies"].clone();
    let reviews = mirrors_of("reviews");
    assert_eq!(
        reviews[0]["cluster"],
        "outbound|9080|v2|reviews.default.svc.cluster.local"
    );
    assert_eq!(
        reviews[0]["runtimeFraction"]["defaultValue"]["numerator"],
        125000
    );
    assert_eq!(
        reviews[0]["runtimeFraction"]["defaultValue"]["denominator"],
        "MILLION"
    );
    assert_eq!(reviews[0]["disableShadowHostSuffixAppend"], true);
    let ratings = mirrors_of("ratings");
    let clusters: Vec<&str> = ratings
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["cluster"].as_str())
        .collect();
    assert_eq!(
        clusters,
        [
            "outbound|9080|v2|ratings.default.svc.cluster.local",
            "outbound|80||not-in-the-registry.example.com"
        ],
        "the 0 % mirror is left out"
    );
    assert_eq!(
        ratings[0]["runtimeFraction"]["defaultValue"]["numerator"],
        100
    );
}

/// `rewrite.uriRegexRewrite` becomes the route's `regex_rewrite`.
#[test]
fn uri_regex_rewrites_become_regex_rewrites() {
    let dir = oxmesh_testkit::TempDir::new("golden-regex-rewrite");
    dir.write(
        "vs.yaml",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: ratings, namespace: default}\nspec:\n  hosts: [ratings]\n  http:\n  - rewrite: {uriRegexRewrite: {match: '^/service/([^/]+)(/.*)$', rewrite: '\\2/instance/\\1'}}\n    route:\n    - destination: {host: ratings}\n",
    );
    let ctx = context(&[dir.path("vs.yaml")]);
    let proxy = sidecar("productpage-v1-5d8c7b9f4-x1", "productpage", "v1");
    let routes = render(&ctx, &proxy, types::ROUTE);
    let rewrite = first_route(&routes, "ratings")["route"]["regexRewrite"].clone();
    assert_eq!(rewrite["pattern"]["regex"], "^/service/([^/]+)(/.*)$");
    assert_eq!(rewrite["substitution"], "\\2/instance/\\1");
}

/// Auto mTLS honours the destination's PeerAuthentication: endpoints of a
/// workload whose policy says DISABLE get plaintext (no `tlsMode: istio`).
#[test]
fn auto_mtls_skips_workloads_that_disable_it() {
    let dir = oxmesh_testkit::TempDir::new("golden-pa-disable");
    dir.write(
        "pa.yaml",
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: ratings, namespace: default}\nspec:\n  selector: {matchLabels: {app: ratings}}\n  mtls: {mode: DISABLE}\n",
    );
    let ctx = context(&[dir.path("pa.yaml")]);
    let proxy = sidecar("productpage-v1-5d8c7b9f4-x1", "productpage", "v1");
    let endpoints: serde_json::Value = rendered(&ctx, &proxy, types::ENDPOINT);
    let of = |cluster: &str| {
        endpoints
            .as_array()
            .and_then(|a| a.iter().find(|e| e["clusterName"] == cluster))
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    let ratings = of("outbound|9080||ratings.default.svc.cluster.local");
    let reviews = of("outbound|9080||reviews.default.svc.cluster.local");
    assert!(
        !ratings.is_empty() && !ratings.contains("tlsMode"),
        "{ratings}"
    );
    assert!(reviews.contains("tlsMode"), "{reviews}");
}

/// A sidecar that says `INTERCEPTION_MODE: TPROXY` gets a transparent inbound
/// listener with original_src (mark 1337), and inbound clusters that no longer
/// connect from 127.0.0.6; other sidecars are unchanged.
#[test]
fn tproxy_keeps_the_client_address_inbound() {
    let ctx = context(&[]);
    let mut node = node("ratings-v1-5d8c7b9f4-x1", "ratings", "v1", None);
    if let Some(metadata) = node.metadata.as_mut() {
        metadata.fields.insert(
            "INTERCEPTION_MODE".to_owned(),
            Value {
                kind: Some(Kind::StringValue("TPROXY".to_owned())),
            },
        );
    }
    let tproxy = Proxy::from_node(&node).expect("valid node");
    let redirect = sidecar("ratings-v1-5d8c7b9f4-x1", "ratings", "v1");
    let inbound = |proxy: &Proxy| {
        let listeners: serde_json::Value =
            serde_json::from_str(&render(&ctx, proxy, types::LISTENER)).expect("json");
        listeners
            .as_array()
            .and_then(|a| a.iter().find(|l| l["name"] == "virtualInbound"))
            .cloned()
            .unwrap_or_default()
    };
    let transparent = inbound(&tproxy);
    assert_eq!(transparent["transparent"], true, "{transparent}");
    let original_src = transparent["listenerFilters"]
        .as_array()
        .and_then(|f| {
            f.iter()
                .find(|f| f["name"] == "envoy.filters.listener.original_src")
        })
        .cloned()
        .unwrap_or_default();
    assert_eq!(original_src["typedConfig"]["mark"], 1337, "{transparent}");
    let plain = inbound(&redirect);
    assert!(plain.get("transparent").is_none(), "{plain}");
    assert!(!plain.to_string().contains("original_src"), "{plain}");

    let bind_of = |proxy: &Proxy, name: &str| {
        let clusters: serde_json::Value =
            serde_json::from_str(&render(&ctx, proxy, types::CLUSTER)).expect("json");
        clusters
            .as_array()
            .and_then(|a| a.iter().find(|c| c["name"] == name))
            .map(|c| c["upstreamBindConfig"].clone())
            .expect("cluster exists")
    };
    for cluster in ["inbound|9080||", "InboundPassthroughCluster"] {
        assert!(bind_of(&tproxy, cluster).is_null(), "{cluster}");
        assert_eq!(
            bind_of(&redirect, cluster)["sourceAddress"]["address"],
            "127.0.0.6",
            "{cluster}"
        );
    }
}

/// A gateway node in `namespace`, as 15012 knows it (`proven`) or not.
fn gateway(namespace: &str, proven: bool) -> Proxy {
    let node = Node {
        id: format!(
            "router~198.18.0.5~istio-ingressgateway-1.{namespace}~{namespace}.svc.cluster.local"
        ),
        metadata: Some(Struct {
            fields: [(
                "NAMESPACE".to_owned(),
                Value {
                    kind: Some(Kind::StringValue(namespace.to_owned())),
                },
            )]
            .into_iter()
            .collect(),
        }),
        ..Default::default()
    };
    let mut proxy = Proxy::from_node(&node).expect("valid node");
    proxy.proven = proven;
    proxy
}

/// A Secret's key goes only to a gateway that proved it runs in the Secret's
/// namespace; a client CA comes from a `<name>-cacert` Secret, else from the
/// Secret's own `ca.crt` (istiod's order).
#[test]
fn secrets_go_only_to_proven_gateways_of_their_namespace() {
    let dir = oxmesh_testkit::TempDir::new("golden-secrets");
    dir.write(
        "secrets.yaml",
        r#"
apiVersion: v1
kind: Secret
metadata: {name: edge-cert, namespace: istio-system}
type: kubernetes.io/tls
stringData: {tls.crt: CERT, tls.key: KEY}
---
apiVersion: v1
kind: Secret
metadata: {name: edge-cert-cacert, namespace: istio-system}
stringData: {cacert: SEPARATE-CA}
---
apiVersion: v1
kind: Secret
metadata: {name: both, namespace: istio-system}
stringData: {cert: CERT, key: KEY, cacert: OWN-CA}
---
apiVersion: v1
kind: Secret
metadata: {name: both-cacert, namespace: istio-system}
stringData: {ca.crt: SEPARATE-CA}
"#,
    );
    let ctx = context(&[dir.path("secrets.yaml")]);
    let names = |proxy: &Proxy| -> Vec<String> {
        generate::resources(&ctx, proxy, types::SECRET)
            .iter()
            .map(|r| r.name.clone())
            .collect()
    };
    assert_eq!(
        names(&gateway("istio-system", true)),
        [
            "ROOTCA",
            "kubernetes://both",
            "kubernetes://both-cacert",
            "kubernetes://edge-cert",
            "kubernetes://edge-cert-cacert",
        ]
    );
    let ca_of = |name: &str| -> Vec<u8> {
        use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
        use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{Secret, secret};
        use prost::Message;
        let resources = generate::resources(&ctx, &gateway("istio-system", true), types::SECRET);
        let any = &resources
            .iter()
            .find(|r| r.name == name)
            .expect("served")
            .resource;
        match Secret::decode(any.value.as_slice()).expect("secret").r#type {
            Some(secret::Type::ValidationContext(v)) => {
                match v.trusted_ca.and_then(|d| d.specifier) {
                    Some(Specifier::InlineBytes(b)) => b,
                    other => panic!("{other:?}"),
                }
            }
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(
        ca_of("kubernetes://both-cacert"),
        b"SEPARATE-CA",
        "the -cacert Secret first"
    );
    assert_eq!(ca_of("kubernetes://edge-cert-cacert"), b"SEPARATE-CA");
    for (who, proxy) in [
        ("an unproven gateway", gateway("istio-system", false)),
        ("a gateway of another namespace", gateway("default", true)),
        (
            "a sidecar",
            sidecar("productpage-v1-5d8c7b9f4-x1", "productpage", "v1"),
        ),
    ] {
        assert_eq!(names(&proxy), ["ROOTCA"], "{who}");
    }
}

/// Istio's local rate-limit task, per route: the filter inserted first in the
/// productpage sidecar's inbound connection managers (TypedStruct kept, as
/// istiod sends it) and the bucket merged into the inbound routes; other
/// workloads and outbound listeners untouched.
#[test]
fn envoy_filters_insert_local_rate_limits_and_merge_routes() {
    let ctx = context(&[example("ratelimit-local.yaml")]);
    assert!(
        ctx.envoy_filters_unapplied().is_empty(),
        "{:?}",
        ctx.envoy_filters_unapplied()
    );
    let productpage = sidecar("productpage-v1-5d8c7b9f4-x1", "productpage", "v1");
    let listeners: serde_json::Value = rendered(&ctx, &productpage, types::LISTENER);
    let managers = |direction: &str| -> Vec<serde_json::Value> {
        listeners
            .as_array()
            .into_iter()
            .flatten()
            .filter(|l| l["trafficDirection"] == direction)
            .flat_map(|l| l["filterChains"].as_array().cloned().unwrap_or_default())
            .flat_map(|c| c["filters"].as_array().cloned().unwrap_or_default())
            .filter(|f| f["name"] == "envoy.filters.network.http_connection_manager")
            .map(|f| f["typedConfig"].clone())
            .collect()
    };
    let inbound = managers("INBOUND");
    assert!(!inbound.is_empty());
    for hcm in &inbound {
        let first = &hcm["httpFilters"][0];
        assert_eq!(first["name"], "envoy.filters.http.local_ratelimit");
        assert_eq!(
            first["typedConfig"]["@type"],
            "type.googleapis.com/udpa.type.v1.TypedStruct"
        );
        let host = &hcm["routeConfig"]["virtualHosts"][0];
        assert_eq!(host["name"], "inbound|http|9080");
        let bucket = &host["routes"][0]["typedPerFilterConfig"]["envoy.filters.http.local_ratelimit"]
            ["value"]["token_bucket"];
        assert_eq!(bucket["max_tokens"], 4.0, "{host}");
    }
    for hcm in managers("OUTBOUND") {
        assert!(
            !hcm.to_string().contains("local_ratelimit"),
            "outbound untouched: {hcm}"
        );
    }
    let reviews = sidecar("reviews-v1-7f99cc4496-x1", "reviews", "v1");
    assert!(!render(&ctx, &reviews, types::LISTENER).contains("local_ratelimit"));
}

/// Istio's global rate-limit task at the ingress gateway: the rate-limit
/// filter before the router, `rate_limits` merged into every virtual host,
/// and the rate limit service's cluster added.
#[test]
fn envoy_filters_configure_global_rate_limits_at_gateways() {
    let dir = oxmesh_testkit::TempDir::new("golden-global-ratelimit");
    dir.write("cluster.yaml", RATE_LIMIT_CLUSTER);
    let ctx = context(&[
        conformance("bookinfo/networking/bookinfo-gateway.yaml"),
        golden_dir().join("ingress-gateway.yaml"),
        example("ratelimit-global.yaml"),
        dir.path("cluster.yaml"),
    ]);
    assert!(
        ctx.envoy_filters_unapplied().is_empty(),
        "{:?}",
        ctx.envoy_filters_unapplied()
    );
    let gateway = ingress_gateway_proxy();
    let listeners: serde_json::Value = rendered(&ctx, &gateway, types::LISTENER);
    let filters: Vec<String> =
        listeners[0]["filterChains"][0]["filters"][0]["typedConfig"]["httpFilters"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|f| f["name"].as_str().unwrap_or_default().to_owned())
            .collect();
    let n = filters.len();
    assert!(n >= 2, "{filters:?}");
    assert_eq!(
        filters[n - 2..],
        ["envoy.filters.http.ratelimit", "envoy.filters.http.router"]
    );
    let routes: serde_json::Value = rendered(&ctx, &gateway, types::ROUTE);
    for host in routes
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|rc| rc["virtualHosts"].as_array().cloned().unwrap_or_default())
    {
        assert_eq!(
            host["rateLimits"][0]["actions"][0]["requestHeaders"]["descriptorKey"], "PATH",
            "{host}"
        );
    }
    let clusters = render(&ctx, &gateway, types::CLUSTER);
    assert!(clusters.contains("\"name\": \"rate_limit_cluster\""));
    // The service the filter names by its outbound cluster is one the
    // gateway has.
    assert!(clusters.contains("\"name\": \"outbound|8081||ratelimit.default.svc.cluster.local\""));
    // Sidecars are not selected.
    let productpage = sidecar("productpage-v1-5d8c7b9f4-x1", "productpage", "v1");
    assert!(!render(&ctx, &productpage, types::CLUSTER).contains("rate_limit_cluster"));
}

/// An EnvoyFilter with one patch oxmesh cannot apply is skipped whole and
/// named with the patch; one inserting a filter oxmesh's proxy does not run
/// likewise.
#[test]
fn envoy_filters_oxmesh_cannot_apply_are_skipped_whole_and_reported() {
    let dir = oxmesh_testkit::TempDir::new("golden-envoy-filter-skipped");
    let local = std::fs::read_to_string(example("ratelimit-local.yaml")).expect("example");
    let listener_merge = local.replace(
        "  configPatches:\n",
        "  configPatches:\n  - applyTo: LISTENER\n    patch: {operation: MERGE, value: {per_connection_buffer_limit_bytes: 1024}}\n",
    );
    dir.write("ef.yaml", &listener_merge);
    dir.write(
        "lua.yaml",
        "apiVersion: networking.istio.io/v1alpha3\nkind: EnvoyFilter\nmetadata: {name: lua, namespace: default}\nspec:\n  configPatches:\n  - applyTo: HTTP_FILTER\n    patch:\n      operation: INSERT_FIRST\n      value: {name: envoy.filters.http.lua, typed_config: {'@type': type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC}}\n  - applyTo: HTTP_FILTER\n    patch:\n      operation: INSERT_FIRST\n      value: {name: x, typed_config: {'@type': type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}\n  - applyTo: HTTP_FILTER\n    patch:\n      operation: INSERT_FIRST\n      value: {name: envoy.filters.http.lua, typed_config: {'@type': type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua}}\n",
    );
    let ctx = context(&[dir.path("ef.yaml"), dir.path("lua.yaml")]);
    let unapplied = ctx.envoy_filters_unapplied();
    assert_eq!(unapplied.len(), 2, "{unapplied:?}");
    assert!(
        unapplied[0].starts_with("EnvoyFilter istio-system/filter-local-ratelimit-svc: configPatches[0]: applyTo LISTENER with operation MERGE"),
        "{unapplied:?}"
    );
    assert!(
        unapplied[1].starts_with("EnvoyFilter default/lua: configPatches[2]: patch.value:")
            && unapplied[1].contains("envoy.extensions.filters.http.lua.v3.Lua"),
        "{unapplied:?}"
    );
    let productpage = sidecar("productpage-v1-5d8c7b9f4-x1", "productpage", "v1");
    let listeners = render(&ctx, &productpage, types::LISTENER);
    assert!(!listeners.contains("local_ratelimit") && !listeners.contains("1024"));
}

/// The rate limit service's cluster as Istio's docs also write it: added by
/// a CLUSTER patch, addressed by DNS.
const RATE_LIMIT_CLUSTER: &str = r#"apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: ratelimit-cluster, namespace: istio-system}
spec:
  workloadSelector:
    labels: {istio: ingressgateway}
  configPatches:
  - applyTo: CLUSTER
    match:
      cluster: {service: ratelimit.default.svc.cluster.local}
    patch:
      operation: ADD
      value:
        name: rate_limit_cluster
        type: STRICT_DNS
        connect_timeout: 10s
        lb_policy: ROUND_ROBIN
        http2_protocol_options: {}
        load_assignment:
          cluster_name: rate_limit_cluster
          endpoints:
          - lb_endpoints:
            - endpoint:
                address:
                  socket_address: {address: ratelimit.default.svc.cluster.local, port_value: 8081}
"#;

/// One of the bookinfo example's Istio tasks.
fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/bookinfo/networking")
        .join(name)
}

/// How EnvoyFilters combine, as istiod combines them: root namespace before
/// the proxy's namespace, then by priority; INSERT_FIRST on top whatever its
/// match; INSERT_AFTER next to its sub-filter, nowhere without it; contexts
/// and a virtual listener's port (its chains' destination port) respected.
#[test]
fn envoy_filters_apply_in_istiods_order_and_places() {
    let cors = |name: &str| {
        format!(
            "{{name: {name}, typed_config: {{'@type': type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors}}}}"
        )
    };
    let filter = |namespace: &str, name: &str, priority: i32, patches: &[String]| {
        format!(
            "apiVersion: networking.istio.io/v1alpha3\nkind: EnvoyFilter\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n  priority: {priority}\n  configPatches:\n{}",
            patches.concat()
        )
    };
    let patch = |context: &str, listener: &str, op: &str, value: &str| {
        format!(
            "  - applyTo: HTTP_FILTER\n    match: {{context: {context}, listener: {listener}}}\n    patch: {{operation: {op}, value: {value}}}\n"
        )
    };
    let hcm = "{filterChain: {filter: {name: envoy.filters.network.http_connection_manager}}}";
    let after_fault = "{filterChain: {filter: {name: envoy.filters.network.http_connection_manager, subFilter: {name: envoy.filters.http.fault}}}}";
    let before_missing = "{filterChain: {filter: {name: envoy.filters.network.http_connection_manager, subFilter: {name: no.such.filter}}}}";
    let dir = oxmesh_testkit::TempDir::new("golden-envoy-filter-order");
    dir.write(
        "filters.yaml",
        &[
            filter(
                "istio-system",
                "root",
                0,
                &[patch("SIDECAR_INBOUND", hcm, "INSERT_FIRST", &cors("a"))],
            ),
            filter(
                "default",
                "early",
                -1,
                &[patch(
                    "SIDECAR_INBOUND",
                    before_missing,
                    "INSERT_FIRST",
                    &cors("b"),
                )],
            ),
            filter(
                "default",
                "late",
                0,
                &[
                    patch("SIDECAR_INBOUND", hcm, "INSERT_FIRST", &cors("c")),
                    patch(
                        "SIDECAR_OUTBOUND",
                        after_fault,
                        "INSERT_AFTER",
                        &cors("after-fault"),
                    ),
                    patch(
                        "SIDECAR_OUTBOUND",
                        before_missing,
                        "INSERT_BEFORE",
                        &cors("nowhere"),
                    ),
                    patch(
                        "SIDECAR_INBOUND",
                        "{portNumber: 9999}",
                        "INSERT_FIRST",
                        &cors("other-port"),
                    ),
                ],
            ),
        ]
        .join("---\n"),
    );
    let ctx = context(&[dir.path("filters.yaml")]);
    assert!(
        ctx.envoy_filters_unapplied().is_empty(),
        "{:?}",
        ctx.envoy_filters_unapplied()
    );
    let productpage = sidecar("productpage-v1-5d8c7b9f4-x1", "productpage", "v1");
    let listeners: serde_json::Value = rendered(&ctx, &productpage, types::LISTENER);
    let chains = |direction: &str| -> Vec<Vec<String>> {
        listeners
            .as_array()
            .into_iter()
            .flatten()
            .filter(|l| l["trafficDirection"] == direction)
            .flat_map(|l| l["filterChains"].as_array().cloned().unwrap_or_default())
            .flat_map(|c| c["filters"].as_array().cloned().unwrap_or_default())
            .filter_map(|f| f["typedConfig"]["httpFilters"].as_array().cloned())
            .map(|filters| {
                filters
                    .iter()
                    .map(|f| f["name"].as_str().unwrap_or_default().to_owned())
                    .collect()
            })
            .collect()
    };
    let inbound = chains("INBOUND");
    assert!(!inbound.is_empty());
    for names in &inbound {
        // Applied early (-1), root (0, root first), late (0): each on top.
        assert_eq!(names[..3], ["c", "a", "b"], "{names:?}");
        assert!(!names.contains(&"other-port".to_owned()), "{names:?}");
    }
    let outbound = chains("OUTBOUND");
    assert!(!outbound.is_empty());
    for names in &outbound {
        let fault = names
            .iter()
            .position(|n| n == "envoy.filters.http.fault")
            .expect("fault");
        assert_eq!(names[fault + 1], "after-fault", "{names:?}");
        assert!(!names.contains(&"nowhere".to_owned()) && !names.contains(&"c".to_owned()));
    }
}

/// Local-origin outlier detection as istiod writes it: split on, the limit
/// and its enforcement only when given, no local-origin success rate; and
/// `minHealthPercent` as the panic threshold.
#[test]
fn local_origin_outlier_detection_as_istiod_writes_it() {
    let dir = oxmesh_testkit::TempDir::new("golden-local-origin");
    dir.write(
        "dr.yaml",
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews, namespace: default}\nspec:\n  host: reviews\n  trafficPolicy:\n    outlierDetection: {consecutive5xxErrors: 3, splitExternalLocalOriginErrors: true, consecutiveLocalOriginFailures: 2, minHealthPercent: 50}\n",
    );
    let ctx = context(&[dir.path("dr.yaml")]);
    let proxy = sidecar("productpage-v1-5d8c7b9f4-x1", "productpage", "v1");
    let clusters: serde_json::Value = rendered(&ctx, &proxy, types::CLUSTER);
    let reviews = cluster_named(
        &clusters,
        "outbound|9080||reviews.default.svc.cluster.local",
    );
    let od = &reviews["outlierDetection"];
    assert_eq!(od["splitExternalLocalOriginErrors"], true, "{od}");
    assert_eq!(od["consecutiveLocalOriginFailure"], 2, "{od}");
    assert_eq!(od["enforcingConsecutiveLocalOriginFailure"], 100, "{od}");
    assert_eq!(od["enforcingLocalOriginSuccessRate"], 0, "{od}");
    assert_eq!(
        reviews["commonLbConfig"]["healthyPanicThreshold"]["value"],
        50.0
    );
}

/// The mesh's `tcpKeepalive` on every outbound cluster, a DestinationRule's
/// fields over it, as istiod sets them one by one.
#[test]
fn mesh_tcp_keepalive_with_destination_rule_fields_over_it() {
    let dir = oxmesh_testkit::TempDir::new("golden-mesh-keepalive");
    dir.write(
        "mesh.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: istio, namespace: istio-system}\ndata:\n  mesh: |\n    tcpKeepalive: {time: 600s, probes: 3}\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews, namespace: default}\nspec:\n  host: reviews\n  trafficPolicy:\n    connectionPool:\n      tcp: {tcpKeepalive: {interval: 30s, probes: 5}}\n",
    );
    let ctx = context(&[dir.path("mesh.yaml")]);
    let proxy = sidecar("productpage-v1-5d8c7b9f4-x1", "productpage", "v1");
    let clusters: serde_json::Value = rendered(&ctx, &proxy, types::CLUSTER);
    let keepalive = |name: &str| {
        cluster_named(&clusters, name)["upstreamConnectionOptions"]["tcpKeepalive"].clone()
    };
    let reviews = keepalive("outbound|9080||reviews.default.svc.cluster.local");
    assert_eq!(reviews["keepaliveTime"], 600, "{reviews}");
    assert_eq!(reviews["keepaliveInterval"], 30, "{reviews}");
    assert_eq!(reviews["keepaliveProbes"], 5, "{reviews}");
    let details = keepalive("outbound|9080||details.default.svc.cluster.local");
    assert_eq!(details["keepaliveTime"], 600, "{details}");
    assert_eq!(details["keepaliveProbes"], 3, "{details}");
    assert!(details.get("keepaliveInterval").is_none(), "{details}");
}

/// A CLUSTER ADD for a sidecar's inbound side (an inbound rate limit's
/// service) is added to its clusters, as istiod adds it; a gateway's is not.
#[test]
fn clusters_added_for_a_sidecars_inbound_side() {
    let dir = oxmesh_testkit::TempDir::new("golden-inbound-cluster-add");
    dir.write(
        "ef.yaml",
        &RATE_LIMIT_CLUSTER
            .replace(
                "labels: {istio: ingressgateway}",
                "labels: {app: productpage}",
            )
            .replace(
                "cluster: {service: ratelimit.default.svc.cluster.local}",
                "context: SIDECAR_INBOUND",
            ),
    );
    let ctx = context(&[dir.path("ef.yaml")]);
    assert!(
        ctx.envoy_filters_unapplied().is_empty(),
        "{:?}",
        ctx.envoy_filters_unapplied()
    );
    let productpage = sidecar("productpage-v1-5d8c7b9f4-x1", "productpage", "v1");
    let clusters = rendered(&ctx, &productpage, types::CLUSTER);
    assert_eq!(
        cluster_named(&clusters, "rate_limit_cluster")["type"],
        "STRICT_DNS"
    );
}

/// `helloworld` with one pod in each of four localities, for locality
/// load balancing: a pod manifest per `region.zone.subzone`.
fn localities_fixture(dir: &oxmesh_testkit::TempDir, rule: &str) -> PushContext {
    let mut text = String::from(
        "apiVersion: v1\nkind: Service\nmetadata: {name: helloworld, namespace: default}\nspec:\n  selector: {app: helloworld}\n  ports: [{name: http, port: 5000}]\n",
    );
    for (i, locality) in ["r1.z1.s1", "r1.z2.s1", "r2.z3.s1", "r3.z4.s1"]
        .iter()
        .enumerate()
    {
        text.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: helloworld-{i}\n  namespace: default\n  labels: {{app: helloworld, istio-locality: {locality}}}\nspec:\n  containers: [{{name: hello, image: hello}}]\nstatus:\n  phase: Running\n  podIP: 198.18.20.{}\n  conditions: [{{type: Ready, status: \"True\"}}]\n",
            i + 1
        ));
    }
    text.push_str(rule);
    dir.write("helloworld.yaml", &text);
    context(&[dir.path("helloworld.yaml")])
}

/// The (priority, locality, weight, endpoint count) of each locality of
/// helloworld's EDS for `proxy`, and whether its cluster weighs localities.
fn helloworld_localities(
    ctx: &PushContext,
    proxy: &Proxy,
) -> (Vec<(u64, String, u64, usize)>, bool) {
    let name = "outbound|5000||helloworld.default.svc.cluster.local";
    let assignments = rendered(ctx, proxy, types::ENDPOINT);
    let cla = assignments
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["clusterName"] == name)
        .expect("helloworld's endpoints");
    let groups = cla["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|g| {
            let l = &g["locality"];
            (
                g["priority"].as_u64().unwrap_or(0),
                format!(
                    "{}/{}",
                    l["region"].as_str().unwrap_or(""),
                    l["zone"].as_str().unwrap_or("")
                ),
                g["loadBalancingWeight"].as_u64().unwrap_or(0),
                g["lbEndpoints"].as_array().map_or(0, Vec::len),
            )
        })
        .collect();
    let clusters = rendered(ctx, proxy, types::CLUSTER);
    let weighted = cluster_named(&clusters, name)["commonLbConfig"]
        .get("localityWeightedLbConfig")
        .is_some();
    (groups, weighted)
}

/// Locality load balancing as istiod writes it, per proxy locality: by
/// default (with outlier detection) priorities by distance; a `failover`
/// rule sends regions it does not name last and weighs localities in CDS;
/// without outlier detection, no priorities; `distribute` sets weights and
/// empties the localities it does not name.
#[test]
fn locality_load_balancing_ranks_and_weighs_endpoints_per_proxy() {
    let dir = oxmesh_testkit::TempDir::new("golden-locality");
    let rule = |lb: &str, outlier: bool| {
        format!(
            "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: helloworld, namespace: default}}\nspec:\n  host: helloworld\n  trafficPolicy:\n    loadBalancer: {{simple: ROUND_ROBIN{lb}}}\n{}",
            if outlier {
                "    outlierDetection: {consecutive5xxErrors: 1}\n"
            } else {
                ""
            }
        )
    };
    let mut proxy = sidecar("productpage-v1-5d8c7b9f4-x1", "productpage", "v1");
    proxy.locality = oxmesh_control::locality::Locality::parse("r1/z1/s1");
    let row = |p: u64, l: &str, w: u64, n: usize| (p, l.to_owned(), w, n);

    let ctx = localities_fixture(&dir, &rule("", true));
    let (groups, weighted) = helloworld_localities(&ctx, &proxy);
    // Distances 0 (same subzone), 2 (same region), 3 (elsewhere),
    // renumbered without gaps as istiod does.
    assert_eq!(
        groups,
        [
            row(0, "r1/z1", 1, 1),
            row(1, "r1/z2", 1, 1),
            row(2, "r2/z3", 1, 1),
            row(2, "r3/z4", 1, 1)
        ]
    );
    assert!(!weighted, "default failover leaves localities unweighted");

    let failover = ", localityLbSetting: {failover: [{from: r1, to: r2}]}";
    let ctx = localities_fixture(&dir, &rule(failover, true));
    let (groups, weighted) = helloworld_localities(&ctx, &proxy);
    let priorities: Vec<u64> = groups.iter().map(|g| g.0).collect();
    assert_eq!(priorities, [0, 1, 2, 3], "{groups:?}");
    assert!(weighted);
    // A proxy elsewhere ranks from where it is.
    let mut far = proxy.clone();
    far.locality = oxmesh_control::locality::Locality::parse("r3/z4/s1");
    let (groups, _) = helloworld_localities(&ctx, &far);
    let priorities: Vec<u64> = groups.iter().map(|g| g.0).collect();
    assert_eq!(priorities, [1, 1, 1, 0], "{groups:?}");

    let ctx = localities_fixture(&dir, &rule(failover, false));
    let (groups, weighted) = helloworld_localities(&ctx, &proxy);
    assert!(groups.iter().all(|g| g.0 == 0) && !weighted, "{groups:?}");

    let distribute =
        ", localityLbSetting: {distribute: [{from: r1/z1/*, to: {r1/z1/*: 70, r2/*: 30}}]}";
    let ctx = localities_fixture(&dir, &rule(distribute, false));
    let (groups, weighted) = helloworld_localities(&ctx, &proxy);
    assert_eq!(
        groups,
        [
            row(0, "r1/z1", 70, 1),
            row(0, "r1/z2", 1, 0),
            row(0, "r2/z3", 30, 1),
            row(0, "r3/z4", 1, 0)
        ]
    );
    assert!(weighted);
}

/// An outbound chain as the L4 tests read it: name, server names, prefix
/// ranges, clusters.
type ChainSummary = (String, Vec<String>, Vec<String>, String);

/// The outbound chains of `port` in the sidecar's virtualOutbound listener,
/// and the listener filters.
fn outbound_chains(ctx: &PushContext, port: u64) -> (Vec<ChainSummary>, Vec<String>) {
    let proxy = sidecar("productpage-v1-5d8c7b9f4-x1", "productpage", "v1");
    let listeners = rendered(ctx, &proxy, types::LISTENER);
    let outbound = listeners
        .as_array()
        .into_iter()
        .flatten()
        .find(|l| l["name"] == "virtualOutbound")
        .expect("virtualOutbound")
        .clone();
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .map(|s| s.as_str().map_or_else(|| s.to_string(), str::to_owned))
            .collect()
    };
    let chains = outbound["filterChains"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["filterChainMatch"]["destinationPort"] == port)
        .map(|c| {
            let m = &c["filterChainMatch"];
            let ranges = m["prefixRanges"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| {
                    format!(
                        "{}/{}",
                        r["addressPrefix"].as_str().unwrap_or(""),
                        r["prefixLen"]
                    )
                })
                .collect();
            let tcp = c["filters"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|f| f["name"] == "envoy.filters.network.tcp_proxy")
                .map_or(&serde_json::Value::Null, |f| &f["typedConfig"]);
            let clusters = match tcp["cluster"].as_str() {
                Some(one) => one.to_owned(),
                None => tcp["weightedClusters"]["clusters"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|w| format!("{}={}", w["name"].as_str().unwrap_or(""), w["weight"]))
                    .collect::<Vec<_>>()
                    .join(","),
            };
            (
                c["name"].as_str().unwrap_or("").to_owned(),
                strings(&m["serverNames"]),
                ranges,
                clusters,
            )
        })
        .collect();
    let filters = outbound["listenerFilters"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|f| f["name"].as_str().unwrap_or("").to_owned())
        .collect();
    (chains, filters)
}

/// TCP and TLS routing as istiod builds the sidecar's chains: `tls` rules
/// on a TLS port become chains on the client's SNI (with the TLS inspector
/// on for that port only); TLS services without an address are told apart
/// by their host names as SNI (two ServiceEntries on 443 no longer share one
/// chain); `tcp` matches on destination subnets get chains of their own
/// ahead of the rule that takes the rest.
#[test]
fn tls_and_tcp_rules_become_sni_and_subnet_chains() {
    let dir = oxmesh_testkit::TempDir::new("golden-l4");
    dir.write(
        "l4.yaml",
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: wikipedia, namespace: default}
spec:
  hosts: ["*.wikipedia.org"]
  ports: [{number: 443, name: tls, protocol: TLS}]
  resolution: NONE
  location: MESH_EXTERNAL
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: cnn, namespace: default}
spec:
  hosts: [edition.cnn.com]
  ports: [{number: 443, name: tls, protocol: TLS}]
  resolution: DNS
  location: MESH_EXTERNAL
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: tls-front, namespace: default}
spec:
  hosts: [front.tls.example]
  addresses: [198.19.7.7]
  ports: [{number: 8443, name: tls, protocol: TLS}]
  resolution: STATIC
  endpoints: [{address: 198.18.30.1}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: tls-front, namespace: default}
spec:
  hosts: [front.tls.example, "*.front.example"]
  tls:
  - match: [{sniHosts: [a.front.example]}]
    route: [{destination: {host: edition.cnn.com, port: {number: 443}}}]
  - match: [{sniHosts: [b.front.example], sourceLabels: {app: reviews}}]
    route: [{destination: {host: edition.cnn.com, port: {number: 443}}}]
  - match: [{sniHosts: [a.front.example, c.front.example]}]
    route: [{destination: {host: "*.wikipedia.org", port: {number: 443}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db, namespace: default}
spec:
  hosts: [db.example]
  addresses: [198.19.8.0/24]
  ports: [{number: 5432, name: tcp, protocol: TCP}]
  resolution: STATIC
  endpoints: [{address: 198.18.31.1}, {address: 198.18.31.2, labels: {role: replica}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: db, namespace: default}
spec:
  host: db.example
  trafficPolicy: {connectionPool: {tcp: {idleTimeout: 30s}}}
  subsets: [{name: replica, labels: {role: replica}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: db, namespace: default}
spec:
  hosts: [db.example]
  tcp:
  - match: [{destinationSubnets: [198.19.8.128/25]}]
    route: [{destination: {host: db.example, subset: replica}}]
  - route: [{destination: {host: db.example}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: cache, namespace: default}
spec:
  hosts: [cache.example]
  addresses: [198.19.9.9]
  ports: [{number: 6379, name: tcp, protocol: TCP}]
  resolution: STATIC
  endpoints: [{address: 198.18.32.1}, {address: 198.18.32.2, labels: {role: replica}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: cache, namespace: default}
spec:
  host: cache.example
  subsets: [{name: replica, labels: {role: replica}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: cache, namespace: default}
spec:
  hosts: [cache.example]
  tcp:
  - match: [{destinationSubnets: [10.0.0.0/8]}]
    route: [{destination: {host: cache.example, subset: replica}}]
  - match: [{destinationSubnets: ["fe80::1%eth0"]}]
    route: [{destination: {host: cache.example, subset: replica}}]
  - match: [{destinationSubnets: [198.19.9.0/24]}]
    route: [{destination: {host: cache.example, subset: replica}}]
"#,
    );
    let ctx = context(&[dir.path("l4.yaml")]);
    let (chains, filters) = outbound_chains(&ctx, 443);
    // Each TLS service on 443 by its host name: no chain takes the port.
    let mut sni: Vec<(Vec<String>, Vec<String>, String)> = chains
        .iter()
        .map(|c| (c.1.clone(), c.2.clone(), c.3.clone()))
        .collect();
    sni.sort();
    assert_eq!(
        sni,
        [
            (
                vec!["*.wikipedia.org".to_owned()],
                vec![],
                "outbound|443||*.wikipedia.org".to_owned()
            ),
            (
                vec!["edition.cnn.com".to_owned()],
                vec![],
                "outbound|443||edition.cnn.com".to_owned()
            ),
        ]
    );
    // The TLS inspector runs on the SNI ports only.
    let proxy = sidecar("productpage-v1-5d8c7b9f4-x1", "productpage", "v1");
    let listeners = rendered(&ctx, &proxy, types::LISTENER);
    let inspector = listeners
        .as_array()
        .into_iter()
        .flatten()
        .filter(|l| l["name"] == "virtualOutbound")
        .flat_map(|l| l["listenerFilters"].as_array().cloned().unwrap_or_default())
        .find(|f| f["name"] == "envoy.filters.listener.tls_inspector")
        .expect("a TLS inspector");
    let ports: Vec<i64> = inspector["filterDisabled"]["notMatch"]["orMatch"]["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["destinationPortRange"]["start"].as_i64())
        .collect();
    assert_eq!(ports, [443, 8443], "{inspector}");
    assert!(filters.contains(&"envoy.filters.listener.tls_inspector".to_owned()));

    let (chains, _) = outbound_chains(&ctx, 8443);
    // b.front.example's match is for reviews, not productpage; the third
    // rule's a.front.example is the first's already (Envoy would refuse two
    // chains for it), so it keeps only c.front.example.
    assert_eq!(
        chains,
        [
            (
                "198.19.7.7_8443_a.front.example".to_owned(),
                vec!["a.front.example".to_owned()],
                vec!["198.19.7.7/32".to_owned()],
                "outbound|443||edition.cnn.com".to_owned()
            ),
            (
                "198.19.7.7_8443_c.front.example".to_owned(),
                vec!["c.front.example".to_owned()],
                vec!["198.19.7.7/32".to_owned()],
                "outbound|443||*.wikipedia.org".to_owned()
            )
        ]
    );

    // The DestinationRule's tcp.idleTimeout on both chains' tcp_proxy.
    let proxy = sidecar("productpage-v1-5d8c7b9f4-x1", "productpage", "v1");
    let listeners = render(&ctx, &proxy, types::LISTENER);
    assert_eq!(
        listeners.matches("\"idleTimeout\": \"30s\"").count(),
        2,
        "{listeners}"
    );
    // Subnets on a service with a VIP count only where they hold it (istiod
    // binds those chains to the VIP): 10/8 never applies, the unparsable
    // one is left out, the /24 takes the VIP from the service's own chain.
    let (chains, _) = outbound_chains(&ctx, 6379);
    let routes: Vec<(Vec<String>, String)> =
        chains.iter().map(|c| (c.2.clone(), c.3.clone())).collect();
    assert_eq!(
        routes,
        [(
            vec!["198.19.9.9/32".to_owned()],
            "outbound|6379|replica|cache.example".to_owned()
        )]
    );
    let (chains, _) = outbound_chains(&ctx, 5432);
    let routes: Vec<(Vec<String>, String)> =
        chains.iter().map(|c| (c.2.clone(), c.3.clone())).collect();
    assert_eq!(
        routes,
        [
            (
                vec!["198.19.8.128/25".to_owned()],
                "outbound|5432|replica|db.example".to_owned()
            ),
            // The registry keeps no CIDR as a VIP yet: the rest of the
            // port's traffic takes the last chain.
            (vec![], "outbound|5432||db.example".to_owned()),
        ]
    );
}

/// `h2UpgradePolicy` as istiod reads it: the mesh's UPGRADE takes HTTP/1.1
/// service ports upstream as HTTP/2; a DestinationRule's DO_NOT_UPGRADE
/// keeps one on HTTP/1.1.
#[test]
fn h2_upgrade_policy_from_the_mesh_and_destination_rules() {
    let dir = oxmesh_testkit::TempDir::new("golden-h2-upgrade");
    dir.write(
        "h2.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: istio, namespace: istio-system}\ndata:\n  mesh: |\n    h2UpgradePolicy: UPGRADE\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: ratings, namespace: default}\nspec:\n  host: ratings\n  trafficPolicy:\n    connectionPool:\n      http: {h2UpgradePolicy: DO_NOT_UPGRADE}\n",
    );
    let ctx = context(&[dir.path("h2.yaml")]);
    let proxy = sidecar("productpage-v1-5d8c7b9f4-x1", "productpage", "v1");
    let clusters = rendered(&ctx, &proxy, types::CLUSTER);
    let http2 = |name: &str| {
        cluster_named(&clusters, name)["typedExtensionProtocolOptions"]
            ["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]["explicitHttpConfig"]
            .get("http2ProtocolOptions")
            .is_some()
    };
    assert!(http2("outbound|9080||reviews.default.svc.cluster.local"));
    assert!(!http2("outbound|9080||ratings.default.svc.cluster.local"));
}

/// The client's protocol upstream, as istiod writes it: on a sidecar's
/// cluster for a port that declares no protocol, and wherever a
/// DestinationRule says `useClientProtocol`, which wins over the mesh's H2
/// upgrade (validation refuses it with a rule's own).
#[test]
fn client_protocol_upstream_for_undeclared_ports_and_use_client_protocol() {
    let dir = oxmesh_testkit::TempDir::new("golden-client-protocol");
    dir.write(
        "client.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: istio, namespace: istio-system}\ndata:\n  mesh: |\n    h2UpgradePolicy: UPGRADE\n---\napiVersion: v1\nkind: Service\nmetadata: {name: api, namespace: default}\nspec:\n  selector: {app: api}\n  ports: [{name: api, port: 7000}]\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews, namespace: default}\nspec:\n  host: reviews\n  trafficPolicy:\n    connectionPool:\n      http: {useClientProtocol: true}\n",
    );
    let ctx = context(&[dir.path("client.yaml")]);
    let proxy = sidecar("productpage-v1-5d8c7b9f4-x1", "productpage", "v1");
    let clusters = rendered(&ctx, &proxy, types::CLUSTER);
    let upstream = |name: &str| {
        let options = &cluster_named(&clusters, name)["typedExtensionProtocolOptions"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"];
        if options.get("useDownstreamProtocolConfig").is_some() {
            "downstream"
        } else if options["explicitHttpConfig"]
            .get("http2ProtocolOptions")
            .is_some()
        {
            "h2"
        } else {
            "h1"
        }
    };
    assert_eq!(
        upstream("outbound|7000||api.default.svc.cluster.local"),
        "downstream"
    );
    assert_eq!(
        upstream("outbound|9080||reviews.default.svc.cluster.local"),
        "downstream"
    );
    // The mesh's UPGRADE takes the other HTTP ports to HTTP/2, but not one
    // that follows the client (istiod never upgrades those).
    assert_eq!(
        upstream("outbound|9080||details.default.svc.cluster.local"),
        "h2"
    );
}

/// Gateway TCP, TLS and PASSTHROUGH servers as istiod builds them: a TCP
/// server proxies to the first `tcp` rule that takes it; a TLS server
/// terminates, then does the same; a PASSTHROUGH server gets a chain per
/// `tls` match on its SNI names (a later match naming a routed name is
/// skipped whole); a TCP server no rule takes gets no listener; a TLS
/// server after a plaintext one on its port is dropped, as istiod merges.
#[test]
fn gateway_tcp_tls_and_passthrough_servers() {
    let dir = oxmesh_testkit::TempDir::new("golden-gateway-l4");
    dir.write(
        "gateway.yaml",
        r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 31400, name: tcp, protocol: TCP}
    hosts: ["*"]
  - port: {number: 15443, name: tls-pass, protocol: TLS}
    tls: {mode: PASSTHROUGH}
    hosts: ["*.example.com"]
  - port: {number: 9443, name: tls, protocol: TLS}
    tls: {mode: SIMPLE, serverCertificate: /etc/certs/tls.crt, privateKey: /etc/certs/tls.key}
    hosts: [db.example.com]
  - port: {number: 7000, name: lonely, protocol: TCP}
    hosts: ["*"]
  - port: {number: 31400, name: late-tls, protocol: TLS}
    tls: {mode: PASSTHROUGH}
    hosts: [late.example.com]
  - port: {number: 9444, name: tls-mesh, protocol: TLS}
    tls: {mode: ISTIO_MUTUAL}
    hosts: [mesh.example.com]
  - port: {number: 31400, name: tcp-bound, protocol: TCP}
    hosts: ["*"]
    bind: 198.18.0.40
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: tcp, namespace: default}
spec:
  hosts: ["*"]
  gateways: [edge]
  tcp:
  - match: [{port: 31400}]
    route:
    - destination: {host: ratings, port: {number: 9080}}
      weight: 80
    - destination: {host: details, port: {number: 9080}}
      weight: 20
  - match: [{port: 9443}]
    route: [{destination: {host: reviews, port: {number: 9080}}}]
  - match: [{port: 9444}]
    route: [{destination: {host: details, port: {number: 9080}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: pass, namespace: default}
spec:
  hosts: [a.example.com, b.example.com, c.example.com]
  gateways: [edge]
  tls:
  - match: [{port: 15443, sniHosts: [a.example.com]}]
    route: [{destination: {host: details, port: {number: 9080}}}]
  - match: [{port: 15443, sniHosts: [b.example.com]}]
    route: [{destination: {host: ratings, port: {number: 9080}}}]
  - match: [{port: 15443, sniHosts: [a.example.com, c.example.com]}]
    route: [{destination: {host: reviews, port: {number: 9080}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: late, namespace: default}
spec:
  hosts: [late.example.com]
  gateways: [edge]
  tls:
  - match: [{port: 31400, sniHosts: [late.example.com]}]
    route: [{destination: {host: reviews, port: {number: 9080}}}]
"#,
    );
    let ctx = context(&[dir.path("gateway.yaml")]);
    let listeners = rendered(&ctx, &ingress_gateway_proxy(), types::LISTENER);
    let listener = |port: u16| {
        listeners
            .as_array()
            .into_iter()
            .flatten()
            .find(|l| l["name"] == format!("0.0.0.0_{port}"))
            .cloned()
    };
    let last_filter = |chain: &serde_json::Value| {
        chain["filters"]
            .as_array()
            .and_then(|f| f.last())
            .map(|f| f["typedConfig"].clone())
            .unwrap_or_default()
    };

    let tcp = listener(31400).expect("the TCP server's listener");
    let chains = tcp["filterChains"].as_array().expect("chains");
    assert_eq!(chains.len(), 1, "the TLS server after it is dropped: {tcp}");
    let proxy = last_filter(&chains[0]);
    let weighted: Vec<(String, u64)> = proxy["weightedClusters"]["clusters"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            (
                c["name"].as_str().unwrap_or_default().to_owned(),
                c["weight"].as_u64().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        weighted,
        [
            (
                "outbound|9080||ratings.default.svc.cluster.local".to_owned(),
                80
            ),
            (
                "outbound|9080||details.default.svc.cluster.local".to_owned(),
                20
            ),
        ]
    );

    let tls = listener(9443).expect("the TLS server's listener");
    let chain = &tls["filterChains"][0];
    assert_eq!(
        chain["filterChainMatch"]["serverNames"][0],
        "db.example.com"
    );
    assert!(chain["transportSocket"].is_object(), "terminated: {chain}");
    assert_eq!(
        last_filter(chain)["cluster"],
        "outbound|9080||reviews.default.svc.cluster.local"
    );
    let alpn = |chain: &serde_json::Value| {
        chain["transportSocket"]["typedConfig"]["commonTlsContext"]["alpnProtocols"].clone()
    };
    assert_eq!(alpn(chain), serde_json::Value::Null, "no ALPN: {chain}");
    // The gateway as a mesh peer offers the TCP metadata exchange first.
    let mesh = listener(9444).expect("the ISTIO_MUTUAL server's listener");
    assert_eq!(
        alpn(&mesh["filterChains"][0]),
        serde_json::json!(["istio-peer-exchange", "h2", "http/1.1"])
    );
    // A server with `bind` gets a listener of its own on that address,
    // beside the port's wildcard one.
    let bound = listeners
        .as_array()
        .into_iter()
        .flatten()
        .find(|l| l["name"] == "198.18.0.40_31400")
        .expect("the bound server's listener");
    assert_eq!(bound["address"]["socketAddress"]["address"], "198.18.0.40");
    assert_eq!(
        last_filter(&bound["filterChains"][0])["weightedClusters"]["clusters"][0]["name"],
        "outbound|9080||ratings.default.svc.cluster.local"
    );

    let pass = listener(15443).expect("the PASSTHROUGH server's listener");
    assert_eq!(
        pass["listenerFilters"][0]["name"],
        "envoy.filters.listener.tls_inspector"
    );
    let routed: Vec<(String, String)> = pass["filterChains"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            assert!(c.get("transportSocket").is_none(), "passed through: {c}");
            assert_eq!(c["filterChainMatch"]["transportProtocol"], "tls");
            (
                c["filterChainMatch"]["serverNames"][0]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                last_filter(c)["cluster"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect();
    assert_eq!(
        routed,
        [
            (
                "a.example.com".to_owned(),
                "outbound|9080||details.default.svc.cluster.local".to_owned()
            ),
            (
                "b.example.com".to_owned(),
                "outbound|9080||ratings.default.svc.cluster.local".to_owned()
            ),
        ]
    );
    assert!(listener(7000).is_none(), "no route, no listener");
}

/// A DestinationRule's `credentialName` (SIMPLE, MUTUAL) is for gateways:
/// without a `workloadSelector` a sidecar ignores that TLS, as istiod does
/// (no sidecar waits on a Secret it may not read); a gateway originates
/// with the Secrets by name; a rule that selects the workload applies.
#[test]
fn credential_name_origination_is_for_gateways_and_selected_workloads() {
    let dir = oxmesh_testkit::TempDir::new("golden-credential-origination");
    // A selector applies in the rule's own namespace only, as in Istio.
    let mutual = "{mode: MUTUAL, credentialName: client-credential}";
    let rule = |name: &str, namespace: &str, host: &str, selector: &str, tls: &str| {
        format!(
            "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}, namespace: istio-system}}\nspec:\n  hosts: [{host}]\n  ports: [{{number: 443, name: https, protocol: HTTPS}}]\n  resolution: DNS\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n  host: {host}\n  {selector}\n  trafficPolicy:\n    tls: {tls}\n"
        )
    };
    dir.write(
        "rules.yaml",
        &[
            rule("everyone", "istio-system", "a.example.com", "", mutual),
            rule(
                "productpage-only",
                "default",
                "b.example.com",
                "workloadSelector: {matchLabels: {app: productpage}}",
                mutual,
            ),
            rule(
                "public-ca",
                "istio-system",
                "c.example.com",
                "",
                "{mode: SIMPLE, credentialName: \"configmap://istio-system/ca\"}",
            ),
        ]
        .concat(),
    );
    let ctx = context(&[dir.path("rules.yaml")]);
    let socket = |proxy: &Proxy, host: &str| {
        rendered(&ctx, proxy, types::CLUSTER)
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["name"] == format!("outbound|443||{host}"))
            .map(|c| c["transportSocket"]["typedConfig"]["commonTlsContext"].clone())
            .unwrap_or_else(|| panic!("no cluster for {host}"))
    };
    let productpage = sidecar("productpage-v1-5d8c7b9f4-x1", "productpage", "v1");
    assert_eq!(
        socket(&productpage, "a.example.com"),
        serde_json::Value::Null
    );
    let gateway = ingress_gateway_proxy();
    let named = socket(&gateway, "a.example.com");
    assert_eq!(
        named["tlsCertificateSdsSecretConfigs"][0]["name"],
        "kubernetes://client-credential"
    );
    assert_eq!(
        named["combinedValidationContext"]["validationContextSdsSecretConfig"]["name"],
        "kubernetes://client-credential-cacert"
    );
    assert_eq!(
        socket(&productpage, "b.example.com")["tlsCertificateSdsSecretConfigs"][0]["name"],
        "kubernetes://client-credential"
    );
    // A ConfigMap CA is anyone's: sidecars keep that TLS, under its own name.
    assert_eq!(
        socket(&productpage, "c.example.com")["combinedValidationContext"]["validationContextSdsSecretConfig"]
            ["name"],
        "configmap://istio-system/ca-cacert"
    );
}

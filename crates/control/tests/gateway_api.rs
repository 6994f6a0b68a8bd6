//! The Gateway API's refusals, as the status conditions say them: each bad
//! listener or reference is refused with the Gateway API's reason while the
//! rest of the Gateway and route is still translated and served.

use std::sync::Arc;

use oxmesh_config::load::load_bytes;
use oxmesh_control::mesh_config::MeshConfig;
use oxmesh_control::push_context::PushContext;
use serde_json::Value;

/// The objects' PushContext; every object must load cleanly.
fn context(yaml: &str) -> PushContext {
    let loaded = load_bytes(std::path::Path::new("test.yaml"), yaml.as_bytes());
    assert!(!loaded.has_errors(), "{:?}", loaded.error_messages());
    let objects: Vec<_> = loaded.objects.into_iter().map(|s| s.object).collect();
    PushContext::build(&objects, MeshConfig::default(), Arc::from(&b""[..]), 1)
}

/// The status worked out for `kind` `namespace/name`, as it would be
/// written, under `status`.
fn status(ctx: &PushContext, kind: &str, namespace: &str, name: &str) -> Value {
    ctx.gateway_api_status
        .iter()
        .find(|s| s.kind.name() == kind && s.namespace == namespace && s.name == name)
        .map(|s| serde_json::json!({"status": s.to_json(None, "2026-01-01T00:00:00Z")}))
        .unwrap_or_else(|| panic!("no status for {kind} {namespace}/{name}"))
}

/// `(status, reason)` of condition `kind` in a `conditions` list.
fn condition(conditions: &Value, kind: &str) -> (String, String) {
    let c = conditions
        .as_array()
        .and_then(|list| list.iter().find(|c| c["type"] == kind))
        .unwrap_or_else(|| panic!("no {kind} in {conditions}"));
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    (text(&c["status"]), text(&c["reason"]))
}

fn listener<'a>(gateway: &'a Value, name: &str) -> &'a Value {
    gateway["status"]["listeners"]
        .as_array()
        .and_then(|l| l.iter().find(|l| l["name"] == name))
        .unwrap_or_else(|| panic!("no listener {name} in {gateway}"))
}

fn holds(reason: &str) -> (String, String) {
    ("True".to_owned(), reason.to_owned())
}

fn fails(reason: &str) -> (String, String) {
    ("False".to_owned(), reason.to_owned())
}

/// The Istio Gateways (one per served listener) the translation made.
fn servers(ctx: &PushContext) -> Vec<String> {
    let proxy = gateway_proxy();
    ctx.gateways_for(&proxy).map(|g| g.name.clone()).collect()
}

fn gateway_proxy() -> oxmesh_control::proxy::ProxyClass {
    oxmesh_control::proxy::ProxyClass {
        kind: oxmesh_control::proxy::ProxyKind::Router,
        namespace: "edge".to_owned(),
        labels: [(
            "gateway.networking.k8s.io/gateway-name".to_owned(),
            "web".to_owned(),
        )]
        .into(),
        grpc: false,
        tproxy: false,
        proven: true,
        locality: Default::default(),
        network: String::new(),
    }
}

const BASE: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: edge}
---
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {team: shop}}
---
apiVersion: v1
kind: Namespace
metadata: {name: other}
---
apiVersion: v1
kind: Service
metadata: {name: web-istio, namespace: edge}
spec:
  selector: {gateway.networking.k8s.io/gateway-name: web}
  ports: [{name: default, port: 80}]
---
apiVersion: v1
kind: Pod
metadata:
  name: web-istio-1
  namespace: edge
  labels: {gateway.networking.k8s.io/gateway-name: web}
spec:
  containers: [{name: istio-proxy, image: auto}]
status:
  phase: Running
  podIP: 198.18.0.40
  conditions: [{type: Ready, status: "True"}]
---
apiVersion: v1
kind: Service
metadata: {name: shop, namespace: shop}
spec:
  selector: {app: shop}
  ports: [{name: http, port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: other}
spec:
  selector: {app: db}
  ports: [{name: http, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: web, namespace: edge}
spec:
  gatewayClassName: istio
  listeners:
  - name: http
    port: 80
    protocol: HTTP
    hostname: "*.example.com"
    allowedRoutes:
      namespaces:
        from: Selector
        selector: {matchLabels: {team: shop}}
  - name: raw
    port: 80
    protocol: TCP
  - name: secure
    port: 443
    protocol: HTTPS
    hostname: secure.example.com
    tls:
      certificateRefs: [{name: missing-cert}]
  - name: udp
    port: 53
    protocol: UDP
"#;

const ROUTES: &str = r#"
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: shop, namespace: shop}
spec:
  parentRefs: [{name: web, namespace: edge}]
  hostnames: [shop.example.com]
  rules:
  - backendRefs:
    - {name: shop, port: 80}
    - {name: db, namespace: other, port: 80}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: elsewhere, namespace: shop}
spec:
  parentRefs: [{name: web, namespace: edge, sectionName: http}]
  hostnames: [shop.example.org]
  rules:
  - backendRefs: [{name: shop, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: outsider, namespace: other}
spec:
  parentRefs: [{name: web, namespace: edge}]
  hostnames: [db.example.com]
  rules:
  - backendRefs: [{name: db, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: orphan, namespace: shop}
spec:
  parentRefs: [{name: gone, namespace: edge}]
  rules:
  - backendRefs: [{name: shop, port: 80}]
"#;

#[test]
fn bad_listeners_are_refused_and_the_rest_serve() {
    let ctx = context(&format!("{BASE}{ROUTES}"));
    let gateway = status(&ctx, "Gateway", "edge", "web");
    // Some listeners are not valid; the Gateway is still accepted.
    assert_eq!(
        condition(&gateway["status"]["conditions"], "Accepted"),
        holds("ListenersNotValid")
    );
    assert_eq!(
        condition(&gateway["status"]["conditions"], "Programmed"),
        holds("Programmed")
    );
    let http = &listener(&gateway, "http")["conditions"];
    assert_eq!(condition(http, "Accepted"), holds("Accepted"));
    assert_eq!(condition(http, "Conflicted"), fails("NoConflicts"));
    // TCP on the HTTP listener's port: the first listener keeps the port.
    let raw = &listener(&gateway, "raw")["conditions"];
    assert_eq!(condition(raw, "Conflicted"), holds("ProtocolConflict"));
    assert_eq!(condition(raw, "Accepted"), fails("ProtocolConflict"));
    // A certificate that is not there.
    let secure = &listener(&gateway, "secure")["conditions"];
    assert_eq!(
        condition(secure, "ResolvedRefs"),
        fails("InvalidCertificateRef")
    );
    assert_eq!(condition(secure, "Programmed"), fails("Invalid"));
    let udp = &listener(&gateway, "udp")["conditions"];
    assert_eq!(condition(udp, "Accepted"), fails("UnsupportedProtocol"));
    // Only the good listener became a server.
    assert_eq!(servers(&ctx), ["web-istio-autogenerated-k8s-gateway-http"]);
    assert_eq!(listener(&gateway, "http")["attachedRoutes"], 1, "{gateway}");
}

#[test]
fn a_gateway_without_its_service_is_not_programmed() {
    let ctx = context(&format!("{BASE}{ROUTES}").replace("name: web-istio,", "name: other-istio,"));
    let gateway = status(&ctx, "Gateway", "edge", "web");
    let programmed = condition(&gateway["status"]["conditions"], "Programmed");
    assert_eq!(programmed, fails("AddressNotAssigned"), "{gateway}");
    assert!(servers(&ctx).is_empty(), "no pod serves it");
}

#[test]
fn a_filter_that_cannot_apply_fails_its_rule_with_500() {
    let route = r#"
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: guarded, namespace: shop}
spec:
  parentRefs: [{name: web, namespace: edge}]
  hostnames: [guarded.example.com]
  rules:
  - filters:
    - type: ExtensionRef
      extensionRef: {group: example.com, kind: Auth, name: strict}
    backendRefs: [{name: shop, port: 80}]
"#;
    let ctx = context(&format!("{BASE}{route}"));
    let conditions =
        &status(&ctx, "HTTPRoute", "shop", "guarded")["status"]["parents"][0]["conditions"];
    assert_eq!(
        condition(conditions, "ResolvedRefs"),
        fails("InvalidFilter")
    );
    let proxy = gateway_proxy();
    let listener = ctx.gateways_for(&proxy).next().expect("the http listener");
    let vs: Vec<_> = ctx.virtual_services_bound_to(listener).collect();
    let rule = &vs[0].spec.http[0];
    assert!(rule.route.is_empty(), "never reaches the backend: {rule:?}");
    assert_eq!(rule.direct_response.as_ref().map(|d| d.status), Some(500));
}

#[test]
fn bad_references_are_refused_with_the_gateway_apis_reasons() {
    let ctx = context(&format!("{BASE}{ROUTES}"));
    let parent = |name: &str, namespace: &str| {
        status(&ctx, "HTTPRoute", namespace, name)["status"]["parents"][0]["conditions"].clone()
    };
    // Accepted, but a backend in another namespace without a grant.
    let shop = parent("shop", "shop");
    assert_eq!(condition(&shop, "Accepted"), holds("Accepted"));
    assert_eq!(condition(&shop, "ResolvedRefs"), fails("RefNotPermitted"));
    assert_eq!(
        condition(&parent("elsewhere", "shop"), "Accepted"),
        fails("NoMatchingListenerHostname")
    );
    assert_eq!(
        condition(&parent("outsider", "other"), "Accepted"),
        fails("NotAllowedByListeners")
    );
    assert_eq!(
        condition(&parent("orphan", "shop"), "Accepted"),
        fails("NoMatchingParent")
    );
    // The refused backend gets the 500 share; the good one is routed.
    let proxy = gateway_proxy();
    let listener = ctx.gateways_for(&proxy).next().expect("the http listener");
    let vs: Vec<_> = ctx.virtual_services_bound_to(listener).collect();
    let [only] = vs.as_slice() else {
        panic!("one VirtualService: {vs:?}");
    };
    let hosts: Vec<&str> = only.spec.http[0]
        .route
        .iter()
        .map(|d| d.destination.host.as_str())
        .collect();
    assert_eq!(
        hosts,
        ["shop.shop.svc.cluster.local", "refused-backend.invalid"]
    );
}

#[test]
fn a_reference_grant_lets_a_route_use_another_namespaces_service() {
    let grant = r#"
---
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: shop-may-use-db, namespace: other}
spec:
  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: shop}]
  to: [{group: "", kind: Service}]
"#;
    let ctx = context(&format!("{BASE}{ROUTES}{grant}"));
    let shop = &status(&ctx, "HTTPRoute", "shop", "shop")["status"]["parents"][0]["conditions"];
    assert_eq!(condition(shop, "ResolvedRefs"), holds("ResolvedRefs"));
}

#[test]
fn gateway_classes_decide_whose_gateways_are_served() {
    let classes = r#"
---
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: mine}
spec: {controllerName: istio.io/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: istio}
spec: {controllerName: example.com/someone-else}
"#;
    let own_class = BASE.replace("gatewayClassName: istio", "gatewayClassName: mine");
    let ctx = context(&format!("{own_class}{ROUTES}{classes}"));
    assert_eq!(servers(&ctx), ["web-istio-autogenerated-k8s-gateway-http"]);
    let class = status(&ctx, "GatewayClass", "", "mine");
    assert_eq!(
        condition(&class["status"]["conditions"], "Accepted"),
        holds("Accepted")
    );
    // `istio` taken by another controller: its Gateways are not ours.
    let ctx = context(&format!("{BASE}{ROUTES}{classes}"));
    assert!(servers(&ctx).is_empty());
    assert!(ctx.gateway_api_status.iter().all(|s| s.name != "istio"));
}

/// GRPCRoute methods become the paths gRPC calls use, and a mirror's
/// fraction its share, as istiod writes them.
#[test]
fn grpc_routes_match_methods_and_mirror_a_share() {
    let route = r#"
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: greeter, namespace: shop}
spec:
  parentRefs: [{name: web, namespace: edge}]
  hostnames: [grpc.example.com]
  rules:
  - matches:
    - method: {service: helloworld.Greeter, method: SayHello}
    - method: {service: helloworld.Greeter}
      headers: [{name: x-canary, value: "yes"}]
    filters:
    - type: RequestMirror
      requestMirror:
        backendRef: {name: shop, port: 80}
        fraction: {numerator: 1, denominator: 4}
    backendRefs: [{name: shop, port: 80}]
"#;
    let ctx = context(&format!("{BASE}{route}"));
    let proxy = gateway_proxy();
    let listener = ctx.gateways_for(&proxy).next().expect("the http listener");
    let vs: Vec<_> = ctx.virtual_services_bound_to(listener).collect();
    let [only] = vs.as_slice() else {
        panic!("one VirtualService: {vs:?}");
    };
    let uris: Vec<String> = only
        .spec
        .http
        .iter()
        .map(|r| format!("{:?}", r.matches[0].uri))
        .collect();
    // The exact method sorts before the service prefix.
    assert_eq!(
        uris,
        [
            r#"Some(Exact("/helloworld.Greeter/SayHello"))"#,
            r#"Some(Prefix("/helloworld.Greeter/"))"#
        ]
    );
    assert!(
        only.spec.http[1].matches[0]
            .headers
            .contains_key("x-canary")
    );
    let mirror = &only.spec.http[0].mirrors[0];
    assert_eq!(mirror.destination.host, "shop.shop.svc.cluster.local");
    assert_eq!(mirror.percentage.map(|p| p.value), Some(25.0));
    let conditions =
        &status(&ctx, "GRPCRoute", "shop", "greeter")["status"]["parents"][0]["conditions"];
    assert_eq!(condition(conditions, "Accepted"), holds("Accepted"));
}

/// A certificate kept in another namespace: a listener may use it once a
/// ReferenceGrant there lets the Gateway's namespace refer to it; the
/// Secret is then served to that Gateway's proxies under istiod's name
/// (`kubernetes-gateway://<ns>/<name>`), and to no one before.
#[test]
fn a_reference_grant_lets_a_gateway_serve_another_namespaces_certificate() {
    let (cert, key) = (
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----",
        "k",
    );
    let secret = format!(
        "\n---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: certs}}\n---\napiVersion: v1\nkind: Secret\nmetadata: {{name: shared, namespace: certs}}\ntype: kubernetes.io/tls\nstringData: {{tls.crt: {cert:?}, tls.key: {key}}}\n"
    );
    let grant = r#"
---
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: edge-uses-certs, namespace: certs}
spec:
  from: [{group: gateway.networking.k8s.io, kind: Gateway, namespace: edge}]
  to: [{group: "", kind: Secret, name: shared}]
"#;
    let base = BASE.replace(
        "certificateRefs: [{name: missing-cert}]",
        "certificateRefs: [{name: shared, namespace: certs}]",
    );
    let served = |ctx: &PushContext| -> Vec<String> {
        oxmesh_control::generate::secret::generate(ctx, &gateway_proxy())
            .into_iter()
            .map(|s| s.name)
            .filter(|n| n.contains("certs/"))
            .collect()
    };

    // Istio Gateways may spell such names too; without a grant nothing is
    // served, whether their namespace is the proxy's or not.
    let spelled = r#"
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: spelled, namespace: edge}
spec:
  selector: {gateway.networking.k8s.io/gateway-name: web}
  servers:
  - port: {number: 8443, name: https, protocol: HTTPS}
    hosts: [a.example.com]
    tls: {mode: SIMPLE, credentialName: "kubernetes://certs/shared"}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: spelled, namespace: shop}
spec:
  selector: {gateway.networking.k8s.io/gateway-name: web}
  servers:
  - port: {number: 8444, name: https, protocol: HTTPS}
    hosts: [b.example.com]
    tls: {mode: SIMPLE, credentialName: "kubernetes-gateway://certs/shared"}
"#;
    let ungranted = context(&format!("{base}{secret}{spelled}"));
    let gateway = status(&ungranted, "Gateway", "edge", "web");
    assert_eq!(
        condition(&listener(&gateway, "secure")["conditions"], "ResolvedRefs"),
        fails("RefNotPermitted")
    );
    assert!(served(&ungranted).is_empty(), "{:?}", served(&ungranted));

    let granted = context(&format!("{base}{secret}{grant}"));
    let gateway = status(&granted, "Gateway", "edge", "web");
    assert_eq!(
        condition(&listener(&gateway, "secure")["conditions"], "ResolvedRefs"),
        holds("ResolvedRefs")
    );
    assert_eq!(served(&granted), ["kubernetes-gateway://certs/shared"]);
    let mut elsewhere = gateway_proxy();
    elsewhere.namespace = "shop".to_owned();
    let names: Vec<String> = oxmesh_control::generate::secret::generate(&granted, &elsewhere)
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert!(
        !names.iter().any(|n| n.contains("certs/")),
        "granted to edge only: {names:?}"
    );
}

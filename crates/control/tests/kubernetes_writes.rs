//! What the control plane keeps in the cluster, against the API server fixture:
//! the self-signed root in Secret `istio-ca-secret` (shared by every replica),
//! ConfigMap `istio-ca-root-cert` in every namespace, the root as the webhook
//! configurations' `caBundle`, and one leader among replicas (a Lease).

mod support;

use std::time::Duration;

use base64::Engine;
use oxmesh_control::control_plane::ControlPlane;
use oxmesh_testkit::api_server::{self, ApiServer};
use serde_json::{Value, json};
use support::TempDir;

const WAIT: Duration = Duration::from_secs(60);

const NAMESPACES: &str = "
apiVersion: v1
kind: Namespace
metadata: {name: istio-system}
---
apiVersion: v1
kind: Namespace
metadata: {name: default}
---
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Namespace
metadata: {name: kube-system}
";

async fn control_plane(api: &ApiServer, state: &TempDir) -> ControlPlane {
    support::kube_control_plane(api, state).await
}

/// Polls `check` until it holds.
async fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn root_config_map(api: &ApiServer, namespace: &str) -> Option<String> {
    api.get("v1", "ConfigMap", namespace, "istio-ca-root-cert")
        .and_then(|cm| cm["data"]["root-cert.pem"].as_str().map(str::to_owned))
}

fn decoded(secret: &Value, key: &str) -> String {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(secret["data"][key].as_str().unwrap_or_default())
        .expect("base64");
    String::from_utf8(bytes).expect("PEM")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_signs_with_the_root_kept_in_istio_ca_secret() {
    let api = ApiServer::start(api_server::standard_types()).await;
    api.apply_yaml(NAMESPACES);
    let (one_state, two_state) = (TempDir::new("ca-secret-1"), TempDir::new("ca-secret-2"));
    let one = control_plane(&api, &one_state).await;
    let secret = api
        .get("v1", "Secret", "istio-system", "istio-ca-secret")
        .expect("the first control plane publishes its root");
    assert_eq!(decoded(&secret, "root-cert.pem"), one.authority.roots_pem());
    assert!(decoded(&secret, "ca-key.pem").contains("PRIVATE KEY"));

    // A second replica, with its own empty state, takes the same root.
    let two = control_plane(&api, &two_state).await;
    assert_eq!(two.authority.roots_pem(), one.authority.roots_pem());
    two.shutdown().await;

    // Istio's own layout (root-cert.pem empty for a self-signed root) is read
    // too: a mesh moving from istiod keeps its root.
    let mut istio_layout = secret.clone();
    istio_layout["data"]["root-cert.pem"] = json!("");
    api.apply(istio_layout);
    let three_state = TempDir::new("ca-secret-3");
    let three = control_plane(&api, &three_state).await;
    assert_eq!(three.authority.roots_pem(), one.authority.roots_pem());
    three.shutdown().await;
    one.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_root_is_kept_in_every_namespace_and_in_the_webhooks() {
    let api = ApiServer::start(api_server::standard_types()).await;
    api.apply_yaml(NAMESPACES);
    // The webhook configurations as `oxmesh install` writes them: no caBundle.
    let install = oxmesh_control::install::Install {
        namespace: "istio-system".into(),
        revision: "default".into(),
        image: "example.com/oxmesh:dev".into(),
        trust_domain: "cluster.local".into(),
    };
    for object in install.objects().expect("manifests") {
        let kind = object.types.as_ref().map_or("", |t| t.kind.as_str());
        if kind.ends_with("WebhookConfiguration") {
            api.apply(serde_json::to_value(&object).expect("json"));
        }
    }
    let state = TempDir::new("root-publish");
    let cp = control_plane(&api, &state).await;
    let roots = cp.authority.roots_pem();

    eventually("istio-ca-root-cert in default and shop", || {
        root_config_map(&api, "default").as_ref() == Some(&roots)
            && root_config_map(&api, "shop").as_ref() == Some(&roots)
    })
    .await;
    assert_eq!(
        root_config_map(&api, "kube-system"),
        None,
        "istiod skips it"
    );

    // Deleted, edited, or in a new namespace: put (back) in place.
    api.delete("v1", "ConfigMap", "shop", "istio-ca-root-cert");
    let mut edited = api
        .get("v1", "ConfigMap", "default", "istio-ca-root-cert")
        .expect("default's");
    edited["data"]["root-cert.pem"] = json!("not a root");
    api.apply(edited);
    api.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "late"}}));
    eventually("restored, and written to the new namespace", || {
        ["default", "shop", "late"]
            .iter()
            .all(|ns| root_config_map(&api, ns).as_ref() == Some(&roots))
    })
    .await;

    let bundle = base64::engine::general_purpose::STANDARD.encode(roots.as_bytes());
    for (kind, name, count) in [
        ("MutatingWebhookConfiguration", "istio-sidecar-injector", 4),
        (
            "ValidatingWebhookConfiguration",
            "istio-validator-istio-system",
            2,
        ),
    ] {
        let bundles = || -> Vec<String> {
            api.get("admissionregistration.k8s.io/v1", kind, "", name)
                .and_then(|c| c["webhooks"].as_array().cloned())
                .unwrap_or_default()
                .iter()
                .filter_map(|w| w["clientConfig"]["caBundle"].as_str().map(str::to_owned))
                .collect()
        };
        eventually(&format!("{name}'s caBundle"), || {
            let found = bundles();
            found.len() == count && found.iter().all(|b| *b == bundle)
        })
        .await;
    }

    // One replica leads: the Lease names the first.
    let lease = api
        .get(
            "coordination.k8s.io/v1",
            "Lease",
            "istio-system",
            "istiod-leader",
        )
        .expect("a Lease");
    let leader = lease["spec"]["holderIdentity"]
        .as_str()
        .expect("holder")
        .to_owned();
    let standby_state = TempDir::new("root-publish-standby");
    let standby = control_plane(&api, &standby_state).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let holder = |api: &ApiServer| {
        api.get(
            "coordination.k8s.io/v1",
            "Lease",
            "istio-system",
            "istiod-leader",
        )
        .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_owned))
    };
    assert_eq!(
        holder(&api).as_ref(),
        Some(&leader),
        "the leader keeps the Lease"
    );

    // The leader goes: once its Lease expires the standby takes over and
    // keeps the namespaces' roots.
    cp.shutdown().await;
    eventually("the standby leads", || {
        holder(&api).is_some_and(|h| h != leader)
    })
    .await;
    api.delete("v1", "ConfigMap", "late", "istio-ca-root-cert");
    eventually("the new leader restores it", || {
        root_config_map(&api, "late").as_ref() == Some(&roots)
    })
    .await;
    standby.shutdown().await;
}

/// A Gateway of class `istio`, its Service and pod, and a route to a Service
/// that does not exist (and to a Gateway of another class, as another
/// controller reports).
const GATEWAY_API: &str = "
apiVersion: v1
kind: Service
metadata: {name: web-istio, namespace: default}
spec:
  clusterIP: 10.0.0.80
  selector: {gateway.networking.k8s.io/gateway-name: web}
  ports: [{name: http, port: 80}]
---
apiVersion: v1
kind: Pod
metadata:
  name: web-istio-1
  namespace: default
  labels: {gateway.networking.k8s.io/gateway-name: web}
spec:
  containers: [{name: istio-proxy, image: auto}]
status:
  phase: Running
  podIP: 10.1.0.80
  conditions: [{type: Ready, status: \"True\"}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: web, namespace: default, generation: 3}
spec:
  gatewayClassName: istio
  listeners: [{name: http, port: 80, protocol: HTTP}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: shop, namespace: default}
spec:
  parentRefs: [{name: web}, {name: elsewhere}]
  rules:
  - backendRefs: [{name: nowhere, port: 80}]
status:
  parents:
  - parentRef: {name: elsewhere}
    controllerName: example.com/another-controller
    conditions: []
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: elsewhere, namespace: default}
spec:
  gatewayClassName: another
  listeners: [{name: http, port: 80, protocol: HTTP}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: not-ours, namespace: default}
spec:
  parentRefs: [{name: elsewhere}]
  rules:
  - backendRefs: [{name: nowhere, port: 80}]
";

fn condition_of(object: &Value, path: &[&str], kind: &str) -> Option<(String, String)> {
    let mut at = &object["status"];
    for step in path {
        at = match step.parse::<usize>() {
            Ok(i) => &at[i],
            Err(_) => &at[*step],
        };
    }
    let c = at["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)?;
    Some((
        c["status"].as_str()?.to_owned(),
        c["reason"].as_str()?.to_owned(),
    ))
}

/// The Gateway API's status goes through the status subresource: the
/// Gateway's and the route's conditions, with the object's generation, and
/// the spec is left as written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_api_status_is_written_through_the_status_subresource() {
    let api = ApiServer::start(api_server::standard_types()).await;
    api.apply_yaml(NAMESPACES);
    api.apply_yaml(GATEWAY_API);
    let state = TempDir::new("gateway-status");
    let cp = control_plane(&api, &state).await;
    let gateway = || api.get("gateway.networking.k8s.io/v1", "Gateway", "default", "web");
    let route = || {
        api.get(
            "gateway.networking.k8s.io/v1",
            "HTTPRoute",
            "default",
            "shop",
        )
    };
    eventually("the Gateway programmed", || {
        gateway().and_then(|g| condition_of(&g, &[], "Programmed"))
            == Some(("True".into(), "Programmed".into()))
    })
    .await;
    eventually("the route's missing backend reported", || {
        route().and_then(|r| condition_of(&r, &["parents", "0"], "ResolvedRefs"))
            == Some(("False".into(), "BackendNotFound".into()))
    })
    .await;
    let gateway = gateway().expect("the Gateway");
    assert_eq!(gateway["status"]["addresses"][0]["value"], "10.0.0.80");
    assert_eq!(gateway["status"]["conditions"][0]["observedGeneration"], 3);
    assert_eq!(gateway["status"]["listeners"][0]["attachedRoutes"], 1);
    assert_eq!(
        gateway["spec"]["gatewayClassName"], "istio",
        "the spec stays"
    );
    let route = route().expect("the route");
    assert_eq!(
        route["status"]["parents"][0]["parentRef"]["name"], "web",
        "{route}"
    );
    // Another controller's report of its own parent stays.
    assert_eq!(
        route["status"]["parents"][1]["controllerName"], "example.com/another-controller",
        "{route}"
    );
    assert_eq!(route["status"]["parents"].as_array().map(Vec::len), Some(2));
    // A route whose only parent is another class's Gateway is left alone.
    let foreign = api
        .get(
            "gateway.networking.k8s.io/v1",
            "HTTPRoute",
            "default",
            "not-ours",
        )
        .expect("the other route");
    assert!(foreign["status"].is_null(), "{foreign}");
    let foreign = api
        .get(
            "gateway.networking.k8s.io/v1",
            "Gateway",
            "default",
            "elsewhere",
        )
        .expect("the other Gateway");
    assert!(foreign["status"].is_null(), "{foreign}");
    assert_eq!(
        condition_of(&route, &["parents", "0"], "Accepted"),
        Some(("True".into(), "Accepted".into()))
    );
    cp.shutdown().await;
}

/// Istio's deployment controller: a managed Gateway of class `istio` gets
/// its ServiceAccount, Deployment and Service `<name>-istio`, owned by the
/// Gateway; an unmanaged one (a Hostname address) gets nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_gateways_get_their_deployment() {
    let api = ApiServer::start(api_server::standard_types()).await;
    api.apply_yaml(NAMESPACES);
    api.apply_yaml(
        "
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: made, namespace: shop, uid: 6d1c6a2e-0000-4000-8000-000000000001}
spec:
  gatewayClassName: istio
  infrastructure:
    labels: {team: shop}
    annotations: {example.com/owner: platform}
  listeners:
  - {name: http, port: 80, protocol: HTTP}
  - {name: https, port: 443, protocol: HTTPS, tls: {certificateRefs: [{name: cert}]}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: existing, namespace: shop}
spec:
  gatewayClassName: istio
  addresses: [{type: Hostname, value: istio-ingressgateway.istio-system.svc.cluster.local}]
  listeners: [{name: http, port: 80, protocol: HTTP}]
",
    );
    let state = TempDir::new("gateway-deployer");
    let cp = control_plane(&api, &state).await;
    eventually("the Deployment, Service, ServiceAccount and class", || {
        api.get("gateway.networking.k8s.io/v1", "GatewayClass", "", "istio")
            .is_some()
            && api
                .get("apps/v1", "Deployment", "shop", "made-istio")
                .is_some()
            && api.get("v1", "Service", "shop", "made-istio").is_some()
            && api
                .get("v1", "ServiceAccount", "shop", "made-istio")
                .is_some()
    })
    .await;
    let deployment = api
        .get("apps/v1", "Deployment", "shop", "made-istio")
        .expect("the Deployment");
    let owner = &deployment["metadata"]["ownerReferences"][0];
    assert_eq!(owner["kind"], "Gateway");
    assert_eq!(owner["uid"], "6d1c6a2e-0000-4000-8000-000000000001");
    let template = &deployment["spec"]["template"]["metadata"];
    assert_eq!(
        template["annotations"]["inject.istio.io/templates"],
        "gateway"
    );
    assert_eq!(
        template["labels"]["gateway.networking.k8s.io/gateway-name"],
        "made"
    );
    let service = api
        .get("v1", "Service", "shop", "made-istio")
        .expect("the Service");
    let ports: Vec<u64> = service["spec"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["port"].as_u64())
        .collect();
    assert_eq!(ports, [15021, 80, 443]);
    // spec.infrastructure reaches what was made, the pods included.
    assert_eq!(service["metadata"]["labels"]["team"], "shop");
    assert_eq!(template["labels"]["team"], "shop");
    assert_eq!(template["annotations"]["example.com/owner"], "platform");
    assert!(
        api.get("apps/v1", "Deployment", "shop", "existing-istio")
            .is_none()
    );
    // The cluster serves the Gateway API and has no `istio` class: the
    // control plane makes Istio's.
    let class = api
        .get("gateway.networking.k8s.io/v1", "GatewayClass", "", "istio")
        .expect("the istio GatewayClass");
    assert_eq!(
        class["spec"]["controllerName"],
        "istio.io/gateway-controller"
    );
    cp.shutdown().await;
}

/// A GatewayClass `istio` someone else made is left as it is (the control
/// plane only ever creates one), while Gateways of a class Istio's
/// controller serves are still deployed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_istio_gateway_class_is_left_alone() {
    let api = ApiServer::start(api_server::standard_types()).await;
    api.apply_yaml(NAMESPACES);
    api.apply_yaml(
        "
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: istio}
spec: {controllerName: example.com/other-controller, description: mine}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: served}
spec: {controllerName: istio.io/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: made, namespace: shop}
spec:
  gatewayClassName: served
  listeners: [{name: http, port: 80, protocol: HTTP}]
",
    );
    let state = TempDir::new("gateway-class-kept");
    let cp = control_plane(&api, &state).await;
    // The deployer's pass makes the class before any Deployment.
    eventually("the served class's Deployment", || {
        api.get("apps/v1", "Deployment", "shop", "made-istio")
            .is_some()
    })
    .await;
    let class = api
        .get("gateway.networking.k8s.io/v1", "GatewayClass", "", "istio")
        .expect("the user's class");
    assert_eq!(
        class["spec"]["controllerName"],
        "example.com/other-controller"
    );
    assert_eq!(class["spec"]["description"], "mine");
    cp.shutdown().await;
}

//! Istio's automated gateway deployment: what its deployment controller
//! makes for a Gateway API `Gateway` of class `istio`, a ServiceAccount, a
//! Deployment and a Service named `<name>-istio` (the Service with the
//! status port 15021 and one port per listener port, selecting the pods by
//! `gateway.networking.k8s.io/gateway-name`). The pods carry Istio's gateway
//! injection template, so the injector (the webhook, or the testbed's)
//! makes their `istio-proxy` the gateway. A Gateway with a `Hostname`
//! address is unmanaged: it names the Service of a gateway deployed some
//! other way, and nothing is made for it. The testbed and the control plane
//! (on Kubernetes) both make these. Each gets the Gateway's
//! `spec.infrastructure` labels and annotations (or, without them, the
//! Gateway's own), as Istio's template copies them.

use serde_json::{Value, json};

use super::{CLASS, CLASS_LABEL, GROUP, NAME_LABEL};

/// Istio's annotation choosing the Service's type.
const SERVICE_TYPE: &str = "networking.istio.io/service-type";

/// Whether `doc` is a Gateway API Gateway.
pub fn is_gateway(doc: &Value) -> bool {
    doc["kind"] == "Gateway"
        && doc["apiVersion"]
            .as_str()
            .is_some_and(|v| v.starts_with(&format!("{GROUP}/")))
}

/// Istio's `IsManaged`: a Gateway asking for no address, or for one IP
/// address, gets its deployment; one naming a host name (the Service of a
/// gateway deployed some other way) or several addresses does not.
pub fn is_managed(addresses: &[Value]) -> bool {
    match addresses {
        [] => true,
        [only] => matches!(only["type"].as_str(), None | Some("IPAddress")),
        _ => false,
    }
}

/// The ServiceAccount, Deployment and Service Istio's controller makes for a
/// managed Gateway whose class `serves_class` says is Istio's; nothing for
/// any other object.
pub fn derived(doc: &Value, serves_class: impl Fn(&str) -> bool) -> Vec<Value> {
    let class = doc["spec"]["gatewayClassName"].as_str().unwrap_or_default();
    if !is_gateway(doc) || !serves_class(class) {
        return Vec::new();
    }
    let addresses = doc["spec"]["addresses"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    if !is_managed(addresses) {
        return Vec::new();
    }
    let Some(name) = doc["metadata"]["name"].as_str() else {
        return Vec::new();
    };
    let namespace = doc["metadata"]["namespace"].as_str().unwrap_or("default");
    let deployed = format!("{name}-istio");
    let infra = Value::Object(infrastructure(doc, "labels"));
    let annotations = Value::Object(infrastructure(doc, "annotations"));
    let gateway_labels = json!({NAME_LABEL: name, CLASS_LABEL: CLASS});
    let managed_labels = layered(&[
        &gateway_labels,
        &json!({"gateway.istio.io/managed": "istio.io-gateway-controller"}),
    ]);
    // What the controller sets itself wins over the Gateway's.
    let labels = layered(&[&infra, &gateway_labels]);
    let managed = layered(&[&infra, &managed_labels]);
    // Istio's order for pods: its canonical names first, the Gateway's
    // labels over them, the controller's own last.
    let pod_labels = layered(&[
        &json!({
            "service.istio.io/canonical-name": deployed,
            "service.istio.io/canonical-revision": "latest",
        }),
        &infra,
        &managed_labels,
        &json!({"sidecar.istio.io/inject": "true"}),
    ]);
    let mut owner = json!({"apiVersion": format!("{GROUP}/v1"), "kind": "Gateway", "name": name});
    // Kubernetes collects what a Gateway owns when it goes; it needs the uid.
    if let Some(uid) = doc["metadata"]["uid"].as_str() {
        owner["uid"] = json!(uid);
    }
    let owner = json!([owner]);
    let account = json!({
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {
            "name": deployed,
            "namespace": namespace,
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": owner,
        },
    });
    let mut pod_annotations = annotations.clone();
    pod_annotations["inject.istio.io/templates"] = json!("gateway");
    let deployment = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": deployed,
            "namespace": namespace,
            "labels": managed,
            "annotations": annotations,
            "ownerReferences": owner,
        },
        // No replicas: an autoscaler or `kubectl scale` owns them, as with
        // Istio's template (Kubernetes starts one).
        "spec": {
            "selector": {"matchLabels": {NAME_LABEL: name}},
            "template": {
                "metadata": {
                    // The testbed's gateway injection runs the pod's
                    // istio-proxy as `oxmesh proxy --mode gateway`.
                    "annotations": pod_annotations,
                    "labels": pod_labels,
                },
                "spec": {
                    "serviceAccountName": deployed,
                    "containers": [{"name": "istio-proxy", "image": "auto"}],
                },
            },
        },
    });
    let service_type = doc["metadata"]["annotations"][SERVICE_TYPE]
        .as_str()
        .unwrap_or("LoadBalancer");
    let service = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": deployed,
            "namespace": namespace,
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": owner,
        },
        "spec": {
            "type": service_type,
            "selector": {NAME_LABEL: name},
            "ports": ports(&doc["spec"]["listeners"]),
        },
    });
    vec![account, deployment, service]
}

/// JSON objects merged in order, later keys over earlier ones.
fn layered(layers: &[&Value]) -> Value {
    let mut merged = serde_json::Map::new();
    for layer in layers {
        if let Value::Object(map) = layer {
            merged.extend(map.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
    }
    Value::Object(merged)
}

/// The GatewayClass `istio`, as installing Istio makes it.
pub fn default_class() -> Value {
    json!({
        "apiVersion": format!("{GROUP}/v1"),
        "kind": "GatewayClass",
        "metadata": {"name": CLASS},
        "spec": {
            "controllerName": "istio.io/gateway-controller",
            "description": "The default Istio GatewayClass",
        },
    })
}

/// The Gateway's `spec.infrastructure` `labels` or `annotations` (`what`);
/// without them its own metadata's, as Istio copies them by default.
/// Keys under `gateway.networking.k8s.io/` and the controller's own
/// annotations are left out.
fn infrastructure(doc: &Value, what: &str) -> serde_json::Map<String, Value> {
    const CONTROLLER_OWN: [&str; 4] = [
        "kubectl.kubernetes.io/last-applied-configuration",
        "gateway.istio.io/name-override",
        "gateway.istio.io/service-account",
        "gateway.istio.io/controller-version",
    ];
    let given = match doc["spec"]["infrastructure"].get(what) {
        Some(Value::Object(map)) => map,
        _ => match &doc["metadata"][what] {
            Value::Object(map) => map,
            _ => return serde_json::Map::new(),
        },
    };
    given
        .iter()
        .filter(|(k, v)| {
            v.is_string()
                && !k.starts_with("gateway.networking.k8s.io/")
                && !CONTROLLER_OWN.contains(&k.as_str())
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// `status-port` 15021, then one port per listener port (the first
/// listener on a port names it), with the listener's protocol as its
/// `appProtocol`.
fn ports(listeners: &Value) -> Vec<Value> {
    let mut ports = vec![
        json!({"name": "status-port", "port": 15021, "protocol": "TCP", "appProtocol": "tcp"}),
    ];
    let mut seen = Vec::new();
    for l in listeners.as_array().into_iter().flatten() {
        let Some(port) = l["port"].as_u64() else {
            continue;
        };
        if seen.contains(&port) {
            continue;
        }
        seen.push(port);
        let protocol = l["protocol"].as_str().unwrap_or("TCP").to_ascii_lowercase();
        let name = l["name"]
            .as_str()
            .map(|n| n.replace('.', "-"))
            .filter(|n| !n.is_empty() && !ports.iter().any(|p| p["name"] == n.as_str()))
            .unwrap_or_else(|| format!("{protocol}-{port}"));
        ports.push(json!({"name": name, "port": port, "protocol": "TCP", "appProtocol": protocol}));
    }
    ports
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gateway() -> Value {
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "Gateway",
            "metadata": {"name": "gateway", "namespace": "istio-ingress"},
            "spec": {
                "gatewayClassName": "istio",
                "listeners": [
                    {"name": "default", "port": 80, "protocol": "HTTP"},
                    {"name": "other", "port": 80, "protocol": "HTTP", "hostname": "a.example"},
                    {"name": "https", "port": 443, "protocol": "HTTPS"},
                ],
            },
        })
    }

    #[test]
    fn a_managed_gateway_gets_its_deployment_and_service() {
        let made = derived(&gateway(), |c| c == CLASS);
        let [account, deployment, service] = made.as_slice() else {
            panic!("{made:?}");
        };
        assert_eq!(account["metadata"]["name"], "gateway-istio");
        assert_eq!(
            deployment["spec"]["template"]["spec"]["serviceAccountName"],
            "gateway-istio"
        );
        assert_eq!(deployment["metadata"]["name"], "gateway-istio");
        assert_eq!(deployment["metadata"]["namespace"], "istio-ingress");
        assert_eq!(
            deployment["spec"]["template"]["metadata"]["labels"][NAME_LABEL],
            "gateway"
        );
        assert_eq!(service["spec"]["selector"][NAME_LABEL], "gateway");
        assert_eq!(service["spec"]["type"], "LoadBalancer");
        let ports: Vec<(String, u64)> = service["spec"]["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                (
                    p["name"].as_str().unwrap_or_default().to_owned(),
                    p["port"].as_u64().unwrap_or(0),
                )
            })
            .collect();
        assert_eq!(
            ports,
            [
                ("status-port".to_owned(), 15021),
                ("default".to_owned(), 80),
                ("https".to_owned(), 443)
            ]
        );
    }

    #[test]
    fn unmanaged_and_foreign_gateways_get_nothing() {
        let mut unmanaged = gateway();
        unmanaged["spec"]["addresses"] = json!([{"type": "Hostname", "value": "istio-ingressgateway.istio-system.svc.cluster.local"}]);
        assert!(derived(&unmanaged, |c| c == CLASS).is_empty());
        let mut foreign = gateway();
        foreign["spec"]["gatewayClassName"] = json!("other");
        assert!(derived(&foreign, |c| c == CLASS).is_empty());
        let mut istio = gateway();
        istio["apiVersion"] = json!("networking.istio.io/v1");
        assert!(
            derived(&istio, |c| c == CLASS).is_empty(),
            "an Istio Gateway is not deployed"
        );
    }

    #[test]
    fn infrastructure_metadata_reaches_everything_made() {
        let mut doc = gateway();
        doc["metadata"]["labels"] = json!({"team": "edge-from-metadata"});
        doc["spec"]["infrastructure"] = json!({
            "labels": {
                "team": "edge",
                "gateway.istio.io/managed": "spoofed",
                "service.istio.io/canonical-name": "edge-gateway",
            },
            "annotations": {"example.com/owner": "platform"},
        });
        let made = derived(&doc, |c| c == CLASS);
        let pod = &made[1]["spec"]["template"]["metadata"];
        for metadata in [
            &made[0]["metadata"],
            &made[1]["metadata"],
            &made[2]["metadata"],
            pod,
        ] {
            assert_eq!(metadata["labels"]["team"], "edge", "{metadata}");
            assert_eq!(metadata["labels"][NAME_LABEL], "gateway");
            assert_eq!(metadata["annotations"]["example.com/owner"], "platform");
        }
        assert_eq!(pod["annotations"]["inject.istio.io/templates"], "gateway");
        // The controller's own labels win; Istio's canonical names give way.
        for metadata in [&made[1]["metadata"], pod] {
            assert_eq!(
                metadata["labels"]["gateway.istio.io/managed"],
                "istio.io-gateway-controller"
            );
        }
        assert_eq!(
            pod["labels"]["service.istio.io/canonical-name"],
            "edge-gateway"
        );
        // Written empty, infrastructure labels replace the Gateway's own.
        doc["spec"]["infrastructure"] = json!({"labels": {}});
        let made = derived(&doc, |c| c == CLASS);
        assert_eq!(made[2]["metadata"]["labels"]["team"], Value::Null);
        // Without infrastructure, the Gateway's own labels.
        doc["spec"]["infrastructure"] = Value::Null;
        let made = derived(&doc, |c| c == CLASS);
        assert_eq!(made[2]["metadata"]["labels"]["team"], "edge-from-metadata");
    }

    #[test]
    fn the_service_type_annotation_is_followed() {
        let mut doc = gateway();
        doc["metadata"]["annotations"] = json!({SERVICE_TYPE: "ClusterIP"});
        assert_eq!(
            derived(&doc, |c| c == CLASS)[2]["spec"]["type"],
            "ClusterIP"
        );
    }
}

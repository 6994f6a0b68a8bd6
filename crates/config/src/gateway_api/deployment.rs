//! Istio's automated gateway deployment: what its deployment controller
//! makes for a Gateway API `Gateway` of class `istio`, a ServiceAccount, a
//! Deployment and a Service named `<name>-istio` (the Service with the
//! status port 15021 and one port per listener port, selecting the pods by
//! `gateway.networking.k8s.io/gateway-name`). The pods carry Istio's gateway
//! injection template, so the injector (the webhook, or the testbed's)
//! makes their `istio-proxy` the gateway. A Gateway with a `Hostname`
//! address is unmanaged: it names the Service of a gateway deployed some
//! other way, and nothing is made for it. The testbed and the control plane
//! (on Kubernetes) both make these.

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
    let labels = json!({NAME_LABEL: name, CLASS_LABEL: CLASS});
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
            "ownerReferences": owner,
        },
    });
    let deployment = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": deployed,
            "namespace": namespace,
            "labels": {NAME_LABEL: name, CLASS_LABEL: CLASS, "gateway.istio.io/managed": "istio.io-gateway-controller"},
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
                    "annotations": {"inject.istio.io/templates": "gateway"},
                    "labels": {
                        NAME_LABEL: name,
                        CLASS_LABEL: CLASS,
                        "gateway.istio.io/managed": "istio.io-gateway-controller",
                        "service.istio.io/canonical-name": deployed,
                        "service.istio.io/canonical-revision": "latest",
                        "sidecar.istio.io/inject": "true",
                    },
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
    fn the_service_type_annotation_is_followed() {
        let mut doc = gateway();
        doc["metadata"]["annotations"] = json!({SERVICE_TYPE: "ClusterIP"});
        assert_eq!(
            derived(&doc, |c| c == CLASS)[2]["spec"]["type"],
            "ClusterIP"
        );
    }
}

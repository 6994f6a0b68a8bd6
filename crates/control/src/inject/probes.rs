//! The app's probes, rewritten to go through the proxy as Istio rewrites them:
//! with mTLS, kubelet's plain requests to the app's port would be refused, so
//! each HTTP, TCP and gRPC probe becomes a GET of `/app-health/<container>/<kind>`
//! on 15020 (an HTTP or TCP lifecycle hook, of `/app-lifecycle/<container>/<kind>`),
//! and the proxy, told the original in `ISTIO_KUBE_APP_PROBERS`, probes the app
//! itself.

use serde_json::{Map, Value, json};

use super::annotations::{Annotations, Traffic};

/// Where the proxy answers the app's probes (Istio's agent status port).
pub const APP_HEALTH_PORT: u16 = 15020;
/// The environment variable the proxy reads the originals from.
pub const ENV: &str = "ISTIO_KUBE_APP_PROBERS";
const PROXY: &str = "istio-proxy";

/// The probes and hooks of a container, by the path suffix Istio gives each.
const PROBES: [(&str, &str); 3] = [
    ("readinessProbe", "readyz"),
    ("livenessProbe", "livez"),
    ("startupProbe", "startupz"),
];
const HOOKS: [(&str, &str); 2] = [("preStop", "prestopz"), ("postStart", "poststartz")];

/// Whether the pod's probes are to be rewritten: `sidecar.istio.io/
/// rewriteAppHTTPProbers` (Go's boolean spellings) over the default, yes; never
/// when the proxy's status port is off.
pub fn wanted(notes: &Annotations<'_>, status_port: u16) -> bool {
    if status_port == 0 {
        return false;
    }
    match notes.get("sidecar.istio.io/rewriteAppHTTPProbers") {
        Some("0" | "f" | "F" | "false" | "FALSE" | "False") => false,
        Some(_) | None => true,
    }
}

/// Rewrites every app container's probes in `spec` and returns the originals,
/// keyed by their new path, as `ISTIO_KUBE_APP_PROBERS`'s JSON; `None` when no
/// probe was rewritten. Probes on ports interception leaves alone stay as they
/// are: kubelet reaches those directly.
pub fn rewrite(spec: &mut Value, traffic: &Traffic) -> Option<String> {
    let mut originals = Map::new();
    for list in ["initContainers", "containers"] {
        let containers = spec.get_mut(list).and_then(Value::as_array_mut);
        for container in containers.into_iter().flatten() {
            rewrite_container(container, traffic, &mut originals);
        }
    }
    (!originals.is_empty()).then(|| Value::Object(originals).to_string())
}

fn rewrite_container(container: &mut Value, traffic: &Traffic, originals: &mut Map<String, Value>) {
    let name = container
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if name == PROXY {
        return;
    }
    let ports = container.get("ports").cloned().unwrap_or(Value::Null);
    for (field, kind) in PROBES {
        let path = format!("/app-health/{name}/{kind}");
        if let Some(probe) = container.get_mut(field) {
            take_over(probe, &path, &ports, traffic, true, originals);
        }
    }
    for (field, kind) in HOOKS {
        let path = format!("/app-lifecycle/{name}/{kind}");
        if let Some(hook) = container
            .get_mut("lifecycle")
            .and_then(|l| l.get_mut(field))
        {
            take_over(hook, &path, &ports, traffic, false, originals);
        }
    }
}

/// Points one probe (or hook) at the proxy and records what it was.
fn take_over(
    probe: &mut Value,
    path: &str,
    ports: &Value,
    traffic: &Traffic,
    grpc_allowed: bool,
    originals: &mut Map<String, Value>,
) {
    let action = ["httpGet", "tcpSocket", "grpc"]
        .into_iter()
        .filter(|a| grpc_allowed || *a != "grpc")
        .find(|a| probe.get(*a).is_some_and(Value::is_object));
    let Some(action) = action else {
        return;
    };
    let mut original = probe[action].clone();
    if already_rewritten(&original) {
        return;
    }
    let Some(port) = resolve(&original["port"], ports) else {
        return;
    };
    if !intercepted(port, traffic) {
        return;
    }
    original["port"] = json!(port);
    let mut entry = json!({ action: original });
    if let Some(timeout) = probe.get("timeoutSeconds") {
        entry["timeoutSeconds"] = timeout.clone();
    }
    originals.insert(path.to_owned(), entry);

    let mut get = match action {
        "httpGet" => probe["httpGet"].clone(),
        _ => json!({}),
    };
    get["path"] = json!(path);
    get["port"] = json!(APP_HEALTH_PORT);
    // Kubelet -> HTTP -> proxy -> HTTPS -> app.
    if get.get("scheme").and_then(Value::as_str) == Some("HTTPS") {
        get["scheme"] = json!("HTTP");
    }
    if let Some(fields) = probe.as_object_mut() {
        fields.remove("tcpSocket");
        fields.remove("grpc");
        fields.insert("httpGet".to_owned(), get);
    }
}

fn already_rewritten(action: &Value) -> bool {
    action["port"].as_u64() == Some(u64::from(APP_HEALTH_PORT))
        && action["path"]
            .as_str()
            .is_some_and(|p| p.starts_with("/app-health/") || p.starts_with("/app-lifecycle/"))
}

/// A probe's port as a number: a number, or the name of one of the
/// container's ports. A name the container does not have is left alone.
fn resolve(port: &Value, ports: &Value) -> Option<u16> {
    if let Some(number) = port.as_u64() {
        return u16::try_from(number).ok();
    }
    let name = port.as_str()?;
    if let Ok(number) = name.parse() {
        return Some(number);
    }
    ports
        .as_array()?
        .iter()
        .find(|p| p.get("name").and_then(Value::as_str) == Some(name))
        .and_then(|p| p.get("containerPort")?.as_u64())
        .and_then(|n| u16::try_from(n).ok())
}

/// Whether inbound interception captures `port`: all ports unless
/// `includeInboundPorts` lists some (an empty list captures none), less
/// `excludeInboundPorts`.
fn intercepted(port: u16, traffic: &Traffic) -> bool {
    let lists = |list: &str| {
        list.split(',')
            .map(str::trim)
            .any(|p| p == "*" || p.parse() == Ok(port))
    };
    let included = traffic.include_inbound_ports.as_deref().is_none_or(lists);
    let excluded = traffic.exclude_inbound_ports.as_deref().is_some_and(lists);
    included && !excluded
}

#[cfg(test)]
mod tests {
    use super::*;

    fn traffic() -> Traffic {
        Traffic {
            include_inbound_ports: None,
            exclude_inbound_ports: None,
            include_outbound_ports: None,
            exclude_outbound_ports: None,
            include_outbound_ranges: None,
            exclude_outbound_ranges: None,
            interception_mode: None,
            reroute_interfaces: None,
        }
    }

    #[test]
    fn http_tcp_and_grpc_probes_go_through_the_proxy() {
        let mut spec = json!({"containers": [{
            "name": "hello",
            "ports": [{"name": "http", "containerPort": 80}],
            "livenessProbe": {"tcpSocket": {"port": "http"}, "periodSeconds": 4},
            "readinessProbe": {"httpGet": {"path": "/ready", "port": 3333, "scheme": "HTTPS"}, "timeoutSeconds": 2},
            "startupProbe": {"grpc": {"port": 9090}},
        }]});
        let json = rewrite(&mut spec, &traffic()).expect("rewritten");
        let probe = &spec["containers"][0];
        assert_eq!(
            probe["livenessProbe"],
            json!({"httpGet": {"path": "/app-health/hello/livez", "port": 15020}, "periodSeconds": 4})
        );
        assert_eq!(
            probe["readinessProbe"]["httpGet"],
            json!({"path": "/app-health/hello/readyz", "port": 15020, "scheme": "HTTP"})
        );
        assert_eq!(
            probe["startupProbe"]["httpGet"]["path"],
            "/app-health/hello/startupz"
        );
        let originals: Value = serde_json::from_str(&json).expect("JSON");
        assert_eq!(
            originals["/app-health/hello/livez"],
            json!({"tcpSocket": {"port": 80}})
        );
        assert_eq!(
            originals["/app-health/hello/readyz"],
            json!({"httpGet": {"path": "/ready", "port": 3333, "scheme": "HTTPS"}, "timeoutSeconds": 2})
        );
        assert_eq!(
            rewrite(&mut spec, &traffic()),
            None,
            "rewriting twice changes nothing"
        );
    }

    #[test]
    fn probes_on_ports_left_alone_and_unknown_names_stay() {
        let mut spec = json!({"containers": [{
            "name": "hello",
            "livenessProbe": {"httpGet": {"path": "/", "port": 8081}},
            "readinessProbe": {"tcpSocket": {"port": "nowhere"}},
        }]});
        let before = spec.clone();
        let excluded = Traffic {
            exclude_inbound_ports: Some("8081".into()),
            ..traffic()
        };
        assert_eq!(rewrite(&mut spec, &excluded), None);
        assert_eq!(spec, before);
        let only_80 = Traffic {
            include_inbound_ports: Some("80".into()),
            ..traffic()
        };
        assert_eq!(rewrite(&mut spec, &only_80), None);
        assert!(
            rewrite(&mut spec, &traffic()).is_some(),
            "8081 is captured by default"
        );
    }
}

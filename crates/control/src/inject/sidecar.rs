//! The containers, volumes, labels and annotations injection adds, following
//! Istio's sidecar and gateway templates with `oxmesh` in place of
//! pilot-agent, Envoy and istio-iptables.

use serde_json::{Map, Value, json};

use super::annotations::{Annotations, Readiness, Resources, Traffic, quantity};
use super::{InjectError, Settings, Template, probes, prometheus};

/// Marks an injected pod, listing what was added, as Istio's injector does.
pub const STATUS_ANNOTATION: &str = "sidecar.istio.io/status";
const PROXY: &str = "istio-proxy";
const INIT: &str = "istio-init";
const BOOTSTRAP_INIT: &str = "grpc-bootstrap-init";
/// Where proxyless gRPC apps find their xDS bootstrap.
const GRPC_BOOTSTRAP: &str = "/etc/istio/proxy/grpc-bootstrap.json";
/// The proxy's uid and gid: its own traffic is never intercepted.
const PROXY_UID: u64 = 1337;
/// Ports of the proxy that inbound interception leaves alone.
const PROXY_PORTS: &str = "15090,15021,15020";

/// What the pod's annotations ask for, read once.
struct Asked {
    traffic: Traffic,
    readiness: Readiness,
    resources: Resources,
    proxy_config: Option<Value>,
    native: bool,
    image: String,
}

pub fn inject(
    metadata: &mut Value,
    spec: &mut Value,
    workload: &str,
    templates: &[Template],
    settings: &Settings,
) -> Result<(), InjectError> {
    let asked = asked(metadata, settings)?;
    let app_containers = container_names(spec);
    let mut added = Added::default();
    let proxied = templates.contains(&Template::Gateway) || templates.contains(&Template::Sidecar);
    // The agent serves no metrics of its own: the app's annotations stay.
    let app_metrics = if proxied {
        prometheus::redirect(metadata)
    } else {
        None
    };
    if templates.contains(&Template::Gateway) {
        let mut proxy = proxy_container(spec, workload, &asked, settings, "gateway");
        add_env(&mut proxy, prometheus::ENV, app_metrics);
        merge_container(spec, "containers", proxy, &mut added.containers);
    } else if templates.contains(&Template::Sidecar) {
        let mut proxy = proxy_container(spec, workload, &asked, settings, "sidecar");
        add_env(&mut proxy, prometheus::ENV, app_metrics);
        if probes::wanted(&Annotations::of(metadata), asked.readiness.port) {
            let originals = probes::rewrite(spec, &asked.traffic);
            add_env(&mut proxy, probes::ENV, originals);
        }
        // NONE: the pod asked for no interception; its apps dial the proxy.
        if asked.traffic.interception_mode.as_deref() != Some("NONE") {
            let init = init_container(&asked);
            // A pod's own istio-init is merged in, wherever it was put.
            if let Some(own) = take_container(spec, "containers", INIT) {
                push(spec, "initContainers", own);
            }
            merge_container(spec, "initContainers", init, &mut added.init_containers);
        }
        beside_the_app(spec, proxy, &asked, &mut added);
    } else if templates.contains(&Template::GrpcAgent) {
        let mut agent = agent_container(spec, workload, &asked, settings);
        if probes::wanted(&Annotations::of(metadata), asked.readiness.port) {
            let originals = probes::rewrite(spec, &asked.traffic);
            add_env(&mut agent, probes::ENV, originals);
        }
        beside_the_app(spec, agent, &asked, &mut added);
        give_apps_the_bootstrap(spec, true);
    }
    if templates.contains(&Template::GrpcSimple) {
        grpc_bootstrap(spec, &asked, settings, &mut added);
    }
    for (name, volume) in volumes(templates) {
        add_volume(spec, name, volume, &mut added.volumes);
    }
    let gateway = templates.contains(&Template::Gateway);
    label(
        metadata,
        workload,
        &app_containers,
        &added,
        settings,
        gateway,
    );
    Ok(())
}

fn asked(metadata: &Value, settings: &Settings) -> Result<Asked, InjectError> {
    let notes = Annotations::of(metadata);
    let proxy_config =
        match notes.get("proxy.istio.io/config") {
            None => None,
            Some(text) => Some(serde_saphyr::from_str::<Value>(text).map_err(|e| {
                InjectError::Annotation {
                    name: "proxy.istio.io/config".into(),
                    value: text.into(),
                    reason: format!("not a ProxyConfig in YAML: {e}"),
                }
            })?),
        };
    let traffic = notes.traffic()?;
    Ok(Asked {
        traffic,
        readiness: notes.readiness()?,
        resources: notes.resources()?,
        proxy_config,
        native: settings.native_sidecars
            && notes.get("sidecar.istio.io/nativeSidecar") != Some("false"),
        image: notes
            .get("sidecar.istio.io/proxyImage")
            .unwrap_or(&settings.image)
            .to_owned(),
    })
}

#[derive(Default)]
struct Added {
    init_containers: Vec<String>,
    containers: Vec<String>,
    volumes: Vec<String>,
}

fn container_names(spec: &Value) -> Vec<String> {
    spec.get("containers")
        .and_then(Value::as_array)
        .map(|cs| {
            cs.iter()
                .filter_map(|c| c.get("name")?.as_str())
                .filter(|n| *n != PROXY)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// `oxmesh iptables` with istio-iptables' flags, from the annotations.
fn init_container(asked: &Asked) -> Value {
    let t = &asked.traffic;
    let mode = t.interception_mode.as_deref().unwrap_or("REDIRECT");
    let mut exclude_inbound = PROXY_PORTS.to_owned();
    if let Some(ports) = t.exclude_inbound_ports.as_deref().filter(|p| !p.is_empty()) {
        exclude_inbound = format!("{exclude_inbound},{ports}");
    }
    let mut args = vec![
        "iptables".to_owned(),
        "-p".into(),
        "15001".into(),
        "-z".into(),
        "15006".into(),
        "-u".into(),
        PROXY_UID.to_string(),
        "-m".into(),
        mode.into(),
        "-i".into(),
        t.include_outbound_ranges
            .clone()
            .unwrap_or_else(|| "*".into()),
        "-x".into(),
        t.exclude_outbound_ranges.clone().unwrap_or_default(),
        "-b".into(),
        // Every inbound port unless the pod narrows it.
        t.include_inbound_ports
            .clone()
            .unwrap_or_else(|| "*".into()),
        "-d".into(),
        exclude_inbound,
    ];
    for (flag, value) in [
        ("-o", &t.exclude_outbound_ports),
        ("-q", &t.include_outbound_ports),
        ("-k", &t.reroute_interfaces),
    ] {
        if let Some(value) = value.as_deref().filter(|v| !v.is_empty()) {
            args.extend([flag.to_owned(), value.to_owned()]);
        }
    }
    json!({
        "name": INIT,
        "image": asked.image,
        "command": ["oxmesh"],
        "args": args,
        "resources": resources(&asked.resources),
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "privileged": false,
            "readOnlyRootFilesystem": false,
            "runAsGroup": 0,
            "runAsNonRoot": false,
            "runAsUser": 0,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
        },
    })
}

fn proxy_container(
    spec: &Value,
    workload: &str,
    asked: &Asked,
    settings: &Settings,
    mode: &str,
) -> Value {
    let config = asked.proxy_config.as_ref();
    let discovery = config
        .and_then(|c| c.get("discoveryAddress"))
        .and_then(Value::as_str)
        .unwrap_or(&settings.discovery_address);
    let mut args = vec![
        "proxy".to_owned(),
        "--mode".into(),
        mode.into(),
        "--discovery-address".into(),
        discovery.into(),
        "--trust-domain".into(),
        settings.trust_domain.clone(),
    ];
    if let Some(n) = concurrency(config, &asked.resources) {
        args.extend(["--concurrency".into(), n.to_string()]);
    }
    let r = &asked.readiness;
    if r.port != 0 && r.port != 15021 {
        args.extend(["--health-port".into(), r.port.to_string()]);
    }
    let mut container = json!({
        "name": PROXY,
        "image": asked.image,
        "command": ["oxmesh"],
        "args": args,
        "env": env(spec, workload, asked, settings),
        "ports": [{"containerPort": 15090, "name": "http-envoy-prom", "protocol": "TCP"}],
        "resources": resources(&asked.resources),
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "privileged": false,
            "readOnlyRootFilesystem": true,
            "runAsGroup": PROXY_UID,
            "runAsNonRoot": true,
            "runAsUser": PROXY_UID,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": "istio-envoy", "mountPath": "/etc/istio/proxy"},
            {"name": "istio-data", "mountPath": "/var/lib/istio/data"},
            {"name": "istio-podinfo", "mountPath": "/etc/istio/pod"},
            {"name": "istio-token", "mountPath": "/var/run/secrets/tokens"},
            {"name": "istiod-ca-cert", "mountPath": "/var/run/secrets/istio"},
        ],
    });
    if r.port != 0 {
        container["readinessProbe"] = json!({
            "httpGet": {"path": "/healthz/ready", "port": r.port},
            "initialDelaySeconds": r.initial_delay_seconds,
            "periodSeconds": r.period_seconds,
            "timeoutSeconds": 3,
            "failureThreshold": r.failure_threshold,
        });
    }
    container
}

/// `concurrency` from `proxy.istio.io/config`; 0 means one worker per CPU the
/// proxy may use (its limit, else its request), as Istio does.
fn concurrency(config: Option<&Value>, resources: &Resources) -> Option<u64> {
    let asked = config?.get("concurrency")?.as_u64()?;
    if asked > 0 {
        return Some(asked);
    }
    let cpu = resources
        .cpu_limit
        .as_deref()
        .or(resources.cpu.as_deref())?;
    let cores = quantity(cpu)?;
    Some((cores.ceil() as u64).max(1))
}

fn field(path: &str) -> Value {
    json!({"fieldRef": {"apiVersion": "v1", "fieldPath": path}})
}

fn env(spec: &Value, workload: &str, asked: &Asked, settings: &Settings) -> Value {
    let ports: Vec<Value> = spec
        .get("containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|c| c.get("name").and_then(Value::as_str) != Some(PROXY))
        .filter_map(|c| c.get("ports")?.as_array())
        .flatten()
        .cloned()
        .collect();
    let mode = asked
        .traffic
        .interception_mode
        .as_deref()
        .unwrap_or("REDIRECT");
    let mut env = vec![
        json!({"name": "POD_NAME", "valueFrom": field("metadata.name")}),
        json!({"name": "POD_NAMESPACE", "valueFrom": field("metadata.namespace")}),
        json!({"name": "INSTANCE_IP", "valueFrom": field("status.podIP")}),
        json!({"name": "SERVICE_ACCOUNT", "valueFrom": field("spec.serviceAccountName")}),
        json!({"name": "HOST_IP", "valueFrom": field("status.hostIP")}),
        json!({"name": "ISTIO_CPU_LIMIT", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}}),
        json!({"name": "ISTIO_META_NODE_NAME", "valueFrom": field("spec.nodeName")}),
        json!({"name": "ISTIO_META_POD_PORTS", "value": Value::Array(ports).to_string()}),
        json!({"name": "ISTIO_META_APP_CONTAINERS", "value": container_names(spec).join(",")}),
        json!({"name": "ISTIO_META_CLUSTER_ID", "value": settings.cluster_id}),
        json!({"name": "ISTIO_META_INTERCEPTION_MODE", "value": mode}),
        json!({"name": "ISTIO_META_WORKLOAD_NAME", "value": workload}),
        json!({"name": "ISTIO_META_MESH_ID", "value": settings.trust_domain}),
        json!({"name": "TRUST_DOMAIN", "value": settings.trust_domain}),
    ];
    if let Some(config) = &asked.proxy_config {
        env.push(json!({"name": "PROXY_CONFIG", "value": config.to_string()}));
        if let Some(metadata) = config.get("proxyMetadata").and_then(Value::as_object) {
            for (name, value) in metadata {
                let value = value
                    .as_str()
                    .map_or_else(|| value.to_string(), str::to_owned);
                env.push(json!({"name": name, "value": value}));
            }
        }
    }
    Value::Array(env)
}

/// Istio's defaults (100m and 128Mi asked, 2 CPUs and 1Gi at most), with the
/// pod's annotations over them. A request above the default limit raises the
/// limit to it: Kubernetes refuses a request over its limit.
fn resources(asked: &Resources) -> Value {
    let pair = |request: &Option<String>, limit: &Option<String>, defaults: (&str, &str)| {
        let request = request.as_deref().unwrap_or(defaults.0);
        let limit = match limit.as_deref() {
            Some(limit) => limit,
            None if quantity(request) > quantity(defaults.1) => request,
            None => defaults.1,
        };
        (request.to_owned(), limit.to_owned())
    };
    let (cpu, cpu_limit) = pair(&asked.cpu, &asked.cpu_limit, ("100m", "2000m"));
    let (memory, memory_limit) = pair(&asked.memory, &asked.memory_limit, ("128Mi", "1024Mi"));
    json!({
        "requests": {"cpu": cpu, "memory": memory},
        "limits": {"cpu": cpu_limit, "memory": memory_limit},
    })
}

/// Starts `proxy` before the app: a native sidecar whose startup probe the
/// app waits for, else the first container, holding the app until ready.
///
/// A pod may bring its own `istio-proxy` (to set resources, args, probes or a
/// security context) in either list: it joins the injected one wherever that
/// goes, never leaving a second container of the name, which Kubernetes
/// refuses.
fn beside_the_app(spec: &mut Value, mut proxy: Value, asked: &Asked, added: &mut Added) {
    let (from, to) = if asked.native {
        ("containers", "initContainers")
    } else {
        ("initContainers", "containers")
    };
    if let Some(mut own) = take_container(spec, from, PROXY) {
        // A native sidecar's restartPolicy has no place on a regular container.
        if !asked.native
            && let Some(fields) = own.as_object_mut()
        {
            fields.remove("restartPolicy");
        }
        push(spec, to, own);
    }
    if asked.native {
        proxy["restartPolicy"] = json!("Always");
        // Kubernetes starts the app only once this probe passes; it asks
        // the proxy's health port even when the readiness probe is off.
        let health = match asked.readiness.port {
            0 => 15021,
            port => port,
        };
        proxy["startupProbe"] = json!({
            "httpGet": {"path": "/healthz/ready", "port": health},
            "periodSeconds": 1, "failureThreshold": 600, "timeoutSeconds": 3,
        });
        merge_container(spec, "initContainers", proxy, &mut added.init_containers);
    } else {
        hold_application(spec, proxy, &mut added.containers);
    }
}

/// `oxmesh grpc-agent` in the `istio-proxy` container: no interception, no
/// proxy; the bootstrap and certificate files go where the app reads them.
fn agent_container(spec: &Value, workload: &str, asked: &Asked, settings: &Settings) -> Value {
    let mut agent = proxy_container(spec, workload, asked, settings, "sidecar");
    let discovery = flag_value(&agent["args"], "--discovery-address");
    let mut args = vec![
        "grpc-agent".to_owned(),
        "--discovery-address".into(),
        discovery,
        "--trust-domain".into(),
        settings.trust_domain.clone(),
    ];
    let port = asked.readiness.port;
    if port != 0 && port != 15021 {
        args.extend(["--health-port".into(), port.to_string()]);
    }
    agent["args"] = json!(args);
    if let Some(fields) = agent.as_object_mut() {
        fields.remove("ports");
    }
    // The bootstrap's directory is the one the app mounts, not the proxy's.
    if let Some(mounts) = agent["volumeMounts"].as_array_mut() {
        mounts.retain(|m| m["name"] != "istio-envoy");
    }
    push(
        &mut agent,
        "volumeMounts",
        json!({"name": "istio-xds", "mountPath": "/etc/istio/proxy"}),
    );
    agent
}

/// The value after `flag` in a container's argument list.
fn flag_value(args: &Value, flag: &str) -> String {
    let args = args.as_array().map(Vec::as_slice).unwrap_or_default();
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// Not a native sidecar: the proxy goes first and the app's containers start
/// once `oxmesh proxy wait` sees it ready (Istio's
/// holdApplicationUntilProxyStarts, here always on: an app that starts before
/// its proxy sees connection errors).
fn hold_application(spec: &mut Value, mut proxy: Value, added: &mut Vec<String>) {
    proxy["lifecycle"] = json!({"postStart": {"exec": {"command": ["oxmesh", "proxy", "wait"]}}});
    merge_container(spec, "containers", proxy, added);
    if let Some(containers) = spec.get_mut("containers").and_then(Value::as_array_mut)
        && let Some(i) = containers
            .iter()
            .position(|c| c.get("name").and_then(Value::as_str) == Some(PROXY))
    {
        let proxy = containers.remove(i);
        containers.insert(0, proxy);
    }
}

/// Proxyless gRPC: an init container writes the xDS bootstrap into a shared
/// volume, and every app container is pointed at it.
fn grpc_bootstrap(spec: &mut Value, asked: &Asked, settings: &Settings, added: &mut Added) {
    let plaintext = settings.discovery_address.replace(":15012", ":15010");
    let init = json!({
        "name": BOOTSTRAP_INIT,
        "image": asked.image,
        "command": ["oxmesh"],
        "args": ["grpc-bootstrap", "--output", GRPC_BOOTSTRAP, "--discovery-address", plaintext],
        "env": [
            {"name": "POD_NAME", "valueFrom": field("metadata.name")},
            {"name": "POD_NAMESPACE", "valueFrom": field("metadata.namespace")},
            {"name": "INSTANCE_IP", "valueFrom": field("status.podIP")},
        ],
        "volumeMounts": [{"name": "istio-xds", "mountPath": "/etc/istio/proxy"}],
    });
    merge_container(spec, "initContainers", init, &mut added.init_containers);
    give_apps_the_bootstrap(spec, false);
}

/// Every app container reads the bootstrap (`GRPC_XDS_BOOTSTRAP`), and with
/// an agent also the certificate files it keeps.
fn give_apps_the_bootstrap(spec: &mut Value, certificates: bool) {
    let Some(containers) = spec.get_mut("containers").and_then(Value::as_array_mut) else {
        return;
    };
    for c in containers
        .iter_mut()
        .filter(|c| c.get("name").and_then(Value::as_str) != Some(PROXY))
    {
        push(
            c,
            "env",
            json!({"name": "GRPC_XDS_BOOTSTRAP", "value": GRPC_BOOTSTRAP}),
        );
        push(
            c,
            "volumeMounts",
            json!({"name": "istio-xds", "mountPath": "/etc/istio/proxy"}),
        );
        if certificates {
            push(
                c,
                "volumeMounts",
                json!({"name": "istio-data", "mountPath": "/var/lib/istio/data", "readOnly": true}),
            );
        }
    }
}

/// Removes the container `name` from `spec[list]`.
fn take_container(spec: &mut Value, list: &str, name: &str) -> Option<Value> {
    let items = spec.get_mut(list).and_then(Value::as_array_mut)?;
    let i = items
        .iter()
        .position(|c| c.get("name").and_then(Value::as_str) == Some(name))?;
    Some(items.remove(i))
}

fn push(object: &mut Value, key: &str, item: Value) {
    if !object.is_object() {
        return;
    }
    if !object.get(key).is_some_and(Value::is_array) {
        object[key] = json!([]);
    }
    if let Some(list) = object.get_mut(key).and_then(Value::as_array_mut) {
        list.push(item);
    }
}

/// Adds `container` to `spec[list]`. A container of that name the pod already
/// has is kept and filled in: its own fields win (`image: auto` takes the
/// injected image), as Istio merges a pod's `istio-proxy` over the template.
fn merge_container(spec: &mut Value, list: &str, mut container: Value, added: &mut Vec<String>) {
    let name = container["name"].as_str().unwrap_or_default().to_owned();
    if !spec.get(list).is_some_and(Value::is_array) {
        spec[list] = json!([]);
    }
    let Some(items) = spec.get_mut(list).and_then(Value::as_array_mut) else {
        return;
    };
    added.push(name.clone());
    match items
        .iter_mut()
        .find(|c| c.get("name").and_then(Value::as_str) == Some(name.as_str()))
    {
        Some(existing) => {
            if let (Some(base), Some(own)) = (container.as_object_mut(), existing.as_object()) {
                for (key, value) in own {
                    if key == "image" && value == "auto" {
                        continue;
                    }
                    if key == "env" {
                        merge_env(base, value);
                        continue;
                    }
                    base.insert(key.clone(), value.clone());
                }
            }
            *existing = container;
        }
        None => items.push(container),
    }
}

/// The pod's own variables override the injected ones of the same name.
fn merge_env(base: &mut Map<String, Value>, own: &Value) {
    let mut env: Vec<Value> = base
        .get("env")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for var in own.as_array().into_iter().flatten() {
        let name = var.get("name");
        env.retain(|e| e.get("name") != name);
        env.push(var.clone());
    }
    base.insert("env".into(), Value::Array(env));
}

fn volumes(templates: &[Template]) -> Vec<(&'static str, Value)> {
    let mut volumes = Vec::new();
    let agent = templates.contains(&Template::GrpcAgent);
    let proxy = templates.contains(&Template::Sidecar) || templates.contains(&Template::Gateway);
    if proxy {
        volumes.push(("istio-envoy", json!({"emptyDir": {"medium": "Memory"}})));
    }
    if proxy || agent {
        volumes.extend([
            ("istio-data", json!({"emptyDir": {}})),
            (
                "istio-podinfo",
                json!({"downwardAPI": {"items": [
                    {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                    {"path": "annotations", "fieldRef": {"fieldPath": "metadata.annotations"}},
                ]}}),
            ),
            (
                "istio-token",
                json!({"projected": {"sources": [{"serviceAccountToken": {
                    "audience": "istio-ca", "expirationSeconds": 43200, "path": "istio-token",
                }}]}}),
            ),
            (
                "istiod-ca-cert",
                json!({"configMap": {"name": "istio-ca-root-cert"}}),
            ),
        ]);
    }
    if templates.contains(&Template::GrpcSimple) || agent {
        volumes.push(("istio-xds", json!({"emptyDir": {}})));
    }
    volumes
}

fn add_volume(spec: &mut Value, name: &str, mut volume: Value, added: &mut Vec<String>) {
    let exists = spec
        .get("volumes")
        .and_then(Value::as_array)
        .is_some_and(|vs| {
            vs.iter()
                .any(|v| v.get("name").and_then(Value::as_str) == Some(name))
        });
    if exists {
        return;
    }
    volume["name"] = json!(name);
    push(spec, "volumes", volume);
    added.push(name.to_owned());
}

/// Istio's labels and annotations on an injected pod.
fn label(
    metadata: &mut Value,
    workload: &str,
    app_containers: &[String],
    added: &Added,
    settings: &Settings,
    gateway: bool,
) {
    let labels = metadata.get("labels").cloned().unwrap_or(json!({}));
    let pick = |keys: &[&str]| {
        keys.iter()
            .find_map(|k| labels.get(*k).and_then(Value::as_str).map(str::to_owned))
    };
    let mut name =
        pick(&oxmesh_identity::canonical::SERVICE_LABELS).unwrap_or_else(|| workload.to_owned());
    // A label value is at most 63 characters.
    name.truncate(63);
    let revision =
        pick(&oxmesh_identity::canonical::REVISION_LABELS).unwrap_or_else(|| "latest".into());
    // A gateway serves plaintext on its servers: Istio's gateway template
    // leaves the label off, so auto mTLS sends it what the client sent.
    if !gateway {
        set(
            metadata,
            "labels",
            "security.istio.io/tlsMode",
            "istio",
            true,
        );
    }
    set(
        metadata,
        "labels",
        "service.istio.io/canonical-name",
        &name,
        false,
    );
    set(
        metadata,
        "labels",
        "service.istio.io/canonical-revision",
        &revision,
        false,
    );
    let status = json!({
        "initContainers": added.init_containers,
        "containers": added.containers,
        "volumes": added.volumes,
        "imagePullSecrets": null,
        "revision": settings.revision,
    });
    set(
        metadata,
        "annotations",
        STATUS_ANNOTATION,
        &status.to_string(),
        true,
    );
    if let Some(first) = app_containers.first() {
        set(
            metadata,
            "annotations",
            "kubectl.kubernetes.io/default-container",
            first,
            false,
        );
        set(
            metadata,
            "annotations",
            "kubectl.kubernetes.io/default-logs-container",
            first,
            false,
        );
    }
}

/// Adds `name=value` to a container's environment when there is a value.
fn add_env(container: &mut Value, name: &str, value: Option<String>) {
    if let (Some(value), Some(env)) = (value, container["env"].as_array_mut()) {
        env.push(json!({"name": name, "value": value}));
    }
}

/// Sets `metadata[map][key]`, keeping an existing value unless `force`.
fn set(metadata: &mut Value, map: &str, key: &str, value: &str, force: bool) {
    if !metadata.is_object() {
        *metadata = json!({});
    }
    if !metadata.get(map).is_some_and(Value::is_object) {
        metadata[map] = json!({});
    }
    if let Some(m) = metadata.get_mut(map).and_then(Value::as_object_mut)
        && (force || !m.contains_key(key))
    {
        m.insert(key.to_owned(), json!(value));
    }
}

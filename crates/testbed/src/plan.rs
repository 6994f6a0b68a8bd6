//! What `oxmesh up` will run, decided from the manifests before anything
//! starts: a pod per replica of each Deployment (named as Kubernetes names them,
//! with an address), a VIP per Service, which namespaces get sidecars, and the
//! objects the control plane reads (every document, with Services given their
//! VIPs and the pods reported as running).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use serde_json::{Value, json};

/// Pod addresses start here (198.18.0.2 is the control plane, .3 the DNS server,
/// .4 the ingress gateway).
const FIRST_POD: u32 = 10;
pub const INGRESS_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 4);
/// The ingress gateway's VIP, as the Service `istio-ingressgateway` has it.
const INGRESS_VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 2);
/// Where the ingress gateway listens for the Service's port 80 (Istio's 8080).
pub const INGRESS_HTTP_PORT: u16 = 8080;
/// Service VIPs start at 198.19.0.10 (the DNS VIP), like kube-dns's.
pub const DNS_VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);
pub const CONTROL_PLANE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub const DNS_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);

#[derive(Clone, Debug)]
pub struct Container {
    pub name: String,
    /// `command` then `args`, with `$(VAR)` references expanded; for a built-in
    /// demo image, `oxmesh demo ...` (argv[0] `oxmesh`: the running binary).
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub readiness: Option<Probe>,
}

/// A readiness probe, as Kubernetes writes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    pub check: Check,
    pub period: std::time::Duration,
    pub initial_delay: std::time::Duration,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Check {
    /// A 2xx or 3xx answer to GET `path` on `port`.
    Http { port: u16, path: String },
    /// A TCP connection to `port`.
    Tcp { port: u16 },
    /// A command that exits 0.
    Exec(Vec<String>),
}

#[derive(Clone, Debug)]
pub struct PodPlan {
    pub name: String,
    pub namespace: String,
    pub workload: String,
    pub ip: Ipv4Addr,
    pub labels: BTreeMap<String, String>,
    pub service_account: String,
    pub injected: bool,
    /// `sidecar.istio.io/interceptionMode: TPROXY`: inbound keeps the client's
    /// address (the proxy gets CAP_NET_ADMIN for it).
    pub tproxy: bool,
    /// The ingress gateway: `oxmesh proxy --mode gateway`, no interception.
    pub gateway: bool,
    pub containers: Vec<Container>,
}

#[derive(Clone, Debug)]
pub struct ServicePort {
    pub port: u16,
    pub target: u16,
    pub tcp: bool,
}

#[derive(Clone, Debug)]
pub struct ServicePlan {
    pub name: String,
    pub namespace: String,
    pub vip: Ipv4Addr,
    pub ports: Vec<ServicePort>,
    pub selector: BTreeMap<String, String>,
}

#[derive(Debug, Default)]
pub struct Plan {
    pub pods: Vec<PodPlan>,
    pub services: Vec<ServicePlan>,
    /// Every document for the control plane, as JSON.
    pub control_plane_config: Vec<Value>,
    /// Namespaces whose new pods get sidecars.
    pub injected: BTreeSet<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("{file}: {message}")]
    Document { file: String, message: String },
    #[error("more pods than the testbed's address range holds")]
    TooManyPods,
}

impl Plan {
    /// From the documents of the manifests, each with the file it came from.
    pub fn new(documents: &[(String, Value)]) -> Result<Self, PlanError> {
        let mut plan = Plan {
            injected: injected_namespaces(documents),
            ..Plan::default()
        };
        for (file, doc) in documents {
            let kind = doc["kind"].as_str().unwrap_or_default();
            let error = |message: String| PlanError::Document {
                file: file.clone(),
                message,
            };
            match kind {
                "Deployment" | "StatefulSet" => {
                    let pods = plan.pods_for(doc).map_err(error)?;
                    plan.pods.extend(pods);
                    plan.control_plane_config.push(doc.clone());
                }
                "Service" => {
                    let (service, with_vip) = plan.service_for(doc).map_err(error)?;
                    plan.control_plane_config.push(with_vip);
                    plan.services.push(service);
                }
                "" => {}
                _ => plan.control_plane_config.push(doc.clone()),
            }
        }
        plan.add_ingress(documents);
        for pod in &plan.pods {
            plan.control_plane_config.push(pod_object(pod));
        }
        Ok(plan)
    }

    /// The ingress gateway as Istio installs it (Service port 80 → 8080, 443 →
    /// 8443, labels `istio: ingressgateway`), unless the manifests bring their own.
    fn add_ingress(&mut self, documents: &[(String, Value)]) {
        let own = documents.iter().any(|(_, d)| {
            d["kind"] == "Service" && d["metadata"]["name"] == "istio-ingressgateway"
        });
        if own {
            return;
        }
        let labels: BTreeMap<String, String> = [
            ("istio".to_owned(), "ingressgateway".to_owned()),
            ("app".to_owned(), "istio-ingressgateway".to_owned()),
        ]
        .into();
        let service = json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "istio-ingressgateway", "namespace": "istio-system"},
            "spec": {
                "clusterIP": INGRESS_VIP.to_string(),
                "selector": labels,
                "ports": [
                    {"name": "http2", "port": 80, "targetPort": INGRESS_HTTP_PORT},
                    {"name": "https", "port": 443, "targetPort": 8443},
                ],
            },
        });
        self.control_plane_config.push(service);
        self.services.push(ServicePlan {
            name: "istio-ingressgateway".into(),
            namespace: "istio-system".into(),
            vip: INGRESS_VIP,
            ports: vec![
                ServicePort {
                    port: 80,
                    target: INGRESS_HTTP_PORT,
                    tcp: true,
                },
                ServicePort {
                    port: 443,
                    target: 8443,
                    tcp: true,
                },
            ],
            selector: labels.clone(),
        });
        let name = "istio-ingressgateway";
        self.pods.push(PodPlan {
            name: format!(
                "{name}-{:010x}-{}",
                stable(name) & 0xff_ffff_ffff,
                suffix(name, 0)
            ),
            namespace: "istio-system".into(),
            workload: name.into(),
            ip: INGRESS_IP,
            labels,
            service_account: "istio-ingressgateway-service-account".into(),
            injected: false,
            tproxy: false,
            gateway: true,
            containers: Vec::new(),
        });
    }

    /// The pods of a Deployment or StatefulSet document, at addresses no pod
    /// has.
    pub fn pods_for(&self, doc: &Value) -> Result<Vec<PodPlan>, String> {
        let kind = doc["kind"].as_str().unwrap_or_default();
        let mut pods = pods_of(doc, kind, &self.injected)?;
        let mut taken: BTreeSet<Ipv4Addr> = self.pods.iter().map(|p| p.ip).collect();
        for pod in &mut pods {
            pod.ip = (FIRST_POD..)
                .map_while(pod_ip)
                .find(|ip| !taken.contains(ip))
                .ok_or_else(|| PlanError::TooManyPods.to_string())?;
            taken.insert(pod.ip);
        }
        Ok(pods)
    }

    /// A Service document's plan and its document with the VIP: the one it
    /// has if the Service is known, else a free one.
    pub fn service_for(&self, doc: &Value) -> Result<(ServicePlan, Value), String> {
        let known = self.services.iter().find(|s| {
            doc["metadata"]["name"] == s.name.as_str()
                && doc["metadata"]["namespace"].as_str().unwrap_or("default") == s.namespace
        });
        let vip = match known {
            Some(s) => s.vip,
            None => {
                let taken: BTreeSet<Ipv4Addr> = self.services.iter().map(|s| s.vip).collect();
                (11u32..65_000)
                    .map(|n| Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 19, 0, 0)) + n))
                    .find(|ip| !taken.contains(ip))
                    .ok_or("no Service address left")?
            }
        };
        let service = service_of(doc, vip)?;
        let mut with_vip = doc.clone();
        with_vip["spec"]["clusterIP"] = json!(vip.to_string());
        Ok((service, with_vip))
    }

    /// Endpoints of a Service: the pods its selector picks, on each port.
    pub fn endpoints(&self, service: &ServicePlan) -> Vec<&PodPlan> {
        self.pods
            .iter()
            .filter(|p| {
                p.namespace == service.namespace
                    && !service.selector.is_empty()
                    && service
                        .selector
                        .iter()
                        .all(|(k, v)| p.labels.get(k) == Some(v))
            })
            .collect()
    }
}

fn pod_ip(n: u32) -> Option<Ipv4Addr> {
    (n < 65_000).then(|| Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + n))
}

fn injected_namespaces(documents: &[(String, Value)]) -> BTreeSet<String> {
    documents
        .iter()
        .filter(|(_, d)| d["kind"] == "Namespace" && asks_for_injection(d))
        .filter_map(|(_, d)| d["metadata"]["name"].as_str().map(str::to_owned))
        .collect()
}

/// A Namespace labelled `istio-injection=enabled` or `istio.io/rev`.
pub fn asks_for_injection(namespace: &Value) -> bool {
    let labels = &namespace["metadata"]["labels"];
    labels["istio-injection"] == "enabled" || labels.get("istio.io/rev").is_some()
}

fn strings(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

fn pods_of(doc: &Value, kind: &str, injected: &BTreeSet<String>) -> Result<Vec<PodPlan>, String> {
    let name = doc["metadata"]["name"]
        .as_str()
        .ok_or("a workload without metadata.name")?;
    let namespace = doc["metadata"]["namespace"].as_str().unwrap_or("default");
    let template = &doc["spec"]["template"];
    let labels = strings(&template["metadata"]["labels"]);
    let annotations = strings(&template["metadata"]["annotations"]);
    // The pod's label wins over its annotation, as Istio's injector decides.
    let opt = labels
        .get("sidecar.istio.io/inject")
        .or_else(|| annotations.get("sidecar.istio.io/inject"));
    let injected = match opt.map(String::as_str) {
        Some("false") => false,
        Some("true") => true,
        _ => injected.contains(namespace),
    } && template["spec"]["hostNetwork"] != true;
    let tproxy = match annotations
        .get("sidecar.istio.io/interceptionMode")
        .map(String::as_str)
    {
        None | Some("REDIRECT") => false,
        Some("TPROXY") => true,
        Some(other) => {
            return Err(format!(
                "{kind} {namespace}/{name}: spec.template.metadata.annotations[sidecar.istio.io/interceptionMode]: {other:?} is not REDIRECT or TPROXY"
            ));
        }
    };
    let replicas = doc["spec"]["replicas"].as_u64().unwrap_or(1);
    let account = template["spec"]["serviceAccountName"]
        .as_str()
        .unwrap_or("default");
    let hash = format!("{:010x}", stable(name) & 0xff_ffff_ffff);
    (0..replicas)
        .map(|i| {
            let pod_name = if kind == "StatefulSet" {
                format!("{name}-{i}")
            } else {
                format!("{name}-{}-{}", &hash[..10], suffix(name, i))
            };
            Ok(PodPlan {
                containers: containers(&template["spec"], &pod_name, namespace)?,
                name: pod_name,
                namespace: namespace.to_owned(),
                workload: name.to_owned(),
                ip: Ipv4Addr::UNSPECIFIED,
                labels: labels.clone(),
                service_account: account.to_owned(),
                injected,
                tproxy,
                gateway: false,
            })
        })
        .collect()
}

pub(crate) fn stable(s: &str) -> u64 {
    // FNV-1a: the same names in every run.
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// Kubernetes' five characters from its safe alphabet.
fn suffix(name: &str, replica: u64) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut n = stable(&format!("{name}/{replica}"));
    (0..5)
        .map(|_| {
            let c = ALPHABET[(n % ALPHABET.len() as u64) as usize] as char;
            n /= ALPHABET.len() as u64;
            c
        })
        .collect()
}

fn containers(spec: &Value, pod: &str, namespace: &str) -> Result<Vec<Container>, String> {
    let list = spec["containers"]
        .as_array()
        .ok_or("a pod template without containers")?;
    list.iter()
        .map(|c| {
            let name = c["name"].as_str().unwrap_or("app").to_owned();
            let mut env: Vec<(String, String)> = vec![
                ("HOSTNAME".into(), pod.to_owned()),
                ("POD_NAME".into(), pod.to_owned()),
                ("POD_NAMESPACE".into(), namespace.to_owned()),
            ];
            for e in c["env"].as_array().into_iter().flatten() {
                if let (Some(k), Some(v)) = (e["name"].as_str(), e["value"].as_str()) {
                    env.push((k.to_owned(), v.to_owned()));
                }
            }
            let words: Vec<String> = c["command"]
                .as_array()
                .into_iter()
                .flatten()
                .chain(c["args"].as_array().into_iter().flatten())
                .filter_map(|w| w.as_str().map(|w| expand(w, &env)))
                .collect();
            let words = if words.is_empty() {
                demo_command(c).ok_or_else(|| {
                    format!(
                        "container {name:?} has no command and its image {:?} is not a built-in demo: the testbed runs commands, not images",
                        c["image"].as_str().unwrap_or_default()
                    )
                })?
            } else {
                words
            };
            Ok(Container {
                readiness: probe(&c["readinessProbe"], c)?,
                name,
                argv: words,
                env,
            })
        })
        .collect()
}

/// The program `oxmesh up` runs for the images it knows: bookinfo's
/// (`.../examples-bookinfo-<service>-v<N>`), `echo` (or `httpbin`), `tcp-echo`
/// (or Istio's `tcp-echo-server`) and `greeter`, under any registry and tag.
/// `oxmesh` stands for the running binary.
fn demo_command(container: &Value) -> Option<Vec<String>> {
    let image = container["image"].as_str()?;
    let name = image.rsplit('/').next()?.split(':').next()?;
    let port = container["ports"][0]["containerPort"].as_u64();
    let words = |w: &[&str]| w.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    if let Some(rest) = name.strip_prefix("examples-bookinfo-") {
        let (service, version) = rest.rsplit_once('-')?;
        let port = port.unwrap_or(9080).to_string();
        return Some(words(&[
            "oxmesh",
            "demo",
            "bookinfo",
            service,
            "--version",
            version,
            "--port",
            &port,
        ]));
    }
    let (app, default_port) = match name {
        "echo" | "httpbin" => ("echo", 8080),
        "tcp-echo" | "tcp-echo-server" => ("tcp-echo", 9000),
        "greeter" | "grpc-greeter" => ("greeter", 50051),
        _ => return None,
    };
    let port = port.unwrap_or(default_port).to_string();
    Some(words(&["oxmesh", "demo", app, "--port", &port]))
}

/// A container's `readinessProbe`; a named port is looked up in its `ports`.
fn probe(p: &Value, container: &Value) -> Result<Option<Probe>, String> {
    if p.is_null() {
        return Ok(None);
    }
    let port = |v: &Value| -> Result<u16, String> {
        if let Some(n) = v.as_u64() {
            return u16::try_from(n).map_err(|_| format!("probe port {n} is out of range"));
        }
        let name = v.as_str().unwrap_or_default();
        container["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == name)
            .and_then(|p| p["containerPort"].as_u64())
            .and_then(|n| u16::try_from(n).ok())
            .ok_or_else(|| {
                format!("readinessProbe names port {name:?}, which the container does not declare")
            })
    };
    let check = if !p["httpGet"].is_null() {
        Check::Http {
            port: port(&p["httpGet"]["port"])?,
            path: p["httpGet"]["path"].as_str().unwrap_or("/").to_owned(),
        }
    } else if !p["tcpSocket"].is_null() {
        Check::Tcp {
            port: port(&p["tcpSocket"]["port"])?,
        }
    } else if let Some(command) = p["exec"]["command"].as_array() {
        Check::Exec(
            command
                .iter()
                .filter_map(|w| w.as_str().map(str::to_owned))
                .collect(),
        )
    } else {
        return Err("readinessProbe: only httpGet, tcpSocket and exec are supported".to_owned());
    };
    let seconds = |key: &str, default: u64| {
        std::time::Duration::from_secs(p[key].as_u64().unwrap_or(default))
    };
    Ok(Some(Probe {
        check,
        period: seconds("periodSeconds", 10),
        initial_delay: seconds("initialDelaySeconds", 0),
    }))
}

/// `$(VAR)` as Kubernetes expands it in commands.
fn expand(word: &str, env: &[(String, String)]) -> String {
    let mut out = word.to_owned();
    for (k, v) in env {
        out = out.replace(&format!("$({k})"), v);
    }
    out
}

fn service_of(doc: &Value, vip: Ipv4Addr) -> Result<ServicePlan, String> {
    let name = doc["metadata"]["name"]
        .as_str()
        .ok_or("a Service without a name")?;
    let ports = doc["spec"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            let port = u16::try_from(p["port"].as_u64()?).ok()?;
            let target = p["targetPort"]
                .as_u64()
                .and_then(|t| u16::try_from(t).ok())
                .unwrap_or(port);
            let tcp = p["protocol"].as_str().is_none_or(|s| s == "TCP");
            Some(ServicePort { port, target, tcp })
        })
        .collect();
    Ok(ServicePlan {
        name: name.to_owned(),
        namespace: doc["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_owned(),
        vip,
        ports,
        selector: strings(&doc["spec"]["selector"]),
    })
}

/// The pod as the control plane sees it: running, ready, with its address.
pub fn pod_object(pod: &PodPlan) -> Value {
    let mut labels: serde_json::Map<String, Value> = pod
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    if pod.injected || pod.gateway {
        labels.insert("security.istio.io/tlsMode".into(), json!("istio"));
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": pod.name, "namespace": pod.namespace, "labels": labels},
        "spec": {
            "serviceAccountName": pod.service_account,
            "containers": pod.containers.iter().map(|c| json!({"name": c.name, "image": "testbed"})).collect::<Vec<_>>(),
        },
        "status": {
            "phase": "Running",
            "podIP": pod.ip.to_string(),
            // Probed pods start unready, as in Kubernetes.
            "conditions": [{"type": "Ready", "status": if pod.containers.iter().any(|c| c.readiness.is_some()) { "False" } else { "True" }}],
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(annotations: Value) -> Vec<(String, Value)> {
        let doc = serde_json::json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "echo", "namespace": "demo"},
            "spec": {"template": {
                "metadata": {
                    "labels": {"app": "echo", "sidecar.istio.io/inject": "true"},
                    "annotations": annotations,
                },
                "spec": {"containers": [{"name": "echo", "image": "echo"}]},
            }},
        });
        vec![("app.yaml".to_owned(), doc)]
    }

    fn mode(value: &str) -> Value {
        serde_json::json!({"sidecar.istio.io/interceptionMode": value})
    }

    #[test]
    fn the_interception_mode_annotation_is_read_and_checked() {
        let plan = Plan::new(&deployment(mode("TPROXY"))).expect("plan");
        assert!(
            plan.pods
                .iter()
                .any(|p| p.workload == "echo" && p.tproxy && p.injected)
        );
        let plan = Plan::new(&deployment(serde_json::json!({}))).expect("plan");
        assert!(plan.pods.iter().any(|p| p.workload == "echo" && !p.tproxy));
        let error = Plan::new(&deployment(mode("NAT")))
            .expect_err("refused")
            .to_string();
        assert!(
            error.starts_with("app.yaml: Deployment demo/echo: spec.template.metadata.annotations[sidecar.istio.io/interceptionMode]: \"NAT\""),
            "{error}"
        );
    }
}

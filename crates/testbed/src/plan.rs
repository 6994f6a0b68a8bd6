//! What `oxmesh up` will run, decided from the manifests before anything
//! starts: a pod per replica of each Deployment (named as Kubernetes names them,
//! with an address), a VIP per Service, which namespaces get sidecars, and the
//! objects the control plane reads (every document, with Services given their
//! VIPs and the pods reported as running).

pub mod rollout;
mod workload;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::time::Duration;

use serde_json::{Value, json};

pub use workload::{WorkloadKind, WorkloadPlan};

/// Pod addresses start here (198.18.0.2 is the control plane, .3 the DNS server,
/// .4 the ingress gateway, .5 the node proxy).
const FIRST_POD: u32 = 10;
/// The node proxy's pod (ambient mode's ztunnel on the testbed's node).
pub const NODE_PROXY_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 5);
/// The testbed's one node: every pod's `spec.nodeName`.
pub const NODE: &str = "node-1";
/// Istio's label enrolling a namespace (or a pod) in ambient mode, or, set
/// to `none`, keeping a pod out.
pub const DATAPLANE_MODE_LABEL: &str = "istio.io/dataplane-mode";
/// The annotation Istio's CNI agent writes on a pod it has enrolled; the
/// workload API says HBONE for such a pod.
pub const REDIRECTION_ANNOTATION: &str = "ambient.istio.io/redirection";
pub const INGRESS_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 4);
/// The ingress gateway's VIP, as the Service `istio-ingressgateway` has it.
const INGRESS_VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 2);
/// Where the ingress gateway listens for the Service's port 80 (Istio's 8080).
pub const INGRESS_HTTP_PORT: u16 = 8080;
/// Where it listens for the Service's port 443 (Istio's 8443).
pub const INGRESS_HTTPS_PORT: u16 = 8443;
/// Service VIPs start at 198.19.0.10 (the DNS VIP), like kube-dns's.
pub const DNS_VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);
/// The default revision's control plane; other revisions' take pod addresses.
pub const CONTROL_PLANE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// The unnamed revision, as `istio.io/rev` and `--revision` call it.
pub const DEFAULT_REVISION: &str = "default";
/// The label naming the control-plane revision that injects a namespace or pod.
pub const REVISION_LABEL: &str = "istio.io/rev";

/// Namespaces with injection labels: the control-plane revision that injects
/// their new pods, or none when they are labelled against injection (where a
/// pod's own `istio.io/rev` does not count either, as Istio's webhooks select).
pub type Injection = BTreeMap<String, Option<String>>;
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

/// A pod's identity: as in Kubernetes, its namespace and its name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodId {
    pub namespace: String,
    pub name: String,
}

impl PodId {
    pub fn new(namespace: &str, name: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }

    /// The pod in names that allow no `/` (network namespaces, files): a
    /// namespace holds no dot, so the first one separates the two.
    pub fn flat(&self) -> String {
        format!("{}.{}", self.namespace, self.name)
    }
}

impl fmt::Display for PodId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[derive(Clone, Debug)]
pub struct PodPlan {
    pub name: String,
    pub namespace: String,
    pub workload: String,
    pub ip: Ipv4Addr,
    pub labels: BTreeMap<String, String>,
    /// The pod template's annotations, as written (before injection).
    pub annotations: BTreeMap<String, String>,
    pub service_account: String,
    pub injected: bool,
    /// The control-plane revision its proxy was injected by and connects to.
    pub control_plane: String,
    /// `sidecar.istio.io/interceptionMode: TPROXY`: inbound keeps the client's
    /// address (the proxy gets CAP_NET_ADMIN for it).
    pub tproxy: bool,
    /// A gateway (the built-in ingress, or a pod with Istio's `gateway`
    /// injection template): `oxmesh proxy --mode gateway`, no interception.
    pub gateway: bool,
    pub containers: Vec<Container>,
    /// The hash of the pod template it was made from.
    pub revision: String,
    /// How long its processes have after SIGTERM.
    pub grace: Duration,
    /// Being deleted: out of its Services' endpoints while its processes stop.
    pub terminating: bool,
}

impl PodPlan {
    pub fn id(&self) -> PodId {
        PodId::new(&self.namespace, &self.name)
    }

    /// The ingress gateway the testbed adds itself: no workload owns it.
    pub fn is_builtin_ingress(&self) -> bool {
        self.gateway && self.ip == INGRESS_IP
    }

    /// Whether readiness waits for a probe: an app's, or the sidecar's (its
    /// `/healthz/ready`, as the injected istio-proxy container declares).
    pub fn probed(&self) -> bool {
        self.injected || self.gateway || self.containers.iter().any(|c| c.readiness.is_some())
    }
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
    /// The Deployments and StatefulSets as last applied.
    pub workloads: Vec<WorkloadPlan>,
    pub services: Vec<ServicePlan>,
    /// Every document for the control plane, as JSON.
    pub control_plane_config: Vec<Value>,
    /// Namespaces whose new pods get sidecars, and by which revision.
    pub injected: Injection,
    /// Namespaces labelled `istio.io/dataplane-mode: ambient`.
    pub ambient: BTreeSet<String>,
    /// Each control plane's revision and address: the default one, and one
    /// per IstioOperator naming a `spec.revision`.
    pub control_planes: BTreeMap<String, Ipv4Addr>,
    /// Where the next pod address is looked for.
    next_pod: u32,
    /// Every pod name given out: a new pod never takes an old one's (whose
    /// logs and metrics are still about the old pod), as Kubernetes' random
    /// suffixes see to.
    named: BTreeSet<PodId>,
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
        // Gateways of class `istio` bring their Deployment and Service.
        let documents: Vec<(String, Value)> = documents
            .iter()
            .flat_map(|(file, doc)| {
                std::iter::once((file.clone(), doc.clone())).chain(
                    oxmesh_config::gateway_api::deployment::derived(doc, |c| {
                        c == oxmesh_config::gateway_api::CLASS
                    })
                    .into_iter()
                    .map(|d| (file.clone(), d)),
                )
            })
            .collect();
        let documents = documents.as_slice();
        let mut plan = Plan {
            injected: injected_namespaces(documents),
            ambient: ambient_namespaces(documents),
            control_planes: [(DEFAULT_REVISION.to_owned(), CONTROL_PLANE_IP)].into(),
            ..Plan::default()
        };
        for (file, doc) in documents {
            if let Some(revision) = installed_revision(doc) {
                plan.add_control_plane(&revision)
                    .map_err(|message| PlanError::Document {
                        file: file.clone(),
                        message,
                    })?;
            }
        }
        for (file, doc) in documents {
            let kind = doc["kind"].as_str().unwrap_or_default();
            let error = |message: String| PlanError::Document {
                file: file.clone(),
                message,
            };
            match kind {
                "Deployment" | "StatefulSet" => {
                    let workload = plan.workload_plan(doc).map_err(error)?;
                    for ordinal in 0..workload.replicas {
                        let pod = plan.new_pod(&workload, ordinal).map_err(error)?;
                        plan.pods.push(pod);
                    }
                    plan.workloads.push(workload);
                    plan.control_plane_config.push(doc.clone());
                }
                "Service" => {
                    let (service, with_vip) = plan.service_for(doc).map_err(error)?;
                    plan.control_plane_config.push(with_vip);
                    plan.services.push(service);
                }
                // The installation is the testbed's business, not the mesh config's.
                "" | "IstioOperator" => {}
                _ => plan.control_plane_config.push(doc.clone()),
            }
        }
        plan.add_ingress(documents);
        plan.add_gateway_class(documents);
        for pod in &plan.pods {
            let object = pod_object(pod, plan.is_ambient(pod));
            plan.control_plane_config.push(object);
        }
        Ok(plan)
    }

    /// The GatewayClass `istio`, as installing Istio makes it, unless the
    /// manifests bring their own.
    fn add_gateway_class(&mut self, documents: &[(String, Value)]) {
        let own = documents
            .iter()
            .any(|(_, d)| d["kind"] == "GatewayClass" && d["metadata"]["name"] == "istio");
        if !own {
            self.control_plane_config
                .push(oxmesh_config::gateway_api::deployment::default_class());
        }
    }

    /// The ingress gateway as Istio's demo profile installs it (Service port
    /// 80 → 8080, 443 → 8443, `tcp` 31400 and `tls` 15443, labels `istio:
    /// ingressgateway`), unless the manifests bring their own.
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
                    {"name": "https", "port": 443, "targetPort": INGRESS_HTTPS_PORT},
                    {"name": "tcp", "port": 31400, "targetPort": 31400},
                    {"name": "tls", "port": 15443, "targetPort": 15443},
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
                    target: INGRESS_HTTPS_PORT,
                    tcp: true,
                },
                ServicePort {
                    port: 31400,
                    target: 31400,
                    tcp: true,
                },
                ServicePort {
                    port: 15443,
                    target: 15443,
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
                workload::suffix(stable(&format!("{name}/0")))
            ),
            namespace: "istio-system".into(),
            workload: name.into(),
            ip: INGRESS_IP,
            labels,
            annotations: BTreeMap::new(),
            service_account: "istio-ingressgateway-service-account".into(),
            injected: false,
            control_plane: DEFAULT_REVISION.into(),
            tproxy: false,
            gateway: true,
            containers: Vec::new(),
            revision: String::new(),
            grace: Duration::from_secs(5),
            terminating: false,
        });
    }

    /// A new pod of `workload` (`ordinal` names a StatefulSet's), at an address
    /// no pod has, terminating ones included, and with a name no pod of its
    /// namespace has.
    ///
    /// Addresses are handed out in turn, not the lowest free one: a pod's
    /// address coming back at once to a new pod would meet the other pods'
    /// neighbour caches still holding the old pod's link address, and its
    /// first connections would time out.
    pub fn new_pod(&mut self, workload: &WorkloadPlan, ordinal: usize) -> Result<PodPlan, String> {
        // Checked before a name and an address are taken for good.
        let check = workload.pod("check", Ipv4Addr::UNSPECIFIED, &self.injected)?;
        self.check_control_plane(workload, &check)?;
        let ip = self.next_address()?;
        // A StatefulSet's pod comes back under its name, as in Kubernetes.
        let name = workload.pod_name(ordinal, |name| {
            self.named.contains(&PodId::new(&workload.namespace, name))
        });
        self.named.insert(PodId::new(&workload.namespace, &name));
        workload.pod(&name, ip, &self.injected)
    }

    /// A Deployment or StatefulSet document's plan, refused when its pods
    /// could not be made or would ask for a revision no control plane serves.
    pub fn workload_plan(&self, doc: &Value) -> Result<WorkloadPlan, String> {
        let workload = WorkloadPlan::from_doc(doc, &self.injected)?;
        let pod = workload.pod("check", Ipv4Addr::UNSPECIFIED, &self.injected)?;
        self.check_control_plane(&workload, &pod)?;
        Ok(workload)
    }

    /// Kubernetes would leave such a pod without a sidecar, silently: the
    /// testbed says why instead.
    fn check_control_plane(&self, workload: &WorkloadPlan, pod: &PodPlan) -> Result<(), String> {
        if !(pod.injected || pod.gateway) || self.control_planes.contains_key(&pod.control_plane) {
            return Ok(());
        }
        Err(format!(
            "{} {}/{}: its pods ask for {REVISION_LABEL}={}, and no control plane of that revision is installed (apply an IstioOperator with spec.revision: {})",
            workload.kind.as_str(),
            workload.namespace,
            workload.name,
            pod.control_plane,
            pod.control_plane
        ))
    }

    /// Whether `pod` runs in ambient mode, as Istio decides: not with a
    /// sidecar and not a gateway; then its own `istio.io/dataplane-mode`
    /// label (`none` keeps it out), else its namespace's.
    pub fn is_ambient(&self, pod: &PodPlan) -> bool {
        if pod.injected || pod.gateway {
            return false;
        }
        match pod.labels.get(DATAPLANE_MODE_LABEL).map(String::as_str) {
            Some("ambient") => true,
            Some(_) => false,
            None => self.ambient.contains(&pod.namespace),
        }
    }

    /// The next pod address no pod or control plane has.
    fn next_address(&mut self) -> Result<Ipv4Addr, String> {
        let taken: BTreeSet<Ipv4Addr> = self
            .pods
            .iter()
            .map(|p| p.ip)
            .chain(self.control_planes.values().copied())
            .collect();
        let start = self.next_pod.max(FIRST_POD);
        let n = (start..LAST_POD)
            .chain(FIRST_POD..start)
            .find(|n| pod_ip(*n).is_some_and(|ip| !taken.contains(&ip)))
            .ok_or_else(|| PlanError::TooManyPods.to_string())?;
        self.next_pod = n + 1;
        pod_ip(n).ok_or_else(|| PlanError::TooManyPods.to_string())
    }

    /// A control plane for `revision`, with an address of its own; the
    /// address it has if it is already planned.
    pub fn add_control_plane(&mut self, revision: &str) -> Result<Ipv4Addr, String> {
        if let Some(ip) = self.control_planes.get(revision) {
            return Ok(*ip);
        }
        let ip = self.next_address()?;
        self.control_planes.insert(revision.to_owned(), ip);
        Ok(ip)
    }

    /// The workload `kind` `namespace/name`, as last applied.
    pub fn workload(
        &self,
        kind: WorkloadKind,
        namespace: &str,
        name: &str,
    ) -> Option<&WorkloadPlan> {
        self.workloads
            .iter()
            .find(|w| w.kind == kind && w.namespace == namespace && w.name == name)
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
                !p.terminating
                    && p.namespace == service.namespace
                    && !service.selector.is_empty()
                    && service
                        .selector
                        .iter()
                        .all(|(k, v)| p.labels.get(k) == Some(v))
            })
            .collect()
    }
}

/// Pod addresses end here (the rest of 198.18.0.0/16 is left alone).
const LAST_POD: u32 = 65_000;

fn pod_ip(n: u32) -> Option<Ipv4Addr> {
    (n < LAST_POD).then(|| Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + n))
}

fn ambient_namespaces(documents: &[(String, Value)]) -> BTreeSet<String> {
    documents
        .iter()
        .filter(|(_, d)| d["kind"] == "Namespace" && namespace_ambient(d))
        .filter_map(|(_, d)| d["metadata"]["name"].as_str().map(str::to_owned))
        .collect()
}

/// Whether a Namespace is labelled into ambient mode.
pub fn namespace_ambient(namespace: &Value) -> bool {
    namespace["metadata"]["labels"][DATAPLANE_MODE_LABEL] == "ambient"
}

fn injected_namespaces(documents: &[(String, Value)]) -> Injection {
    documents
        .iter()
        .filter(|(_, d)| d["kind"] == "Namespace")
        .filter_map(|(_, d)| {
            let name = d["metadata"]["name"].as_str()?;
            Some((name.to_owned(), namespace_injection(d)?))
        })
        .collect()
}

/// What a Namespace's labels say of injection: `None` without injection
/// labels; else the revision injecting its pods, the default one for
/// `istio-injection=enabled` (which wins over `istio.io/rev`, as in Istio),
/// the one `istio.io/rev` names, or none for `istio-injection` set otherwise.
pub fn namespace_injection(namespace: &Value) -> Option<Option<String>> {
    let labels = &namespace["metadata"]["labels"];
    match labels["istio-injection"].as_str() {
        Some("enabled") => Some(Some(DEFAULT_REVISION.to_owned())),
        Some(_) => Some(None),
        None => labels[REVISION_LABEL].as_str().map(|r| Some(r.to_owned())),
    }
}

/// The revision an IstioOperator installs: its `spec.revision`, when it names
/// one other than the default (the default control plane always runs).
pub fn installed_revision(doc: &Value) -> Option<String> {
    if doc["kind"] != "IstioOperator" {
        return None;
    }
    doc["spec"]["revision"]
        .as_str()
        .filter(|r| !r.is_empty() && *r != DEFAULT_REVISION)
        .map(str::to_owned)
}

pub(crate) fn stable(s: &str) -> u64 {
    // FNV-1a: the same names in every run.
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
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

/// The pod as the control plane sees it: running, ready, with its address,
/// on the testbed's node, and annotated as Istio's CNI agent does when it
/// runs in ambient mode.
pub fn pod_object(pod: &PodPlan, ambient: bool) -> Value {
    let mut labels: serde_json::Map<String, Value> = pod
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    // Gateways take plaintext on their servers: Istio's gateway template
    // leaves them unlabelled, so auto mTLS sends them what the client sent.
    if pod.injected {
        labels.insert("security.istio.io/tlsMode".into(), json!("istio"));
    }
    let annotations = if ambient {
        json!({REDIRECTION_ANNOTATION: "enabled"})
    } else {
        json!({})
    };
    let mut metadata = json!({
        "name": pod.name, "namespace": pod.namespace,
        "annotations": annotations,
    });
    // A Deployment's pod, as its ReplicaSet makes it: what the control
    // plane names the workload by.
    let replica_set = format!("{}-{}", pod.workload, pod.revision);
    if !pod.revision.is_empty() && pod.name.starts_with(&format!("{replica_set}-")) {
        labels.insert("pod-template-hash".into(), json!(pod.revision));
        metadata["generateName"] = json!(format!("{replica_set}-"));
        metadata["ownerReferences"] = json!([{
            "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": replica_set,
            "uid": replica_set, "controller": true,
        }]);
    }
    metadata["labels"] = json!(labels);
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": {
            "nodeName": NODE,
            "serviceAccountName": pod.service_account,
            "containers": pod.containers.iter().map(|c| json!({"name": c.name, "image": "testbed"})).collect::<Vec<_>>(),
        },
        "status": {
            "phase": "Running",
            "podIP": pod.ip.to_string(),
            // Probed pods (a sidecar has its probe) start unready, as in
            // Kubernetes.
            "conditions": [{"type": "Ready", "status": if pod.probed() { "False" } else { "True" }}],
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

    fn namespace(labels: Value) -> (String, Value) {
        let doc = serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "demo", "labels": labels},
        });
        ("ns.yaml".to_owned(), doc)
    }

    #[test]
    fn a_revision_injects_a_namespace_when_an_istio_operator_installs_it() {
        let mut docs = deployment(Value::Null);
        docs[0].1["spec"]["template"]["metadata"]["labels"] = serde_json::json!({"app": "echo"});
        docs.push(namespace(serde_json::json!({"istio.io/rev": "canary"})));
        let refused = Plan::new(&docs).expect_err("no canary control plane");
        assert!(
            refused.to_string().contains("istio.io/rev=canary")
                && refused.to_string().contains("spec.revision: canary"),
            "{refused}"
        );
        let operator = serde_json::json!({
            "apiVersion": "install.istio.io/v1alpha1", "kind": "IstioOperator",
            "metadata": {"name": "canary", "namespace": "istio-system"},
            "spec": {"revision": "canary"},
        });
        docs.push(("canary.yaml".to_owned(), operator));
        let plan = Plan::new(&docs).expect("plan");
        let pod = plan
            .pods
            .iter()
            .find(|p| p.workload == "echo")
            .expect("pod");
        assert!(pod.injected);
        assert_eq!(pod.control_plane, "canary");
        let canary = plan.control_planes["canary"];
        assert!(canary != CONTROL_PLANE_IP && canary != pod.ip, "{canary}");
        assert!(
            !plan
                .control_plane_config
                .iter()
                .any(|d| d["kind"] == "IstioOperator"),
            "the installation is not mesh config"
        );

        // `istio-injection=enabled` wins over the revision label, as in Istio.
        docs[1] =
            namespace(serde_json::json!({"istio.io/rev": "canary", "istio-injection": "enabled"}));
        let plan = Plan::new(&docs).expect("plan");
        let pod = plan
            .pods
            .iter()
            .find(|p| p.workload == "echo")
            .expect("pod");
        assert_eq!(pod.control_plane, DEFAULT_REVISION);
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

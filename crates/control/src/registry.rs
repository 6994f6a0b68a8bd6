//! The service registry: every service of the mesh and the endpoints behind each
//! of its ports, from Pods, EndpointSlices, WorkloadEntries and ServiceEntries.

use std::collections::HashMap;
use std::sync::Arc;

use oxmesh_config::hostname::Hostname;
use oxmesh_config::networking::workload_entry::WorkloadEntry;
use oxmesh_config::object::{Object, Resource};
use oxmesh_config::pod::Pod;
use oxmesh_config::selector::Labels;
use oxmesh_config::service::{Resolution, Service, ServicePort, TargetPort, services};

use crate::locality::Locality;
use crate::mesh_config::MeshConfig;

/// The label Istio puts on workloads that have a sidecar: clients may use mTLS.
pub const TLS_MODE_LABEL: &str = "security.istio.io/tlsMode";
/// Written by Istio's CNI agent once it captures a pod's traffic (ambient).
const REDIRECTION_ANNOTATION: &str = "ambient.istio.io/redirection";
/// A workload that takes HBONE itself (`http` in its list).
const TUNNEL_LABEL: &str = "networking.istio.io/tunnel";

/// Whether Istio's CNI captured the pod for ambient mode.
pub(crate) fn redirected(object: &Object) -> bool {
    object
        .meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(REDIRECTION_ANNOTATION))
        .is_some_and(|v| v == "enabled")
}

/// Whether the workload's labels say it takes HBONE itself.
pub(crate) fn speaks_hbone(labels: &Labels) -> bool {
    labels
        .get(TUNNEL_LABEL)
        .is_some_and(|v| v.split(',').any(|t| t.trim() == "http"))
}

#[derive(Clone, Debug, PartialEq)]
pub struct Endpoint {
    /// An IP, or a host name to resolve (DNS services).
    pub address: String,
    pub port: u16,
    pub labels: Labels,
    /// The workload's SPIFFE id, when known.
    pub identity: Option<String>,
    pub namespace: String,
    pub workload: String,
    pub locality: Locality,
    pub network: String,
    pub weight: u32,
    pub healthy: bool,
    /// The workload has a sidecar: it accepts mesh mTLS.
    pub mtls: bool,
    /// It takes HBONE on 15008 (ambient, or a proxy that speaks it).
    pub tunnel: bool,
}

#[derive(Debug)]
struct PortEndpoints {
    namespace: String,
    port: u16,
    endpoints: Vec<Endpoint>,
}

#[derive(Debug, Default)]
pub struct Registry {
    pub services: Vec<Arc<Service>>,
    /// Endpoints by host, then by (service namespace, port): several namespaces
    /// may define one host, each with its own workloads.
    endpoints: HashMap<Hostname, Vec<PortEndpoints>>,
}

impl Registry {
    pub fn build(objects: &[Arc<Object>], mesh: &MeshConfig) -> Self {
        let plain: Vec<&Object> = objects.iter().map(AsRef::as_ref).collect();
        let services: Vec<Arc<Service>> = services(&plain, &mesh.domain)
            .into_iter()
            .map(Arc::new)
            .collect();
        let index = Index::new(&plain);
        let mut endpoints: HashMap<Hostname, Vec<PortEndpoints>> = HashMap::new();
        for service in &services {
            let sources = index.sources(service);
            for port in &service.ports {
                let list = endpoints_of(service, port, &sources, mesh);
                endpoints
                    .entry(service.hostname.clone())
                    .or_default()
                    .push(PortEndpoints {
                        namespace: service.namespace.clone(),
                        port: port.number,
                        endpoints: list,
                    });
            }
        }
        Self {
            services,
            endpoints,
        }
    }

    /// The endpoints behind one port of `service`.
    pub fn endpoints(&self, service: &Service, port: u16) -> &[Endpoint] {
        self.endpoints
            .get(&service.hostname)
            .and_then(|ports| {
                ports
                    .iter()
                    .find(|p| p.port == port && p.namespace == service.namespace)
            })
            .map_or(&[], |p| p.endpoints.as_slice())
    }

    /// Services defined for exactly this host (several namespaces may define one).
    pub fn services_for(&self, host: &Hostname) -> impl Iterator<Item = &Arc<Service>> {
        self.services.iter().filter(move |s| &s.hostname == host)
    }
}

/// The objects endpoints come from, indexed once per build: workloads by
/// namespace and label, ServiceEntries by name, EndpointSlices by the service
/// they serve.
struct Index<'a> {
    workloads: HashMap<(&'a str, &'a str, &'a str), Vec<&'a Object>>,
    entries: HashMap<(&'a str, &'a str), &'a Object>,
    slices: HashMap<(&'a str, &'a str), Vec<&'a Object>>,
    nodes: HashMap<&'a str, &'a Object>,
}

/// What one service's endpoints are made from.
struct Sources<'a> {
    workloads: Vec<&'a Object>,
    entry: Option<&'a Object>,
    slices: &'a [&'a Object],
    /// Nodes by name: a pod's locality is its node's.
    nodes: &'a HashMap<&'a str, &'a Object>,
}

impl<'a> Index<'a> {
    fn new(objects: &[&'a Object]) -> Self {
        let mut index = Index {
            workloads: HashMap::new(),
            entries: HashMap::new(),
            slices: HashMap::new(),
            nodes: HashMap::new(),
        };
        for object in objects {
            let namespace = object.namespace().unwrap_or_default();
            match &object.resource {
                Resource::Pod(_) | Resource::WorkloadEntry(_) => {
                    for (key, value) in workload_labels(object).into_iter().flatten() {
                        index
                            .workloads
                            .entry((namespace, key.as_str(), value.as_str()))
                            .or_default()
                            .push(object);
                    }
                }
                Resource::ServiceEntry(_) => {
                    index.entries.insert((namespace, object.name()), object);
                }
                Resource::Node => {
                    index.nodes.insert(object.name(), object);
                }
                Resource::EndpointSlice(_) => {
                    let service = object
                        .meta
                        .labels
                        .as_ref()
                        .and_then(|l| l.get("kubernetes.io/service-name"));
                    if let Some(service) = service {
                        index
                            .slices
                            .entry((namespace, service.as_str()))
                            .or_default()
                            .push(object);
                    }
                }
                _ => {}
            }
        }
        index
    }

    fn sources<'s>(&'s self, service: &'s Service) -> Sources<'s> {
        // Candidates share the selector's first label; the rest is checked on them.
        let first = service.selector.as_ref().and_then(|s| s.iter().next());
        let workloads = first
            .and_then(|(key, value)| {
                self.workloads
                    .get(&(service.namespace.as_str(), key.as_str(), value.as_str()))
            })
            .map(|list| {
                list.iter()
                    .copied()
                    .filter(|o| service_selects(service, o))
                    .collect()
            })
            .unwrap_or_default();
        let entry = (service.source.kind == oxmesh_config::Kind::ServiceEntry)
            .then(|| {
                self.entries
                    .get(&(service.namespace.as_str(), service.source.name.as_str()))
                    .copied()
            })
            .flatten();
        let slices = self
            .slices
            .get(&(service.namespace.as_str(), service.name.as_str()))
            .map_or(&[][..], Vec::as_slice);
        Sources {
            workloads,
            entry,
            slices,
            nodes: &self.nodes,
        }
    }
}

fn endpoints_of(
    service: &Service,
    port: &ServicePort,
    sources: &Sources<'_>,
    mesh: &MeshConfig,
) -> Vec<Endpoint> {
    let listed = sources.entry.is_some_and(
        |o| matches!(&o.resource, Resource::ServiceEntry(se) if !se.endpoints.is_empty()),
    );
    match service.resolution {
        Resolution::Passthrough => return Vec::new(),
        Resolution::Dns | Resolution::DnsRoundRobin if !listed && service.selector.is_none() => {
            return vec![dns_endpoint(service, port)];
        }
        _ => {}
    }
    let mut out = Vec::new();
    for object in &sources.workloads {
        match &object.resource {
            Resource::Pod(pod) => {
                let node = pod
                    .node_name
                    .as_deref()
                    .and_then(|n| sources.nodes.get(n).copied());
                out.extend(pod_endpoint(object, pod, node, port, mesh))
            }
            Resource::WorkloadEntry(we) => {
                out.extend(entry_endpoint(object, we, service, port, mesh))
            }
            _ => {}
        }
    }
    if let Some(object) = sources.entry
        && let Resource::ServiceEntry(entry) = &object.resource
        && entry.workload_selector.is_none()
    {
        for ep in &entry.endpoints {
            out.extend(entry_endpoint(object, ep, service, port, mesh));
        }
    }
    for object in sources.slices {
        if let Resource::EndpointSlice(slice) = &object.resource {
            out.extend(slice_endpoints(slice, port, service));
        }
    }
    out.sort_by(|a, b| (&a.address, a.port).cmp(&(&b.address, b.port)));
    out.dedup_by(|a, b| a.address == b.address && a.port == b.port);
    out
}

/// A DNS service with no listed endpoints resolves its own host name.
fn dns_endpoint(service: &Service, port: &ServicePort) -> Endpoint {
    Endpoint {
        address: service.hostname.to_string(),
        port: target_number(port).unwrap_or(port.number),
        labels: Labels::new(),
        identity: None,
        namespace: service.namespace.clone(),
        workload: String::new(),
        locality: Locality::default(),
        network: String::new(),
        weight: 1,
        healthy: true,
        mtls: false,
        tunnel: false,
    }
}

/// Whether `object` (a Pod or WorkloadEntry) is one of `service`'s workloads.
pub(crate) fn service_selects(service: &Service, object: &Object) -> bool {
    let Some(selector) = &service.selector else {
        return false;
    };
    if object.namespace() != Some(service.namespace.as_str()) || selector.is_empty() {
        return false;
    }
    let labels = workload_labels(object);
    selector
        .iter()
        .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
}

/// A WorkloadEntry's own labels, or a Pod's metadata labels.
pub(crate) fn workload_labels(object: &Object) -> Option<&Labels> {
    match &object.resource {
        Resource::WorkloadEntry(we) => Some(&we.labels),
        _ => object.meta.labels.as_ref(),
    }
}

fn target_number(port: &ServicePort) -> Option<u16> {
    match &port.target {
        TargetPort::Number(n) => Some(*n),
        TargetPort::Same => Some(port.number),
        TargetPort::Named(_) => None,
    }
}

fn spiffe(mesh: &MeshConfig, namespace: &str, account: &str) -> String {
    format!("spiffe://{}/ns/{namespace}/sa/{account}", mesh.trust_domain)
}

/// A pod's locality as istiod finds it: its `istio-locality` label, else its
/// node's topology labels, else (outside Kubernetes) its own.
pub fn pod_locality(labels: &Labels, node: Option<&Object>) -> Locality {
    if labels.contains_key(crate::locality::LOCALITY_LABEL) {
        return Locality::from_labels(labels);
    }
    node.and_then(|n| n.meta.labels.as_ref())
        .map(Locality::from_labels)
        .filter(|l| !l.is_empty())
        .unwrap_or_else(|| Locality::from_labels(labels))
}

fn pod_endpoint(
    object: &Object,
    pod: &Pod,
    node: Option<&Object>,
    port: &ServicePort,
    mesh: &MeshConfig,
) -> Option<Endpoint> {
    if matches!(pod.phase.as_deref(), Some("Failed" | "Succeeded")) {
        return None;
    }
    let address = pod.ip.clone()?;
    let number = match &port.target {
        TargetPort::Named(name) => pod
            .named_ports
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, number)| *number)?,
        _ => target_number(port)?,
    };
    let labels = object.meta.labels.clone().unwrap_or_default();
    let namespace = object.namespace().unwrap_or_default().to_owned();
    let ready = pod.ready.unwrap_or(true);
    Some(Endpoint {
        address,
        port: number,
        identity: Some(spiffe(
            mesh,
            &namespace,
            pod.service_account.as_deref().unwrap_or("default"),
        )),
        locality: pod_locality(&labels, node),
        network: labels
            .get("topology.istio.io/network")
            .cloned()
            .unwrap_or_default(),
        mtls: labels.get(TLS_MODE_LABEL).is_some_and(|m| m == "istio"),
        tunnel: redirected(object) || speaks_hbone(&labels),
        workload: object.name().to_owned(),
        namespace,
        weight: 1,
        healthy: ready,
        labels,
    })
}

fn entry_endpoint(
    object: &Object,
    we: &WorkloadEntry,
    service: &Service,
    port: &ServicePort,
    mesh: &MeshConfig,
) -> Option<Endpoint> {
    // Unix-socket workloads are reached by their local proxy, not through EDS.
    if we.address.is_empty() || we.address.starts_with("unix://") {
        return None;
    }
    let number = we
        .ports
        .get(&port.name)
        .and_then(|p| u16::try_from(*p).ok())
        .or_else(|| target_number(port))?;
    let namespace = object.namespace().unwrap_or_default().to_owned();
    Some(Endpoint {
        address: we.address.clone(),
        port: number,
        identity: (!we.service_account.is_empty())
            .then(|| spiffe(mesh, &namespace, &we.service_account)),
        locality: Locality::parse(&we.locality),
        network: we.network.clone(),
        mtls: !service.external && we.labels.get(TLS_MODE_LABEL).is_some_and(|m| m == "istio"),
        tunnel: !service.external && speaks_hbone(&we.labels),
        workload: object.name().to_owned(),
        namespace,
        weight: if we.weight == 0 { 1 } else { we.weight },
        healthy: true,
        labels: we.labels.clone(),
    })
}

fn slice_endpoints(
    slice: &k8s_openapi::api::discovery::v1::EndpointSlice,
    port: &ServicePort,
    service: &Service,
) -> Vec<Endpoint> {
    let number = slice
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref().unwrap_or_default() == port.name)
        .and_then(|p| p.port)
        .and_then(|p| u16::try_from(p).ok())
        .or_else(|| target_number(port));
    let Some(number) = number else {
        return Vec::new();
    };
    slice
        .endpoints
        .iter()
        .flat_map(|e| {
            let healthy = e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            e.addresses.iter().map(move |address| Endpoint {
                address: address.clone(),
                port: number,
                labels: Labels::new(),
                identity: None,
                namespace: service.namespace.clone(),
                workload: e
                    .target_ref
                    .as_ref()
                    .and_then(|t| t.name.clone())
                    .unwrap_or_default(),
                locality: Locality {
                    zone: e.zone.clone().unwrap_or_default(),
                    ..Locality::default()
                },
                network: String::new(),
                weight: 1,
                healthy,
                mtls: false,
                tunnel: false,
            })
        })
        .collect()
}

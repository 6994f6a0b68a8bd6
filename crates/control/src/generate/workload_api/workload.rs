//! Workloads as istiod describes them to node proxies: every running pod
//! with an address (enrolled in ambient or not: only the tunnel differs) and
//! every WorkloadEntry.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use oxmesh_config::Kind;
use oxmesh_config::networking::workload_entry::WorkloadEntry;
use oxmesh_config::object::{Object, Resource};
use oxmesh_config::pod::Pod;
use oxmesh_config::security::peer_authentication::MtlsMode;
use oxmesh_config::selector::Labels;
use oxmesh_config::service::{Service, TargetPort};
use oxmesh_identity::canonical;
use oxmesh_xds::workload::{
    Locality, Port, PortList, TunnelProtocol, Workload, WorkloadStatus, WorkloadType,
};

use super::{CLUSTER_ID, ip_bytes, trust_domain};
use crate::locality::Locality as MeshLocality;
use crate::proxy::ProxyClass;
use crate::push_context::PushContext;
use crate::registry::{self, pod_locality, service_selects};

/// Overrides the workload name istiod derives.
const WORKLOAD_NAME_LABEL: &str = "service.istio.io/workload-name";
/// A WorkloadEntry made by auto-registration names its WorkloadGroup here.
const AUTO_REGISTRATION_GROUP: &str = "istio.io/autoRegistrationGroup";
/// The policy istiod derives from a STRICT PeerAuthentication: plaintext
/// (no peer identity) is denied.
pub(super) const STATIC_STRICT: &str = "istio_converted_static_strict";

pub(super) fn workloads(ctx: &PushContext) -> Vec<Workload> {
    let nodes: HashMap<&str, &Object> = ctx
        .workloads
        .iter()
        .filter(|o| matches!(o.resource, Resource::Node))
        .map(|o| (o.name(), o.as_ref()))
        .collect();
    let mut out: Vec<Workload> = ctx
        .workloads
        .iter()
        .filter_map(|object| match &object.resource {
            Resource::Pod(pod) => {
                let node = pod.node_name.as_deref().and_then(|n| nodes.get(n)).copied();
                from_pod(ctx, object, pod, node)
            }
            Resource::WorkloadEntry(entry) => Some(from_entry(ctx, object, entry)),
            _ => None,
        })
        .collect();
    out.sort_by(|a, b| a.uid.cmp(&b.uid));
    out
}

fn from_pod(
    ctx: &PushContext,
    object: &Object,
    pod: &Pod,
    node: Option<&Object>,
) -> Option<Workload> {
    if matches!(pod.phase.as_deref(), Some("Failed" | "Succeeded")) {
        return None;
    }
    let ip: IpAddr = pod.ip.as_deref()?.parse().ok()?;
    let namespace = object.namespace().unwrap_or_default();
    let labels = object.meta.labels.clone().unwrap_or_default();
    let terminating = object.meta.deletion_timestamp.is_some();
    let healthy = pod.ready == Some(true) && !terminating;
    let workload_name = pod_workload_name(object, &labels);
    let (tunnel_protocol, native_tunnel) = tunnel(object, &labels);
    let account = pod.service_account.clone().unwrap_or_default();
    Some(Workload {
        uid: format!("{CLUSTER_ID}//Pod/{namespace}/{}", object.name()),
        name: object.name().to_owned(),
        namespace: namespace.to_owned(),
        addresses: vec![ip_bytes(ip)],
        network: network(&labels),
        tunnel_protocol: tunnel_protocol as i32,
        native_tunnel,
        trust_domain: trust_domain(ctx),
        service_account: account,
        node: pod.node_name.clone().unwrap_or_default(),
        canonical_name: canonical_name(&labels, &workload_name),
        canonical_revision: canonical::revision(|k| labels.get(k).map(String::as_str)).to_owned(),
        workload_type: WorkloadType::Pod as i32,
        services: services_of(ctx, object, |port| pod_target(pod, port)),
        authorization_policies: policies_of(ctx, namespace, &labels),
        status: status(healthy) as i32,
        cluster_id: CLUSTER_ID.to_owned(),
        locality: locality(pod_locality(&labels, node)),
        workload_name,
        ..Workload::default()
    })
}

fn from_entry(ctx: &PushContext, object: &Object, entry: &WorkloadEntry) -> Workload {
    let namespace = object.namespace().unwrap_or_default();
    let labels = &entry.labels;
    let (addresses, hostname) = match entry.address.parse::<IpAddr>() {
        Ok(ip) => (vec![ip_bytes(ip)], String::new()),
        Err(_) => (Vec::new(), entry.address.clone()),
    };
    let workload_name = object
        .meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(AUTO_REGISTRATION_GROUP))
        .or_else(|| labels.get(WORKLOAD_NAME_LABEL))
        .cloned()
        .unwrap_or_else(|| object.name().to_owned());
    let (tunnel_protocol, native_tunnel) = tunnel(object, labels);
    Workload {
        uid: format!(
            "{CLUSTER_ID}/networking.istio.io/WorkloadEntry/{namespace}/{}",
            object.name()
        ),
        name: object.name().to_owned(),
        namespace: namespace.to_owned(),
        addresses,
        hostname,
        network: entry.network.clone(),
        tunnel_protocol: tunnel_protocol as i32,
        native_tunnel,
        trust_domain: trust_domain(ctx),
        service_account: entry.service_account.clone(),
        canonical_name: canonical_name(labels, &workload_name),
        canonical_revision: canonical::revision(|k| labels.get(k).map(String::as_str)).to_owned(),
        workload_type: WorkloadType::Pod as i32,
        services: services_of(ctx, object, |port| entry_target(entry, port)),
        authorization_policies: policies_of(ctx, namespace, labels),
        status: WorkloadStatus::Healthy as i32,
        cluster_id: CLUSTER_ID.to_owned(),
        locality: locality(MeshLocality::parse(&entry.locality)),
        capacity: (entry.weight > 0).then_some(entry.weight),
        workload_name,
        ..Workload::default()
    }
}

/// HBONE when Istio's CNI captured the pod, or the workload speaks it itself.
fn tunnel(object: &Object, labels: &Labels) -> (TunnelProtocol, bool) {
    let native = registry::speaks_hbone(labels);
    let protocol = if native || registry::redirected(object) {
        TunnelProtocol::Hbone
    } else {
        TunnelProtocol::None
    };
    (protocol, native)
}

/// The label names the workload; else its controller does (a Deployment's
/// ReplicaSet without the template hash, a CronJob's Job without its
/// schedule suffix); else the pod itself.
fn pod_workload_name(object: &Object, labels: &Labels) -> String {
    if let Some(name) = labels.get(WORKLOAD_NAME_LABEL) {
        return name.clone();
    }
    let owner = object
        .meta
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true));
    let Some(owner) = owner.filter(|_| object.meta.generate_name.is_some()) else {
        return object.name().to_owned();
    };
    let hash = labels.get("pod-template-hash").map(String::as_str);
    match (owner.kind.as_str(), hash) {
        ("ReplicaSet", Some(hash)) => owner
            .name
            .strip_suffix(hash)
            .and_then(|n| n.strip_suffix('-'))
            .unwrap_or(&owner.name)
            .to_owned(),
        ("Job", _) => cron_job(&owner.name).unwrap_or(&owner.name).to_owned(),
        _ => owner.name.clone(),
    }
}

/// A CronJob's name from its Job's (`<cronjob>-<8 to 10 digits>`).
fn cron_job(job: &str) -> Option<&str> {
    let (base, suffix) = job.rsplit_once('-')?;
    let digits = (8..=10).contains(&suffix.len()) && suffix.bytes().all(|b| b.is_ascii_digit());
    digits.then_some(base)
}

fn canonical_name(labels: &Labels, workload_name: &str) -> String {
    canonical::service(|k| labels.get(k).map(String::as_str))
        .unwrap_or(workload_name)
        .to_owned()
}

fn network(labels: &Labels) -> String {
    labels
        .get("topology.istio.io/network")
        .cloned()
        .unwrap_or_default()
}

fn status(healthy: bool) -> WorkloadStatus {
    if healthy {
        WorkloadStatus::Healthy
    } else {
        WorkloadStatus::Unhealthy
    }
}

fn locality(l: MeshLocality) -> Option<Locality> {
    (!l.is_empty()).then_some(Locality {
        region: l.region,
        zone: l.zone,
        subzone: l.subzone,
    })
}

/// The services that select the workload, by `namespace/hostname`, with the
/// ports it serves each on; a port it cannot serve (a named target port it
/// lacks) is left out, as istiod does.
fn services_of(
    ctx: &PushContext,
    object: &Object,
    target: impl Fn(&PortRef<'_>) -> Option<u16>,
) -> BTreeMap<String, PortList> {
    ctx.registry
        .services
        .iter()
        .filter(|s| service_selects(s, object))
        .map(|service| {
            let ports = service
                .ports
                .iter()
                .filter_map(|p| {
                    let port = PortRef { service, port: p };
                    Some(Port {
                        service_port: u32::from(p.number),
                        target_port: u32::from(target(&port)?),
                        app_protocol: 0,
                    })
                })
                .collect();
            (
                super::service::resource_name_of(service),
                PortList { ports },
            )
        })
        .collect()
}

/// One port of one service, for finding a workload's target port.
struct PortRef<'a> {
    service: &'a Service,
    port: &'a oxmesh_config::service::ServicePort,
}

/// A pod serves a named target port on its container port of that name.
fn pod_target(pod: &Pod, port: &PortRef<'_>) -> Option<u16> {
    match &port.port.target {
        TargetPort::Same => Some(port.port.number),
        TargetPort::Number(n) => Some(*n),
        TargetPort::Named(name) => pod
            .named_ports
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, number)| *number),
    }
}

/// A WorkloadEntry maps a ServiceEntry's port by its name; else the port's
/// own target.
fn entry_target(entry: &WorkloadEntry, port: &PortRef<'_>) -> Option<u16> {
    if port.service.source.kind == Kind::ServiceEntry
        && let Some(n) = entry.ports.get(&port.port.name)
    {
        return u16::try_from(*n).ok();
    }
    match &port.port.target {
        TargetPort::Same => Some(port.port.number),
        TargetPort::Number(n) => Some(*n),
        TargetPort::Named(_) => None,
    }
}

/// The selector-scoped policies that select the workload (its namespace's
/// and the root namespace's), then the STRICT policy when PeerAuthentication
/// makes the workload STRICT. Namespace and mesh-wide policies are found by
/// scope and are not listed.
fn policies_of(ctx: &PushContext, namespace: &str, labels: &Labels) -> Vec<String> {
    let root = ctx.mesh.root_namespace.as_str();
    let mut names: Vec<String> = ctx
        .authorization_policies()
        .iter()
        .filter(|p| p.namespace == namespace || p.namespace == root)
        .filter(|p| super::authorization::is_sent(p))
        .filter(|p| {
            p.spec
                .policy
                .selector
                .as_ref()
                .is_some_and(|s| s.matches(labels))
        })
        .map(|p| format!("{}/{}", p.namespace, p.name))
        .collect();
    names.sort();
    if ctx.has_peer_authentications() && is_strict(ctx, namespace, labels) {
        names.push(format!("{root}/{STATIC_STRICT}"));
    }
    names
}

fn is_strict(ctx: &PushContext, namespace: &str, labels: &Labels) -> bool {
    let workload = ProxyClass::workload(namespace.to_owned(), labels.clone());
    ctx.mtls_mode(&workload, None) == MtlsMode::Strict
}

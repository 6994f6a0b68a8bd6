//! `/config_dump` on the admin port (15000, localhost only, as ztunnel's):
//! the workloads, services, policies and certificates the node proxy holds,
//! in the shape and with the names of ztunnel's dump, so what a user reads
//! there (and what tools parse) carries over.

use std::sync::Arc;
use std::time::SystemTime;

use oxmesh_identity::credentials::Credentials;
use serde_json::{Value, json};

use crate::rbac::{Action, Policy, Scope};
use crate::state::{Protocol, Service, State, Workload};

pub fn config_dump(state: &State, credentials: &[Arc<Credentials>]) -> Value {
    let mut workloads: Vec<&Workload> = state.workloads().map(AsRef::as_ref).collect();
    workloads.sort_by(|a, b| a.uid.cmp(&b.uid));
    let mut services: Vec<&Service> = state.services().map(AsRef::as_ref).collect();
    services.sort_by(|a, b| a.hostname.cmp(&b.hostname));
    let mut policies: Vec<&Policy> = state.policies().map(AsRef::as_ref).collect();
    policies.sort_by_key(|p| p.key());
    json!({
        "workloads": workloads.into_iter().map(workload).collect::<Vec<_>>(),
        "services": services.into_iter().map(service).collect::<Vec<_>>(),
        "policies": policies.into_iter().map(policy).collect::<Vec<_>>(),
        "certificates": credentials.iter().map(|c| certificate(c)).collect::<Vec<_>>(),
    })
}

fn workload(w: &Workload) -> Value {
    let mut services: Vec<&String> = w.services.keys().collect();
    services.sort();
    json!({
        "uid": w.uid,
        "name": w.name,
        "namespace": w.namespace,
        "workloadIps": w.addresses.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "protocol": match w.protocol {
            Protocol::Hbone => "HBONE",
            Protocol::Tcp => "TCP",
        },
        "trustDomain": w.identity.trust_domain().as_str(),
        "serviceAccount": w.identity.service_account(),
        "workloadName": w.workload_name,
        "canonicalName": w.canonical_name,
        "canonicalRevision": w.canonical_revision,
        "node": w.node,
        "status": if w.healthy { "Healthy" } else { "Unhealthy" },
        "clusterId": w.cluster_id,
        "services": services,
        "authorizationPolicies": w.policies,
    })
}

fn service(s: &Service) -> Value {
    let ports: serde_json::Map<String, Value> = s
        .ports
        .iter()
        .map(|(port, target)| (port.to_string(), json!(target)))
        .collect();
    json!({
        "namespace": s.namespace,
        "hostname": s.hostname,
        // `<network>/<ip>`: the network is empty here.
        "vips": s.vips.iter().map(|ip| format!("/{ip}")).collect::<Vec<_>>(),
        "ports": ports,
    })
}

fn policy(p: &Policy) -> Value {
    json!({
        "name": p.name,
        "namespace": p.namespace,
        "scope": match p.scope {
            Scope::Global => "Global",
            Scope::Namespace => "Namespace",
            Scope::WorkloadSelector => "WorkloadSelector",
        },
        "action": match p.action {
            Action::Allow => "Allow",
            Action::Deny => "Deny",
        },
        "dryRun": p.dry_run,
        "rules": p.rules.len(),
    })
}

fn certificate(credentials: &Credentials) -> Value {
    let identity = credentials.identity().to_string();
    match credentials.svid() {
        Some(svid) => json!({
            "identity": identity,
            "state": "Available",
            "certChain": [{
                "validFrom": rfc3339(svid.not_before),
                "expirationTime": rfc3339(svid.not_after),
            }],
        }),
        None => json!({"identity": identity, "state": "Initializing"}),
    }
}

fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

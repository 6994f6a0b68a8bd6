//! Who this proxy stands for, read from the environment as Istio's agent reads it
//! (POD_NAME, POD_NAMESPACE, INSTANCE_IP, SERVICE_ACCOUNT, ISTIO_META_*), and the
//! xDS node that tells the control plane.

use std::collections::BTreeMap;
use std::net::IpAddr;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use oxmesh_identity::canonical;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Sidecar,
    Gateway,
    Waypoint,
}

impl Mode {
    /// The node id's first field, Istio's proxy type.
    pub fn node_type(self) -> &'static str {
        match self {
            Mode::Sidecar => "sidecar",
            Mode::Gateway => "router",
            Mode::Waypoint => "waypoint",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Workload {
    pub mode: Mode,
    pub pod_name: String,
    pub namespace: String,
    pub ips: Vec<IpAddr>,
    pub service_account: String,
    /// The owning workload (the Deployment), as telemetry names it.
    pub workload_name: String,
    pub labels: BTreeMap<String, String>,
    pub cluster_id: String,
    pub dns_domain: String,
    /// Every `ISTIO_META_<KEY>`, prefix removed.
    pub metadata: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    #[error("{0} is not set: the proxy needs it to know which pod it serves")]
    Missing(&'static str),
    #[error("INSTANCE_IP {0:?} is not an IP address")]
    BadIp(String),
    #[error("ISTIO_METAJSON_LABELS is not a JSON object of strings: {0}")]
    BadLabels(String),
}

impl Workload {
    /// From environment variables (`lookup` is `std::env::var` outside tests).
    pub fn from_env(
        mode: Mode,
        lookup: impl Fn(&str) -> Option<String>,
        all: impl Iterator<Item = (String, String)>,
    ) -> Result<Self, WorkloadError> {
        let pod_name = lookup("POD_NAME").ok_or(WorkloadError::Missing("POD_NAME"))?;
        let namespace = lookup("POD_NAMESPACE").ok_or(WorkloadError::Missing("POD_NAMESPACE"))?;
        let ips = lookup("INSTANCE_IP")
            .ok_or(WorkloadError::Missing("INSTANCE_IP"))?
            .split(',')
            .map(|ip| {
                ip.trim()
                    .parse()
                    .map_err(|_| WorkloadError::BadIp(ip.to_owned()))
            })
            .collect::<Result<Vec<IpAddr>, _>>()?;
        let labels = match lookup("ISTIO_METAJSON_LABELS") {
            Some(json) => {
                serde_json::from_str(&json).map_err(|e| WorkloadError::BadLabels(e.to_string()))?
            }
            None => BTreeMap::new(),
        };
        let metadata: BTreeMap<String, String> = all
            .filter_map(|(k, v)| k.strip_prefix("ISTIO_META_").map(|k| (k.to_owned(), v)))
            .collect();
        let workload_name = metadata
            .get("WORKLOAD_NAME")
            .cloned()
            .unwrap_or_else(|| deployment_of(&pod_name));
        Ok(Self {
            mode,
            service_account: lookup("SERVICE_ACCOUNT").unwrap_or_else(|| "default".to_owned()),
            cluster_id: metadata
                .get("CLUSTER_ID")
                .cloned()
                .unwrap_or_else(|| "Kubernetes".to_owned()),
            dns_domain: metadata
                .get("DNS_DOMAIN")
                .cloned()
                .unwrap_or_else(|| "cluster.local".to_owned()),
            pod_name,
            namespace,
            ips,
            workload_name,
            labels,
            metadata,
        })
    }

    /// Istio's service cluster for the proxy (`<app>.<namespace>`, its
    /// default `tracingServiceName`): the app label, else the workload's name.
    pub fn service_cluster(&self) -> String {
        let app = [
            "app",
            "app.kubernetes.io/name",
            "service.istio.io/canonical-name",
        ]
        .iter()
        .find_map(|key| self.labels.get(*key).filter(|v| !v.is_empty()))
        .unwrap_or(&self.workload_name);
        let app = if app.is_empty() { "istio-proxy" } else { app };
        format!("{app}.{}", self.namespace)
    }

    /// `sidecar~<ip>~<pod>.<namespace>~<namespace>.svc.<domain>`.
    pub fn node_id(&self) -> String {
        let ips: Vec<String> = self.ips.iter().map(IpAddr::to_string).collect();
        format!(
            "{}~{}~{}.{}~{}.svc.{}",
            self.mode.node_type(),
            ips.join(","),
            self.pod_name,
            self.namespace,
            self.namespace,
            self.dns_domain
        )
    }

    /// The node as Istio's agent sends it, with the metadata keys istiod reads.
    pub fn node(&self) -> Node {
        let mut fields: BTreeMap<String, Value> = self
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), string(v)))
            .collect();
        fields.insert("NAMESPACE".to_owned(), string(&self.namespace));
        fields.insert("SERVICE_ACCOUNT".to_owned(), string(&self.service_account));
        fields.insert("CLUSTER_ID".to_owned(), string(&self.cluster_id));
        fields.insert("NAME".to_owned(), string(&self.pod_name));
        fields.insert("WORKLOAD_NAME".to_owned(), string(&self.workload_name));
        fields.insert("LABELS".to_owned(), strings(&self.labels));
        Node {
            id: self.node_id(),
            cluster: format!("{}.{}", self.workload_name, self.namespace),
            metadata: Some(Struct {
                fields: fields.into_iter().collect(),
            }),
            ..Default::default()
        }
    }

    /// `app` label, else the workload name: what telemetry calls the app.
    pub fn app(&self) -> &str {
        self.labels
            .get("app")
            .or_else(|| self.labels.get("app.kubernetes.io/name"))
            .map_or(self.workload_name.as_str(), String::as_str)
    }

    /// Istio's canonical service: from the labels, else the workload's name.
    pub fn canonical_service(&self) -> String {
        canonical::service(|k| self.labels.get(k).map(String::as_str))
            .unwrap_or(&self.workload_name)
            .to_owned()
    }

    pub fn canonical_revision(&self) -> String {
        canonical::revision(|k| self.labels.get(k).map(String::as_str)).to_owned()
    }

    pub fn version(&self) -> &str {
        self.labels
            .get("version")
            .or_else(|| self.labels.get("app.kubernetes.io/version"))
            .map_or("unknown", String::as_str)
    }
}

/// `reviews-v1-7f9c8d-x2x4b` → `reviews-v1`: a Deployment's pods carry the
/// ReplicaSet hash and a suffix.
fn deployment_of(pod: &str) -> String {
    let parts: Vec<&str> = pod.split('-').collect();
    if parts.len() >= 3 {
        parts[..parts.len() - 2].join("-")
    } else {
        pod.to_owned()
    }
}

fn string(s: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.to_owned())),
    }
}

pub fn strings(map: &BTreeMap<String, String>) -> Value {
    Value {
        kind: Some(Kind::StructValue(Struct {
            fields: map.iter().map(|(k, v)| (k.clone(), string(v))).collect(),
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> Result<Workload, WorkloadError> {
        let map: BTreeMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Workload::from_env(
            Mode::Sidecar,
            |k| map.get(k).cloned(),
            map.clone().into_iter(),
        )
    }

    #[test]
    fn reads_the_pod_as_istios_agent_does() {
        let w = env(&[
            ("POD_NAME", "reviews-v1-7f9c8d-x2x4b"),
            ("POD_NAMESPACE", "bookinfo"),
            ("INSTANCE_IP", "198.18.0.7"),
            ("SERVICE_ACCOUNT", "bookinfo-reviews"),
            (
                "ISTIO_METAJSON_LABELS",
                r#"{"app":"reviews","version":"v1"}"#,
            ),
            ("ISTIO_META_MESH_ID", "cluster.local"),
        ])
        .expect("valid");
        assert_eq!(
            w.node_id(),
            "sidecar~198.18.0.7~reviews-v1-7f9c8d-x2x4b.bookinfo~bookinfo.svc.cluster.local"
        );
        assert_eq!(w.workload_name, "reviews-v1");
        assert_eq!((w.app(), w.version()), ("reviews", "v1"));
        assert_eq!(
            w.metadata.get("MESH_ID").map(String::as_str),
            Some("cluster.local")
        );
    }

    #[test]
    fn names_what_is_missing() {
        let e = env(&[("POD_NAME", "a")]).expect_err("no namespace");
        assert!(e.to_string().contains("POD_NAMESPACE"), "{e}");
        let e = env(&[
            ("POD_NAME", "a"),
            ("POD_NAMESPACE", "b"),
            ("INSTANCE_IP", "x"),
        ])
        .expect_err("bad ip");
        assert!(e.to_string().contains("\"x\""), "{e}");
    }
}

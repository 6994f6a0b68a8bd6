//! Who a connected proxy is, from its xDS node as Istio's agent fills it:
//! `sidecar~10.1.2.3~reviews-v1-7f9c.bookinfo~bookinfo.svc.cluster.local`, with
//! metadata (NAMESPACE, SERVICE_ACCOUNT, LABELS, CLUSTER_ID, NETWORK, GENERATOR, ...).

use std::collections::BTreeMap;
use std::net::IpAddr;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::{Struct, value::Kind};

use oxmesh_config::selector::Labels;

use crate::locality::Locality;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProxyKind {
    Sidecar,
    /// A gateway (Istio's `router`).
    Router,
    Waypoint,
    /// A node proxy (ztunnel): it gets Istio's workload API, not Envoy's types.
    Ztunnel,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Proxy {
    pub kind: ProxyKind,
    pub ips: Vec<IpAddr>,
    /// `<pod>.<namespace>`, as proxy-status names it.
    pub id: String,
    pub namespace: String,
    pub service_account: String,
    pub labels: Labels,
    pub cluster_id: String,
    pub network: String,
    /// Where it runs: its pod's locality when the registry knows the pod,
    /// else what its labels or its xDS node say (as istiod).
    pub locality: Locality,
    /// `grpc` for proxyless gRPC clients.
    pub generator: Option<String>,
    pub metadata: BTreeMap<String, String>,
    /// The caller proved it runs as this proxy's namespace and account (15012):
    /// only then may it have the namespace's Secrets.
    pub proven: bool,
}

/// All the generators may know of a proxy. Proxies that agree on it (the replicas
/// of one deployment) get identical resources, so one generation serves them all;
/// keeping the generators to this type is what makes that sharing sound. Policy
/// selection (Sidecar, PeerAuthentication, AuthorizationPolicy) reads only the
/// kind, namespace and labels, all part of the key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ProxyClass {
    pub kind: ProxyKind,
    pub namespace: String,
    pub labels: Labels,
    pub grpc: bool,
    /// `INTERCEPTION_MODE: TPROXY`: inbound keeps the client's address.
    pub tproxy: bool,
    /// See [`Proxy::proven`].
    pub proven: bool,
    /// Locality load balancing ranks endpoints from here.
    pub locality: Locality,
    /// `failoverPriority` may compare networks.
    pub network: String,
}

impl ProxyClass {
    /// A workload as policy selection sees it (PeerAuthentication's mode for
    /// an endpoint or a node proxy's pod): a sidecar of its namespace and
    /// labels.
    pub fn workload(namespace: String, labels: Labels) -> Self {
        Self {
            kind: ProxyKind::Sidecar,
            namespace,
            labels,
            grpc: false,
            tproxy: false,
            proven: false,
            locality: Locality::default(),
            network: String::new(),
        }
    }

    /// A proxyless gRPC client: it gets only what gRPC's xDS client accepts.
    pub fn is_grpc(&self) -> bool {
        self.grpc
    }
}

impl Proxy {
    pub fn class(&self) -> ProxyClass {
        if self.kind == ProxyKind::Ztunnel {
            // Every node proxy holds the whole mesh: one generation serves all.
            return ProxyClass {
                kind: ProxyKind::Ztunnel,
                ..ProxyClass::workload(String::new(), Labels::new())
            };
        }
        ProxyClass {
            kind: self.kind,
            namespace: self.namespace.clone(),
            labels: self.labels.clone(),
            grpc: self.generator.as_deref() == Some("grpc"),
            tproxy: self.metadata.get("INTERCEPTION_MODE").map(String::as_str) == Some("TPROXY"),
            proven: self.proven,
            locality: self.locality.clone(),
            network: self.network.clone(),
        }
    }

    pub fn from_node(node: &Node) -> Result<Self, String> {
        let parts: Vec<&str> = node.id.split('~').collect();
        let [kind, ips, id, _domain] = parts.as_slice() else {
            return Err(format!(
                "node id {:?} is not <type>~<ip>~<pod>.<namespace>~<domain>",
                node.id
            ));
        };
        let kind = match *kind {
            "sidecar" => ProxyKind::Sidecar,
            "router" => ProxyKind::Router,
            "waypoint" => ProxyKind::Waypoint,
            "ztunnel" => ProxyKind::Ztunnel,
            other => {
                return Err(format!(
                    "node id {:?}: unknown proxy type {other:?}",
                    node.id
                ));
            }
        };
        let ips = ips
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|ip| {
                ip.parse()
                    .map_err(|_| format!("node id {:?}: {ip:?} is not an IP address", node.id))
            })
            .collect::<Result<Vec<IpAddr>, String>>()?;
        let metadata = node.metadata.as_ref().map(flatten).unwrap_or_default();
        let namespace = metadata
            .get("NAMESPACE")
            .cloned()
            .or_else(|| id.split_once('.').map(|(_, ns)| ns.to_owned()))
            .ok_or_else(|| format!("node id {:?} names no namespace", node.id))?;
        let labels: Labels = node
            .metadata
            .as_ref()
            .and_then(|m| m.fields.get("LABELS"))
            .and_then(|v| match &v.kind {
                Some(Kind::StructValue(s)) => Some(flatten(s).into_iter().collect()),
                _ => None,
            })
            .unwrap_or_default();
        Ok(Self {
            kind,
            ips,
            id: (*id).to_owned(),
            service_account: metadata
                .get("SERVICE_ACCOUNT")
                .cloned()
                .unwrap_or_else(|| "default".to_owned()),
            cluster_id: metadata
                .get("CLUSTER_ID")
                .cloned()
                .unwrap_or_else(|| "Kubernetes".to_owned()),
            network: metadata.get("NETWORK").cloned().unwrap_or_default(),
            locality: node_locality(node, &labels),
            generator: metadata.get("GENERATOR").cloned(),
            namespace,
            labels,
            metadata,
            proven: false,
        })
    }
}

/// What the proxy's labels say of its locality, else its xDS node.
fn node_locality(node: &Node, labels: &Labels) -> Locality {
    let from_labels = Locality::from_labels(labels);
    if !from_labels.is_empty() {
        return from_labels;
    }
    node.locality
        .as_ref()
        .map(|l| Locality {
            region: l.region.clone(),
            zone: l.zone.clone(),
            subzone: l.sub_zone.clone(),
        })
        .unwrap_or_default()
}

/// The string fields of a Struct.
fn flatten(s: &Struct) -> BTreeMap<String, String> {
    s.fields
        .iter()
        .filter_map(|(k, v)| match &v.kind {
            Some(Kind::StringValue(s)) => Some((k.clone(), s.clone())),
            Some(Kind::BoolValue(b)) => Some((k.clone(), b.to_string())),
            Some(Kind::NumberValue(n)) => Some((k.clone(), n.to_string())),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::google::protobuf::Value;

    fn string(s: &str) -> Value {
        Value {
            kind: Some(Kind::StringValue(s.to_owned())),
        }
    }

    #[test]
    fn reads_an_istio_node() {
        let labels = Struct {
            fields: [("app".to_owned(), string("reviews"))]
                .into_iter()
                .collect(),
        };
        let metadata = Struct {
            fields: [
                ("NAMESPACE".to_owned(), string("bookinfo")),
                ("SERVICE_ACCOUNT".to_owned(), string("bookinfo-reviews")),
                (
                    "LABELS".to_owned(),
                    Value {
                        kind: Some(Kind::StructValue(labels)),
                    },
                ),
            ]
            .into_iter()
            .collect(),
        };
        let node = Node {
            id: "sidecar~10.1.2.3~reviews-v1-7f9c.bookinfo~bookinfo.svc.cluster.local".to_owned(),
            metadata: Some(metadata),
            ..Default::default()
        };
        let proxy = Proxy::from_node(&node).expect("valid node");
        assert_eq!(proxy.kind, ProxyKind::Sidecar);
        assert_eq!(proxy.ips, vec!["10.1.2.3".parse::<IpAddr>().expect("ip")]);
        assert_eq!(proxy.id, "reviews-v1-7f9c.bookinfo");
        assert_eq!(proxy.namespace, "bookinfo");
        assert_eq!(proxy.service_account, "bookinfo-reviews");
        assert_eq!(proxy.labels.get("app").map(String::as_str), Some("reviews"));
    }

    #[test]
    fn reads_ztunnels_node() {
        let metadata = Struct {
            fields: [
                ("NAMESPACE".to_owned(), string("istio-system")),
                ("NODE_NAME".to_owned(), string("node-a")),
            ]
            .into_iter()
            .collect(),
        };
        let node = Node {
            id: "ztunnel~198.18.0.9~ztunnel-x1.istio-system~istio-system.svc.cluster.local"
                .to_owned(),
            metadata: Some(metadata),
            ..Default::default()
        };
        let proxy = Proxy::from_node(&node).expect("valid node");
        assert_eq!(proxy.kind, ProxyKind::Ztunnel);
        assert_eq!(proxy.namespace, "istio-system");
        assert_eq!(
            proxy.metadata.get("NODE_NAME").map(String::as_str),
            Some("node-a")
        );
    }

    #[test]
    fn refuses_malformed_ids() {
        for id in [
            "",
            "sidecar~1.2.3.4",
            "teapot~1.2.3.4~a.b~d",
            "sidecar~not-an-ip~a.b~d",
        ] {
            let node = Node {
                id: id.to_owned(),
                ..Default::default()
            };
            assert!(Proxy::from_node(&node).is_err(), "{id}");
        }
    }
}

//! Peer metadata exchange over HTTP, in Istio's wire format: the client's sidecar
//! sends `x-envoy-peer-metadata-id` and `x-envoy-peer-metadata` (a base64
//! `google.protobuf.Struct` with NAME, NAMESPACE, WORKLOAD_NAME, LABELS, ...), the
//! server's sidecar answers with its own, so each side can label its metrics with
//! the other's workload. The headers never reach the application. TCP carries
//! the same metadata in a frame at the start of the stream ([`crate::exchange`]).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use http::{HeaderMap, HeaderName, HeaderValue};
use prost::Message;

use oxmesh_identity::canonical;

use crate::metrics::Peer;
use crate::workload::{self, Workload};

pub static METADATA_ID: HeaderName = HeaderName::from_static("x-envoy-peer-metadata-id");
pub static METADATA: HeaderName = HeaderName::from_static("x-envoy-peer-metadata");

/// This workload's metadata headers, computed once.
#[derive(Clone, Debug)]
pub struct LocalMetadata {
    pub id: HeaderValue,
    pub metadata: HeaderValue,
    /// The same metadata framed for TCP's exchange (see [`crate::exchange`]).
    pub tcp_frame: bytes::Bytes,
}

impl LocalMetadata {
    pub fn of(w: &Workload) -> Self {
        let string = |s: &str| Value {
            kind: Some(Kind::StringValue(s.to_owned())),
        };
        let fields = [
            ("NAME", string(&w.pod_name)),
            ("NAMESPACE", string(&w.namespace)),
            ("WORKLOAD_NAME", string(&w.workload_name)),
            ("CLUSTER_ID", string(&w.cluster_id)),
            ("SERVICE_ACCOUNT", string(&w.service_account)),
            ("LABELS", workload::strings(&w.labels)),
        ];
        let message = Struct {
            fields: fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        };
        let encoded = STANDARD.encode(message.encode_to_vec());
        let id = w.node_id();
        Self {
            id: HeaderValue::from_str(&id).unwrap_or(HeaderValue::from_static("unknown")),
            metadata: HeaderValue::from_str(&encoded).unwrap_or(HeaderValue::from_static("")),
            tcp_frame: crate::exchange::frame(&message, &id),
        }
    }

    pub fn insert(&self, headers: &mut HeaderMap) {
        headers.insert(METADATA_ID.clone(), self.id.clone());
        headers.insert(METADATA.clone(), self.metadata.clone());
    }
}

/// Takes the peer's metadata out of `headers`, if it sent any that parses.
pub fn take(headers: &mut HeaderMap) -> Option<Peer> {
    headers.remove(&METADATA_ID);
    let value = headers.remove(&METADATA)?;
    let bytes = STANDARD.decode(value.as_bytes()).ok()?;
    Some(from_struct(&Struct::decode(bytes.as_slice()).ok()?))
}

/// A peer from the metadata its proxy sent (Istio's node metadata keys).
pub fn from_struct(s: &Struct) -> Peer {
    let field = |name: &str| match s.fields.get(name).and_then(|v| v.kind.as_ref()) {
        Some(Kind::StringValue(v)) => Some(v.clone()),
        _ => None,
    };
    let workload = field("WORKLOAD_NAME").unwrap_or_else(|| "unknown".into());
    let labels = match s.fields.get("LABELS").and_then(|v| v.kind.as_ref()) {
        Some(Kind::StructValue(labels)) => Some(labels),
        _ => None,
    };
    let label = |name: &str| match labels?.fields.get(name)?.kind.as_ref()? {
        Kind::StringValue(v) => Some(v.as_str()),
        _ => None,
    };
    Peer {
        app: label("app").unwrap_or(&workload).to_owned(),
        version: label("version").unwrap_or("unknown").to_owned(),
        canonical_service: canonical::service(label).unwrap_or(&workload).to_owned(),
        canonical_revision: canonical::revision(label).to_owned(),
        workload,
        namespace: field("NAMESPACE").unwrap_or_else(|| "unknown".into()),
        principal: "unknown".into(),
        cluster: field("CLUSTER_ID").unwrap_or_else(|| "unknown".into()),
    }
}

/// This workload as a metrics peer.
pub fn local_peer(w: &Workload, principal: String) -> Peer {
    Peer {
        workload: w.workload_name.clone(),
        namespace: w.namespace.clone(),
        principal,
        app: w.app().to_owned(),
        version: w.version().to_owned(),
        canonical_service: w.canonical_service(),
        canonical_revision: w.canonical_revision(),
        cluster: w.cluster_id.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::Mode;
    use std::collections::BTreeMap;

    #[test]
    fn metadata_round_trips_and_leaves_no_headers_behind() {
        let w = Workload {
            mode: Mode::Sidecar,
            pod_name: "productpage-v1-abc-xyz".into(),
            namespace: "default".into(),
            ips: vec!["198.18.0.2".parse().expect("ip")],
            service_account: "bookinfo-productpage".into(),
            workload_name: "productpage-v1".into(),
            labels: BTreeMap::from([("app".into(), "productpage".into())]),
            cluster_id: "Kubernetes".into(),
            dns_domain: "cluster.local".into(),
            metadata: BTreeMap::new(),
        };
        let mut headers = HeaderMap::new();
        LocalMetadata::of(&w).insert(&mut headers);
        let peer = take(&mut headers).expect("parses");
        assert_eq!(peer.workload, "productpage-v1");
        assert_eq!(peer.namespace, "default");
        assert_eq!(peer.app, "productpage");
        assert_eq!(peer.canonical_service, "productpage");
        assert_eq!(peer.canonical_revision, "latest");
        assert!(headers.is_empty());
    }
}

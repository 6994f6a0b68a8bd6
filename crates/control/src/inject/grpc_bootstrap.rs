//! The xDS bootstrap a proxyless gRPC app reads (`GRPC_XDS_BOOTSTRAP`): the
//! control plane's plaintext xDS address and a node that asks for the gRPC
//! generator, named as a sidecar of the pod would be.

use serde_json::{Value, json};

/// Who the app is, from the pod's downward-API environment.
pub struct GrpcNode<'a> {
    pub pod_name: &'a str,
    pub namespace: &'a str,
    pub ip: &'a str,
}

pub fn grpc_bootstrap(node: &GrpcNode<'_>, discovery_address: &str) -> Value {
    let GrpcNode {
        pod_name,
        namespace,
        ip,
    } = node;
    json!({
        "xds_servers": [{
            "server_uri": discovery_address,
            "channel_creds": [{"type": "insecure"}],
            "server_features": ["xds_v3"],
        }],
        "node": {
            "id": format!("sidecar~{ip}~{pod_name}.{namespace}~{namespace}.svc.cluster.local"),
            "metadata": {"GENERATOR": "grpc", "NAMESPACE": namespace, "INSTANCE_IPS": ip},
        },
    })
}

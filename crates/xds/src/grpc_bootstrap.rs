//! The xDS bootstrap a proxyless gRPC app reads (`GRPC_XDS_BOOTSTRAP`): the
//! control plane's plaintext xDS address and a node that asks for the gRPC
//! generator, named as a sidecar of the pod would be. With an agent beside the
//! app, also where the agent keeps the workload certificate, as the
//! `file_watcher` certificate provider gRPC's xDS credentials read for mTLS.

use std::path::Path;

use serde_json::{Value, json};

/// How often gRPC re-reads the certificate files (Istio's interval).
const REFRESH_INTERVAL: &str = "900s";

/// Who the app is, from the pod's downward-API environment.
pub struct GrpcNode<'a> {
    pub pod_name: &'a str,
    pub namespace: &'a str,
    pub ip: &'a str,
}

/// The bootstrap; `certificates` is the directory holding `cert-chain.pem`,
/// `key.pem` and `root-cert.pem` when an agent keeps them there.
pub fn grpc_bootstrap(
    node: &GrpcNode<'_>,
    discovery_address: &str,
    certificates: Option<&Path>,
) -> Value {
    let GrpcNode {
        pod_name,
        namespace,
        ip,
    } = node;
    let mut bootstrap = json!({
        "xds_servers": [{
            "server_uri": discovery_address,
            "channel_creds": [{"type": "insecure"}],
            "server_features": ["xds_v3"],
        }],
        "node": {
            "id": format!("sidecar~{ip}~{pod_name}.{namespace}~{namespace}.svc.cluster.local"),
            "metadata": {"GENERATOR": "grpc", "NAMESPACE": namespace, "INSTANCE_IPS": ip},
        },
    });
    if let Some(dir) = certificates {
        let file = |name: &str| dir.join(name).display().to_string();
        bootstrap["certificate_providers"] = json!({
            "default": {
                "plugin_name": "file_watcher",
                "config": {
                    "certificate_file": file("cert-chain.pem"),
                    "private_key_file": file("key.pem"),
                    "ca_certificate_file": file("root-cert.pem"),
                    "refresh_interval": REFRESH_INTERVAL,
                },
            },
        });
        bootstrap["server_listener_resource_name_template"] =
            json!("xds.istio.io/grpc/lds/inbound/%s");
    }
    bootstrap
}

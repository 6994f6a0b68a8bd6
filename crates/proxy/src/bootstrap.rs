//! Static config from an Envoy-style bootstrap file (YAML or JSON):
//! `static_resources.listeners` and `.clusters`, in protobuf's JSON mapping, as
//! Envoy reads them. For running without a control plane, and for tests; the
//! resources go through the same conversion as those from xDS.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3::Cluster as EnvoyCluster;
use envoy_types::pb::envoy::config::listener::v3::Listener as EnvoyListener;
use envoy_types::pb::google::protobuf::Any;
use prost::Message;

use crate::config::{self, ConvertError, Snapshot};

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("cannot read the bootstrap {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{origin}: not YAML or JSON: {message}")]
    Syntax { origin: String, message: String },
    #[error("{origin}: static_resources.{field}[{index}]: {message}")]
    Resource {
        origin: String,
        field: &'static str,
        index: usize,
        message: String,
    },
    #[error("{origin}: {0}", origin = .1)]
    Convert(ConvertError, String),
}

pub fn load(path: &Path) -> Result<Snapshot, BootstrapError> {
    let text = std::fs::read_to_string(path).map_err(|source| BootstrapError::Read {
        path: path.to_owned(),
        source,
    })?;
    from_text(&text, &path.display().to_string())
}

/// `origin` names the text in errors (a file name).
pub fn from_text(text: &str, origin: &str) -> Result<Snapshot, BootstrapError> {
    let value: serde_json::Value =
        serde_saphyr::from_str(text).map_err(|e| BootstrapError::Syntax {
            origin: origin.to_owned(),
            message: e.to_string(),
        })?;
    let resources = &value["static_resources"];
    let listeners: Vec<(EnvoyListener, Any)> = decode_list(
        resources,
        "listeners",
        "envoy.config.listener.v3.Listener",
        origin,
    )?;
    let clusters: Vec<(EnvoyCluster, Any)> = decode_list(
        resources,
        "clusters",
        "envoy.config.cluster.v3.Cluster",
        origin,
    )?;
    let convert = |e: ConvertError| BootstrapError::Convert(e, origin.to_owned());
    let mut snapshot = Snapshot::default();
    for (l, any) in listeners {
        let listener = config::listener::convert(&l).map_err(convert)?;
        listener.open_access_logs().map_err(convert)?;
        snapshot
            .listeners
            .insert(listener.name.clone(), Arc::new(listener));
        keep(&mut snapshot, LISTENER, l.name, any);
    }
    let mut map = HashMap::new();
    for (c, any) in clusters {
        let cluster = config::cluster::convert(&c).map_err(convert)?;
        map.insert(cluster.name.clone(), Arc::new(cluster));
        keep(&mut snapshot, CLUSTER, c.name, any);
    }
    snapshot.clusters = map;
    Ok(snapshot)
}

const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";

/// The wire form, for the admin's config dump.
fn keep(snapshot: &mut Snapshot, type_url: &str, name: String, any: Any) {
    snapshot
        .raw
        .entry(type_url.to_owned())
        .or_default()
        .insert(name, Arc::new(any));
}

fn decode_list<T: Message + Default>(
    resources: &serde_json::Value,
    field: &'static str,
    type_name: &str,
    origin: &str,
) -> Result<Vec<(T, Any)>, BootstrapError> {
    let Some(items) = resources.get(field).and_then(|v| v.as_array()) else {
        return Ok(Vec::new());
    };
    items
        .iter()
        .enumerate()
        .map(|(index, item)| {
            let error = |message: String| BootstrapError::Resource {
                origin: origin.to_owned(),
                field,
                index,
                message,
            };
            let bytes =
                oxmesh_xds::json::from_json(type_name, item).map_err(|e| error(e.to_string()))?;
            let decoded = T::decode(bytes.as_slice()).map_err(|e| error(e.to_string()))?;
            let any = Any {
                type_url: format!("type.googleapis.com/{type_name}"),
                value: bytes,
            };
            Ok((decoded, any))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_envoys_bootstrap_shape() {
        let text = r#"
static_resources:
  listeners:
  - name: front
    address: {socket_address: {address: 127.0.0.1, port_value: 0}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: front
          cluster: back
  clusters:
  - name: back
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: back
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 9}}}
"#;
        let s = from_text(text, "test.yaml").expect("valid bootstrap");
        assert!(s.listeners.contains_key("front"));
        assert!(s.clusters.contains_key(&config::ClusterName::new("back")));
    }

    #[test]
    fn errors_name_the_file_and_the_resource() {
        let text = "static_resources:\n  clusters:\n  - name: x\n    type: NOT_A_TYPE\n";
        let e = from_text(text, "bad.yaml").expect_err("invalid");
        let message = e.to_string();
        assert!(
            message.starts_with("bad.yaml: static_resources.clusters[0]"),
            "{message}"
        );
        let text = "static_resources:\n  clusters:\n  - name: x\n    type: STATIC\n    outlier_detection: {}\n";
        let message = from_text(text, "od.yaml").expect_err("refused").to_string();
        assert!(
            message.contains("od.yaml") && message.contains("outlier detection"),
            "{message}"
        );
    }
}

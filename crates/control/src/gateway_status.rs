//! Writes the Gateway API status the current PushContext works out: through
//! the API server's status subresource on Kubernetes (while this replica
//! leads, as istiod's status writer), or, with a directory source, to one
//! file beside the control plane's state that `oxmesh get` shows. Only what
//! changed is written; a condition keeps its `lastTransitionTime` until its
//! status flips.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use oxmesh_config::kind::Kind;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::discovery::Discovery;
use crate::gateway_api::{CONTROLLER, GROUP, ObjectStatus};

/// The file, in the state directory, a directory source's statuses go to.
pub const STATUS_FILE: &str = "gateway-api-status.json";

/// A failed write is tried again after this long, changes or not.
const RETRY: Duration = Duration::from_secs(5);

/// Kind, namespace and name.
type Key = (Kind, String, String);

pub enum Sink {
    /// Every status in one JSON file, replaced whole.
    File(PathBuf),
    /// The status subresource, written while `leading`.
    Kubernetes {
        client: kube::Client,
        leading: watch::Receiver<bool>,
    },
}

pub struct StatusWriter {
    pub discovery: Arc<Discovery>,
    pub sink: Sink,
}

impl StatusWriter {
    pub fn spawn(self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(self.run())
    }

    async fn run(mut self) {
        let mut changes = oxmesh_xds::ads::Generator::changes(&*self.discovery);
        let mut written: BTreeMap<Key, Value> = BTreeMap::new();
        loop {
            let context = self.discovery.current();
            let complete = self.write(&context.gateway_api_status, &mut written).await;
            let leading_changed = async {
                match &mut self.sink {
                    Sink::Kubernetes { leading, .. } => leading.changed().await.is_ok(),
                    Sink::File(_) => std::future::pending().await,
                }
            };
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return },
                true = leading_changed => {}
                () = tokio::time::sleep(RETRY), if !complete => {}
            }
        }
    }

    /// Writes what changed since `written`; whether everything was written.
    async fn write(&self, statuses: &[ObjectStatus], written: &mut BTreeMap<Key, Value>) -> bool {
        let now = now();
        let current: BTreeMap<Key, (&ObjectStatus, Value)> = statuses
            .iter()
            .map(|s| {
                let key = (s.kind, s.namespace.clone(), s.name.clone());
                let json = s.to_json(written.get(&key), &now);
                (key, (s, json))
            })
            .collect();
        match &self.sink {
            Sink::File(path) => {
                let unchanged = current.len() == written.len()
                    && current.iter().all(|(k, (_, v))| written.get(k) == Some(v));
                if unchanged {
                    return true;
                }
                let list: Vec<Value> = current
                    .iter()
                    .map(|((kind, namespace, name), (_, status))| {
                        json!({"kind": kind.name(), "namespace": namespace, "name": name, "status": status})
                    })
                    .collect();
                if let Err(e) = replace_file(path, &Value::Array(list)) {
                    tracing::warn!(path = %path.display(), error = %e, "cannot write the Gateway API status");
                    return false;
                }
                *written = current.into_iter().map(|(k, (_, v))| (k, v)).collect();
                true
            }
            Sink::Kubernetes { client, leading } => {
                if !*leading.borrow() {
                    // Another replica writes; start from scratch when this one leads.
                    written.clear();
                    return true;
                }
                let mut complete = true;
                written.retain(|k, _| current.contains_key(k));
                for (key, (status, json)) in current {
                    if written.get(&key) == Some(&json) {
                        continue;
                    }
                    match patch_status(client, status, &json).await {
                        Ok(()) => {
                            written.insert(key, json);
                        }
                        Err(e) => {
                            complete = false;
                            tracing::warn!(kind = key.0.name(), namespace = %key.1, name = %key.2, error = %e, "cannot write the Gateway API status");
                        }
                    }
                }
                complete
            }
        }
    }
}

fn now() -> String {
    let time = Time(k8s_openapi::jiff::Timestamp::now());
    serde_json::to_value(time)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Writes beside the file and renames, so a reader never sees half of it.
fn replace_file(path: &std::path::Path, value: &Value) -> std::io::Result<()> {
    let staging = path.with_extension("json.new");
    std::fs::write(&staging, serde_json::to_vec_pretty(value)?)?;
    std::fs::rename(&staging, path)
}

/// Server-side apply of `status` alone, as the controller's field manager.
async fn patch_status(
    client: &kube::Client,
    status: &ObjectStatus,
    json: &Value,
) -> Result<(), kube::Error> {
    let (kind, plural) = match status.kind {
        Kind::HttpRoute => ("HTTPRoute", "httproutes"),
        Kind::GrpcRoute => ("GRPCRoute", "grpcroutes"),
        _ => ("Gateway", "gateways"),
    };
    let resource = ApiResource {
        group: GROUP.to_owned(),
        version: "v1".to_owned(),
        api_version: format!("{GROUP}/v1"),
        kind: kind.to_owned(),
        plural: plural.to_owned(),
    };
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &status.namespace, &resource);
    let body = json!({
        "apiVersion": resource.api_version,
        "kind": kind,
        "metadata": {"name": status.name, "namespace": status.namespace},
        "status": json,
    });
    let params = PatchParams::apply(CONTROLLER).force();
    tokio::time::timeout(
        crate::kube_api::CALL_TIMEOUT,
        api.patch_status(&status.name, &params, &Patch::Apply(&body)),
    )
    .await
    .map_err(|_| kube::Error::Service("the API server did not answer in time".into()))?
    .map(|_| ())
}

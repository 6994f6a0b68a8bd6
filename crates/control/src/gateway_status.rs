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
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use oxmesh_config::kind::Kind;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::discovery::Discovery;
use crate::gateway_api::{CONTROLLER, ObjectStatus};

/// The file, in the state directory, a directory source's statuses go to.
pub const STATUS_FILE: &str = "gateway-api-status.json";

/// A failed write is tried again after this long, changes or not.
const RETRY: Duration = Duration::from_secs(5);
/// On Kubernetes every status is read again this often, so one someone
/// else edited is put back.
const RESYNC: Duration = Duration::from_secs(60);

/// Kind (as written), namespace and name.
type Key = (String, String, String);

fn key_of(status: &ObjectStatus) -> Key {
    (
        status.kind.name().to_owned(),
        status.namespace.clone(),
        status.name.clone(),
    )
}

/// What a status write came to.
enum Outcome {
    /// Written, or already as it should be: what this controller's part is.
    Done(Value),
    /// The object is gone: nothing to write.
    Gone,
    /// Worth trying again (the API server was away, a conflict).
    Retry,
}

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
        // What was written before, so transition times survive a restart.
        let mut written: BTreeMap<Key, Value> = match &self.sink {
            Sink::File(path) => read_file(path),
            Sink::Kubernetes { .. } => BTreeMap::new(),
        };
        let on_kubernetes = matches!(self.sink, Sink::Kubernetes { .. });
        let mut resync = tokio::time::Instant::now() + RESYNC;
        loop {
            if on_kubernetes && tokio::time::Instant::now() >= resync {
                written.clear();
                resync = tokio::time::Instant::now() + RESYNC;
            }
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
                () = tokio::time::sleep_until(resync), if on_kubernetes => {}
            }
        }
    }

    /// Writes what changed since `written`; whether everything was written.
    async fn write(&self, statuses: &[ObjectStatus], written: &mut BTreeMap<Key, Value>) -> bool {
        let now = now();
        let current: BTreeMap<Key, (&ObjectStatus, Value)> = statuses
            .iter()
            .map(|s| {
                let key = key_of(s);
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
                        json!({"kind": kind, "namespace": namespace, "name": name, "status": status})
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
                    match reconcile(client, status, &now).await {
                        Outcome::Done(ours) => {
                            written.insert(key, ours);
                        }
                        Outcome::Gone => {
                            written.remove(&key);
                        }
                        Outcome::Retry => complete = false,
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

/// The statuses a file sink wrote before, by key.
fn read_file(path: &std::path::Path) -> BTreeMap<Key, Value> {
    let list: Vec<Value> = std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    list.into_iter()
        .map(|entry| {
            let key = (
                text(&entry["kind"]),
                text(&entry["namespace"]),
                text(&entry["name"]),
            );
            (key, entry["status"].clone())
        })
        .collect()
}

/// Brings the object's live status to what this controller says, keeping
/// the transition times the API server has, and, for a route, the parents
/// other controllers report (`status.parents` is replaced whole).
async fn reconcile(client: &kube::Client, status: &ObjectStatus, now: &str) -> Outcome {
    let api = api_for(client, status);
    let (live, version) = match crate::kube_api::timed(api.get_opt(&status.name)).await {
        Ok(Some(object)) => (
            object.data.get("status").cloned().unwrap_or(Value::Null),
            object.metadata.resource_version.clone(),
        ),
        Ok(None) => return Outcome::Gone,
        Err(e) => {
            tracing::warn!(kind = status.kind.name(), namespace = %status.namespace, name = %status.name, error = %e, "cannot read the object to write its Gateway API status");
            return Outcome::Retry;
        }
    };
    let ours = status.to_json(Some(&live), now);
    let mut wanted = ours.clone();
    if let Some(parents) = wanted["parents"].as_array_mut() {
        let others = live["parents"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["controllerName"] != CONTROLLER)
            .cloned();
        parents.extend(others);
    }
    if live == wanted {
        return Outcome::Done(ours);
    }
    // The version read: a controller that wrote in between makes this a
    // conflict (tried again), not a lost update of its parents.
    match patch_status(&api, status, &wanted, version.as_deref()).await {
        Ok(()) => Outcome::Done(ours),
        Err(e) => {
            tracing::warn!(kind = status.kind.name(), namespace = %status.namespace, name = %status.name, error = %e, "cannot write the Gateway API status");
            match e {
                // The object changed or the API server is busy: again later.
                kube::Error::Api(ref r) if r.code == 409 || r.code == 429 || r.code >= 500 => {
                    Outcome::Retry
                }
                // Refused for good (an invalid status, no permission): said
                // once, not retried every few seconds.
                kube::Error::Api(_) => Outcome::Done(ours),
                _ => Outcome::Retry,
            }
        }
    }
}

/// Writes beside the file and renames, so a reader never sees half of it.
fn replace_file(path: &std::path::Path, value: &Value) -> std::io::Result<()> {
    let staging = path.with_extension("json.new");
    std::fs::write(&staging, serde_json::to_vec_pretty(value)?)?;
    std::fs::rename(&staging, path)
}

/// The API of the object's kind, at the version it was read at.
fn api_for(client: &kube::Client, status: &ObjectStatus) -> Api<DynamicObject> {
    let plural = match status.kind {
        Kind::HttpRoute => "httproutes",
        Kind::GrpcRoute => "grpcroutes",
        Kind::TcpRoute => "tcproutes",
        Kind::TlsRoute => "tlsroutes",
        Kind::GatewayClass => "gatewayclasses",
        _ => "gateways",
    };
    crate::kube_api::dynamic_api(
        client,
        &status.api_version,
        status.kind.name(),
        plural,
        &status.namespace,
    )
}

/// Server-side apply of `status` alone, as the controller's field manager.
async fn patch_status(
    api: &Api<DynamicObject>,
    status: &ObjectStatus,
    json: &Value,
    resource_version: Option<&str>,
) -> Result<(), kube::Error> {
    let mut metadata = json!({"name": status.name});
    if !status.namespace.is_empty() {
        metadata["namespace"] = json!(status.namespace);
    }
    if let Some(version) = resource_version {
        metadata["resourceVersion"] = json!(version);
    }
    let body = json!({
        "apiVersion": status.api_version,
        "kind": status.kind.name(),
        "metadata": metadata,
        "status": json,
    });
    let params = PatchParams::apply(CONTROLLER).force();
    crate::kube_api::timed(api.patch_status(&status.name, &params, &Patch::Apply(&body)))
        .await
        .map(|_| ())
}

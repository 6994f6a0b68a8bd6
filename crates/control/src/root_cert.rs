//! ConfigMap `istio-ca-root-cert` (`root-cert.pem`) in every namespace, as
//! istiod's namespace controller keeps it: injected proxies mount it to trust
//! the control plane. Written while this control plane leads; rewritten when
//! the roots change, a namespace appears, or someone edits or deletes one.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use oxmesh_config::kind::Kind;
use serde_json::json;
use tokio::sync::watch;
use tokio_stream::StreamExt;

use crate::discovery::Discovery;
use crate::kube_api::CALL_TIMEOUT;
use crate::live_authority::LiveAuthority;

pub const CONFIG_MAP: &str = "istio-ca-root-cert";
const KEY: &str = "root-cert.pem";
const FIELD_MANAGER: &str = "oxmesh";

/// Namespaces istiod leaves alone.
const SKIPPED: [&str; 4] = [
    "kube-system",
    "kube-public",
    "kube-node-lease",
    "local-path-storage",
];

/// A full pass even when nothing said it changed.
const RESYNC: Duration = Duration::from_secs(60);

pub struct Publisher {
    pub client: kube::Client,
    pub discovery: Arc<Discovery>,
    pub authority: Arc<LiveAuthority>,
    pub leading: watch::Receiver<bool>,
}

impl Publisher {
    pub fn spawn(self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(self.run())
    }

    async fn run(mut self) {
        let mut changes = oxmesh_xds::ads::Generator::changes(&*self.discovery);
        let mut roots_changed = self.authority.roots_changed();
        let all: Api<ConfigMap> = Api::all(self.client.clone());
        let selector = format!("metadata.name={CONFIG_MAP}");
        let mut existing = std::pin::pin!(
            watcher::watcher(all, watcher::Config::default().fields(&selector)).default_backoff()
        );
        // What each namespace's ConfigMap holds now, as its watch last said.
        let mut held: BTreeMap<String, String> = BTreeMap::new();
        let mut listing: Option<BTreeMap<String, String>> = None;
        let mut resync = tokio::time::interval(RESYNC);
        loop {
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return },
                changed = roots_changed.changed() => if changed.is_err() { return },
                changed = self.leading.changed() => if changed.is_err() { return },
                _ = resync.tick() => {}
                event = existing.next() => match event {
                    Some(Ok(event)) => {
                        if !follow(&mut held, &mut listing, event) {
                            continue;
                        }
                    }
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "watching {CONFIG_MAP} ConfigMaps");
                        continue;
                    }
                    None => return,
                },
            }
            if *self.leading.borrow() {
                self.publish(&mut held).await;
            }
        }
    }

    /// Writes the roots into every namespace whose ConfigMap lacks them.
    async fn publish(&self, held: &mut BTreeMap<String, String>) {
        let roots = self.authority.roots_pem();
        for namespace in namespaces(&self.discovery) {
            if held.get(&namespace) == Some(&roots) {
                continue;
            }
            let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &namespace);
            let object = json!({
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": CONFIG_MAP, "labels": {"istio.io/config": "true"}},
                "data": {KEY: roots},
            });
            let params = PatchParams::apply(FIELD_MANAGER).force();
            let patch = Patch::Apply(&object);
            let write = api.patch(CONFIG_MAP, &params, &patch);
            match tokio::time::timeout(CALL_TIMEOUT, write).await {
                Ok(Ok(_)) => {
                    tracing::debug!(%namespace, "wrote {CONFIG_MAP}");
                    held.insert(namespace, roots.clone());
                }
                Ok(Err(e)) => {
                    tracing::warn!(%namespace, error = %e, "cannot write {CONFIG_MAP}; retrying later")
                }
                Err(_) => {
                    tracing::warn!(%namespace, "writing {CONFIG_MAP} timed out; retrying later")
                }
            }
        }
    }
}

/// Applies a watch event to what is held; whether a pass is worth making.
fn follow(
    held: &mut BTreeMap<String, String>,
    listing: &mut Option<BTreeMap<String, String>>,
    event: Event<ConfigMap>,
) -> bool {
    let entry = |cm: &ConfigMap| {
        let namespace = cm.metadata.namespace.clone().unwrap_or_default();
        let root = cm
            .data
            .as_ref()
            .and_then(|d| d.get(KEY))
            .cloned()
            .unwrap_or_default();
        (namespace, root)
    };
    match event {
        Event::Init => {
            *listing = Some(BTreeMap::new());
            false
        }
        Event::InitApply(cm) => {
            let (namespace, root) = entry(&cm);
            listing.get_or_insert_default().insert(namespace, root);
            false
        }
        Event::InitDone => {
            *held = listing.take().unwrap_or_default();
            true
        }
        Event::Apply(cm) => {
            let (namespace, root) = entry(&cm);
            held.insert(namespace, root);
            true
        }
        Event::Delete(cm) => {
            held.remove(&entry(&cm).0);
            true
        }
    }
}

/// The namespaces the cluster has now, but those istiod leaves alone.
fn namespaces(discovery: &Discovery) -> BTreeSet<String> {
    discovery
        .config()
        .objects
        .iter()
        .filter(|o| o.kind == Kind::Namespace)
        .map(|o| o.name().to_owned())
        .filter(|name| !SKIPPED.contains(&name.as_str()))
        .collect()
}

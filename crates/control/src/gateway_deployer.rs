//! Istio's deployment controller, on Kubernetes: each managed Gateway of
//! class `istio` gets its ServiceAccount, Deployment and Service
//! `<name>-istio` (`oxmesh_config::gateway_api::deployment`), applied by the
//! leading replica with server-side apply and owned by the Gateway, so
//! Kubernetes removes them with it. The pods carry Istio's gateway injection
//! template; the injection webhook makes their `istio-proxy` the gateway.
//! The `istio` GatewayClass is made too, when the cluster serves the
//! Gateway API and has none of that name.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kube::api::{Patch, PatchParams, PostParams};
use oxmesh_config::gateway_api::{self as api, deployment};
use oxmesh_config::object::{Object, Resource};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::discovery::Discovery;
use crate::gateway_api::CONTROLLER;

/// A failed apply is tried again after this long, changes or not.
const RETRY: Duration = Duration::from_secs(5);
/// Everything is applied again this often, so a deleted or edited
/// Deployment comes back as it should be.
const RESYNC: Duration = Duration::from_secs(60);

/// apiVersion, kind, namespace and name.
type Key = (String, String, String, String);

pub struct Deployer {
    pub client: kube::Client,
    pub discovery: Arc<Discovery>,
    pub leading: watch::Receiver<bool>,
}

impl Deployer {
    pub fn spawn(self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(self.run())
    }

    async fn run(mut self) {
        let mut changes = oxmesh_xds::ads::Generator::changes(&*self.discovery);
        // What was applied, so an unchanged Gateway costs no call.
        let mut applied: BTreeMap<Key, Value> = BTreeMap::new();
        let mut resync = tokio::time::Instant::now() + RESYNC;
        loop {
            if tokio::time::Instant::now() >= resync {
                applied.clear();
                resync = tokio::time::Instant::now() + RESYNC;
            }
            let complete = if *self.leading.borrow() {
                self.apply_all(&mut applied).await
            } else {
                applied.clear();
                true
            };
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return },
                changed = self.leading.changed() => if changed.is_err() { return },
                () = tokio::time::sleep(RETRY), if !complete => {}
                () = tokio::time::sleep_until(resync) => {}
            }
        }
    }

    /// Applies what every managed Gateway should have; whether all went.
    async fn apply_all(&self, applied: &mut BTreeMap<Key, Value>) -> bool {
        let snapshot = self.discovery.config();
        let served = |class: &str| crate::gateway_api::serves_class(&snapshot.objects, class);
        let mut complete = true;
        if needs_default_class(&snapshot.objects) {
            complete &= self.create_default_class(applied).await;
        }
        for object in &snapshot.objects {
            let Resource::KubernetesGateway(gateway) = &object.resource else {
                continue;
            };
            for made in deployment::derived(&document(object, gateway), served) {
                complete &= self.apply_once(applied, made).await;
            }
        }
        complete
    }

    /// Creates the `istio` GatewayClass, as istiod does: never by apply, so
    /// a class someone else made (one the snapshot does not show yet) is
    /// left as it is; false when it should be tried again soon.
    async fn create_default_class(&self, applied: &mut BTreeMap<Key, Value>) -> bool {
        let class = deployment::default_class();
        let key = key_of(&class);
        if applied.contains_key(&key) {
            return true;
        }
        let object: kube::api::DynamicObject = match serde_json::from_value(class.clone()) {
            Ok(object) => object,
            Err(e) => {
                tracing::warn!(error = %e, "cannot make the istio GatewayClass");
                return true;
            }
        };
        let api = crate::kube_api::dynamic_api(&self.client, &key.0, &key.1, "gatewayclasses", "");
        let created =
            match crate::kube_api::timed(api.create(&PostParams::default(), &object)).await {
                // There already: someone's, or ours from before.
                Err(kube::Error::Api(r)) if r.code == 409 => Ok(()),
                other => other.map(|_| ()),
            };
        settle(applied, key, class, created)
    }

    /// Applies `made` unless it was applied as it is; false when it should
    /// be tried again soon.
    async fn apply_once(&self, applied: &mut BTreeMap<Key, Value>, made: Value) -> bool {
        let key = key_of(&made);
        if applied.get(&key) == Some(&made) {
            return true;
        }
        let result = apply(&self.client, &made).await;
        settle(applied, key, made, result)
    }
}

/// Records `made` once its call went, or was refused for good (invalid,
/// forbidden: said once, tried again at the next resync); false when it
/// should be tried again soon.
fn settle(
    applied: &mut BTreeMap<Key, Value>,
    key: Key,
    made: Value,
    result: Result<(), kube::Error>,
) -> bool {
    if let Err(e) = &result {
        tracing::warn!(kind = %key.1, namespace = %key.2, name = %key.3, error = %e, "cannot deploy the Gateway's gateway");
        let for_good =
            matches!(e, kube::Error::Api(r) if r.code < 500 && r.code != 409 && r.code != 429);
        if !for_good {
            return false;
        }
    }
    applied.insert(key, made);
    true
}

/// Whether the `istio` GatewayClass should be made, as istiod makes it: the
/// cluster serves the Gateway API (some object of it is here) and no class
/// of that name exists (a user's own is never replaced).
fn needs_default_class(objects: &[Arc<Object>]) -> bool {
    let gateway_api = objects
        .iter()
        .any(|o| o.api_version.starts_with(api::GROUP));
    let exists = objects
        .iter()
        .any(|o| matches!(o.resource, Resource::GatewayClass(_)) && o.name() == api::CLASS);
    gateway_api && !exists
}

/// The Gateway as the API server has it: what the deployment is made from.
fn document(object: &Object, gateway: &api::Gateway) -> Value {
    let listeners: Vec<Value> = gateway
        .listeners
        .iter()
        .map(|l| json!({"name": l.name, "port": l.port, "protocol": l.protocol}))
        .collect();
    let addresses: Vec<Value> = gateway
        .addresses
        .iter()
        .map(|a| json!({"type": a.address_type, "value": a.value}))
        .collect();
    json!({
        "apiVersion": object.api_version,
        "kind": "Gateway",
        "metadata": {
            "name": object.name(),
            "namespace": object.namespace(),
            "uid": object.meta.uid,
            "labels": object.meta.labels,
            "annotations": object.meta.annotations,
        },
        "spec": {
            "gatewayClassName": gateway.gateway_class_name,
            "listeners": listeners,
            "addresses": addresses,
            // Absent ones are left out: the Gateway's own metadata is used.
            "infrastructure": gateway.infrastructure.as_ref().map(|i| json!({
                "labels": i.labels,
                "annotations": i.annotations,
            })),
        },
    })
}

fn key_of(object: &Value) -> Key {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    (
        text(&object["apiVersion"]),
        text(&object["kind"]),
        text(&object["metadata"]["namespace"]),
        text(&object["metadata"]["name"]),
    )
}

async fn apply(client: &kube::Client, object: &Value) -> Result<(), kube::Error> {
    let (api_version, kind, namespace, name) = key_of(object);
    // ServiceAccount, Deployment, Service.
    let plural = format!("{}s", kind.to_ascii_lowercase());
    let api = crate::kube_api::dynamic_api(client, &api_version, &kind, &plural, &namespace);
    let params = PatchParams::apply(CONTROLLER).force();
    crate::kube_api::timed(api.patch(&name, &params, &Patch::Apply(object)))
        .await
        .map(|_| ())
}

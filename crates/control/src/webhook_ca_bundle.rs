//! The admission webhook configurations `oxmesh install` creates carry no
//! `caBundle`; the control plane writes the mesh root into every webhook of
//! them, as istiod does, so the API server trusts the certificate on 15017.
//! Rewritten when the roots change, and put back if someone changes it.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use kube::api::{Api, DynamicObject, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::Value;
use tokio::sync::watch;

use crate::live_authority::LiveAuthority;

/// How often the configurations are checked when nothing said they changed.
const RESYNC: Duration = Duration::from_secs(30);

pub struct Patcher {
    pub client: kube::Client,
    pub authority: Arc<LiveAuthority>,
    pub leading: watch::Receiver<bool>,
    /// `MutatingWebhookConfiguration` or `ValidatingWebhookConfiguration`, and
    /// the name.
    pub configurations: Vec<(&'static str, String)>,
}

/// The webhook configurations of a revision, under Istio's names.
pub fn configurations(revision: &str, namespace: &str) -> Vec<(&'static str, String)> {
    let suffix = crate::control_plane::revision_suffix(revision);
    vec![
        (
            "MutatingWebhookConfiguration",
            format!("istio-sidecar-injector{suffix}"),
        ),
        (
            "ValidatingWebhookConfiguration",
            format!("istio-validator{suffix}-{namespace}"),
        ),
    ]
}

impl Patcher {
    pub fn spawn(self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(self.run())
    }

    async fn run(mut self) {
        let mut roots_changed = self.authority.roots_changed();
        let mut resync = tokio::time::interval(RESYNC);
        loop {
            tokio::select! {
                changed = roots_changed.changed() => if changed.is_err() { return },
                changed = self.leading.changed() => if changed.is_err() { return },
                _ = resync.tick() => {}
            }
            if !*self.leading.borrow() {
                continue;
            }
            let bundle = base64::engine::general_purpose::STANDARD
                .encode(self.authority.roots_pem().as_bytes());
            for (kind, name) in &self.configurations {
                let patch = self.patch(kind, name, &bundle);
                match tokio::time::timeout(crate::kube_api::CALL_TIMEOUT, patch).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(%kind, %name, error = %e, "cannot write the webhook's caBundle; retrying later")
                    }
                    Err(_) => {
                        tracing::warn!(%kind, %name, "writing the webhook's caBundle timed out; retrying later")
                    }
                }
            }
        }
    }

    /// Sets every webhook's `clientConfig.caBundle`; a configuration that is
    /// not installed is left alone.
    async fn patch(&self, kind: &str, name: &str, bundle: &str) -> Result<(), kube::Error> {
        let gvk = GroupVersionKind::gvk("admissionregistration.k8s.io", "v1", kind);
        let plural = format!("{}s", kind.to_lowercase());
        let resource = ApiResource::from_gvk_with_plural(&gvk, &plural);
        let api: Api<DynamicObject> = Api::all_with(self.client.clone(), &resource);
        let Some(mut object) = api.get_opt(name).await? else {
            return Ok(());
        };
        if !set_bundle(&mut object.data, bundle) {
            return Ok(());
        }
        // The resourceVersion read above makes this safe against a concurrent edit;
        // a conflict is retried at the next pass.
        api.replace(name, &PostParams::default(), &object).await?;
        tracing::info!(%kind, %name, "wrote the mesh root as the webhooks' caBundle");
        Ok(())
    }
}

/// Puts `bundle` into every webhook; whether anything changed.
fn set_bundle(data: &mut Value, bundle: &str) -> bool {
    let mut changed = false;
    let webhooks = data.get_mut("webhooks").and_then(Value::as_array_mut);
    for webhook in webhooks.into_iter().flatten() {
        let config = &mut webhook["clientConfig"];
        if config["caBundle"].as_str() != Some(bundle) {
            config["caBundle"] = Value::String(bundle.to_owned());
            changed = true;
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_webhook_gets_the_bundle_once() {
        let mut data = serde_json::json!({"webhooks": [
            {"name": "a", "clientConfig": {"service": {"name": "istiod"}}},
            {"name": "b", "clientConfig": {"service": {"name": "istiod"}, "caBundle": "old"}},
        ]});
        assert!(set_bundle(&mut data, "new"));
        assert_eq!(data["webhooks"][0]["clientConfig"]["caBundle"], "new");
        assert_eq!(
            data["webhooks"][1]["clientConfig"]["service"]["name"],
            "istiod"
        );
        assert!(!set_bundle(&mut data, "new"), "nothing left to change");
    }

    #[test]
    fn a_revision_has_its_own_configurations() {
        assert_eq!(
            configurations("canary", "istio-system")[0].1,
            "istio-sidecar-injector-canary"
        );
        assert_eq!(
            configurations("default", "istio-system")[1].1,
            "istio-validator-istio-system"
        );
    }
}

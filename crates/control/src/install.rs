//! `oxmesh install`: the manifests that put the control plane on a cluster
//! under Istio's names (`manifests/` holds them as templates), printed or
//! applied with server-side apply, and removed again.

use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::Scope;
use serde_json::Value;

/// The field manager server-side apply records for what oxmesh installs.
const FIELD_MANAGER: &str = "oxmesh-install";

const NAMESPACE: &str = include_str!("../../../manifests/namespace.yaml");
const CRDS: &str = include_str!("../../../manifests/crds.yaml");
const RBAC: &str = include_str!("../../../manifests/rbac.yaml");
const ISTIOD: &str = include_str!("../../../manifests/istiod.yaml");
const WEBHOOKS_DEFAULT: &str = include_str!("../../../manifests/webhooks-default.yaml");
const WEBHOOKS_REVISION: &str = include_str!("../../../manifests/webhooks-revision.yaml");
const INGRESS_GATEWAY: &str = include_str!("../../../manifests/ingressgateway.yaml");

/// What to install.
#[derive(Clone, Debug)]
pub struct Install {
    pub namespace: String,
    /// `default`, or a named revision installed beside it (no gateway: the
    /// default install's gateway serves both).
    pub revision: String,
    pub image: String,
    pub trust_domain: String,
}

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error(
        "--revision {0:?}: a revision is a DNS label (lower-case letters, digits and '-', at most 63)"
    )]
    Revision(String),
    #[error(
        "--purge with --revision {0}: the CRDs are shared with every other revision; uninstall without --purge"
    )]
    PurgeRevision(String),
    #[error("the rendered manifests do not parse: {0}")]
    Render(String),
    #[error("{object}: {source}")]
    Api {
        object: String,
        #[source]
        source: kube::Error,
    },
}

/// One object of the install, as applied or removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Installed {
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
}

impl std::fmt::Display for Installed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {ns}/{}", self.kind, self.name),
            None => write!(f, "{} {}", self.kind, self.name),
        }
    }
}

impl Install {
    fn is_default(&self) -> bool {
        self.revision == "default"
    }

    /// Refuses what would render broken manifests.
    pub fn check(&self) -> Result<(), InstallError> {
        let r = &self.revision;
        let label = !r.is_empty()
            && r.len() <= 63
            && r.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !r.starts_with('-')
            && !r.ends_with('-');
        if label {
            Ok(())
        } else {
            Err(InstallError::Revision(r.clone()))
        }
    }

    /// The manifests in apply order, as one multi-document YAML text.
    pub fn render(&self) -> String {
        let mut parts = vec![NAMESPACE, CRDS, RBAC, ISTIOD];
        if self.is_default() {
            parts.extend([WEBHOOKS_DEFAULT, INGRESS_GATEWAY]);
        } else {
            parts.push(WEBHOOKS_REVISION);
        }
        let suffix = crate::control_plane::revision_suffix(&self.revision);
        parts
            .iter()
            .map(|text| {
                text.replace("{{namespace}}", &self.namespace)
                    .replace("{{image}}", &self.image)
                    .replace("{{revision}}", &self.revision)
                    .replace("{{suffix}}", &suffix)
                    .replace("{{trust_domain}}", &self.trust_domain)
            })
            .map(|text| text.trim().to_owned())
            .collect::<Vec<_>>()
            .join("\n---\n")
            + "\n"
    }

    /// Every object of the install, in apply order.
    pub fn objects(&self) -> Result<Vec<DynamicObject>, InstallError> {
        self.check()?;
        let documents: Vec<Value> = serde_saphyr::from_multiple(&self.render())
            .map_err(|e| InstallError::Render(e.to_string()))?;
        documents
            .into_iter()
            .filter(|d| !d.is_null())
            .map(|d| serde_json::from_value(d).map_err(|e| InstallError::Render(e.to_string())))
            .collect()
    }

    /// Applies every object with server-side apply, forcing ownership of the
    /// fields oxmesh sets (as `istioctl install` does).
    pub async fn apply(&self, client: &kube::Client) -> Result<Vec<Installed>, InstallError> {
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let mut applied = Vec::new();
        for object in self.objects()? {
            let (api, installed) = api_for(client, &object).await?;
            api.patch(&installed.name, &params, &Patch::Apply(&object))
                .await
                .map_err(|source| InstallError::Api {
                    object: installed.to_string(),
                    source,
                })?;
            applied.push(installed);
        }
        Ok(applied)
    }

    /// Deletes what `apply` created, last first. The namespace stays (it may
    /// hold the user's `cacerts`), and so do the CRDs unless `purge`: deleting
    /// a CRD deletes every object of its kind.
    pub async fn remove(
        &self,
        client: &kube::Client,
        purge: bool,
    ) -> Result<Vec<Installed>, InstallError> {
        if purge && !self.is_default() {
            return Err(InstallError::PurgeRevision(self.revision.clone()));
        }
        let mut removed = Vec::new();
        for object in self.objects()?.into_iter().rev() {
            let kind = object.types.as_ref().map_or("", |t| t.kind.as_str());
            if kind == "Namespace" || (kind == "CustomResourceDefinition" && !purge) {
                continue;
            }
            let (api, installed) = api_for(client, &object).await?;
            match api.delete(&installed.name, &DeleteParams::default()).await {
                Ok(_) => removed.push(installed),
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(source) => {
                    return Err(InstallError::Api {
                        object: installed.to_string(),
                        source,
                    });
                }
            }
        }
        Ok(removed)
    }
}

/// The API for an object's kind, found through discovery.
async fn api_for(
    client: &kube::Client,
    object: &DynamicObject,
) -> Result<(Api<DynamicObject>, Installed), InstallError> {
    let types = object.types.clone().unwrap_or_default();
    let name = object.metadata.name.clone().unwrap_or_default();
    let namespace = object.metadata.namespace.clone();
    let installed = Installed {
        kind: types.kind.clone(),
        namespace: namespace.clone(),
        name,
    };
    let gvk = GroupVersionKind::try_from(&types).map_err(|e| {
        InstallError::Render(format!(
            "{installed}: apiVersion {:?}: {e}",
            types.api_version
        ))
    })?;
    let (resource, capabilities) =
        kube::discovery::pinned_kind(client, &gvk)
            .await
            .map_err(|source| InstallError::Api {
                object: installed.to_string(),
                source,
            })?;
    let api = match (capabilities.scope, &namespace) {
        (Scope::Namespaced, Some(ns)) => Api::namespaced_with(client.clone(), ns, &resource),
        _ => Api::all_with(client.clone(), &resource),
    };
    Ok((api, installed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn install(revision: &str) -> Install {
        Install {
            namespace: "mesh-system".into(),
            revision: revision.into(),
            image: "example.com/oxmesh:dev".into(),
            trust_domain: "example.org".into(),
        }
    }

    #[test]
    fn every_placeholder_is_filled_and_every_document_parses() {
        for revision in ["default", "canary"] {
            let text = install(revision).render();
            assert!(!text.contains("{{"), "{revision}: a placeholder is left");
            let objects = install(revision).objects().expect("parses");
            assert!(objects.len() > 20, "{revision}: {} objects", objects.len());
            assert!(text.contains("example.com/oxmesh:dev"));
        }
    }

    #[test]
    fn a_revision_must_be_a_dns_label() {
        assert!(install("canary-2").check().is_ok());
        for bad in ["Canary", "", "-x", "a b", "x\ny: z"] {
            assert!(install(bad).check().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_revision_installs_its_own_control_plane_and_webhooks_but_no_gateway() {
        let names = |revision: &str| -> Vec<String> {
            install(revision)
                .objects()
                .expect("parses")
                .iter()
                .map(|o| {
                    let kind = o.types.as_ref().map_or("", |t| t.kind.as_str()).to_owned();
                    format!("{kind}/{}", o.metadata.name.clone().unwrap_or_default())
                })
                .collect()
        };
        let default = names("default");
        assert!(default.contains(&"Deployment/istiod".to_owned()));
        assert!(
            default.contains(&"MutatingWebhookConfiguration/istio-sidecar-injector".to_owned())
        );
        assert!(default.contains(&"Deployment/istio-ingressgateway".to_owned()));
        let canary = names("canary");
        assert!(canary.contains(&"Deployment/istiod-canary".to_owned()));
        assert!(
            canary
                .contains(&"MutatingWebhookConfiguration/istio-sidecar-injector-canary".to_owned())
        );
        assert!(!canary.iter().any(|n| n.contains("ingressgateway")));
    }
}

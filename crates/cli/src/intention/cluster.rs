//! The cluster target: Services read, and intention policies applied
//! (server-side apply, field manager `oxmesh-intention`) or removed, through
//! the API server the kubeconfig names.

use std::path::Path;

use anyhow::Context as _;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::Value;

const FIELD_MANAGER: &str = "oxmesh-intention";

fn resource(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

fn services() -> ApiResource {
    resource("", "v1", "Service", "services")
}

fn policies() -> ApiResource {
    resource(
        "security.istio.io",
        "v1",
        "AuthorizationPolicy",
        "authorizationpolicies",
    )
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

async fn client(kubeconfig: &Path) -> anyhow::Result<kube::Client> {
    Ok(oxmesh_control::kube_api::connect_as_user(Some(kubeconfig)).await?)
}

/// Every Service, and the AuthorizationPolicies labelled `label`.
pub fn objects(kubeconfig: &Path, label: &str) -> anyhow::Result<Vec<Value>> {
    runtime()?.block_on(async {
        let client = client(kubeconfig).await?;
        let mut out = Vec::new();
        for (ar, selector) in [(services(), None), (policies(), Some(label))] {
            let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
            let mut params = ListParams::default();
            if let Some(label) = selector {
                params = params.labels(label);
            }
            let list = api
                .list(&params)
                .await
                .with_context(|| format!("listing {}", ar.plural))?;
            for item in list.items {
                let mut value = serde_json::to_value(&item)?;
                value["kind"] = Value::String(ar.kind.clone());
                value["apiVersion"] = Value::String(ar.api_version.clone());
                out.push(value);
            }
        }
        Ok(out)
    })
}

/// Applies `policies` and removes `stale`.
pub fn write(
    kubeconfig: &Path,
    policies_to_apply: &[Value],
    stale: &[Value],
) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let client = client(kubeconfig).await?;
        let ar = policies();
        let api = |o: &Value| -> anyhow::Result<(Api<DynamicObject>, String)> {
            let ns = o["metadata"]["namespace"].as_str().context("a namespace")?;
            let name = o["metadata"]["name"].as_str().context("a name")?;
            Ok((
                Api::namespaced_with(client.clone(), ns, &ar),
                name.to_owned(),
            ))
        };
        for old in stale {
            let (api, name) = api(old)?;
            api.delete(&name, &DeleteParams::default())
                .await
                .with_context(|| format!("deleting AuthorizationPolicy {name}"))?;
        }
        let params = PatchParams::apply(FIELD_MANAGER).force();
        for policy in policies_to_apply {
            let (api, name) = api(policy)?;
            api.patch(&name, &params, &Patch::Apply(policy))
                .await
                .with_context(|| format!("applying AuthorizationPolicy {name}"))?;
        }
        Ok(())
    })
}

//! Which kinds the API server serves, and at which version: for each kind the
//! mesh reads, the first of its versions (newest first, so `v1` when served)
//! that the API server's discovery lists.

use kube::core::{ApiResource, GroupVersionKind};
use oxmesh_config::kind::Kind;

/// A kind to watch: where the API serves it and which objects of it matter.
#[derive(Clone, Debug)]
pub struct Watched {
    pub kind: Kind,
    pub resource: ApiResource,
    /// Only this namespace's objects (the mesh ConfigMap), else every namespace.
    pub namespace: Option<String>,
    pub field_selector: Option<String>,
}

/// What discovery found.
#[derive(Debug, Default)]
pub struct Served {
    pub watched: Vec<Watched>,
    /// Kinds the API server does not serve at any version the mesh reads
    /// (their CRDs are not installed, or only at a version oxmesh does not know).
    pub missing: Vec<Kind>,
}

/// Kinds the control plane does not watch: the registry reads pods, not their
/// controllers.
fn is_watched(kind: Kind) -> bool {
    !matches!(
        kind,
        Kind::Deployment
            | Kind::StatefulSet
            | Kind::DaemonSet
            | Kind::ReplicaSet
            | Kind::Job
            | Kind::CronJob
    )
}

/// Every kind the control plane reads from Kubernetes.
pub fn wanted() -> impl Iterator<Item = Kind> {
    Kind::ALL.into_iter().filter(|k| is_watched(*k))
}

/// Asks the API server which of `kinds` it serves. An unreachable API server is
/// an error; a group or version it does not serve is not.
pub async fn discover(
    client: &kube::Client,
    kinds: impl Iterator<Item = Kind>,
    root_namespace: &str,
) -> Result<Served, kube::Error> {
    let mut served = Served::default();
    let mut lists = std::collections::HashMap::new();
    for kind in kinds {
        let mut found = None;
        for version in kind.versions() {
            let group_version = group_version(kind.group(), version);
            if !lists.contains_key(&group_version) {
                let list = resources(client, kind.group(), version).await?;
                lists.insert(group_version.clone(), list);
            }
            let plural = lists[&group_version].iter().find_map(|r| {
                (r.kind == kind.name() && !r.name.contains('/')).then(|| r.name.clone())
            });
            if let Some(plural) = plural {
                let gvk = GroupVersionKind::gvk(kind.group(), version, kind.name());
                found = Some(ApiResource::from_gvk_with_plural(&gvk, &plural));
                break;
            }
        }
        match found {
            Some(resource) => served.watched.push(scoped(kind, resource, root_namespace)),
            None => served.missing.push(kind),
        }
    }
    Ok(served)
}

/// Narrows the kinds that come by the thousand but matter only in part.
fn scoped(kind: Kind, resource: ApiResource, root_namespace: &str) -> Watched {
    let (namespace, field_selector) = match kind {
        // Mesh config: the `istio` ConfigMap of the root namespace, nothing else.
        Kind::ConfigMap => (
            Some(root_namespace.to_owned()),
            Some(format!("metadata.name={}", oxmesh_config::mesh::CONFIG_MAP)),
        ),
        // Gateway credentials; never service-account tokens, Helm releases,
        // or the mesh CA's keys (`istio-ca-secret`, a plug-in `cacerts`).
        Kind::Secret => (
            None,
            Some(
                "type!=kubernetes.io/service-account-token,type!=helm.sh/release.v1,type!=istio.io/ca-root,metadata.name!=cacerts"
                    .to_owned(),
            ),
        ),
        _ => (None, None),
    };
    Watched {
        kind,
        resource,
        namespace,
        field_selector,
    }
}

fn group_version(group: &str, version: &str) -> String {
    if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    }
}

/// The resources of one group version; empty when it is not served.
async fn resources(
    client: &kube::Client,
    group: &str,
    version: &str,
) -> Result<Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::APIResource>, kube::Error> {
    let list = if group.is_empty() {
        client.list_core_api_resources(version).await
    } else {
        client
            .list_api_group_resources(&group_version(group, version))
            .await
    };
    match list {
        Ok(list) => Ok(list.resources),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

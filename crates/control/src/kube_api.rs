//! Reaching the Kubernetes API server: from inside a pod with its service
//! account, or from outside with a kubeconfig. One client serves every caller
//! (the config source, TokenReview, the writers); it keeps its connections.

use std::path::{Path, PathBuf};

use kube::config::{Config, KubeConfigOptions, Kubeconfig};

/// How long one request of the control plane's own (a read, a write; not a
/// watch) may take before it is given up and retried later.
pub const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A call of the control plane's own, given up after [`CALL_TIMEOUT`] as
/// if the API server had failed it.
pub async fn timed<T>(
    call: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<T, kube::Error> {
    tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .map_err(|_| kube::Error::Service("the API server did not answer in time".into()))?
}

/// The API of objects of `kind` at `api_version` (`group/version`, or a
/// core `version`) whose plural is `plural`: in `namespace`, or
/// cluster-scoped when it is empty.
pub fn dynamic_api(
    client: &kube::Client,
    api_version: &str,
    kind: &str,
    plural: &str,
    namespace: &str,
) -> kube::Api<kube::api::DynamicObject> {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let resource = kube::api::ApiResource {
        group: group.to_owned(),
        version: version.to_owned(),
        api_version: api_version.to_owned(),
        kind: kind.to_owned(),
        plural: plural.to_owned(),
    };
    if namespace.is_empty() {
        kube::Api::all_with(client.clone(), &resource)
    } else {
        kube::Api::namespaced_with(client.clone(), namespace, &resource)
    }
}

/// Where a pod finds its service account's token.
const SERVICE_ACCOUNT_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

#[derive(Debug, thiserror::Error)]
pub enum KubeApiError {
    #[error("kubeconfig {path}: {source}")]
    Kubeconfig {
        path: PathBuf,
        source: kube::config::KubeconfigError,
    },
    #[error("in-cluster config: {0}")]
    InCluster(#[from] kube::config::InClusterError),
    #[error(
        "no cluster to talk to (give --kubeconfig, set KUBECONFIG, or write ~/.kube/config): {0}"
    )]
    Infer(#[from] kube::config::InferConfigError),
    #[error("a client for the API server: {0}")]
    Client(#[from] kube::Error),
}

/// The API server named by `kubeconfig`, else the cluster this process runs in
/// (`KUBERNETES_SERVICE_HOST` and a mounted service-account token), else none.
pub async fn connect(kubeconfig: Option<&Path>) -> Result<Option<kube::Client>, KubeApiError> {
    let config = match kubeconfig {
        Some(path) => from_file(path).await?,
        None if in_cluster() => Config::incluster()?,
        None => return Ok(None),
    };
    tracing::info!(server = %config.cluster_url, "using the Kubernetes API server");
    Ok(Some(kube::Client::try_from(config)?))
}

async fn from_file(path: &Path) -> Result<Config, KubeApiError> {
    let error = |source| KubeApiError::Kubeconfig {
        path: path.to_owned(),
        source,
    };
    let file = Kubeconfig::read_from(path).map_err(error)?;
    Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
        .await
        .map_err(error)
}

/// For commands a person runs (`oxmesh install`): `kubeconfig`, else what
/// kubectl would use (`$KUBECONFIG`, `~/.kube/config`, then in-cluster).
pub async fn connect_as_user(kubeconfig: Option<&Path>) -> Result<kube::Client, KubeApiError> {
    let config = match kubeconfig {
        Some(path) => from_file(path).await?,
        None => Config::infer().await?,
    };
    Ok(kube::Client::try_from(config)?)
}

/// A pod with a service account; a process that merely inherited the variable
/// has no way to authenticate and runs without Kubernetes.
fn in_cluster() -> bool {
    std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
        && Path::new(SERVICE_ACCOUNT_TOKEN).exists()
}

/// Native sidecars (init containers with `restartPolicy: Always`) are on by
/// default from Kubernetes 1.29. An API server that does not say its version
/// is taken to have them: that is what current clusters run.
pub async fn supports_native_sidecars(client: &kube::Client) -> bool {
    match client.apiserver_version().await {
        Ok(info) => {
            let supported = at_least(&info.major, &info.minor, 1, 29);
            if !supported {
                tracing::info!(version = %info.git_version, "Kubernetes before 1.29: injecting classic sidecars, not native ones");
            }
            supported
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the API server's version; assuming native sidecars");
            true
        }
    }
}

/// Whether `major.minor` (minor may carry a suffix, as in GKE's `29+`) is at
/// least `want_major.want_minor`.
fn at_least(major: &str, minor: &str, want_major: u32, want_minor: u32) -> bool {
    let number = |text: &str| {
        let digits: String = text.chars().take_while(char::is_ascii_digit).collect();
        digits.parse::<u32>().ok()
    };
    match (number(major), number(minor)) {
        (Some(major), Some(minor)) => (major, minor) >= (want_major, want_minor),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::at_least;

    #[test]
    fn versions_compare_as_kubernetes_writes_them() {
        assert!(at_least("1", "29", 1, 29));
        assert!(at_least("1", "33+", 1, 29));
        assert!(!at_least("1", "28", 1, 29));
        assert!(at_least("2", "0", 1, 29));
        assert!(at_least("", "", 1, 29), "unknown: assume current");
    }
}

//! Reaching the Kubernetes API server: from inside a pod with its service
//! account, or from outside with a kubeconfig. One client serves every caller
//! (the config source, TokenReview, the writers); it keeps its connections.

use std::path::{Path, PathBuf};

use kube::config::{Config, KubeConfigOptions, Kubeconfig};

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

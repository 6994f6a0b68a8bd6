//! Sidecar injection: what istiod's webhook and `istioctl kube-inject` do to a
//! pod, on untyped JSON so every field oxmesh does not model survives as it
//! was. `oxmesh kube-inject` and (with the Kubernetes source) the `/inject`
//! webhook share it.
//!
//! A pod is injected unless it opts out (label `sidecar.istio.io/inject`,
//! over the annotation of that name), uses the host's network, or already
//! carries `sidecar.istio.io/status`. Injected containers keep Istio's names
//! (`istio-init`, `istio-proxy`) so users' tooling works.

mod annotations;
mod probes;
mod prometheus;
mod sidecar;
mod workload;

use serde_json::Value;

pub use oxmesh_xds::grpc_bootstrap::{GrpcNode, grpc_bootstrap};
pub use sidecar::STATUS_ANNOTATION;
pub use workload::inject_object;

/// What injection puts in a pod, beyond what the pod's annotations say.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The image that holds `oxmesh` (the proxy and the iptables step).
    pub image: String,
    /// Where proxies find the control plane (its 15012).
    pub discovery_address: String,
    /// The control-plane revision pods are injected for.
    pub revision: String,
    pub trust_domain: String,
    pub cluster_id: String,
    /// The proxy as a Kubernetes native sidecar (an init container with
    /// `restartPolicy: Always`, Kubernetes 1.29+): it starts before the app
    /// and never keeps a finished Job's pod alive. A pod opts out with the
    /// annotation `sidecar.istio.io/nativeSidecar: "false"`.
    pub native_sidecars: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            image: format!("ghcr.io/oxmesh/oxmesh:{}", env!("CARGO_PKG_VERSION")),
            discovery_address: "istiod.istio-system.svc:15012".into(),
            revision: "default".into(),
            trust_domain: "cluster.local".into(),
            cluster_id: "Kubernetes".into(),
            native_sidecars: true,
        }
    }
}

/// What happened to one pod template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Injected,
    Skipped(Skip),
}

/// Why a pod template was left as it was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    OptedOut,
    HostNetwork,
    AlreadyInjected,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum InjectError {
    #[error("annotation {name}: {value:?}: {reason}")]
    Annotation {
        name: String,
        value: String,
        reason: String,
    },
    #[error(
        "annotation inject.istio.io/templates: unknown template {0:?} (known: sidecar, gateway, grpc-simple)"
    )]
    UnknownTemplate(String),
    #[error("{field}: {reason}")]
    Malformed { field: String, reason: String },
    #[error("{object}: {source}")]
    In {
        object: String,
        source: Box<InjectError>,
    },
}

impl InjectError {
    /// The same error, said of `object` (`Deployment default/hello`).
    pub fn at(self, object: &str) -> Self {
        Self::In {
            object: object.to_owned(),
            source: Box::new(self),
        }
    }
}

/// The templates a pod asks for (`inject.istio.io/templates`), `sidecar` by
/// default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Template {
    /// iptables init step and the proxy.
    Sidecar,
    /// The pod is a gateway: its `istio-proxy` container becomes the router.
    Gateway,
    /// Proxyless gRPC: an xDS bootstrap for the app, no proxy.
    GrpcSimple,
    /// Proxyless gRPC with the agent alone in `istio-proxy`: the bootstrap, the
    /// workload certificate in files (for mTLS), the app's probes.
    GrpcAgent,
}

fn templates(metadata: &Value) -> Result<Vec<Template>, InjectError> {
    let annotations = annotations::Annotations::of(metadata);
    let Some(list) = annotations.get("inject.istio.io/templates") else {
        return Ok(vec![Template::Sidecar]);
    };
    list.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| match t {
            "sidecar" => Ok(Template::Sidecar),
            "gateway" => Ok(Template::Gateway),
            "grpc-simple" => Ok(Template::GrpcSimple),
            "grpc-agent" => Ok(Template::GrpcAgent),
            other => Err(InjectError::UnknownTemplate(other.to_owned())),
        })
        .collect()
}

/// Whether the pod (its template's metadata and spec) is to be injected.
fn skip(metadata: &Value, spec: &Value) -> Option<Skip> {
    let label = metadata
        .get("labels")
        .and_then(|l| l.get("sidecar.istio.io/inject"))
        .and_then(Value::as_str);
    let annotation = annotations::Annotations::of(metadata).get("sidecar.istio.io/inject");
    if let Some(choice) = label.or(annotation)
        && matches!(
            choice.trim().to_ascii_lowercase().as_str(),
            "false" | "n" | "no" | "off"
        )
    {
        return Some(Skip::OptedOut);
    }
    if spec.get("hostNetwork").and_then(Value::as_bool) == Some(true) {
        return Some(Skip::HostNetwork);
    }
    if annotations::Annotations::of(metadata)
        .get(STATUS_ANNOTATION)
        .is_some()
    {
        return Some(Skip::AlreadyInjected);
    }
    None
}

/// Injects one pod: `metadata` and `spec` of a Pod or of a workload's pod
/// template. `workload` names the owner for the canonical-name label.
pub fn inject_pod(
    metadata: &mut Value,
    spec: &mut Value,
    workload: &str,
    settings: &Settings,
) -> Result<Outcome, InjectError> {
    if let Some(reason) = skip(metadata, spec) {
        return Ok(Outcome::Skipped(reason));
    }
    let templates = templates(metadata)?;
    sidecar::inject(metadata, spec, workload, &templates, settings)?;
    Ok(Outcome::Injected)
}

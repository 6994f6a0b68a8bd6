//! On Kubernetes the self-signed root lives in Secret `istio-ca-secret` in the
//! control plane's namespace, as istiod keeps it: every replica and every
//! restart signs with the same root. The first control plane to start creates
//! it; one that loses the race takes the winner's. Istio's own secret (its
//! `root-cert.pem` left empty for a self-signed root) is read too, so a mesh
//! moving from istiod keeps its root and its workloads' certificates.

use std::collections::BTreeMap;
use std::path::Path;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PostParams};
use oxmesh_identity::TrustDomain;
use oxmesh_identity::ca::{Authority, CaError, CaFiles, Lifetimes};
use oxmesh_identity::certificate::{pem_certificates, to_pem};

use crate::kube_api::CALL_TIMEOUT;

/// Istio's name for the self-signed CA's Secret.
pub const SECRET_NAME: &str = "istio-ca-secret";

#[derive(Debug, thiserror::Error)]
pub enum CaSecretError {
    #[error("Secret {namespace}/{SECRET_NAME}: {source}")]
    Api {
        namespace: String,
        source: kube::Error,
    },
    #[error("Secret {namespace}/{SECRET_NAME}: {key}: {reason}")]
    Content {
        namespace: String,
        key: &'static str,
        reason: String,
    },
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error("Secret {namespace}/{SECRET_NAME}: the API server did not answer in time")]
    Timeout { namespace: String },
}

impl CaSecretError {
    /// The API server could not be reached or answered 5xx: worth waiting for,
    /// unlike a refusal or a broken Secret.
    pub fn is_unavailable(&self) -> bool {
        match self {
            CaSecretError::Timeout { .. } => true,
            CaSecretError::Api { source, .. } => match source {
                kube::Error::Api(status) => status.code >= 500,
                _ => true,
            },
            CaSecretError::Content { .. } | CaSecretError::Ca(_) => false,
        }
    }
}

/// The self-signed CA from the cluster's Secret, or a new one published there.
pub async fn load_or_publish(
    client: &kube::Client,
    namespace: &str,
    state_dir: &Path,
    trust_domain: &TrustDomain,
    lifetimes: Lifetimes,
) -> Result<Authority, CaSecretError> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let api_error = |source| CaSecretError::Api {
        namespace: namespace.to_owned(),
        source,
    };
    let timed = |namespace: &str| CaSecretError::Timeout {
        namespace: namespace.to_owned(),
    };
    let dir = state_dir.join("ca");
    let existing = tokio::time::timeout(CALL_TIMEOUT, secrets.get_opt(SECRET_NAME))
        .await
        .map_err(|_| timed(namespace))?;
    if let Some(secret) = existing.map_err(api_error)? {
        files_of(&secret, namespace)?.write(&dir)?;
        tracing::info!("using the mesh root from Secret {namespace}/{SECRET_NAME}");
        return Ok(Authority::self_signed(state_dir, trust_domain, lifetimes)?);
    }
    // None yet: ours (from an earlier run's state, or new) becomes the cluster's.
    let authority = Authority::self_signed(state_dir, trust_domain, lifetimes)?;
    let ours = CaFiles::read(&dir)?.ok_or_else(|| CaError::Incomplete {
        dir: dir.display().to_string(),
        found: Vec::new(),
        missing: oxmesh_identity::ca::files::NAMES.to_vec(),
    })?;
    let created = tokio::time::timeout(
        CALL_TIMEOUT,
        secrets.create(&PostParams::default(), &secret_of(&ours)),
    )
    .await
    .map_err(|_| timed(namespace))?;
    match created {
        Ok(_) => {
            tracing::info!("published the new mesh root as Secret {namespace}/{SECRET_NAME}");
            Ok(authority)
        }
        Err(kube::Error::Api(status)) if status.code == 409 => {
            // Another replica got there first: its root is the mesh's.
            let secret = tokio::time::timeout(CALL_TIMEOUT, secrets.get(SECRET_NAME))
                .await
                .map_err(|_| timed(namespace))?
                .map_err(api_error)?;
            files_of(&secret, namespace)?.write(&dir)?;
            tracing::info!("another control plane published the mesh root first; using it");
            Ok(Authority::self_signed(state_dir, trust_domain, lifetimes)?)
        }
        Err(e) => Err(api_error(e)),
    }
}

fn secret_of(files: &CaFiles) -> Secret {
    let entry = |key: &str, text: String| (key.to_owned(), ByteString(text.into_bytes()));
    let data: BTreeMap<String, ByteString> = [
        entry("ca-cert.pem", to_pem(std::slice::from_ref(&files.cert))),
        entry("ca-key.pem", files.key_pem.clone()),
        entry("cert-chain.pem", to_pem(&files.chain)),
        entry("root-cert.pem", to_pem(&files.roots)),
    ]
    .into_iter()
    .collect();
    Secret {
        metadata: ObjectMeta {
            name: Some(SECRET_NAME.to_owned()),
            labels: Some(
                [("app.kubernetes.io/part-of".to_owned(), "oxmesh".to_owned())]
                    .into_iter()
                    .collect(),
            ),
            ..ObjectMeta::default()
        },
        type_: Some("istio.io/ca-root".to_owned()),
        data: Some(data),
        ..Secret::default()
    }
}

/// The CA in a Secret; an empty `root-cert.pem` (Istio's self-signed layout)
/// means the signing certificate is the root.
fn files_of(secret: &Secret, namespace: &str) -> Result<CaFiles, CaSecretError> {
    let empty = BTreeMap::new();
    let data = secret.data.as_ref().unwrap_or(&empty);
    let text = |key: &'static str| -> Result<&[u8], CaSecretError> {
        data.get(key)
            .map(|b| b.0.as_slice())
            .ok_or_else(|| CaSecretError::Content {
                namespace: namespace.to_owned(),
                key,
                reason: "missing".to_owned(),
            })
    };
    let certs = |key: &'static str, bytes: &[u8]| {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Vec::new());
        }
        pem_certificates(bytes).map_err(|e| CaSecretError::Content {
            namespace: namespace.to_owned(),
            key,
            reason: e.to_string(),
        })
    };
    let cert = certs("ca-cert.pem", text("ca-cert.pem")?)?
        .into_iter()
        .next()
        .ok_or_else(|| CaSecretError::Content {
            namespace: namespace.to_owned(),
            key: "ca-cert.pem",
            reason: "no certificate".to_owned(),
        })?;
    let key_pem =
        String::from_utf8(text("ca-key.pem")?.to_vec()).map_err(|_| CaSecretError::Content {
            namespace: namespace.to_owned(),
            key: "ca-key.pem",
            reason: "not PEM text".to_owned(),
        })?;
    let chain = match data.get("cert-chain.pem") {
        Some(bytes) => certs("cert-chain.pem", &bytes.0)?,
        None => Vec::new(),
    };
    let mut roots = match data.get("root-cert.pem") {
        Some(bytes) => certs("root-cert.pem", &bytes.0)?,
        None => Vec::new(),
    };
    if roots.is_empty() {
        roots.push(cert.clone());
    }
    Ok(CaFiles {
        cert,
        key_pem,
        chain,
        roots,
    })
}

//! On Kubernetes a workload proves who it is with its service-account token
//! (a projected JWT, audience `istio-ca`); the API server says whose it is
//! through a TokenReview, as istiod asks it. The control plane calls the API
//! server with its own service-account token, trusting the cluster's CA.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use oxmesh_identity::token::CA_AUDIENCE;
use oxmesh_identity::{SpiffeId, TrustDomain};
use rustls::pki_types::ServerName;
use serde_json::{Value, json};

use crate::authenticate::{AuthError, Authenticator, LocalTokens};

/// Where a pod finds its service account's token and the cluster's CA.
const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// A review that takes longer than this fails, and the caller is refused.
const REVIEW_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_ANSWER_BYTES: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ApiServerError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the cluster CA in {path}: {reason}")]
    Ca { path: PathBuf, reason: String },
    #[error("{0:?} is not a host name or address")]
    Host(String),
}

/// The Kubernetes API server, as the control plane reaches it.
#[derive(Debug)]
pub struct ApiServer {
    host: String,
    /// The name the API server's certificate must carry: `host` itself.
    name: ServerName<'static>,
    port: u16,
    tls: Arc<rustls::ClientConfig>,
    token_file: PathBuf,
}

impl ApiServer {
    /// The API server of the cluster this process runs in (`KUBERNETES_SERVICE_HOST`
    /// and the pod's service-account files), or `None` outside a cluster or
    /// without a service-account token.
    pub fn in_cluster() -> Result<Option<Self>, ApiServerError> {
        let Ok(host) = std::env::var("KUBERNETES_SERVICE_HOST") else {
            return Ok(None);
        };
        let port = std::env::var("KUBERNETES_SERVICE_PORT")
            .ok()
            .and_then(|p| p.parse().ok())
            .unwrap_or(443);
        let dir = Path::new(SERVICE_ACCOUNT_DIR);
        // A pod without a mounted service account (or a process that merely
        // inherited the variable) has no way to ask: local tokens only.
        if !dir.join("token").exists() {
            tracing::info!(dir = %dir.display(), "no service-account token: TokenReview is off");
            return Ok(None);
        }
        Self::new(&host, port, &dir.join("ca.crt"), &dir.join("token")).map(Some)
    }

    /// `host:port` over TLS, trusting the CA in `ca_file`, calling with the
    /// token in `token_file` (read at each call: projected tokens rotate).
    pub fn new(
        host: &str,
        port: u16,
        ca_file: &Path,
        token_file: &Path,
    ) -> Result<Self, ApiServerError> {
        let ca = std::fs::read(ca_file).map_err(|source| ApiServerError::Read {
            path: ca_file.to_owned(),
            source,
        })?;
        let ca_error = |reason: String| ApiServerError::Ca {
            path: ca_file.to_owned(),
            reason,
        };
        let mut roots = rustls::RootCertStore::empty();
        let certificates = oxmesh_identity::certificate::pem_certificates(&ca)
            .map_err(|e| ca_error(e.to_string()))?;
        for certificate in certificates {
            roots
                .add(certificate)
                .map_err(|e| ca_error(e.to_string()))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ca_error(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = ServerName::try_from(host.to_owned())
            .map_err(|_| ApiServerError::Host(host.to_owned()))?;
        Ok(Self {
            host: host.to_owned(),
            name,
            port,
            tls: Arc::new(tls),
            token_file: token_file.to_owned(),
        })
    }

    /// POSTs `body` to `path` and returns the JSON answer.
    async fn post(&self, path: &str, body: &Value) -> Result<Value, String> {
        let token = std::fs::read_to_string(&self.token_file)
            .map_err(|e| format!("cannot read {}: {e}", self.token_file.display()))?;
        let address = match self.host.parse::<IpAddr>() {
            Ok(ip) => std::net::SocketAddr::new(ip, self.port).to_string(),
            Err(_) => format!("{}:{}", self.host, self.port),
        };
        let tcp = tokio::net::TcpStream::connect(&address)
            .await
            .map_err(|e| format!("cannot reach the API server at {address}: {e}"))?;
        let stream = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(self.name.clone(), tcp)
            .await
            .map_err(|e| format!("TLS with the API server at {address}: {e}"))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        let request = http::Request::post(path)
            .header(http::header::HOST, &self.host)
            .header(
                http::header::AUTHORIZATION,
                format!("Bearer {}", token.trim()),
            )
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::ACCEPT, "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| e.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let bytes = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        if !status.is_success() {
            return Err(format!(
                "the API server answered {status}: {}",
                String::from_utf8_lossy(&bytes).trim()
            ));
        }
        serde_json::from_slice(&bytes).map_err(|e| format!("the API server's answer: {e}"))
    }
}

/// Service-account tokens, checked by the API server.
#[derive(Clone)]
pub struct TokenReview {
    api: Arc<ApiServer>,
    trust_domain: TrustDomain,
}

impl TokenReview {
    pub fn new(api: Arc<ApiServer>, trust_domain: TrustDomain) -> Self {
        Self { api, trust_domain }
    }

    async fn review(&self, token: &str) -> Result<SpiffeId, AuthError> {
        let review = json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token, "audiences": [CA_AUDIENCE]},
        });
        let answer = self
            .api
            .post("/apis/authentication.k8s.io/v1/tokenreviews", &review)
            .await
            .map_err(AuthError::Invalid)?;
        identity(&answer["status"], &self.trust_domain)
    }
}

/// The workload a TokenReview's status names, if it says the token is good
/// for the CA.
fn identity(status: &Value, trust_domain: &TrustDomain) -> Result<SpiffeId, AuthError> {
    if status["authenticated"] != true {
        let reason = status["error"]
            .as_str()
            .unwrap_or("the API server did not authenticate it");
        return Err(AuthError::Invalid(reason.to_owned()));
    }
    // An API server that checked the audience says so; one that lists others
    // accepted the token for something else.
    if let Some(audiences) = status["audiences"].as_array()
        && !audiences.iter().any(|a| a == CA_AUDIENCE)
    {
        return Err(AuthError::Invalid(format!(
            "the token is not for audience {CA_AUDIENCE}"
        )));
    }
    let username = status["user"]["username"].as_str().unwrap_or_default();
    let account = username
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'))
        .ok_or_else(|| AuthError::Invalid(format!("{username:?} is not a service account")))?;
    SpiffeId::new(trust_domain.clone(), account.0, account.1)
        .map_err(|e| AuthError::Invalid(e.to_string()))
}

impl Authenticator for TokenReview {
    async fn authenticate(&self, token: &str) -> Result<SpiffeId, AuthError> {
        tokio::time::timeout(REVIEW_TIMEOUT, self.review(token))
            .await
            .map_err(|_| {
                AuthError::Invalid("the API server did not answer the TokenReview in time".into())
            })?
    }
}

/// Every caller the control plane accepts: tokens it minted itself, and on
/// Kubernetes service-account tokens the API server vouches for.
#[derive(Clone)]
pub struct Callers {
    pub local: LocalTokens,
    pub cluster: Option<TokenReview>,
}

impl Authenticator for Callers {
    async fn authenticate(&self, token: &str) -> Result<SpiffeId, AuthError> {
        match (self.local.authenticate(token).await, &self.cluster) {
            (Ok(id), _) => Ok(id),
            (Err(_), Some(review)) => review.authenticate(token).await,
            (Err(local), None) => Err(local),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reviewed_service_account_becomes_its_spiffe_id() {
        let td = TrustDomain::cluster_local();
        let ok = json!({"authenticated": true, "audiences": ["istio-ca"], "user": {"username": "system:serviceaccount:default:reviews"}});
        assert_eq!(
            identity(&ok, &td).map(|id| id.to_string()),
            Ok("spiffe://cluster.local/ns/default/sa/reviews".to_owned())
        );
        let elsewhere = json!({"authenticated": true, "audiences": ["https://kubernetes.default.svc"], "user": {"username": "system:serviceaccount:default:reviews"}});
        assert!(identity(&elsewhere, &td).is_err());
        let person = json!({"authenticated": true, "user": {"username": "alice"}});
        assert!(identity(&person, &td).is_err());
        let refused = json!({"authenticated": false, "error": "token expired"});
        assert_eq!(
            identity(&refused, &td).map(|_| ()),
            Err(AuthError::Invalid("token expired".into()))
        );
    }
}

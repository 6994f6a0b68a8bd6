//! Keeps a workload's certificate fresh: makes a key (it never leaves the process),
//! asks the CA to sign a CSR for it, installs the result, and renews at about half
//! the certificate's life. While the CA cannot be reached it retries with backoff and
//! the current certificate keeps serving. A workload that reads its certificate
//! from files (a proxyless gRPC app) is handed each new one as PEM by a sink.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer};

use crate::bundle::TrustBundle;
use crate::certificate::pem_certificates;
use crate::credentials::{Credentials, CredentialsError, Svid};
use crate::csr;

/// Something that signs CSRs: Istio's `CreateCertificate` over gRPC in production,
/// the CA in-process where the control plane itself needs a certificate.
pub trait CaClient: Send + Sync {
    /// Returns the PEM chain as Istio does: leaf first, roots in the last element.
    fn create_certificate(
        &self,
        csr_pem: String,
        ttl: Duration,
    ) -> impl Future<Output = Result<Vec<String>, CaClientError>> + Send;
}

impl<T: CaClient> CaClient for Arc<T> {
    fn create_certificate(
        &self,
        csr_pem: String,
        ttl: Duration,
    ) -> impl Future<Output = Result<Vec<String>, CaClientError>> + Send {
        self.as_ref().create_certificate(csr_pem, ttl)
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum CaClientError {
    #[error("the CA is unreachable: {0}")]
    Unavailable(String),
    #[error("the CA refused the request: {0}")]
    Refused(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error(transparent)]
    Ca(#[from] CaClientError),
    #[error("cannot make a key and CSR: {0}")]
    Key(String),
    #[error("the CA's response is unusable: {0}")]
    Response(String),
    #[error("the CA's certificate is unusable: {0}")]
    Install(#[from] CredentialsError),
    #[error("cannot hand the certificate over: {0}")]
    Sink(#[source] std::io::Error),
}

/// When to renew and how to retry.
#[derive(Clone, Copy, Debug)]
pub struct Rotation {
    /// Requested certificate lifetime.
    pub ttl: Duration,
    /// Renew after this share of the lifetime...
    pub ratio: f64,
    /// ...give or take this share, so a fleet does not renew in one burst.
    pub jitter: f64,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for Rotation {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(24 * 3600),
            ratio: 0.5,
            jitter: 0.02,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(60),
        }
    }
}

/// One issued certificate as PEM text, for a workload that reads files.
pub struct IssuedPem {
    /// The leaf, then the intermediates.
    pub chain: String,
    /// PKCS#8.
    pub key: String,
    pub roots: String,
}

/// Called with every certificate installed (to write it to files); an error is
/// logged and retried like a failed refresh.
pub type Sink = Arc<dyn Fn(&IssuedPem) -> std::io::Result<()> + Send + Sync>;

pub struct CertificateManager<C> {
    client: C,
    credentials: Arc<Credentials>,
    rotation: Rotation,
    sink: Option<Sink>,
}

impl<C: CaClient> CertificateManager<C> {
    pub fn new(client: C, credentials: Arc<Credentials>, rotation: Rotation) -> Self {
        Self {
            client,
            credentials,
            rotation,
            sink: None,
        }
    }

    /// Also hands every new certificate, key included, to `sink`.
    pub fn with_sink(mut self, sink: Sink) -> Self {
        self.sink = Some(sink);
        self
    }

    pub fn credentials(&self) -> &Arc<Credentials> {
        &self.credentials
    }

    /// One round: a new key, a CSR, the CA's answer, installed.
    pub async fn refresh(&self) -> Result<Arc<Svid>, ManagerError> {
        let (csr, key) = csr::generate(self.credentials.identity())
            .map_err(|e| ManagerError::Key(e.to_string()))?;
        let elements = self
            .client
            .create_certificate(csr, self.rotation.ttl)
            .await?;
        let (chain, bundle) = split_response(&elements)?;
        let key_pem = self.sink.as_ref().map(|_| key.serialize_pem());
        let key = PrivatePkcs8KeyDer::from(key.serialize_der()).into();
        let svid = self.credentials.install(chain, key, bundle)?;
        if let (Some(sink), Some(key), [leaf @ .., roots]) =
            (&self.sink, key_pem, elements.as_slice())
        {
            let issued = IssuedPem {
                chain: leaf
                    .iter()
                    .map(|pem| format!("{}\n", pem.trim_end()))
                    .collect(),
                key,
                roots: roots.clone(),
            };
            sink(&issued).map_err(ManagerError::Sink)?;
        }
        Ok(svid)
    }

    /// Refreshes for ever: renews on schedule, retries with backoff on failure.
    pub async fn run(self) {
        let mut backoff = self.rotation.initial_backoff;
        loop {
            let delay = match self.refresh().await {
                Ok(svid) => {
                    backoff = self.rotation.initial_backoff;
                    let delay = self.renewal_delay(&svid, SystemTime::now());
                    tracing::info!(identity = %self.credentials.identity(), renew_in = ?delay, "certificate installed");
                    delay
                }
                Err(e) => {
                    let delay = self.retry_delay(backoff);
                    backoff = (backoff * 2).min(self.rotation.max_backoff);
                    tracing::warn!(identity = %self.credentials.identity(), error = %e, retry_in = ?delay, "certificate refresh failed; the current certificate keeps serving");
                    delay
                }
            };
            tokio::time::sleep(delay).await;
        }
    }

    /// Until `ratio` (± jitter) of the certificate's life has passed.
    fn renewal_delay(&self, svid: &Svid, now: SystemTime) -> Duration {
        let lifetime = svid
            .not_after
            .duration_since(svid.not_before)
            .unwrap_or_default();
        let share = (self.rotation.ratio + self.rotation.jitter * (2.0 * random_fraction() - 1.0))
            .clamp(0.0, 1.0);
        let renew_at = svid.not_before + lifetime.mul_f64(share);
        renew_at.duration_since(now).unwrap_or_default()
    }

    /// Backoff with ±20% spread, but never past the current certificate's expiry.
    fn retry_delay(&self, backoff: Duration) -> Duration {
        let spread = backoff.mul_f64(0.8 + 0.4 * random_fraction());
        match self.credentials.svid() {
            Some(svid) => spread
                .min(
                    svid.not_after
                        .duration_since(SystemTime::now())
                        .unwrap_or_default(),
                )
                .max(Duration::from_millis(50)),
            None => spread,
        }
    }
}

/// Istio's response: leaf, then intermediates, the roots in the last element.
fn split_response(
    elements: &[String],
) -> Result<(Vec<CertificateDer<'static>>, TrustBundle), ManagerError> {
    let [leaf, middle @ .., roots] = elements else {
        return Err(ManagerError::Response(format!(
            "expected a leaf and roots, got {} element(s)",
            elements.len()
        )));
    };
    let mut chain = pem_certificates(leaf.as_bytes())
        .map_err(|e| ManagerError::Response(format!("leaf: {e}")))?;
    chain.truncate(1);
    for intermediate in middle {
        chain.extend(
            pem_certificates(intermediate.as_bytes())
                .map_err(|e| ManagerError::Response(format!("intermediate: {e}")))?,
        );
    }
    let bundle = TrustBundle::from_pem(roots.as_bytes())
        .map_err(|e| ManagerError::Response(e.to_string()))?;
    Ok((chain, bundle))
}

/// A uniformly random number in [0, 1).
fn random_fraction() -> f64 {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 4];
    // Without randomness the jitter is merely zero; nothing else depends on it.
    let _ = ring::rand::SystemRandom::new().fill(&mut bytes);
    f64::from(u32::from_le_bytes(bytes)) / (f64::from(u32::MAX) + 1.0)
}

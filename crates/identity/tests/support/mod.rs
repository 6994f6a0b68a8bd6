//! Shared by the identity tests: a real CA in-process, reachable as a `CaClient`,
//! and temporary directories.

#![allow(dead_code)]

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use oxmesh_identity::ca::{Authority, Lifetimes};
use oxmesh_identity::credentials::Credentials;
use oxmesh_identity::csr::SigningRequest;
use oxmesh_identity::manager::{CaClient, CaClientError, CertificateManager, Rotation};
use oxmesh_identity::{SpiffeId, TrustDomain};
pub use oxmesh_testkit::TempDir;

pub fn id(s: &str) -> SpiffeId {
    s.parse().expect("valid SPIFFE id")
}

/// The real `Authority`, called in-process; `available` stands for the network
/// path to it, so tests can take the CA away and bring it back.
pub struct LocalCa {
    pub authority: Arc<Authority>,
    pub available: AtomicBool,
    pub attempts: AtomicUsize,
    pub issued_at: Mutex<Vec<tokio::time::Instant>>,
}

impl LocalCa {
    pub fn new(authority: Authority) -> Arc<Self> {
        Arc::new(Self {
            authority: Arc::new(authority),
            available: AtomicBool::new(true),
            attempts: AtomicUsize::new(0),
            issued_at: Mutex::new(Vec::new()),
        })
    }

    pub fn issued(&self) -> Vec<tokio::time::Instant> {
        self.issued_at.lock().expect("lock").clone()
    }
}

impl CaClient for LocalCa {
    async fn create_certificate(
        &self,
        csr_pem: String,
        ttl: Duration,
    ) -> Result<Vec<String>, CaClientError> {
        self.attempts.fetch_add(1, Ordering::SeqCst);
        if !self.available.load(Ordering::SeqCst) {
            return Err(CaClientError::Unavailable("connection refused".into()));
        }
        let request = SigningRequest::from_pem(&csr_pem)
            .map_err(|e| CaClientError::Refused(e.to_string()))?;
        let identity = request
            .identity()
            .map_err(|e| CaClientError::Refused(e.to_string()))?;
        let chain = self
            .authority
            .sign(&request, &identity, Some(ttl))
            .map_err(|e| CaClientError::Refused(e.to_string()))?;
        self.issued_at
            .lock()
            .expect("lock")
            .push(tokio::time::Instant::now());
        Ok(chain.to_pem_elements())
    }
}

pub fn self_signed(dir: &TempDir, trust_domain: &str) -> Authority {
    Authority::self_signed(
        &dir.0,
        &TrustDomain::new(trust_domain).expect("td"),
        Lifetimes::default(),
    )
    .expect("CA")
}

/// Credentials for `identity`, issued once by `ca`.
pub async fn workload(ca: &Arc<LocalCa>, identity: &str) -> Arc<Credentials> {
    let manager = CertificateManager::new(
        ca.clone(),
        Credentials::new(id(identity)),
        Rotation::default(),
    );
    manager.refresh().await.expect("certificate issued");
    manager.credentials().clone()
}

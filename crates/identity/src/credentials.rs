//! A workload's live credentials: its current certificate and key, and the trust
//! bundle. TLS configs read them at every handshake, so a renewed certificate or a
//! new root applies to the next connection without rebuilding anything, and live
//! connections are untouched.

use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::{ArcSwap, ArcSwapOption};
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ServerConfig, SignatureScheme};

use crate::bundle::TrustBundle;
use crate::certificate::CertificateInfo;
use crate::spiffe::SpiffeId;
use crate::verify::{PeerPolicy, SpiffeVerifier};

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("the certificate chain is empty")]
    EmptyChain,
    #[error("the certificate is for {found:?}, but this workload is {expected}")]
    WrongIdentity {
        expected: SpiffeId,
        found: Vec<String>,
    },
    #[error("the certificate and private key do not match: {0}")]
    KeyMismatch(rustls::Error),
    #[error("the certificate cannot be read: {0}")]
    Certificate(String),
}

/// One issued certificate with its key.
#[derive(Debug)]
pub struct Svid {
    pub certified: Arc<CertifiedKey>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

#[derive(Debug)]
pub struct Credentials {
    identity: SpiffeId,
    svid: ArcSwapOption<Svid>,
    bundle: Arc<ArcSwap<TrustBundle>>,
    provider: Arc<CryptoProvider>,
}

impl Credentials {
    pub fn new(identity: SpiffeId) -> Arc<Self> {
        Arc::new(Self {
            identity,
            svid: ArcSwapOption::empty(),
            bundle: Arc::new(ArcSwap::from_pointee(TrustBundle::empty())),
            provider: Arc::new(rustls::crypto::ring::default_provider()),
        })
    }

    pub fn identity(&self) -> &SpiffeId {
        &self.identity
    }

    /// Replaces certificate and trust bundle, after checking that the certificate
    /// is this workload's and matches the key.
    pub fn install(
        &self,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        bundle: TrustBundle,
    ) -> Result<Arc<Svid>, CredentialsError> {
        let leaf = chain.first().ok_or(CredentialsError::EmptyChain)?;
        let info = CertificateInfo::parse(leaf.as_ref())
            .map_err(|e| CredentialsError::Certificate(e.to_string()))?;
        if info.uri_sans != [self.identity.to_string()] {
            return Err(CredentialsError::WrongIdentity {
                expected: self.identity.clone(),
                found: info.uri_sans,
            });
        }
        let certified = CertifiedKey::from_der(chain, key, &self.provider)
            .map_err(CredentialsError::KeyMismatch)?;
        certified
            .keys_match()
            .map_err(CredentialsError::KeyMismatch)?;
        let svid = Arc::new(Svid {
            certified: Arc::new(certified),
            not_before: info.not_before,
            not_after: info.not_after,
        });
        self.svid.store(Some(svid.clone()));
        self.bundle.store(Arc::new(bundle));
        Ok(svid)
    }

    /// Replaces only the trust bundle (a root rotation pushed separately).
    pub fn set_bundle(&self, bundle: TrustBundle) {
        self.bundle.store(Arc::new(bundle));
    }

    pub fn svid(&self) -> Option<Arc<Svid>> {
        self.svid.load_full()
    }

    pub fn bundle(&self) -> Arc<TrustBundle> {
        self.bundle.load_full()
    }

    /// Ready once a certificate that has not expired is loaded.
    pub fn is_ready(&self) -> bool {
        self.svid().is_some_and(|s| s.not_after > SystemTime::now())
    }

    /// A server that requires client certificates accepted by `policy`.
    ///
    /// Session resumption is off on both sides: a resumed session skips the peer's
    /// certificate, and the peer's identity must be checked on every connection
    /// (mesh connections are pooled, so full handshakes are rare anyway).
    pub fn server_config(self: &Arc<Self>, policy: PeerPolicy) -> ServerConfig {
        let verifier = Arc::new(SpiffeVerifier::new(
            self.bundle.clone(),
            policy,
            self.provider.clone(),
        ));
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap_or_else(|_| unreachable!("the ring provider supports TLS 1.2 and 1.3"))
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(Current(self.clone())));
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        config
    }

    /// A server that presents this workload's certificate and asks nothing of its
    /// clients, which prove themselves otherwise (the CA's bearer tokens).
    pub fn server_config_without_client_auth(self: &Arc<Self>) -> ServerConfig {
        ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap_or_else(|_| unreachable!("the ring provider supports TLS 1.2 and 1.3"))
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Current(self.clone())))
    }

    /// A client that presents this workload's certificate and accepts only servers
    /// `policy` allows.
    pub fn client_config(self: &Arc<Self>, policy: PeerPolicy) -> ClientConfig {
        let verifier = Arc::new(SpiffeVerifier::new(
            self.bundle.clone(),
            policy,
            self.provider.clone(),
        ));
        let mut config = ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap_or_else(|_| unreachable!("the ring provider supports TLS 1.2 and 1.3"))
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_cert_resolver(Arc::new(Current(self.clone())));
        config.resumption = rustls::client::Resumption::disabled();
        config
    }
}

/// Hands rustls whatever certificate is current at each handshake.
#[derive(Debug)]
struct Current(Arc<Credentials>);

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.svid.load().as_ref().map(|s| s.certified.clone())
    }
}

impl ResolvesClientCert for Current {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.0.svid.load().as_ref().map(|s| s.certified.clone())
    }

    fn has_certs(&self) -> bool {
        self.0.svid.load().is_some()
    }
}

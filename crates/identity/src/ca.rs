//! The mesh certificate authority: signs workload certificates from CSRs, with a
//! self-signed root kept in the control plane's state directory, or a plug-in CA
//! (an intermediate under the operator's root) read from Istio's `cacerts` layout.

pub mod files;

use std::path::Path;
use std::time::{Duration, SystemTime};

use rustls_pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::certificate::{CertificateInfo, to_pem};
use crate::csr::SigningRequest;
use crate::spiffe::{SpiffeId, TrustDomain};

pub use files::CaFiles;

/// Istio's default and maximum workload certificate lifetimes.
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);
pub const MAX_TTL: Duration = Duration::from_secs(90 * 24 * 3600);
/// Certificates start a little in the past, for peers whose clocks run behind.
const CLOCK_SKEW: Duration = Duration::from_secs(120);
const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error(
        "incomplete CA in {dir}: found {found:?} but not {missing:?}; restore the missing files (the CA is never regenerated over existing files)"
    )]
    Incomplete {
        dir: String,
        found: Vec<&'static str>,
        missing: Vec<&'static str>,
    },
    #[error("{0}: the private key does not belong to the signing certificate")]
    KeyMismatch(String),
    #[error("{0}: the signing certificate is not a CA certificate")]
    NotCa(String),
    #[error("{0}: the certificate chain does not lead to a root in root-cert.pem")]
    BrokenChain(String),
    #[error("{0}: the signing certificate has expired")]
    Expired(String),
    #[error("cannot create the CA: {0}")]
    Generate(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    #[error("requested TTL {requested:?} is greater than the max allowed TTL {max:?}")]
    TtlTooLong { requested: Duration, max: Duration },
    #[error("the CA's signing certificate has expired")]
    CaExpired,
    #[error("certificate generation failed: {0}")]
    Generate(String),
}

/// A signed workload certificate with the chain that leads to the trust roots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuedChain {
    pub leaf: CertificateDer<'static>,
    pub intermediates: Vec<CertificateDer<'static>>,
    pub roots: Vec<CertificateDer<'static>>,
}

impl IssuedChain {
    /// As Istio's `CreateCertificate` returns it: the leaf, each intermediate, and the
    /// roots together in the last element (so clients that read only the last element
    /// as the trust bundle still get every root).
    pub fn to_pem_elements(&self) -> Vec<String> {
        let mut out = vec![to_pem(std::slice::from_ref(&self.leaf))];
        out.extend(
            self.intermediates
                .iter()
                .map(|c| to_pem(std::slice::from_ref(c))),
        );
        out.push(to_pem(&self.roots));
        out
    }

    /// Leaf then intermediates: what a TLS peer presents.
    pub fn presented(&self) -> Vec<CertificateDer<'static>> {
        std::iter::once(self.leaf.clone())
            .chain(self.intermediates.iter().cloned())
            .collect()
    }
}

/// How long certificates live.
#[derive(Clone, Copy, Debug)]
pub struct Lifetimes {
    pub default_ttl: Duration,
    pub max_ttl: Duration,
}

impl Default for Lifetimes {
    fn default() -> Self {
        Self {
            default_ttl: DEFAULT_TTL,
            max_ttl: MAX_TTL,
        }
    }
}

impl Lifetimes {
    /// A maximum above Istio's 90 days is capped there.
    pub fn new(default_ttl: Duration, max_ttl: Duration) -> Self {
        let max_ttl = max_ttl.min(MAX_TTL);
        Self {
            default_ttl: default_ttl.min(max_ttl),
            max_ttl,
        }
    }
}

/// The signing side of the CA.
pub struct Authority {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    /// The signing certificate and what lies between it and the root (Istio's
    /// `cert-chain.pem`); empty when the signing certificate is the root.
    chain: Vec<CertificateDer<'static>>,
    roots: Vec<CertificateDer<'static>>,
    issuer_not_after: SystemTime,
    lifetimes: Lifetimes,
    /// Where it came from, for messages.
    source: String,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("source", &self.source)
            .field("roots", &self.roots.len())
            .finish()
    }
}

impl Authority {
    /// The self-signed CA kept in `state_dir/ca`: created on first use, loaded as it
    /// is afterwards, and never silently replaced.
    pub fn self_signed(
        state_dir: &Path,
        trust_domain: &TrustDomain,
        lifetimes: Lifetimes,
    ) -> Result<Self, CaError> {
        let dir = state_dir.join("ca");
        let files = match CaFiles::read(&dir)? {
            Some(files) => files,
            None => {
                let files = new_root(trust_domain)?;
                files.write(&dir)?;
                tracing::info!(dir = %dir.display(), "created a self-signed root CA");
                files
            }
        };
        Self::from_files(files, &dir, lifetimes)
    }

    /// The self-signed CA an earlier run created in `state_dir/ca`; an error if there
    /// is none (for tools that must not create one).
    pub fn existing(state_dir: &Path, lifetimes: Lifetimes) -> Result<Self, CaError> {
        Self::plug_in(&state_dir.join("ca"), lifetimes)
    }

    /// A plug-in CA from a directory in Istio's `cacerts` layout (`ca-cert.pem`,
    /// `ca-key.pem`, `cert-chain.pem`, `root-cert.pem`).
    pub fn plug_in(dir: &Path, lifetimes: Lifetimes) -> Result<Self, CaError> {
        let files = CaFiles::read(dir)?.ok_or_else(|| CaError::Incomplete {
            dir: dir.display().to_string(),
            found: Vec::new(),
            missing: files::NAMES.to_vec(),
        })?;
        Self::from_files(files, dir, lifetimes)
    }

    fn from_files(files: CaFiles, dir: &Path, lifetimes: Lifetimes) -> Result<Self, CaError> {
        let source = dir.display().to_string();
        let key = crate::key::signing_key_from_pem(files.key_pem.as_bytes()).map_err(|e| {
            CaError::File {
                path: format!("{source}/ca-key.pem"),
                reason: e.to_string(),
            }
        })?;
        let (_, signing) =
            X509Certificate::from_der(files.cert.as_ref()).map_err(|e| CaError::File {
                path: format!("{source}/ca-cert.pem"),
                reason: e.to_string(),
            })?;
        if signing.public_key().raw
            != rcgen::PublicKeyData::subject_public_key_info(&key).as_slice()
        {
            return Err(CaError::KeyMismatch(source));
        }
        if !signing.is_ca() {
            return Err(CaError::NotCa(source));
        }
        let info = CertificateInfo::parse(files.cert.as_ref()).map_err(|e| CaError::File {
            path: format!("{source}/ca-cert.pem"),
            reason: e.to_string(),
        })?;
        if info.not_after <= SystemTime::now() {
            return Err(CaError::Expired(source));
        }
        let self_signed = files.roots.iter().any(|r| r == &files.cert);
        let chain = if self_signed {
            Vec::new()
        } else {
            files.chain.clone()
        };
        verify_path(&files.cert, &chain, &files.roots)
            .map_err(|()| CaError::BrokenChain(source.clone()))?;
        let issuer =
            rcgen::Issuer::from_ca_cert_der(&files.cert, key).map_err(|e| CaError::File {
                path: format!("{source}/ca-cert.pem"),
                reason: e.to_string(),
            })?;
        Ok(Self {
            issuer,
            chain,
            roots: files.roots,
            issuer_not_after: info.not_after,
            lifetimes,
            source,
        })
    }

    /// The trust roots: everything `root-cert.pem` holds (old and new during a root
    /// rotation).
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    pub fn roots_pem(&self) -> String {
        to_pem(&self.roots)
    }

    pub fn lifetimes(&self) -> Lifetimes {
        self.lifetimes
    }

    /// Signs `request` for `identity`. The caller has already checked that the
    /// request names `identity` and that the requester may have it.
    pub fn sign(
        &self,
        request: &SigningRequest,
        identity: &SpiffeId,
        ttl: Option<Duration>,
    ) -> Result<IssuedChain, SignError> {
        self.sign_with_dns_names(request, identity, &[], ttl)
    }

    /// As `sign`, with DNS names too: for the control plane's own serving
    /// certificate, which clients verify by host name.
    pub fn sign_with_dns_names(
        &self,
        request: &SigningRequest,
        identity: &SpiffeId,
        dns_names: &[String],
        ttl: Option<Duration>,
    ) -> Result<IssuedChain, SignError> {
        let ttl = match ttl.filter(|t| !t.is_zero()) {
            None => self.lifetimes.default_ttl,
            Some(t) if t > self.lifetimes.max_ttl => {
                return Err(SignError::TtlTooLong {
                    requested: t,
                    max: self.lifetimes.max_ttl,
                });
            }
            Some(t) => t,
        };
        let now = SystemTime::now();
        if self.issuer_not_after <= now {
            return Err(SignError::CaExpired);
        }
        let not_after = (now + ttl).min(self.issuer_not_after);
        let mut params = leaf_params(identity, now - CLOCK_SKEW, not_after)
            .map_err(|e| SignError::Generate(e.to_string()))?;
        for name in dns_names {
            let name = name
                .clone()
                .try_into()
                .map_err(|e: rcgen::Error| SignError::Generate(e.to_string()))?;
            params.subject_alt_names.push(rcgen::SanType::DnsName(name));
        }
        let key = rcgen::SubjectPublicKeyInfo::from_der(request.public_key_der())
            .map_err(|e| SignError::Generate(e.to_string()))?;
        let leaf = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| SignError::Generate(e.to_string()))?;
        Ok(IssuedChain {
            leaf: leaf.der().clone(),
            intermediates: self.chain.clone(),
            roots: self.roots.clone(),
        })
    }
}

/// A workload certificate: empty subject, one URI SAN, not a CA, for TLS both ways.
fn leaf_params(
    identity: &SpiffeId,
    not_before: SystemTime,
    not_after: SystemTime,
) -> Result<rcgen::CertificateParams, rcgen::Error> {
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.subject_alt_names = vec![rcgen::SanType::URI(identity.to_string().try_into()?)];
    params.is_ca = rcgen::IsCa::ExplicitNoCa;
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::DigitalSignature,
        rcgen::KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    params.not_before = not_before.into();
    params.not_after = not_after.into();
    params.serial_number = Some(random_serial());
    Ok(params)
}

/// 128 random bits, kept positive.
fn random_serial() -> rcgen::SerialNumber {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    // The system RNG failing is not recoverable; a fixed serial would be worse.
    if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
        panic!("the system random number generator failed");
    }
    bytes[0] &= 0x7f;
    rcgen::SerialNumber::from_slice(&bytes)
}

/// A new ECDSA P-256 root: `O=<trust domain>`, ten years, signs certificates.
fn new_root(trust_domain: &TrustDomain) -> Result<CaFiles, CaError> {
    let generate = |e: rcgen::Error| CaError::Generate(e.to_string());
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(generate)?;
    let mut params = rcgen::CertificateParams::default();
    let mut name = rcgen::DistinguishedName::new();
    name.push(rcgen::DnType::OrganizationName, trust_domain.as_str());
    params.distinguished_name = name;
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let now = SystemTime::now();
    params.not_before = now.into();
    params.not_after = (now + ROOT_LIFETIME).into();
    params.serial_number = Some(random_serial());
    let cert = params.self_signed(&key).map_err(generate)?;
    Ok(CaFiles {
        cert: cert.der().clone(),
        key_pem: key.serialize_pem(),
        chain: Vec::new(),
        roots: vec![cert.der().clone()],
    })
}

/// Checks that `cert`, through `chain` (which starts with `cert` when not empty),
/// is signed by one of `roots`.
fn verify_path(
    cert: &CertificateDer<'_>,
    chain: &[CertificateDer<'_>],
    roots: &[CertificateDer<'_>],
) -> Result<(), ()> {
    fn parse(der: &[u8]) -> Result<X509Certificate<'_>, ()> {
        X509Certificate::from_der(der)
            .map(|(_, c)| c)
            .map_err(|_| ())
    }
    let mut path: Vec<X509Certificate<'_>> = vec![parse(cert.as_ref())?];
    for extra in chain.iter().skip_while(|c| *c == cert) {
        path.push(parse(extra.as_ref())?);
    }
    for pair in path.windows(2) {
        pair[0]
            .verify_signature(Some(pair[1].public_key()))
            .map_err(|_| ())?;
    }
    let top = path.last().ok_or(())?;
    let parsed_roots = roots
        .iter()
        .map(|r| parse(r.as_ref()))
        .collect::<Result<Vec<_>, _>>()?;
    if parsed_roots
        .iter()
        .any(|root| top.verify_signature(Some(root.public_key())).is_ok())
    {
        Ok(())
    } else {
        Err(())
    }
}

/// What signs workload certificates for the CA service. `Authority` signs
/// in-process; an external signer (the Kubernetes CSR API with a signer name, as
/// cert-manager's istio-csr uses) implements the same trait.
pub trait Signer: Send + Sync + 'static {
    fn issue(
        &self,
        request: &SigningRequest,
        identity: &SpiffeId,
        ttl: Option<Duration>,
    ) -> impl std::future::Future<Output = Result<IssuedChain, SignError>> + Send;
}

impl Signer for Authority {
    async fn issue(
        &self,
        request: &SigningRequest,
        identity: &SpiffeId,
        ttl: Option<Duration>,
    ) -> Result<IssuedChain, SignError> {
        Authority::sign(self, request, identity, ttl)
    }
}

impl<S: Signer> Signer for std::sync::Arc<S> {
    fn issue(
        &self,
        request: &SigningRequest,
        identity: &SpiffeId,
        ttl: Option<Duration>,
    ) -> impl std::future::Future<Output = Result<IssuedChain, SignError>> + Send {
        self.as_ref().issue(request, identity, ttl)
    }
}

//! Reading X.509 certificates: PEM bundles, and the facts about a certificate that
//! the mesh needs (identity, validity, key) or an operator wants to see.

use std::fmt;
use std::time::{Duration, SystemTime};

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
use x509_parser::public_key::PublicKey;

use crate::spiffe::SpiffeId;

#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    #[error("no PEM certificate found")]
    Empty,
    #[error("malformed PEM: {0}")]
    Pem(String),
    #[error("malformed certificate: {0}")]
    Der(String),
}

/// Every certificate in a PEM bundle, in order.
pub fn pem_certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, CertificateError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertificateError::Pem(e.to_string()))?;
    if certs.is_empty() {
        return Err(CertificateError::Empty);
    }
    Ok(certs)
}

/// PEM text for DER certificates.
pub fn to_pem(certs: &[CertificateDer<'_>]) -> String {
    certs
        .iter()
        .map(|c| pem_block("CERTIFICATE", c.as_ref()))
        .collect()
}

pub(crate) fn pem_block(label: &str, der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new(label, der),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

/// What a certificate says, in the terms an operator reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateInfo {
    pub subject: String,
    pub issuer: String,
    pub serial: String,
    pub uri_sans: Vec<String>,
    pub dns_sans: Vec<String>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub key: KeyKind,
    pub is_ca: bool,
}

/// A public key's algorithm and size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    EcdsaP256,
    EcdsaP384,
    Rsa(usize),
    Ed25519,
    Other,
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyKind::EcdsaP256 => f.write_str("ECDSA P-256"),
            KeyKind::EcdsaP384 => f.write_str("ECDSA P-384"),
            KeyKind::Rsa(bits) => write!(f, "RSA {bits}"),
            KeyKind::Ed25519 => f.write_str("Ed25519"),
            KeyKind::Other => f.write_str("unknown"),
        }
    }
}

pub(crate) fn key_kind(spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>) -> KeyKind {
    match spki.parsed() {
        Ok(PublicKey::RSA(rsa)) => KeyKind::Rsa(rsa.key_size()),
        Ok(PublicKey::EC(point)) => match point.key_size() {
            256 => KeyKind::EcdsaP256,
            384 => KeyKind::EcdsaP384,
            _ => KeyKind::Other,
        },
        _ if spki.algorithm.algorithm.to_id_string() == "1.3.101.112" => KeyKind::Ed25519,
        _ => KeyKind::Other,
    }
}

fn system_time(t: x509_parser::time::ASN1Time) -> SystemTime {
    let seconds = t.timestamp();
    match u64::try_from(seconds) {
        Ok(s) => SystemTime::UNIX_EPOCH + Duration::from_secs(s),
        Err(_) => SystemTime::UNIX_EPOCH - Duration::from_secs(seconds.unsigned_abs()),
    }
}

impl CertificateInfo {
    pub fn parse(der: &[u8]) -> Result<Self, CertificateError> {
        let (_, cert) =
            X509Certificate::from_der(der).map_err(|e| CertificateError::Der(e.to_string()))?;
        let mut uri_sans = Vec::new();
        let mut dns_sans = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::URI(u) => uri_sans.push((*u).to_owned()),
                    GeneralName::DNSName(d) => dns_sans.push((*d).to_owned()),
                    _ => {}
                }
            }
        }
        Ok(Self {
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            serial: cert.raw_serial_as_string(),
            uri_sans,
            dns_sans,
            not_before: system_time(cert.validity().not_before),
            not_after: system_time(cert.validity().not_after),
            key: key_kind(cert.public_key()),
            is_ca: cert.is_ca(),
        })
    }

    /// The SPIFFE identities among the URI SANs.
    pub fn spiffe_ids(&self) -> Vec<SpiffeId> {
        self.uri_sans
            .iter()
            .filter_map(|u| u.parse().ok())
            .collect()
    }

    pub fn lifetime(&self) -> Duration {
        self.not_after
            .duration_since(self.not_before)
            .unwrap_or_default()
    }
}

/// SHA-256 of a certificate and of its public key (SubjectPublicKeyInfo), as
/// Envoy's `verify_certificate_hash` and `verify_certificate_spki` pin them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fingerprints {
    pub certificate: [u8; 32],
    pub public_key: [u8; 32],
}

pub fn fingerprints(der: &[u8]) -> Option<Fingerprints> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let digest = |bytes: &[u8]| -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref());
        out
    };
    Some(Fingerprints {
        certificate: digest(der),
        public_key: digest(cert.public_key().raw),
    })
}

/// The single SPIFFE identity of a workload certificate, if it has exactly one.
pub fn identity_of(der: &[u8]) -> Option<SpiffeId> {
    let info = CertificateInfo::parse(der).ok()?;
    match info.uri_sans.as_slice() {
        [only] => only.parse().ok(),
        _ => None,
    }
}

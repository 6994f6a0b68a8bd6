//! Certificate signing requests: reading and checking one (the CA's side) and making
//! one (the workload's side, whose private key never leaves it).

use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::{FromDer, X509CertificationRequest};

use crate::certificate::{KeyKind, key_kind};
use crate::spiffe::SpiffeId;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrError {
    #[error("not a PEM certificate signing request: {0}")]
    Pem(String),
    #[error("malformed certificate signing request: {0}")]
    Der(String),
    #[error("the request's signature does not verify: it was not signed by the key it carries")]
    Signature,
    #[error("unsupported key {0}: use ECDSA P-256 or P-384, or RSA of 2048 to 4096 bits")]
    Key(KeyKind),
    #[error("the request asks for a CA certificate; workload certificates cannot sign others")]
    RequestsCa,
    #[error(
        "the request names no identity: it needs exactly one URI SAN, the workload's SPIFFE id"
    )]
    NoIdentity,
    #[error("the request must name exactly one identity (one URI SAN), found: {0:?}")]
    ManyIdentities(Vec<String>),
    #[error("the request may name only a SPIFFE id, but also names {0:?}")]
    OtherNames(Vec<String>),
    #[error("the request names {requested}, but may only name {allowed}")]
    IdentityMismatch { requested: String, allowed: String },
    #[error("the request's URI SAN is not a workload identity: {0}")]
    BadIdentity(String),
}

/// A CSR that parsed and whose signature proves possession of its key.
#[derive(Clone, Debug)]
pub struct SigningRequest {
    /// The subject public key info, DER: what the certificate will certify.
    public_key: Vec<u8>,
    key: KeyKind,
    uri_sans: Vec<String>,
    other_sans: Vec<String>,
    requests_ca: bool,
}

impl SigningRequest {
    pub fn from_pem(pem: &str) -> Result<Self, CsrError> {
        let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
            .map_err(|e| CsrError::Pem(e.to_string()))?;
        if block.label != "CERTIFICATE REQUEST" && block.label != "NEW CERTIFICATE REQUEST" {
            return Err(CsrError::Pem(format!("found a {:?} block", block.label)));
        }
        Self::from_der(&block.contents)
    }

    pub fn from_der(der: &[u8]) -> Result<Self, CsrError> {
        let (_, csr) =
            X509CertificationRequest::from_der(der).map_err(|e| CsrError::Der(e.to_string()))?;
        csr.verify_signature().map_err(|_| CsrError::Signature)?;
        let info = &csr.certification_request_info;
        let key = key_kind(&info.subject_pki);
        match key {
            KeyKind::EcdsaP256 | KeyKind::EcdsaP384 => {}
            KeyKind::Rsa(bits) if (2048..=4096).contains(&bits) => {}
            other => return Err(CsrError::Key(other)),
        }
        let mut request = Self {
            public_key: info.subject_pki.raw.to_vec(),
            key,
            uri_sans: Vec::new(),
            other_sans: Vec::new(),
            requests_ca: false,
        };
        for extension in csr.requested_extensions().into_iter().flatten() {
            match extension {
                ParsedExtension::SubjectAlternativeName(san) => {
                    for name in &san.general_names {
                        match name {
                            GeneralName::URI(uri) => request.uri_sans.push((*uri).to_owned()),
                            other => request.other_sans.push(other.to_string()),
                        }
                    }
                }
                ParsedExtension::BasicConstraints(bc) if bc.ca => request.requests_ca = true,
                ParsedExtension::KeyUsage(ku) if ku.key_cert_sign() || ku.crl_sign() => {
                    request.requests_ca = true
                }
                _ => {}
            }
        }
        if request.requests_ca {
            return Err(CsrError::RequestsCa);
        }
        Ok(request)
    }

    pub fn key(&self) -> KeyKind {
        self.key
    }

    pub fn public_key_der(&self) -> &[u8] {
        &self.public_key
    }

    /// The one SPIFFE identity the request names.
    pub fn identity(&self) -> Result<SpiffeId, CsrError> {
        if !self.other_sans.is_empty() {
            return Err(CsrError::OtherNames(self.other_sans.clone()));
        }
        match self.uri_sans.as_slice() {
            [] => Err(CsrError::NoIdentity),
            [only] => only
                .parse()
                .map_err(|e: crate::spiffe::SpiffeIdError| CsrError::BadIdentity(e.to_string())),
            many => Err(CsrError::ManyIdentities(many.to_vec())),
        }
    }

    /// Checks that the request names exactly `allowed` and nothing else.
    pub fn check_identity(&self, allowed: &SpiffeId) -> Result<(), CsrError> {
        let requested = self.identity()?;
        if &requested != allowed {
            return Err(CsrError::IdentityMismatch {
                requested: requested.to_string(),
                allowed: allowed.to_string(),
            });
        }
        Ok(())
    }
}

/// A fresh ECDSA P-256 key and a CSR for `identity` signed by it. The key stays
/// with the caller.
pub fn generate(identity: &SpiffeId) -> Result<(String, rcgen::KeyPair), rcgen::Error> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let csr = request_for(identity, &key)?;
    Ok((csr, key))
}

/// A CSR for `identity` signed by `key` (any key type rcgen can sign with).
pub fn request_for(identity: &SpiffeId, key: &rcgen::KeyPair) -> Result<String, rcgen::Error> {
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.subject_alt_names = vec![rcgen::SanType::URI(identity.to_string().try_into()?)];
    params.serialize_request(key)?.pem()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> SpiffeId {
        s.parse().expect("valid id")
    }

    #[test]
    fn a_generated_request_names_its_identity() {
        let me = id("spiffe://cluster.local/ns/foo/sa/bar");
        let (pem, _key) = generate(&me).expect("generate");
        let request = SigningRequest::from_pem(&pem).expect("parse");
        assert_eq!(request.key(), KeyKind::EcdsaP256);
        assert_eq!(request.identity(), Ok(me.clone()));
        assert_eq!(request.check_identity(&me), Ok(()));
        let other = id("spiffe://cluster.local/ns/foo/sa/other");
        assert!(matches!(
            request.check_identity(&other),
            Err(CsrError::IdentityMismatch { .. })
        ));
    }

    #[test]
    fn refuses_requests_for_a_ca_or_with_extra_names() {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = vec![rcgen::SanType::URI(
            "spiffe://cluster.local/ns/a/sa/b".try_into().expect("uri"),
        )];
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let pem = params
            .serialize_request(&key)
            .and_then(|r| r.pem())
            .expect("csr");
        assert_eq!(
            SigningRequest::from_pem(&pem).err(),
            Some(CsrError::RequestsCa)
        );

        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = vec![
            rcgen::SanType::URI("spiffe://cluster.local/ns/a/sa/b".try_into().expect("uri")),
            rcgen::SanType::DnsName("evil.example.com".try_into().expect("dns")),
        ];
        let pem = params
            .serialize_request(&key)
            .and_then(|r| r.pem())
            .expect("csr");
        let request = SigningRequest::from_pem(&pem).expect("parses");
        assert!(matches!(request.identity(), Err(CsrError::OtherNames(_))));
    }

    #[test]
    fn refuses_garbage_and_tampering() {
        assert!(matches!(
            SigningRequest::from_pem("hello"),
            Err(CsrError::Pem(_))
        ));
        let (pem, _) = generate(&id("spiffe://cluster.local/ns/a/sa/b")).expect("generate");
        let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).expect("pem");
        let mut der = block.contents.clone();
        let last = der.len() - 5;
        der[last] ^= 0x55;
        assert!(matches!(
            SigningRequest::from_der(&der),
            Err(CsrError::Signature | CsrError::Der(_))
        ));
    }
}

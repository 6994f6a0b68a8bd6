//! Verifying peers: the chain must lead to the trust bundle, and the leaf must carry
//! exactly one SPIFFE id that the caller accepts.

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error, OtherError, SignatureScheme,
};

use crate::bundle::TrustBundle;
use crate::certificate::CertificateInfo;
use crate::spiffe::{SpiffeId, TrustDomain};

/// Which peer identities are acceptable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerPolicy {
    /// Any workload of these trust domains: how a server accepts mesh clients
    /// (authorization policy then decides per identity).
    TrustDomains(Vec<TrustDomain>),
    /// Exactly one of these identities: how a client checks the server it meant to reach.
    Identities(Vec<SpiffeId>),
}

impl PeerPolicy {
    /// Widens the policy with trust-domain aliases: an identity in an alias domain
    /// counts as the same identity in the mesh's domain.
    pub fn with_aliases(self, aliases: &[TrustDomain]) -> Self {
        match self {
            PeerPolicy::TrustDomains(mut domains) => {
                domains.extend(
                    aliases
                        .iter()
                        .filter(|a| !domains.contains(a))
                        .cloned()
                        .collect::<Vec<_>>(),
                );
                PeerPolicy::TrustDomains(domains)
            }
            PeerPolicy::Identities(ids) => {
                let mut expanded = ids.clone();
                for id in &ids {
                    for alias in aliases {
                        let aliased = id.with_trust_domain(alias.clone());
                        if !expanded.contains(&aliased) {
                            expanded.push(aliased);
                        }
                    }
                }
                PeerPolicy::Identities(expanded)
            }
        }
    }

    fn accepts(&self, id: &SpiffeId) -> bool {
        match self {
            PeerPolicy::TrustDomains(domains) => domains.contains(id.trust_domain()),
            PeerPolicy::Identities(ids) => ids.contains(id),
        }
    }
}

/// Why a peer's certificate was refused, carried into the TLS error (whose text
/// shows this type's `Debug`, so `Debug` reads like `Display`).
pub enum IdentityError {
    NoIdentity,
    Several(Vec<String>),
    NotSpiffe(String),
    NotAccepted { peer: SpiffeId, policy: PeerPolicy },
}

impl fmt::Display for IdentityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdentityError::NoIdentity => f.write_str("the peer certificate carries no SPIFFE id"),
            IdentityError::Several(ids) => write!(
                f,
                "the peer certificate carries several URI SANs {ids:?}; a workload has one"
            ),
            IdentityError::NotSpiffe(uri) => {
                write!(f, "the peer's URI SAN {uri:?} is not a workload SPIFFE id")
            }
            IdentityError::NotAccepted {
                peer,
                policy: PeerPolicy::Identities(ids),
            } => {
                let names: Vec<String> = ids.iter().map(ToString::to_string).collect();
                write!(
                    f,
                    "the peer is {peer}, expected one of [{}]",
                    names.join(", ")
                )
            }
            IdentityError::NotAccepted {
                peer,
                policy: PeerPolicy::TrustDomains(domains),
            } => {
                let names: Vec<&str> = domains.iter().map(TrustDomain::as_str).collect();
                write!(
                    f,
                    "the peer {peer} is not in trust domain(s) [{}]",
                    names.join(", ")
                )
            }
        }
    }
}

impl fmt::Debug for IdentityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for IdentityError {}

/// The peer's one SPIFFE id, if the policy accepts it.
pub fn check_identity(
    leaf: &CertificateDer<'_>,
    policy: &PeerPolicy,
) -> Result<SpiffeId, IdentityError> {
    let info = CertificateInfo::parse(leaf.as_ref()).map_err(|_| IdentityError::NoIdentity)?;
    let uri = match info.uri_sans.as_slice() {
        [] => return Err(IdentityError::NoIdentity),
        [only] => only,
        many => return Err(IdentityError::Several(many.to_vec())),
    };
    let peer: SpiffeId = uri
        .parse()
        .map_err(|_| IdentityError::NotSpiffe(uri.clone()))?;
    if !policy.accepts(&peer) {
        return Err(IdentityError::NotAccepted {
            peer,
            policy: policy.clone(),
        });
    }
    Ok(peer)
}

fn pki_error(e: webpki::Error) -> Error {
    use webpki::Error as E;
    Error::InvalidCertificate(match e {
        E::BadDer | E::BadDerTime => CertificateError::BadEncoding,
        E::CertExpired { .. } => CertificateError::Expired,
        E::CertNotValidYet { .. } => CertificateError::NotValidYet,
        E::UnknownIssuer => CertificateError::UnknownIssuer,
        E::InvalidSignatureForPublicKey => CertificateError::BadSignature,
        other => CertificateError::Other(OtherError(Arc::new(other))),
    })
}

/// Checks chain and identity of a peer, for either side of a connection.
#[derive(Debug)]
pub struct SpiffeVerifier {
    bundle: Arc<ArcSwap<TrustBundle>>,
    policy: PeerPolicy,
    provider: Arc<CryptoProvider>,
}

impl SpiffeVerifier {
    /// Reads the bundle at every handshake, so new roots apply without new configs.
    pub fn new(
        bundle: Arc<ArcSwap<TrustBundle>>,
        policy: PeerPolicy,
        provider: Arc<CryptoProvider>,
    ) -> Self {
        Self {
            bundle,
            policy,
            provider,
        }
    }

    fn verify(
        &self,
        leaf: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: webpki::KeyUsage,
    ) -> Result<(), Error> {
        let end_entity = webpki::EndEntityCert::try_from(leaf).map_err(pki_error)?;
        let bundle = self.bundle.load();
        end_entity
            .verify_for_usage(
                self.provider.signature_verification_algorithms.all,
                bundle.anchors(),
                intermediates,
                now,
                usage,
                None,
                None,
            )
            .map_err(pki_error)?;
        check_identity(leaf, &self.policy).map(drop).map_err(|e| {
            Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
        })
    }

    fn tls12(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
}

impl ServerCertVerifier for SpiffeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        // The identity is the SPIFFE id, not a DNS name: the server name is not used.
        self.verify(
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

impl ClientCertVerifier for SpiffeVerifier {
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // The bundle can change under us; mesh clients have one certificate anyway.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        self.verify(
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::client_auth(),
        )?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

//! TLS with the user's certificates rather than the mesh's: origination to
//! services outside the mesh, as a DestinationRule's SIMPLE or MUTUAL asks (the
//! server checked against the rule's CA for the SNI or for one of its subject
//! alt names, or not at all when `insecureSkipVerify` says so), and a gateway's
//! termination with a Gateway server's certificate (and, MUTUAL, its clients' CA).

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, Error, SignatureScheme};

use crate::config::tls::Roots;

/// A client config for origination.
pub fn client_config(
    roots: Option<&Arc<Roots>>,
    names: &[String],
    certificate: Option<&Arc<CertifiedKey>>,
) -> Result<rustls::ClientConfig, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier: Arc<dyn ServerCertVerifier> = match roots {
        Some(roots) => Arc::new(Names {
            inner: WebPkiServerVerifier::builder_with_provider(
                roots.store.clone(),
                provider.clone(),
            )
            .with_crls(roots.crls.iter().cloned())
            // An expired list fails closed, as BoringSSL treats it.
            .enforce_revocation_expiration()
            .build()
            .map_err(|e| Error::General(e.to_string()))?,
            names: names.to_vec(),
        }),
        None => Arc::new(Unverified(provider.clone())),
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    Ok(match certificate {
        Some(key) => builder.with_client_cert_resolver(Arc::new(Fixed(key.clone()))),
        None => builder.with_no_client_auth(),
    })
}

/// A gateway server's TLS: its certificates; with `client_roots`, clients are
/// verified against them and their revocation lists (and must present one
/// when `require` says so).
pub fn server_config(
    user: &crate::config::tls::UserServer,
    require: bool,
    alpn: Vec<Vec<u8>>,
    params: &crate::config::tls_params::TlsParams,
) -> Result<rustls::ServerConfig, Error> {
    let provider = Arc::new(params.provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(params.versions())?;
    let builder = match &user.client_roots {
        Some(roots) => {
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                roots.store.clone(),
                provider,
            )
            .with_crls(roots.crls.iter().cloned())
            .enforce_revocation_expiration();
            let verifier = if require {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            builder.with_client_cert_verifier(
                verifier
                    .build()
                    .map_err(|e| Error::General(e.to_string()))?,
            )
        }
        None => builder.with_no_client_auth(),
    };
    let mut config =
        builder.with_cert_resolver(Arc::new(ServerCertificates(user.certificates.clone())));
    config.alpn_protocols = alpn;
    Ok(config)
}

/// The certificates a gateway server names, whatever SNI the client sent
/// (the chain was already chosen by SNI). With an RSA and an ECDSA one, as
/// Envoy picks: ECDSA for a client that can verify it, else the other.
#[derive(Debug)]
struct ServerCertificates(Vec<Arc<CertifiedKey>>);

impl rustls::server::ResolvesServerCert for ServerCertificates {
    fn resolve(&self, hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if let [only] = self.0.as_slice() {
            return Some(only.clone());
        }
        let schemes = hello.signature_schemes();
        let usable = |c: &&Arc<CertifiedKey>| c.key.choose_scheme(schemes).is_some();
        self.0
            .iter()
            .filter(usable)
            .find(|c| c.key.algorithm() == rustls::SignatureAlgorithm::ECDSA)
            .or_else(|| self.0.iter().find(usable))
            .or_else(|| self.0.first())
            .cloned()
    }
}

/// Web PKI verification, for any of `names` when the rule lists subject alt
/// names, else for the SNI.
#[derive(Debug)]
struct Names {
    inner: Arc<WebPkiServerVerifier>,
    names: Vec<String>,
}

impl ServerCertVerifier for Names {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        if self.names.is_empty() {
            return self.inner.verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp,
                now,
            );
        }
        let mut last = Error::General("no subject alt name matched".into());
        for name in &self.names {
            let Ok(name) = ServerName::try_from(name.as_str()) else {
                continue;
            };
            match self
                .inner
                .verify_server_cert(end_entity, intermediates, &name, ocsp, now)
            {
                Ok(ok) => return Ok(ok),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// `insecureSkipVerify: true`: the handshake's signatures are still checked, the
/// certificate is not.
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The one client certificate a MUTUAL rule names.
#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl ResolvesClientCert for Fixed {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

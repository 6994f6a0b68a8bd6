//! A TLS server identity for tests: a self-signed certificate for some names.

use std::sync::Arc;

/// A server config with a fresh self-signed certificate for `names`, and the
/// certificate's PEM (the CA a client must trust).
pub fn self_signed(names: &[&str]) -> (Arc<rustls::ServerConfig>, String) {
    let key = rcgen::KeyPair::generate().expect("key");
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let cert = rcgen::CertificateParams::new(names)
        .expect("params")
        .self_signed(&key)
        .expect("certificate");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
    .expect("server config");
    (Arc::new(config), cert.pem())
}

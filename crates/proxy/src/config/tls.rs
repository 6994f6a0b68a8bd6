//! TLS transport sockets. The mesh's own mTLS (certificate `default`, roots `ROOTCA`,
//! both from the proxy's agent) is what sidecars use between themselves; TLS to
//! services outside the mesh (a DestinationRule's SIMPLE or MUTUAL) uses files,
//! read at conversion so a missing file is a NACK, not a failed connection.
//! A gateway's `credentialName` arrives as SDS `kubernetes://<name>` (or
//! `kubernetes-gateway://<ns>/<name>`) over ADS, only to a gateway that proved
//! its identity; it is looked up at each handshake, so a renewed Secret serves
//! new connections at once. Client CAs may carry revocation lists (`crl`).

use std::sync::{Arc, OnceLock};

use envoy_types::pb::envoy::config::core::v3::TransportSocket;
use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::ValidationContextType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::subject_alt_name_matcher::SanType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, UpstreamTlsContext,
};
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use oxmesh_identity::SpiffeId;

use super::client_checks::ClientChecks;
use prost::Message;
use rustls::pki_types::pem::PemObject;

/// The workload certificate's SDS name, served by the proxy itself.
pub const WORKLOAD_CERT: &str = "default";
/// The mesh roots' SDS name.
pub const ROOT_CA: &str = "ROOTCA";

const UPSTREAM_TLS: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext";
const DOWNSTREAM_TLS: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext";

/// TLS to an upstream.
#[derive(Debug)]
pub struct UpstreamTls {
    pub sni: String,
    pub alpn: Vec<Vec<u8>>,
    pub kind: UpstreamKind,
    /// Built on first use, with the credentials the proxy runs with; one per
    /// [`Carries`], since each offers its own ALPN.
    pub client_configs: [OnceLock<Arc<rustls::ClientConfig>>; 3],
    /// For `Credential` clusters: the config built from the Secrets last
    /// seen, rebuilt when a Secret changes.
    pub credential_config: arc_swap::ArcSwapOption<CredentialConfig<rustls::ClientConfig>>,
}

/// What a mesh connection carries. Istio's sidecars pick the inbound filter
/// chain by the ALPN a client offers: `istio-peer-exchange` and `istio` for TCP
/// (with the metadata exchange), `istio-http/1.1` or `istio-h2` for HTTP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Carries {
    Tcp,
    Http1,
    Http2,
}

impl Carries {
    pub fn index(self) -> usize {
        self as usize
    }

    /// The ALPN a mesh client offers for this traffic; `None` keeps the
    /// cluster's own list (TCP).
    pub fn mesh_alpn(self) -> Option<&'static [u8]> {
        match self {
            Carries::Tcp => None,
            Carries::Http1 => Some(b"istio-http/1.1"),
            Carries::Http2 => Some(b"istio-h2"),
        }
    }
}

#[derive(Debug)]
pub enum UpstreamKind {
    /// Mesh mTLS: our certificate; the peer checked against the mesh roots and,
    /// when listed, these identities.
    Mesh { identities: Vec<SpiffeId> },
    /// TLS origination as a DestinationRule asks: a client certificate from
    /// files (MUTUAL), the server checked against `roots` for the SNI or one of
    /// `names`, or not at all (`insecureSkipVerify`).
    User {
        client_certificate: Option<Arc<rustls::sign::CertifiedKey>>,
        roots: Option<Arc<Roots>>,
        names: Vec<String>,
    },
    /// The same from Secrets the control plane serves (a DestinationRule's
    /// `credentialName` at a gateway): the client certificate (MUTUAL) and
    /// the server's CA (`<name>-cacert`), looked up at each connection.
    Credential {
        client_certificate: Option<String>,
        roots: Option<String>,
        names: Vec<String>,
    },
}

/// CA roots, with the revocation lists of the certificates they issued.
#[derive(Debug)]
pub struct Roots {
    pub store: Arc<rustls::RootCertStore>,
    pub crls: Vec<rustls::pki_types::CertificateRevocationListDer<'static>>,
}

impl Roots {
    /// Roots whose revocation lists parse: a verifier is built from them
    /// once here, so a bad list is refused with the config, not at every
    /// handshake.
    fn checked(
        store: rustls::RootCertStore,
        crls: Vec<rustls::pki_types::CertificateRevocationListDer<'static>>,
    ) -> Result<Arc<Self>, String> {
        let store = Arc::new(store);
        if !crls.is_empty() {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            rustls::server::WebPkiClientVerifier::builder_with_provider(store.clone(), provider)
                .with_crls(crls.iter().cloned())
                .build()
                .map_err(|e| format!("crl: {e}"))?;
        }
        Ok(Arc::new(Self { store, crls }))
    }
}

/// TLS terminated by a chain: the mesh's mTLS (sidecars' inbound), or a
/// gateway's own certificate.
#[derive(Debug)]
pub struct DownstreamTls {
    pub require_client_certificate: bool,
    /// What a client certificate must also be (a MUTUAL gateway's
    /// `subjectAltNames`, SPKI and hash pins); checked after the handshake.
    pub client_checks: ClientChecks,
    pub alpn: Vec<Vec<u8>>,
    /// Versions and TLS 1.2 suites a gateway server takes (`tls_params`).
    pub params: super::tls_params::TlsParams,
    pub kind: DownstreamKind,
    pub server_config: OnceLock<Arc<rustls::ServerConfig>>,
    /// The mesh config that accepts ALPN `istio-peer-exchange` (TCP chains
    /// whose client offered it).
    pub exchange_config: OnceLock<Arc<rustls::ServerConfig>>,
    /// For `Credential` chains: the config built from the Secrets last seen,
    /// rebuilt when a Secret changes.
    pub credential_config: arc_swap::ArcSwapOption<CredentialConfig<rustls::ServerConfig>>,
}

/// A TLS config and the served Secrets it was built from.
#[derive(Debug)]
pub struct CredentialConfig<C> {
    /// The Secrets, in the order the chain or cluster names them.
    pub materials: Vec<Arc<Material>>,
    pub config: Arc<C>,
}

impl<C> CredentialConfig<C> {
    /// Whether it was built from the Secrets `names` are served as in
    /// `credentials` now (checked without allocating: once per handshake).
    pub fn current<'a>(
        &self,
        credentials: &std::collections::HashMap<String, Arc<Material>>,
        names: impl Iterator<Item = &'a str>,
    ) -> bool {
        let mut built = self.materials.iter();
        for name in names {
            match (built.next(), credentials.get(name)) {
                (Some(built), Some(now)) if Arc::ptr_eq(built, now) => {}
                _ => return false,
            }
        }
        built.next().is_none()
    }
}

#[derive(Debug)]
pub enum DownstreamKind {
    /// The workload certificate; clients of the mesh's trust domain.
    Mesh,
    User(UserServer),
    /// Secrets the control plane serves by name (`kubernetes://<name>`): the
    /// certificates (one, or an RSA and an ECDSA one), and for MUTUAL the
    /// client CA (`kubernetes://<name>-cacert`).
    Credential {
        certificates: Vec<String>,
        client_ca: Option<String>,
    },
}

/// Whether an SDS name is a Secret the control plane serves over ADS
/// (`kubernetes://…`, `kubernetes-gateway://…`), not the proxy's own.
pub fn is_credential(name: &str) -> bool {
    name.starts_with("kubernetes://") || name.starts_with("kubernetes-gateway://")
}

/// A served Secret, ready for rustls.
#[derive(Debug)]
pub enum Material {
    Certificate(Arc<rustls::sign::CertifiedKey>),
    Roots(Arc<Roots>),
}

/// A `kubernetes://` Secret from SDS: a certificate with its key, or roots.
pub fn material(
    secret: &envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret,
) -> Result<Material, String> {
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::secret::Type;
    match &secret.r#type {
        Some(Type::TlsCertificate(cert)) => Ok(Material::Certificate(Arc::new(certified_key(
            inline(cert.certificate_chain.as_ref(), "certificate_chain")?,
            inline(cert.private_key.as_ref(), "private_key")?,
        )?))),
        Some(Type::ValidationContext(v)) => Ok(Material::Roots(context_roots(v, inline)?)),
        _ => Err("neither a TLS certificate nor a validation context".to_owned()),
    }
}

fn inline(
    source: Option<&envoy_types::pb::envoy::config::core::v3::DataSource>,
    field: &str,
) -> Result<Vec<u8>, String> {
    use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
    match source.and_then(|d| d.specifier.as_ref()) {
        Some(Specifier::InlineBytes(b)) => Ok(b.clone()),
        Some(Specifier::InlineString(s)) => Ok(s.clone().into_bytes()),
        _ => Err(format!("{field}: not inline")),
    }
}

#[derive(Debug)]
pub struct UserServer {
    /// One, or one per key type (RSA, ECDSA): the client's signature
    /// schemes choose.
    pub certificates: Vec<Arc<rustls::sign::CertifiedKey>>,
    /// MUTUAL: clients must chain to these, and not be revoked.
    pub client_roots: Option<Arc<Roots>>,
}

/// `None` for a plain `raw_buffer` socket.
pub fn upstream(socket: &TransportSocket) -> Result<Option<UpstreamTls>, String> {
    let Some(context) = typed::<UpstreamTlsContext>(socket, UPSTREAM_TLS)? else {
        return Ok(None);
    };
    let common = context.common_tls_context.unwrap_or_default();
    let kind = if let Some(kind) = upstream_credential(&common)? {
        kind
    } else if common.tls_certificate_sds_secret_configs.is_empty()
        && !matches!(
            common.validation_context_type,
            Some(ValidationContextType::CombinedValidationContext(_))
        )
    {
        user_tls(&common)?
    } else {
        mesh_certificates(&common)?;
        match &common.validation_context_type {
            Some(ValidationContextType::CombinedValidationContext(combined)) => {
                uses_mesh_roots(combined.validation_context_sds_secret_config.as_ref())?;
                UpstreamKind::Mesh {
                    identities: spiffe_sans(combined.default_validation_context.as_ref())?,
                }
            }
            _ => return Err("upstream TLS must validate against ROOTCA".to_owned()),
        }
    };
    Ok(Some(UpstreamTls {
        sni: context.sni,
        alpn: alpn(&common),
        kind,
        client_configs: Default::default(),
        credential_config: Default::default(),
    }))
}

/// SIMPLE or MUTUAL origination with Secrets the control plane serves;
/// `None` when the context names none.
fn upstream_credential(common: &CommonTlsContext) -> Result<Option<UpstreamKind>, String> {
    let client_certificate = match common.tls_certificate_sds_secret_configs.as_slice() {
        [] => None,
        [sds] if is_credential(&sds.name) => Some(sds.name.clone()),
        _ => return Ok(None),
    };
    let (roots, names) = match &common.validation_context_type {
        Some(ValidationContextType::CombinedValidationContext(combined)) => {
            match combined.validation_context_sds_secret_config.as_ref() {
                Some(ca) if is_credential(&ca.name) => {
                    let names = combined
                        .default_validation_context
                        .as_ref()
                        .map(dns_sans)
                        .transpose()?
                        .unwrap_or_default();
                    (Some(ca.name.clone()), names)
                }
                _ => return Ok(None),
            }
        }
        _ if client_certificate.is_none() => return Ok(None),
        None => (None, Vec::new()),
        Some(_) => return Err("a credential's CA must be served by name too".to_owned()),
    };
    Ok(Some(UpstreamKind::Credential {
        client_certificate,
        roots,
        names,
    }))
}

/// SIMPLE or MUTUAL origination from files.
fn user_tls(common: &CommonTlsContext) -> Result<UpstreamKind, String> {
    let client_certificate = match common.tls_certificates.as_slice() {
        [] => None,
        [cert] => Some(Arc::new(certified_key(
            data_file(cert.certificate_chain.as_ref(), "certificate_chain")?,
            data_file(cert.private_key.as_ref(), "private_key")?,
        )?)),
        _ => return Err("more than one client certificate".to_owned()),
    };
    let (roots, names) = match &common.validation_context_type {
        Some(ValidationContextType::ValidationContext(v)) => (Some(file_roots(v)?), dns_sans(v)?),
        None => (None, Vec::new()),
        Some(_) => return Err("validation from SDS secrets is not supported yet".to_owned()),
    };
    Ok(UpstreamKind::User {
        client_certificate,
        roots,
        names,
    })
}

/// Roots (and revocation lists) a validation context names by file.
fn file_roots(context: &CertificateValidationContext) -> Result<Arc<Roots>, String> {
    context_roots(context, data_file)
}

/// A validation context's roots and revocation lists, their bytes got by
/// `read` (inline only for served Secrets, files too in local mode).
fn context_roots(
    context: &CertificateValidationContext,
    read: fn(
        Option<&envoy_types::pb::envoy::config::core::v3::DataSource>,
        &str,
    ) -> Result<Vec<u8>, String>,
) -> Result<Arc<Roots>, String> {
    let crl = context
        .crl
        .as_ref()
        .map(|c| read(Some(c), "crl"))
        .transpose()?;
    Roots::checked(
        roots(&read(context.trusted_ca.as_ref(), "trusted_ca")?)?,
        crls(crl.as_deref())?,
    )
}

/// The revocation lists of a PEM bundle; none without one.
fn crls(
    pem: Option<&[u8]>,
) -> Result<Vec<rustls::pki_types::CertificateRevocationListDer<'static>>, String> {
    let Some(pem) = pem else {
        return Ok(Vec::new());
    };
    let crls = rustls::pki_types::CertificateRevocationListDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("crl: {e}"))?;
    if crls.is_empty() {
        return Err("crl: no revocation list in it".to_owned());
    }
    Ok(crls)
}

fn data_file(
    source: Option<&envoy_types::pb::envoy::config::core::v3::DataSource>,
    field: &str,
) -> Result<Vec<u8>, String> {
    use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
    match source.and_then(|s| s.specifier.as_ref()) {
        Some(Specifier::Filename(path)) => {
            std::fs::read(path).map_err(|e| format!("{field}: cannot read {path}: {e}"))
        }
        Some(Specifier::InlineBytes(b)) => Ok(b.clone()),
        Some(Specifier::InlineString(s)) => Ok(s.clone().into_bytes()),
        _ => Err(format!("{field}: no data")),
    }
}

fn certified_key(chain: Vec<u8>, key: Vec<u8>) -> Result<rustls::sign::CertifiedKey, String> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_slice_iter(&chain)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("certificate_chain: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(&key).map_err(|e| format!("private_key: {e}"))?;
    let provider = rustls::crypto::ring::default_provider();
    rustls::sign::CertifiedKey::from_der(chain, key, &provider)
        .map_err(|e| format!("client certificate: {e}"))
}

fn dns_sans(context: &CertificateValidationContext) -> Result<Vec<String>, String> {
    context
        .match_typed_subject_alt_names
        .iter()
        .map(
            |m| match m.matcher.as_ref().and_then(|m| m.match_pattern.as_ref()) {
                Some(MatchPattern::Exact(s)) if m.san_type == SanType::Dns as i32 => Ok(s.clone()),
                _ => Err("only exact DNS SANs are supported for TLS origination".to_owned()),
            },
        )
        .collect()
}

pub fn downstream(socket: &TransportSocket) -> Result<Option<DownstreamTls>, String> {
    let Some(context) = typed::<DownstreamTlsContext>(socket, DOWNSTREAM_TLS)? else {
        return Ok(None);
    };
    let common = context.common_tls_context.unwrap_or_default();
    let require_client_certificate = context.require_client_certificate.is_some_and(|b| b.value);
    let params = super::tls_params::TlsParams::from_envoy(common.tls_params.as_ref())?;
    if let Some(kind) = credential(&common)? {
        return Ok(Some(DownstreamTls {
            require_client_certificate,
            client_checks: client_checks(&common)?,
            alpn: alpn(&common),
            params,
            kind,
            server_config: OnceLock::new(),
            exchange_config: OnceLock::new(),
            credential_config: Default::default(),
        }));
    }
    // A gateway terminating with the user's certificate (local mode: files).
    if common.tls_certificate_sds_secret_configs.is_empty() {
        return Ok(Some(DownstreamTls {
            require_client_certificate,
            client_checks: client_checks(&common)?,
            alpn: alpn(&common),
            params,
            kind: DownstreamKind::User(user_server(&common)?),
            server_config: OnceLock::new(),
            exchange_config: OnceLock::new(),
            credential_config: Default::default(),
        }));
    }
    mesh_certificates(&common)?;
    match &common.validation_context_type {
        Some(ValidationContextType::CombinedValidationContext(combined)) => {
            uses_mesh_roots(combined.validation_context_sds_secret_config.as_ref())?;
            if !spiffe_sans(combined.default_validation_context.as_ref())?.is_empty() {
                return Err("inbound SAN checks belong to authorization policy".to_owned());
            }
        }
        Some(ValidationContextType::ValidationContextSdsSecretConfig(sds)) => {
            uses_mesh_roots(Some(sds))?;
        }
        _ => return Err("downstream TLS must validate against ROOTCA".to_owned()),
    }
    Ok(Some(DownstreamTls {
        require_client_certificate,
        client_checks: ClientChecks::default(),
        alpn: alpn(&common),
        // The mesh's own mTLS is the workload credentials' (TLS 1.2 and 1.3).
        params: Default::default(),
        kind: DownstreamKind::Mesh,
        server_config: OnceLock::new(),
        exchange_config: OnceLock::new(),
        credential_config: Default::default(),
    }))
}

/// A certificate the control plane serves by name (`kubernetes://`), and for
/// MUTUAL the client CA by name too; `None` when the chain uses something else.
fn credential(common: &CommonTlsContext) -> Result<Option<DownstreamKind>, String> {
    let certificates: Vec<String> = common
        .tls_certificate_sds_secret_configs
        .iter()
        .map(|sds| sds.name.clone())
        .collect();
    if certificates.is_empty() || !certificates.iter().all(|n| is_credential(n)) {
        return Ok(None);
    }
    if certificates.len() > 2 {
        return Err("at most two certificates (one RSA, one ECDSA)".to_owned());
    }
    let client_ca = match &common.validation_context_type {
        None => None,
        Some(ValidationContextType::ValidationContextSdsSecretConfig(ca))
            if is_credential(&ca.name) =>
        {
            Some(ca.name.clone())
        }
        Some(ValidationContextType::CombinedValidationContext(combined))
            if combined
                .validation_context_sds_secret_config
                .as_ref()
                .is_some_and(|ca| is_credential(&ca.name)) =>
        {
            combined
                .validation_context_sds_secret_config
                .as_ref()
                .map(|ca| ca.name.clone())
        }
        Some(_) => {
            return Err(format!(
                "{}: client validation must be a served secret too",
                certificates[0]
            ));
        }
    };
    Ok(Some(DownstreamKind::Credential {
        certificates,
        client_ca,
    }))
}

/// The client checks of a gateway chain's validation context (inline, or the
/// default beside a `kubernetes://` CA).
fn client_checks(common: &CommonTlsContext) -> Result<ClientChecks, String> {
    match &common.validation_context_type {
        Some(ValidationContextType::ValidationContext(v)) => ClientChecks::from_context(v),
        Some(ValidationContextType::CombinedValidationContext(combined)) => combined
            .default_validation_context
            .as_ref()
            .map_or(Ok(ClientChecks::default()), ClientChecks::from_context),
        _ => Ok(ClientChecks::default()),
    }
}

/// A server certificate from files, and for MUTUAL the clients' CA.
fn user_server(common: &CommonTlsContext) -> Result<UserServer, String> {
    let certificates = common
        .tls_certificates
        .iter()
        .map(|cert| {
            Ok(Arc::new(certified_key(
                data_file(cert.certificate_chain.as_ref(), "certificate_chain")?,
                data_file(cert.private_key.as_ref(), "private_key")?,
            )?))
        })
        .collect::<Result<Vec<_>, String>>()?;
    match certificates.len() {
        0 => return Err("no server certificate".to_owned()),
        1 | 2 => {}
        _ => return Err("at most two server certificates (one RSA, one ECDSA)".to_owned()),
    }
    let client_roots = match &common.validation_context_type {
        Some(ValidationContextType::ValidationContext(v)) => Some(file_roots(v)?),
        None => None,
        Some(_) => return Err("client validation from SDS secrets is not supported yet".to_owned()),
    };
    Ok(UserServer {
        certificates,
        client_roots,
    })
}

fn roots(pem: &[u8]) -> Result<rustls::RootCertStore, String> {
    let mut store = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| format!("trusted_ca: {e}"))?;
        // Bundles hold certificates rustls cannot use; skip those, as other TLS
        // stacks do.
        let _ = store.add(cert);
    }
    if store.is_empty() {
        return Err("trusted_ca holds no usable certificate".to_owned());
    }
    Ok(store)
}

fn typed<T: Message + Default>(socket: &TransportSocket, url: &str) -> Result<Option<T>, String> {
    match &socket.config_type {
        Some(ConfigType::TypedConfig(any)) if any.type_url == url => {
            T::decode(any.value.as_slice())
                .map(Some)
                .map_err(|e| format!("cannot decode {url}: {e}"))
        }
        Some(ConfigType::TypedConfig(any)) if any.type_url.ends_with(".RawBuffer") => Ok(None),
        Some(ConfigType::TypedConfig(any)) => {
            Err(format!("unsupported transport socket {}", any.type_url))
        }
        None => Ok(None),
    }
}

fn mesh_certificates(common: &CommonTlsContext) -> Result<(), String> {
    let names: Vec<&str> = common
        .tls_certificate_sds_secret_configs
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    if !common.tls_certificates.is_empty() || names != [WORKLOAD_CERT] {
        return Err(format!(
            "only the mesh certificate (SDS {WORKLOAD_CERT:?}) is supported, not {names:?} or files"
        ));
    }
    Ok(())
}

fn uses_mesh_roots(
    sds: Option<&envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::SdsSecretConfig>,
) -> Result<(), String> {
    match sds {
        Some(s) if s.name == ROOT_CA => Ok(()),
        Some(s) => Err(format!("unsupported validation secret {:?}", s.name)),
        None => Err("no validation secret".to_owned()),
    }
}

fn spiffe_sans(context: Option<&CertificateValidationContext>) -> Result<Vec<SpiffeId>, String> {
    let Some(context) = context else {
        return Ok(Vec::new());
    };
    context
        .match_typed_subject_alt_names
        .iter()
        .map(|m| {
            let exact = match m.matcher.as_ref().and_then(|m| m.match_pattern.as_ref()) {
                Some(MatchPattern::Exact(s)) if m.san_type == SanType::Uri as i32 => s,
                _ => return Err("only exact URI SANs are supported".to_owned()),
            };
            exact
                .parse::<SpiffeId>()
                .map_err(|e| format!("SAN {exact:?} is not a SPIFFE id: {e}"))
        })
        .collect()
}

fn alpn(common: &CommonTlsContext) -> Vec<Vec<u8>> {
    common
        .alpn_protocols
        .iter()
        .map(|p| p.as_bytes().to_vec())
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn roots() -> Arc<Material> {
        Arc::new(Material::Roots(Arc::new(Roots {
            store: Arc::new(rustls::RootCertStore::empty()),
            crls: Vec::new(),
        })))
    }

    /// A config built from served Secrets is current while each name is
    /// served as that very Secret, and stale once one is renewed, gone, or
    /// the names differ.
    #[test]
    fn a_credential_config_is_current_until_a_secret_changes() {
        let (ca, renewed) = (roots(), roots());
        let built = CredentialConfig {
            materials: vec![ca.clone()],
            config: Arc::new(()),
        };
        let served = |material: &Arc<Material>| {
            HashMap::from([("kubernetes://ca-cacert".to_owned(), material.clone())])
        };
        let names = ["kubernetes://ca-cacert"];
        assert!(built.current(&served(&ca), names.into_iter()));
        assert!(!built.current(&served(&renewed), names.into_iter()));
        assert!(!built.current(&HashMap::new(), names.into_iter()));
        let more = ["kubernetes://ca-cacert", "kubernetes://other"];
        assert!(!built.current(&served(&ca), more.into_iter()));
        assert!(!built.current(&served(&ca), std::iter::empty()));
    }
}

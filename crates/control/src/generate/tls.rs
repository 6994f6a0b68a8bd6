//! Upstream TLS: Istio's mutual TLS between sidecars, and DestinationRule TLS
//! (SIMPLE, MUTUAL) to services outside the mesh.

use envoy_types::pb::envoy::config::core::v3::api_config_source::ApiType;
use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::config::core::v3::grpc_service::{EnvoyGrpc, TargetSpecifier};
use envoy_types::pb::envoy::config::core::v3::{
    ApiConfigSource, ApiVersion, ConfigSource, DataSource, GrpcService, TransportSocket,
    transport_socket,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::{
    CombinedCertificateValidationContext, ValidationContextType,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::subject_alt_name_matcher::SanType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::tls_parameters::TlsProtocol;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, SdsSecretConfig,
    SubjectAltNameMatcher, TlsCertificate, TlsParameters, UpstreamTlsContext,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher::MatchPattern};
use envoy_types::pb::google::protobuf::BoolValue;
use envoy_types::util::pack_any;
use oxmesh_config::networking::destination_rule::{ClientTlsMode, ClientTlsSettings};
use oxmesh_config::networking::gateway::{ServerTlsMode, ServerTlsSettings};

use crate::credentials::{CA_SUFFIX, resource_name};

/// The workload certificate's SDS name.
pub const WORKLOAD_CERT: &str = "default";
/// The mesh trust bundle's SDS name.
pub const ROOT_CA: &str = "ROOTCA";
/// The cluster through which a proxy reaches its local certificate agent, as in Istio.
pub const SDS_CLUSTER: &str = "sds-grpc";
/// ALPN a sidecar offers another sidecar: Istio's values, so Istio peers agree.
pub const MESH_ALPN: [&str; 2] = ["istio-peer-exchange", "istio"];
/// The system trust store on Debian-family systems and Istio's proxy image.
pub const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Secrets come from the proxy's own agent: the key never leaves the workload.
fn agent_sds() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(ConfigSourceSpecifier::ApiConfigSource(ApiConfigSource {
            api_type: ApiType::Grpc as i32,
            transport_api_version: ApiVersion::V3 as i32,
            set_node_on_first_message_only: true,
            grpc_services: vec![GrpcService {
                target_specifier: Some(TargetSpecifier::EnvoyGrpc(EnvoyGrpc {
                    cluster_name: SDS_CLUSTER.to_owned(),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn sds(name: &str, source: ConfigSource) -> SdsSecretConfig {
    SdsSecretConfig {
        name: name.to_owned(),
        sds_config: Some(source),
    }
}

fn exact(s: &str) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(MatchPattern::Exact(s.to_owned())),
        ..Default::default()
    }
}

fn uri_sans(sans: &[String]) -> Vec<SubjectAltNameMatcher> {
    sans.iter()
        .map(|san| SubjectAltNameMatcher {
            san_type: SanType::Uri as i32,
            matcher: Some(exact(san)),
            ..Default::default()
        })
        .collect()
}

fn file(path: &str) -> DataSource {
    DataSource {
        specifier: Some(Specifier::Filename(path.to_owned())),
        ..Default::default()
    }
}

/// A TLS transport socket around an upstream or downstream context.
pub fn socket<T: prost::Message + prost::Name>(context: T) -> TransportSocket {
    TransportSocket {
        name: "envoy.transport_sockets.tls".to_owned(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(pack_any(context))),
    }
}

/// Mesh mTLS to a sidecar: our workload certificate, the peer checked against the
/// trust bundle and, when known, the service's identities.
pub fn istio_mutual(sni: String, identities: &[String]) -> UpstreamTlsContext {
    let validation = CombinedCertificateValidationContext {
        default_validation_context: Some(CertificateValidationContext {
            match_typed_subject_alt_names: uri_sans(identities),
            ..Default::default()
        }),
        validation_context_sds_secret_config: Some(sds(ROOT_CA, agent_sds())),
        ..Default::default()
    };
    UpstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            tls_certificate_sds_secret_configs: vec![sds(WORKLOAD_CERT, agent_sds())],
            alpn_protocols: MESH_ALPN.iter().map(|s| (*s).to_owned()).collect(),
            validation_context_type: Some(ValidationContextType::CombinedValidationContext(
                validation,
            )),
            ..Default::default()
        }),
        sni,
        ..Default::default()
    }
}

/// A DestinationRule's `tls`; `None` for DISABLE. `default_sni` is used when the
/// rule names none; `identities` are the service's SPIFFE ids (ISTIO_MUTUAL).
pub fn from_settings(
    settings: &ClientTlsSettings,
    default_sni: String,
    mesh_sni: String,
    identities: &[String],
) -> Option<UpstreamTlsContext> {
    match settings.mode {
        ClientTlsMode::Disable => None,
        // The rule's own `sni` wins, as istiod lets it (an egress gateway's
        // server matches on the external host's name).
        ClientTlsMode::IstioMutual => Some(istio_mutual(
            settings
                .sni
                .clone()
                .filter(|s| !s.is_empty())
                .unwrap_or(mesh_sni),
            identities,
        )),
        ClientTlsMode::Simple | ClientTlsMode::Mutual => Some(user_tls(settings, default_sni)),
    }
}

fn user_tls(settings: &ClientTlsSettings, default_sni: String) -> UpstreamTlsContext {
    let mut common = CommonTlsContext::default();
    if let Some(credential) = settings.credential_name.as_ref().filter(|c| !c.is_empty()) {
        let name = resource_name(credential);
        if settings.mode == ClientTlsMode::Mutual {
            common
                .tls_certificate_sds_secret_configs
                .push(sds(&name, super::wire::ads()));
        }
        if settings.insecure_skip_verify != Some(true) {
            let validation = CombinedCertificateValidationContext {
                default_validation_context: Some(CertificateValidationContext {
                    match_typed_subject_alt_names: dns_sans(&settings.subject_alt_names),
                    ..Default::default()
                }),
                validation_context_sds_secret_config: Some(sds(
                    &format!("{name}{CA_SUFFIX}"),
                    super::wire::ads(),
                )),
                ..Default::default()
            };
            common.validation_context_type =
                Some(ValidationContextType::CombinedValidationContext(validation));
        }
    } else {
        if let (ClientTlsMode::Mutual, Some(cert), Some(key)) = (
            settings.mode,
            &settings.client_certificate,
            &settings.private_key,
        ) {
            common.tls_certificates.push(TlsCertificate {
                certificate_chain: Some(file(cert)),
                private_key: Some(file(key)),
                ..Default::default()
            });
        }
        if settings.insecure_skip_verify != Some(true) {
            common.validation_context_type = Some(ValidationContextType::ValidationContext(
                CertificateValidationContext {
                    // Without a CA, the system's roots, as Istio verifies by default.
                    trusted_ca: Some(file(
                        settings.ca_certificates.as_deref().unwrap_or(SYSTEM_ROOTS),
                    )),
                    crl: settings.ca_crl.as_deref().map(file),
                    match_typed_subject_alt_names: dns_sans(&settings.subject_alt_names),
                    ..Default::default()
                },
            ));
        }
    }
    UpstreamTlsContext {
        common_tls_context: Some(common),
        sni: settings.sni.clone().unwrap_or(default_sni),
        ..Default::default()
    }
}

fn dns_sans(sans: &[String]) -> Vec<SubjectAltNameMatcher> {
    sans.iter()
        .map(|san| SubjectAltNameMatcher {
            san_type: SanType::Dns as i32,
            matcher: Some(exact(san)),
            ..Default::default()
        })
        .collect()
}

/// What a MUTUAL server asks of a client certificate beyond its CA: the
/// Gateway's `subjectAltNames` (matched as DNS or URI names),
/// `verifyCertificateSpki` and `verifyCertificateHash`.
fn client_checks(settings: &ServerTlsSettings) -> CertificateValidationContext {
    let mut names = dns_sans(&settings.subject_alt_names);
    names.extend(uri_sans(&settings.subject_alt_names));
    CertificateValidationContext {
        match_typed_subject_alt_names: names,
        verify_certificate_spki: settings.verify_certificate_spki.clone(),
        verify_certificate_hash: settings.verify_certificate_hash.clone(),
        ..Default::default()
    }
}

/// A gateway server's TLS termination: the certificates from
/// `credentialName` / `credentialNames` (SDS over ADS: `kubernetes://<name>`,
/// or the name as written when it names its type) or from files
/// (`serverCertificate` and `privateKey`, or `tlsCertificates`: local mode);
/// MUTUAL also checks clients against `caCertCredentialName`, else the first
/// credential's `-cacert`, or `caCertificates` (with `caCrl`) in local mode;
/// ISTIO_MUTUAL uses the mesh identity.
pub fn gateway_termination(settings: &ServerTlsSettings) -> DownstreamTlsContext {
    let mut common = CommonTlsContext {
        alpn_protocols: vec!["h2".to_owned(), "http/1.1".to_owned()],
        ..Default::default()
    };
    let mutual = matches!(
        settings.mode,
        ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual
    );
    if settings.mode == ServerTlsMode::IstioMutual {
        common
            .tls_certificate_sds_secret_configs
            .push(sds(WORKLOAD_CERT, agent_sds()));
        common.validation_context_type = Some(
            ValidationContextType::ValidationContextSdsSecretConfig(sds(ROOT_CA, agent_sds())),
        );
    } else if !settings.credential_name.is_empty() || !settings.credential_names.is_empty() {
        served_credentials(settings, mutual, &mut common);
    } else {
        local_credentials(settings, mutual, &mut common);
    }
    common.tls_params = tls_params(settings);
    DownstreamTlsContext {
        common_tls_context: Some(common),
        require_client_certificate: Some(BoolValue {
            value: matches!(
                settings.mode,
                ServerTlsMode::Mutual | ServerTlsMode::IstioMutual
            ),
        }),
        ..Default::default()
    }
}

/// Certificates and the client CA as Secrets the control plane serves.
fn served_credentials(settings: &ServerTlsSettings, mutual: bool, common: &mut CommonTlsContext) {
    let names: Vec<String> = if settings.credential_names.is_empty() {
        vec![resource_name(&settings.credential_name)]
    } else {
        settings
            .credential_names
            .iter()
            .map(|n| resource_name(n))
            .collect()
    };
    for name in &names {
        common
            .tls_certificate_sds_secret_configs
            .push(sds(name, super::wire::ads()));
    }
    if !mutual {
        return;
    }
    // One CA for every certificate, as Envoy takes one: the first's.
    let ca_name = if settings.ca_cert_credential_name.is_empty() {
        format!("{}{CA_SUFFIX}", names[0])
    } else {
        resource_name(&settings.ca_cert_credential_name)
    };
    let ca = sds(&ca_name, super::wire::ads());
    let checks = client_checks(settings);
    common.validation_context_type = Some(if checks == CertificateValidationContext::default() {
        ValidationContextType::ValidationContextSdsSecretConfig(ca)
    } else {
        ValidationContextType::CombinedValidationContext(CombinedCertificateValidationContext {
            default_validation_context: Some(checks),
            validation_context_sds_secret_config: Some(ca),
            ..Default::default()
        })
    });
}

/// Certificates (one, or `tlsCertificates`' RSA and ECDSA pair) and the
/// client CA and CRL from files on the gateway (local mode).
fn local_credentials(settings: &ServerTlsSettings, mutual: bool, common: &mut CommonTlsContext) {
    let pairs: Vec<(&str, &str)> = if settings.tls_certificates.is_empty() {
        vec![(&settings.server_certificate, &settings.private_key)]
    } else {
        settings
            .tls_certificates
            .iter()
            .map(|c| (c.server_certificate.as_str(), c.private_key.as_str()))
            .collect()
    };
    for (certificate, key) in pairs {
        common.tls_certificates.push(TlsCertificate {
            certificate_chain: Some(file(certificate)),
            private_key: Some(file(key)),
            ..Default::default()
        });
    }
    if mutual && !settings.ca_certificates.is_empty() {
        common.validation_context_type = Some(ValidationContextType::ValidationContext(
            CertificateValidationContext {
                trusted_ca: Some(file(&settings.ca_certificates)),
                crl: (!settings.ca_crl.is_empty()).then(|| file(&settings.ca_crl)),
                ..client_checks(settings)
            },
        ));
    }
}

/// A server's `minProtocolVersion`, `maxProtocolVersion` and `cipherSuites`
/// as Envoy's `tls_params`; none when it sets none.
fn tls_params(settings: &ServerTlsSettings) -> Option<TlsParameters> {
    use oxmesh_config::networking::gateway::TlsProtocol as Version;
    let version = |v: Option<Version>| {
        match v {
            None | Some(Version::Auto) => TlsProtocol::TlsAuto,
            Some(Version::V1_0) => TlsProtocol::TlSv10,
            Some(Version::V1_1) => TlsProtocol::TlSv11,
            Some(Version::V1_2) => TlsProtocol::TlSv12,
            Some(Version::V1_3) => TlsProtocol::TlSv13,
        }
        .into()
    };
    let unset = settings.min_protocol_version.is_none()
        && settings.max_protocol_version.is_none()
        && settings.cipher_suites.is_empty();
    (!unset).then(|| TlsParameters {
        tls_minimum_protocol_version: version(settings.min_protocol_version),
        tls_maximum_protocol_version: version(settings.max_protocol_version),
        cipher_suites: settings.cipher_suites.clone(),
        ..Default::default()
    })
}

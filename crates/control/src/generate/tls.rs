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
/// Where Istio keeps Kubernetes-Secret-backed credentials in SDS names.
pub const CREDENTIAL_PREFIX: &str = "kubernetes://";

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
        ClientTlsMode::IstioMutual => Some(istio_mutual(mesh_sni, identities)),
        ClientTlsMode::Simple | ClientTlsMode::Mutual => Some(user_tls(settings, default_sni)),
    }
}

fn user_tls(settings: &ClientTlsSettings, default_sni: String) -> UpstreamTlsContext {
    let mut common = CommonTlsContext::default();
    if let Some(credential) = &settings.credential_name {
        let name = format!("{CREDENTIAL_PREFIX}{credential}");
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
                    &format!("{name}-cacert"),
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

/// A gateway server's TLS termination: the certificate from `credentialName`
/// (SDS `kubernetes://<name>` over ADS) or from files (`serverCertificate`,
/// `privateKey`: local mode); MUTUAL also checks clients against
/// `<name>-cacert` or `caCertificates`; ISTIO_MUTUAL uses the mesh identity.
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
    } else if !settings.credential_name.is_empty() {
        let name = format!("{CREDENTIAL_PREFIX}{}", settings.credential_name);
        common
            .tls_certificate_sds_secret_configs
            .push(sds(&name, super::wire::ads()));
        if mutual {
            let ca = sds(&format!("{name}-cacert"), super::wire::ads());
            let checks = client_checks(settings);
            common.validation_context_type =
                Some(if checks == CertificateValidationContext::default() {
                    ValidationContextType::ValidationContextSdsSecretConfig(ca)
                } else {
                    ValidationContextType::CombinedValidationContext(
                        CombinedCertificateValidationContext {
                            default_validation_context: Some(checks),
                            validation_context_sds_secret_config: Some(ca),
                            ..Default::default()
                        },
                    )
                });
        }
    } else {
        common.tls_certificates.push(TlsCertificate {
            certificate_chain: Some(file(&settings.server_certificate)),
            private_key: Some(file(&settings.private_key)),
            ..Default::default()
        });
        if mutual && !settings.ca_certificates.is_empty() {
            common.validation_context_type = Some(ValidationContextType::ValidationContext(
                CertificateValidationContext {
                    trusted_ca: Some(file(&settings.ca_certificates)),
                    ..client_checks(settings)
                },
            ));
        }
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

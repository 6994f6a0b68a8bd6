//! Gateway rules, and the server TLS settings Sidecar ingress listeners reuse.

use std::collections::HashSet;

use crate::networking::gateway::{Gateway, Server, ServerTlsMode, ServerTlsSettings, TlsProtocol};
use crate::object::Object;
use crate::path::FieldPath;
use crate::validation::Report;
use crate::validation::syntax;

const GATEWAY_SEMANTICS: &str = "internal.istio.io/gateway-semantics";

pub fn validate(gw: &Gateway, object: &Object, at: &FieldPath, report: &mut Report) {
    let gateway_semantics = object
        .meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(GATEWAY_SEMANTICS))
        .is_some_and(|v| v == "gateway");
    if !gateway_semantics && !syntax::is_dns1123_label(object.name()) {
        report.error(
            &FieldPath::parse("metadata.name"),
            format!("invalid gateway name: {:?}", object.name()),
        );
    }
    if gw.servers.is_empty() {
        report.error(
            &at.field("servers"),
            "gateway must have at least one server",
        );
    }
    let mut port_names = HashSet::new();
    for (i, server) in gw.servers.iter().enumerate() {
        let here = at.field("servers").index(i);
        self::server(server, gateway_semantics, &here, report);
        if !port_names.insert(server.port.name.as_str()) {
            report.error(
                &here.field("port").field("name"),
                format!(
                    "port names in servers must be unique: duplicate name {}",
                    server.port.name
                ),
            );
        }
    }
}

fn server(server: &Server, gateway_semantics: bool, at: &FieldPath, report: &mut Report) {
    if server.hosts.is_empty() {
        report.error(
            &at.field("hosts"),
            "server config must contain at least one host",
        );
    }
    for (i, host) in server.hosts.iter().enumerate() {
        for e in namespace_slash_host(host, true, gateway_semantics) {
            report.error(&at.field("hosts").index(i), e);
        }
    }
    let port = &server.port;
    let port_at = at.field("port");
    let protocol = syntax::protocol(&port.protocol);
    let mut port_ok = true;
    if protocol.is_none() {
        port_ok = false;
        report.error(
            &port_at.field("protocol"),
            format!("invalid protocol {:?}, supported protocols are HTTP, HTTP2, GRPC, GRPC-WEB, MONGO, REDIS, MYSQL, TCP", port.protocol),
        );
    }
    let unix = server.bind.starts_with("unix://");
    if (port.number > 0 || !unix)
        && let Err(e) = syntax::port(port.number)
    {
        port_ok = false;
        report.error(&port_at.field("number"), e);
    }
    if port.target_port > 0 {
        report.error(
            &port_at.field("targetPort"),
            "targetPort has no impact on Gateways",
        );
    }
    if port.name.is_empty() {
        report.error(&port_at.field("name"), "port name must be set");
    }
    if let Some(path) = server.bind.strip_prefix("unix://") {
        report.check(&at.field("bind"), syntax::unix_address(path));
        if port.number != 0 {
            report.error(
                &port_at.field("number"),
                "port number must be 0 for unix domain socket",
            );
        }
    } else if !server.bind.is_empty() {
        report.check(&at.field("bind"), syntax::ip_address(&server.bind));
    }
    if let Some(tls) = &server.tls {
        tls_options(tls, &at.field("tls"), report);
    }
    let Some(protocol) = protocol.filter(|_| port_ok) else {
        return;
    };
    match &server.tls {
        None if protocol.is_tls() => report.error(
            &at.field("tls"),
            "server must have TLS settings for HTTPS/TLS protocols",
        ),
        Some(tls) if !protocol.is_tls() => {
            let passthrough = matches!(
                tls.mode,
                ServerTlsMode::Passthrough | ServerTlsMode::AutoPassthrough
            ) && tls.ca_certificates.is_empty()
                && tls.private_key.is_empty()
                && tls.server_certificate.is_empty();
            if !protocol.is_http() {
                report.error(
                    &at.field("tls"),
                    "server cannot have TLS settings for non HTTPS/TLS ports",
                );
            } else if !passthrough {
                report.error(
                    &at.field("tls"),
                    "server cannot have TLS settings for plain text HTTP ports",
                );
            }
            if tls.https_redirect && !protocol.is_http() {
                report.warn(
                    &at.field("tls").field("httpsRedirect"),
                    "tls.httpsRedirect should only be used with http servers",
                );
            }
        }
        Some(tls) if tls.https_redirect => report.warn(
            &at.field("tls").field("httpsRedirect"),
            "tls.httpsRedirect should only be used with http servers",
        ),
        _ => {}
    }
}

/// `namespace/dnsName` hosts of Gateways and Sidecars; Gateways also allow a bare name.
pub fn namespace_slash_host(host: &str, gateway: bool, gateway_semantics: bool) -> Vec<String> {
    let Some((namespace, name)) = host.split_once('/') else {
        return if gateway {
            host_part(host, gateway)
        } else {
            vec!["host must be of form namespace/dnsName".to_owned()]
        };
    };
    if namespace.is_empty() || name.is_empty() {
        return vec!["config namespace and dnsName in host entry cannot be empty".to_owned()];
    }
    let mut errors = Vec::new();
    let special =
        matches!(namespace, "*" | ".") || (namespace == "~" && (!gateway || gateway_semantics));
    if !special && !syntax::is_dns1123_label(namespace) {
        let kind = if gateway { "gateway" } else { "sidecar" };
        errors.push(format!("invalid namespace value {namespace:?} in {kind}"));
    }
    errors.extend(host_part(name, gateway));
    errors
}

fn host_part(host: &str, gateway: bool) -> Vec<String> {
    let mut errors = Vec::new();
    if host != "*" && !host.contains('.') {
        errors.push("short names (non FQDN) are not allowed".to_owned());
    }
    if let Err(e) = syntax::wildcard_domain(host)
        && !(gateway && syntax::is_ip(host))
    {
        errors.push(e);
    }
    if let Err(e) = syntax::partial_wildcard(host) {
        errors.push(e);
    }
    errors
}

const CIPHER_SUITES: &[&str] = &[
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
    "ECDHE-ECDSA-AES128-SHA",
    "ECDHE-RSA-AES128-SHA",
    "ECDHE-ECDSA-AES256-SHA",
    "ECDHE-RSA-AES256-SHA",
    "AES128-GCM-SHA256",
    "AES256-GCM-SHA384",
    "AES128-SHA",
    "AES256-SHA",
    "DES-CBC3-SHA",
];

fn cipher_suite_valid(suite: &str) -> bool {
    suite.is_empty()
        || suite == "ALL"
        || !suite.starts_with(|c: char| c.is_ascii_alphanumeric())
        || CIPHER_SUITES.contains(&suite)
}

/// Server-side TLS settings (Gateway servers, Sidecar ingress).
pub fn tls_options(tls: &ServerTlsSettings, at: &FieldPath, report: &mut Report) {
    schema_one_ofs(tls, at, report);
    if matches!(
        tls.min_protocol_version,
        Some(TlsProtocol::V1_0 | TlsProtocol::V1_1)
    ) && tls.cipher_suites.is_empty()
    {
        report.warn(&at.field("minProtocolVersion"), "TLS version below TLSV1_2 require setting compatible ciphers as by default they no longer include compatible ciphers.");
    }
    let mut seen = HashSet::new();
    let (mut invalid, mut duplicate): (Vec<&str>, Vec<&str>) = (Vec::new(), Vec::new());
    for suite in &tls.cipher_suites {
        if !cipher_suite_valid(suite) {
            invalid.push(suite);
        } else if !seen.insert(suite) {
            duplicate.push(suite);
        }
    }
    if !invalid.is_empty() {
        invalid.sort_unstable();
        report.warn(
            &at.field("cipherSuites"),
            format!("ignoring invalid cipher suites: {invalid:?}"),
        );
    }
    if !duplicate.is_empty() {
        duplicate.sort_unstable();
        report.warn(
            &at.field("cipherSuites"),
            format!("ignoring duplicate cipher suites: {duplicate:?}"),
        );
    }
    let has_cert_files = !tls.server_certificate.is_empty() || !tls.private_key.is_empty();
    if tls.mode == ServerTlsMode::IstioMutual {
        let forbidden = [
            (!tls.server_certificate.is_empty(), "server certificate"),
            (!tls.private_key.is_empty(), "private key"),
            (!tls.ca_certificates.is_empty(), "CA bundle"),
            (!tls.tls_certificates.is_empty(), "tlsCertificates"),
            (!tls.credential_name.is_empty(), "credentialName"),
            (!tls.credential_names.is_empty(), "credentialNames"),
        ];
        for (_, what) in forbidden.iter().filter(|(set, _)| *set) {
            report.error(
                at,
                format!("ISTIO_MUTUAL TLS cannot have associated {what}"),
            );
        }
        return;
    }
    let certificates_given = has_cert_files
        || !tls.ca_certificates.is_empty()
        || !tls.ca_crl.is_empty()
        || !tls.tls_certificates.is_empty()
        || !tls.credential_name.is_empty()
        || !tls.credential_names.is_empty();
    if matches!(
        tls.mode,
        ServerTlsMode::Passthrough | ServerTlsMode::AutoPassthrough
    ) && certificates_given
    {
        report.warn(
            at,
            format!(
                "{} mode does not use certificates, they will be ignored",
                mode_name(tls.mode)
            ),
        );
    }
    let sources = usize::from(!tls.server_certificate.is_empty() && !tls.private_key.is_empty())
        + usize::from(!tls.credential_name.is_empty())
        + usize::from(!tls.credential_names.is_empty())
        + usize::from(!tls.tls_certificates.is_empty());
    if sources > 1 {
        report.error(at, "only one of credential_name, credential_names, server_certificate/private_key, tls_certificates should be specified");
    }
    let terminating = matches!(
        tls.mode,
        ServerTlsMode::Simple | ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual
    );
    if terminating && (!tls.credential_name.is_empty() || !tls.credential_names.is_empty()) {
        if !tls.ca_crl.is_empty() && !tls.credential_name.is_empty() {
            report.error(&at.field("caCrl"), "CRL is not supported with credentialName. CRL has to be specified in the credential");
        }
        return;
    }
    if terminating {
        let prefix = if tls.mode == ServerTlsMode::Simple {
            "SIMPLE TLS"
        } else {
            "MUTUAL TLS"
        };
        if tls.mode != ServerTlsMode::Simple && tls.ca_certificates.is_empty() {
            report.error(
                &at.field("caCertificates"),
                "MUTUAL TLS requires a client CA bundle",
            );
        }
        let pairs: Vec<(&str, &str)> = if tls.tls_certificates.is_empty() {
            vec![(tls.server_certificate.as_str(), tls.private_key.as_str())]
        } else {
            tls.tls_certificates
                .iter()
                .map(|c| (c.server_certificate.as_str(), c.private_key.as_str()))
                .collect()
        };
        for (certificate, key) in pairs {
            if certificate.is_empty() {
                report.error(at, format!("{prefix} requires a server certificate"));
            }
            if key.is_empty() {
                report.error(at, format!("{prefix} requires a private key"));
            }
        }
        if !tls.ca_crl.is_empty() && tls.mode == ServerTlsMode::Simple {
            report.error(&at.field("caCrl"), "CRL is not supported with SIMPLE TLS");
        }
    }
}

/// The CRD's one-of rules and list bounds for ServerTLSSettings.
fn schema_one_ofs(tls: &ServerTlsSettings, at: &FieldPath, report: &mut Report) {
    if !tls.credential_names.is_empty() && !tls.tls_certificates.is_empty() {
        report.error(
            at,
            "only one of credentialNames or tlsCertificates can be set",
        );
    }
    if !tls.credential_name.is_empty() && !tls.credential_names.is_empty() {
        report.error(
            at,
            "only one of credentialName or credentialNames can be set",
        );
    }
    if tls.credential_names.len() > 2 {
        report.error(&at.field("credentialNames"), "must have at most 2 items");
    }
    if tls.tls_certificates.len() > 2 {
        report.error(&at.field("tlsCertificates"), "must have at most 2 items");
    }
}

fn mode_name(mode: ServerTlsMode) -> &'static str {
    match mode {
        ServerTlsMode::Passthrough => "PASSTHROUGH",
        ServerTlsMode::Simple => "SIMPLE",
        ServerTlsMode::Mutual => "MUTUAL",
        ServerTlsMode::AutoPassthrough => "AUTO_PASSTHROUGH",
        ServerTlsMode::IstioMutual => "ISTIO_MUTUAL",
        ServerTlsMode::OptionalMutual => "OPTIONAL_MUTUAL",
    }
}

pub fn server_tls_mode_name(mode: ServerTlsMode) -> &'static str {
    mode_name(mode)
}

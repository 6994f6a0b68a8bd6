//! TLS to a server without verifying it (IST0128, IST0129).

use super::mesh::{Mesh, namespace};
use super::{Code, Sink};
use crate::kind::Kind;
use crate::networking::destination_rule::{ClientTlsMode, ClientTlsSettings};
use crate::object::Resource;
use crate::path::FieldPath;

/// SIMPLE or MUTUAL TLS with no CA to check the server against. A `credentialName`
/// with a `workloadSelector` brings its own CA, so it does not count.
fn unverified(tls: &ClientTlsSettings, selector: bool) -> Option<&'static str> {
    let mode = match tls.mode {
        ClientTlsMode::Simple => "SIMPLE",
        ClientTlsMode::Mutual => "MUTUAL",
        _ => return None,
    };
    let has_ca = tls
        .ca_certificates
        .as_deref()
        .is_some_and(|c| !c.is_empty());
    let credential = tls
        .credential_name
        .as_deref()
        .is_some_and(|c| !c.is_empty())
        && selector;
    let skip = tls.insecure_skip_verify == Some(true);
    (!has_ca && !credential && !skip).then_some(mode)
}

pub fn analyze(mesh: &Mesh<'_>, sink: &mut Sink) {
    for sourced in mesh.of_kind(Kind::DestinationRule) {
        let Resource::DestinationRule(dr) = &sourced.object.resource else {
            continue;
        };
        let Some(policy) = &dr.traffic_policy else {
            continue;
        };
        let ns = namespace(sourced);
        let name = format!("{ns}/{}", sourced.object.name());
        let selector = dr.workload_selector.is_some();
        let at = FieldPath::parse("spec.trafficPolicy");
        if let Some(mode) = policy.tls.as_ref().and_then(|t| unverified(t, selector)) {
            sink.report(
                Code::NoServerCertificateVerificationDestinationLevel,
                sourced,
                &at.field("tls"),
                format!("DestinationRule {name} in namespace {ns} has TLS mode set to {mode} but no caCertificates are set to validate server identity for host: {}", dr.host),
            );
        }
        for (i, port_policy) in policy.port_level_settings.iter().enumerate() {
            let Some(mode) = port_policy
                .tls
                .as_ref()
                .and_then(|t| unverified(t, selector))
            else {
                continue;
            };
            let port = port_policy.port.map_or(0, |p| p.number);
            sink.report(
                Code::NoServerCertificateVerificationPortLevel,
                sourced,
                &at.field("portLevelSettings").index(i).field("tls"),
                format!(
                    "DestinationRule {name} in namespace {ns} has TLS mode set to {mode} but no caCertificates are set to validate server identity for host: {} at port number:{port}",
                    dr.host
                ),
            );
        }
    }
}

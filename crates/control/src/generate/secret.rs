//! SDS over ADS: the mesh trust bundle (`ROOTCA`). The workload certificate
//! (`default`) is not served here: its key is made by the proxy's own agent and
//! never leaves the workload; the agent serves it to the proxy locally.

use envoy_types::pb::envoy::config::core::v3::DataSource;
use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, secret,
};

use super::tls::ROOT_CA;
use crate::proxy::ProxyClass;
use crate::push_context::PushContext;

pub fn generate(ctx: &PushContext, _proxy: &ProxyClass) -> Vec<Secret> {
    if ctx.trust_bundle.is_empty() {
        return Vec::new();
    }
    vec![Secret {
        name: ROOT_CA.to_owned(),
        r#type: Some(secret::Type::ValidationContext(
            CertificateValidationContext {
                trusted_ca: Some(DataSource {
                    specifier: Some(Specifier::InlineBytes(ctx.trust_bundle.to_vec())),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )),
    }]
}

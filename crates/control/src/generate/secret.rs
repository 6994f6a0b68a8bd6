//! SDS over ADS: the mesh trust bundle (`ROOTCA`), and for gateways the TLS
//! Secrets their Gateways name by `credentialName` (`kubernetes://<name>`, and
//! `kubernetes://<name>-cacert` for the client CA). The workload certificate
//! (`default`) is not served here: its key is made by the proxy's own agent and
//! never leaves the workload; the agent serves it to the proxy locally.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::DataSource;
use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, TlsCertificate, secret,
};

use super::tls::{CREDENTIAL_PREFIX, ROOT_CA};
use crate::proxy::{ProxyClass, ProxyKind};
use crate::push_context::PushContext;

/// The suffix of a client CA's SDS name (and of a Secret that holds only one).
const CA_SUFFIX: &str = "-cacert";

pub fn generate(ctx: &PushContext, proxy: &ProxyClass) -> Vec<Secret> {
    let mut secrets = Vec::new();
    if !ctx.trust_bundle.is_empty() {
        secrets.push(validation(ROOT_CA.to_owned(), ctx.trust_bundle.to_vec()));
    }
    // A private key goes only to a gateway proven to run in its namespace (as
    // istiod: Secrets of the gateway's own namespace, to an authenticated
    // caller). Which of them a gateway gets is what it subscribes to.
    if proxy.kind == ProxyKind::Router && proxy.proven {
        secrets.extend(credentials(ctx, &proxy.namespace).into_values());
    }
    secrets
}

/// The namespace's credentials by SDS name. A client CA for `<name>` comes
/// from `<name>`'s own `ca.crt`, else from a Secret `<name>-cacert` (Istio's
/// two ways of giving one).
fn credentials(ctx: &PushContext, namespace: &str) -> BTreeMap<String, Secret> {
    let mut out = BTreeMap::new();
    let listed: Vec<_> = ctx.credentials_in(namespace).collect();
    for (name, credential) in &listed {
        if let (None, Some(ca)) = (&credential.certificate, &credential.ca)
            && name.ends_with(CA_SUFFIX)
        {
            let sds = format!("{CREDENTIAL_PREFIX}{name}");
            out.insert(sds.clone(), validation(sds, ca.clone()));
        }
    }
    for (name, credential) in &listed {
        let sds = format!("{CREDENTIAL_PREFIX}{name}");
        if let Some((chain, key)) = &credential.certificate {
            out.insert(
                sds.clone(),
                certificate(sds.clone(), chain.clone(), key.clone()),
            );
            if let Some(ca) = &credential.ca {
                let ca_sds = format!("{sds}{CA_SUFFIX}");
                out.insert(ca_sds.clone(), validation(ca_sds, ca.clone()));
            }
        }
    }
    out
}

fn inline(bytes: Vec<u8>) -> Option<DataSource> {
    Some(DataSource {
        specifier: Some(Specifier::InlineBytes(bytes)),
        ..Default::default()
    })
}

fn validation(name: String, roots: Vec<u8>) -> Secret {
    Secret {
        name,
        r#type: Some(secret::Type::ValidationContext(
            CertificateValidationContext {
                trusted_ca: inline(roots),
                ..Default::default()
            },
        )),
    }
}

fn certificate(name: String, chain: Vec<u8>, key: Vec<u8>) -> Secret {
    Secret {
        name,
        r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: inline(chain),
            private_key: inline(key),
            ..Default::default()
        })),
    }
}

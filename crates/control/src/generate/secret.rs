//! SDS over ADS: the mesh trust bundle (`ROOTCA`), and for gateways the TLS
//! Secrets their Gateways and DestinationRules name by `credentialName`
//! (`kubernetes://<name>`, and `kubernetes://<name>-cacert` for the client
//! CA; `kubernetes-gateway://<ns>/<name>` for Gateway API references). The
//! workload certificate (`default`) is not served here: its key is made by
//! the proxy's own agent and never leaves the workload; the agent serves it
//! to the proxy locally.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::DataSource;
use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, TlsCertificate, secret,
};

use super::tls::ROOT_CA;
use crate::credentials::{
    CA_SUFFIX, Credential, CredentialRef, KUBERNETES, KUBERNETES_GATEWAY, resource_name,
};
use crate::proxy::{ProxyClass, ProxyKind};
use crate::push_context::PushContext;

pub fn generate(ctx: &PushContext, proxy: &ProxyClass) -> Vec<Secret> {
    let mut secrets = Vec::new();
    if !ctx.trust_bundle.is_empty() {
        secrets.push(validation(
            ROOT_CA.to_owned(),
            ctx.trust_bundle.to_vec(),
            None,
        ));
    }
    // A private key goes only to a gateway proven to run in its namespace (as
    // istiod: Secrets of the gateway's own namespace, to an authenticated
    // caller, and those a ReferenceGrant opens to its Gateway API Gateways).
    // Which of them a gateway gets is what it subscribes to.
    if proxy.kind == ProxyKind::Router && proxy.proven {
        secrets.extend(credentials(ctx, proxy).into_values());
    }
    secrets
}

/// Every SDS name the gateway may use, with its Secret: each Secret of its
/// namespace by its plain name (and `-cacert`), and the names its Gateways
/// spell otherwise (`kubernetes://<ns>/<name>`, `kubernetes-gateway://…`)
/// when they are its namespace's or a ReferenceGrant opened them to it.
fn credentials(ctx: &PushContext, proxy: &ProxyClass) -> BTreeMap<String, Secret> {
    let namespace = proxy.namespace.as_str();
    let mut names = Vec::new();
    for (name, _) in ctx.credentials_in(namespace) {
        names.push(format!("{KUBERNETES}{name}"));
        if !name.ends_with(CA_SUFFIX) {
            names.push(format!("{KUBERNETES}{name}{CA_SUFFIX}"));
        }
    }
    names.extend(spelled_out(ctx, proxy));
    names
        .into_iter()
        .filter_map(|name| {
            let reference = CredentialRef::parse(&name, namespace)?;
            let allowed = reference.namespace == namespace
                || ctx
                    .granted_credentials
                    .contains(&(namespace.to_owned(), stem(&name).to_owned()));
            if !allowed {
                return None;
            }
            let secret = resolve(ctx, &reference, name.clone())?;
            Some((name, secret))
        })
        .collect()
}

/// A credential's name without its `-cacert`.
fn stem(name: &str) -> &str {
    name.strip_suffix(CA_SUFFIX).unwrap_or(name)
}

/// The credential names the proxy's Gateway servers give with a namespace
/// (`kubernetes://<ns>/<name>`, `kubernetes-gateway://<ns>/<name>`), with
/// their `-cacert` names. A `kubernetes-gateway://` name counts only from a
/// Gateway of the proxy's own namespace, as istiod verifies those only for
/// it; which namespace a name may open is checked by the caller.
fn spelled_out(ctx: &PushContext, proxy: &ProxyClass) -> Vec<String> {
    ctx.gateways_for(proxy)
        .flat_map(|g| {
            let own = g.namespace == proxy.namespace;
            g.spec
                .servers
                .iter()
                .filter_map(|s| s.tls.as_ref())
                .flat_map(|tls| tls.credential_refs())
                .filter(move |n| n.contains('/') && (own || !n.starts_with(KUBERNETES_GATEWAY)))
        })
        .map(resource_name)
        .flat_map(|n| [format!("{n}{CA_SUFFIX}"), n])
        .collect()
}

/// What a reference serves: a certificate with its key; or roots (a
/// `-cacert` name: the Secret `<name>-cacert`, else `<name>`'s CA, as
/// istiod looks; or a Secret that holds only a CA, as
/// `caCertCredentialName` may name one).
fn resolve(ctx: &PushContext, reference: &CredentialRef<'_>, sds_name: String) -> Option<Secret> {
    let roots = |c: &Credential| c.ca.clone().map(|ca| (ca, c.crl.clone()));
    if reference.ca_only {
        let suffixed = format!("{}{CA_SUFFIX}", reference.name);
        let (ca, crl) = ctx
            .credential(reference.namespace, &suffixed)
            .and_then(roots)
            .or_else(|| {
                ctx.credential(reference.namespace, reference.name)
                    .and_then(roots)
            })?;
        return Some(validation(sds_name, ca, crl));
    }
    let credential = ctx.credential(reference.namespace, reference.name)?;
    match &credential.certificate {
        Some((chain, key)) => Some(certificate(sds_name, chain.clone(), key.clone())),
        None => {
            let (ca, crl) = roots(credential)?;
            Some(validation(sds_name, ca, crl))
        }
    }
}

fn inline(bytes: Vec<u8>) -> Option<DataSource> {
    Some(DataSource {
        specifier: Some(Specifier::InlineBytes(bytes)),
        ..Default::default()
    })
}

fn validation(name: String, roots: Vec<u8>, crl: Option<Vec<u8>>) -> Secret {
    Secret {
        name,
        r#type: Some(secret::Type::ValidationContext(
            CertificateValidationContext {
                trusted_ca: inline(roots),
                crl: crl.and_then(inline),
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

//! Gateway credentials from Kubernetes Secrets, as Istio reads them for a
//! Gateway's `credentialName`: `tls.crt`, `tls.key`, `ca.crt` and `ca.crl`
//! (type `kubernetes.io/tls`), or `cert`, `key`, `cacert` and `crl`
//! (generic); a CA alone (`ca.crt` or `cacert`) serves `<name>-cacert`.
//! Also the names a Gateway or DestinationRule gives them
//! ([`CredentialRef`]), as istiod turns them into SDS resource names.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;

/// One Secret's TLS material, PEM.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Credential {
    /// Certificate chain and private key, when the Secret has both.
    pub certificate: Option<(Vec<u8>, Vec<u8>)>,
    /// Client CA roots, for MUTUAL.
    pub ca: Option<Vec<u8>>,
    /// Revoked certificates the CA's clients may not use (`ca.crl` or `crl`).
    pub crl: Option<Vec<u8>>,
}

impl Credential {
    /// What a Secret holds for TLS; `None` when nothing.
    pub fn of(secret: &Secret) -> Option<Self> {
        let mut data: BTreeMap<&str, Vec<u8>> = BTreeMap::new();
        for (key, value) in secret.data.iter().flatten() {
            data.insert(key, value.0.clone());
        }
        for (key, value) in secret.string_data.iter().flatten() {
            data.insert(key, value.clone().into_bytes());
        }
        // As istiod reads them: the generic keys first, each with its own
        // companion (`cacert` with `crl`, `ca.crt` with `ca.crl`); an empty
        // key is as good as none.
        let get = |key: &str| data.get(key).filter(|v| !v.is_empty()).cloned();
        let certificate = [("cert", "key"), ("tls.crt", "tls.key")]
            .into_iter()
            .find_map(|(cert, key)| Some((get(cert)?, get(key)?)));
        let (ca, crl) = [("cacert", "crl"), ("ca.crt", "ca.crl")]
            .into_iter()
            .find_map(|(ca, crl)| Some((get(ca)?, get(crl))))
            .map_or((None, None), |(ca, crl)| (Some(ca), crl));
        (certificate.is_some() || ca.is_some()).then_some(Credential {
            certificate,
            ca,
            crl,
        })
    }
}

/// SDS names of Secrets in the proxy's own namespace (`kubernetes://<name>`,
/// or `kubernetes://<namespace>/<name>`).
pub const KUBERNETES: &str = "kubernetes://";
/// SDS names of Secrets a Gateway API Gateway refers to, in its namespace or
/// another one a ReferenceGrant opens (`kubernetes-gateway://<ns>/<name>`).
pub const KUBERNETES_GATEWAY: &str = "kubernetes-gateway://";
/// The suffix of a client CA's SDS name.
pub const CA_SUFFIX: &str = "-cacert";

/// A CA in a ConfigMap: public, so istiod serves it to anyone (not served
/// here yet).
pub const CONFIGMAP: &str = "configmap://";
/// Other types istiod keeps in a name (ConfigMaps, the workload's own
/// certificate, external SDS, refused references): not served here, so a
/// proxy refuses a chain or cluster that names one.
const OTHER_TYPES: [&str; 4] = [CONFIGMAP, "builtin://", "sds://", "invalid://"];

/// A `credentialName` as istiod turns it into an SDS resource name: kept
/// when it names its type, else a Secret of the proxy's namespace.
pub fn resource_name(credential: &str) -> String {
    let typed = credential.starts_with(KUBERNETES)
        || credential.starts_with(KUBERNETES_GATEWAY)
        || OTHER_TYPES.iter().any(|t| credential.starts_with(t));
    if typed {
        credential.to_owned()
    } else {
        format!("{KUBERNETES}{credential}")
    }
}

/// The Secret an SDS resource name refers to, for a proxy in `proxy_namespace`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CredentialRef<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    /// The client CA of the Secret (`<name>-cacert`).
    pub ca_only: bool,
}

impl<'a> CredentialRef<'a> {
    pub fn parse(resource: &'a str, proxy_namespace: &'a str) -> Option<Self> {
        let (rest, gateway_api) = if let Some(rest) = resource.strip_prefix(KUBERNETES) {
            (rest, false)
        } else {
            (resource.strip_prefix(KUBERNETES_GATEWAY)?, true)
        };
        let (namespace, name) = match rest.split_once('/') {
            Some((namespace, name)) => (namespace, name),
            // istiod requires the namespace in kubernetes-gateway:// names.
            None if gateway_api => return None,
            None => (proxy_namespace, rest),
        };
        if namespace.is_empty() || name.is_empty() || name.contains('/') {
            return None;
        }
        let (name, ca_only) = match name.strip_suffix(CA_SUFFIX) {
            Some(stem) => (stem, true),
            None => (name, false),
        };
        Some(Self {
            namespace,
            name,
            ca_only,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_names_as_istiod_writes_them() {
        assert_eq!(resource_name("cert"), "kubernetes://cert");
        assert_eq!(
            resource_name("kubernetes://ns/cert"),
            "kubernetes://ns/cert"
        );
        assert_eq!(
            resource_name("kubernetes-gateway://ns/cert"),
            "kubernetes-gateway://ns/cert"
        );
    }

    #[test]
    fn other_types_are_kept_as_written() {
        assert_eq!(resource_name("configmap://ns/ca"), "configmap://ns/ca");
        assert_eq!(resource_name("builtin://"), "builtin://");
    }

    #[test]
    fn a_ca_pairs_with_its_own_revocation_list() {
        use k8s_openapi::ByteString;
        let secret = |pairs: &[(&str, &str)]| Secret {
            data: Some(
                pairs
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
                    .collect(),
            ),
            ..Default::default()
        };
        let tls = Credential::of(&secret(&[("ca.crt", "CA"), ("crl", "OTHER")])).expect("a CA");
        assert_eq!((tls.ca.as_deref(), tls.crl), (Some(&b"CA"[..]), None));
        let generic = Credential::of(&secret(&[
            ("cacert", "CA"),
            ("crl", "CRL"),
            ("ca.crt", "X"),
        ]))
        .expect("a CA");
        assert_eq!(generic.ca.as_deref(), Some(&b"CA"[..]));
        assert_eq!(generic.crl.as_deref(), Some(&b"CRL"[..]));
    }

    #[test]
    fn references_name_a_namespace_and_a_secret() {
        let own = CredentialRef::parse("kubernetes://cert-cacert", "gw").expect("parsed");
        assert_eq!((own.namespace, own.name, own.ca_only), ("gw", "cert", true));
        let other = CredentialRef::parse("kubernetes-gateway://certs/cert", "gw").expect("parsed");
        assert_eq!((other.namespace, other.name), ("certs", "cert"));
        assert!(!other.ca_only);
        assert_eq!(
            CredentialRef::parse("kubernetes-gateway://cert", "gw"),
            None
        );
        assert_eq!(CredentialRef::parse("file://cert", "gw"), None);
        assert_eq!(CredentialRef::parse("kubernetes://a/b/c", "gw"), None);
    }
}

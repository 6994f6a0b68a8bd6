//! Gateway credentials from Kubernetes Secrets, as Istio reads them for a
//! Gateway's `credentialName`: `tls.crt`, `tls.key` and `ca.crt` (type
//! `kubernetes.io/tls`), or `cert`, `key` and `cacert` (generic); a CA alone
//! (`ca.crt` or `cacert`) serves `<name>-cacert`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;

/// One Secret's TLS material, PEM.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Credential {
    /// Certificate chain and private key, when the Secret has both.
    pub certificate: Option<(Vec<u8>, Vec<u8>)>,
    /// Client CA roots, for MUTUAL.
    pub ca: Option<Vec<u8>>,
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
        let pick = |keys: [&str; 2]| keys.iter().find_map(|k| data.get(k).cloned());
        let certificate = match (pick(["tls.crt", "cert"]), pick(["tls.key", "key"])) {
            (Some(cert), Some(key)) => Some((cert, key)),
            _ => None,
        };
        let ca = pick(["ca.crt", "cacert"]);
        (certificate.is_some() || ca.is_some()).then_some(Credential { certificate, ca })
    }
}

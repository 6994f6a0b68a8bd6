//! What a gateway's MUTUAL server asks of a client certificate beyond its CA:
//! Envoy's `match_typed_subject_alt_names` (exact names, of any type),
//! `verify_certificate_spki` (base64 SHA-256 of the public key) and
//! `verify_certificate_hash` (hex SHA-256 of the certificate), which Istio
//! makes of a Gateway's `subjectAltNames`, `verifyCertificateSpki` and
//! `verifyCertificateHash`. Any one listed value matching admits the client,
//! per kind, as in Envoy.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::CertificateValidationContext;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientChecks {
    names: Vec<String>,
    public_keys: Vec<[u8; 32]>,
    certificates: Vec<[u8; 32]>,
}

impl ClientChecks {
    pub fn from_context(context: &CertificateValidationContext) -> Result<Self, String> {
        let names = context
            .match_typed_subject_alt_names
            .iter()
            .map(
                |m| match m.matcher.as_ref().and_then(|m| m.match_pattern.as_ref()) {
                    Some(MatchPattern::Exact(name)) => Ok(name.clone()),
                    _ => Err("only exact subject alt name matches are supported".to_owned()),
                },
            )
            .collect::<Result<_, _>>()?;
        let public_keys = context
            .verify_certificate_spki
            .iter()
            .map(|b64| {
                let bytes = STANDARD
                    .decode(b64.trim())
                    .map_err(|e| format!("verify_certificate_spki {b64:?}: {e}"))?;
                sha256(&bytes)
                    .ok_or_else(|| format!("verify_certificate_spki {b64:?}: not 32 bytes"))
            })
            .collect::<Result<_, _>>()?;
        let certificates = context
            .verify_certificate_hash
            .iter()
            .map(|hex| {
                hex_sha256(hex)
                    .ok_or_else(|| format!("verify_certificate_hash {hex:?}: not a hex SHA-256"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            names,
            public_keys,
            certificates,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty() && self.public_keys.is_empty() && self.certificates.is_empty()
    }

    /// Whether the client's leaf certificate (DER) passes every kind of check
    /// that lists values.
    pub fn admits(&self, leaf: &[u8]) -> bool {
        if self.is_empty() {
            return true;
        }
        let Some(prints) = oxmesh_identity::certificate::fingerprints(leaf) else {
            return false;
        };
        let names_ok = self.names.is_empty()
            || oxmesh_identity::certificate::CertificateInfo::parse(leaf).is_ok_and(|info| {
                info.dns_sans
                    .iter()
                    .chain(info.uri_sans.iter())
                    .any(|san| self.names.contains(san))
            });
        let key_ok = self.public_keys.is_empty() || self.public_keys.contains(&prints.public_key);
        let cert_ok =
            self.certificates.is_empty() || self.certificates.contains(&prints.certificate);
        names_ok && key_ok && cert_ok
    }
}

fn sha256(bytes: &[u8]) -> Option<[u8; 32]> {
    bytes.try_into().ok()
}

/// `AB:CD:...` or `abcd...`.
fn hex_sha256(text: &str) -> Option<[u8; 32]> {
    let digits: Vec<u8> = text.bytes().filter(|b| *b != b':').collect();
    if digits.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in digits.chunks(2).enumerate() {
        let pair = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::SubjectAltNameMatcher;
    use envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher;

    fn leaf(name: &str) -> Vec<u8> {
        let params = rcgen::CertificateParams::new(vec![name.to_owned()]).expect("params");
        let key = rcgen::KeyPair::generate().expect("key");
        params.self_signed(&key).expect("cert").der().to_vec()
    }

    fn names(names: &[&str]) -> CertificateValidationContext {
        CertificateValidationContext {
            match_typed_subject_alt_names: names
                .iter()
                .map(|n| SubjectAltNameMatcher {
                    san_type: 2, // DNS
                    matcher: Some(StringMatcher {
                        match_pattern: Some(MatchPattern::Exact((*n).to_owned())),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn names_keys_and_hashes_each_narrow_who_gets_in() {
        let client = leaf("client.example.com");
        let other = leaf("other.example.com");
        let checks = ClientChecks::from_context(&names(&["client.example.com"])).expect("valid");
        assert!(checks.admits(&client));
        assert!(!checks.admits(&other));

        let prints = oxmesh_identity::certificate::fingerprints(&client).expect("prints");
        let hex: Vec<String> = prints
            .certificate
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect();
        let pinned = ClientChecks::from_context(&CertificateValidationContext {
            verify_certificate_hash: vec![hex.join(":")],
            verify_certificate_spki: vec![STANDARD.encode(prints.public_key)],
            ..Default::default()
        })
        .expect("valid");
        assert!(pinned.admits(&client));
        assert!(!pinned.admits(&other));

        assert!(
            ClientChecks::default().admits(&other),
            "no checks, no narrowing"
        );
        assert!(
            ClientChecks::from_context(&CertificateValidationContext {
                verify_certificate_hash: vec!["nothex".to_owned()],
                ..Default::default()
            })
            .is_err()
        );
    }
}

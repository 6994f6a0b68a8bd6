//! Private keys in the formats CAs are handed: PKCS#8, PKCS#1 (`RSA PRIVATE KEY`) and
//! SEC1 (`EC PRIVATE KEY`). The signer (ring, through rcgen) reads PKCS#8 only, so
//! the other two are re-wrapped as PKCS#8 here.

use rustls_pki_types::pem::{PemObject, SectionKind};
use x509_parser::der_parser::ber::BerObjectContent;
use x509_parser::der_parser::oid::Oid;
use x509_parser::der_parser::parse_der;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("no PEM private key found (expected PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)")]
    NoKey,
    #[error("the EC private key names no curve, or a curve other than P-256 and P-384")]
    UnknownCurve,
    #[error("the key cannot be used for signing: {0}")]
    Unusable(rcgen::Error),
}

const RSA_ENCRYPTION: &[u8] = &[
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
];
const EC_PUBLIC_KEY: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const P384: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
const NULL: &[u8] = &[0x05, 0x00];

/// Reads a PEM private key of any of the three formats as a signing key.
pub fn signing_key_from_pem(pem: &[u8]) -> Result<rcgen::KeyPair, KeyError> {
    let (kind, der) = <(SectionKind, Vec<u8>)>::pem_slice_iter(pem)
        .filter_map(Result::ok)
        .find(|(kind, _)| {
            matches!(
                kind,
                SectionKind::PrivateKey | SectionKind::RsaPrivateKey | SectionKind::EcPrivateKey
            )
        })
        .ok_or(KeyError::NoKey)?;
    let pkcs8 = match kind {
        SectionKind::RsaPrivateKey => wrap_pkcs8(&[RSA_ENCRYPTION, NULL].concat(), &der),
        SectionKind::EcPrivateKey => wrap_pkcs8(&[EC_PUBLIC_KEY, sec1_curve(&der)?].concat(), &der),
        _ => der,
    };
    rcgen::KeyPair::try_from(pkcs8.as_slice()).map_err(KeyError::Unusable)
}

/// The curve named in a SEC1 ECPrivateKey's `[0] parameters`.
fn sec1_curve(der: &[u8]) -> Result<&'static [u8], KeyError> {
    let p256 = Oid::from(&[1, 2, 840, 10045, 3, 1, 7]).map_err(|_| KeyError::UnknownCurve)?;
    let p384 = Oid::from(&[1, 3, 132, 0, 34]).map_err(|_| KeyError::UnknownCurve)?;
    let (_, key) = parse_der(der).map_err(|_| KeyError::UnknownCurve)?;
    let items = key.as_sequence().map_err(|_| KeyError::UnknownCurve)?;
    for item in items {
        let BerObjectContent::Unknown(any) = &item.content else {
            continue;
        };
        let Ok((_, inner)) = parse_der(any.data) else {
            continue;
        };
        if let Ok(oid) = inner.as_oid() {
            if *oid == p256 {
                return Ok(P256);
            }
            if *oid == p384 {
                return Ok(P384);
            }
        }
    }
    Err(KeyError::UnknownCurve)
}

/// `PrivateKeyInfo { version 0, algorithm, privateKey }` around a raw key.
fn wrap_pkcs8(algorithm: &[u8], key: &[u8]) -> Vec<u8> {
    let version = [0x02, 0x01, 0x00];
    let algorithm = tlv(0x30, algorithm);
    let key = tlv(0x04, key);
    tlv(0x30, &[&version[..], &algorithm, &key].concat())
}

fn tlv(tag: u8, value: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = value.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(value);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_pkcs1_rsa_plugin_key() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/conformance/istio/certs");
        let pem =
            std::fs::read(dir.join("ca-key.pem")).expect("conformance certs beside the checkout");
        let key = signing_key_from_pem(&pem).expect("PKCS#1 RSA key");
        assert_eq!(key.algorithm(), &rcgen::PKCS_RSA_SHA256);
    }

    #[test]
    fn reads_a_sec1_ec_key_from_openssl() {
        let out = std::process::Command::new("openssl")
            .args(["ecparam", "-name", "prime256v1", "-genkey", "-noout"])
            .output()
            .expect("openssl runs");
        assert!(String::from_utf8_lossy(&out.stdout).starts_with("-----BEGIN EC PRIVATE KEY-----"));
        let key = signing_key_from_pem(&out.stdout).expect("SEC1 key");
        assert_eq!(key.algorithm(), &rcgen::PKCS_ECDSA_P256_SHA256);
    }

    #[test]
    fn reads_pkcs8_and_refuses_garbage() {
        let generated = rcgen::KeyPair::generate().expect("keygen");
        let key = signing_key_from_pem(generated.serialize_pem().as_bytes()).expect("pkcs8");
        assert_eq!(key.public_key_raw(), generated.public_key_raw());
        assert!(matches!(
            signing_key_from_pem(b"not a key"),
            Err(KeyError::NoKey)
        ));
    }
}

//! JSON Web Key Sets (RFC 7517) as jwt_authn reads them: RSA, EC (P-256,
//! P-384) and OKP (Ed25519) public keys. Parsed once when the config arrives;
//! checking a signature is then one ring call per candidate key.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use serde::Deserialize;

use super::token::Algorithm;

/// The public keys of one issuer.
#[derive(Debug, Default)]
pub struct KeySet {
    keys: Vec<Key>,
}

#[derive(Debug)]
pub struct Key {
    kid: Option<String>,
    /// The one algorithm the key is for, when the set says so.
    alg: Option<String>,
    material: Material,
}

#[derive(Debug)]
enum Material {
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// An uncompressed point (`04 || x || y`).
    P256(Vec<u8>),
    P384(Vec<u8>),
    Ed25519(Vec<u8>),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JwksError {
    #[error("the key set is not JSON with a \"keys\" list: {0}")]
    Json(String),
    #[error("the key set has no key this proxy can use")]
    NoKeys,
}

/// One entry of `keys` as written; which fields matter depends on `kty`.
#[derive(Deserialize)]
struct Jwk {
    kty: String,
    kid: Option<String>,
    alg: Option<String>,
    crv: Option<String>,
    n: Option<String>,
    e: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

#[derive(Deserialize)]
struct Jwks {
    keys: Vec<serde_json::Value>,
}

impl KeySet {
    /// A key set from its JSON. Keys this proxy cannot use (another type, a
    /// malformed one) are skipped with a warning, as jwt_verify_lib skips
    /// them; a set with no usable key at all is an error.
    pub fn parse(text: &str) -> Result<Self, JwksError> {
        let jwks: Jwks = serde_json::from_str(text).map_err(|e| JwksError::Json(e.to_string()))?;
        let mut keys = Vec::new();
        for (index, value) in jwks.keys.into_iter().enumerate() {
            let key = serde_json::from_value::<Jwk>(value)
                .map_err(|e| e.to_string())
                .and_then(Key::from_jwk);
            match key {
                Ok(Some(key)) => keys.push(key),
                Ok(None) => {}
                Err(reason) => tracing::warn!("JWKS key {index} skipped: {reason}"),
            }
        }
        if keys.is_empty() {
            return Err(JwksError::NoKeys);
        }
        Ok(Self { keys })
    }

    /// The keys that may have signed a token with this `kid` and algorithm:
    /// a key without a `kid` is a candidate for every token, as in Envoy.
    pub fn candidates<'a>(
        &'a self,
        kid: Option<&'a str>,
        alg: Algorithm,
    ) -> impl Iterator<Item = &'a Key> + 'a {
        self.keys.iter().filter(move |key| {
            let kid_fits = match (kid, key.kid.as_deref()) {
                (Some(want), Some(have)) => want == have,
                _ => true,
            };
            kid_fits && key.alg.as_deref().is_none_or(|a| a == alg.name()) && key.suits(alg)
        })
    }
}

impl Key {
    fn from_jwk(jwk: Jwk) -> Result<Option<Self>, String> {
        let field = |value: Option<String>, name: &str| -> Result<Vec<u8>, String> {
            let value = value.ok_or_else(|| format!("{} key without \"{name}\"", jwk.kty))?;
            URL_SAFE_NO_PAD
                .decode(value.trim_end_matches('='))
                .map_err(|e| format!("\"{name}\" is not base64url: {e}"))
        };
        let material = match (jwk.kty.as_str(), jwk.crv.as_deref()) {
            ("RSA", _) => Material::Rsa {
                n: field(jwk.n, "n")?,
                e: field(jwk.e, "e")?,
            },
            ("EC", Some(crv @ ("P-256" | "P-384"))) => {
                let (x, y) = (field(jwk.x, "x")?, field(jwk.y, "y")?);
                let size = if crv == "P-256" { 32 } else { 48 };
                if x.len() != size || y.len() != size {
                    return Err(format!("{crv} coordinates must be {size} bytes"));
                }
                let point = [&[4u8][..], &x, &y].concat();
                if crv == "P-256" {
                    Material::P256(point)
                } else {
                    Material::P384(point)
                }
            }
            ("OKP", Some("Ed25519")) => Material::Ed25519(field(jwk.x, "x")?),
            // Other curves and key types (symmetric keys among them) are not
            // ours to use; Envoy skips them too.
            _ => return Ok(None),
        };
        Ok(Some(Self {
            kid: jwk.kid,
            alg: jwk.alg,
            material,
        }))
    }

    /// Whether this key's type is the one `alg` needs.
    fn suits(&self, alg: Algorithm) -> bool {
        use Algorithm::*;
        matches!(
            (&self.material, alg),
            (
                Material::Rsa { .. },
                Rs256 | Rs384 | Rs512 | Ps256 | Ps384 | Ps512
            ) | (Material::P256(_), Es256)
                | (Material::P384(_), Es384)
                | (Material::Ed25519(_), EdDsa)
        )
    }

    /// Whether `signature` over `message` was made with this key's private key.
    pub fn verify(&self, alg: Algorithm, message: &[u8], signature: &[u8]) -> bool {
        use Algorithm::*;
        let rsa = |params: &'static signature::RsaParameters| match &self.material {
            Material::Rsa { n, e } => RsaPublicKeyComponents { n, e }
                .verify(params, message, signature)
                .is_ok(),
            _ => false,
        };
        let point = |params: &'static dyn signature::VerificationAlgorithm, bytes: &[u8]| {
            UnparsedPublicKey::new(params, bytes)
                .verify(message, signature)
                .is_ok()
        };
        match (alg, &self.material) {
            (Rs256, _) => rsa(&signature::RSA_PKCS1_2048_8192_SHA256),
            (Rs384, _) => rsa(&signature::RSA_PKCS1_2048_8192_SHA384),
            (Rs512, _) => rsa(&signature::RSA_PKCS1_2048_8192_SHA512),
            (Ps256, _) => rsa(&signature::RSA_PSS_2048_8192_SHA256),
            (Ps384, _) => rsa(&signature::RSA_PSS_2048_8192_SHA384),
            (Ps512, _) => rsa(&signature::RSA_PSS_2048_8192_SHA512),
            (Es256, Material::P256(p)) => point(&signature::ECDSA_P256_SHA256_FIXED, p),
            (Es384, Material::P384(p)) => point(&signature::ECDSA_P384_SHA384_FIXED, p),
            (EdDsa, Material::Ed25519(k)) => point(&signature::ED25519, k),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unusable_keys_are_skipped_and_a_set_without_any_refused() {
        let set = KeySet::parse(
            r#"{"keys":[{"kty":"oct","k":"c2VjcmV0"},{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","kid":"a"}]}"#,
        )
        .expect("one usable key");
        assert_eq!(set.candidates(Some("a"), Algorithm::EdDsa).count(), 1);
        assert_eq!(set.candidates(Some("b"), Algorithm::EdDsa).count(), 0);
        assert_eq!(set.candidates(None, Algorithm::Rs256).count(), 0);

        assert_eq!(
            KeySet::parse(r#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#).expect_err("refused"),
            JwksError::NoKeys
        );
        assert_eq!(
            KeySet::parse(
                r#"{"keys":[{"kty":"RSA","e":"AQAB"},{"kty":"EC","crv":"P-256","kid":7}]}"#
            )
            .expect_err("no usable key"),
            JwksError::NoKeys
        );
        let one_good = r#"{"keys":[{"kty":"RSA","e":"AQAB"},{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;
        assert_eq!(
            KeySet::parse(one_good).expect("the good key").keys.len(),
            1,
            "a malformed key does not take the good ones with it"
        );
        assert!(matches!(KeySet::parse("not json"), Err(JwksError::Json(_))));
    }
}

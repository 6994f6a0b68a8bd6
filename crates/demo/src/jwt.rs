//! Signed JWTs for trying RequestAuthentication, as Istio's JWT samples do
//! with their `gen-jwt.py`: an issuer with a key, its public keys as a JWKS,
//! and tokens it signs.
//!
//! [`Issuer::demo`] uses a key committed in this repository, so anyone can
//! mint its tokens: it is for demos and tests, never for a real workload.
//! The other constructors make a fresh key each time.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};
use serde_json::{Value, json};

/// The demo key (RSA 2048, PKCS#8).
const DEMO_KEY: &str = include_str!("../data/jwt-demo-key.pem");
/// The issuer the demo tokens carry, as Istio's sample does.
pub const DEMO_ISSUER: &str = "testing@secure.istio.io";

#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    #[error("the key is not a PKCS#8 PEM key of this kind: {0}")]
    Key(String),
    #[error("{0} cannot be signed with this issuer's key")]
    Algorithm(String),
    #[error("signing failed")]
    Sign,
}

enum Signer {
    Rsa(RsaKeyPair),
    P256(EcdsaKeyPair),
    P384(EcdsaKeyPair),
    Ed25519(Ed25519KeyPair),
}

/// One key that signs tokens for one issuer.
pub struct Issuer {
    pub issuer: String,
    pub kid: String,
    signer: Signer,
}

impl Issuer {
    /// The committed demo key, issuer [`DEMO_ISSUER`], kid `demo`.
    pub fn demo() -> Result<Self, JwtError> {
        Self::rsa_pem(DEMO_ISSUER, "demo", DEMO_KEY)
    }

    /// An RSA key from PKCS#8 PEM.
    pub fn rsa_pem(issuer: &str, kid: &str, pem_text: &str) -> Result<Self, JwtError> {
        let der = pem::parse(pem_text).map_err(|e| JwtError::Key(e.to_string()))?;
        let pair =
            RsaKeyPair::from_pkcs8(der.contents()).map_err(|e| JwtError::Key(e.to_string()))?;
        Ok(Self::new(issuer, kid, Signer::Rsa(pair)))
    }

    /// A fresh P-256 key (ES256).
    pub fn p256(issuer: &str, kid: &str) -> Result<Self, JwtError> {
        let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        Ok(Self::new(issuer, kid, Signer::P256(ecdsa(alg)?)))
    }

    /// A fresh P-384 key (ES384).
    pub fn p384(issuer: &str, kid: &str) -> Result<Self, JwtError> {
        let alg = &signature::ECDSA_P384_SHA384_FIXED_SIGNING;
        Ok(Self::new(issuer, kid, Signer::P384(ecdsa(alg)?)))
    }

    /// A fresh Ed25519 key (EdDSA).
    pub fn ed25519(issuer: &str, kid: &str) -> Result<Self, JwtError> {
        let rng = SystemRandom::new();
        let doc = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| JwtError::Sign)?;
        let pair =
            Ed25519KeyPair::from_pkcs8(doc.as_ref()).map_err(|e| JwtError::Key(e.to_string()))?;
        Ok(Self::new(issuer, kid, Signer::Ed25519(pair)))
    }

    fn new(issuer: &str, kid: &str, signer: Signer) -> Self {
        Self {
            issuer: issuer.to_owned(),
            kid: kid.to_owned(),
            signer,
        }
    }

    /// The algorithm tokens get unless asked otherwise.
    pub fn default_algorithm(&self) -> &'static str {
        match self.signer {
            Signer::Rsa(_) => "RS256",
            Signer::P256(_) => "ES256",
            Signer::P384(_) => "ES384",
            Signer::Ed25519(_) => "EdDSA",
        }
    }

    /// The public key as one JWK.
    pub fn jwk(&self) -> Value {
        let b64 = |bytes: &[u8]| URL_SAFE_NO_PAD.encode(bytes);
        let mut jwk = match &self.signer {
            Signer::Rsa(pair) => {
                let public = ring::rsa::PublicKeyComponents::<Vec<u8>>::from(pair.public());
                json!({ "kty": "RSA", "n": b64(&public.n), "e": b64(&public.e) })
            }
            Signer::P256(pair) | Signer::P384(pair) => {
                let point = pair.public_key().as_ref();
                let half = (point.len() - 1) / 2;
                let crv = if half == 32 { "P-256" } else { "P-384" };
                json!({
                    "kty": "EC",
                    "crv": crv,
                    "x": b64(&point[1..=half]),
                    "y": b64(&point[1 + half..]),
                })
            }
            Signer::Ed25519(pair) => json!({
                "kty": "OKP",
                "crv": "Ed25519",
                "x": b64(pair.public_key().as_ref()),
            }),
        };
        jwk["kid"] = json!(self.kid);
        jwk
    }

    /// `{"keys": [<this key>]}`.
    pub fn jwks(&self) -> String {
        json!({ "keys": [self.jwk()] }).to_string()
    }

    /// A token with `claims` added to `iss` (this issuer), `sub` (the
    /// issuer), `iat` and `exp` (an hour from now); a claim given wins.
    pub fn token(&self, claims: &Value) -> Result<String, JwtError> {
        self.sign(self.default_algorithm(), &self.claims(claims))
    }

    /// The standard claims merged with `extra`.
    pub fn claims(&self, extra: &Value) -> Value {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut claims = json!({
            "iss": self.issuer,
            "sub": self.issuer,
            "iat": now,
            "exp": now + 3600,
        });
        if let (Some(base), Some(extra)) = (claims.as_object_mut(), extra.as_object()) {
            for (key, value) in extra {
                base.insert(key.clone(), value.clone());
            }
        }
        claims
    }

    /// `claims` exactly as given, signed with `alg`.
    pub fn sign(&self, alg: &str, claims: &Value) -> Result<String, JwtError> {
        let header = json!({ "alg": alg, "typ": "JWT", "kid": self.kid });
        let signed = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = self.signature(alg, signed.as_bytes())?;
        Ok(format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature)))
    }

    fn signature(&self, alg: &str, message: &[u8]) -> Result<Vec<u8>, JwtError> {
        let rng = SystemRandom::new();
        match (&self.signer, alg) {
            (Signer::Rsa(pair), _) => {
                let padding: &'static dyn signature::RsaEncoding = match alg {
                    "RS256" => &signature::RSA_PKCS1_SHA256,
                    "RS384" => &signature::RSA_PKCS1_SHA384,
                    "RS512" => &signature::RSA_PKCS1_SHA512,
                    "PS256" => &signature::RSA_PSS_SHA256,
                    "PS384" => &signature::RSA_PSS_SHA384,
                    "PS512" => &signature::RSA_PSS_SHA512,
                    other => return Err(JwtError::Algorithm(other.to_owned())),
                };
                let mut out = vec![0; pair.public().modulus_len()];
                pair.sign(padding, &rng, message, &mut out)
                    .map_err(|_| JwtError::Sign)?;
                Ok(out)
            }
            (Signer::P256(pair), "ES256") | (Signer::P384(pair), "ES384") => pair
                .sign(&rng, message)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| JwtError::Sign),
            (Signer::Ed25519(pair), "EdDSA") => Ok(pair.sign(message).as_ref().to_vec()),
            (_, other) => Err(JwtError::Algorithm(other.to_owned())),
        }
    }
}

fn ecdsa(alg: &'static signature::EcdsaSigningAlgorithm) -> Result<EcdsaKeyPair, JwtError> {
    let rng = SystemRandom::new();
    let doc = EcdsaKeyPair::generate_pkcs8(alg, &rng).map_err(|_| JwtError::Sign)?;
    EcdsaKeyPair::from_pkcs8(alg, doc.as_ref(), &rng).map_err(|e| JwtError::Key(e.to_string()))
}

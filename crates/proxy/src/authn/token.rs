//! A JSON Web Token in compact form (RFC 7519): header, payload and signature
//! decoded, and the claims jwt_authn checks read out.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

use super::Failure;

/// The signature algorithms jwt_authn accepts. `none` and the HMAC ones are
/// not among them: a token must be signed by a key the issuer published.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    Rs256,
    Rs384,
    Rs512,
    Ps256,
    Ps384,
    Ps512,
    Es256,
    Es384,
    EdDsa,
}

impl Algorithm {
    fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "RS256" => Self::Rs256,
            "RS384" => Self::Rs384,
            "RS512" => Self::Rs512,
            "PS256" => Self::Ps256,
            "PS384" => Self::Ps384,
            "PS512" => Self::Ps512,
            "ES256" => Self::Es256,
            "ES384" => Self::Es384,
            "EdDSA" => Self::EdDsa,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Rs256 => "RS256",
            Self::Rs384 => "RS384",
            Self::Rs512 => "RS512",
            Self::Ps256 => "PS256",
            Self::Ps384 => "PS384",
            Self::Ps512 => "PS512",
            Self::Es256 => "ES256",
            Self::Es384 => "ES384",
            Self::EdDsa => "EdDSA",
        }
    }
}

#[derive(Debug)]
pub struct Token<'a> {
    pub alg: Algorithm,
    pub kid: Option<String>,
    /// `header.payload`: what the signature covers.
    pub signed: &'a str,
    /// The payload as sent (base64url), for `forward_payload_header`.
    pub payload_text: &'a str,
    pub payload: Map<String, Value>,
    pub signature: Vec<u8>,
}

impl<'a> Token<'a> {
    /// Decodes `raw`, checking its form and the types of the registered
    /// claims as jwt_verify_lib does, each failure with its wording.
    pub fn parse(raw: &'a str) -> Result<Self, Failure> {
        let mut parts = raw.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Failure::BadFormat);
        };
        let header = decode_object(header, Failure::HeaderBase64, Failure::HeaderJson)?;
        let alg = match header.get("alg") {
            Some(Value::String(name)) => {
                Algorithm::from_name(name).ok_or(Failure::AlgNotImplemented)?
            }
            _ => return Err(Failure::AlgMissing),
        };
        let kid = match header.get("kid") {
            None => None,
            Some(Value::String(kid)) => Some(kid.clone()),
            Some(_) => return Err(Failure::HeaderKidNotString),
        };
        let payload_text = payload;
        let payload = decode_object(payload, Failure::PayloadBase64, Failure::PayloadJson)?;
        check_claim_types(&payload)?;
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| Failure::SignatureBase64)?;
        let signed = &raw[..raw.len() - signature_len(raw)];
        Ok(Self {
            alg,
            kid,
            signed,
            payload_text,
            payload,
            signature,
        })
    }

    pub fn issuer(&self) -> &str {
        self.payload
            .get("iss")
            .and_then(Value::as_str)
            .unwrap_or("")
    }

    /// `aud`, a string or a list of strings.
    pub fn audiences(&self) -> impl Iterator<Item = &str> {
        let (one, many) = match self.payload.get("aud") {
            Some(Value::String(one)) => (Some(one.as_str()), None),
            Some(Value::Array(many)) => (None, Some(many.iter().filter_map(Value::as_str))),
            _ => (None, None),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }

    /// A numeric date claim (`exp`, `nbf`), in seconds; a fraction is
    /// dropped, as jwt_verify_lib does.
    pub fn date(&self, claim: &str) -> Option<u64> {
        self.payload.get(claim).and_then(date)
    }
}

fn date(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| {
        v.as_f64()
            .filter(|f| f.is_finite() && *f >= 0.0 && *f < u64::MAX as f64)
            .map(|f| f as u64)
    })
}

/// The length of the signature part and its dot.
fn signature_len(raw: &str) -> usize {
    raw.rfind('.').map_or(0, |dot| raw.len() - dot)
}

fn decode_object(
    part: &str,
    bad_base64: Failure,
    bad_json: Failure,
) -> Result<Map<String, Value>, Failure> {
    let bytes = URL_SAFE_NO_PAD.decode(part).map_err(|_| bad_base64)?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(bad_json),
    }
}

/// `iss` and `sub` must be strings, `aud` a string or strings, `exp`, `nbf`
/// and `iat` whole non-negative numbers.
fn check_claim_types(payload: &Map<String, Value>) -> Result<(), Failure> {
    for (claim, failure) in [
        ("iss", Failure::PayloadIssNotString),
        ("sub", Failure::PayloadSubNotString),
    ] {
        if payload.get(claim).is_some_and(|v| !v.is_string()) {
            return Err(failure);
        }
    }
    match payload.get("aud") {
        None | Some(Value::String(_)) => {}
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => {}
        Some(_) => return Err(Failure::PayloadAudNotString),
    }
    for (claim, failure) in [
        ("exp", Failure::PayloadExpNotInteger),
        ("nbf", Failure::PayloadNbfNotInteger),
        ("iat", Failure::PayloadIatNotInteger),
    ] {
        if payload.get(claim).is_some_and(|v| date(v).is_none()) {
            return Err(failure);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(text: &str) -> String {
        URL_SAFE_NO_PAD.encode(text)
    }

    #[test]
    fn malformed_tokens_fail_with_envoys_reason() {
        let cases = [
            ("abc", Failure::BadFormat),
            ("a.b.c.d", Failure::BadFormat),
            ("!!.e30.c2ln", Failure::HeaderBase64),
            (&format!("{}.e30.c2ln", b64("[1]")), Failure::HeaderJson),
            (
                &format!("{}.e30.c2ln", b64(r#"{"alg":"none"}"#)),
                Failure::AlgNotImplemented,
            ),
            (
                &format!("{}.e30.c2ln", b64(r#"{"alg":"HS256"}"#)),
                Failure::AlgNotImplemented,
            ),
            (&format!("{}.e30.c2ln", b64("{}")), Failure::AlgMissing),
            (
                &format!("{}.{}.c2ln", b64(r#"{"alg":"RS256"}"#), b64(r#"{"iss":1}"#)),
                Failure::PayloadIssNotString,
            ),
            (
                &format!(
                    "{}.{}.c2ln",
                    b64(r#"{"alg":"RS256"}"#),
                    b64(r#"{"exp":"soon"}"#)
                ),
                Failure::PayloadExpNotInteger,
            ),
            (
                &format!("{}.e30.!!", b64(r#"{"alg":"RS256"}"#)),
                Failure::SignatureBase64,
            ),
        ];
        for (raw, want) in cases {
            assert_eq!(Token::parse(raw).expect_err("refused"), want, "{raw}");
        }
    }

    #[test]
    fn a_well_formed_token_exposes_its_claims() {
        let header = b64(r#"{"alg":"ES256","kid":"k1"}"#);
        let payload = b64(r#"{"iss":"i","aud":["a","b"],"exp":10}"#);
        let raw = format!("{header}.{payload}.c2ln");
        let token = Token::parse(&raw).expect("well formed");
        assert_eq!(token.alg, Algorithm::Es256);
        assert_eq!(token.kid.as_deref(), Some("k1"));
        assert_eq!(token.signed, format!("{header}.{payload}"));
        assert_eq!(token.issuer(), "i");
        assert_eq!(token.audiences().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(token.date("exp"), Some(10));
        assert_eq!(token.signature, b"sig");
    }
}

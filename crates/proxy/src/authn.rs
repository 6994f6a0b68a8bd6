//! Request authentication: the JWTs a request carries, checked against the
//! providers and requirements of Envoy's jwt_authn filter
//! ([`crate::config::jwt_authn`]), as Istio's RequestAuthentication asks.
//!
//! With Istio's requirements a request without a token passes (authorization
//! decides what it may do), a request with a token passes only if the token
//! is valid, and a valid token's payload is left for the RBAC filters. Every
//! failure carries jwt_verify_lib's wording, which Envoy answers with.

mod cache;
pub mod jwks;
pub mod token;

use http::{HeaderMap, HeaderName, Method, StatusCode, Uri};
use serde_json::{Map, Value};

use self::token::Token;
use crate::config::jwt_authn::{JwtAuthn, Location, Provider, Requirement};

/// The filter whose dynamic metadata holds verified payloads.
pub const METADATA_NAMESPACE: &str = "envoy.filters.http.jwt_authn";

/// Why a request's token was refused, in jwt_verify_lib's words.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    #[error("Jwt is missing")]
    Missing,
    #[error("Jwt is not in the form of Header.Payload.Signature")]
    BadFormat,
    #[error("Jwt header is an invalid Base64url encoded")]
    HeaderBase64,
    #[error("Jwt header is an invalid JSON")]
    HeaderJson,
    #[error("Jwt header [alg] field is required and must be a string")]
    AlgMissing,
    #[error("Jwt header [alg] is not supported")]
    AlgNotImplemented,
    #[error("Jwt header [kid] field is not a string")]
    HeaderKidNotString,
    #[error("Jwt payload is an invalid Base64url encoded")]
    PayloadBase64,
    #[error("Jwt payload is an invalid JSON")]
    PayloadJson,
    #[error("Jwt payload [iss] field is not a string")]
    PayloadIssNotString,
    #[error("Jwt payload [sub] field is not a string")]
    PayloadSubNotString,
    #[error("Jwt payload [aud] field is not a string or string list")]
    PayloadAudNotString,
    #[error("Jwt payload [exp] field is not an integer")]
    PayloadExpNotInteger,
    #[error("Jwt payload [nbf] field is not an integer")]
    PayloadNbfNotInteger,
    #[error("Jwt payload [iat] field is not an integer")]
    PayloadIatNotInteger,
    #[error("Jwt signature is an invalid Base64url encoded")]
    SignatureBase64,
    #[error("Jwt issuer is not configured")]
    UnknownIssuer,
    #[error("Audiences in Jwt are not allowed")]
    AudienceNotAllowed,
    #[error("Jwt is expired")]
    Expired,
    #[error("Jwt not yet valid")]
    NotYetValid,
    #[error("Jwt doesn't have required exp claim")]
    ExpirationRequired,
    #[error("Jwks doesn't have key to match kid or alg from Jwt")]
    KidAlgMismatch,
    #[error("Jwks doesn't have any valid public key")]
    NoValidKeys,
    #[error("Jwt verification fails")]
    VerificationFails,
}

impl Failure {
    /// 403 when the token is valid but not for this audience, else 401.
    pub fn status(self) -> StatusCode {
        match self {
            Self::AudienceNotAllowed => StatusCode::FORBIDDEN,
            _ => StatusCode::UNAUTHORIZED,
        }
    }

    /// Envoy's `%RESPONSE_CODE_DETAILS%`.
    pub fn details(self) -> String {
        format!(
            "jwt_authn_access_denied{{{}}}",
            self.to_string().replace(' ', "_")
        )
    }

    /// Failures that say least about the token: reported only when nothing
    /// more precise is known (Envoy's any-of requirements do the same).
    fn is_vague(self) -> bool {
        matches!(self, Self::Missing | Self::UnknownIssuer)
    }
}

/// A token that verified, and what the filter does with it.
#[derive(Debug)]
pub struct Verified {
    pub provider: usize,
    pub location: Location,
    pub payload: Map<String, Value>,
    pub payload_text: String,
}

/// What a request offers for checking.
pub struct Request<'a> {
    pub method: &'a Method,
    pub uri: &'a Uri,
    pub headers: &'a HeaderMap,
    /// Seconds since the Unix epoch.
    pub now: u64,
}

impl JwtAuthn {
    /// The tokens of `req` that verified, or why the request is refused.
    pub fn authenticate(&self, req: &Request<'_>) -> Result<Vec<Verified>, Failure> {
        if self.bypass_cors_preflight && is_preflight(req) {
            return Ok(Vec::new());
        }
        let path = req.uri.path();
        let Some(rule) = self.rules.iter().find(|r| r.path.matches(path)) else {
            return Ok(Vec::new());
        };
        let mut check = Check {
            config: self,
            req,
            verified: Vec::new(),
        };
        check.requirement(&rule.requirement)?;
        Ok(check.verified)
    }
}

fn is_preflight(req: &Request<'_>) -> bool {
    req.method == Method::OPTIONS
        && req.headers.contains_key(http::header::ORIGIN)
        && req
            .headers
            .contains_key(http::header::ACCESS_CONTROL_REQUEST_METHOD)
}

struct Check<'a> {
    config: &'a JwtAuthn,
    req: &'a Request<'a>,
    verified: Vec<Verified>,
}

impl Check<'_> {
    fn requirement(&mut self, requirement: &Requirement) -> Result<(), Failure> {
        match requirement {
            Requirement::Provider { index, audiences } => {
                self.provider(*index, audiences.as_deref())
            }
            Requirement::All(all) => all.iter().try_for_each(|r| self.requirement(r)),
            Requirement::Any(any) => {
                let mut failures = Vec::with_capacity(any.len());
                for r in any {
                    match self.requirement(r) {
                        Ok(()) => return Ok(()),
                        Err(failure) => failures.push(failure),
                    }
                }
                Err(most_precise(&failures))
            }
            Requirement::AllowMissing => match self.any_provider() {
                Err(Failure::Missing) => Ok(()),
                other => other,
            },
            Requirement::AllowMissingOrFailed => {
                let _ = self.any_provider();
                Ok(())
            }
        }
    }

    /// Every token at this provider's locations must verify with it.
    fn provider(&mut self, index: usize, audiences: Option<&[String]>) -> Result<(), Failure> {
        let provider = &self.config.providers[index];
        let tokens = extract(self.req, effective_locations(provider));
        if tokens.is_empty() {
            return Err(Failure::Missing);
        }
        for (location, raw) in tokens {
            let token = Token::parse(raw)?;
            if !provider.issuer.is_empty() && token.issuer() != provider.issuer {
                return Err(Failure::UnknownIssuer);
            }
            self.verify(index, audiences, location, token)?;
        }
        Ok(())
    }

    /// Every token at any provider's locations must verify with the provider
    /// of its issuer that reads that location.
    fn any_provider(&mut self) -> Result<(), Failure> {
        let providers = &self.config.providers;
        let mut tokens = Vec::new();
        for provider in providers {
            for found in extract(self.req, effective_locations(provider)) {
                if !tokens.contains(&found) {
                    tokens.push(found);
                }
            }
        }
        if tokens.is_empty() {
            return Err(Failure::Missing);
        }
        for (location, raw) in tokens {
            let token = Token::parse(raw)?;
            let index = providers
                .iter()
                .position(|p| {
                    (p.issuer.is_empty() || p.issuer == token.issuer())
                        && effective_locations(p).contains(&location)
                })
                .ok_or(Failure::UnknownIssuer)?;
            self.verify(index, None, location, token)?;
        }
        Ok(())
    }

    /// Envoy's order: time, audiences, then the signature.
    fn verify(
        &mut self,
        index: usize,
        audiences: Option<&[String]>,
        location: Location,
        token: Token<'_>,
    ) -> Result<(), Failure> {
        let provider = &self.config.providers[index];
        check_time(provider, &token, self.req.now)?;
        let allowed = audiences.unwrap_or(&provider.audiences);
        if !allowed.is_empty() && !token.audiences().any(|a| allowed.iter().any(|w| w == a)) {
            return Err(Failure::AudienceNotAllowed);
        }
        if !cache::holds(self.config.id, index, token.signed, &token.signature) {
            check_signature(provider, &token)?;
            cache::remember(self.config.id, index, token.signed, &token.signature);
        }
        let already = self
            .verified
            .iter()
            .any(|v| v.provider == index && v.location == location);
        if !already {
            self.verified.push(Verified {
                provider: index,
                location,
                payload: token.payload,
                payload_text: token.payload_text.to_owned(),
            });
        }
        Ok(())
    }
}

/// Whether one of the provider's keys that fit the token signed it.
fn check_signature(provider: &Provider, token: &Token<'_>) -> Result<(), Failure> {
    let keys = provider.keys.as_ref().ok_or(Failure::NoValidKeys)?;
    let mut tried = false;
    for key in keys.candidates(token.kid.as_deref(), token.alg) {
        tried = true;
        if key.verify(token.alg, token.signed.as_bytes(), &token.signature) {
            return Ok(());
        }
    }
    Err(if tried {
        Failure::VerificationFails
    } else {
        Failure::KidAlgMismatch
    })
}

fn check_time(provider: &Provider, token: &Token<'_>, now: u64) -> Result<(), Failure> {
    let skew = provider.clock_skew_secs;
    match token.date("exp") {
        Some(exp) if now > exp.saturating_add(skew) => return Err(Failure::Expired),
        None if provider.require_expiration => return Err(Failure::ExpirationRequired),
        _ => {}
    }
    match token.date("nbf") {
        Some(nbf) if now.saturating_add(skew) < nbf => Err(Failure::NotYetValid),
        _ => Ok(()),
    }
}

fn most_precise(failures: &[Failure]) -> Failure {
    failures
        .iter()
        .find(|f| !f.is_vague())
        .or_else(|| failures.iter().find(|f| **f == Failure::UnknownIssuer))
        .copied()
        .unwrap_or(Failure::Missing)
}

/// Envoy's defaults when a provider names no location.
fn default_locations() -> &'static [Location] {
    static DEFAULT: std::sync::OnceLock<[Location; 2]> = std::sync::OnceLock::new();
    DEFAULT.get_or_init(|| {
        [
            Location::Header {
                name: http::header::AUTHORIZATION,
                prefix: "Bearer ".to_owned(),
            },
            Location::Param("access_token".to_owned()),
        ]
    })
}

fn effective_locations(provider: &Provider) -> &[Location] {
    if provider.locations.is_empty() {
        default_locations()
    } else {
        &provider.locations
    }
}

/// The tokens at `locations`, each with where it was found.
fn extract<'r>(req: &Request<'r>, locations: &[Location]) -> Vec<(Location, &'r str)> {
    let mut found = Vec::new();
    for location in locations {
        let token = match location {
            Location::Header { name, prefix } => header_token(req.headers, name, prefix),
            Location::Param(param) => query_param(req.uri, param),
            Location::Cookie(cookie) => cookie_value(req.headers, cookie),
        };
        if let Some(token) = token.filter(|t| !t.is_empty()) {
            found.push((location.clone(), token));
        }
    }
    found
}

fn header_token<'r>(headers: &'r HeaderMap, name: &HeaderName, prefix: &str) -> Option<&'r str> {
    let value = headers.get(name)?.to_str().ok()?.trim();
    if prefix.is_empty() {
        return Some(value);
    }
    // The scheme of `Authorization: Bearer` is case-insensitive (RFC 7235).
    let head = value.get(..prefix.len())?;
    let matched = if name == http::header::AUTHORIZATION {
        head.eq_ignore_ascii_case(prefix)
    } else {
        head == prefix
    };
    matched.then(|| value[prefix.len()..].trim_start())
}

fn query_param<'r>(uri: &'r Uri, name: &str) -> Option<&'r str> {
    uri.query()?
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

fn cookie_value<'r>(headers: &'r HeaderMap, name: &str) -> Option<&'r str> {
    crate::http::headers::cookie(headers, name).map(|v| v.trim_matches('"'))
}

/// A verified payload as the RBAC filters read it: space-delimited claims
/// (`scope: "a b"`) split into lists.
pub fn normalized(provider: &Provider, payload: &Map<String, Value>) -> Value {
    let mut payload = payload.clone();
    for claim in &provider.space_delimited_claims {
        if let Some(Value::String(text)) = payload.get(claim) {
            let items = text.split(' ').filter(|s| !s.is_empty());
            let list = items.map(|s| Value::String(s.to_owned())).collect();
            payload.insert(claim.clone(), Value::Array(list));
        }
    }
    Value::Object(payload)
}

/// A claim's value for a header: strings as they are, numbers and booleans
/// printed; nested claims by a dotted path.
pub fn claim_text(payload: &Map<String, Value>, claim: &str) -> Option<String> {
    let mut parts = claim.split('.');
    let mut value = payload.get(parts.next()?)?;
    for part in parts {
        value = value.get(part)?;
    }
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests;

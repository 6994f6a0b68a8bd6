//! Envoy's JWT filter (`envoy.filters.http.jwt_authn`), as Istio generates it
//! from RequestAuthentications: providers (an issuer, its keys inline, where
//! its tokens are) and requirement rules that say which providers a request
//! must satisfy. Converted once here; [`crate::authn`] evaluates them.

use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3 as envoy;
use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::jwt_provider::JwksSourceSpecifier;
use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::jwt_requirement::RequiresType;
use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::requirement_rule::RequirementType;
use envoy_types::pb::google::protobuf::Any;
use http::HeaderName;
use prost::Message;

use super::route::PathMatch;
use crate::authn::jwks::KeySet;

pub const TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication";
/// Envoy's default allowance for clocks that disagree, for `exp` and `nbf`.
const DEFAULT_CLOCK_SKEW_SECS: u64 = 60;

#[derive(Debug)]
pub struct JwtAuthn {
    /// Unique to this conversion: what verified-token caches are keyed by,
    /// so keys pushed later never inherit an earlier config's verdicts.
    pub id: u64,
    /// By name, so requirements refer to them by index.
    pub providers: Vec<Provider>,
    /// The first whose path matches decides what a request needs; a request
    /// none matches needs nothing.
    pub rules: Vec<Rule>,
    /// CORS preflights (OPTIONS with `Origin` and
    /// `Access-Control-Request-Method`) pass without a token.
    pub bypass_cors_preflight: bool,
}

#[derive(Debug)]
pub struct Provider {
    pub name: String,
    /// The `iss` a token must carry; empty: any.
    pub issuer: String,
    /// One of these must be among the token's `aud`; empty: any.
    pub audiences: Vec<String>,
    /// `None` when the configured key set was unusable: then no token of
    /// this provider verifies (fail closed), as in Envoy.
    pub keys: Option<KeySet>,
    /// Where tokens are; empty: `Authorization: Bearer` and `access_token`.
    pub locations: Vec<Location>,
    /// Keep the token's header after verification (else it is removed).
    pub forward: bool,
    pub forward_payload_header: Option<HeaderName>,
    /// The key of the verified payload in the filter's dynamic metadata.
    pub payload_in_metadata: Option<String>,
    /// Claims whose string values become lists (`scope`, `permission`).
    pub space_delimited_claims: Vec<String>,
    pub claim_to_headers: Vec<(HeaderName, String)>,
    pub clock_skew_secs: u64,
    pub require_expiration: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    Header { name: HeaderName, prefix: String },
    Param(String),
    Cookie(String),
}

#[derive(Debug)]
pub struct Rule {
    pub path: PathMatch,
    pub requirement: Requirement,
}

#[derive(Debug)]
pub enum Requirement {
    /// A valid token of this provider (by index), optionally with other
    /// audiences than the provider's.
    Provider {
        index: usize,
        audiences: Option<Vec<String>>,
    },
    Any(Vec<Requirement>),
    All(Vec<Requirement>),
    /// No token at all is fine; a token present must be valid.
    AllowMissing,
    /// A missing or invalid token is fine (the payload of a valid one is
    /// still passed on).
    AllowMissingOrFailed,
}

pub fn convert(any: &Any) -> Result<JwtAuthn, String> {
    let config = envoy::JwtAuthentication::decode(any.value.as_slice())
        .map_err(|e| format!("jwt_authn: {e}"))?;
    if config.filter_state_rules.is_some() || !config.requirement_map.is_empty() {
        return Err("jwt_authn filter_state_rules and requirement_map are not supported".into());
    }
    let mut names: Vec<&String> = config.providers.keys().collect();
    names.sort();
    let providers = names
        .iter()
        .map(|name| provider(name, &config.providers[*name]))
        .collect::<Result<Vec<_>, _>>()?;
    let index_of = |name: &str| {
        names
            .iter()
            .position(|n| n.as_str() == name)
            .ok_or_else(|| {
                format!("jwt_authn requirement names provider {name:?}, which is not defined")
            })
    };
    let rules = config
        .rules
        .iter()
        .map(|rule| {
            if let Some(m) = &rule.r#match
                && (m.case_sensitive.is_some_and(|c| !c.value)
                    || !m.headers.is_empty()
                    || !m.query_parameters.is_empty()
                    || m.runtime_fraction.is_some()
                    || m.grpc.is_some())
            {
                return Err("jwt_authn rules may only match a path, case-sensitively".to_owned());
            }
            let path = match rule
                .r#match
                .as_ref()
                .and_then(|m| m.path_specifier.as_ref())
            {
                Some(PathSpecifier::Prefix(p)) => PathMatch::Prefix(p.clone()),
                Some(PathSpecifier::Path(p)) => PathMatch::Exact(p.clone()),
                _ => return Err("jwt_authn rules must match a path prefix or path".to_owned()),
            };
            let requirement = match &rule.requirement_type {
                Some(RequirementType::Requires(r)) => requirement(r, &index_of)?,
                _ => return Err("jwt_authn rules must give their requirement inline".to_owned()),
            };
            Ok(Rule { path, requirement })
        })
        .collect::<Result<Vec<_>, String>>()?;
    static CONVERSIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    Ok(JwtAuthn {
        id: CONVERSIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        providers,
        rules,
        bypass_cors_preflight: config.bypass_cors_preflight,
    })
}

fn provider(name: &str, p: &envoy::JwtProvider) -> Result<Provider, String> {
    let err = |what: String| format!("jwt_authn provider {name:?}: {what}");
    let keys = match &p.jwks_source_specifier {
        Some(JwksSourceSpecifier::LocalJwks(source)) => {
            use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
            match &source.specifier {
                Some(Specifier::InlineString(text)) => KeySet::parse(text)
                    .inspect_err(|e| {
                        tracing::warn!(provider = name, issuer = %p.issuer, "unusable inline JWKS, tokens of this issuer will be refused: {e}");
                    })
                    .ok(),
                _ => return Err(err("local_jwks must be an inline string".to_owned())),
            }
        }
        Some(JwksSourceSpecifier::RemoteJwks(_)) => {
            return Err(err(
                "remote_jwks is not supported: the control plane fetches keys and sends them inline"
                    .to_owned(),
            ));
        }
        None => return Err(err("no JWKS".to_owned())),
    };
    if p.subjects.is_some() || p.max_lifetime.is_some() {
        return Err(err("subjects and max_lifetime are not supported".to_owned()));
    }
    let header = |h: &str| HeaderName::try_from(h).map_err(|e| err(format!("header {h:?}: {e}")));
    let mut locations = Vec::new();
    for h in &p.from_headers {
        locations.push(Location::Header {
            name: header(&h.name)?,
            prefix: h.value_prefix.clone(),
        });
    }
    locations.extend(p.from_params.iter().cloned().map(Location::Param));
    locations.extend(p.from_cookies.iter().cloned().map(Location::Cookie));
    let claim_to_headers = p
        .claim_to_headers
        .iter()
        .map(|c| Ok((header(&c.header_name)?, c.claim_name.clone())))
        .collect::<Result<Vec<_>, String>>()?;
    let forward_payload_header = match p.forward_payload_header.as_str() {
        "" => None,
        h => Some(header(h)?),
    };
    Ok(Provider {
        name: name.to_owned(),
        issuer: p.issuer.clone(),
        audiences: p.audiences.clone(),
        keys,
        locations,
        forward: p.forward,
        forward_payload_header,
        payload_in_metadata: (!p.payload_in_metadata.is_empty())
            .then(|| p.payload_in_metadata.clone()),
        space_delimited_claims: p
            .normalize_payload_in_metadata
            .as_ref()
            .map(|n| n.space_delimited_claims.clone())
            .unwrap_or_default(),
        claim_to_headers,
        clock_skew_secs: match p.clock_skew_seconds {
            0 => DEFAULT_CLOCK_SKEW_SECS,
            s => u64::from(s),
        },
        require_expiration: p.require_expiration,
    })
}

fn requirement(
    r: &envoy::JwtRequirement,
    index_of: &impl Fn(&str) -> Result<usize, String>,
) -> Result<Requirement, String> {
    let list = |items: &[envoy::JwtRequirement]| {
        items
            .iter()
            .map(|r| requirement(r, index_of))
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(match &r.requires_type {
        Some(RequiresType::ProviderName(name)) => Requirement::Provider {
            index: index_of(name)?,
            audiences: None,
        },
        Some(RequiresType::ProviderAndAudiences(p)) => Requirement::Provider {
            index: index_of(&p.provider_name)?,
            audiences: Some(p.audiences.clone()),
        },
        Some(RequiresType::RequiresAny(any)) => Requirement::Any(list(&any.requirements)?),
        Some(RequiresType::RequiresAll(all)) => Requirement::All(list(&all.requirements)?),
        Some(RequiresType::AllowMissing(_)) => Requirement::AllowMissing,
        Some(RequiresType::AllowMissingOrFailed(_)) => Requirement::AllowMissingOrFailed,
        Some(_) => return Err("jwt_authn extract_only_without_validation is not supported".into()),
        // An empty requirement asks for nothing.
        None => Requirement::AllowMissingOrFailed,
    })
}

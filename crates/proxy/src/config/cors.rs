//! CORS (Envoy's `envoy.filters.http.cors`, with a route's `CorsPolicy` as
//! its per-route config, which is how istiod writes a VirtualService's
//! `corsPolicy`): preflights answered by the proxy, and the allow-origin
//! headers added to answers for origins the policy allows.

use envoy_types::pb::envoy::extensions::filters::http::cors::v3::CorsPolicy as EnvoyPolicy;
use envoy_types::pb::google::protobuf::Any;
use http::HeaderValue;
use prost::Message;

use super::fault::Share;
use super::string_match::Matcher;

pub const FILTER: &str = "envoy.filters.http.cors";
pub const FILTER_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors";
const POLICY_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy";

#[derive(Debug)]
pub struct CorsPolicy {
    pub origins: Vec<Matcher>,
    pub allow_methods: Option<HeaderValue>,
    pub allow_headers: Option<HeaderValue>,
    pub expose_headers: Option<HeaderValue>,
    pub max_age: Option<HeaderValue>,
    pub allow_credentials: bool,
    /// A preflight from an origin not allowed goes on to the upstream
    /// (Envoy's default) instead of being answered without allow-origin.
    pub forward_not_matching_preflights: bool,
    /// The share of requests the policy applies to (`filter_enabled`).
    pub enabled: Share,
}

impl CorsPolicy {
    /// Envoy's test: any matcher takes the origin, or takes `*`.
    pub fn allows(&self, origin: &str) -> bool {
        self.origins
            .iter()
            .any(|m| m.matches(origin) || m.matches("*"))
    }
}

pub fn convert(any: &Any) -> Result<CorsPolicy, String> {
    if any.type_url != POLICY_TYPE {
        return Err(format!("CORS per-route config of type {}", any.type_url));
    }
    let p = EnvoyPolicy::decode(any.value.as_slice())
        .map_err(|e| format!("cannot decode the CORS policy: {e}"))?;
    if p.allow_private_network_access.is_some_and(|b| b.value) {
        return Err("CORS private network access is not supported yet".to_owned());
    }
    let value = |name: &str, text: &str| -> Result<Option<HeaderValue>, String> {
        if text.is_empty() {
            return Ok(None);
        }
        HeaderValue::from_str(text)
            .map(Some)
            .map_err(|_| format!("CORS {name} {text:?} is not a header value"))
    };
    Ok(CorsPolicy {
        origins: p
            .allow_origin_string_match
            .iter()
            .map(Matcher::from_envoy)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("CORS origin: {e}"))?,
        allow_methods: value("allow_methods", &p.allow_methods)?,
        allow_headers: value("allow_headers", &p.allow_headers)?,
        expose_headers: value("expose_headers", &p.expose_headers)?,
        max_age: value("max_age", &p.max_age)?,
        allow_credentials: p.allow_credentials.is_some_and(|b| b.value),
        forward_not_matching_preflights: p.forward_not_matching_preflights.is_none_or(|b| b.value),
        enabled: match p.filter_enabled.and_then(|f| f.default_value) {
            Some(fraction) => super::fault::share(Some(fraction))?,
            None => Share(1_000_000),
        },
    })
}

//! The CORS filter at work on one request: a preflight (`OPTIONS` with an
//! `Origin` and an `Access-Control-Request-Method`) is answered here with
//! 200 and what the policy allows, unless its origin is not allowed and the
//! policy forwards such preflights; any other answer to an allowed origin
//! gets `access-control-allow-origin` and the policy's exposed headers.

use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_HEADERS, ACCESS_CONTROL_REQUEST_METHOD, HeaderMap, HeaderValue,
};
use http::{Method, Request, StatusCode};

use super::{Outcome, local_response};
use crate::config::cors::CorsPolicy;

const TRUE: HeaderValue = HeaderValue::from_static("true");

/// The proxy's own answer to a preflight, or `None` when the request goes on.
pub(super) fn preflight<B>(
    policy: &CorsPolicy,
    req: &Request<B>,
    origin: &HeaderValue,
) -> Option<Outcome> {
    let requested = req
        .headers()
        .get(ACCESS_CONTROL_REQUEST_METHOD)
        .filter(|m| !m.is_empty())?;
    if req.method() != Method::OPTIONS {
        return None;
    }
    let allowed = origin.to_str().is_ok_and(|o| policy.allows(o));
    if !allowed && policy.forward_not_matching_preflights {
        return None;
    }
    let mut response = local_response(StatusCode::OK, "");
    let headers = response.headers_mut();
    if allowed {
        headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    }
    if policy.allow_credentials {
        headers.insert(ACCESS_CONTROL_ALLOW_CREDENTIALS, TRUE);
    }
    // `*` echoes what the client asked for.
    let echo = |configured: &Option<HeaderValue>, asked: Option<&HeaderValue>| match configured {
        Some(v) if v == "*" => asked.cloned(),
        other => other.clone(),
    };
    if let Some(methods) = echo(&policy.allow_methods, Some(requested)) {
        headers.insert(ACCESS_CONTROL_ALLOW_METHODS, methods);
    }
    let asked_headers = req.headers().get(ACCESS_CONTROL_REQUEST_HEADERS);
    if let Some(allowed_headers) = echo(&policy.allow_headers, asked_headers) {
        headers.insert(ACCESS_CONTROL_ALLOW_HEADERS, allowed_headers);
    }
    if let Some(max_age) = &policy.max_age {
        headers.insert(ACCESS_CONTROL_MAX_AGE, max_age.clone());
    }
    Some(Outcome {
        details: Some("cors_response".to_owned()),
        ..Outcome::answer(response)
    })
}

/// What an answer to an allowed origin carries.
pub(super) fn decorate(policy: &CorsPolicy, origin: &HeaderValue, headers: &mut HeaderMap) {
    if !origin.to_str().is_ok_and(|o| policy.allows(o)) {
        return;
    }
    headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    if policy.allow_credentials {
        headers.insert(ACCESS_CONTROL_ALLOW_CREDENTIALS, TRUE);
    }
    if let Some(expose) = &policy.expose_headers {
        headers.insert(ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone());
    }
}

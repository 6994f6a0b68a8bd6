//! The connection manager's JWT step (Istio's RequestAuthentication): a
//! request whose token fails is answered 401 (403 for a wrong audience) with
//! Envoy's reason and never reaches authorization or a route; a verified
//! token's payload is left in the request's metadata for the RBAC filters,
//! and the token and claims are passed on or removed as the provider says.

use std::time::{SystemTime, UNIX_EPOCH};

use http::{HeaderValue, Request, StatusCode};

use super::{Connection, Outcome, local_response};
use crate::authn::{self, Failure, METADATA_NAMESPACE, Verified};
use crate::authz::Metadata;
use crate::config::jwt_authn::{JwtAuthn, Location};

/// The refusal, or `None` with the request's headers and `metadata` updated.
pub(super) fn check<B>(
    conn: &Connection,
    filter: &JwtAuthn,
    req: &mut Request<B>,
    authority: &str,
    metadata: &mut Metadata,
) -> Option<Outcome> {
    // What the filter would write is never taken from the client: a request
    // without a token must not arrive with a forged payload or claim.
    for provider in &filter.providers {
        let headers = req.headers_mut();
        if let Some(name) = &provider.forward_payload_header {
            headers.remove(name);
        }
        for (name, _) in &provider.claim_to_headers {
            headers.remove(name);
        }
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let checked = filter.authenticate(&authn::Request {
        method: req.method(),
        uri: req.uri(),
        headers: req.headers(),
        now,
    });
    match checked {
        Ok(verified) => {
            for token in &verified {
                apply(filter, token, req, metadata);
            }
            None
        }
        Err(failure) => {
            tracing::debug!(client = %conn.downstream.client, reason = %failure, "request token refused");
            Some(refusal(failure, req, authority))
        }
    }
}

fn refusal<B>(failure: Failure, req: &Request<B>, authority: &str) -> Outcome {
    let mut outcome = Outcome::local(failure.status(), "", "");
    outcome.response = local_response(failure.status(), failure.to_string());
    if failure.status() == StatusCode::UNAUTHORIZED {
        let scheme = req.uri().scheme_str().unwrap_or("http");
        let mut challenge = format!(
            "Bearer realm=\"{scheme}://{authority}{}\"",
            req.uri().path()
        );
        if failure != Failure::Missing {
            challenge.push_str(", error=\"invalid_token\"");
        }
        if let Ok(value) = HeaderValue::from_str(&challenge) {
            outcome
                .response
                .headers_mut()
                .insert(http::header::WWW_AUTHENTICATE, value);
        }
    }
    outcome.details = Some(failure.details());
    outcome
}

/// What a verified token changes: its header removed unless forwarded, the
/// payload and claims copied to headers, the payload to the metadata.
fn apply<B>(filter: &JwtAuthn, token: &Verified, req: &mut Request<B>, metadata: &mut Metadata) {
    let Some(provider) = filter.providers.get(token.provider) else {
        return;
    };
    let headers = req.headers_mut();
    if let (false, Location::Header { name, .. }) = (provider.forward, &token.location) {
        headers.remove(name);
    }
    if let Some(name) = &provider.forward_payload_header
        && let Ok(value) = HeaderValue::from_str(&token.payload_text)
    {
        headers.insert(name.clone(), value);
    }
    for (name, claim) in &provider.claim_to_headers {
        let value = authn::claim_text(&token.payload, claim);
        if let Some(value) = value.and_then(|v| HeaderValue::from_str(&v).ok()) {
            headers.insert(name.clone(), value);
        }
    }
    if let Some(key) = &provider.payload_in_metadata {
        let payload = authn::normalized(provider, &token.payload);
        metadata.insert(METADATA_NAMESPACE, key, payload);
    }
}

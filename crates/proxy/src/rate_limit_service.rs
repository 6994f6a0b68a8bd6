//! Asking a rate limit service (`envoy.service.ratelimit.v3.RateLimitService/
//! ShouldRateLimit`) whether a request's descriptors are over their limits,
//! as Envoy's global rate-limit filter does.

use std::net::SocketAddr;

use envoy_types::pb::envoy::config::core::v3::HeaderValue as EnvoyHeader;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use http::{HeaderName, HeaderValue};

use crate::config::Snapshot;
use crate::config::global_rate_limit::GlobalRateLimit;
use crate::config::rate_limit::Descriptor;
use crate::context::Context;

const SHOULD_RATE_LIMIT: &str = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit";

/// The service's answer.
#[derive(Debug, Default)]
pub struct Answer {
    pub over_limit: bool,
    /// For the upstream request (only when under the limit).
    pub request_headers: Vec<(HeaderName, HeaderValue)>,
    /// For the response to the client, either way.
    pub response_headers: Vec<(HeaderName, HeaderValue)>,
    /// The limited response's body, when the service gives one.
    pub body: Vec<u8>,
}

/// One call; an error is any call that gave no OK or OVER_LIMIT answer.
pub async fn ask(
    ctx: &Context,
    snapshot: &Snapshot,
    filter: &GlobalRateLimit,
    descriptors: &[Descriptor],
    original: SocketAddr,
) -> Result<Answer, String> {
    let request = RateLimitRequest {
        domain: filter.domain.clone(),
        descriptors: descriptors.iter().map(descriptor).collect(),
        hits_addend: 0,
    };
    let answer: RateLimitResponse = crate::grpc_call::unary(
        ctx,
        snapshot,
        &filter.service,
        SHOULD_RATE_LIMIT,
        original,
        &request,
    )
    .await?;
    let over_limit = over_limit(answer.overall_code);
    Ok(Answer {
        over_limit,
        request_headers: headers(&answer.request_headers_to_add),
        response_headers: headers(&answer.response_headers_to_add),
        body: answer.raw_body,
    })
}

/// As Envoy reads the answer: anything but OVER_LIMIT (UNKNOWN too) is OK.
fn over_limit(overall_code: i32) -> bool {
    overall_code == Code::OverLimit as i32
}

fn descriptor(d: &Descriptor) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: d
            .iter()
            .map(|(key, value)| Entry {
                key: key.clone(),
                value: value.clone(),
            })
            .collect(),
        ..Default::default()
    }
}

/// The service's headers that make valid HTTP headers; others are dropped.
fn headers(list: &[EnvoyHeader]) -> Vec<(HeaderName, HeaderValue)> {
    list.iter().filter_map(crate::grpc_call::header).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_over_limit_limits() {
        assert!(over_limit(Code::OverLimit as i32));
        assert!(!over_limit(Code::Ok as i32));
        assert!(
            !over_limit(Code::Unknown as i32),
            "UNKNOWN is OK, as in Envoy"
        );
    }
}

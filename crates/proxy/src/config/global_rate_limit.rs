//! Global rate limiting (Envoy's `envoy.filters.http.ratelimit`): the route's
//! rate-limit descriptors are sent to a rate limit service
//! (`envoy.service.ratelimit.v3`), which answers whether the request is over
//! its limit.

use std::time::Duration;

use envoy_types::pb::envoy::extensions::filters::http::ratelimit::v3::RateLimit as EnvoyRateLimit;
use envoy_types::pb::google::protobuf::Any;
use http::StatusCode;

use super::ext_authz::{GrpcService, grpc_service};
use super::fault::Share;
use super::header_ops::{self, HeaderOps, Lists};
use super::rate_limit::{self, Policy};

pub const TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit";

/// Envoy's wait for the service when the filter names none.
const DEFAULT_TIMEOUT: Duration = Duration::from_millis(20);

#[derive(Debug)]
pub struct GlobalRateLimit {
    pub domain: String,
    pub stage: u32,
    pub service: GrpcService,
    /// The service failed or did not answer in time: refuse (500) instead of
    /// letting the request through.
    pub failure_mode_deny: bool,
    pub status_on_error: StatusCode,
    pub limited_status: StatusCode,
    /// `x-envoy-ratelimited: true` on limited answers unless disabled.
    pub ratelimited_header: bool,
    /// On limited responses.
    pub limited_headers: HeaderOps,
    pub enabled: Share,
    pub enforced: Share,
    /// The filter's own actions; when empty, the route's of this stage.
    pub rate_limits: Vec<Policy>,
}

pub fn convert(any: &Any) -> Result<GlobalRateLimit, String> {
    let c: EnvoyRateLimit = rate_limit::decode(any, TYPE)?;
    unsupported(&c)?;
    if c.domain.is_empty() {
        return Err("domain is required".to_owned());
    }
    let grpc = c
        .rate_limit_service
        .as_ref()
        .and_then(|s| s.grpc_service.as_ref())
        .ok_or("rate_limit_service.grpc_service is required")?;
    let mut service = grpc_service(grpc)?;
    service.timeout = match &c.timeout {
        Some(t) => super::duration(t)?,
        None => DEFAULT_TIMEOUT,
    };
    let status = |s: Option<u32>, default: StatusCode| match s {
        None | Some(0) => Ok(default),
        Some(code) => u16::try_from(code)
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
            .ok_or_else(|| format!("status {code} is not an HTTP status")),
    };
    let percent =
        |f: Option<&envoy_types::pb::envoy::config::core::v3::RuntimeFractionalPercent>| {
            // Absent, the global filter is on for every request (unlike the
            // local one).
            super::fault::share(f.map(|f| f.default_value.unwrap_or_default()))
        };
    Ok(GlobalRateLimit {
        domain: c.domain.clone(),
        stage: c.stage,
        service,
        failure_mode_deny: c.failure_mode_deny,
        status_on_error: status(
            c.status_on_error
                .as_ref()
                .and_then(|s| u32::try_from(s.code).ok()),
            StatusCode::INTERNAL_SERVER_ERROR,
        )?,
        limited_status: super::local_rate_limit::limited_status(
            c.rate_limited_status.as_ref().map(|s| s.code),
        ),
        ratelimited_header: !c.disable_x_envoy_ratelimited_header,
        limited_headers: header_ops::convert(Lists {
            request_add: &[],
            request_remove: &[],
            response_add: &c.response_headers_to_add,
            response_remove: &[],
        })?,
        enabled: percent(c.filter_enabled.as_ref())?,
        enforced: percent(c.filter_enforced.as_ref())?,
        rate_limits: rate_limit::policies(&c.rate_limits)?,
    })
}

fn unsupported(c: &EnvoyRateLimit) -> Result<(), String> {
    let named = [
        (
            !c.request_type.is_empty() && c.request_type != "both",
            "request_type",
        ),
        (
            c.rate_limited_as_resource_exhausted,
            "rate_limited_as_resource_exhausted",
        ),
        (
            c.enable_x_ratelimit_headers != 0,
            "enable_x_ratelimit_headers",
        ),
        (
            c.failure_mode_deny_percent.is_some(),
            "failure_mode_deny_percent",
        ),
        (!c.metadata_namespace.is_empty(), "metadata_namespace"),
        (c.enable_retry_after_header, "enable_retry_after_header"),
    ];
    match named.iter().find(|(set, _)| *set) {
        Some((_, field)) => Err(format!("{field} is not supported")),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::GrpcService;
    use envoy_types::pb::envoy::config::core::v3::grpc_service::{EnvoyGrpc, TargetSpecifier};
    use envoy_types::pb::envoy::config::ratelimit::v3::RateLimitServiceConfig;
    use envoy_types::pb::envoy::r#type::v3::HttpStatus;
    use envoy_types::util::pack_any;

    fn config(limited: Option<i32>) -> EnvoyRateLimit {
        EnvoyRateLimit {
            domain: "ratelimit".to_owned(),
            rate_limit_service: Some(RateLimitServiceConfig {
                grpc_service: Some(GrpcService {
                    target_specifier: Some(TargetSpecifier::EnvoyGrpc(EnvoyGrpc {
                        cluster_name: "rls".to_owned(),
                        ..Default::default()
                    })),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            rate_limited_status: limited.map(|code| HttpStatus { code }),
            ..Default::default()
        }
    }

    #[test]
    fn envoys_defaults_and_limited_statuses() {
        let c = convert(&pack_any(config(None))).expect("converts");
        assert_eq!(c.limited_status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(c.status_on_error, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(c.service.timeout, DEFAULT_TIMEOUT);
        assert_eq!(
            c.enabled,
            Share(1_000_000),
            "on for every request unless told"
        );
        let below_400 = convert(&pack_any(config(Some(302)))).expect("converts");
        assert_eq!(below_400.limited_status, StatusCode::TOO_MANY_REQUESTS);
        let unavailable = convert(&pack_any(config(Some(503)))).expect("converts");
        assert_eq!(unavailable.limited_status, StatusCode::SERVICE_UNAVAILABLE);
    }
}

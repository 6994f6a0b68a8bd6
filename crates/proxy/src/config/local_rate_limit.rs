//! Local rate limiting (Envoy's `envoy.filters.http.local_ratelimit`, which
//! Istio's docs configure with an EnvoyFilter): a token bucket for the
//! listener or, per route, in `typed_per_filter_config`; descriptor buckets
//! chosen by the route's rate-limit actions. The config may come wrapped in a
//! TypedStruct, as the docs write it.

use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::RuntimeFractionalPercent;
use envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit as EnvoyLocalRateLimit;
use envoy_types::pb::envoy::r#type::v3::TokenBucket as EnvoyBucket;
use envoy_types::pb::google::protobuf::Any;
use http::StatusCode;

use super::fault::Share;
use super::header_ops::{self, HeaderOps, Lists};
use super::rate_limit::{self, Policy};
use crate::token_bucket::{MIN_FILL_INTERVAL, Shape, TokenBucket};

pub const TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit";

#[derive(Debug)]
pub struct LocalRateLimit {
    pub stat_prefix: Arc<str>,
    /// The answer to a limited request (Envoy's default 429).
    pub status: StatusCode,
    /// Without one the filter limits nothing (a listener-wide config that
    /// only names the filter, with the buckets per route).
    pub bucket: Option<Arc<TokenBucket>>,
    pub enabled: Share,
    pub enforced: Share,
    /// On limited responses (`response_headers_to_add`), and on requests the
    /// filter would have limited but does not enforce.
    pub limited_headers: HeaderOps,
    pub descriptors: Vec<DescriptorBucket>,
    pub stage: u32,
    /// The default bucket is taken from even when a descriptor's has a token.
    pub always_consume_default: bool,
    /// The filter's own actions (Envoy's newer `rate_limits` field); when
    /// empty, the route's policies of this stage are used.
    pub rate_limits: Vec<Policy>,
    /// Its counters (enabled, ok, rate_limited, enforced), found on first use.
    pub counters: std::sync::OnceLock<[prometheus_client::metrics::counter::Counter; 4]>,
}

/// A bucket for requests whose descriptor is exactly `entries`.
#[derive(Debug)]
pub struct DescriptorBucket {
    pub entries: Vec<(String, String)>,
    pub bucket: Arc<TokenBucket>,
}

impl DescriptorBucket {
    pub fn matches(&self, descriptor: &[(String, String)]) -> bool {
        self.entries == descriptor
    }

    /// Tokens added per second: the slowest bucket is asked first.
    pub fn fill_rate(&self) -> f64 {
        let shape = self.bucket.shape();
        f64::from(shape.tokens_per_fill) / shape.fill_interval.as_secs_f64()
    }
}

impl LocalRateLimit {
    /// Takes over `old`'s buckets of the same shape (descriptors: of the same
    /// entries too), so a push that keeps a limit keeps its tokens, whatever
    /// else changed around it.
    pub fn carry_over(&mut self, old: &LocalRateLimit) {
        if let (Some(new), Some(old)) = (&mut self.bucket, &old.bucket)
            && new.shape() == old.shape()
        {
            *new = old.clone();
        }
        for d in &mut self.descriptors {
            if let Some(o) = old
                .descriptors
                .iter()
                .find(|o| o.entries == d.entries && o.bucket.shape() == d.bucket.shape())
            {
                d.bucket = o.bucket.clone();
            }
        }
    }
}

/// Carries buckets over between two lists of configs by filter name.
pub fn carry_over_all(
    new: &mut [(String, Arc<LocalRateLimit>)],
    old: &[(String, Arc<LocalRateLimit>)],
) {
    for (name, config) in new {
        if let (Some(config), Some((_, previous))) =
            (Arc::get_mut(config), old.iter().find(|(n, _)| n == name))
        {
            config.carry_over(previous);
        }
    }
}

/// A route's or a host's config: it must have a bucket (Envoy refuses one
/// without).
pub fn per_route(any: &Any) -> Result<LocalRateLimit, String> {
    let config = convert(any)?;
    if config.bucket.is_none() {
        return Err("a per-route local rate limit needs a token_bucket".to_owned());
    }
    Ok(config)
}

/// The filter's or a route's config, TypedStruct or not.
pub fn convert(any: &Any) -> Result<LocalRateLimit, String> {
    let c: EnvoyLocalRateLimit = rate_limit::decode(any, TYPE)?;
    unsupported(&c)?;
    if c.stat_prefix.is_empty() {
        return Err("stat_prefix is required".to_owned());
    }
    let status = limited_status(c.status.as_ref().map(|s| s.code));
    let limited_headers = header_ops::convert(Lists {
        request_add: &c.request_headers_to_add_when_not_enforced,
        request_remove: &[],
        response_add: &c.response_headers_to_add,
        response_remove: &[],
    })?;
    let descriptors = c
        .descriptors
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let bucket = d
                .token_bucket
                .as_ref()
                .ok_or("a descriptor needs a token_bucket")
                .map_err(str::to_owned)
                .and_then(bucket)
                .map_err(|e| format!("descriptors[{i}]: {e}"))?;
            if d.entries.is_empty() || d.shadow_mode {
                return Err(format!(
                    "descriptors[{i}]: needs entries; shadow_mode is not supported"
                ));
            }
            // Envoy gives each value of an empty-valued entry a bucket of its
            // own (dynamic descriptors); one shared bucket would be wrong.
            if d.entries.iter().any(|e| e.value.is_empty()) {
                return Err(format!(
                    "descriptors[{i}]: entries without a value (dynamic descriptors) are not supported"
                ));
            }
            Ok(DescriptorBucket {
                entries: d
                    .entries
                    .iter()
                    .map(|e| (e.key.clone(), e.value.clone()))
                    .collect(),
                bucket: Arc::new(bucket),
            })
        })
        .collect::<Result<_, String>>()?;
    Ok(LocalRateLimit {
        stat_prefix: Arc::from(c.stat_prefix.as_str()),
        status,
        bucket: c
            .token_bucket
            .as_ref()
            .map(bucket)
            .transpose()?
            .map(Arc::new),
        enabled: fraction(c.filter_enabled.as_ref())?,
        enforced: fraction(c.filter_enforced.as_ref())?,
        limited_headers,
        descriptors,
        stage: c.stage,
        always_consume_default: c
            .always_consume_default_token_bucket
            .as_ref()
            .is_none_or(|b| b.value),
        rate_limits: rate_limit::policies(&c.rate_limits)?,
        counters: std::sync::OnceLock::new(),
    })
}

/// The status of a limited answer: Envoy answers 429 unless given an error
/// status (400 or more).
pub(crate) fn limited_status(code: Option<i32>) -> StatusCode {
    code.and_then(|c| u16::try_from(c).ok())
        .filter(|c| *c >= 400)
        .and_then(|c| StatusCode::from_u16(c).ok())
        .unwrap_or(StatusCode::TOO_MANY_REQUESTS)
}

/// Fields whose behaviour this proxy does not have: refused rather than
/// silently ignored.
fn unsupported(c: &EnvoyLocalRateLimit) -> Result<(), String> {
    let named = [
        (
            c.local_rate_limit_per_downstream_connection,
            "local_rate_limit_per_downstream_connection",
        ),
        (
            c.local_cluster_rate_limit.is_some(),
            "local_cluster_rate_limit",
        ),
        (
            c.enable_x_ratelimit_headers != 0,
            "enable_x_ratelimit_headers",
        ),
        (c.vh_rate_limits != 0, "vh_rate_limits"),
        (
            c.max_dynamic_descriptors.is_some(),
            "max_dynamic_descriptors",
        ),
        (c.enable_retry_after_header, "enable_retry_after_header"),
    ];
    match named.iter().find(|(set, _)| *set) {
        Some((_, field)) => Err(format!("{field} is not supported")),
        None => Ok(()),
    }
}

fn bucket(b: &EnvoyBucket) -> Result<TokenBucket, String> {
    let interval = b
        .fill_interval
        .as_ref()
        .ok_or("token_bucket.fill_interval is required")
        .map_err(str::to_owned)
        .and_then(|d| super::duration(d).map_err(str::to_owned))?;
    if interval < MIN_FILL_INTERVAL {
        return Err(format!(
            "token_bucket.fill_interval {interval:?} is shorter than Envoy's minimum of 50ms"
        ));
    }
    if b.max_tokens == 0 {
        return Err("token_bucket.max_tokens must be greater than 0".to_owned());
    }
    let tokens_per_fill = b.tokens_per_fill.map_or(1, |t| t.value);
    if tokens_per_fill == 0 {
        return Err("token_bucket.tokens_per_fill must be greater than 0".to_owned());
    }
    Ok(TokenBucket::new(Shape {
        max_tokens: b.max_tokens,
        tokens_per_fill,
        fill_interval: interval,
    }))
}

/// Envoy's default when the fraction is absent: none of the requests.
fn fraction(f: Option<&RuntimeFractionalPercent>) -> Result<Share, String> {
    match f {
        None => Ok(Share(0)),
        Some(f) => super::fault::share(Some(f.default_value.unwrap_or_default())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::r#type::v3::FractionalPercent;
    use envoy_types::util::pack_any;

    fn config(bucket: Option<EnvoyBucket>) -> EnvoyLocalRateLimit {
        EnvoyLocalRateLimit {
            stat_prefix: "http_local_rate_limiter".to_owned(),
            token_bucket: bucket,
            filter_enabled: Some(RuntimeFractionalPercent {
                default_value: Some(FractionalPercent {
                    numerator: 100,
                    denominator: 0,
                }),
                runtime_key: "local_rate_limit_enabled".to_owned(),
            }),
            ..Default::default()
        }
    }

    fn shaped(max: u32, millis: i64) -> EnvoyBucket {
        EnvoyBucket {
            max_tokens: max,
            tokens_per_fill: None,
            fill_interval: Some(envoy_types::pb::google::protobuf::Duration {
                seconds: millis / 1000,
                nanos: ((millis % 1000) * 1_000_000) as i32,
            }),
        }
    }

    #[test]
    fn envoys_defaults() {
        let c = convert(&pack_any(config(Some(shaped(4, 60_000))))).expect("converts");
        assert_eq!(c.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(c.enabled, Share(1_000_000));
        assert_eq!(
            c.enforced,
            Share(0),
            "absent filter_enforced enforces nothing"
        );
        let shape = c.bucket.expect("bucket").shape();
        assert_eq!(shape.tokens_per_fill, 1);
        assert!(c.always_consume_default);
    }

    #[test]
    fn a_config_without_a_bucket_limits_nothing() {
        let c = convert(&pack_any(config(None))).expect("converts");
        assert!(c.bucket.is_none());
    }

    #[test]
    fn bad_buckets_are_refused_naming_the_field() {
        for (b, field) in [
            (shaped(0, 1000), "max_tokens"),
            (shaped(1, 10), "fill_interval"),
        ] {
            let error = convert(&pack_any(config(Some(b)))).expect_err("refused");
            assert!(error.contains(field), "{error}");
        }
        let mut c = config(None);
        c.local_rate_limit_per_downstream_connection = true;
        let error = convert(&pack_any(c)).expect_err("refused");
        assert!(error.contains("per_downstream_connection"), "{error}");
    }

    #[test]
    fn descriptors_need_values_and_statuses_below_400_mean_429() {
        use envoy_types::pb::envoy::extensions::common::ratelimit::v3::LocalRateLimitDescriptor;
        use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
        let mut c = config(Some(shaped(4, 1000)));
        c.descriptors = vec![LocalRateLimitDescriptor {
            entries: vec![Entry {
                key: "remote_address".to_owned(),
                value: String::new(),
            }],
            token_bucket: Some(shaped(1, 1000)),
            shadow_mode: false,
        }];
        let error = convert(&pack_any(c)).expect_err("refused");
        assert!(error.contains("descriptors[0]"), "{error}");
        assert_eq!(limited_status(Some(302)), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(limited_status(Some(503)), StatusCode::SERVICE_UNAVAILABLE);
        let error = per_route(&pack_any(config(None))).expect_err("refused");
        assert!(error.contains("token_bucket"), "{error}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_limit_pushed_again_keeps_its_tokens() {
        let old = convert(&pack_any(config(Some(shaped(2, 60_000))))).expect("converts");
        assert!(old.bucket.as_ref().is_some_and(|b| b.try_take()));
        let mut same = convert(&pack_any(config(Some(shaped(2, 60_000))))).expect("converts");
        same.carry_over(&old);
        assert_eq!(same.bucket.as_ref().map(|b| b.tokens()), Some(1));
        let mut reshaped = convert(&pack_any(config(Some(shaped(3, 60_000))))).expect("converts");
        reshaped.carry_over(&old);
        assert_eq!(
            reshaped.bucket.as_ref().map(|b| b.tokens()),
            Some(3),
            "a new shape starts full"
        );
    }
}

//! A rate limit service for global rate limiting (Envoy's
//! `envoy.service.ratelimit.v3.RateLimitService`), standing where Istio's
//! sample runs envoyproxy/ratelimit: rules of one domain, each a descriptor
//! pattern with a limit per second, minute, hour or day, counted in fixed
//! windows as that service counts them, in memory.
//!
//! A rule is written `KEY[=VALUE][,KEY[=VALUE]...]:LIMIT/UNIT`, for example
//! `PATH=/productpage:1/minute` or `PATH:100/minute`; a key without a value
//! matches any value, and a rule that names the value wins over one that
//! does not.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::rate_limit::Unit;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    Code, DescriptorStatus, RateLimit,
};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::{
    RateLimitService, RateLimitServiceServer,
};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use tokio::net::TcpListener;

#[derive(Debug, thiserror::Error)]
#[error("rule {rule:?}: {reason} (write KEY[=VALUE][,...]:LIMIT/second|minute|hour|day)")]
pub struct RuleError {
    rule: String,
    reason: &'static str,
}

/// One limit: the descriptor it applies to and how many requests per window.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    entries: Vec<(String, Option<String>)>,
    limit: u32,
    unit: Unit,
}

impl std::str::FromStr for Rule {
    type Err = RuleError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = |reason| RuleError {
            rule: text.to_owned(),
            reason,
        };
        let (pattern, limit) = text
            .rsplit_once(':')
            .ok_or_else(|| error("no ':LIMIT/UNIT'"))?;
        let (count, unit) = limit.split_once('/').ok_or_else(|| error("no '/UNIT'"))?;
        let limit = count
            .parse()
            .map_err(|_| error("the limit is not a number"))?;
        let unit = match unit {
            "second" => Unit::Second,
            "minute" => Unit::Minute,
            "hour" => Unit::Hour,
            "day" => Unit::Day,
            _ => return Err(error("unknown unit")),
        };
        let entries = pattern
            .split(',')
            .map(|entry| match entry.split_once('=') {
                Some((key, value)) => (key.to_owned(), Some(value.to_owned())),
                None => (entry.to_owned(), None),
            })
            .collect::<Vec<_>>();
        if entries.iter().any(|(key, _)| key.is_empty()) {
            return Err(error("an empty key"));
        }
        Ok(Rule {
            entries,
            limit,
            unit,
        })
    }
}

impl Rule {
    /// How well the rule matches `entries`: the values it names, or `None`.
    fn specificity(&self, entries: &[(&str, &str)]) -> Option<usize> {
        if self.entries.len() != entries.len() {
            return None;
        }
        let mut named = 0;
        for ((key, value), (k, v)) in self.entries.iter().zip(entries) {
            if key != k || value.as_deref().is_some_and(|want| want != *v) {
                return None;
            }
            named += usize::from(value.is_some());
        }
        Some(named)
    }

    fn window(&self) -> Duration {
        Duration::from_secs(match self.unit {
            Unit::Second => 1,
            Unit::Minute => 60,
            Unit::Hour => 3600,
            _ => 86_400,
        })
    }
}

/// Serves the rules for `domain` on `port` until the process ends.
pub async fn run(port: u16, domain: String, rules: Vec<Rule>) -> std::io::Result<()> {
    let listener = TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port))).await?;
    serve(listener, domain, rules).await
}

pub async fn serve(listener: TcpListener, domain: String, rules: Vec<Rule>) -> std::io::Result<()> {
    let limiter = Limiter {
        domain,
        rules: Arc::new(rules),
        counts: Arc::default(),
    };
    tonic::transport::Server::builder()
        .add_service(RateLimitServiceServer::new(limiter))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
        .await
        .map_err(std::io::Error::other)
}

struct Limiter {
    domain: String,
    rules: Arc<Vec<Rule>>,
    counts: Arc<Mutex<HashMap<Window, u32>>>,
}

/// Hits are counted per (rule, descriptor values, window start).
type Window = (usize, Vec<String>, u64);

impl Limiter {
    fn status(&self, descriptor: &RateLimitDescriptor, now: Duration) -> DescriptorStatus {
        let entries: Vec<(&str, &str)> = descriptor
            .entries
            .iter()
            .map(|e| (e.key.as_str(), e.value.as_str()))
            .collect();
        let best = self
            .rules
            .iter()
            .enumerate()
            .filter_map(|(i, rule)| rule.specificity(&entries).map(|s| (s, i, rule)))
            .max_by_key(|(s, i, _)| (*s, std::cmp::Reverse(*i)));
        let Some((_, index, rule)) = best else {
            return DescriptorStatus {
                code: Code::Ok as i32,
                ..Default::default()
            };
        };
        let window = rule.window().as_secs();
        let start = now.as_secs() / window * window;
        let values = entries.iter().map(|(_, v)| (*v).to_owned()).collect();
        let hits = {
            let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
            // Windows that ended are forgotten, each by its own rule's length.
            let rules = &self.rules;
            counts.retain(|(rule, _, s), _| {
                let length = rules.get(*rule).map_or(window, |r| r.window().as_secs());
                *s + length > now.as_secs()
            });
            let hits = counts.entry((index, values, start)).or_default();
            *hits = hits.saturating_add(1);
            *hits
        };
        let over = hits > rule.limit;
        DescriptorStatus {
            code: if over { Code::OverLimit } else { Code::Ok } as i32,
            current_limit: Some(RateLimit {
                name: String::new(),
                requests_per_unit: rule.limit,
                unit: rule.unit as i32,
            }),
            limit_remaining: rule.limit.saturating_sub(hits),
            ..Default::default()
        }
    }
}

#[tonic::async_trait]
impl RateLimitService for Limiter {
    async fn should_rate_limit(
        &self,
        request: tonic::Request<RateLimitRequest>,
    ) -> Result<tonic::Response<RateLimitResponse>, tonic::Status> {
        let request = request.into_inner();
        if request.domain != self.domain {
            return Err(tonic::Status::invalid_argument(format!(
                "unknown domain {:?}; this service has {:?}",
                request.domain, self.domain
            )));
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let statuses: Vec<DescriptorStatus> = request
            .descriptors
            .iter()
            .map(|d| self.status(d, now))
            .collect();
        let over = statuses.iter().any(|s| s.code == Code::OverLimit as i32);
        tracing::info!(descriptors = ?request.descriptors.iter().map(|d| &d.entries).collect::<Vec<_>>(), over, "rate limit asked");
        Ok(tonic::Response::new(RateLimitResponse {
            overall_code: if over { Code::OverLimit } else { Code::Ok } as i32,
            statuses,
            ..Default::default()
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_and_name_their_mistakes() {
        let rule: Rule = "PATH=/productpage:1/minute".parse().expect("parses");
        assert_eq!(rule.limit, 1);
        assert_eq!(
            rule.entries,
            vec![("PATH".to_owned(), Some("/productpage".to_owned()))]
        );
        let error = "PATH:lots/minute".parse::<Rule>().expect_err("refused");
        assert!(error.to_string().contains("not a number"), "{error}");
    }

    fn limiter(rules: &[&str]) -> Limiter {
        Limiter {
            domain: "ratelimit".to_owned(),
            rules: Arc::new(rules.iter().map(|r| r.parse().expect("parses")).collect()),
            counts: Arc::default(),
        }
    }

    fn descriptor(path: &str) -> RateLimitDescriptor {
        use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
        RateLimitDescriptor {
            entries: vec![Entry {
                key: "PATH".to_owned(),
                value: path.to_owned(),
            }],
            ..Default::default()
        }
    }

    #[test]
    fn the_rule_naming_the_value_wins_and_windows_count() {
        let limiter = limiter(&["PATH:100/minute", "PATH=/productpage:1/minute"]);
        let now = Duration::from_secs(600);
        let code = |path, now| limiter.status(&descriptor(path), now).code;
        assert_eq!(code("/productpage", now), Code::Ok as i32);
        assert_eq!(code("/productpage", now), Code::OverLimit as i32);
        assert_eq!(code("/other", now), Code::Ok as i32);
        assert_eq!(
            code("/productpage", now + Duration::from_secs(60)),
            Code::Ok as i32,
            "a new window"
        );
    }

    #[test]
    fn a_short_windows_rule_does_not_forget_a_long_ones_count() {
        let limiter = limiter(&["PATH=/hourly:1/hour", "PATH=/often:100/second"]);
        let start = Duration::from_secs(3600 * 10);
        assert_eq!(
            limiter.status(&descriptor("/hourly"), start).code,
            Code::Ok as i32
        );
        let later = start + Duration::from_secs(5);
        assert_eq!(
            limiter.status(&descriptor("/often"), later).code,
            Code::Ok as i32
        );
        assert_eq!(
            limiter.status(&descriptor("/hourly"), later).code,
            Code::OverLimit as i32,
            "the hour's count survived the per-second rule's clean-up"
        );
    }
}

//! Outlier detection, as Envoy does it passively for Istio's
//! `outlierDetection`: an endpoint that answers with enough consecutive 5xx
//! (or gateway errors: 502, 503, 504 and failed connections) is ejected from
//! balancing for the base ejection time times the number of times it was
//! ejected (at most `max_ejection_time`), while at most `max_ejection_percent`
//! of the endpoints (and always at least one) are out at once. The record is
//! per endpoint in atomics ([`crate::state`]), kept across pushes while the
//! endpoint stays: the data path takes no locks.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::cluster::v3::OutlierDetection;

use crate::state::EndpointState;

/// Envoy's defaults for fields a cluster leaves unset.
const DEFAULT_CONSECUTIVE: u32 = 5;
const DEFAULT_BASE_EJECTION: Duration = Duration::from_secs(30);
const DEFAULT_MAX_EJECTION: Duration = Duration::from_secs(300);
const DEFAULT_MAX_PERCENT: u32 = 10;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutlierPolicy {
    /// Consecutive 5xx that eject (`None`: not enforced).
    pub consecutive_5xx: Option<u32>,
    /// Consecutive gateway errors that eject (`None`: not enforced).
    pub consecutive_gateway: Option<u32>,
    pub base_ejection: Duration,
    pub max_ejection: Duration,
    pub max_ejection_percent: u32,
}

/// The policy a cluster's `outlier_detection` asks for; what this proxy does
/// not do (success-rate and failure-percentage ejection, local-origin errors
/// counted apart) is refused rather than ignored.
pub fn policy(od: &OutlierDetection) -> Result<OutlierPolicy, String> {
    let value = |v: &Option<envoy_types::pb::google::protobuf::UInt32Value>, default| {
        v.as_ref().map_or(default, |v| v.value)
    };
    // Envoy enforces success-rate ejection unless told not to; Istio says 0.
    if value(&od.enforcing_success_rate, 100) > 0 {
        return Err("success-rate outlier detection is not supported".to_owned());
    }
    if value(&od.enforcing_failure_percentage, 0) > 0 {
        return Err("failure-percentage outlier detection is not supported".to_owned());
    }
    if od.split_external_local_origin_errors {
        return Err("split_external_local_origin_errors is not supported yet".to_owned());
    }
    let duration = |d: &Option<envoy_types::pb::google::protobuf::Duration>, default| {
        d.as_ref()
            .map_or(Ok(default), crate::config::duration)
            .map_err(|e| e.to_owned())
    };
    let enforced = |count: u32, enforcing: u32| (count > 0 && enforcing > 0).then_some(count);
    Ok(OutlierPolicy {
        consecutive_5xx: enforced(
            value(&od.consecutive_5xx, DEFAULT_CONSECUTIVE),
            value(&od.enforcing_consecutive_5xx, 100),
        ),
        consecutive_gateway: enforced(
            value(&od.consecutive_gateway_failure, DEFAULT_CONSECUTIVE),
            value(&od.enforcing_consecutive_gateway_failure, 0),
        ),
        base_ejection: duration(&od.base_ejection_time, DEFAULT_BASE_EJECTION)?,
        max_ejection: duration(&od.max_ejection_time, DEFAULT_MAX_EJECTION)?,
        max_ejection_percent: value(&od.max_ejection_percent, DEFAULT_MAX_PERCENT).min(100),
    })
}

/// How an attempt on an endpoint went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attempt {
    Status(u16),
    /// A TCP connection was made (what counts as success for TCP).
    Connected,
    /// No response: connection refused, reset or timed out.
    Failed,
}

/// One endpoint's record.
#[derive(Debug, Default)]
pub struct EndpointHealth {
    consecutive_5xx: AtomicU32,
    consecutive_gateway: AtomicU32,
    /// Milliseconds since [`epoch`] until which it is out; 0: never ejected.
    ejected_until: AtomicU64,
    ejections: AtomicU32,
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    u64::try_from(epoch().elapsed().as_millis()).unwrap_or(u64::MAX)
}

impl EndpointHealth {
    pub fn is_ejected(&self) -> bool {
        // Never ejected (the common case) costs no clock read.
        let until = self.ejected_until.load(Ordering::Relaxed);
        until != 0 && until > now_ms()
    }
}

/// Records `result` for endpoint `index` of a cluster's `endpoints`, ejecting it
/// when the policy says so and the cap allows.
pub fn record(
    endpoints: &[Arc<EndpointState>],
    index: usize,
    policy: &OutlierPolicy,
    result: Attempt,
) {
    let Some(endpoint) = endpoints.get(index).map(|e| &e.health) else {
        return;
    };
    let (server_error, gateway_error) = match result {
        Attempt::Status(s) => (s >= 500, matches!(s, 502..=504)),
        Attempt::Connected => (false, false),
        Attempt::Failed => (true, true),
    };
    if !server_error {
        endpoint.consecutive_5xx.store(0, Ordering::Relaxed);
        endpoint.consecutive_gateway.store(0, Ordering::Relaxed);
        if !endpoint.is_ejected() {
            // Healthy again after an ejection: the next one starts from the base.
            endpoint.ejections.store(0, Ordering::Relaxed);
        }
        return;
    }
    let fives = endpoint.consecutive_5xx.fetch_add(1, Ordering::Relaxed) + 1;
    let gateways = if gateway_error {
        endpoint.consecutive_gateway.fetch_add(1, Ordering::Relaxed) + 1
    } else {
        endpoint.consecutive_gateway.store(0, Ordering::Relaxed);
        0
    };
    let tripped = policy.consecutive_5xx.is_some_and(|n| fives >= n)
        || policy.consecutive_gateway.is_some_and(|n| gateways >= n);
    if !tripped || endpoint.is_ejected() || !room_to_eject(endpoints, policy) {
        return;
    }
    let times = endpoint.ejections.fetch_add(1, Ordering::Relaxed) + 1;
    let out = policy
        .base_ejection
        .saturating_mul(times)
        .min(policy.max_ejection);
    let until = now_ms().saturating_add(u64::try_from(out.as_millis()).unwrap_or(u64::MAX));
    endpoint.ejected_until.store(until, Ordering::Relaxed);
    endpoint.consecutive_5xx.store(0, Ordering::Relaxed);
    endpoint.consecutive_gateway.store(0, Ordering::Relaxed);
    tracing::debug!(endpoint = index, ejected_for = ?out, "outlier ejected");
}

/// At most `max_ejection_percent` of the endpoints out, but always one may be.
fn room_to_eject(endpoints: &[Arc<EndpointState>], policy: &OutlierPolicy) -> bool {
    let out = endpoints.iter().filter(|e| e.health.is_ejected()).count();
    let cap = (endpoints.len() * policy.max_ejection_percent as usize / 100).max(1);
    out < cap
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy_5xx(n: u32, percent: u32) -> OutlierPolicy {
        OutlierPolicy {
            consecutive_5xx: Some(n),
            consecutive_gateway: None,
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejection_percent: percent,
        }
    }

    #[test]
    fn consecutive_errors_eject_and_a_success_resets_the_count() {
        let health: Vec<Arc<EndpointState>> = (0..2).map(|_| Arc::default()).collect();
        let policy = policy_5xx(3, 50);
        record(&health, 0, &policy, Attempt::Status(503));
        record(&health, 0, &policy, Attempt::Status(503));
        record(&health, 0, &policy, Attempt::Status(200));
        record(&health, 0, &policy, Attempt::Status(500));
        record(&health, 0, &policy, Attempt::Failed);
        assert!(
            !health[0].health.is_ejected(),
            "the success reset the count"
        );
        record(&health, 0, &policy, Attempt::Status(502));
        assert!(health[0].health.is_ejected());
        // The cap: half of two endpoints is one, already out.
        for _ in 0..3 {
            record(&health, 1, &policy, Attempt::Status(500));
        }
        assert!(!health[1].health.is_ejected(), "max_ejection_percent holds");
    }

    #[test]
    fn envoys_defaults_and_what_is_refused() {
        let istio = OutlierDetection {
            enforcing_success_rate: Some(envoy_types::pb::google::protobuf::UInt32Value {
                value: 0,
            }),
            ..Default::default()
        };
        let p = policy(&istio).expect("defaults");
        assert_eq!(p.consecutive_5xx, Some(5));
        assert_eq!(
            p.consecutive_gateway, None,
            "gateway errors are not enforced by default"
        );
        assert_eq!(p.max_ejection_percent, 10);
        assert!(
            policy(&OutlierDetection {
                split_external_local_origin_errors: true,
                ..istio.clone()
            })
            .is_err()
        );
        assert!(
            policy(&OutlierDetection::default()).is_err(),
            "success rate by default"
        );
    }
}

//! Outlier detection, as Envoy does it passively for Istio's
//! `outlierDetection`: an endpoint that answers with enough consecutive 5xx
//! (or gateway errors: 502, 503, 504 and failed connections) is ejected from
//! balancing for the base ejection time times the number of times it was
//! ejected (at most `max_ejection_time`), while at most `max_ejection_percent`
//! of the endpoints (and always at least one) are out at once. With
//! `split_external_local_origin_errors`, failures to reach the endpoint
//! (refused, reset, timed out) are counted apart, against
//! `consecutive_local_origin_failure`, and only answers count as 5xx. The
//! record is per endpoint in atomics ([`crate::state`]), kept across pushes
//! while the endpoint stays: the data path takes no locks.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::cluster::v3::OutlierDetection;

use crate::state::{Balanced, ClusterState, EndpointState};

/// Envoy's defaults for fields a cluster leaves unset.
const DEFAULT_CONSECUTIVE: u32 = 5;
const DEFAULT_BASE_EJECTION: Duration = Duration::from_secs(30);
const DEFAULT_MAX_EJECTION: Duration = Duration::from_secs(300);
const DEFAULT_MAX_PERCENT: u32 = 10;

#[derive(Clone, Debug, PartialEq)]
pub struct OutlierPolicy {
    /// Consecutive 5xx that eject (`None`: not enforced).
    pub consecutive_5xx: Option<u32>,
    /// Consecutive gateway errors that eject (`None`: not enforced).
    pub consecutive_gateway: Option<u32>,
    /// Local-origin failures are counted apart (`None`: they count as 5xx
    /// and gateway errors).
    pub local_origin: Option<LocalOrigin>,
    pub base_ejection: Duration,
    pub max_ejection: Duration,
    pub max_ejection_percent: u32,
    /// Envoy's healthy panic threshold (Istio's `minHealthPercent`), in
    /// percent: with fewer healthy endpoints than this, balancing ignores
    /// ejections. 0 turns it off (Istio's default with outlier detection).
    pub panic_threshold: f64,
}

#[cfg(test)]
impl OutlierPolicy {
    /// For tests: `n` consecutive 5xx eject for 30 s, up to `percent` of the
    /// endpoints, never panicking.
    pub(crate) fn after_5xx(n: u32, percent: u32) -> Self {
        Self {
            consecutive_5xx: Some(n),
            consecutive_gateway: None,
            local_origin: None,
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejection_percent: percent,
            panic_threshold: 0.0,
        }
    }
}

/// Envoy's panic threshold when a cluster sets none.
pub const DEFAULT_PANIC_THRESHOLD: f64 = 50.0;

/// `split_external_local_origin_errors`: consecutive local-origin failures
/// that eject (`None`: counted, not enforced).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalOrigin {
    pub consecutive: Option<u32>,
}

/// The policy a cluster's `outlier_detection` asks for; what this proxy does
/// not do (success-rate and failure-percentage ejection, local-origin ones
/// too) is refused rather than ignored.
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
    let local_origin = if od.split_external_local_origin_errors {
        if value(&od.enforcing_local_origin_success_rate, 100) > 0 {
            return Err("local-origin success-rate outlier detection is not supported".to_owned());
        }
        if value(&od.enforcing_failure_percentage_local_origin, 0) > 0 {
            return Err(
                "local-origin failure-percentage outlier detection is not supported".to_owned(),
            );
        }
        Some(LocalOrigin {
            consecutive: (value(&od.consecutive_local_origin_failure, DEFAULT_CONSECUTIVE) > 0
                && value(&od.enforcing_consecutive_local_origin_failure, 100) > 0)
                .then(|| value(&od.consecutive_local_origin_failure, DEFAULT_CONSECUTIVE)),
        })
    } else {
        None
    };
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
        local_origin,
        base_ejection: duration(&od.base_ejection_time, DEFAULT_BASE_EJECTION)?,
        max_ejection: duration(&od.max_ejection_time, DEFAULT_MAX_EJECTION)?,
        max_ejection_percent: value(&od.max_ejection_percent, DEFAULT_MAX_PERCENT).min(100),
        panic_threshold: DEFAULT_PANIC_THRESHOLD,
    })
}

/// How an attempt on an endpoint went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// A connection to it was had: a local-origin success (split mode
    /// only; what the request then gets is recorded apart).
    Reached,
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
    /// Counted only when local-origin failures are split off.
    consecutive_local: AtomicU32,
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

    /// As [`Self::is_ejected`], at `now` (from [`ejection_clock`]).
    pub fn is_ejected_at(&self, now: u64) -> bool {
        self.ejected_until.load(Ordering::Relaxed) > now
    }
}

/// Records `result` for endpoint `index` of a cluster's endpoints, ejecting
/// it when the policy says so and the cap allows.
pub fn record(balanced: &Balanced, index: usize, policy: &OutlierPolicy, result: Attempt) {
    let endpoints = &balanced.states;
    let Some(endpoint) = endpoints.get(index).map(|e| &e.health) else {
        return;
    };
    if let Attempt::Reached = result {
        if policy.local_origin.is_some() {
            endpoint.consecutive_local.store(0, Ordering::Relaxed);
        }
        return;
    }
    if let Some(local) = policy.local_origin {
        match result {
            Attempt::Failed => {
                let failures = endpoint.consecutive_local.fetch_add(1, Ordering::Relaxed) + 1;
                if local.consecutive.is_some_and(|n| failures >= n) {
                    // The count starts over when the limit fires, ejected or
                    // not (the cap, or out already), as Envoy's does.
                    endpoint.consecutive_local.store(0, Ordering::Relaxed);
                    eject(balanced, endpoint, index, policy);
                }
                // Not an answer: the 5xx counts are for answers only.
                return;
            }
            // Reaching the endpoint is a local-origin success.
            Attempt::Reached | Attempt::Status(_) | Attempt::Connected => {
                endpoint.consecutive_local.store(0, Ordering::Relaxed);
            }
        }
    }
    let (server_error, gateway_error) = match result {
        Attempt::Status(s) => (s >= 500, matches!(s, 502..=504)),
        Attempt::Connected | Attempt::Reached => (false, false),
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
    if tripped {
        endpoint.consecutive_5xx.store(0, Ordering::Relaxed);
        endpoint.consecutive_gateway.store(0, Ordering::Relaxed);
        eject(balanced, endpoint, index, policy);
    }
}

/// Ejects `endpoint` unless it is out already or the cap is reached.
fn eject(balanced: &Balanced, endpoint: &EndpointHealth, index: usize, policy: &OutlierPolicy) {
    if endpoint.is_ejected() || !room_to_eject(&balanced.states, policy) {
        return;
    }
    let times = endpoint.ejections.fetch_add(1, Ordering::Relaxed) + 1;
    let out = policy
        .base_ejection
        .saturating_mul(times)
        .min(policy.max_ejection);
    let until = now_ms().saturating_add(u64::try_from(out.as_millis()).unwrap_or(u64::MAX));
    endpoint.ejected_until.store(until, Ordering::Relaxed);
    balanced
        .cluster
        .ejected_until
        .fetch_max(until, Ordering::Relaxed);
    endpoint.consecutive_5xx.store(0, Ordering::Relaxed);
    endpoint.consecutive_gateway.store(0, Ordering::Relaxed);
    endpoint.consecutive_local.store(0, Ordering::Relaxed);
    tracing::debug!(endpoint = index, ejected_for = ?out, "outlier ejected");
}

/// The clock (for [`EndpointHealth::is_ejected_at`]) while an ejection in
/// the cluster may last; `None` otherwise. One atomic load when nothing was
/// ejected: the mark is cleared once the last ejection has ended, so
/// balancing reads the clock and looks at endpoints only during ejections.
pub fn ejection_clock(cluster: &ClusterState) -> Option<u64> {
    let until = cluster.ejected_until.load(Ordering::Relaxed);
    if until == 0 {
        return None;
    }
    let now = now_ms();
    if until > now {
        return Some(now);
    }
    // A later ejection may have raised the mark meanwhile: then it stays.
    let _ = cluster
        .ejected_until
        .compare_exchange(until, 0, Ordering::Relaxed, Ordering::Relaxed);
    None
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

    fn endpoints(n: u16) -> Balanced {
        use crate::config::endpoint::{Endpoint, EndpointSet};
        let endpoints = (0..n)
            .map(|i| Endpoint {
                address: std::net::SocketAddr::from(([127, 0, 0, 1], 9000 + i)),
                weight: 1,
                mesh_tls: false,
                tunnel: false,
            })
            .collect();
        Balanced::fresh(EndpointSet::new(endpoints))
    }

    #[test]
    fn consecutive_errors_eject_and_a_success_resets_the_count() {
        let health = endpoints(2);
        let policy = OutlierPolicy::after_5xx(3, 50);
        record(&health, 0, &policy, Attempt::Status(503));
        record(&health, 0, &policy, Attempt::Status(503));
        record(&health, 0, &policy, Attempt::Status(200));
        record(&health, 0, &policy, Attempt::Status(500));
        record(&health, 0, &policy, Attempt::Failed);
        assert!(
            !health.states[0].health.is_ejected(),
            "the success reset the count"
        );
        record(&health, 0, &policy, Attempt::Status(502));
        assert!(health.states[0].health.is_ejected());
        // The cap: half of two endpoints is one, already out.
        for _ in 0..3 {
            record(&health, 1, &policy, Attempt::Status(500));
        }
        assert!(
            !health.states[1].health.is_ejected(),
            "max_ejection_percent holds"
        );
    }

    /// Split off, failures to connect count only against the local-origin
    /// limit, and answers only against the 5xx one.
    #[test]
    fn local_origin_failures_are_counted_apart_when_split() {
        let health = endpoints(4);
        let mut policy = OutlierPolicy::after_5xx(2, 100);
        policy.local_origin = Some(LocalOrigin {
            consecutive: Some(3),
        });
        record(&health, 0, &policy, Attempt::Failed);
        record(&health, 0, &policy, Attempt::Failed);
        assert!(
            !health.states[0].health.is_ejected(),
            "two connect failures are not two 5xx"
        );
        record(&health, 0, &policy, Attempt::Failed);
        assert!(
            health.states[0].health.is_ejected(),
            "the third local-origin failure"
        );
        // An answer resets the local count; 5xx answers count on their own.
        record(&health, 1, &policy, Attempt::Failed);
        record(&health, 1, &policy, Attempt::Failed);
        record(&health, 1, &policy, Attempt::Status(503));
        record(&health, 1, &policy, Attempt::Failed);
        record(&health, 1, &policy, Attempt::Failed);
        assert!(
            !health.states[1].health.is_ejected(),
            "the answer reset the local count"
        );
        record(&health, 1, &policy, Attempt::Status(500));
        assert!(
            health.states[1].health.is_ejected(),
            "two 5xx answers in a row"
        );
        // A connection had is a local-origin success, whatever came of the
        // request: resets and timeouts after connecting never add up.
        for _ in 0..5 {
            record(&health, 2, &policy, Attempt::Reached);
            record(&health, 2, &policy, Attempt::Failed);
        }
        assert!(!health.states[2].health.is_ejected());
    }

    #[test]
    fn the_clusters_ejection_mark_clears_once_ejections_end() {
        let health = endpoints(2);
        assert_eq!(ejection_clock(&health.cluster), None);
        let mut policy = OutlierPolicy::after_5xx(1, 100);
        policy.base_ejection = Duration::from_millis(30);
        record(&health, 0, &policy, Attempt::Status(500));
        assert!(ejection_clock(&health.cluster).is_some());
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(ejection_clock(&health.cluster), None);
        assert_eq!(
            health.cluster.ejected_until.load(Ordering::Relaxed),
            0,
            "cleared"
        );
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
        assert_eq!(p.local_origin, None);
        assert!(
            policy(&OutlierDetection {
                split_external_local_origin_errors: true,
                ..istio.clone()
            })
            .is_err(),
            "local-origin success rate by default"
        );
        let split = policy(&OutlierDetection {
            split_external_local_origin_errors: true,
            enforcing_local_origin_success_rate: Some(
                envoy_types::pb::google::protobuf::UInt32Value { value: 0 },
            ),
            ..istio.clone()
        })
        .expect("split");
        assert_eq!(
            split.local_origin,
            Some(LocalOrigin {
                consecutive: Some(5)
            })
        );
        assert!(
            policy(&OutlierDetection::default()).is_err(),
            "success rate by default"
        );
    }
}

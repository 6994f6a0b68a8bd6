//! Leader election on a `coordination.k8s.io/v1` Lease, as client-go's leader
//! election does it: the holder renews `renewTime` every few seconds; anyone
//! may take a Lease whose `renewTime` is older than its duration. Writes to the
//! Lease carry its resourceVersion, so two candidates never both win. Only the
//! leader writes to the cluster (the root-certificate ConfigMaps); every replica
//! serves.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::sync::watch;

/// How long a Lease holds without renewal (client-go's default).
const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How often the Lease is looked at and, when held, renewed.
const RETRY_PERIOD: Duration = Duration::from_secs(2);
/// A leader that cannot renew for this long stops acting as one, before anyone
/// else may take the Lease.
const RENEW_DEADLINE: Duration = Duration::from_secs(10);

/// This candidate's name: the pod (or host) and a random part, so two
/// control planes never take each other for themselves.
pub fn identity() -> String {
    use std::hash::{BuildHasher, Hasher};
    let host = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "oxmesh".to_owned());
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    format!("{host}_{random:016x}")
}

pub struct Election {
    leases: Api<Lease>,
    name: String,
    identity: String,
    /// The other holder's record as last seen, and when it was first seen so
    /// on this clock.
    observed: Option<(String, tokio::time::Instant)>,
}

impl Election {
    pub fn new(client: kube::Client, namespace: &str, name: &str, identity: String) -> Self {
        Self {
            leases: Api::namespaced(client, namespace),
            name: name.to_owned(),
            identity,
            observed: None,
        }
    }

    /// Campaigns until nobody watches the result; `true` while this process leads.
    pub fn run(mut self) -> watch::Receiver<bool> {
        let (leading, receiver) = watch::channel(false);
        tokio::spawn(async move {
            let mut renewed = None;
            while !leading.is_closed() {
                let started = tokio::time::Instant::now();
                match tokio::time::timeout(RETRY_PERIOD, self.try_hold()).await {
                    Ok(Ok(true)) => renewed = Some(started),
                    Ok(Ok(false)) => renewed = None,
                    Ok(Err(e)) => {
                        tracing::debug!(lease = %self.name, error = %e, "cannot reach the Lease");
                    }
                    Err(_) => tracing::debug!(lease = %self.name, "the Lease call hung"),
                }
                // Judged after the call: a slow call counts against the deadline.
                let now = tokio::time::Instant::now();
                let leads = renewed.is_some_and(|at| now.duration_since(at) < RENEW_DEADLINE);
                leading.send_if_modified(|was| {
                    if *was != leads {
                        tracing::info!(lease = %self.name, identity = %self.identity, leads, "leadership changed");
                        *was = leads;
                        return true;
                    }
                    false
                });
                tokio::time::sleep(RETRY_PERIOD).await;
            }
        });
        receiver
    }

    /// One round: takes or renews the Lease when it may. `Ok(true)` when held.
    async fn try_hold(&mut self) -> Result<bool, kube::Error> {
        let now = MicroTime(Timestamp::now());
        let Some(mut lease) = self.leases.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec(now.clone(), now, 0)),
            };
            return conflict_is_false(self.leases.create(&PostParams::default(), &lease).await);
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.as_deref().unwrap_or_default();
        let spec = if holder == self.identity {
            LeaseSpec {
                renew_time: Some(now),
                ..spec
            }
        } else if holder.is_empty() || self.expired(&spec) {
            let transitions = spec.lease_transitions.unwrap_or(0) + 1;
            self.spec(now.clone(), now, transitions)
        } else {
            return Ok(false);
        };
        lease.spec = Some(spec);
        // The resourceVersion read above makes this a compare-and-swap.
        conflict_is_false(
            self.leases
                .replace(&self.name, &PostParams::default(), &lease)
                .await,
        )
    }

    /// Whether the holder's record has stayed the same for the Lease's
    /// duration, on this process's clock.
    fn expired(&mut self, spec: &LeaseSpec) -> bool {
        let record = format!(
            "{}/{:?}",
            spec.holder_identity.as_deref().unwrap_or_default(),
            spec.renew_time.as_ref().map(|t| t.0)
        );
        let now = tokio::time::Instant::now();
        let since = match &self.observed {
            Some((seen, at)) if *seen == record => *at,
            _ => {
                self.observed = Some((record, now));
                now
            }
        };
        let duration = spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map_or(LEASE_DURATION, Duration::from_secs);
        now.duration_since(since) > duration
    }

    fn spec(&self, acquired: MicroTime, renewed: MicroTime, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(LEASE_DURATION.as_secs() as i32),
            acquire_time: Some(acquired),
            renew_time: Some(renewed),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }
}

/// Another candidate wrote first: not held, and not an error.
fn conflict_is_false(result: Result<Lease, kube::Error>) -> Result<bool, kube::Error> {
    match result {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

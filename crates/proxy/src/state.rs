//! The upstreams' runtime state, apart from their config: per cluster the
//! balancer's turn, per endpoint its requests in flight and its outlier record.
//!
//! Config arrives as plain data in each snapshot and is replaced whole by a
//! push; this state is kept by cluster and endpoint address and carries over.
//! An EDS update that keeps an endpoint keeps its ejection and its in-flight
//! count, so a pod starting elsewhere never resets outlier detection. Only the
//! agent (on a push) takes the lock here; the data path reads the per-endpoint
//! state through [`Balanced`], which lines it up with the endpoints it serves.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::breaker::Load;
use crate::config::ClusterName;
use crate::config::endpoint::EndpointSet;
use crate::outlier::EndpointHealth;

/// One endpoint's runtime record.
#[derive(Debug, Default)]
pub struct EndpointState {
    /// Requests in flight, for LEAST_REQUEST.
    pub active: AtomicU32,
    /// Outlier detection's record.
    pub health: EndpointHealth,
}

/// One cluster's runtime record.
#[derive(Debug, Default)]
pub struct ClusterState {
    /// Next turn for ROUND_ROBIN.
    pub cursor: AtomicUsize,
    /// The latest end of an ejection of its endpoints (outlier detection's
    /// clock, ms): before it, balancing looks at each endpoint's health.
    pub ejected_until: std::sync::atomic::AtomicU64,
    /// Every endpoint the current config names, by address. Only pushes touch it.
    endpoints: Mutex<HashMap<SocketAddr, Arc<EndpointState>>>,
}

/// Endpoints as the data path balances them: the config's set and, in the same
/// order, each endpoint's state (shared with earlier sets that had the address).
#[derive(Debug)]
pub struct Balanced {
    pub set: Arc<EndpointSet>,
    pub states: Box<[Arc<EndpointState>]>,
    pub cluster: Arc<ClusterState>,
}

impl Balanced {
    /// A set whose state starts fresh and is kept by nobody else (static and
    /// DNS clusters).
    pub fn fresh(set: EndpointSet) -> Self {
        let states = set.endpoints.iter().map(|_| Arc::default()).collect();
        Self {
            set: Arc::new(set),
            states,
            cluster: Arc::default(),
        }
    }

    /// `set` in place of this one's endpoints: addresses that stay keep
    /// their state, and the cluster its turn.
    pub fn carried_over(&self, set: EndpointSet) -> Self {
        let states = set
            .endpoints
            .iter()
            .map(|e| {
                self.set
                    .endpoints
                    .iter()
                    .position(|old| old.address == e.address)
                    .and_then(|i| self.states.get(i).cloned())
                    .unwrap_or_default()
            })
            .collect();
        Self {
            set: Arc::new(set),
            states,
            cluster: self.cluster.clone(),
        }
    }

    pub fn len(&self) -> usize {
        self.set.endpoints.len()
    }

    pub fn is_empty(&self) -> bool {
        self.set.endpoints.is_empty()
    }
}

/// The state of every cluster that has endpoints by EDS, by EDS name; and
/// every cluster's circuit-breaker counts, by cluster name.
#[derive(Debug, Default)]
pub struct Upstreams {
    clusters: Mutex<HashMap<String, Arc<ClusterState>>>,
    loads: Mutex<HashMap<ClusterName, Arc<Load>>>,
}

impl Upstreams {
    /// Lines `set`, the new endpoints of `name`, up with the state of the
    /// endpoints it keeps; endpoints it drops lose theirs.
    pub fn attach(&self, name: &str, set: EndpointSet) -> Balanced {
        let cluster = {
            let mut clusters = self.clusters.lock().unwrap_or_else(|e| e.into_inner());
            clusters.entry(name.to_owned()).or_default().clone()
        };
        let states = {
            let mut known = cluster.endpoints.lock().unwrap_or_else(|e| e.into_inner());
            let states: Box<[Arc<EndpointState>]> = set
                .endpoints
                .iter()
                .map(|e| known.get(&e.address).cloned().unwrap_or_default())
                .collect();
            *known = set
                .endpoints
                .iter()
                .zip(states.iter())
                .map(|(e, s)| (e.address, s.clone()))
                .collect();
            states
        };
        Balanced {
            set: Arc::new(set),
            states,
            cluster,
        }
    }

    /// Forgets the clusters no longer subscribed to.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        let mut clusters = self.clusters.lock().unwrap_or_else(|e| e.into_inner());
        clusters.retain(|name, _| keep(name));
    }

    /// What the circuit breakers of cluster `name` count, kept from its
    /// earlier versions.
    pub fn load(&self, name: &ClusterName) -> Arc<Load> {
        let mut loads = self.loads.lock().unwrap_or_else(|e| e.into_inner());
        loads.entry(name.clone()).or_default().clone()
    }

    /// Forgets the loads of clusters no longer configured (what is still
    /// open on them keeps its own handle).
    pub fn retain_loads(&self, keep: impl Fn(&ClusterName) -> bool) {
        let mut loads = self.loads.lock().unwrap_or_else(|e| e.into_inner());
        loads.retain(|name, _| keep(name));
    }
}

/// Keeps an endpoint's in-flight count for as long as a request uses it.
pub struct InFlight(Arc<EndpointState>);

impl InFlight {
    pub fn start(state: &Arc<EndpointState>) -> Self {
        state.active.fetch_add(1, Ordering::Relaxed);
        Self(state.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::endpoint::Endpoint;

    fn set(last_octets: &[u8]) -> EndpointSet {
        EndpointSet::new(
            last_octets
                .iter()
                .map(|n| Endpoint {
                    address: SocketAddr::from(([198, 18, 0, *n], 80)),
                    weight: 1,
                    mesh_tls: false,
                    tunnel: false,
                })
                .collect(),
        )
    }

    #[test]
    fn kept_endpoints_keep_their_state_and_dropped_ones_lose_it() {
        let upstreams = Upstreams::default();
        let first = upstreams.attach("reviews", set(&[1, 2]));
        let _busy = InFlight::start(&first.states[1]);
        first.cluster.cursor.store(7, Ordering::Relaxed);
        // .2 stays (now first), .1 goes, .3 arrives.
        let second = upstreams.attach("reviews", set(&[2, 3]));
        assert!(Arc::ptr_eq(&second.states[0], &first.states[1]));
        assert_eq!(second.states[0].active.load(Ordering::Relaxed), 1);
        assert_eq!(second.states[1].active.load(Ordering::Relaxed), 0);
        assert_eq!(second.cluster.cursor.load(Ordering::Relaxed), 7);
        // .1 comes back: as a new endpoint, with a fresh record.
        let third = upstreams.attach("reviews", set(&[1, 2, 3]));
        assert!(!Arc::ptr_eq(&third.states[0], &first.states[0]));
        assert!(Arc::ptr_eq(&third.states[1], &first.states[1]));
    }

    #[test]
    fn a_carried_over_set_keeps_the_state_of_addresses_that_stay() {
        let first = Balanced::fresh(set(&[1, 2]));
        let _busy = InFlight::start(&first.states[1]);
        let next = first.carried_over(set(&[2, 3]));
        assert!(Arc::ptr_eq(&next.states[0], &first.states[1]));
        assert_eq!(next.states[1].active.load(Ordering::Relaxed), 0);
        assert!(Arc::ptr_eq(&next.cluster, &first.cluster));
    }

    #[test]
    fn forgotten_clusters_start_over() {
        let upstreams = Upstreams::default();
        let first = upstreams.attach("a", set(&[1]));
        upstreams.retain(|name| name != "a");
        let again = upstreams.attach("a", set(&[1]));
        assert!(!Arc::ptr_eq(&again.states[0], &first.states[0]));
    }
}

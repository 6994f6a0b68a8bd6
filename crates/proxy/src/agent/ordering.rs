//! Make before break, whatever order a push arrives in. Istio sends clusters,
//! then endpoints, listeners and routes, but a proxy asks for a new cluster's
//! endpoints only once it has the cluster, so a route to a subset added in the
//! same change arrives before that subset has endpoints; and a subset removed
//! together with the route to it goes with the clusters, before the routes
//! change. Envoy answers both windows with 503s (`NC`, `UH`), which is why
//! Istio's docs ask users to add a subset, wait, then route to it. This proxy
//! closes both windows instead, each for at most [`GRACE`]:
//! - a route configuration that replaces one already serving and names an EDS
//!   cluster with no endpoints yet waits (the one serving stays) until they
//!   arrive; a configuration for a name not serving yet applies at once,
//!   since nothing would serve meanwhile;
//! - a cluster the control plane stopped sending stays while a route serving
//!   or waiting still names it.
//!
//! After [`GRACE`] the push applies as sent, as Envoy's would.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::config::route::v3::route::Action as RouteActionKind;
use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
use envoy_types::pb::google::protobuf::Any;
use oxmesh_xds::ads::types;
use tokio::time::Instant;

use crate::config::cluster::Discovery;
use crate::config::listener::{NetworkFilter, RouteSource};
use crate::config::route::{Action, RouteTable, Target};
use crate::config::{ClusterName, Snapshot};

/// How long a push may wait for its other half.
pub(super) const GRACE: Duration = Duration::from_secs(5);

/// A route configuration as received, with its wire form.
pub(super) type Received = (RouteConfiguration, Arc<Any>);

#[derive(Default)]
pub(super) struct Ordering {
    /// Route configurations waiting for endpoints, by name, and until when.
    waiting: HashMap<String, (Received, Instant)>,
    /// Clusters kept after the control plane dropped them, and until when.
    kept: HashMap<ClusterName, Instant>,
}

impl Ordering {
    /// Of the configurations an RDS response holds, those to apply now; the
    /// others wait. A newer version of a waiting one takes its place (keeping
    /// the first deadline, so a stream of pushes cannot hold it for ever).
    pub(super) fn admit(
        &mut self,
        snapshot: &Snapshot,
        received: Vec<Received>,
        now: Instant,
    ) -> Vec<Received> {
        let mut now_apply = Vec::new();
        for (config, any) in received {
            let serving = snapshot.routes.contains_key(&config.name);
            if serving && !cold_clusters(snapshot, &config).is_empty() {
                let until = self
                    .waiting
                    .get(&config.name)
                    .map_or(now + GRACE, |(_, until)| *until);
                self.waiting
                    .insert(config.name.clone(), ((config, any), until));
            } else {
                self.waiting.remove(&config.name);
                now_apply.push((config, any));
            }
        }
        now_apply
    }

    /// Waiting configurations whose clusters have their endpoints now, or
    /// whose time is up.
    pub(super) fn due(&mut self, snapshot: &Snapshot, now: Instant) -> Vec<Received> {
        let ready: Vec<String> = self
            .waiting
            .iter()
            .filter(|(_, ((config, _), until))| {
                now >= *until || cold_clusters(snapshot, config).is_empty()
            })
            .map(|(name, _)| name.clone())
            .collect();
        let mut due = Vec::new();
        for name in ready {
            if let Some(((config, any), until)) = self.waiting.remove(&name) {
                if now >= until {
                    tracing::warn!(routes = %name, clusters = ?cold_clusters(snapshot, &config), "no endpoints arrived in time; applying the routes that name them");
                }
                due.push((config, any));
            }
        }
        due
    }

    /// When the next waiting configuration or kept cluster runs out of time.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.waiting
            .values()
            .map(|(_, until)| *until)
            .chain(self.kept.values().copied())
            .min()
    }

    /// Drops what waits for subscriptions that are gone.
    pub(super) fn forget_routes(&mut self, subscribed: &[String]) {
        self.waiting.retain(|name, _| subscribed.contains(name));
    }

    /// After a CDS update: a cluster `next` lost that a route serving or
    /// waiting still names comes back from `previous`, for a while.
    pub(super) fn keep_named(&mut self, previous: &Snapshot, next: &mut Snapshot, now: Instant) {
        let mut named = named(previous);
        for ((config, _), _) in self.waiting.values() {
            named.extend(
                wire_clusters(config)
                    .into_iter()
                    .map(|n| ClusterName::new(&n)),
            );
        }
        for (name, cluster) in &previous.clusters {
            if !next.clusters.contains_key(name) && named.contains(name) {
                let until = *self.kept.entry(name.clone()).or_insert(now + GRACE);
                if now < until {
                    next.clusters.insert(name.clone(), cluster.clone());
                }
            }
        }
        self.kept.retain(|name, _| next.clusters.contains_key(name));
    }

    /// Kept clusters that nothing names any more, or whose time is up, go.
    /// Returns whether any did (the EDS subscription shrinks).
    pub(super) fn drop_kept(&mut self, next: &mut Snapshot, now: Instant) -> bool {
        let served: HashSet<String> = next
            .raw
            .get(types::CLUSTER)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        let named = named(next);
        let before = next.clusters.len();
        next.clusters.retain(|name, _| {
            served.contains(name.as_str())
                || (named.contains(name) && self.kept.get(name).is_some_and(|until| now < *until))
        });
        self.kept.retain(|name, _| next.clusters.contains_key(name));
        next.clusters.len() != before
    }
}

/// The EDS clusters `config` names whose endpoints have not arrived yet.
fn cold_clusters(snapshot: &Snapshot, config: &RouteConfiguration) -> Vec<String> {
    let mut cold: Vec<String> = wire_clusters(config)
        .into_iter()
        .filter(|name| {
            snapshot.cluster_named(name).is_some_and(|c| {
                matches!(&c.discovery, Discovery::Eds(eds) if !snapshot.endpoints.contains_key(eds))
            })
        })
        .collect();
    cold.sort();
    cold.dedup();
    cold
}

/// The clusters a route configuration names, as sent.
fn wire_clusters(config: &RouteConfiguration) -> Vec<String> {
    let mut names = Vec::new();
    for route in config.virtual_hosts.iter().flat_map(|v| &v.routes) {
        let Some(RouteActionKind::Route(action)) = &route.action else {
            continue;
        };
        match &action.cluster_specifier {
            Some(ClusterSpecifier::Cluster(name)) => names.push(name.clone()),
            Some(ClusterSpecifier::WeightedClusters(w)) => {
                names.extend(w.clusters.iter().map(|c| c.name.clone()));
            }
            _ => {}
        }
        names.extend(
            action
                .request_mirror_policies
                .iter()
                .map(|m| m.cluster.clone())
                .filter(|name| !name.is_empty()),
        );
    }
    names
}

/// Every cluster the snapshot's routes and TCP chains send traffic to.
fn named(snapshot: &Snapshot) -> HashSet<ClusterName> {
    let mut names = HashSet::new();
    for table in snapshot.routes.values() {
        table_clusters(table, &mut names);
    }
    let chains = snapshot
        .listeners
        .values()
        .flat_map(|l| l.chains.iter().chain(l.default_chain.iter()));
    for chain in chains {
        match &chain.filter {
            NetworkFilter::Http(manager) => {
                if let RouteSource::Inline(table) = &manager.routes {
                    table_clusters(table, &mut names);
                }
            }
            NetworkFilter::Tcp(route) => {
                names.extend(route.clusters().cloned());
            }
        }
    }
    names
}

fn table_clusters(table: &RouteTable, names: &mut HashSet<ClusterName>) {
    for route in table.virtual_hosts.iter().flat_map(|v| &v.routes) {
        if let Action::Forward(forward) = &route.action {
            match &forward.target {
                Target::Cluster(name) => {
                    names.insert(name.clone());
                }
                Target::Weighted(clusters, _) => {
                    names.extend(clusters.iter().map(|c| c.name.clone()));
                }
            }
            names.extend(forward.mirrors.iter().map(|m| m.cluster.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use envoy_types::pb::envoy::config::cluster::v3::Cluster as EnvoyCluster;
    use envoy_types::pb::envoy::config::cluster::v3::cluster::{
        ClusterDiscoveryType, DiscoveryType, EdsClusterConfig,
    };
    use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
    use envoy_types::pb::envoy::config::route::v3::{
        Route, RouteAction, RouteMatch, VirtualHost, route,
    };

    use super::*;
    use crate::config::endpoint::EndpointSet;
    use crate::state::Balanced;

    fn eds_cluster(name: &str) -> Arc<crate::config::Cluster> {
        let cluster = EnvoyCluster {
            name: name.to_owned(),
            cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
            eds_cluster_config: Some(EdsClusterConfig::default()),
            ..Default::default()
        };
        Arc::new(crate::config::cluster::convert(&cluster).expect("converts"))
    }

    fn routes_to(name: &str, cluster: &str) -> Received {
        let config = RouteConfiguration {
            name: name.to_owned(),
            virtual_hosts: vec![VirtualHost {
                name: "all".to_owned(),
                domains: vec!["*".to_owned()],
                routes: vec![Route {
                    r#match: Some(RouteMatch {
                        path_specifier: Some(PathSpecifier::Prefix("/".to_owned())),
                        ..Default::default()
                    }),
                    action: Some(route::Action::Route(RouteAction {
                        cluster_specifier: Some(ClusterSpecifier::Cluster(cluster.to_owned())),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        (config, Arc::new(Any::default()))
    }

    /// A snapshot serving routes `80` to cluster `old` (with endpoints), and
    /// knowing cluster `new` (without).
    fn snapshot() -> Snapshot {
        let mut s = Snapshot::default();
        for name in ["old", "new"] {
            s.clusters.insert(ClusterName::new(name), eds_cluster(name));
        }
        s.endpoints.insert(
            "old".to_owned(),
            Arc::new(Balanced::fresh(EndpointSet::default())),
        );
        let (config, _) = routes_to("80", "old");
        s.routes.insert(
            "80".to_owned(),
            Arc::new(crate::config::route::convert(&config).expect("converts")),
        );
        let served = ["old", "new"].map(|n| (n.to_owned(), Arc::new(Any::default())));
        s.raw
            .insert(types::CLUSTER.to_owned(), BTreeMap::from(served));
        s
    }

    /// `snapshot()` after a CDS update without cluster `old`.
    fn without_old() -> Snapshot {
        let mut next = snapshot();
        next.clusters.remove(&ClusterName::new("old"));
        if let Some(raw) = next.raw.get_mut(types::CLUSTER) {
            raw.remove("old");
        }
        next
    }

    #[tokio::test(start_paused = true)]
    async fn routes_to_a_cold_cluster_wait_for_its_endpoints_or_their_time() {
        let mut ordering = Ordering::default();
        let mut s = snapshot();
        let now = Instant::now();
        let applied = ordering.admit(&s, vec![routes_to("80", "new")], now);
        assert!(applied.is_empty(), "the serving routes stay");
        // A route name not serving yet applies at once: nothing else would.
        let applied = ordering.admit(&s, vec![routes_to("81", "new")], now);
        assert_eq!(applied.len(), 1);
        assert!(ordering.due(&s, now).is_empty());
        // A newer version keeps the first deadline.
        ordering.admit(&s, vec![routes_to("80", "new")], now + GRACE / 2);
        assert_eq!(ordering.next_deadline(), Some(now + GRACE));
        // The endpoints arrive: due.
        s.endpoints.insert(
            "new".to_owned(),
            Arc::new(Balanced::fresh(EndpointSet::default())),
        );
        assert_eq!(ordering.due(&s, now + Duration::from_millis(10)).len(), 1);
        // Or never: due at the deadline all the same.
        s.endpoints.remove("new");
        ordering.admit(&s, vec![routes_to("80", "new")], now);
        assert!(ordering.due(&s, now + GRACE / 2).is_empty());
        assert_eq!(ordering.due(&s, now + GRACE).len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_newer_warm_version_replaces_a_waiting_one() {
        let mut ordering = Ordering::default();
        let s = snapshot();
        let now = Instant::now();
        ordering.admit(&s, vec![routes_to("80", "new")], now);
        let applied = ordering.admit(&s, vec![routes_to("80", "old")], now);
        assert_eq!(applied.len(), 1, "the newer one applies");
        assert!(
            ordering.due(&s, now + GRACE).is_empty(),
            "the older one never comes back over it"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_cluster_stays_while_named_and_for_a_while_only() {
        let mut ordering = Ordering::default();
        let previous = snapshot();
        let mut next = without_old();
        let now = Instant::now();
        ordering.keep_named(&previous, &mut next, now);
        assert!(
            next.cluster_named("old").is_some(),
            "the serving routes name it"
        );
        assert!(!ordering.drop_kept(&mut next, now + GRACE / 2));
        assert!(next.cluster_named("old").is_some());
        assert!(ordering.drop_kept(&mut next, now + GRACE), "its time is up");
        assert!(next.cluster_named("old").is_none());
        // Not named at all: not kept.
        let mut unnamed = snapshot();
        unnamed.routes.clear();
        let mut next = without_old();
        let mut ordering = Ordering::default();
        ordering.keep_named(&unnamed, &mut next, now);
        assert!(next.cluster_named("old").is_none());
    }
}

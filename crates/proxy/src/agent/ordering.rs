//! Make before break, whatever order a push arrives in. Istio sends clusters,
//! then endpoints, listeners and routes, but a proxy asks for a new cluster's
//! endpoints only once it has the cluster, so a route to a subset added in the
//! same change arrives before that subset has endpoints; and a subset removed
//! together with the route to it goes with the clusters, before the routes
//! change. Envoy answers both windows with 503s (`NC`, `UH`), which is why
//! Istio's docs ask users to add a subset, wait, then route to it. This proxy
//! closes both windows instead:
//! - routes that name an EDS cluster with no endpoints yet wait (the previous
//!   routes keep serving) until its endpoints arrive, at most
//!   [`WARMING_TIMEOUT`], as Envoy's cluster warming would have it;
//! - a cluster the control plane stopped sending stays while a route or a TCP
//!   chain still names it, and goes with the push that stops naming it.

use std::collections::HashSet;
use std::time::Duration;

use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::config::route::v3::route::Action as RouteActionKind;
use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
use oxmesh_xds::ads::types;
use prost::Message;

use crate::config::cluster::Discovery;
use crate::config::listener::{NetworkFilter, RouteSource};
use crate::config::route::{Action, RouteTable, Target};
use crate::config::{ClusterName, Snapshot};

/// How long new routes wait for the endpoints of the clusters they name.
pub(super) const WARMING_TIMEOUT: Duration = Duration::from_secs(5);

/// The EDS clusters the routes of `response` name whose endpoints have not
/// arrived yet.
pub(super) fn cold_clusters(snapshot: &Snapshot, response: &DiscoveryResponse) -> Vec<String> {
    let mut cold: Vec<String> = response
        .resources
        .iter()
        .filter_map(|any| RouteConfiguration::decode(any.value.as_slice()).ok())
        .flat_map(|rc| wire_clusters(&rc))
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
fn wire_clusters(rc: &RouteConfiguration) -> Vec<String> {
    let mut names = Vec::new();
    for route in rc.virtual_hosts.iter().flat_map(|v| &v.routes) {
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
                names.insert(route.cluster.clone());
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
                    names.extend(clusters.iter().map(|(name, _)| name.clone()));
                }
            }
        }
    }
}

/// After a CDS update: the clusters `next` lost that its routes still name
/// come back from `previous`.
pub(super) fn keep_named(previous: &Snapshot, next: &mut Snapshot) {
    let still_named = named(previous);
    for (name, cluster) in &previous.clusters {
        if !next.clusters.contains_key(name) && still_named.contains(name) {
            tracing::debug!(cluster = %name, "removed cluster kept while routes name it");
            next.clusters.insert(name.clone(), cluster.clone());
        }
    }
}

/// After routes or listeners change: clusters kept only because they were
/// named, and named no more, go.
pub(super) fn drop_unnamed(next: &mut Snapshot) {
    let served: HashSet<String> = next
        .raw
        .get(types::CLUSTER)
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    let still_named = named(next);
    next.clusters
        .retain(|name, _| served.contains(name.as_str()) || still_named.contains(name));
}

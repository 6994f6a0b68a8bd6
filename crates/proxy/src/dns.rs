//! DNS clusters (STRICT_DNS and LOGICAL_DNS, a ServiceEntry's `resolution:
//! DNS`): their hosts are resolved once when first needed and then in the
//! background every `dns_refresh_rate` (Envoy's default: 5 s), never per
//! request. A resolution that finds nothing keeps the last good addresses,
//! as Envoy keeps its hosts; addresses that stay keep their balancing and
//! outlier state. The refresher stops once no config holds the cluster.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;

use crate::config::endpoint::{Endpoint, EndpointSet};
use crate::state::Balanced;

/// Envoy's `dns_refresh_rate` when a cluster names none.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub struct DnsCluster {
    pub hosts: Vec<(String, u16)>,
    pub refresh: Duration,
    current: ArcSwapOption<Balanced>,
    refreshing: AtomicBool,
}

impl DnsCluster {
    pub fn new(hosts: Vec<(String, u16)>, refresh: Duration) -> Self {
        Self {
            hosts,
            refresh,
            current: ArcSwapOption::empty(),
            refreshing: AtomicBool::new(false),
        }
    }

    /// The endpoints as last resolved; the first call resolves (and starts
    /// the background refresh).
    pub async fn endpoints(self: &Arc<Self>) -> Arc<Balanced> {
        // One refresher per version of the cluster, started by its first use
        // (a version that took over its addresses from an earlier one starts
        // its own too).
        if !self.refreshing.load(Ordering::Acquire) && !self.refreshing.swap(true, Ordering::AcqRel)
        {
            tokio::spawn(refresh(Arc::downgrade(self), self.refresh));
        }
        if let Some(current) = self.current.load_full() {
            return current;
        }
        let balanced = Arc::new(Balanced::fresh(resolve(&self.hosts).await));
        self.current.store(Some(balanced.clone()));
        balanced
    }

    /// What the last resolution found; nothing before the cluster's first use.
    pub fn resolved(&self) -> Option<Arc<Balanced>> {
        self.current.load_full()
    }

    /// Takes over what an earlier version of the cluster resolved, when it
    /// names the same hosts (a push that keeps the cluster keeps its
    /// addresses and their state).
    pub fn continue_from(&self, earlier: &DnsCluster) {
        if earlier.hosts == self.hosts
            && let Some(current) = earlier.current.load_full()
        {
            self.current.store(Some(current));
        }
    }
}

/// Resolves again every `every` while the cluster is in some config.
async fn refresh(cluster: Weak<DnsCluster>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(dns) = cluster.upgrade() else {
            return;
        };
        let set = resolve(&dns.hosts).await;
        if set.endpoints.is_empty() {
            tracing::debug!(hosts = ?dns.hosts, "DNS found nothing: keeping the last addresses");
            continue;
        }
        let next = match dns.current.load_full() {
            Some(current) if same(&current.set, &set) => continue,
            Some(current) => current.carried_over(set),
            None => Balanced::fresh(set),
        };
        dns.current.store(Some(Arc::new(next)));
    }
}

fn same(a: &EndpointSet, b: &EndpointSet) -> bool {
    a.endpoints.len() == b.endpoints.len()
        && a.endpoints
            .iter()
            .zip(&b.endpoints)
            .all(|(x, y)| x.address == y.address)
}

async fn resolve(hosts: &[(String, u16)]) -> EndpointSet {
    let mut endpoints = Vec::new();
    for (host, port) in hosts {
        if let Ok(addrs) = tokio::net::lookup_host((host.as_str(), *port)).await {
            endpoints.extend(addrs.map(|address: SocketAddr| Endpoint {
                address,
                weight: 1,
                mesh_tls: false,
                tunnel: false,
            }));
        }
    }
    EndpointSet::new(endpoints)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn literal(last_octet: u8) -> Vec<(String, u16)> {
        vec![(format!("127.0.0.{last_octet}"), 80)]
    }

    #[tokio::test]
    async fn resolved_once_then_served_from_what_was_resolved() {
        let dns = Arc::new(DnsCluster::new(literal(1), DEFAULT_REFRESH));
        let first = dns.endpoints().await;
        assert_eq!(
            first.set.endpoints[0].address,
            SocketAddr::from(([127, 0, 0, 1], 80))
        );
        assert!(
            Arc::ptr_eq(&first, &dns.endpoints().await),
            "no resolution per request"
        );
        // A pushed version naming the same hosts carries on with the same
        // addresses and state; one naming others resolves its own.
        let same = Arc::new(DnsCluster::new(literal(1), DEFAULT_REFRESH));
        same.continue_from(&dns);
        assert!(Arc::ptr_eq(&first, &same.endpoints().await));
        let other = Arc::new(DnsCluster::new(literal(2), DEFAULT_REFRESH));
        other.continue_from(&dns);
        assert!(!Arc::ptr_eq(&first, &other.endpoints().await));
    }
}

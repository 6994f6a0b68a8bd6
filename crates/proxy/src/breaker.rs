//! Circuit breakers, as Envoy's: per upstream cluster, limits on open
//! connections, requests waiting for a connection (pending), requests in
//! flight and retries in flight, shared by every worker. What overflows a
//! limit is refused at once (HTTP 503 with flag `UO`, a TCP connection
//! closed), never queued behind the limit.
//!
//! The limits are config ([`Limits`], replaced by a push); the counts are
//! state ([`Load`], kept per cluster name across pushes), so a lowered limit
//! applies to what is already open.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// Envoy's defaults for a cluster that names no thresholds.
const DEFAULT_LIMIT: u32 = 1024;
const DEFAULT_RETRIES: u32 = 3;

/// A cluster's thresholds (the default routing priority's).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limits {
    pub connections: u32,
    pub pending: u32,
    pub requests: u32,
    pub retries: Retries,
}

/// How many retries may be in flight.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Retries {
    /// `max_retries`.
    Fixed(u32),
    /// `retry_budget`: this percentage of the requests active and pending
    /// (with an `interval`, of the requests started within it), but never
    /// fewer than `min_concurrency`.
    Budget {
        percent: f64,
        min_concurrency: u32,
        interval: Option<Duration>,
    },
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            connections: DEFAULT_LIMIT,
            pending: DEFAULT_LIMIT,
            requests: DEFAULT_LIMIT,
            retries: Retries::Fixed(DEFAULT_RETRIES),
        }
    }
}

/// What a cluster has open now, counted by every worker.
#[derive(Debug, Default)]
pub struct Load {
    connections: AtomicU32,
    pending: AtomicU32,
    requests: AtomicU32,
    retries: AtomicU32,
    /// Requests started lately, counted only for a budget with an interval.
    started: Recent,
}

/// How many slices a budget interval is cut into: the count covers the
/// interval to within one slice.
const SLICES: u32 = 8;

/// Events within a sliding window, without a lock: the window is cut into
/// slices, and each cell holds one slice's number (high 32 bits) and its
/// count (low 32), so a cell whose slice has passed starts over.
#[derive(Debug)]
struct Recent {
    since: Instant,
    cells: [AtomicU64; SLICES as usize],
}

impl Default for Recent {
    fn default() -> Self {
        Self {
            since: Instant::now(),
            cells: Default::default(),
        }
    }
}

impl Recent {
    /// The number of the slice `now` falls in.
    fn slice(&self, now: Instant, window: Duration) -> u32 {
        let width = (window.as_nanos() / u128::from(SLICES)).max(1);
        // Wraps after 2^32 slices; counting compares slices by distance.
        (now.duration_since(self.since).as_nanos() / width) as u32
    }

    fn record(&self, now: Instant, window: Duration) {
        let slice = self.slice(now, window);
        let cell = &self.cells[(slice % SLICES) as usize];
        let _ = cell.fetch_update(Ordering::AcqRel, Ordering::Acquire, |packed| {
            let (number, count) = unpack(packed);
            let count = if number == slice {
                count.saturating_add(1)
            } else {
                1
            };
            Some(u64::from(slice) << 32 | u64::from(count))
        });
    }

    /// Events in the current slice and the seven before it: between 7/8 of
    /// `window` and all of it, depending on how far the current slice is.
    fn count(&self, now: Instant, window: Duration) -> u32 {
        let slice = self.slice(now, window);
        self.cells
            .iter()
            .map(|cell| unpack(cell.load(Ordering::Acquire)))
            .filter(|(number, _)| slice.wrapping_sub(*number) < SLICES)
            .fold(0u32, |sum, (_, count)| sum.saturating_add(count))
    }
}

fn unpack(packed: u64) -> (u32, u32) {
    ((packed >> 32) as u32, packed as u32)
}

/// The resources a limit counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resource {
    Connection,
    Pending,
    Request,
    Retry,
}

impl Resource {
    /// Envoy's overflow counter for the resource: `max_requests` overflows
    /// count as pending ones, as in Envoy.
    pub fn overflow_stat(self) -> &'static str {
        match self {
            Resource::Connection => "envoy_cluster_upstream_cx_overflow",
            Resource::Pending | Resource::Request => "envoy_cluster_upstream_rq_pending_overflow",
            Resource::Retry => "envoy_cluster_upstream_rq_retry_overflow",
        }
    }
}

/// One unit of a resource, given back when dropped.
#[derive(Debug)]
pub struct Slot {
    load: Arc<Load>,
    resource: Resource,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.load
            .counter(self.resource)
            .fetch_sub(1, Ordering::AcqRel);
    }
}

impl Load {
    fn counter(&self, resource: Resource) -> &AtomicU32 {
        match resource {
            Resource::Connection => &self.connections,
            Resource::Pending => &self.pending,
            Resource::Request => &self.requests,
            Resource::Retry => &self.retries,
        }
    }

    /// How many of `resource` are open now.
    pub fn open(&self, resource: Resource) -> u32 {
        self.counter(resource).load(Ordering::Acquire)
    }

    /// Whether one more `resource` fits under `limits` right now.
    pub fn fits(&self, limits: &Limits, resource: Resource) -> bool {
        self.open(resource) < limit(limits, self, resource)
    }

    /// One more `resource`, if it fits under `limits`.
    pub fn acquire(self: &Arc<Self>, limits: &Limits, resource: Resource) -> Option<Slot> {
        let max = limit(limits, self, resource);
        let counter = self.counter(resource);
        counter
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        if let (Resource::Request, Some(window)) = (resource, budget_interval(limits)) {
            self.started.record(Instant::now(), window);
        }
        Some(Slot {
            load: self.clone(),
            resource,
        })
    }

    /// One more `resource` whatever the limit: Envoy lets a worker's pool for
    /// an endpoint open its first connection even over `max_connections`.
    pub fn force(self: &Arc<Self>, resource: Resource) -> Slot {
        self.counter(resource).fetch_add(1, Ordering::AcqRel);
        Slot {
            load: self.clone(),
            resource,
        }
    }
}

fn limit(limits: &Limits, load: &Load, resource: Resource) -> u32 {
    match resource {
        Resource::Connection => limits.connections,
        Resource::Pending => limits.pending,
        Resource::Request => limits.requests,
        Resource::Retry => match limits.retries {
            Retries::Fixed(n) => n,
            Retries::Budget {
                percent,
                min_concurrency,
                interval,
            } => {
                let busy = match interval {
                    Some(window) => f64::from(load.started.count(Instant::now(), window)),
                    None => {
                        f64::from(load.open(Resource::Request))
                            + f64::from(load.open(Resource::Pending))
                    }
                };
                // Truncated as Envoy's budget is.
                let budget = (busy * percent / 100.0) as u32;
                budget.max(min_concurrency)
            }
        },
    }
}

/// A retry budget's interval, when it counts requests started within one.
fn budget_interval(limits: &Limits) -> Option<Duration> {
    match limits.retries {
        Retries::Budget { interval, .. } => interval,
        Retries::Fixed(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(connections: u32, pending: u32, requests: u32, retries: Retries) -> Limits {
        Limits {
            connections,
            pending,
            requests,
            retries,
        }
    }

    #[test]
    fn a_limit_admits_that_many_and_a_released_slot_admits_one_more() {
        let load = Arc::new(Load::default());
        let l = limits(2, 0, 0, Retries::Fixed(0));
        let a = load.acquire(&l, Resource::Connection).expect("first");
        let _b = load.acquire(&l, Resource::Connection).expect("second");
        assert!(load.acquire(&l, Resource::Connection).is_none());
        assert!(!load.fits(&l, Resource::Connection));
        drop(a);
        assert_eq!(load.open(Resource::Connection), 1);
        assert!(load.acquire(&l, Resource::Connection).is_some());
        // Nothing fits under a zero limit.
        assert!(load.acquire(&l, Resource::Pending).is_none());
    }

    #[test]
    fn a_lowered_limit_counts_what_is_already_open() {
        let load = Arc::new(Load::default());
        let wide = limits(10, 10, 10, Retries::Fixed(10));
        let _held: Vec<Slot> = (0..3)
            .filter_map(|_| load.acquire(&wide, Resource::Request))
            .collect();
        let narrow = limits(10, 10, 2, Retries::Fixed(10));
        assert!(load.acquire(&narrow, Resource::Request).is_none());
    }

    #[test]
    fn forced_slots_count_but_go_over_the_limit() {
        let load = Arc::new(Load::default());
        let l = limits(1, 1, 1, Retries::Fixed(1));
        let _one = load.acquire(&l, Resource::Connection).expect("first");
        let forced = load.force(Resource::Connection);
        assert_eq!(load.open(Resource::Connection), 2);
        drop(forced);
        assert_eq!(load.open(Resource::Connection), 1);
    }

    /// Only a retry budget: `percent`, at least one, over `interval`.
    fn budget(percent: f64, interval: Option<Duration>) -> Limits {
        limits(
            u32::MAX,
            u32::MAX,
            u32::MAX,
            Retries::Budget {
                percent,
                min_concurrency: 1,
                interval,
            },
        )
    }

    /// How many retries the budget lets in flight at once now.
    fn retries_granted(load: &Arc<Load>, budget: &Limits) -> usize {
        let held: Vec<Slot> = (0..20)
            .filter_map(|_| load.acquire(budget, Resource::Retry))
            .collect();
        held.len()
    }

    #[test]
    fn a_retry_budget_grows_with_the_requests_but_keeps_its_minimum() {
        let load = Arc::new(Load::default());
        let budget = budget(25.0, None);
        let first = load.acquire(&budget, Resource::Retry).expect("the minimum");
        assert!(load.acquire(&budget, Resource::Retry).is_none());
        drop(first);
        // 8 requests and 4 pending: a quarter of 12 is 3 retries.
        let _busy: Vec<Slot> = (0..8)
            .filter_map(|_| load.acquire(&budget, Resource::Request))
            .chain((0..4).filter_map(|_| load.acquire(&budget, Resource::Pending)))
            .collect();
        assert_eq!(retries_granted(&load, &budget), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_budget_interval_counts_the_requests_started_within_it() {
        let load = Arc::new(Load::default());
        let budget = budget(50.0, Some(Duration::from_secs(1)));
        // Ten requests come and go at once: half of them stays the budget
        // for the interval, though none is active.
        for _ in 0..10 {
            drop(load.acquire(&budget, Resource::Request));
        }
        assert_eq!(retries_granted(&load, &budget), 5);
        tokio::time::advance(Duration::from_millis(500)).await;
        for _ in 0..4 {
            drop(load.acquire(&budget, Resource::Request));
        }
        assert_eq!(
            retries_granted(&load, &budget),
            7,
            "fourteen started within the second"
        );
        // A second after the first ten, only the last four count.
        tokio::time::advance(Duration::from_millis(600)).await;
        assert_eq!(retries_granted(&load, &budget), 2);
        // Then none: the minimum.
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(retries_granted(&load, &budget), 1);
    }
}

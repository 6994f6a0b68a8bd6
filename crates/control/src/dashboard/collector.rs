//! Readings of every connected proxy's metrics for the dashboard when no
//! Prometheus is given: each proxy's `/stats/prometheus` on 15090, every
//! [`INTERVAL`], the last [`KEPT`] of readings kept. It runs only while
//! someone looks: the first request starts it, and it stops after
//! [`IDLE`] without one, so a mesh nobody watches is not scraped.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use oxmesh_xds::ads::status::StatusRegistry;

use super::traffic::Totals;

pub const INTERVAL: Duration = Duration::from_secs(5);
/// Ten minutes of readings: the drill-down's time range.
pub const KEPT: usize = 120;
pub const IDLE: Duration = Duration::from_secs(600);
/// The proxies' Prometheus port (Envoy's and Istio's 15090).
const STATS_PORT: u16 = 15090;
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_EXPOSITION: usize = 16 * 1024 * 1024;

/// Every proxy's totals at one moment.
#[derive(Debug)]
pub struct Reading {
    pub at: SystemTime,
    pub proxies: HashMap<String, Totals>,
}

impl Reading {
    /// The growth from `earlier` to this reading, all proxies together.
    pub fn since(&self, earlier: &Reading) -> Totals {
        let mut grown = Totals::default();
        for (proxy, totals) in &self.proxies {
            grown.merge(&totals.since(earlier.proxies.get(proxy)));
        }
        grown
    }

    pub fn seconds_since(&self, earlier: &Reading) -> f64 {
        self.at
            .duration_since(earlier.at)
            .map_or(0.0, |d| d.as_secs_f64())
    }
}

#[derive(Default)]
struct State {
    readings: VecDeque<Arc<Reading>>,
    wanted: Option<Instant>,
    running: bool,
}

pub struct Collector {
    status: StatusRegistry,
    state: Mutex<State>,
}

impl Collector {
    pub fn new(status: StatusRegistry) -> Arc<Self> {
        Arc::new(Self {
            status,
            state: Mutex::new(State::default()),
        })
    }

    /// Marks the readings as wanted, starting the scraping if it stopped.
    pub fn wanted(self: &Arc<Self>) {
        let mut state = self.lock();
        state.wanted = Some(Instant::now());
        if !state.running {
            state.running = true;
            tokio::spawn(self.clone().run());
        }
    }

    /// The readings, oldest first (shared, not copied: each holds every
    /// proxy's totals).
    pub fn readings(&self) -> Vec<Arc<Reading>> {
        self.lock().readings.iter().cloned().collect()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn run(self: Arc<Self>) {
        loop {
            let reading = self.read_all().await;
            {
                let mut state = self.lock();
                state.readings.push_back(Arc::new(reading));
                while state.readings.len() > KEPT {
                    state.readings.pop_front();
                }
                if state.wanted.is_none_or(|at| at.elapsed() > IDLE) {
                    // Nobody looked for a while: stop, and start afresh
                    // (the old readings would make a misleading first rate).
                    state.running = false;
                    state.readings.clear();
                    return;
                }
            }
            tokio::time::sleep(INTERVAL).await;
        }
    }

    /// One reading of every connected proxy, at once.
    async fn read_all(&self) -> Reading {
        let mut reads = tokio::task::JoinSet::new();
        for proxy in self.status.snapshot() {
            let Some(ip) = address(&proxy.node.id) else {
                continue;
            };
            reads.spawn(async move {
                let text = scrape(ip).await;
                (proxy.proxy, text)
            });
        }
        let mut proxies = HashMap::new();
        while let Some(done) = reads.join_next().await {
            match done {
                Ok((proxy, Ok(text))) => {
                    proxies.insert(proxy, Totals::read(&text));
                }
                Ok((proxy, Err(e))) => tracing::debug!(%proxy, error = %e, "dashboard: no metrics"),
                Err(e) => tracing::debug!(error = %e, "dashboard: a scrape failed"),
            }
        }
        Reading {
            at: SystemTime::now(),
            proxies,
        }
    }
}

/// The first address in an Istio proxy id (`sidecar~10.1.2.3~pod.ns~ns.svc.cluster.local`).
fn address(proxy: &str) -> Option<IpAddr> {
    proxy.split('~').nth(1)?.split(',').next()?.parse().ok()
}

async fn scrape(ip: IpAddr) -> Result<String, String> {
    let url = format!(
        "http://{}/stats/prometheus",
        std::net::SocketAddr::from((ip, STATS_PORT))
    );
    let body = crate::http_get::get_url(&url, "text/plain", MAX_EXPOSITION, SCRAPE_TIMEOUT).await?;
    String::from_utf8(body.to_vec()).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_address_comes_from_the_proxy_id() {
        assert_eq!(
            address("sidecar~198.18.0.11~reviews-v1-abc.default~default.svc.cluster.local"),
            Some("198.18.0.11".parse().expect("ip"))
        );
        assert_eq!(
            address("router~2001:2::4,198.18.0.4~gw.istio-system~istio-system.svc.cluster.local"),
            Some("2001:2::4".parse().expect("ip"))
        );
        assert_eq!(address("not-an-id"), None);
    }
}

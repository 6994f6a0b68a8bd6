//! Picking an endpoint: ROUND_ROBIN, LEAST_REQUEST (power of two choices on
//! requests in flight) and RANDOM, all weight-aware and lock-free. Endpoints a
//! retry already tried are avoided while others remain (Envoy's previous_hosts).

use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use crate::config::cluster::Balance;
use crate::config::endpoint::EndpointSet;

/// The index of the chosen endpoint, `None` when the set is empty.
pub fn pick(set: &EndpointSet, balance: Balance, tried: &[SocketAddr]) -> Option<usize> {
    let n = set.endpoints.len();
    if n == 0 {
        return None;
    }
    let fresh = |i: &usize| !tried.contains(&set.endpoints[*i].address);
    let weighted = set
        .endpoints
        .iter()
        .any(|e| e.weight != set.endpoints[0].weight);
    let choice = match balance {
        _ if weighted => weighted_random(set, &fresh),
        Balance::RoundRobin => {
            let start = set.cursor.fetch_add(1, Ordering::Relaxed);
            (0..n).map(|k| (start + k) % n).find(|i| fresh(i))
        }
        Balance::Random => {
            let start = random_below(n);
            (0..n).map(|k| (start + k) % n).find(|i| fresh(i))
        }
        Balance::LeastRequest => least_request(set, &fresh),
    };
    // Every endpoint tried already: retry on one anyway rather than fail.
    choice.or_else(|| Some(random_below(n)))
}

fn least_request(set: &EndpointSet, fresh: &dyn Fn(&usize) -> bool) -> Option<usize> {
    let candidates: Vec<usize> = (0..set.endpoints.len()).filter(|i| fresh(i)).collect();
    match candidates.as_slice() {
        [] => None,
        [only] => Some(*only),
        _ => {
            let a = candidates[random_below(candidates.len())];
            let b = candidates[random_below(candidates.len())];
            let load = |i: usize| set.active[i].load(Ordering::Relaxed);
            Some(if load(b) < load(a) { b } else { a })
        }
    }
}

fn weighted_random(set: &EndpointSet, fresh: &dyn Fn(&usize) -> bool) -> Option<usize> {
    let total: u64 = (0..set.endpoints.len())
        .filter(|i| fresh(i))
        .map(|i| u64::from(set.endpoints[i].weight))
        .sum();
    if total == 0 {
        return None;
    }
    let mut point = random_u64() % total;
    for i in (0..set.endpoints.len()).filter(|i| fresh(i)) {
        let w = u64::from(set.endpoints[i].weight);
        if point < w {
            return Some(i);
        }
        point -= w;
    }
    None
}

/// Keeps an endpoint's in-flight count for as long as a request uses it.
pub struct InFlight<'a>(&'a EndpointSet, usize);

impl<'a> InFlight<'a> {
    pub fn start(set: &'a EndpointSet, index: usize) -> Self {
        set.active[index].fetch_add(1, Ordering::Relaxed);
        Self(set, index)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.active[self.1].fetch_sub(1, Ordering::Relaxed);
    }
}

thread_local! {
    static STATE: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    let mut bytes = [0u8; 8];
    // A failed seed only makes the sequence predictable, never wrong.
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
    u64::from_le_bytes(bytes) | 1
}

/// xorshift64*: fast and good enough for spreading load.
pub fn random_u64() -> u64 {
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    })
}

pub fn random_below(n: usize) -> usize {
    (random_u64() % n.max(1) as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::endpoint::Endpoint;

    fn set(weights: &[u32]) -> EndpointSet {
        EndpointSet::new(
            weights
                .iter()
                .enumerate()
                .map(|(i, w)| Endpoint {
                    address: SocketAddr::from(([198, 18, 0, i as u8 + 1], 80)),
                    weight: *w,
                    mesh_tls: false,
                })
                .collect(),
        )
    }

    #[test]
    fn round_robin_takes_turns() {
        let s = set(&[1, 1, 1]);
        let picks: Vec<usize> = (0..6)
            .filter_map(|_| pick(&s, Balance::RoundRobin, &[]))
            .collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn least_request_avoids_the_busy_endpoint() {
        let s = set(&[1, 1]);
        let _busy: Vec<InFlight<'_>> = (0..10).map(|_| InFlight::start(&s, 0)).collect();
        let picks = (0..200).filter(|_| pick(&s, Balance::LeastRequest, &[]) == Some(1));
        // Two choices: the idle one wins whenever it is drawn, 3 times in 4.
        assert!(picks.count() > 120);
    }

    #[test]
    fn retries_avoid_tried_endpoints_and_weights_hold() {
        let s = set(&[1, 1]);
        let tried = [s.endpoints[0].address];
        for _ in 0..20 {
            assert_eq!(pick(&s, Balance::Random, &tried), Some(1));
        }
        let w = set(&[9, 1]);
        let first = (0..10_000)
            .filter(|_| pick(&w, Balance::RoundRobin, &[]) == Some(0))
            .count();
        assert!((8_700..9_300).contains(&first), "{first}");
    }
}

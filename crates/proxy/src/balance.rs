//! Picking an endpoint: ROUND_ROBIN, LEAST_REQUEST (power of two choices on
//! requests in flight), RANDOM, and consistent hashing (RING_HASH, MAGLEV) on the
//! request's hash, all weight-aware and lock-free. Endpoints a retry already
//! tried are avoided while others remain (Envoy's previous_hosts). The counts
//! they read live in [`crate::state`], apart from the config.

use std::cell::Cell;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use crate::config::cluster::Balance;
use crate::config::endpoint::EndpointSet;
use crate::state::Balanced;

/// The index of the chosen endpoint, `None` when the set is empty or every
/// endpoint is ejected (outside panic). `hash` is the request's, for the
/// consistent-hash balancers (without one they pick at random, as Envoy does).
/// `panic_threshold` is set when the cluster has outlier detection: ejected
/// endpoints are skipped unless too few are healthy (see [`panics`]), when
/// all are balanced over (Envoy's panic mode; 0 never panics).
pub fn pick(
    balanced: &Balanced,
    balance: Balance,
    tried: &[SocketAddr],
    hash: Option<u64>,
    panic_threshold: Option<f64>,
) -> Option<usize> {
    let set = &*balanced.set;
    let n = set.endpoints.len();
    if n == 0 {
        return None;
    }
    // While an ejection lasts (one clock read per pick), ejected endpoints
    // are skipped unless the cluster panics.
    let now = panic_threshold.and_then(|_| crate::outlier::ejection_clock(&balanced.cluster));
    let ejected = |i: usize| {
        now.is_some_and(|now| {
            balanced
                .states
                .get(i)
                .is_some_and(|s| s.health.is_ejected_at(now))
        })
    };
    let skip_ejected = match (panic_threshold, now) {
        (Some(threshold), Some(_)) => threshold <= 0.0 || !panics(n, threshold, &ejected),
        _ => false,
    };
    let usable = |i: usize| !(skip_ejected && ejected(i));
    if skip_ejected && (0..n).all(|i| !usable(i)) {
        // Every endpoint out and no panic: no healthy upstream, without
        // walking a hash table for nothing.
        return None;
    }
    // Not yet tried by this request, and usable.
    let fresh = |i: &usize| !tried.contains(&set.endpoints[*i].address) && usable(*i);
    let weighted = set
        .endpoints
        .iter()
        .any(|e| e.weight != set.endpoints[0].weight);
    let choice = match balance {
        Balance::RingHash { .. } | Balance::Maglev { .. } => {
            let table = set
                .hash_table
                .get_or_init(|| HashTable::build(set, balance));
            table.lookup(hash.unwrap_or_else(random_u64), &fresh)
        }
        _ if weighted => weighted_random(set, &fresh),
        Balance::RoundRobin => {
            let start = balanced.cluster.cursor.fetch_add(1, Ordering::Relaxed);
            (0..n).map(|k| (start + k) % n).find(|i| fresh(i))
        }
        Balance::Random => {
            let start = random_below(n);
            (0..n).map(|k| (start + k) % n).find(|i| fresh(i))
        }
        Balance::LeastRequest => least_request(balanced, &fresh),
    };
    // Every usable endpoint tried already: retry on one anyway rather than
    // fail; none usable at all (all ejected, no panic): no healthy upstream.
    choice.or_else(|| {
        let usable: Vec<usize> = (0..n).filter(|i| usable(*i)).collect();
        (!usable.is_empty()).then(|| usable[random_below(usable.len())])
    })
}

/// Envoy's panic test: the healthy share, scaled by the default
/// overprovisioning factor (1.4) and capped at 100 %, below the threshold.
fn panics(n: usize, threshold: f64, ejected: &dyn Fn(usize) -> bool) -> bool {
    let healthy = (0..n).filter(|i| !ejected(*i)).count();
    let availability = (healthy as f64 * 140.0 / n as f64).min(100.0);
    availability < threshold
}

fn least_request(balanced: &Balanced, fresh: &dyn Fn(&usize) -> bool) -> Option<usize> {
    let candidates: Vec<usize> = (0..balanced.len()).filter(|i| fresh(i)).collect();
    match candidates.as_slice() {
        [] => None,
        [only] => Some(*only),
        _ => {
            let a = candidates[random_below(candidates.len())];
            let b = candidates[random_below(candidates.len())];
            let load = |i: usize| balanced.states[i].active.load(Ordering::Relaxed);
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

/// A consistent-hash lookup structure over one endpoint set.
#[derive(Debug)]
pub enum HashTable {
    /// Sorted (hash, endpoint) points; a request goes to the first point at or
    /// after its hash.
    Ring(Vec<(u64, usize)>),
    /// Maglev's permutation-filled table; a request goes to `table[hash % len]`.
    Maglev(Vec<usize>),
}

impl HashTable {
    fn build(set: &EndpointSet, balance: Balance) -> Self {
        match balance {
            Balance::Maglev { table_size } => Self::Maglev(maglev(set, table_size as usize)),
            Balance::RingHash { minimum_ring_size } => Self::Ring(ring(set, minimum_ring_size)),
            _ => Self::Ring(ring(set, 1024)),
        }
    }

    /// The endpoint for `hash`, moving on past endpoints already tried.
    fn lookup(&self, hash: u64, fresh: &dyn Fn(&usize) -> bool) -> Option<usize> {
        match self {
            HashTable::Ring(points) => {
                let start = points.partition_point(|(h, _)| *h < hash);
                (0..points.len())
                    .map(|k| points[(start + k) % points.len()].1)
                    .find(|i| fresh(i))
            }
            HashTable::Maglev(table) => {
                let start = (hash % table.len() as u64) as usize;
                (0..table.len())
                    .map(|k| table[(start + k) % table.len()])
                    .find(|i| fresh(i))
            }
        }
    }
}

/// A hash that is the same in every proxy running this build.
pub fn stable_hash(value: impl Hash) -> u64 {
    let mut hasher = DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}

fn ring(set: &EndpointSet, minimum: u64) -> Vec<(u64, usize)> {
    let total: u64 = set
        .endpoints
        .iter()
        .map(|e| u64::from(e.weight))
        .sum::<u64>()
        .max(1);
    let mut points = Vec::new();
    for (i, e) in set.endpoints.iter().enumerate() {
        let share = (minimum * u64::from(e.weight)).div_ceil(total).max(1);
        for k in 0..share {
            points.push((stable_hash((e.address, k)), i));
        }
    }
    points.sort_unstable();
    points
}

fn maglev(set: &EndpointSet, size: usize) -> Vec<usize> {
    let n = set.endpoints.len();
    let permutation: Vec<(usize, usize)> = set
        .endpoints
        .iter()
        .map(|e| {
            let offset = (stable_hash((e.address, "offset")) % size as u64) as usize;
            let skip = (stable_hash((e.address, "skip")) % (size as u64 - 1)) as usize + 1;
            (offset, skip)
        })
        .collect();
    let max_weight = u64::from(
        set.endpoints
            .iter()
            .map(|e| e.weight)
            .max()
            .unwrap_or(1)
            .max(1),
    );
    let mut table = vec![usize::MAX; size];
    let mut next = vec![0usize; n];
    let mut claimed = vec![0u64; n];
    let mut filled = 0;
    let mut round: u64 = 0;
    while filled < size {
        round += 1;
        for i in 0..n {
            // An endpoint claims a slot while it holds less than its weight's share.
            if claimed[i] * max_weight >= round * u64::from(set.endpoints[i].weight) {
                continue;
            }
            let (offset, skip) = permutation[i];
            loop {
                let slot = (offset + next[i] * skip) % size;
                next[i] += 1;
                if table[slot] == usize::MAX {
                    table[slot] = i;
                    claimed[i] += 1;
                    filled += 1;
                    break;
                }
            }
            if filled == size {
                break;
            }
        }
    }
    table
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
    use crate::state::InFlight;

    fn set(weights: &[u32]) -> Balanced {
        Balanced::fresh(EndpointSet::new(
            weights
                .iter()
                .enumerate()
                .map(|(i, w)| Endpoint {
                    address: SocketAddr::from(([198, 18, 0, i as u8 + 1], 80)),
                    weight: *w,
                    mesh_tls: false,
                })
                .collect(),
        ))
    }

    #[test]
    fn round_robin_takes_turns() {
        let s = set(&[1, 1, 1]);
        let picks: Vec<usize> = (0..6)
            .filter_map(|_| pick(&s, Balance::RoundRobin, &[], None, None))
            .collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn least_request_avoids_the_busy_endpoint() {
        let s = set(&[1, 1]);
        let _busy: Vec<InFlight> = (0..10).map(|_| InFlight::start(&s.states[0])).collect();
        let picks =
            (0..200).filter(|_| pick(&s, Balance::LeastRequest, &[], None, None) == Some(1));
        // Two choices: the idle one wins whenever it is drawn, 3 times in 4.
        assert!(picks.count() > 120);
    }

    #[test]
    fn consistent_hashing_keeps_keys_on_their_endpoint() {
        for balance in [
            Balance::RingHash {
                minimum_ring_size: 1024,
            },
            Balance::Maglev { table_size: 65537 },
        ] {
            let s = set(&[1, 1, 1, 1]);
            let first: Vec<Option<usize>> = (0..200u64)
                .map(|k| pick(&s, balance, &[], Some(stable_hash(k)), None))
                .collect();
            let again: Vec<Option<usize>> = (0..200u64)
                .map(|k| pick(&s, balance, &[], Some(stable_hash(k)), None))
                .collect();
            assert_eq!(first, again, "{balance:?}: the same key, the same endpoint");
            let spread = (0..4).filter(|i| first.contains(&Some(*i))).count();
            assert_eq!(spread, 4, "{balance:?}: keys spread over every endpoint");
            // Removing one endpoint moves only the keys it held (mostly).
            let fewer = Balanced::fresh(EndpointSet::new(s.set.endpoints[..3].to_vec()));
            let moved = (0..200u64)
                .filter(|k| {
                    let before = first[*k as usize];
                    before != Some(3)
                        && pick(&fewer, balance, &[], Some(stable_hash(*k)), None) != before
                })
                .count();
            assert!(moved < 30, "{balance:?}: {moved} of 200 keys moved");
            // A retry moves on from the endpoint it tried.
            let key = Some(stable_hash(7u64));
            let chosen = pick(&s, balance, &[], key, None).expect("an endpoint");
            let tried = [s.set.endpoints[chosen].address];
            assert_ne!(pick(&s, balance, &tried, key, None), Some(chosen));
        }
        let w = set(&[3, 1]);
        let heavy = (0..4000u64)
            .filter(|k| {
                pick(
                    &w,
                    Balance::Maglev { table_size: 65537 },
                    &[],
                    Some(stable_hash(k)),
                    None,
                ) == Some(0)
            })
            .count();
        assert!(
            (2700..3300).contains(&heavy),
            "3:1 weights gave {heavy} of 4000"
        );
    }

    #[test]
    fn retries_avoid_tried_endpoints_and_weights_hold() {
        let s = set(&[1, 1]);
        let tried = [s.set.endpoints[0].address];
        for _ in 0..20 {
            assert_eq!(pick(&s, Balance::Random, &tried, None, None), Some(1));
        }
        let w = set(&[9, 1]);
        let first = (0..10_000)
            .filter(|_| pick(&w, Balance::RoundRobin, &[], None, None) == Some(0))
            .count();
        assert!((8_700..9_300).contains(&first), "{first}");
    }

    /// Three of four endpoints ejected: without panic only the healthy one
    /// is picked; under a 50 % threshold all four are; with every endpoint
    /// out and panic off there is no healthy upstream.
    #[test]
    fn ejected_endpoints_are_skipped_unless_the_cluster_panics() {
        use crate::outlier::{Attempt, OutlierPolicy, record};
        let s = set(&[1, 1, 1, 1]);
        let policy = OutlierPolicy::after_5xx(1, 100);
        for i in 0..3 {
            record(&s, i, &policy, Attempt::Status(503));
        }
        let picked = |threshold: Option<f64>| -> std::collections::BTreeSet<Option<usize>> {
            (0..200)
                .map(|_| pick(&s, Balance::RoundRobin, &[], None, threshold))
                .collect()
        };
        assert_eq!(picked(Some(0.0)), [Some(3)].into());
        assert_eq!(
            picked(Some(50.0)).len(),
            4,
            "25 % healthy is under 50 %: panic"
        );
        assert_eq!(
            picked(None).len(),
            4,
            "no outlier detection: ejections ignored"
        );
        record(&s, 3, &policy, Attempt::Status(503));
        assert_eq!(picked(Some(0.0)), [None].into(), "no healthy upstream");
    }
}

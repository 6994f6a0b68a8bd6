//! Picking an endpoint: a priority level by the levels' health, a locality
//! by weight when the cluster weights them, then ROUND_ROBIN, LEAST_REQUEST
//! (power of two choices on requests in flight), RANDOM, or consistent hashing
//! (RING_HASH, MAGLEV) on the request's hash, all weight-aware and lock-free. Endpoints a retry already
//! tried are avoided while others remain (Envoy's previous_hosts). The counts
//! they read live in [`crate::state`], apart from the config.

use std::cell::Cell;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use std::ops::Range;

use crate::config::cluster::Balance;
use crate::config::endpoint::{EndpointSet, Level, LocalityGroup};
use crate::state::Balanced;

/// How a cluster balances: the algorithm, outlier detection's panic
/// threshold, and whether localities are weighted.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Policy {
    pub balance: Balance,
    /// Set when the cluster has outlier detection: ejected endpoints are
    /// skipped unless too few are healthy (Envoy's panic mode; 0 never
    /// panics). Unset, ejections are ignored.
    pub panic_threshold: Option<f64>,
    /// `locality_weighted_lb_config`: within a priority, a locality is
    /// picked by its weight and health first, then an endpoint in it.
    pub locality_weighted: bool,
}

impl Policy {
    pub fn plain(balance: Balance) -> Self {
        Self {
            balance,
            panic_threshold: None,
            locality_weighted: false,
        }
    }
}

/// The index of the chosen endpoint, `None` when the set is empty or no
/// endpoint is healthy (outside panic). `hash` is the request's, for the
/// consistent-hash balancers (without one they pick at random, as Envoy
/// does). As Envoy: a priority level first, by the levels' health (a level
/// whose healthy share times the overprovisioning factor falls short of
/// 100 % passes load to the next); then, with locality weighting, a
/// locality of it; then an endpoint there, avoiding ejected ones unless the
/// level panics. A retry that finds its locality all tried looks at the
/// rest of the level before trying an endpoint again.
pub fn pick(
    balanced: &Balanced,
    policy: &Policy,
    tried: &[SocketAddr],
    hash: Option<u64>,
) -> Option<usize> {
    let set = &*balanced.set;
    if set.endpoints.is_empty() {
        return None;
    }
    // While an ejection lasts (one clock read per pick), ejected endpoints
    // count as unhealthy.
    let now = policy
        .panic_threshold
        .and_then(|_| crate::outlier::ejection_clock(&balanced.cluster));
    let ejected = |i: usize| {
        now.is_some_and(|now| {
            balanced
                .states
                .get(i)
                .is_some_and(|s| s.health.is_ejected_at(now))
        })
    };
    // Most clusters: one level, localities unweighted, nothing ejected.
    if let [only] = set.levels.as_slice()
        && now.is_none()
        && !(policy.locality_weighted && only.localities.len() > 1)
    {
        let fresh = |i: &usize| !tried.contains(&set.endpoints[*i].address);
        let all = only.endpoints.clone();
        return choose(balanced, policy.balance, all.clone(), hash, &fresh)
            .or_else(|| Some(all.start + random_below(all.len())));
    }
    let health = Health {
        set,
        ejected: &ejected,
        ejecting: now.is_some(),
    };
    let scope = health.scope(policy, hash)?;
    let usable = |i: usize| scope.level.contains(&i) && (scope.panic || !ejected(i));
    let within = |range: &Range<usize>| {
        // Not yet tried by this request, and usable.
        let fresh = |i: &usize| {
            range.contains(i) && usable(*i) && !tried.contains(&set.endpoints[*i].address)
        };
        choose(balanced, policy.balance, range.clone(), hash, &fresh)
    };
    let choice = within(&scope.endpoints).or_else(|| {
        (scope.endpoints != scope.level)
            .then(|| within(&scope.level))
            .flatten()
    });
    // Every usable endpoint tried already: retry on one anyway rather than
    // fail.
    choice.or_else(|| {
        let count = scope.level.clone().filter(|i| usable(*i)).count();
        (count > 0).then(|| {
            scope
                .level
                .clone()
                .filter(|i| usable(*i))
                .nth(random_below(count))
        })?
    })
}

/// The balancer's choice among the `fresh` endpoints of `range`.
fn choose(
    balanced: &Balanced,
    balance: Balance,
    range: Range<usize>,
    hash: Option<u64>,
    fresh: &impl Fn(&usize) -> bool,
) -> Option<usize> {
    let set = &*balanced.set;
    let len = range.len();
    let first = set.endpoints.get(range.start)?;
    let weighted = set.endpoints[range.clone()]
        .iter()
        .any(|e| e.weight != first.weight);
    match balance {
        Balance::RingHash { .. } | Balance::Maglev { .. } => {
            let table = set
                .hash_table
                .get_or_init(|| HashTable::build(set, balance));
            table.lookup(hash.unwrap_or_else(random_u64), fresh)
        }
        _ if weighted => weighted_random(set, range, fresh),
        Balance::RoundRobin => {
            let start = balanced.cluster.cursor.fetch_add(1, Ordering::Relaxed);
            (0..len)
                .map(|k| range.start + (start + k) % len)
                .find(fresh)
        }
        Balance::Random => {
            let start = random_below(len);
            (0..len)
                .map(|k| range.start + (start + k) % len)
                .find(fresh)
        }
        Balance::LeastRequest => least_request(balanced, range, fresh),
    }
}

/// Where a pick may land: a run of endpoints (a locality, or the whole
/// level), the level's, and whether ejections are ignored there (panic).
struct Scope {
    endpoints: Range<usize>,
    level: Range<usize>,
    panic: bool,
}

/// The health of a set's levels and localities at one pick.
struct Health<'a> {
    set: &'a EndpointSet,
    ejected: &'a dyn Fn(usize) -> bool,
    /// An ejection lasts: endpoints must be looked at one by one.
    ejecting: bool,
}

impl Health<'_> {
    fn healthy(&self, endpoints: &Range<usize>) -> usize {
        if !self.ejecting {
            return endpoints.len();
        }
        endpoints.clone().filter(|i| !(self.ejected)(*i)).count()
    }

    /// Envoy's availability of a run of `hosts` hosts: the healthy share
    /// times the overprovisioning factor, in percent, at most 100.
    fn availability(&self, endpoints: &Range<usize>, hosts: usize) -> u64 {
        if hosts == 0 {
            return 0;
        }
        let scaled = self.healthy(endpoints) as u64 * u64::from(self.set.overprovisioning);
        (scaled / hosts as u64).min(100)
    }

    /// Envoy's per-level panic: the total availability falls short and the
    /// level's plain healthy share is under the threshold.
    fn panics(&self, level: &Level, total: u64, threshold: f64) -> bool {
        total < 100
            && threshold > 0.0
            && 100.0 * (self.healthy(&level.endpoints) as f64) < threshold * level.hosts as f64
    }

    fn scope(&self, policy: &Policy, hash: Option<u64>) -> Option<Scope> {
        let levels = &self.set.levels;
        let threshold = policy.panic_threshold.unwrap_or(0.0);
        let total: u64 = levels
            .iter()
            .map(|l| self.availability(&l.endpoints, l.hosts))
            .sum::<u64>()
            .min(100);
        // A request's hash keeps it on one level while the levels' health holds.
        let point = hash.unwrap_or_else(random_u64) % 100 + 1;
        let all_panic = levels.iter().all(|l| self.panics(l, total, threshold));
        let level = if all_panic {
            // Every level panics: load by endpoint count, health aside (Envoy
            // counts hosts EDS calls unhealthy too, which are not here to
            // take any).
            let endpoints: usize = levels.iter().map(|l| l.endpoints.len()).sum();
            if endpoints == 0 {
                return None;
            }
            pick_level(levels, point, |l| {
                (100 * l.endpoints.len() / endpoints) as u64
            })
        } else if total == 0 {
            // Availability rounds down to nothing (a few healthy among many
            // hosts): Envoy leaves the load on the first level; the first
            // with a healthy endpoint takes it.
            levels.iter().find(|l| self.healthy(&l.endpoints) > 0)
        } else {
            let mut left = 100;
            pick_level(levels, point, |l| {
                let load = (self.availability(&l.endpoints, l.hosts) * 100 / total).min(left);
                left -= load;
                load
            })
        }?;
        let panic = all_panic || self.panics(level, total, threshold);
        let endpoints = match policy.locality_weighted && !panic {
            true => self
                .locality(level, hash)
                .unwrap_or_else(|| level.endpoints.clone()),
            false => level.endpoints.clone(),
        };
        Some(Scope {
            endpoints,
            level: level.endpoints.clone(),
            panic,
        })
    }

    /// A locality of `level`, by weight times availability (Envoy's
    /// effective locality weight); `None` when none has any. A request's
    /// hash picks it, so consistent hashing keeps a key in one locality.
    fn locality(&self, level: &Level, hash: Option<u64>) -> Option<Range<usize>> {
        let effective =
            |g: &LocalityGroup| u64::from(g.weight) * self.availability(&g.endpoints, g.hosts);
        let total: u64 = level.localities.iter().map(effective).sum();
        if total == 0 {
            return None;
        }
        let mut point = hash.map_or_else(random_u64, |h| stable_hash((h, "locality"))) % total;
        for group in &level.localities {
            let w = effective(group);
            if point < w {
                return Some(group.endpoints.clone());
            }
            point -= w;
        }
        None
    }
}

/// The level whose share of 1..=100 holds `point`, shares given in order by
/// `load`; the rounding left over goes to the first level with load.
fn pick_level(levels: &[Level], point: u64, mut load: impl FnMut(&Level) -> u64) -> Option<&Level> {
    let mut reached = 0;
    let mut first = None;
    for level in levels {
        let share = load(level);
        if share > 0 && first.is_none() {
            first = Some(level);
        }
        reached += share;
        if share > 0 && point <= reached {
            return Some(level);
        }
    }
    first.or(levels.first())
}

fn least_request(
    balanced: &Balanced,
    range: Range<usize>,
    fresh: &impl Fn(&usize) -> bool,
) -> Option<usize> {
    // Two draws, each the first fresh endpoint from a random place: no
    // list built, and one look per draw when nothing is excluded.
    let len = range.len();
    let draw = || {
        let start = random_below(len);
        (0..len)
            .map(|k| range.start + (start + k) % len)
            .find(|i| fresh(i))
    };
    let a = draw()?;
    let b = draw().unwrap_or(a);
    let load = |i: usize| balanced.states[i].active.load(Ordering::Relaxed);
    Some(if load(b) < load(a) { b } else { a })
}

fn weighted_random(
    set: &EndpointSet,
    range: Range<usize>,
    fresh: &impl Fn(&usize) -> bool,
) -> Option<usize> {
    let total: u64 = range
        .clone()
        .filter(|i| fresh(i))
        .map(|i| u64::from(set.endpoints[i].weight))
        .sum();
    if total == 0 {
        return None;
    }
    let mut point = random_u64() % total;
    for i in range.filter(|i| fresh(i)) {
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
    fn lookup(&self, hash: u64, fresh: &impl Fn(&usize) -> bool) -> Option<usize> {
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

    /// The flat pick the tests were written for: no locality weighting.
    fn flat_pick(
        s: &Balanced,
        balance: Balance,
        tried: &[SocketAddr],
        hash: Option<u64>,
        panic_threshold: Option<f64>,
    ) -> Option<usize> {
        let policy = Policy {
            panic_threshold,
            ..Policy::plain(balance)
        };
        pick(s, &policy, tried, hash)
    }

    fn set(weights: &[u32]) -> Balanced {
        Balanced::fresh(EndpointSet::new(
            weights
                .iter()
                .enumerate()
                .map(|(i, w)| Endpoint {
                    address: SocketAddr::from(([198, 18, 0, i as u8 + 1], 80)),
                    weight: *w,
                    mesh_tls: false,
                    tunnel: false,
                })
                .collect(),
        ))
    }

    #[test]
    fn round_robin_takes_turns() {
        let s = set(&[1, 1, 1]);
        let picks: Vec<usize> = (0..6)
            .filter_map(|_| flat_pick(&s, Balance::RoundRobin, &[], None, None))
            .collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn least_request_avoids_the_busy_endpoint() {
        let s = set(&[1, 1]);
        let _busy: Vec<InFlight> = (0..10).map(|_| InFlight::start(&s.states[0])).collect();
        let picks =
            (0..200).filter(|_| flat_pick(&s, Balance::LeastRequest, &[], None, None) == Some(1));
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
                .map(|k| flat_pick(&s, balance, &[], Some(stable_hash(k)), None))
                .collect();
            let again: Vec<Option<usize>> = (0..200u64)
                .map(|k| flat_pick(&s, balance, &[], Some(stable_hash(k)), None))
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
                        && flat_pick(&fewer, balance, &[], Some(stable_hash(*k)), None) != before
                })
                .count();
            assert!(moved < 30, "{balance:?}: {moved} of 200 keys moved");
            // A retry moves on from the endpoint it tried.
            let key = Some(stable_hash(7u64));
            let chosen = flat_pick(&s, balance, &[], key, None).expect("an endpoint");
            let tried = [s.set.endpoints[chosen].address];
            assert_ne!(flat_pick(&s, balance, &tried, key, None), Some(chosen));
        }
        let w = set(&[3, 1]);
        let heavy = (0..4000u64)
            .filter(|k| {
                flat_pick(
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
            assert_eq!(flat_pick(&s, Balance::Random, &tried, None, None), Some(1));
        }
        let w = set(&[9, 1]);
        let first = (0..10_000)
            .filter(|_| flat_pick(&w, Balance::RoundRobin, &[], None, None) == Some(0))
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
                .map(|_| flat_pick(&s, Balance::RoundRobin, &[], None, threshold))
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

    /// An EDS assignment: localities as (priority, weight, hosts), each host
    /// healthy or not; addresses 198.18.<locality>.<host>.
    fn assignment(localities: &[(u32, u32, &[bool])]) -> Balanced {
        Balanced::fresh(assignment_set(localities))
    }

    fn assignment_set(localities: &[(u32, u32, &[bool])]) -> EndpointSet {
        use envoy_types::pb::envoy::config::core::v3::HealthStatus;
        use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
        use envoy_types::pb::envoy::config::endpoint::v3::{
            ClusterLoadAssignment, Endpoint as EnvoyEndpoint, LbEndpoint, LocalityLbEndpoints,
        };
        use envoy_types::pb::google::protobuf::UInt32Value;
        let endpoints = localities
            .iter()
            .enumerate()
            .map(|(l, (priority, weight, hosts))| LocalityLbEndpoints {
                priority: *priority,
                load_balancing_weight: Some(UInt32Value { value: *weight }),
                lb_endpoints: hosts
                    .iter()
                    .enumerate()
                    .map(|(h, healthy)| LbEndpoint {
                        host_identifier: Some(HostIdentifier::Endpoint(EnvoyEndpoint {
                            address: Some(address(format!("198.18.{l}.{}", h + 1))),
                            ..Default::default()
                        })),
                        health_status: if *healthy {
                            HealthStatus::Healthy
                        } else {
                            HealthStatus::Unhealthy
                        } as i32,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            })
            .collect();
        let cla = ClusterLoadAssignment {
            cluster_name: "c".into(),
            endpoints,
            ..Default::default()
        };
        crate::config::endpoint::convert(&cla).expect("a valid assignment")
    }

    fn address(ip: String) -> envoy_types::pb::envoy::config::core::v3::Address {
        use envoy_types::pb::envoy::config::core::v3::address::Address as Kind;
        use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
        use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress};
        Address {
            address: Some(Kind::SocketAddress(SocketAddress {
                address: ip,
                port_specifier: Some(PortSpecifier::PortValue(80)),
                ..Default::default()
            })),
        }
    }

    /// How many of `n` picks land in each locality (the address's third octet).
    fn spread(s: &Balanced, policy: &Policy, n: usize) -> Vec<usize> {
        let mut counts = vec![0; 8];
        for _ in 0..n {
            if let Some(i) = pick(s, policy, &[], None) {
                let std::net::IpAddr::V4(ip) = s.set.endpoints[i].address.ip() else {
                    unreachable!("the tests' addresses are IPv4")
                };
                counts[usize::from(ip.octets()[2])] += 1;
            }
        }
        counts
    }

    fn eject(s: &Balanced, locality: u8, host: u8) {
        use crate::outlier::{Attempt, OutlierPolicy, record};
        let address = SocketAddr::from(([198, 18, locality, host], 80));
        let index = s.set.endpoints.iter().position(|e| e.address == address);
        record(
            s,
            index.expect("the endpoint"),
            &OutlierPolicy::after_5xx(1, 100),
            Attempt::Status(503),
        );
    }

    fn outlier(threshold: f64) -> Policy {
        Policy {
            panic_threshold: Some(threshold),
            ..Policy::plain(Balance::RoundRobin)
        }
    }

    /// Priorities as Envoy loads them: all to P0 while it is healthy; with
    /// half of it ejected, its availability (2/4 x 1.4 = 70 %) keeps 70 % of
    /// the load and P1 takes the rest; with all of it out, P1 takes all; with
    /// every level out, no healthy upstream.
    #[test]
    fn lower_priorities_take_the_load_a_level_cannot() {
        let s = assignment(&[(0, 1, &[true; 4]), (1, 1, &[true; 2])]);
        let policy = outlier(0.0);
        assert_eq!(spread(&s, &policy, 1000)[..2], [1000, 0]);
        eject(&s, 0, 1);
        eject(&s, 0, 2);
        let split = spread(&s, &policy, 4000);
        assert!((2600..3000).contains(&split[0]), "P0 took {split:?}");
        assert_eq!(split[0] + split[1], 4000);
        eject(&s, 0, 3);
        eject(&s, 0, 4);
        assert_eq!(spread(&s, &policy, 1000)[..2], [0, 1000]);
        eject(&s, 1, 1);
        eject(&s, 1, 2);
        assert_eq!(pick(&s, &policy, &[], None), None, "no healthy upstream");
    }

    /// EDS-unhealthy hosts count against their level's health even with no
    /// outlier detection: one of two healthy (70 %) leaves 30 % to P1.
    #[test]
    fn unhealthy_hosts_lower_their_levels_share() {
        let s = assignment(&[(0, 1, &[true, false]), (1, 1, &[true])]);
        let split = spread(&s, &Policy::plain(Balance::RoundRobin), 4000);
        assert!((2600..3000).contains(&split[0]), "P0 took {split:?}");
        // Priorities given out of order and with gaps still rank.
        let s = assignment(&[(7, 1, &[true]), (2, 1, &[true])]);
        assert_eq!(
            spread(&s, &Policy::plain(Balance::Random), 100)[..2],
            [0, 100]
        );
    }

    /// Envoy's panic is per level and only while the levels together fall
    /// short: P0 one of four healthy under a 50 % threshold, but P1 makes up
    /// the total, so P0 keeps 35 % and skips its ejected hosts; once P1 is
    /// out too, every level panics and load follows host counts (4:1).
    #[test]
    fn a_level_panics_only_when_the_levels_together_fall_short() {
        let s = assignment(&[(0, 1, &[true; 4]), (1, 1, &[true])]);
        for h in 1..=3 {
            eject(&s, 0, h);
        }
        let policy = outlier(50.0);
        let picked: std::collections::BTreeSet<SocketAddr> = (0..400)
            .filter_map(|_| pick(&s, &policy, &[], None))
            .map(|i| s.set.endpoints[i].address)
            .collect();
        assert!(!picked.contains(&SocketAddr::from(([198, 18, 0, 1], 80))));
        let split = spread(&s, &policy, 4000);
        assert!((1200..1600).contains(&split[0]), "P0 took {split:?}");
        eject(&s, 0, 4);
        eject(&s, 1, 1);
        let split = spread(&s, &policy, 5000);
        assert!((3700..4300).contains(&split[0]), "total panic {split:?}");
    }

    /// Locality weights (istiod's `distribute`) split a level 70/30 when the
    /// cluster weights localities, and are ignored otherwise (the level's
    /// hosts share evenly, 1 to 3); a locality's ejected hosts lower its
    /// effective weight.
    #[test]
    fn locality_weights_split_a_level() {
        let s = assignment(&[(0, 70, &[true]), (0, 30, &[true; 3]), (0, 0, &[true])]);
        let weighted = Policy {
            locality_weighted: true,
            ..outlier(0.0)
        };
        let split = spread(&s, &weighted, 5000);
        assert!((3300..3700).contains(&split[0]), "{split:?}");
        assert_eq!(split[2], 0, "a locality of weight 0 takes nothing");
        let flat = spread(&s, &outlier(0.0), 5000);
        assert!((800..1200).contains(&flat[0]), "{flat:?}");
        // Two of locality 1's three hosts out: 30 x min(1, 1/3 x 1.4) = 14.
        eject(&s, 1, 1);
        eject(&s, 1, 2);
        let split = spread(&s, &weighted, 5000);
        assert!((3950..4400).contains(&split[0]), "{split:?}");
    }

    /// One level panicking while another does not: P0 has 1 of 5 healthy
    /// (availability 28 %, healthy share 20 % under the 50 % threshold), P1
    /// 1 of 2 (70 %, share 50 %); together 98 %, so P0 takes 28 % plus the
    /// rounding's 1 % and, panicking, balances over its ejected hosts too.
    #[test]
    fn one_level_panics_while_another_does_not() {
        let s = assignment(&[(0, 1, &[true; 5]), (1, 1, &[true; 2])]);
        for h in 1..=4 {
            eject(&s, 0, h);
        }
        eject(&s, 1, 1);
        let policy = outlier(50.0);
        let split = spread(&s, &policy, 4000);
        assert!((1000..1320).contains(&split[0]), "P0 took {split:?}");
        let picked: std::collections::BTreeSet<SocketAddr> = (0..400)
            .filter_map(|_| pick(&s, &policy, &[], None))
            .map(|i| s.set.endpoints[i].address)
            .collect();
        assert!(picked.contains(&SocketAddr::from(([198, 18, 0, 1], 80))));
        assert!(!picked.contains(&SocketAddr::from(([198, 18, 1, 1], 80))));
    }

    /// Availability that rounds down to nothing (1 healthy of 150 hosts, 0 %
    /// after the integer maths) still reaches the healthy endpoint, as
    /// Envoy's P0 does; a smaller overprovisioning factor passes more load
    /// down (1 of 2 healthy at 100 %: half).
    #[test]
    fn rounding_and_overprovisioning() {
        let mut hosts = vec![false; 150];
        hosts[7] = true;
        let s = assignment(&[(0, 1, &hosts)]);
        assert_eq!(pick(&s, &outlier(0.0), &[], None), Some(0));
        let mut set = assignment_set(&[(0, 1, &[true, false]), (1, 1, &[true])]);
        set.overprovisioning = 100;
        let s = Balanced::fresh(set);
        let split = spread(&s, &Policy::plain(Balance::Random), 4000);
        assert!((1800..2200).contains(&split[0]), "P0 took {split:?}");
    }

    /// Consistent hashing across weighted localities: a key keeps its
    /// endpoint (the hash picks the locality too), keys still reach both
    /// localities; a retry whose locality is all tried moves to the other
    /// locality of the level rather than repeating itself.
    #[test]
    fn weighted_localities_keep_keys_and_let_retries_move_on() {
        let s = assignment(&[(0, 50, &[true; 2]), (0, 50, &[true; 2])]);
        let maglev = Policy {
            locality_weighted: true,
            ..Policy::plain(Balance::Maglev { table_size: 65537 })
        };
        let by_key: Vec<Option<usize>> = (0..200u64)
            .map(|k| pick(&s, &maglev, &[], Some(stable_hash(k))))
            .collect();
        for _ in 0..3 {
            let again: Vec<Option<usize>> = (0..200u64)
                .map(|k| pick(&s, &maglev, &[], Some(stable_hash(k))))
                .collect();
            assert_eq!(by_key, again);
        }
        let localities: std::collections::BTreeSet<bool> =
            by_key.iter().flatten().map(|i| *i < 2).collect();
        assert_eq!(localities.len(), 2, "keys reach both localities");
        let s = assignment(&[(0, 99, &[true]), (0, 1, &[true])]);
        let weighted = Policy {
            locality_weighted: true,
            ..Policy::plain(Balance::RoundRobin)
        };
        let tried = [s.set.endpoints[0].address];
        for _ in 0..50 {
            assert_eq!(pick(&s, &weighted, &tried, None), Some(1));
        }
    }
}

//! Locality load balancing, per proxy, as istiod writes it into EDS: a
//! DestinationRule's (else the mesh config's) `localityLbSetting` turns into
//! locality weights (`distribute`) or priorities (`failover`,
//! `failoverPriority`, and by default the distance from the proxy's own
//! locality). Priorities only with outlier detection, as in Istio: without
//! it nothing ever ejects an endpoint, so nothing would fail over.

use oxmesh_config::networking::destination_rule::{LocalityDistribute, LocalityLbSetting};

use crate::locality::{Locality, NETWORK_LABEL};
use crate::proxy::ProxyClass;
use crate::push_context::PushContext;
use crate::registry;

use super::cluster::Policy;

/// The endpoints of one locality at one priority, before they are written
/// as a `LocalityLbEndpoints`.
#[derive(Debug)]
pub struct Group<'a> {
    pub locality: &'a Locality,
    pub priority: u32,
    /// The locality's weight: its endpoints' weights summed, unless
    /// `distribute` set it.
    pub weight: u32,
    pub endpoints: Vec<&'a registry::Endpoint>,
}

impl<'a> Group<'a> {
    pub fn new(locality: &'a Locality, endpoints: Vec<&'a registry::Endpoint>) -> Self {
        Self {
            locality,
            priority: 0,
            weight: weight_of(&endpoints),
            endpoints,
        }
    }
}

fn weight_of(endpoints: &[&registry::Endpoint]) -> u32 {
    endpoints
        .iter()
        .map(|e| e.weight)
        .fold(0, u32::saturating_add)
}

/// What applies to `outbound`: the DestinationRule's setting, else the
/// mesh's; either turned off by `enabled: false` (istiod's
/// `GetLocalityLbSetting`).
pub fn setting<'a>(ctx: &'a PushContext, policy: &Policy<'a>) -> Option<&'a LocalityLbSetting> {
    let setting = policy
        .load_balancer
        .and_then(|lb| lb.locality_lb_setting.as_ref())
        .unwrap_or(&ctx.mesh.locality_lb_setting);
    (setting.enabled != Some(false)).then_some(setting)
}

/// Whether priorities apply: outlier detection is on (istiod's
/// `enableFailover`).
pub fn fails_over(policy: &Policy<'_>) -> bool {
    policy.outlier_detection.is_some()
}

/// `groups` weighted or ranked for `proxy`, as istiod's
/// `ApplyLocalityLoadBalancer`.
pub fn apply<'a>(
    setting: &LocalityLbSetting,
    fails_over: bool,
    proxy: &ProxyClass,
    groups: Vec<Group<'a>>,
) -> Vec<Group<'a>> {
    if !setting.distribute.is_empty() {
        return distribute(&proxy.locality, &setting.distribute, groups);
    }
    if !fails_over {
        return groups;
    }
    let mut groups = if setting.failover_priority.is_empty() {
        groups
    } else {
        let groups = by_labels(proxy, &setting.failover_priority, groups);
        if setting.failover.is_empty() {
            return groups;
        }
        groups
    };
    by_distance(&proxy.locality, setting, &mut groups);
    groups
}

/// `distribute`: the first rule whose `from` matches the proxy sets each
/// matching locality's weight (a pattern's weight shared among the
/// localities it matches, by their own weights, rounded up); localities no
/// pattern matches lose their endpoints.
fn distribute<'a>(
    here: &Locality,
    rules: &[LocalityDistribute],
    mut groups: Vec<Group<'a>>,
) -> Vec<Group<'a>> {
    let Some(rule) = rules.iter().find(|r| here.matches(&r.from)) else {
        return groups;
    };
    let mut matched = vec![false; groups.len()];
    // Validation refuses overlapping patterns, so their order is moot.
    for (pattern, weight) in &rule.to {
        let hits: Vec<usize> = (0..groups.len())
            .filter(|i| !matched[*i] && groups[*i].locality.matches(pattern))
            .collect();
        let total: u64 = hits.iter().map(|i| u64::from(groups[*i].weight)).sum();
        for i in hits {
            matched[i] = true;
            let share = (u64::from(groups[i].weight) * u64::from(*weight)).div_ceil(total.max(1));
            if share > 0 {
                groups[i].weight = u32::try_from(share).unwrap_or(u32::MAX);
            }
        }
    }
    for (group, matched) in groups.iter_mut().zip(matched) {
        if !matched {
            group.endpoints.clear();
        }
    }
    groups
}

/// Priorities by distance from the proxy (0 same subzone, 1 same zone, 2
/// same region, 3 elsewhere, 4 a region its `failover` rule does not name),
/// after any from `failoverPriority`, then renumbered without gaps.
fn by_distance(here: &Locality, setting: &LocalityLbSetting, groups: &mut [Group<'_>]) {
    for group in groups.iter_mut() {
        let mut distance = here.distance(group.locality);
        if distance == 3
            && let Some(rule) = setting.failover.iter().find(|f| f.from == here.region)
            && group.locality.region != rule.to
        {
            distance = 4;
        }
        group.priority = group.priority * 5 + distance;
    }
    renumber(groups);
}

/// `failoverPriority`: each endpoint's priority is how early in the list a
/// label differs between it and the proxy (`label=value` compares the
/// endpoint with that value instead); a locality splits into one group per
/// priority.
fn by_labels<'a>(proxy: &ProxyClass, labels: &[String], groups: Vec<Group<'a>>) -> Vec<Group<'a>> {
    // istiod ranks nothing for a proxy without labels.
    if proxy.labels.is_empty() {
        return groups;
    }
    // `key=value` overrides the proxy's value; istiod ignores a second `=`.
    let rules: Vec<(&str, Option<&str>)> = labels
        .iter()
        .map(|l| {
            let mut parts = l.split('=');
            let key = parts.next().unwrap_or_default();
            match (parts.next(), parts.next()) {
                (Some(value), None) => (key, Some(value)),
                _ => (key, None),
            }
        })
        .collect();
    let lowest = rules.len() as u32;
    let mut out = Vec::new();
    for group in groups {
        let mut split: std::collections::BTreeMap<u32, Vec<&registry::Endpoint>> =
            Default::default();
        for endpoint in group.endpoints {
            let differs_at = rules.iter().position(|(key, value)| {
                // A missing label reads as empty, as in istiod's maps.
                let wanted = value.or_else(|| proxy_label(proxy, key)).unwrap_or("");
                wanted != endpoint_label(endpoint, key).unwrap_or("")
            });
            let priority = differs_at.map_or(0, |j| lowest - j as u32);
            split.entry(priority).or_default().push(endpoint);
        }
        for (priority, endpoints) in split {
            out.push(Group {
                locality: group.locality,
                priority,
                weight: weight_of(&endpoints),
                endpoints,
            });
        }
    }
    renumber(&mut out);
    out
}

/// Priorities from 0 up without gaps, order kept.
fn renumber(groups: &mut [Group<'_>]) {
    let mut used: Vec<u32> = groups.iter().map(|g| g.priority).collect();
    used.sort_unstable();
    used.dedup();
    for group in groups.iter_mut() {
        group.priority = used.partition_point(|p| *p < group.priority) as u32;
    }
}

/// A label as istiod sees it on a proxy: topology labels from its locality
/// and network over its own.
fn proxy_label<'a>(proxy: &'a ProxyClass, key: &str) -> Option<&'a str> {
    topology(&proxy.locality, &proxy.network, key)
        .or_else(|| proxy.labels.get(key).map(String::as_str))
}

fn endpoint_label<'a>(endpoint: &'a registry::Endpoint, key: &str) -> Option<&'a str> {
    topology(&endpoint.locality, &endpoint.network, key)
        .or_else(|| endpoint.labels.get(key).map(String::as_str))
}

/// The topology labels istiod adds to workloads, when known.
fn topology<'a>(locality: &'a Locality, network: &'a str, key: &str) -> Option<&'a str> {
    let value = if key == NETWORK_LABEL {
        Some(network)
    } else {
        locality.label(key)
    };
    value.filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use oxmesh_config::networking::destination_rule::LocalityFailover;

    fn endpoint(locality: &str, labels: &[(&str, &str)]) -> registry::Endpoint {
        registry::Endpoint {
            address: "198.18.0.1".into(),
            port: 80,
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            identity: None,
            namespace: "default".into(),
            workload: String::new(),
            locality: Locality::parse(locality),
            network: String::new(),
            weight: 1,
            healthy: true,
            mtls: false,
            tunnel: false,
        }
    }

    fn proxy(locality: &str) -> ProxyClass {
        ProxyClass {
            kind: crate::proxy::ProxyKind::Sidecar,
            namespace: "default".into(),
            labels: [("app".to_owned(), "curl".to_owned())]
                .into_iter()
                .collect(),
            grpc: false,
            tproxy: false,
            proven: false,
            locality: Locality::parse(locality),
            network: String::new(),
        }
    }

    fn groups(endpoints: &[registry::Endpoint]) -> Vec<Group<'_>> {
        endpoints
            .iter()
            .map(|e| Group::new(&e.locality, vec![e]))
            .collect()
    }

    fn priorities(groups: &[Group<'_>]) -> Vec<(String, u32)> {
        groups
            .iter()
            .map(|g| (g.locality.to_string(), g.priority))
            .collect()
    }

    #[test]
    fn failover_ranks_by_distance_and_the_failover_rule() {
        let endpoints: Vec<_> = ["r1/z1/s1", "r1/z1/s2", "r1/z2/s1", "r2/z3/s1", "r3/z4/s1"]
            .iter()
            .map(|l| endpoint(l, &[]))
            .collect();
        let default = LocalityLbSetting::default();
        let ranked = apply(&default, true, &proxy("r1/z1/s1"), groups(&endpoints));
        let want = |p: [u32; 5]| {
            ["r1/z1/s1", "r1/z1/s2", "r1/z2/s1", "r2/z3/s1", "r3/z4/s1"]
                .iter()
                .zip(p)
                .map(|(l, p)| ((*l).to_owned(), p))
                .collect::<Vec<_>>()
        };
        assert_eq!(priorities(&ranked), want([0, 1, 2, 3, 3]));
        let rule = LocalityLbSetting {
            failover: vec![LocalityFailover {
                from: "r1".into(),
                to: "r2".into(),
            }],
            ..Default::default()
        };
        let ranked = apply(&rule, true, &proxy("r1/z1/s1"), groups(&endpoints));
        assert_eq!(priorities(&ranked), want([0, 1, 2, 3, 4]));
        // No outlier detection: no priorities at all.
        let flat = apply(&rule, false, &proxy("r1/z1/s1"), groups(&endpoints));
        assert_eq!(priorities(&flat), want([0; 5]));
        // Gaps close up: nothing in the proxy's zone.
        let ranked = apply(&default, true, &proxy("r1/z9/s1"), groups(&endpoints[2..]));
        assert_eq!(
            priorities(&ranked),
            [
                ("r1/z2/s1".into(), 0),
                ("r2/z3/s1".into(), 1),
                ("r3/z4/s1".into(), 1)
            ]
        );
    }

    #[test]
    fn distribute_weights_matching_localities_and_empties_the_rest() {
        let endpoints = [
            endpoint("r1/z1/a", &[]),
            endpoint("r1/z1/b", &[]),
            endpoint("r1/z2/a", &[]),
            endpoint("r2/z3/a", &[]),
        ];
        let setting = LocalityLbSetting {
            distribute: vec![LocalityDistribute {
                from: "r1/z1/*".into(),
                to: [("r1/z1/*".to_owned(), 80), ("r2/*".to_owned(), 20)]
                    .into_iter()
                    .collect(),
            }],
            ..Default::default()
        };
        let out = apply(&setting, true, &proxy("r1/z1/a"), groups(&endpoints));
        let weights: Vec<(u32, usize)> =
            out.iter().map(|g| (g.weight, g.endpoints.len())).collect();
        assert_eq!(weights, [(40, 1), (40, 1), (1, 0), (20, 1)]);
        assert!(out.iter().all(|g| g.priority == 0));
        // A proxy no rule is from: unchanged.
        let out = apply(&setting, true, &proxy("r2/z3/a"), groups(&endpoints));
        assert!(out.iter().all(|g| g.weight == 1 && g.endpoints.len() == 1));
    }

    #[test]
    fn failover_priority_splits_localities_by_labels() {
        let endpoints = [
            endpoint("r1/z1", &[("version", "v1")]),
            endpoint("r1/z1", &[("version", "v2")]),
        ];
        let both: Vec<&registry::Endpoint> = endpoints.iter().collect();
        let group = vec![Group::new(&endpoints[0].locality, both)];
        let setting = LocalityLbSetting {
            failover_priority: vec!["version=v2".into(), "topology.kubernetes.io/region".into()],
            ..Default::default()
        };
        let out = apply(&setting, true, &proxy("r1/z1"), group);
        let split: Vec<(u32, String)> = out
            .iter()
            .map(|g| (g.priority, g.endpoints[0].labels["version"].clone()))
            .collect();
        // v2 matches the override and the region: 0; v1 differs first: 2 -> 1.
        assert_eq!(split, [(0, "v2".to_owned()), (1, "v1".to_owned())]);
    }
}

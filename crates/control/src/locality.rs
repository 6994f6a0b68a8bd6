//! Where a workload runs: region, zone and subzone, as Istio writes them
//! (`region/zone/subzone`, or the `istio-locality` label's
//! `region.zone.subzone`), and how istiod compares two of them.

use std::fmt;

use oxmesh_config::selector::Labels;

/// The label that names a workload's locality outright (dots for slashes).
pub const LOCALITY_LABEL: &str = "istio-locality";
pub const REGION_LABEL: &str = "topology.kubernetes.io/region";
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
pub const SUBZONE_LABEL: &str = "topology.istio.io/subzone";
pub const NETWORK_LABEL: &str = "topology.istio.io/network";

#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Locality {
    pub region: String,
    pub zone: String,
    pub subzone: String,
}

impl Locality {
    /// From `region/zone/subzone`; missing parts are empty.
    pub fn parse(text: &str) -> Self {
        let mut parts = text.splitn(3, '/').map(str::to_owned);
        Self {
            region: parts.next().unwrap_or_default(),
            zone: parts.next().unwrap_or_default(),
            subzone: parts.next().unwrap_or_default(),
        }
    }

    /// From labels: `istio-locality`, else the topology labels.
    pub fn from_labels(labels: &Labels) -> Self {
        if let Some(l) = labels.get(LOCALITY_LABEL) {
            return Self::parse(&l.replace('.', "/"));
        }
        let get = |key: &str| labels.get(key).cloned().unwrap_or_default();
        Self {
            region: get(REGION_LABEL),
            zone: get(ZONE_LABEL),
            subzone: get(SUBZONE_LABEL),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.region.is_empty() && self.zone.is_empty() && self.subzone.is_empty()
    }

    /// istiod's `LocalityMatch`: a rule's `region[/zone[/subzone]]`, each
    /// part exact or `*`; a part left out matches anything.
    pub fn matches(&self, rule: &str) -> bool {
        let rule = Self::parse(rule);
        let part = |want: &str, have: &str, optional: bool| {
            want == "*" || (optional && want.is_empty()) || want == have
        };
        part(&rule.region, &self.region, false)
            && part(&rule.zone, &self.zone, true)
            && part(&rule.subzone, &self.subzone, true)
    }

    /// istiod's `LbPriority` of `other` seen from here: 0 for the same
    /// subzone, 1 the same zone, 2 the same region, 3 elsewhere.
    pub fn distance(&self, other: &Locality) -> u32 {
        match (
            self.region == other.region,
            self.zone == other.zone,
            self.subzone == other.subzone,
        ) {
            (false, _, _) => 3,
            (true, false, _) => 2,
            (true, true, false) => 1,
            (true, true, true) => 0,
        }
    }

    /// What topology label `key` says of a workload here, for the keys
    /// istiod derives from its locality.
    pub fn label(&self, key: &str) -> Option<&str> {
        match key {
            REGION_LABEL => Some(&self.region),
            ZONE_LABEL => Some(&self.zone),
            SUBZONE_LABEL => Some(&self.subzone),
            _ => None,
        }
    }
}

/// `region/zone/subzone`, without trailing empty parts.
impl fmt::Display for Locality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts = [&self.region, &self.zone, &self.subzone];
        let used = parts
            .iter()
            .rposition(|p| !p.is_empty())
            .map_or(0, |i| i + 1);
        for (i, part) in parts[..used].iter().enumerate() {
            if i > 0 {
                f.write_str("/")?;
            }
            f.write_str(part)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_labels_and_paths() {
        let labels: Labels = [(LOCALITY_LABEL.to_owned(), "us.east-1.a".to_owned())]
            .into_iter()
            .collect();
        let here = Locality::from_labels(&labels);
        assert_eq!(here.to_string(), "us/east-1/a");
        assert_eq!(Locality::parse("us").to_string(), "us");
        let topology: Labels = [
            (REGION_LABEL.to_owned(), "eu".to_owned()),
            (ZONE_LABEL.to_owned(), "eu-1".to_owned()),
        ]
        .into_iter()
        .collect();
        assert_eq!(Locality::from_labels(&topology).to_string(), "eu/eu-1");
    }

    #[test]
    fn matches_and_ranks_as_istiod() {
        let here = Locality::parse("us/east-1/a");
        for rule in ["us", "us/*", "us/east-1", "us/east-1/a", "*", "us/east-1/*"] {
            assert!(here.matches(rule), "{rule}");
        }
        for rule in ["eu", "us/west-1", "us/east-1/b", "*/west-1"] {
            assert!(!here.matches(rule), "{rule}");
        }
        let ranks: Vec<u32> = ["us/east-1/a", "us/east-1/b", "us/west-1/a", "eu/east-1/a"]
            .into_iter()
            .map(|l| here.distance(&Locality::parse(l)))
            .collect();
        assert_eq!(ranks, [0, 1, 2, 3]);
    }
}

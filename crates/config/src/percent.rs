//! Istio's `Percent` message: `{value: 12.5}`, a share of traffic from 0 to 100.

use serde::Deserialize;

#[derive(Clone, Copy, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Percent {
    #[serde(default)]
    pub value: f64,
}

impl Percent {
    pub fn is_valid(self) -> bool {
        (0.0..=100.0).contains(&self.value)
    }
}

//! ProxyConfig (networking.istio.io/v1beta1): per-workload proxy settings.

use serde::Deserialize;
use std::collections::BTreeMap;

use crate::selector::WorkloadSelector;

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProxyConfig {
    pub selector: Option<WorkloadSelector>,
    /// Worker threads; 0 means one per core.
    pub concurrency: Option<i32>,
    #[serde(default)]
    pub environment_variables: BTreeMap<String, String>,
    pub image: Option<ProxyImage>,
    /// Listener, HTTP and HTTP/2 tuning (Istio 1.29+); read but not yet applied.
    pub connection_settings: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProxyImage {
    #[serde(default)]
    pub image_type: String,
}

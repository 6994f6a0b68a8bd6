//! TCPRoute and TLSRoute: connections routed whole, to weighted backends,
//! TLSRoute by the SNI its `hostnames` match (experimental channel).

use serde::Deserialize;

use super::shared::{BackendRef, ParentReference};

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpRoute {
    #[serde(default)]
    pub parent_refs: Vec<ParentReference>,
    #[serde(default)]
    pub rules: Vec<L4RouteRule>,
    #[serde(default)]
    pub use_default_gateways: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsRoute {
    #[serde(default)]
    pub parent_refs: Vec<ParentReference>,
    #[serde(default)]
    pub hostnames: Vec<String>,
    #[serde(default)]
    pub rules: Vec<L4RouteRule>,
    #[serde(default)]
    pub use_default_gateways: Option<String>,
}

/// A TCPRoute's or TLSRoute's rule: backends only, no matches or filters.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct L4RouteRule {
    pub name: Option<String>,
    #[serde(default)]
    pub backend_refs: Vec<BackendRef<NoFilter>>,
}

/// L4 backends take no filters; a filter there is an unknown field.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoFilter {}

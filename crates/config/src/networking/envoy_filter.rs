//! EnvoyFilter (networking.istio.io/v1alpha3): patches to the generated Envoy config.
//! oxmesh reads and checks them; see docs/compatibility.md for what it applies.

use serde::Deserialize;
use std::collections::BTreeMap;

use crate::networking::service_entry::EntryWorkloadSelector;
use crate::selector::PolicyTargetReference;

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvoyFilter {
    pub workload_selector: Option<EntryWorkloadSelector>,
    #[serde(default)]
    pub target_refs: Vec<PolicyTargetReference>,
    #[serde(default)]
    pub config_patches: Vec<EnvoyConfigObjectPatch>,
    #[serde(default)]
    pub priority: i32,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvoyConfigObjectPatch {
    pub apply_to: Option<ApplyTo>,
    #[serde(rename = "match")]
    pub matches: Option<EnvoyConfigObjectMatch>,
    pub patch: Option<Patch>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ApplyTo {
    Invalid,
    Listener,
    FilterChain,
    NetworkFilter,
    HttpFilter,
    RouteConfiguration,
    VirtualHost,
    HttpRoute,
    Cluster,
    ExtensionConfig,
    Bootstrap,
    ListenerFilter,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvoyConfigObjectMatch {
    pub context: Option<PatchContext>,
    pub proxy: Option<ProxyMatch>,
    pub listener: Option<ListenerMatch>,
    pub route_configuration: Option<RouteConfigurationMatch>,
    pub cluster: Option<ClusterMatch>,
    pub waypoint: Option<WaypointMatch>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PatchContext {
    Any,
    SidecarInbound,
    SidecarOutbound,
    Gateway,
    Waypoint,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProxyMatch {
    #[serde(default)]
    pub proxy_version: String,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListenerMatch {
    #[serde(default)]
    pub port_number: u32,
    #[serde(default)]
    pub port_name: String,
    pub filter_chain: Option<FilterChainMatch>,
    #[serde(default)]
    pub listener_filter: String,
    #[serde(default)]
    pub name: String,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FilterChainMatch {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub sni: String,
    #[serde(default)]
    pub transport_protocol: String,
    #[serde(default)]
    pub application_protocols: String,
    pub filter: Option<FilterMatch>,
    #[serde(default)]
    pub destination_port: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FilterMatch {
    #[serde(default)]
    pub name: String,
    pub sub_filter: Option<SubFilterMatch>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SubFilterMatch {
    #[serde(default)]
    pub name: String,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteConfigurationMatch {
    #[serde(default)]
    pub port_number: u32,
    #[serde(default)]
    pub port_name: String,
    #[serde(default)]
    pub gateway: String,
    pub vhost: Option<VirtualHostMatch>,
    #[serde(default)]
    pub name: String,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualHostMatch {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub domain_name: String,
    pub route: Option<RouteMatch>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteMatch {
    #[serde(default)]
    pub name: String,
    pub action: Option<RouteAction>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RouteAction {
    Any,
    Route,
    Redirect,
    DirectResponse,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterMatch {
    #[serde(default)]
    pub port_number: u32,
    #[serde(default)]
    pub service: String,
    #[serde(default)]
    pub subset: String,
    #[serde(default)]
    pub name: String,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WaypointMatch {
    pub filter: Option<FilterMatch>,
    pub route: Option<WaypointRouteMatch>,
    #[serde(default)]
    pub port_number: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WaypointRouteMatch {
    #[serde(default)]
    pub name: String,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Patch {
    pub operation: Option<Operation>,
    /// An Envoy config fragment, kept as JSON: it is Envoy's schema, not Istio's.
    pub value: Option<serde_json::Map<String, serde_json::Value>>,
    pub filter_class: Option<FilterClass>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Operation {
    Invalid,
    Merge,
    /// Like MERGE, but lists in the patch replace lists instead of appending.
    MergeAndReplaceList,
    Add,
    Remove,
    InsertBefore,
    InsertAfter,
    InsertFirst,
    Replace,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FilterClass {
    Unspecified,
    Authn,
    Authz,
    Stats,
}

impl EnvoyConfigObjectPatch {
    /// Why oxmesh cannot apply this patch, if it cannot: oxmesh applies the
    /// subset Istio's rate-limit and filter-insertion docs use, and an
    /// EnvoyFilter with any other patch is skipped whole, never half-applied.
    pub fn unsupported_by_oxmesh(&self) -> Option<String> {
        let apply_to = self.apply_to?;
        let operation = self.patch.as_ref().and_then(|p| p.operation)?;
        let supported = matches!(
            (apply_to, operation),
            (
                ApplyTo::HttpFilter,
                Operation::InsertBefore | Operation::InsertAfter | Operation::InsertFirst
            ) | (ApplyTo::HttpRoute | ApplyTo::VirtualHost, Operation::Merge)
                | (ApplyTo::Cluster, Operation::Add)
        );
        if !supported {
            return Some(format!(
                "applyTo {} with operation {} is not applied by oxmesh (it applies HTTP_FILTER INSERT_BEFORE/INSERT_AFTER/INSERT_FIRST, HTTP_ROUTE and VIRTUAL_HOST MERGE, CLUSTER ADD)",
                screaming(&format!("{apply_to:?}")),
                screaming(&format!("{operation:?}")),
            ));
        }
        if self
            .patch
            .as_ref()
            .and_then(|p| p.filter_class)
            .is_some_and(|c| c != FilterClass::Unspecified)
        {
            return Some("patch.filterClass is not applied by oxmesh".to_owned());
        }
        let m = self.matches.as_ref()?;
        let unsupported_match = [
            (m.proxy.is_some(), "match.proxy"),
            (
                m.waypoint.is_some() || m.context == Some(PatchContext::Waypoint),
                "waypoint matches",
            ),
            (
                m.listener
                    .as_ref()
                    .is_some_and(|l| !l.listener_filter.is_empty()),
                "match.listener.listenerFilter",
            ),
            (
                m.route_configuration
                    .as_ref()
                    .is_some_and(|r| !r.gateway.is_empty()),
                "match.routeConfiguration.gateway",
            ),
        ];
        unsupported_match
            .iter()
            .find(|(set, _)| *set)
            .map(|(_, what)| format!("{what} is not supported by oxmesh"))
    }
}

/// `HttpFilter` as the API spells it: `HTTP_FILTER`.
fn screaming(camel: &str) -> String {
    let mut out = String::with_capacity(camel.len() + 4);
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

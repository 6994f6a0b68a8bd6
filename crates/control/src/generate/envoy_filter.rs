//! EnvoyFilter: the patches oxmesh applies to what it generates, the subset
//! Istio's rate-limit and filter-insertion docs use: HTTP filters inserted
//! (`INSERT_BEFORE`, `INSERT_AFTER`, `INSERT_FIRST`, with or without a
//! `subFilter`), virtual hosts and routes merged (`typed_per_filter_config`,
//! `rate_limits`), clusters added. Patch values are read once per push into
//! Envoy's types; an EnvoyFilter with any patch oxmesh cannot apply (another
//! kind, a value that does not convert, a filter oxmesh's proxy does not
//! run) is skipped whole and reported, never half-applied.

mod apply;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType;
use oxmesh_config::networking::envoy_filter::{
    ApplyTo, EnvoyConfigObjectMatch, EnvoyConfigObjectPatch, EnvoyFilter, Operation, PatchContext,
};
use oxmesh_config::selector::Labels;
use prost::Message;

pub(crate) use apply::{patch_clusters, patch_listeners, patch_routes};

/// The HTTP filters oxmesh's proxy runs, by config type: an inserted filter
/// of another type would have every listener update refused.
const PROXY_FILTERS: [&str; 8] = [
    "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
    "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit",
    "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
    "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors",
    "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
    "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
    "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
    "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
];
/// The per-route configs oxmesh's proxy takes from a merged route or host.
const PER_ROUTE_CONFIGS: [&str; 1] =
    ["type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"];

/// One EnvoyFilter, read for the generators.
#[derive(Debug)]
pub struct Compiled {
    pub namespace: String,
    pub name: String,
    /// `workloadSelector.labels`; `None` selects every workload in scope.
    pub selector: Option<Labels>,
    pub priority: i32,
    /// The patches in order, or why the EnvoyFilter is not applied.
    pub patches: Result<Vec<Patch>, String>,
}

#[derive(Debug)]
pub struct Patch {
    pub(crate) context: PatchContext,
    pub(crate) matches: EnvoyConfigObjectMatch,
    pub(crate) kind: Kind,
}

#[derive(Debug)]
pub(crate) enum Kind {
    InsertFilter {
        at: Insert,
        filter: Box<HttpFilter>,
    },
    /// A VirtualHost's encoding, merged as protobuf merges.
    MergeVirtualHost(Vec<u8>),
    /// A Route's encoding, merged as protobuf merges.
    MergeRoute(Vec<u8>),
    AddCluster(Box<Cluster>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Insert {
    First,
    Before,
    After,
}

impl Compiled {
    pub fn new(namespace: &str, name: &str, spec: &EnvoyFilter) -> Self {
        let patches = if spec.target_refs.is_empty() {
            spec.config_patches
                .iter()
                .enumerate()
                .map(|(i, p)| patch(p).map_err(|e| format!("configPatches[{i}]: {e}")))
                .collect()
        } else {
            Err("targetRefs are not applied by oxmesh yet".to_owned())
        };
        Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            selector: spec.workload_selector.as_ref().map(|s| s.labels.clone()),
            priority: spec.priority,
            patches,
        }
    }

    /// Why this EnvoyFilter is not applied, naming it and the patch.
    pub fn unapplied(&self) -> Option<String> {
        self.patches.as_ref().err().map(|why| {
            format!(
                "EnvoyFilter {}/{}: {why}; not applied",
                self.namespace, self.name
            )
        })
    }
}

fn patch(p: &EnvoyConfigObjectPatch) -> Result<Patch, String> {
    if let Some(why) = p.unsupported_by_oxmesh() {
        return Err(why);
    }
    let (Some(apply_to), Some(operation)) =
        (p.apply_to, p.patch.as_ref().and_then(|p| p.operation))
    else {
        return Err("applyTo and patch.operation are required".to_owned());
    };
    let value = serde_json::Value::Object(
        p.patch
            .as_ref()
            .and_then(|p| p.value.clone())
            .unwrap_or_default(),
    );
    let encode = |type_name: &str| {
        oxmesh_xds::json::from_json(type_name, &value).map_err(|e| format!("patch.value: {e}"))
    };
    let kind = match (apply_to, operation) {
        (ApplyTo::HttpFilter, op) => {
            let at = match op {
                Operation::InsertFirst => Insert::First,
                Operation::InsertBefore => Insert::Before,
                _ => Insert::After,
            };
            let bytes =
                encode("envoy.extensions.filters.network.http_connection_manager.v3.HttpFilter")?;
            let filter = HttpFilter::decode(bytes.as_slice()).map_err(|e| e.to_string())?;
            runs_in_proxy(&filter)?;
            Kind::InsertFilter {
                at,
                filter: Box::new(filter),
            }
        }
        (ApplyTo::VirtualHost, _) => {
            let bytes = encode("envoy.config.route.v3.VirtualHost")?;
            let host =
                envoy_types::pb::envoy::config::route::v3::VirtualHost::decode(bytes.as_slice())
                    .map_err(|e| e.to_string())?;
            per_route_configs(host.typed_per_filter_config.values())?;
            Kind::MergeVirtualHost(bytes)
        }
        (ApplyTo::HttpRoute, _) => {
            let bytes = encode("envoy.config.route.v3.Route")?;
            let route = envoy_types::pb::envoy::config::route::v3::Route::decode(bytes.as_slice())
                .map_err(|e| e.to_string())?;
            per_route_configs(route.typed_per_filter_config.values())?;
            Kind::MergeRoute(bytes)
        }
        (ApplyTo::Cluster, _) => {
            let bytes = encode("envoy.config.cluster.v3.Cluster")?;
            let cluster = Cluster::decode(bytes.as_slice()).map_err(|e| e.to_string())?;
            if cluster.name.is_empty() {
                return Err("patch.value: an added cluster needs a name".to_owned());
            }
            Kind::AddCluster(Box::new(cluster))
        }
        _ => return Err(format!("applyTo {apply_to:?} is not applied by oxmesh")),
    };
    let matches = p.matches.clone().unwrap_or_default();
    Ok(Patch {
        context: matches.context.unwrap_or(PatchContext::Any),
        matches,
        kind,
    })
}

/// The inserted filter's config type, seen through a TypedStruct.
fn runs_in_proxy(filter: &HttpFilter) -> Result<(), String> {
    let Some(ConfigType::TypedConfig(any)) = &filter.config_type else {
        return Err(format!(
            "patch.value: filter {:?} needs a typed_config",
            filter.name
        ));
    };
    let inner = oxmesh_xds::json::unwrap_typed_struct(any)
        .map_err(|e| format!("patch.value.typed_config: {e}"))?;
    if PROXY_FILTERS.contains(&inner.type_url.as_str()) {
        return Ok(());
    }
    Err(format!(
        "patch.value: filter {:?} of type {} is not one oxmesh's proxy runs",
        filter.name, inner.type_url
    ))
}

fn per_route_configs<'a>(
    configs: impl Iterator<Item = &'a envoy_types::pb::google::protobuf::Any>,
) -> Result<(), String> {
    for any in configs {
        let inner = oxmesh_xds::json::unwrap_typed_struct(any)
            .map_err(|e| format!("patch.value.typed_per_filter_config: {e}"))?;
        if !PER_ROUTE_CONFIGS.contains(&inner.type_url.as_str()) {
            return Err(format!(
                "patch.value.typed_per_filter_config: {} is not a per-route config oxmesh's proxy takes",
                inner.type_url
            ));
        }
    }
    Ok(())
}

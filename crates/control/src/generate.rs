//! The generators: a PushContext and a proxy in, Envoy v3 resources out, named
//! and shaped as Istio names and shapes them so `proxy-config` output reads the
//! same to an Istio user.

pub mod access_log;
pub(crate) mod authn;
pub(crate) mod authz;
pub mod cluster;
pub mod decorator;
pub mod endpoint;
pub(crate) mod envoy_filter;
pub mod gateway;
pub mod grpc;
pub(crate) mod header_ops;
pub mod http;
pub(crate) mod l4_route;
pub mod listener;
pub(crate) mod locality_lb;
pub mod route;
pub mod secret;
pub mod stats;
pub mod tls;
pub mod tracing;
pub mod wire;
pub(crate) mod workload_api;

use envoy_types::util::pack_any;
use oxmesh_xds::ads::{Named, types};

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use crate::proxy::{Proxy, ProxyClass, ProxyKind};
use crate::push_context::PushContext;

/// Every resource of `type_url` for `proxy`; unknown types yield nothing.
/// Generated once per proxy class and PushContext, then shared.
pub fn resources(ctx: &PushContext, proxy: &Proxy, type_url: &str) -> Arc<[Named]> {
    let class = proxy.class();
    ctx.cache
        .get_or_generate(class, type_url, |class| generate(ctx, class, type_url))
}

/// Resources of one type, with the proxy's EnvoyFilter patches applied.
fn generate(ctx: &PushContext, proxy: &ProxyClass, type_url: &str) -> Vec<Named> {
    // istiod's gRPC generator ignores EnvoyFilters too; only clusters,
    // listeners and routes are patched.
    let patched = matches!(type_url, types::CLUSTER | types::LISTENER | types::ROUTE);
    let filters = if proxy.is_grpc() || !patched {
        Vec::new()
    } else {
        ctx.envoy_filters_for(proxy)
    };
    // Node proxies get the workload API and nothing else; nothing else gets
    // it but waypoints, which will need it too.
    match (proxy.kind == ProxyKind::Ztunnel, type_url) {
        (_, types::ADDRESS) => return workload_api::addresses(ctx),
        (_, types::AUTHORIZATION) => return workload_api::authorizations(ctx),
        (true, _) => return Vec::new(),
        (false, _) => {}
    }
    match type_url {
        types::CLUSTER => {
            let mut clusters = cluster::generate(ctx, proxy);
            envoy_filter::patch_clusters(&mut clusters, proxy, &filters);
            named(clusters, |c| c.name.clone())
        }
        types::ENDPOINT => named(endpoint::generate(ctx, proxy), |e| e.cluster_name.clone()),
        types::LISTENER => {
            let mut listeners = listener::generate(ctx, proxy);
            access_log::attach(ctx, proxy, &mut listeners);
            tracing::attach(ctx, proxy, &mut listeners);
            stats::attach(ctx, proxy, &mut listeners);
            envoy_filter::patch_listeners(&mut listeners, proxy, &filters);
            named(listeners, |l| l.name.clone())
        }
        types::ROUTE => {
            let mut routes = route::generate(ctx, proxy);
            if !proxy.is_grpc() {
                decorator::decorate(&mut routes);
            }
            let ports = gateway_ports(ctx, proxy, &filters);
            envoy_filter::patch_routes(&mut routes, proxy, &filters, &ports);
            named(routes, |r| r.name.clone())
        }
        types::SECRET => named(secret::generate(ctx, proxy), |s| s.name.clone()),
        _ => Vec::new(),
    }
}

/// A gateway's (service port, target port) pairs, for EnvoyFilters that
/// name a service port; only looked up when there are filters.
fn gateway_ports(
    ctx: &PushContext,
    proxy: &ProxyClass,
    filters: &[&envoy_filter::Compiled],
) -> Vec<(u32, u32)> {
    if filters.is_empty() || proxy.kind != ProxyKind::Router {
        return Vec::new();
    }
    ctx.services_of(proxy)
        .flat_map(|s| &s.ports)
        .map(|p| (u32::from(p.number), u32::from(cluster::target_port(p))))
        .collect()
}

fn named<T: prost::Message + prost::Name>(
    items: Vec<T>,
    name: impl Fn(&T) -> String,
) -> Vec<Named> {
    items
        .into_iter()
        .map(|item| Named::new(name(&item), pack_any(item)))
        .collect()
}

/// Generated resources per (proxy class, type) for one PushContext. Connections
/// asking for the same entry at once wait for one generation instead of each
/// running their own.
#[derive(Debug, Default)]
pub struct Cache {
    entries: Mutex<HashMap<(ProxyClass, String), Arc<Slot>>>,
}

/// Entries one PushContext keeps; beyond it, resources are generated uncached.
const CACHE_LIMIT: usize = 4096;

/// One entry: filled once, by whichever connection asks first.
type Slot = OnceLock<Arc<[Named]>>;

impl Cache {
    fn get_or_generate(
        &self,
        class: ProxyClass,
        type_url: &str,
        make: impl FnOnce(&ProxyClass) -> Vec<Named>,
    ) -> Arc<[Named]> {
        let cell = {
            // Held only to find the entry, never while generating.
            let mut entries = self
                .entries
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let key = (class.clone(), type_url.to_owned());
            if entries.len() >= CACHE_LIMIT && !entries.contains_key(&key) {
                // Labels come from the proxies: made-up ones must not grow this.
                drop(entries);
                return Arc::from(make(&class));
            }
            entries.entry(key).or_default().clone()
        };
        cell.get_or_init(|| Arc::from(make(&class))).clone()
    }
}

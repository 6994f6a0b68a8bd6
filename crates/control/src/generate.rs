//! The generators: a PushContext and a proxy in, Envoy v3 resources out, named
//! and shaped as Istio names and shapes them so `proxy-config` output reads the
//! same to an Istio user.

pub mod cluster;
pub mod endpoint;
pub mod grpc;
pub mod listener;
pub mod route;
pub mod secret;
pub mod tls;
pub mod wire;

use envoy_types::util::pack_any;
use oxmesh_xds::ads::{Named, types};

use crate::proxy::Proxy;
use crate::push_context::PushContext;

/// Every resource of `type_url` for `proxy`; unknown types yield nothing.
pub fn resources(ctx: &PushContext, proxy: &Proxy, type_url: &str) -> Vec<Named> {
    match type_url {
        types::CLUSTER => named(cluster::generate(ctx, proxy), |c| c.name.clone()),
        types::ENDPOINT => named(endpoint::generate(ctx, proxy), |e| e.cluster_name.clone()),
        types::LISTENER => named(listener::generate(ctx, proxy), |l| l.name.clone()),
        types::ROUTE => named(route::generate(ctx, proxy), |r| r.name.clone()),
        types::SECRET => named(secret::generate(ctx, proxy), |s| s.name.clone()),
        _ => Vec::new(),
    }
}

fn named<T: prost::Message + prost::Name>(
    items: Vec<T>,
    name: impl Fn(&T) -> String,
) -> Vec<Named> {
    items
        .into_iter()
        .map(|item| Named {
            name: name(&item),
            resource: pack_any(item),
        })
        .collect()
}

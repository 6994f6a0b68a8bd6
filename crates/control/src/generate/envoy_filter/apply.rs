//! Applying compiled patches to one proxy's generated listeners, route
//! configurations and clusters, matching as istiod matches: the patch
//! context (inbound, outbound, gateway), the listener and filter chain, the
//! route configuration, virtual host and route.

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::TrafficDirection;
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType as FilterConfig;
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, Listener};
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::{Route, RouteConfiguration, VirtualHost};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::util::pack_any;
use oxmesh_config::networking::envoy_filter::{PatchContext, RouteAction};
use prost::Message;

use super::{Compiled, Insert, Kind, Patch};
use crate::proxy::{ProxyClass, ProxyKind};

const HCM: &str = "envoy.filters.network.http_connection_manager";
const HCM_LEGACY: &str = "envoy.http_connection_manager";
const HCM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const VIRTUAL_INBOUND: &str = "virtualInbound";
const VIRTUAL_OUTBOUND: &str = "virtualOutbound";

fn patches<'a>(filters: &'a [&'a Compiled]) -> impl Iterator<Item = &'a Patch> + 'a {
    filters
        .iter()
        .filter_map(|f| f.patches.as_ref().ok())
        .flatten()
}

/// A gateway's patch context, or a sidecar's outbound one.
fn outbound_context(proxy: &ProxyClass) -> PatchContext {
    if proxy.kind == ProxyKind::Router {
        PatchContext::Gateway
    } else {
        PatchContext::SidecarOutbound
    }
}

fn context_matches(patch: &Patch, here: PatchContext) -> bool {
    patch.context == PatchContext::Any || patch.context == here
}

/// HTTP filters inserted into every matching connection manager, and inbound
/// inline route configurations patched.
pub(crate) fn patch_listeners(
    listeners: &mut [Listener],
    proxy: &ProxyClass,
    filters: &[&Compiled],
) {
    if filters.is_empty() {
        return;
    }
    for listener in listeners {
        let here = if proxy.kind != ProxyKind::Router
            && listener.traffic_direction == TrafficDirection::Inbound as i32
        {
            PatchContext::SidecarInbound
        } else {
            outbound_context(proxy)
        };
        let name = listener.name.clone();
        let port = listener_port(listener);
        let chains = listener
            .filter_chains
            .iter_mut()
            .chain(listener.default_filter_chain.as_mut());
        for chain in chains {
            patch_chain(chain, &name, port, here, filters);
        }
    }
}

fn listener_port(listener: &Listener) -> u32 {
    use envoy_types::pb::envoy::config::core::v3::address::Address;
    use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
    match listener.address.as_ref().and_then(|a| a.address.as_ref()) {
        Some(Address::SocketAddress(s)) => match s.port_specifier {
            Some(PortSpecifier::PortValue(p)) => p,
            _ => 0,
        },
        _ => 0,
    }
}

fn patch_chain(
    chain: &mut FilterChain,
    listener: &str,
    port: u32,
    here: PatchContext,
    filters: &[&Compiled],
) {
    let wanted: Vec<&Patch> = patches(filters)
        .filter(|p| context_matches(p, here))
        .filter(|p| {
            let merge = matches!(p.kind, Kind::MergeVirtualHost(_) | Kind::MergeRoute(_));
            let inserts = matches!(p.kind, Kind::InsertFilter { .. });
            (inserts || (merge && p.matches.listener.is_some()))
                && chain_matches(p, listener, port, chain)
                || merge && p.matches.listener.is_none()
        })
        .collect();
    if wanted.is_empty() {
        return;
    }
    for filter in &mut chain.filters {
        let Some(FilterConfig::TypedConfig(any)) = &mut filter.config_type else {
            continue;
        };
        if any.type_url != HCM_TYPE {
            continue;
        }
        let Ok(mut hcm) = HttpConnectionManager::decode(any.value.as_slice()) else {
            continue;
        };
        let mut changed = false;
        for patch in &wanted {
            changed |= match &patch.kind {
                Kind::InsertFilter { at, filter: added } => {
                    network_filter_named(patch, &filter.name) && insert(&mut hcm, *at, added, patch)
                }
                Kind::MergeVirtualHost(_) | Kind::MergeRoute(_) => false,
                Kind::AddCluster(_) => false,
            };
        }
        // Inline route configurations (inbound), hosts' merges first.
        if let Some(RouteSpecifier::RouteConfig(rc)) = &mut hcm.route_specifier {
            let merges: Vec<&Patch> = wanted
                .iter()
                .copied()
                .filter(|p| matches!(p.kind, Kind::MergeVirtualHost(_) | Kind::MergeRoute(_)))
                .collect();
            changed |= patch_route_config(rc, here, &merges, &[]);
        }
        if changed {
            *any = pack_any(hcm);
        }
    }
}

/// The listener match: name, port (for the virtual listeners, the chain's
/// destination port), and the filter chain's own fields.
fn chain_matches(patch: &Patch, listener: &str, port: u32, chain: &FilterChain) -> bool {
    let Some(m) = &patch.matches.listener else {
        return patch.matches.route_configuration.is_none() && patch.matches.cluster.is_none();
    };
    if !m.name.is_empty() && m.name != listener {
        return false;
    }
    let chain_match = chain.filter_chain_match.as_ref();
    let destination_port = chain_match
        .and_then(|c| c.destination_port)
        .map_or(0, |p| p.value);
    let virtual_listener = listener == VIRTUAL_INBOUND || listener == VIRTUAL_OUTBOUND;
    if m.port_number != 0 {
        let seen = if virtual_listener {
            destination_port
        } else {
            port
        };
        if seen != m.port_number {
            return false;
        }
    }
    let Some(fc) = &m.filter_chain else {
        return true;
    };
    let server_names = chain_match
        .map(|c| c.server_names.as_slice())
        .unwrap_or_default();
    let transport = chain_match.map_or("", |c| c.transport_protocol.as_str());
    (fc.name.is_empty() || fc.name == chain.name)
        && (fc.sni.is_empty() || server_names.contains(&fc.sni))
        && (fc.transport_protocol.is_empty() || fc.transport_protocol == transport)
        // istiod does not match applicationProtocols either.
        && (fc.destination_port == 0 || fc.destination_port == destination_port)
}

/// The patch's `filter.name`, when it names one, is this network filter.
fn network_filter_named(patch: &Patch, name: &str) -> bool {
    let wanted = patch
        .matches
        .listener
        .as_ref()
        .and_then(|l| l.filter_chain.as_ref())
        .and_then(|c| c.filter.as_ref())
        .map_or("", |f| f.name.as_str());
    let canonical = |n: &str| if n == HCM_LEGACY { HCM } else { n }.to_owned();
    wanted.is_empty() || canonical(wanted) == canonical(name)
}

/// Inserts `added` as istiod does: FIRST puts it first whatever the match;
/// without a `subFilter`, BEFORE puts it first and AFTER last; with one,
/// next to that filter, or nowhere when the chain does not have it.
fn insert(
    hcm: &mut HttpConnectionManager,
    at: Insert,
    added: &envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter,
    patch: &Patch,
) -> bool {
    let sub = patch
        .matches
        .listener
        .as_ref()
        .and_then(|l| l.filter_chain.as_ref())
        .and_then(|c| c.filter.as_ref())
        .and_then(|f| f.sub_filter.as_ref())
        .map(|s| s.name.as_str())
        .filter(|s| !s.is_empty());
    let filters = &mut hcm.http_filters;
    let index = match (sub, at) {
        (_, Insert::First) | (None, Insert::Before) => 0,
        (None, Insert::After) => filters.len(),
        (Some(name), _) => match filters.iter().position(|f| f.name == name) {
            None => return false,
            Some(i) if at == Insert::Before => i,
            Some(i) => i + 1,
        },
    };
    filters.insert(index, added.clone());
    true
}

/// Virtual host and route merges on RDS route configurations; `ports` are
/// a gateway's (service port, target port) pairs.
pub(crate) fn patch_routes(
    configs: &mut [RouteConfiguration],
    proxy: &ProxyClass,
    filters: &[&Compiled],
    ports: &[(u32, u32)],
) {
    if filters.is_empty() {
        return;
    }
    let here = outbound_context(proxy);
    let wanted: Vec<&Patch> = patches(filters)
        .filter(|p| context_matches(p, here))
        .collect();
    for rc in configs {
        patch_route_config(rc, here, &wanted, ports);
    }
}

/// Virtual host merges first, then route merges (as istiod orders them, so
/// routes see what their host's patches did), each in patch order.
fn patch_route_config(
    rc: &mut RouteConfiguration,
    here: PatchContext,
    wanted: &[&Patch],
    ports: &[(u32, u32)],
) -> bool {
    let mut changed = false;
    let hosts_first = wanted
        .iter()
        .filter(|p| matches!(p.kind, Kind::MergeVirtualHost(_)))
        .chain(
            wanted
                .iter()
                .filter(|p| matches!(p.kind, Kind::MergeRoute(_))),
        );
    for patch in hosts_first {
        let bytes = match &patch.kind {
            Kind::MergeVirtualHost(b) | Kind::MergeRoute(b) => b,
            _ => continue,
        };
        if !route_config_matches(patch, rc, here, ports) {
            continue;
        }
        for vh in &mut rc.virtual_hosts {
            if !virtual_host_matches(patch, vh) {
                continue;
            }
            match &patch.kind {
                Kind::MergeVirtualHost(_) => {
                    changed |= merge(vh, "envoy.config.route.v3.VirtualHost", bytes);
                }
                _ => {
                    for route in &mut vh.routes {
                        if route_matches(patch, route) {
                            changed |= merge(route, "envoy.config.route.v3.Route", bytes);
                        }
                    }
                }
            }
        }
    }
    changed
}

/// `patch` merged into `target` as istiod merges; a value that does not
/// merge (it was read with the same descriptors, so it should) leaves the
/// target as it was.
fn merge<T: Message + Default>(target: &mut T, type_name: &str, patch: &[u8]) -> bool {
    let merged = oxmesh_xds::json::merge(type_name, &target.encode_to_vec(), patch)
        .ok()
        .and_then(|bytes| T::decode(bytes.as_slice()).ok());
    match merged {
        Some(merged) => {
            *target = merged;
            true
        }
        None => {
            tracing::warn!(
                type_name,
                "an EnvoyFilter merge failed; the generated value stays"
            );
            false
        }
    }
}

/// The route configuration's port: `9080` outbound, `inbound|9080||`
/// inbound, `http.8080` at a gateway.
fn route_config_port(name: &str) -> u32 {
    let digits = if let Some(rest) = name.strip_prefix("inbound|") {
        rest.split('|').next().unwrap_or_default()
    } else if let Some((_, rest)) = name.split_once('.') {
        rest.split('.').next().unwrap_or_default()
    } else {
        name
    };
    digits.parse().unwrap_or(0)
}

/// `ports` are a gateway's (service port, target port) pairs: at a
/// gateway, `portNumber` may name either, as istiod matches it.
fn route_config_matches(
    patch: &Patch,
    rc: &RouteConfiguration,
    here: PatchContext,
    ports: &[(u32, u32)],
) -> bool {
    let Some(m) = &patch.matches.route_configuration else {
        return patch.matches.cluster.is_none();
    };
    let port = route_config_port(&rc.name);
    let port_matches = m.port_number == port
        || here == PatchContext::Gateway
            && ports
                .iter()
                .any(|(service, target)| *service == m.port_number && *target == port);
    if m.port_number != 0 && !port_matches {
        return false;
    }
    if here == PatchContext::Gateway && !m.port_name.is_empty() {
        let port_name = rc.name.split('.').nth(2).unwrap_or_default();
        if port_name != m.port_name {
            return false;
        }
    }
    m.name.is_empty() || m.name == rc.name
}

fn virtual_host_matches(patch: &Patch, vh: &VirtualHost) -> bool {
    let Some(m) = patch
        .matches
        .route_configuration
        .as_ref()
        .and_then(|r| r.vhost.as_ref())
    else {
        return true;
    };
    (m.name.is_empty() || m.name == vh.name)
        && (m.domain_name.is_empty() || vh.domains.contains(&m.domain_name))
}

fn route_matches(patch: &Patch, route: &Route) -> bool {
    let Some(m) = patch
        .matches
        .route_configuration
        .as_ref()
        .and_then(|r| r.vhost.as_ref())
        .and_then(|v| v.route.as_ref())
    else {
        return true;
    };
    let action = match m.action {
        None | Some(RouteAction::Any) => true,
        Some(RouteAction::Route) => matches!(route.action, Some(Action::Route(_))),
        Some(RouteAction::Redirect) => matches!(route.action, Some(Action::Redirect(_))),
        Some(RouteAction::DirectResponse) => {
            matches!(route.action, Some(Action::DirectResponse(_)))
        }
    };
    action && (m.name.is_empty() || m.name == route.name)
}

/// Clusters added (a rate limit service's); a name already generated keeps
/// the generated cluster. A sidecar takes those for its inbound side too, as
/// istiod adds them.
pub(crate) fn patch_clusters(
    clusters: &mut Vec<Cluster>,
    proxy: &ProxyClass,
    filters: &[&Compiled],
) {
    let here = outbound_context(proxy);
    let inbound = here == PatchContext::SidecarOutbound;
    let applies = |p: &&Patch| {
        context_matches(p, here) || inbound && context_matches(p, PatchContext::SidecarInbound)
    };
    for patch in patches(filters).filter(applies) {
        if let Kind::AddCluster(cluster) = &patch.kind
            && !clusters.iter().any(|c| c.name == cluster.name)
        {
            clusters.push((**cluster).clone());
        }
    }
}

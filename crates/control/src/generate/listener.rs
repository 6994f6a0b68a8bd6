//! LDS for sidecars: `virtualOutbound` (15001), where captured outbound
//! connections land, and `virtualInbound` (15006), where captured inbound ones do.
//! Both pick a filter chain by the connection's original destination port and IP.
//!
//! Outbound: HTTP ports go through http_connection_manager with the port's route
//! configuration (RDS); TCP services through tcp_proxy on their VIP; the rest to
//! PassthroughCluster (ALLOW_ANY) or BlackHoleCluster (REGISTRY_ONLY).
//! Inbound: each workload port follows its PeerAuthentication mode: STRICT accepts
//! only mesh mTLS, PERMISSIVE mTLS and plaintext (told apart by the TLS inspector),
//! DISABLE plaintext.

use std::collections::HashSet;
use std::net::IpAddr;

use envoy_types::pb::envoy::config::core::v3::{CidrRange, TrafficDirection, TransportSocket};
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, FilterChainMatch, Listener, ListenerFilter};
use envoy_types::pb::envoy::config::listener::v3::listener_filter_chain_match_predicate::{MatchSet, Rule};
use envoy_types::pb::envoy::config::listener::v3::ListenerFilterChainMatchPredicate;
use envoy_types::pb::envoy::r#type::v3::Int32Range;
use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::config::route::v3::{Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, route};
use envoy_types::pb::envoy::extensions::filters::listener::http_inspector::v3::HttpInspector;
use envoy_types::pb::envoy::extensions::filters::listener::original_dst::v3::OriginalDst;
use envoy_types::pb::envoy::extensions::filters::listener::original_src::v3::OriginalSrc;
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::DownstreamTlsContext;
use envoy_types::pb::google::protobuf::BoolValue;
use oxmesh_config::protocol::Protocol;
use oxmesh_config::security::peer_authentication::MtlsMode;
use oxmesh_config::service::{Resolution, Service, ServicePort};

use super::cluster::{self, BLACKHOLE, INBOUND_PASSTHROUGH, PASSTHROUGH};
use super::{authz, http, l4_route, route as rds, tls, wire};
use crate::mesh_config::OutboundTrafficPolicy;
use crate::proxy::{ProxyClass, ProxyKind};
use crate::push_context::PushContext;

pub const VIRTUAL_OUTBOUND: &str = "virtualOutbound";
pub const VIRTUAL_INBOUND: &str = "virtualInbound";
pub const OUTBOUND_PORT: u16 = 15001;
pub const INBOUND_PORT: u16 = 15006;
/// The mark TPROXY interception routes back to the proxy (istio-iptables').
const TPROXY_MARK: u32 = 1337;
/// ALPN values a mesh client offers; an inbound TLS connection carrying one of
/// them is mesh mTLS, anything else is the application's own TLS.
pub(super) const MESH_ALPNS: [&str; 5] = [
    "istio-peer-exchange",
    "istio",
    "istio-http/1.0",
    "istio-http/1.1",
    "istio-h2",
];
/// How long the HTTP inspector waits for a client's first bytes.
const INSPECTION_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(100);
/// ALPN values the HTTP inspector reports for plaintext HTTP.
const HTTP_ALPNS: [&str; 2] = ["http/1.1", "h2c"];

/// Calls `f` with each network filter of `listeners` and the Telemetry mode
/// it serves in: SERVER on a sidecar's inbound listener, CLIENT elsewhere
/// (outbound, gateways), as istiod reads `match.mode`.
pub(crate) fn each_filter_by_mode(
    proxy: &ProxyClass,
    listeners: &mut [Listener],
    mut f: impl FnMut(&mut Filter, oxmesh_config::telemetry::WorkloadMode),
) {
    each_chain_by_mode(proxy, listeners, |chain, mode| {
        for filter in &mut chain.filters {
            f(filter, mode);
        }
    });
}

/// Calls `f` with each filter chain of `listeners` and its Telemetry mode
/// (see [`each_filter_by_mode`]).
pub(crate) fn each_chain_by_mode(
    proxy: &ProxyClass,
    listeners: &mut [Listener],
    mut f: impl FnMut(&mut FilterChain, oxmesh_config::telemetry::WorkloadMode),
) {
    use oxmesh_config::telemetry::WorkloadMode;
    for listener in listeners {
        let inbound = proxy.kind == ProxyKind::Sidecar
            && listener.traffic_direction == TrafficDirection::Inbound as i32;
        let mode = if inbound {
            WorkloadMode::Server
        } else {
            WorkloadMode::Client
        };
        let chains = listener
            .filter_chains
            .iter_mut()
            .chain(listener.default_filter_chain.as_mut());
        for chain in chains {
            f(chain, mode);
        }
    }
}

pub fn generate(ctx: &PushContext, proxy: &ProxyClass) -> Vec<Listener> {
    match proxy.kind {
        ProxyKind::Sidecar if proxy.is_grpc() => super::grpc::listeners(ctx, proxy),
        ProxyKind::Sidecar => vec![outbound(ctx, proxy), inbound(ctx, proxy)],
        ProxyKind::Router => super::gateway::listeners(ctx, proxy),
        // Waypoints get their listeners with the ambient issue; node
        // proxies never ask for Envoy's types.
        ProxyKind::Waypoint | ProxyKind::Ztunnel => Vec::new(),
    }
}

/// tcp_proxy to `targets` (weighted when several), with an idle timeout
/// when the destination's DestinationRule sets one.
pub(super) fn tcp_proxy_weighted(
    targets: Vec<(String, u32)>,
    idle: Option<std::time::Duration>,
) -> Filter {
    let idle_timeout = idle.map(wire::duration);
    match targets.as_slice() {
        [(only, _)] => http::network_filter(
            "envoy.filters.network.tcp_proxy",
            TcpProxy {
                stat_prefix: only.clone(),
                cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(only.clone())),
                idle_timeout,
                ..Default::default()
            },
        ),
        _ => http::network_filter(
            "envoy.filters.network.tcp_proxy",
            TcpProxy {
                stat_prefix: targets.first().map(|t| t.0.clone()).unwrap_or_default(),
                cluster_specifier: Some(tcp_proxy::ClusterSpecifier::WeightedClusters(
                    tcp_proxy::WeightedCluster {
                        clusters: targets
                            .into_iter()
                            .map(
                                |(name, weight)| tcp_proxy::weighted_cluster::ClusterWeight {
                                    name,
                                    weight,
                                    ..Default::default()
                                },
                            )
                            .collect(),
                    },
                )),
                idle_timeout,
                ..Default::default()
            },
        ),
    }
}

/// A service port's TCP or TLS chains (see [`l4_route`]): each on the port,
/// on its rule's subnets or else `addresses` (the service's VIPs; none for a
/// service without one), and on SNI names when it has them. An SNI name or
/// subnet an earlier chain of the port already claimed is left to it, as
/// Envoy refuses two chains for one; a chain left with none is dropped.
fn l4_chains(
    ctx: &PushContext,
    proxy: &ProxyClass,
    service: &Service,
    port: &ServicePort,
    name: &str,
    addresses: &[CidrRange],
) -> Vec<FilterChain> {
    let mut claimed: HashSet<(String, String)> = HashSet::new();
    let mut out = Vec::new();
    for c in l4_route::chains(ctx, proxy, service, port) {
        let ranges = match ranges_for(&c.subnets, &service.addresses, addresses) {
            Ok(Some(ranges)) => ranges,
            Ok(None) => continue,
            Err(bad) => {
                tracing::warn!(
                    "{}:{}: destination subnet {bad:?} is not an address or CIDR; its rule is left out",
                    service.hostname,
                    port.number
                );
                continue;
            }
        };
        // Each (range, name) pair may belong to one chain only: names with a
        // claimed pair go, then ranges with one.
        let names_or_any: Vec<String> = if c.server_names.is_empty() {
            vec![String::new()]
        } else {
            c.server_names.clone()
        };
        let taken = |r: &CidrRange, n: &String| claimed.contains(&(range_text(r), n.clone()));
        let server_names: Vec<String> = c
            .server_names
            .iter()
            .filter(|n| !ranges.iter().any(|r| taken(r, n)))
            .cloned()
            .collect();
        if server_names.is_empty() && !c.server_names.is_empty() {
            continue;
        }
        let kept_names: Vec<String> = if c.server_names.is_empty() {
            names_or_any
        } else {
            server_names.clone()
        };
        let prefix_ranges: Vec<CidrRange> = ranges
            .iter()
            .filter(|r| !kept_names.iter().any(|n| taken(r, n)))
            .cloned()
            .collect();
        if prefix_ranges.is_empty() && !ranges.is_empty() {
            continue;
        }
        for r in &prefix_ranges {
            claimed.extend(kept_names.iter().map(|n| (range_text(r), n.clone())));
        }
        let chain_name = match (server_names.is_empty(), c.subnets.is_empty()) {
            (true, true) => name.to_owned(),
            _ => format!(
                "{name}_{}",
                server_names
                    .iter()
                    .chain(&c.subnets)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        };
        let matching = FilterChainMatch {
            destination_port: Some(wire::u32_value(u32::from(port.number))),
            prefix_ranges,
            server_names,
            ..Default::default()
        };
        out.push(chain(
            chain_name,
            matching,
            vec![tcp_proxy_weighted(c.targets, c.idle_timeout)],
        ));
    }
    out
}

fn range_text(range: &CidrRange) -> String {
    format!(
        "{}/{}",
        range.address_prefix,
        range.prefix_len.as_ref().map_or(0, |l| l.value)
    )
}

/// Where a rule's chain matches: its subnets, else the service's VIPs. For
/// a service with VIPs only the VIPs its subnets hold, as istiod's chains
/// on a listener bound to the VIP see nothing else (`Ok(None)`: none, the
/// rule never applies); for one without, the subnets themselves. `Err`
/// names a subnet that does not parse.
fn ranges_for(
    subnets: &[String],
    vips: &[IpAddr],
    vip_ranges: &[CidrRange],
) -> Result<Option<Vec<CidrRange>>, String> {
    if subnets.is_empty() {
        return Ok(Some(vip_ranges.to_vec()));
    }
    let nets = subnets
        .iter()
        .map(|s| subnet(s).ok_or_else(|| s.clone()))
        .collect::<Result<Vec<ipnet::IpNet>, String>>()?;
    if vips.is_empty() {
        return Ok(Some(nets.iter().map(|n| cidr_of(*n)).collect()));
    }
    let held: Vec<CidrRange> = vips
        .iter()
        .filter(|vip| nets.iter().any(|n| n.contains(*vip)))
        .map(|vip| cidr(*vip))
        .collect();
    Ok((!held.is_empty()).then_some(held))
}

/// `a.b.c.d/n` or a bare address.
fn subnet(text: &str) -> Option<ipnet::IpNet> {
    text.parse::<ipnet::IpNet>()
        .ok()
        .or_else(|| text.parse::<IpAddr>().ok().map(ipnet::IpNet::from))
        .map(|n| n.trunc())
}

fn cidr_of(net: ipnet::IpNet) -> CidrRange {
    CidrRange {
        address_prefix: net.network().to_string(),
        prefix_len: Some(wire::u32_value(u32::from(net.prefix_len()))),
    }
}

fn tcp_proxy_to(stat_prefix: &str, cluster: &str) -> Filter {
    http::network_filter(
        "envoy.filters.network.tcp_proxy",
        TcpProxy {
            stat_prefix: stat_prefix.to_owned(),
            cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(cluster.to_owned())),
            ..Default::default()
        },
    )
}

fn cidr(ip: IpAddr) -> CidrRange {
    let len = if ip.is_ipv4() { 32 } else { 128 };
    CidrRange {
        address_prefix: ip.to_string(),
        prefix_len: Some(wire::u32_value(len)),
    }
}

fn chain(name: String, matching: FilterChainMatch, filters: Vec<Filter>) -> FilterChain {
    FilterChain {
        name,
        filter_chain_match: Some(matching),
        filters,
        ..Default::default()
    }
}

/// A filter chain match's identity: Envoy refuses a listener with two equal ones.
type MatchKey = (Option<u32>, Vec<String>, String, Vec<String>, Vec<String>);

fn key(m: &FilterChainMatch) -> MatchKey {
    (
        m.destination_port.as_ref().map(|p| p.value),
        m.prefix_ranges
            .iter()
            .map(|c| {
                format!(
                    "{}/{}",
                    c.address_prefix,
                    c.prefix_len.as_ref().map_or(0, |l| l.value)
                )
            })
            .collect(),
        m.transport_protocol.clone(),
        m.application_protocols.clone(),
        m.server_names.clone(),
    )
}

fn outbound(ctx: &PushContext, proxy: &ProxyClass) -> Listener {
    let mut chains = Vec::new();
    let http_ports: HashSet<u16> = rds::outbound_ports(ctx, proxy).into_iter().collect();
    let unknown_ports = unknown_ports(ctx, proxy);
    let mut sorted_http: Vec<u16> = http_ports.iter().copied().collect();
    sorted_http.sort_unstable();
    for port in &sorted_http {
        let name = format!("0.0.0.0_{port}");
        let routes = http::rds(port.to_string());
        // Undeclared protocols are HTTP only if the inspector says so; the rest
        // falls through to the default chain.
        let application_protocols = if unknown_ports.contains(port) {
            HTTP_ALPNS.iter().map(|s| (*s).to_owned()).collect()
        } else {
            Vec::new()
        };
        let matching = FilterChainMatch {
            destination_port: Some(wire::u32_value(u32::from(*port))),
            application_protocols,
            ..Default::default()
        };
        chains.push(chain(
            name.clone(),
            matching,
            vec![http::manager_filter(
                format!("outbound_{name}"),
                routes,
                http::Side::Outbound,
                Vec::new(),
            )],
        ));
    }
    let mut seen_hosts = HashSet::new();
    for service in ctx.services_for(proxy) {
        if !seen_hosts.insert(service.hostname.clone()) {
            continue;
        }
        for port in service.ports.iter().filter(|p| !p.protocol.is_http()) {
            let destination_port = Some(wire::u32_value(u32::from(port.number)));
            if service.addresses.is_empty() {
                // No VIP: the port alone selects the service, unless HTTP
                // has it; on TLS ports the SNI does (passthrough services
                // too, so REGISTRY_ONLY lets them through).
                let by_sni = port.protocol.is_tls();
                if !http_ports.contains(&port.number)
                    && (by_sni || service.resolution != Resolution::Passthrough)
                {
                    let name = format!("0.0.0.0_{}", port.number);
                    chains.extend(l4_chains(ctx, proxy, service, port, &name, &[]));
                }
                continue;
            }
            let prefix_ranges: Vec<CidrRange> =
                service.addresses.iter().copied().map(cidr).collect();
            let name = format!("{}_{}", service.addresses[0], port.number);
            if port.protocol == Protocol::Unknown {
                // Not declared: HTTP if the inspector sees HTTP, TCP otherwise.
                let http = FilterChainMatch {
                    destination_port,
                    prefix_ranges: prefix_ranges.clone(),
                    application_protocols: HTTP_ALPNS.iter().map(|s| (*s).to_owned()).collect(),
                    ..Default::default()
                };
                let routes = http::rds(port.number.to_string());
                chains.push(chain(
                    name.clone(),
                    http,
                    vec![http::manager_filter(
                        format!("outbound_{name}"),
                        routes,
                        http::Side::Outbound,
                        Vec::new(),
                    )],
                ));
            }
            chains.extend(l4_chains(ctx, proxy, service, port, &name, &prefix_ranges));
        }
    }
    let mut keys = HashSet::new();
    chains.retain(|c| {
        c.filter_chain_match
            .as_ref()
            .is_none_or(|m| keys.insert(key(m)))
    });
    let fallthrough = match ctx.mesh.outbound_traffic_policy {
        OutboundTrafficPolicy::AllowAny => PASSTHROUGH,
        OutboundTrafficPolicy::RegistryOnly => BLACKHOLE,
    };
    Listener {
        name: VIRTUAL_OUTBOUND.to_owned(),
        address: Some(wire::socket_address("0.0.0.0", OUTBOUND_PORT)),
        use_original_dst: Some(BoolValue { value: true }),
        traffic_direction: TrafficDirection::Outbound as i32,
        listener_filters: outbound_listener_filters(&unknown_ports, &sni_ports(&chains)),
        // Server-first protocols send nothing: never hold their connections.
        listener_filters_timeout: Some(wire::duration(INSPECTION_TIMEOUT)),
        continue_on_listener_filters_timeout: true,
        filter_chains: chains,
        default_filter_chain: Some(FilterChain {
            name: "PassthroughFilterChain".to_owned(),
            filters: vec![tcp_proxy_to(fallthrough, fallthrough)],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Ports where a visible service declares no protocol: only there is the first
/// data inspected for HTTP.
fn unknown_ports(ctx: &PushContext, proxy: &ProxyClass) -> Vec<u16> {
    let mut ports: Vec<u16> = ctx
        .services_for(proxy)
        .flat_map(|s| &s.ports)
        .filter(|p| p.protocol == Protocol::Unknown)
        .map(|p| p.number)
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// Ports where some outbound chain matches on SNI.
fn sni_ports(chains: &[FilterChain]) -> Vec<u16> {
    let mut ports: Vec<u16> = chains
        .iter()
        .filter_map(|c| c.filter_chain_match.as_ref())
        .filter(|m| !m.server_names.is_empty())
        .filter_map(|m| m.destination_port.as_ref())
        .filter_map(|p| u16::try_from(p.value).ok())
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// The original destination always; the TLS inspector only for ports with
/// SNI chains, the HTTP inspector only for ports whose protocol must be
/// detected (disabled everywhere else, as Istio does: a server-first
/// protocol is never held).
fn outbound_listener_filters(unknown_ports: &[u16], sni_ports: &[u16]) -> Vec<ListenerFilter> {
    let mut filters = vec![http::listener_filter(
        "envoy.filters.listener.original_dst",
        OriginalDst {},
    )];
    if !sni_ports.is_empty() {
        let mut inspector = http::listener_filter(
            "envoy.filters.listener.tls_inspector",
            TlsInspector::default(),
        );
        inspector.filter_disabled = Some(only_on(sni_ports));
        filters.push(inspector);
    }
    if !unknown_ports.is_empty() {
        let mut inspector =
            http::listener_filter("envoy.filters.listener.http_inspector", HttpInspector {});
        inspector.filter_disabled = Some(only_on(unknown_ports));
        filters.push(inspector);
    }
    filters
}

/// A `filter_disabled` predicate that leaves a listener filter on only for
/// connections to `ports`.
fn only_on(ports: &[u16]) -> ListenerFilterChainMatchPredicate {
    let on_port = |port: u16| ListenerFilterChainMatchPredicate {
        rule: Some(Rule::DestinationPortRange(Int32Range {
            start: i32::from(port),
            end: i32::from(port) + 1,
        })),
    };
    let here = ListenerFilterChainMatchPredicate {
        rule: Some(Rule::OrMatch(MatchSet {
            rules: ports.iter().copied().map(on_port).collect(),
        })),
    };
    ListenerFilterChainMatchPredicate {
        rule: Some(Rule::NotMatch(Box::new(here))),
    }
}

fn inbound(ctx: &PushContext, proxy: &ProxyClass) -> Listener {
    // Every inbound chain is guarded, the catch-all and TLS passthrough ones
    // too, as in Istio: HTTP chains in their connection manager, TCP chains
    // in front of tcp_proxy.
    let authz = authz::Filters::for_proxy(ctx, proxy);
    let guarded_tcp = |cluster: &str| {
        let mut filters = authz.tcp.clone();
        filters.push(tcp_proxy_to(cluster, cluster));
        filters
    };
    let mut chains = Vec::new();
    for (port, protocol) in cluster::inbound_ports(ctx, proxy) {
        let mode = ctx.mtls_mode(proxy, Some(port));
        let cluster = cluster::inbound_name(port);
        let service_port = cluster::inbound_service_port(ctx, proxy, port);
        let filters = |prefix: &str| {
            if protocol.is_http() {
                vec![http::manager_filter(
                    format!("{prefix}_{port}"),
                    RouteSpecifier::RouteConfig(inbound_routes(port, service_port)),
                    http::Side::Inbound,
                    authz.http.clone(),
                )]
            } else {
                guarded_tcp(&cluster)
            }
        };
        chains.extend(port_chains(
            mode,
            Some(port),
            &cluster,
            guarded_tcp(&cluster),
            filters,
        ));
    }
    let mode = ctx.mtls_mode(proxy, None);
    chains.extend(port_chains(
        mode,
        None,
        "virtualInbound-catchall",
        guarded_tcp(INBOUND_PASSTHROUGH),
        |_| guarded_tcp(INBOUND_PASSTHROUGH),
    ));
    Listener {
        name: VIRTUAL_INBOUND.to_owned(),
        address: Some(wire::socket_address("0.0.0.0", INBOUND_PORT)),
        traffic_direction: TrafficDirection::Inbound as i32,
        listener_filters: inbound_listener_filters(proxy),
        // TPROXY delivers connections for the pod's addresses, not the proxy's.
        transparent: proxy.tproxy.then_some(BoolValue { value: true }),
        // Istio leaves inbound detection unbounded, so a server-first protocol
        // on an undeclared port hangs; after 100 ms it is plain TCP here.
        listener_filters_timeout: Some(wire::duration(INSPECTION_TIMEOUT)),
        continue_on_listener_filters_timeout: true,
        filter_chains: chains,
        ..Default::default()
    }
}

/// Original destination and TLS detection; under TPROXY also original_src, so
/// the app sees the client's address and its replies (marked 1337) come back
/// through the proxy.
fn inbound_listener_filters(proxy: &ProxyClass) -> Vec<ListenerFilter> {
    let mut filters = vec![
        http::listener_filter("envoy.filters.listener.original_dst", OriginalDst {}),
        http::listener_filter(
            "envoy.filters.listener.tls_inspector",
            TlsInspector::default(),
        ),
    ];
    if proxy.tproxy {
        filters.push(http::listener_filter(
            "envoy.filters.listener.original_src",
            OriginalSrc {
                bind_port: false,
                mark: TPROXY_MARK,
            },
        ));
    }
    filters
}

/// The chains one inbound port gets under its mTLS mode. `filters` makes the
/// chain's filters, given a stat prefix; TLS that is not the mesh's goes
/// through `passthrough` (TCP filters ending in tcp_proxy) undecrypted.
fn port_chains(
    mode: MtlsMode,
    port: Option<u16>,
    name: &str,
    passthrough: Vec<Filter>,
    filters: impl Fn(&str) -> Vec<Filter>,
) -> Vec<FilterChain> {
    let destination_port = port.map(|p| wire::u32_value(u32::from(p)));
    let mtls = FilterChain {
        name: format!("{name}-mtls"),
        filter_chain_match: Some(FilterChainMatch {
            destination_port,
            transport_protocol: "tls".to_owned(),
            application_protocols: MESH_ALPNS.iter().map(|s| (*s).to_owned()).collect(),
            ..Default::default()
        }),
        filters: filters("inbound_mtls"),
        transport_socket: Some(inbound_mtls()),
        ..Default::default()
    };
    let plain = |transport: &str, suffix: &str, filters: Vec<Filter>| FilterChain {
        name: format!("{name}-{suffix}"),
        filter_chain_match: Some(FilterChainMatch {
            destination_port,
            transport_protocol: transport.to_owned(),
            ..Default::default()
        }),
        filters,
        ..Default::default()
    };
    match mode {
        // Any TLS is terminated as mesh mTLS: clients that offer no Istio ALPN
        // (proxyless gRPC) still reach the workload.
        MtlsMode::Strict => vec![FilterChain {
            filter_chain_match: Some(FilterChainMatch {
                destination_port,
                transport_protocol: "tls".to_owned(),
                ..Default::default()
            }),
            ..mtls
        }],
        MtlsMode::Disable => vec![plain("", "plaintext", filters("inbound"))],
        MtlsMode::Permissive | MtlsMode::Unset => vec![
            mtls,
            // The application's own TLS: bytes we cannot read, passed through.
            plain("tls", "tls-passthrough", passthrough),
            plain("raw_buffer", "plaintext", filters("inbound")),
        ],
    }
}

/// The server side of mesh mTLS: our workload certificate, a client certificate
/// required and checked against the trust bundle.
fn inbound_mtls() -> TransportSocket {
    let upstream = tls::istio_mutual(String::new(), &[]);
    let mut common = upstream.common_tls_context.unwrap_or_default();
    common.alpn_protocols = vec!["h2".to_owned(), "http/1.1".to_owned()];
    let context = DownstreamTlsContext {
        common_tls_context: Some(common),
        require_client_certificate: Some(BoolValue { value: true }),
        ..Default::default()
    };
    tls::socket(context)
}

/// The inbound routes of workload port `port`: the route configuration is
/// named by it, the virtual host (as istiod names it, and EnvoyFilters match
/// it) by the service port.
fn inbound_routes(port: u16, service_port: u16) -> RouteConfiguration {
    let cluster = cluster::inbound_name(port);
    RouteConfiguration {
        name: cluster.clone(),
        virtual_hosts: vec![VirtualHost {
            name: format!("inbound|http|{service_port}"),
            domains: vec!["*".to_owned()],
            routes: vec![Route {
                name: "default".to_owned(),
                r#match: Some(RouteMatch {
                    path_specifier: Some(PathSpecifier::Prefix("/".to_owned())),
                    ..Default::default()
                }),
                action: Some(route::Action::Route(RouteAction {
                    cluster_specifier: Some(ClusterSpecifier::Cluster(cluster)),
                    timeout: Some(wire::duration(std::time::Duration::ZERO)),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        validate_clusters: Some(BoolValue { value: false }),
        ..Default::default()
    }
}

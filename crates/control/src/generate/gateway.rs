//! Gateways (proxies in `router` mode): a listener per port of the Gateway servers
//! that select the proxy, bound where Istio binds it (a port of the gateway's
//! Service listens on its `targetPort`), and the routes of the VirtualServices
//! bound to those Gateways through `gateways:`.
//!
//! Plain HTTP servers share `http.<port>`; a terminated HTTPS server gets its own
//! chain (matched on SNI) and routes `https.<port>.<port name>.<gateway>.<namespace>`.
//! TCP servers, and TLS servers that terminate, proxy to the first `tcp` rule
//! that takes them; PASSTHROUGH servers get a chain per `tls` match, on its
//! SNI names, and the connection passes through untouched (see [`l4`]).
//! AUTO_PASSTHROUGH servers send TLS on to the cluster its SNI names.
//! Servers that share a port (and `bind` address) are settled first, as
//! istiod merges them ([`merge`]); a server with `bind` gets a listener of
//! its own on that address.

use std::collections::HashSet;

use envoy_types::pb::envoy::config::core::v3::TrafficDirection;
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, FilterChainMatch, Listener};
use envoy_types::pb::envoy::config::route::v3::virtual_host::TlsRequirementType;
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, VirtualHost};
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::filters::network::sni_cluster::v3::SniCluster;
use envoy_types::pb::google::protobuf::BoolValue;
use oxmesh_config::hostname::Hostname;
use oxmesh_config::networking::gateway::{Gateway, Server, ServerTlsMode};
use oxmesh_config::networking::virtual_service::VirtualService;
use oxmesh_config::protocol::Protocol;
use oxmesh_config::service::TargetPort;

use super::l4_route::L4Chain;
use super::listener::tcp_proxy_weighted;
use super::route::vs_routes;
use super::{authz, http, tls, wire};
use crate::proxy::ProxyClass;
use crate::push_context::{PushContext, Scoped, names_gateway};

mod l4;
mod merge;

use l4::GatewayServer;

/// One server of one Gateway that selects the proxy.
struct Bound<'a> {
    gateway: &'a Scoped<Gateway>,
    server: &'a Server,
    protocol: Protocol,
    serving: Serving,
    /// Where its listener binds.
    listen: Listen<'a>,
    /// Plain HTTP servers that share a bound port share one route configuration,
    /// named by the lowest of their ports.
    http_route_port: u16,
}

/// A listener's address: the server's `bind` (any address when empty) and
/// the port it binds (see [`bind_port`]). Servers that differ in `bind` get
/// listeners of their own, as in istiod.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Listen<'a> {
    address: &'a str,
    port: u16,
}

impl Listen<'_> {
    fn ip(&self) -> &str {
        if self.address.is_empty() {
            "0.0.0.0"
        } else {
            self.address
        }
    }

    /// istiod's listener name, `<address>_<port>`.
    fn name(&self) -> String {
        format!("{}_{}", self.ip(), self.port)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Serving {
    Http,
    /// TLS terminated here, then HTTP.
    Https,
    /// Opaque TCP to the VirtualServices' `tcp` routes.
    Tcp,
    /// TLS terminated here, then the `tcp` routes.
    TlsThenTcp,
    /// TLS passed through by SNI to the `tls` routes.
    Passthrough,
    /// TLS passed through to the cluster its SNI names
    /// (`outbound_.<port>_.<subset>_.<host>`), as east-west gateways serve
    /// other networks' sidecars.
    AutoPassthrough,
}

/// How istiod serves a server: HTTP ports as HTTP whatever their TLS; then
/// by the TLS mode.
fn serving(protocol: Protocol, server: &Server) -> Option<Serving> {
    let mode = server.tls.as_ref().map(|t| t.mode);
    match (protocol, mode) {
        (p, _) if p.is_http() => Some(Serving::Http),
        (_, Some(ServerTlsMode::AutoPassthrough)) => Some(Serving::AutoPassthrough),
        (_, Some(ServerTlsMode::Passthrough)) => Some(Serving::Passthrough),
        (Protocol::Https, Some(_)) => Some(Serving::Https),
        (Protocol::Https, None) => None,
        (_, Some(_)) => Some(Serving::TlsThenTcp),
        (_, None) => Some(Serving::Tcp),
    }
}

impl<'a> Bound<'a> {
    /// A server the gateway serves (with a port), not yet bound.
    fn new(gateway: &'a Scoped<Gateway>, server: &'a Server) -> Option<Self> {
        let protocol = Protocol::parse(&server.port.protocol);
        let serving = serving(protocol, server)?;
        let bound = Self {
            gateway,
            server,
            protocol,
            serving,
            listen: Listen {
                // The wildcard written out is the wildcard.
                address: match server.bind.as_str() {
                    "0.0.0.0" => "",
                    bind => bind,
                },
                port: 0,
            },
            http_route_port: 0,
        };
        (bound.port() != 0).then_some(bound)
    }
}

impl Bound<'_> {
    /// istiod's `IsTLSServer`: TLS settings on a protocol that is not HTTP.
    fn is_tls_server(&self) -> bool {
        self.server.tls.is_some() && !self.protocol.is_http()
    }

    /// Whether HTTP routes serve it (a route configuration exists for it).
    fn is_http(&self) -> bool {
        matches!(self.serving, Serving::Http | Serving::Https)
    }

    /// The server as its TCP and TLS routes see it.
    fn l4(&self) -> GatewayServer<'_> {
        GatewayServer {
            gateway: self.gateway,
            hosts: self.hosts().collect(),
            port: self.port(),
        }
    }

    fn port(&self) -> u16 {
        u16::try_from(self.server.port.number).unwrap_or(0)
    }

    /// The route configuration this server's chain uses (with `.<bind>`
    /// when it binds an address, as istiod names them).
    fn route_name(&self) -> String {
        let name = match self.serving {
            Serving::Https => format!(
                "https.{}.{}.{}.{}",
                self.port(),
                self.server.port.name,
                self.gateway.name,
                self.gateway.namespace
            ),
            _ => format!("http.{}", self.http_route_port),
        };
        match self.listen.address {
            "" => name,
            bind => format!("{name}.{bind}"),
        }
    }

    /// `(namespace, host)` pairs from `hosts` (`ns/host`, `*/host`, `./host`, `host`).
    fn hosts(&self) -> impl Iterator<Item = (&str, Hostname)> + '_ {
        self.server.hosts.iter().map(|h| match h.split_once('/') {
            Some((".", host)) => (self.gateway.namespace.as_str(), Hostname::new(host)),
            Some((ns, host)) => (ns, Hostname::new(host)),
            None => ("*", Hostname::new(h)),
        })
    }
}

fn servers<'a>(ctx: &'a PushContext, proxy: &'a ProxyClass) -> Vec<Bound<'a>> {
    let mut servers: Vec<Bound<'a>> = ctx
        .gateways_for(proxy)
        .flat_map(|gateway| {
            gateway
                .spec
                .servers
                .iter()
                .filter_map(move |server| Bound::new(gateway, server))
        })
        .filter(|b| {
            // A Unix socket bind serves in-pod clients Istio's way only; not
            // served here.
            let unix = b.server.bind.starts_with("unix://");
            if unix {
                tracing::warn!(
                    "gateway {}/{}: server {} binds {}: Unix sockets are not served",
                    b.gateway.namespace,
                    b.gateway.name,
                    b.server.port.name,
                    b.server.bind
                );
            }
            !unix
        })
        .collect();
    for b in &mut servers {
        b.listen.port = bind_port(ctx, proxy, b.port());
    }
    let mut servers = merge::settle(servers);
    let lowest: Vec<u16> = servers
        .iter()
        .map(|b| {
            servers
                .iter()
                .filter(|o| o.listen == b.listen && o.serving == Serving::Http)
                .map(Bound::port)
                .min()
                .unwrap_or(b.port())
        })
        .collect();
    for (b, port) in servers.iter_mut().zip(lowest) {
        b.http_route_port = port;
    }
    servers
}

/// Whether the gateway has an AUTO_PASSTHROUGH server: it then needs the
/// SNI-named clusters (`outbound_.<port>_.<subset>_.<host>`) its SNI
/// cluster filter picks.
pub(crate) fn auto_passthrough(ctx: &PushContext, proxy: &ProxyClass) -> bool {
    servers(ctx, proxy)
        .iter()
        .any(|b| b.serving == Serving::AutoPassthrough)
}

/// Where a server port listens: the gateway Service's `targetPort` for that port,
/// else the port itself.
fn bind_port(ctx: &PushContext, proxy: &ProxyClass, port: u16) -> u16 {
    ctx.services_of(proxy)
        .flat_map(|s| &s.ports)
        .find(|p| p.number == port)
        .and_then(|p| match p.target {
            TargetPort::Number(n) => Some(n),
            TargetPort::Same => Some(port),
            TargetPort::Named(_) => None,
        })
        .unwrap_or(port)
}

/// One listener per bound port, with a chain per route configuration or
/// L4 route behind it; a port left without chains (TCP servers no route
/// takes) gets no listener.
pub fn listeners(ctx: &PushContext, proxy: &ProxyClass) -> Vec<Listener> {
    let servers = servers(ctx, proxy);
    let mut binds: Vec<Listen<'_>> = servers.iter().map(|b| b.listen).collect();
    binds.sort_unstable();
    binds.dedup();
    // The gateway's authorization policies guard every server: HTTP ones in
    // the connection manager, TCP ones in front of their tcp_proxy.
    let authz = authz::Filters::for_proxy(ctx, proxy);
    let edge = http::Side::Edge {
        trusted_hops: ctx.mesh.gateway_trusted_proxies,
    };
    binds
        .into_iter()
        .filter_map(|bind| {
            let mut chains = Chains::default();
            for bound in servers.iter().filter(|b| b.listen == bind) {
                chains.add(ctx, proxy, bound, &authz, edge);
            }
            chains.into_listener(bind)
        })
        .collect()
}

/// A listener's filter chains as its servers add them.
#[derive(Default)]
struct Chains {
    chains: Vec<FilterChain>,
    routes_seen: HashSet<String>,
    /// Each chain's match; two servers claiming the same connections (the
    /// same SNI names, or two plaintext servers) would make Envoy refuse the
    /// whole listener: the first one keeps them, as in Istio.
    keys: HashSet<Option<(Vec<String>, String)>>,
    /// SNI names PASSTHROUGH chains took: a later match naming any of them
    /// is skipped whole, as istiod skips it.
    passthrough_names: HashSet<String>,
    tls_used: bool,
}

impl Chains {
    fn add(
        &mut self,
        ctx: &PushContext,
        proxy: &ProxyClass,
        bound: &Bound<'_>,
        authz: &authz::Filters,
        edge: http::Side,
    ) {
        match bound.serving {
            Serving::Http | Serving::Https => self.add_http(bound, authz, edge),
            Serving::Tcp => {
                if let Some(route) = l4::tcp_route(ctx, proxy, &bound.l4()) {
                    self.push(l4_chain(bound, route, None, authz));
                }
            }
            Serving::TlsThenTcp => self.add_terminated(ctx, proxy, bound, authz),
            Serving::Passthrough => self.add_passthrough(ctx, proxy, bound, authz),
            Serving::AutoPassthrough => self.add_auto_passthrough(bound),
        }
    }

    /// One chain for mesh mTLS (Istio's ALPNs) to the server's hosts as SNI
    /// (any, for `*`): the SNI cluster filter sends each connection, still
    /// encrypted, to the SNI-named cluster it names; one that names none
    /// goes nowhere. No authorization here, as istiod: the workload's own
    /// sidecar decides, on the client's identity.
    fn add_auto_passthrough(&mut self, bound: &Bound<'_>) {
        self.tls_used = true;
        let filters = vec![
            http::network_filter("envoy.filters.network.sni_cluster", SniCluster::default()),
            tcp_proxy_weighted(vec![(super::cluster::BLACKHOLE.to_owned(), 1)], None),
        ];
        let mut matching = sni_match(server_names(bound));
        matching.application_protocols = super::listener::MESH_ALPNS
            .iter()
            .map(|a| (*a).to_owned())
            .collect();
        self.push(FilterChain {
            name: format!(
                "auto-passthrough.{}.{}.{}.{}",
                bound.port(),
                bound.server.port.name,
                bound.gateway.name,
                bound.gateway.namespace
            ),
            filter_chain_match: Some(matching),
            filters,
            ..Default::default()
        });
    }

    /// TLS terminated with the server's settings on its hosts as SNI, then
    /// the server's TCP route.
    fn add_terminated(
        &mut self,
        ctx: &PushContext,
        proxy: &ProxyClass,
        bound: &Bound<'_>,
        authz: &authz::Filters,
    ) {
        let (Some(route), Some(settings)) = (
            l4::tcp_route(ctx, proxy, &bound.l4()),
            bound.server.tls.as_ref(),
        ) else {
            return;
        };
        self.tls_used = true;
        let mut termination = tls::gateway_termination(settings);
        if let Some(common) = termination.common_tls_context.as_mut() {
            common.alpn_protocols = if settings.mode == ServerTlsMode::IstioMutual {
                // The gateway as a mesh peer: sidecars' TCP metadata exchange
                // first, as istiod offers it.
                ["istio-peer-exchange", "h2", "http/1.1"]
                    .map(str::to_owned)
                    .to_vec()
            } else {
                // istiod offers h2 and HTTP/1.1 here too, and Envoy carries on
                // when a client's ALPN shares none of them; rustls refuses such
                // a client, so a TCP server (a database client offering its
                // own token) offers none.
                Vec::new()
            };
        }
        let socket = tls::socket(termination);
        let mut chain = l4_chain(bound, route, Some(socket), authz);
        chain.filter_chain_match = Some(sni_match(server_names(bound)));
        self.push(chain);
    }

    /// A chain per `tls` match of the server, on its SNI names, untouched.
    fn add_passthrough(
        &mut self,
        ctx: &PushContext,
        proxy: &ProxyClass,
        bound: &Bound<'_>,
        authz: &authz::Filters,
    ) {
        for route in l4::tls_routes(ctx, proxy, &bound.l4()) {
            if route
                .server_names
                .iter()
                .any(|n| self.passthrough_names.contains(n))
            {
                tracing::warn!(
                    "gateway {}/{} port {}: SNI names {:?} are routed already; the later match is skipped",
                    bound.gateway.namespace,
                    bound.gateway.name,
                    bound.port(),
                    route.server_names
                );
                continue;
            }
            self.passthrough_names
                .extend(route.server_names.iter().cloned());
            self.tls_used = true;
            let matching = sni_match(route.server_names.clone());
            let mut chain = l4_chain(bound, route, None, authz);
            chain.filter_chain_match = Some(matching);
            self.push(chain);
        }
    }

    fn add_http(&mut self, bound: &Bound<'_>, authz: &authz::Filters, edge: http::Side) {
        let route = bound.route_name();
        if !self.routes_seen.insert(route.clone()) {
            return;
        }
        // The gateway is the edge: the client's address is the peer's, or
        // the one trusted proxies in front of it forwarded.
        let manager = http::manager_filter(
            format!("outbound_{}", bound.listen.name()),
            http::rds(route.clone()),
            edge,
            authz.http.clone(),
        );
        let chain = match (bound.serving, bound.server.tls.as_ref()) {
            (Serving::Https, Some(settings)) => {
                self.tls_used = true;
                FilterChain {
                    name: route,
                    filter_chain_match: Some(sni_match(server_names(bound))),
                    filters: vec![manager],
                    transport_socket: Some(tls::socket(tls::gateway_termination(settings))),
                    ..Default::default()
                }
            }
            _ => FilterChain {
                name: route,
                filters: vec![manager],
                ..Default::default()
            },
        };
        self.push(chain);
    }

    fn push(&mut self, chain: FilterChain) {
        let key = chain.filter_chain_match.as_ref().map(|m| {
            let mut names = m.server_names.clone();
            names.sort();
            let protocol = if m.application_protocols.is_empty() {
                m.transport_protocol.clone()
            } else {
                format!("{}+mesh", m.transport_protocol)
            };
            (names, protocol)
        });
        if self.keys.insert(key) {
            self.chains.push(chain);
        }
    }

    fn into_listener(self, listen: Listen<'_>) -> Option<Listener> {
        if self.chains.is_empty() {
            return None;
        }
        Some(Listener {
            name: listen.name(),
            address: Some(wire::socket_address(listen.ip(), listen.port)),
            traffic_direction: TrafficDirection::Outbound as i32,
            listener_filters: if self.tls_used {
                vec![http::listener_filter(
                    "envoy.filters.listener.tls_inspector",
                    TlsInspector::default(),
                )]
            } else {
                Vec::new()
            },
            filter_chains: self.chains,
            ..Default::default()
        })
    }
}

/// Whether a server host's namespace part (`*`, or one namespace) admits a
/// VirtualService.
fn admits(allowed_namespace: &str, vs: &Scoped<VirtualService>) -> bool {
    allowed_namespace == "*" || allowed_namespace == vs.namespace
}

/// What a server host and a VirtualService host serve together: the
/// narrower of the two, when one holds the other (istiod's
/// `pickMatchingGatewayHosts`).
fn narrower(server_host: &Hostname, vs_host: Hostname) -> Option<Hostname> {
    if vs_host.subset_of(server_host) {
        Some(vs_host)
    } else if server_host.subset_of(&vs_host) {
        Some(server_host.clone())
    } else {
        None
    }
}

/// The server's hosts as SNI names; none (any) when one is `*`, as istiod.
fn server_names(bound: &Bound<'_>) -> Vec<String> {
    let names: Vec<String> = bound.hosts().map(|(_, h)| h.to_string()).collect();
    l4::sni_names(&names)
}

fn sni_match(server_names: Vec<String>) -> FilterChainMatch {
    FilterChainMatch {
        server_names,
        transport_protocol: "tls".to_owned(),
        ..Default::default()
    }
}

/// A chain that proxies to an L4 route, behind the gateway's network
/// authorization filters.
fn l4_chain(
    bound: &Bound<'_>,
    route: L4Chain,
    transport_socket: Option<envoy_types::pb::envoy::config::core::v3::TransportSocket>,
    authz: &authz::Filters,
) -> FilterChain {
    // Unique per listener, as a gateway's port names are.
    let name = match route.server_names.as_slice() {
        [] => format!(
            "tcp.{}.{}.{}.{}",
            bound.port(),
            bound.server.port.name,
            bound.gateway.name,
            bound.gateway.namespace
        ),
        names => format!("tls.{}.{}", bound.port(), names.join(",")),
    };
    let mut filters = authz.tcp.clone();
    filters.push(tcp_proxy_weighted(route.targets, route.idle_timeout));
    FilterChain {
        name,
        filters,
        transport_socket,
        ..Default::default()
    }
}

pub fn routes(ctx: &PushContext, proxy: &ProxyClass) -> Vec<RouteConfiguration> {
    let servers: Vec<Bound<'_>> = servers(ctx, proxy)
        .into_iter()
        .filter(Bound::is_http)
        .collect();
    let mut names: Vec<String> = servers.iter().map(Bound::route_name).collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .map(|name| {
            let members: Vec<&Bound<'_>> =
                servers.iter().filter(|b| b.route_name() == name).collect();
            route_configuration(ctx, proxy, name, &members)
        })
        .collect()
}

fn route_configuration(
    ctx: &PushContext,
    proxy: &ProxyClass,
    name: String,
    servers: &[&Bound<'_>],
) -> RouteConfiguration {
    let mut taken = HashSet::new();
    let mut virtual_hosts = Vec::new();
    for bound in servers {
        let port = bound.port();
        let redirect = bound.server.tls.as_ref().is_some_and(|t| t.https_redirect);
        for (allowed_namespace, server_host) in bound.hosts() {
            for vs in ctx.virtual_services_bound_to(bound.gateway) {
                if !admits(allowed_namespace, vs) {
                    continue;
                }
                for vs_host in vs.spec.hosts.iter().map(|h| Hostname::new(h)) {
                    let Some(host) = narrower(&server_host, vs_host) else {
                        continue;
                    };
                    // `*` already matches every port.
                    let names = if host.as_str() == "*" {
                        vec![host.to_string()]
                    } else {
                        vec![host.to_string(), format!("{host}:{port}")]
                    };
                    let domains: Vec<String> = names
                        .into_iter()
                        .filter(|d| taken.insert(d.clone()))
                        .collect();
                    if domains.is_empty() {
                        continue;
                    }
                    let bound_here = |g: &str| names_gateway(g, &vs.namespace, bound.gateway);
                    virtual_hosts.push(VirtualHost {
                        name: format!("{host}:{port}"),
                        domains,
                        routes: vs_routes(ctx, proxy, vs, port, &bound_here),
                        require_tls: if redirect {
                            TlsRequirementType::All as i32
                        } else {
                            TlsRequirementType::None as i32
                        },
                        ..Default::default()
                    });
                }
            }
        }
    }
    RouteConfiguration {
        name,
        virtual_hosts,
        validate_clusters: Some(BoolValue { value: false }),
        // As istiod: a client may reach the gateway on another port than
        // the server's (a NodePort, a port-forward) and keep it in Host.
        ignore_port_in_host_matching: true,
        ..Default::default()
    }
}

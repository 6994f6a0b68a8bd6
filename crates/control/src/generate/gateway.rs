//! Gateways (proxies in `router` mode): a listener per port of the Gateway servers
//! that select the proxy, bound where Istio binds it (a port of the gateway's
//! Service listens on its `targetPort`), and the routes of the VirtualServices
//! bound to those Gateways through `gateways:`.
//!
//! Plain HTTP servers share `http.<port>`; a terminated HTTPS server gets its own
//! chain (matched on SNI) and routes `https.<port>.<port name>.<gateway>.<namespace>`.
//! TLS passthrough and TCP servers are not generated yet.

use std::collections::HashSet;

use envoy_types::pb::envoy::config::core::v3::TrafficDirection;
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, FilterChainMatch, Listener};
use envoy_types::pb::envoy::config::route::v3::virtual_host::TlsRequirementType;
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, VirtualHost};
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::google::protobuf::BoolValue;
use oxmesh_config::hostname::Hostname;
use oxmesh_config::networking::gateway::{Gateway, Server, ServerTlsMode};
use oxmesh_config::service::TargetPort;

use super::route::vs_routes;
use super::{authz, http, tls, wire};
use crate::proxy::ProxyClass;
use crate::push_context::{PushContext, Scoped, names_gateway};

/// One server of one Gateway that selects the proxy.
struct Bound<'a> {
    gateway: &'a Scoped<Gateway>,
    server: &'a Server,
    /// The port its listener binds.
    bind: u16,
    /// Plain HTTP servers that share a bound port share one route configuration,
    /// named by the lowest of their ports.
    http_route_port: u16,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Serving {
    Http,
    /// TLS terminated here, then HTTP.
    Https,
}

impl Bound<'_> {
    fn serving(&self) -> Option<Serving> {
        let protocol = self.server.port.protocol.to_ascii_uppercase();
        match protocol.as_str() {
            "HTTP" | "HTTP2" | "GRPC" | "GRPC-WEB" => Some(Serving::Http),
            "HTTPS"
                if self.server.tls.as_ref().is_some_and(|t| {
                    t.mode != ServerTlsMode::Passthrough && t.mode != ServerTlsMode::AutoPassthrough
                }) =>
            {
                Some(Serving::Https)
            }
            _ => None,
        }
    }

    fn port(&self) -> u16 {
        u16::try_from(self.server.port.number).unwrap_or(0)
    }

    /// The route configuration this server's chain uses.
    fn route_name(&self) -> String {
        match self.serving() {
            Some(Serving::Https) => format!(
                "https.{}.{}.{}.{}",
                self.port(),
                self.server.port.name,
                self.gateway.name,
                self.gateway.namespace
            ),
            _ => format!("http.{}", self.http_route_port),
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
            gateway.spec.servers.iter().map(move |server| Bound {
                gateway,
                server,
                bind: 0,
                http_route_port: 0,
            })
        })
        .filter(|b| b.serving().is_some() && b.port() != 0)
        .collect();
    for b in &mut servers {
        b.bind = bind_port(ctx, proxy, b.port());
    }
    let lowest: Vec<u16> = servers
        .iter()
        .map(|b| {
            servers
                .iter()
                .filter(|o| o.bind == b.bind && o.serving() == Some(Serving::Http))
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

/// One listener per bound port, with a chain per route configuration behind it.
pub fn listeners(ctx: &PushContext, proxy: &ProxyClass) -> Vec<Listener> {
    let servers = servers(ctx, proxy);
    let mut binds: Vec<u16> = servers.iter().map(|b| b.bind).collect();
    binds.sort_unstable();
    binds.dedup();
    // The gateway's authorization policies guard every server; TCP servers,
    // once generated, take `authz.tcp` in front of their tcp_proxy.
    let authz = authz::Filters::for_proxy(ctx, proxy);
    let edge = http::Side::Edge {
        trusted_hops: ctx.mesh.gateway_trusted_proxies,
    };
    binds
        .into_iter()
        .map(|bind| {
            listener(
                bind,
                servers.iter().filter(|b| b.bind == bind),
                &authz,
                edge,
            )
        })
        .collect()
}

fn listener<'a>(
    bind: u16,
    servers: impl Iterator<Item = &'a Bound<'a>>,
    authz: &authz::Filters,
    edge: http::Side,
) -> Listener {
    let mut chains = Vec::new();
    let mut routes_seen = HashSet::new();
    let mut chain_keys = HashSet::new();
    let mut tls_used = false;
    for bound in servers {
        let route = bound.route_name();
        if !routes_seen.insert(route.clone()) {
            continue;
        }
        // The gateway is the edge: the client's address is the peer's, or
        // the one trusted proxies in front of it forwarded.
        let manager = http::manager_filter(
            format!("outbound_0.0.0.0_{bind}"),
            http::rds(route.clone()),
            edge,
            authz.http.clone(),
        );
        let chain = match bound.serving() {
            Some(Serving::Https) => {
                tls_used = true;
                let Some(settings) = bound.server.tls.as_ref() else {
                    continue;
                };
                let server_names: Vec<String> = bound
                    .hosts()
                    .map(|(_, h)| h.to_string())
                    .filter(|h| h != "*")
                    .collect();
                FilterChain {
                    name: route,
                    filter_chain_match: Some(FilterChainMatch {
                        server_names,
                        transport_protocol: "tls".to_owned(),
                        ..Default::default()
                    }),
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
        // Two servers claiming the same connections (the same SNI names, or two
        // plaintext servers) would make Envoy refuse the whole listener: the
        // first one keeps them, as in Istio.
        let key = chain.filter_chain_match.as_ref().map(|m| {
            let mut names = m.server_names.clone();
            names.sort();
            (names, m.transport_protocol.clone())
        });
        if chain_keys.insert(key) {
            chains.push(chain);
        }
    }
    Listener {
        name: format!("0.0.0.0_{bind}"),
        address: Some(wire::socket_address("0.0.0.0", bind)),
        traffic_direction: TrafficDirection::Outbound as i32,
        listener_filters: if tls_used {
            vec![http::listener_filter(
                "envoy.filters.listener.tls_inspector",
                TlsInspector::default(),
            )]
        } else {
            Vec::new()
        },
        filter_chains: chains,
        ..Default::default()
    }
}

pub fn routes(ctx: &PushContext, proxy: &ProxyClass) -> Vec<RouteConfiguration> {
    let servers = servers(ctx, proxy);
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
                if !(allowed_namespace == "*" || allowed_namespace == vs.namespace) {
                    continue;
                }
                for vs_host in vs.spec.hosts.iter().map(|h| Hostname::new(h)) {
                    // The narrower of the two names is what the host serves.
                    let host = if vs_host.subset_of(&server_host) {
                        vs_host
                    } else if server_host.subset_of(&vs_host) {
                        server_host.clone()
                    } else {
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
        ..Default::default()
    }
}

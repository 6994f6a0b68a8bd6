//! A gateway's TCP and TLS routing, as istiod builds it: the VirtualServices
//! bound to the gateway for one of a server's hosts route its TCP servers
//! (the first `tcp` rule that takes the server) and its PASSTHROUGH servers
//! (a chain per `tls` match, by SNI). Conditions on the source do not count
//! at a gateway; the port and the gateway's name do.

use oxmesh_config::hostname::Hostname;
use oxmesh_config::networking::gateway::Gateway;
use oxmesh_config::networking::virtual_service::VirtualService;

use crate::generate::l4_route::{L4Chain, idle_timeout, targets};
use crate::proxy::ProxyClass;
use crate::push_context::{PushContext, Scoped, names_gateway};

/// A gateway server as its L4 routes see it: the Gateway, the server's
/// `(namespace, host)` pairs and its port.
pub struct GatewayServer<'a> {
    pub gateway: &'a Scoped<Gateway>,
    pub hosts: Vec<(&'a str, Hostname)>,
    pub port: u16,
}

impl<'a> GatewayServer<'a> {
    /// The VirtualServices bound to the gateway that serve one of the
    /// server's hosts (istiod's `pickMatchingGatewayHosts`).
    fn virtual_services(&self, ctx: &'a PushContext) -> Vec<&'a Scoped<VirtualService>> {
        ctx.virtual_services_bound_to(self.gateway)
            .filter(|vs| {
                self.hosts.iter().any(|(namespace, server_host)| {
                    super::admits(namespace, vs)
                        && vs
                            .spec
                            .hosts
                            .iter()
                            .any(|h| super::narrower(server_host, Hostname::new(h)).is_some())
                })
            })
            .collect()
    }

    /// istiod's `l4SingleMatch`: the server's port and this gateway, when
    /// the match names them; nothing about the source counts here.
    fn takes(&self, vs: &Scoped<VirtualService>, port: u32, gateways: &[String]) -> bool {
        (port == 0 || port == u32::from(self.port))
            && (gateways.is_empty()
                || gateways
                    .iter()
                    .any(|g| names_gateway(g, &vs.namespace, self.gateway)))
    }
}

/// A TCP server's route (and a TLS server's, after termination): the first
/// `tcp` rule with destinations whose matches take the server, in the
/// bound VirtualServices' order; `None` leaves the server without a chain,
/// as istiod does.
pub fn tcp_route(
    ctx: &PushContext,
    proxy: &ProxyClass,
    server: &GatewayServer<'_>,
) -> Option<L4Chain> {
    server.virtual_services(ctx).into_iter().find_map(|vs| {
        let rule = vs.spec.tcp.iter().find(|rule| {
            !rule.route.is_empty()
                && (rule.matches.is_empty()
                    || rule
                        .matches
                        .iter()
                        .any(|m| server.takes(vs, m.port, &m.gateways)))
        })?;
        Some(L4Chain {
            server_names: Vec::new(),
            subnets: Vec::new(),
            targets: targets(ctx, vs, &rule.route, server.port),
            idle_timeout: idle_timeout(ctx, proxy, vs, &rule.route, server.port),
        })
    })
}

/// SNI names to match: none (any) when one of them is `*`, as istiod.
pub fn sni_names(names: &[String]) -> Vec<String> {
    if names.iter().any(|n| n == "*") {
        Vec::new()
    } else {
        names.to_vec()
    }
}

/// A PASSTHROUGH server's routes: a chain per `tls` match that takes the
/// server, on the match's SNI names (the connection passes through
/// unterminated).
pub fn tls_routes(
    ctx: &PushContext,
    proxy: &ProxyClass,
    server: &GatewayServer<'_>,
) -> Vec<L4Chain> {
    let mut out = Vec::new();
    for vs in server.virtual_services(ctx) {
        for rule in vs.spec.tls.iter().filter(|r| !r.route.is_empty()) {
            for m in &rule.matches {
                if server.takes(vs, m.port, &m.gateways) {
                    out.push(L4Chain {
                        server_names: sni_names(&m.sni_hosts),
                        subnets: Vec::new(),
                        targets: targets(ctx, vs, &rule.route, server.port),
                        idle_timeout: idle_timeout(ctx, proxy, vs, &rule.route, server.port),
                    });
                }
            }
        }
    }
    out
}

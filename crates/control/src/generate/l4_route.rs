//! A sidecar's outbound TCP and TLS routing, as istiod builds its filter
//! chains: a service port's VirtualService `tcp` rules (TCP ports) or `tls`
//! rules (TLS and HTTPS ports) become chains matched on the destination
//! subnets and, for TLS, the client's SNI; conditions on the source (labels,
//! namespace, `mesh` gateway, port) are settled here. (A gateway's are in
//! `gateway::l4`.)

use std::collections::HashSet;
use std::time::Duration;

use oxmesh_config::networking::virtual_service::{
    L4MatchAttributes, RouteDestination, TlsMatchAttributes, VirtualService,
};
use oxmesh_config::selector::Labels;
use oxmesh_config::service::{Service, ServicePort};

use super::cluster;
use super::route as rds;
use crate::proxy::ProxyClass;
use crate::push_context::{PushContext, Scoped, labels_include};

/// One outbound chain of a service port.
#[derive(Debug, PartialEq)]
pub struct L4Chain {
    /// SNI names the client must send (TLS); empty: any.
    pub server_names: Vec<String>,
    /// Destination subnets the rule names; empty: the service's addresses.
    pub subnets: Vec<String>,
    /// Clusters and weights (one: no weighting).
    pub targets: Vec<(String, u32)>,
    /// The first destination's `connectionPool.tcp.idleTimeout`, as istiod
    /// takes it for weighted routes too.
    pub idle_timeout: Option<Duration>,
}

/// The chains for `service:port`, in the order they were written, the
/// port's own cluster last unless a rule already takes everything.
pub fn chains(
    ctx: &PushContext,
    proxy: &ProxyClass,
    service: &Service,
    port: &ServicePort,
) -> Vec<L4Chain> {
    let vs = rds::virtual_service_for(ctx, proxy, &service.hostname);
    let (mut out, complete) = match (vs, port.protocol.is_tls()) {
        (Some(vs), true) => tls_chains(ctx, proxy, vs, port.number),
        (Some(vs), false) => tcp_chains(ctx, proxy, vs, port.number),
        (None, _) => (Vec::new(), false),
    };
    if !complete {
        // istiod tells services without an address apart by SNI on TLS ports.
        let server_names = if port.protocol.is_tls() && service.addresses.is_empty() {
            vec![service.hostname.to_string()]
        } else {
            Vec::new()
        };
        let own = ctx
            .registry
            .services_for(&service.hostname)
            .find(|s| s.namespace == service.namespace);
        out.push(L4Chain {
            server_names,
            subnets: Vec::new(),
            targets: vec![(
                cluster::outbound_name(port.number, "", service.hostname.as_str()),
                1,
            )],
            idle_timeout: own
                .and_then(|s| cluster::tcp_idle_timeout(ctx, proxy, s, port.number, "")),
        });
    }
    out
}

/// What `tcp` and `tls` matches say of the source and port: settled here.
trait StaticPart {
    fn parts(&self) -> (u32, &Labels, &str, &[String]);
}

impl StaticPart for L4MatchAttributes {
    fn parts(&self) -> (u32, &Labels, &str, &[String]) {
        (
            self.port,
            &self.source_labels,
            &self.source_namespace,
            &self.gateways,
        )
    }
}

impl StaticPart for TlsMatchAttributes {
    fn parts(&self) -> (u32, &Labels, &str, &[String]) {
        (
            self.port,
            &self.source_labels,
            &self.source_namespace,
            &self.gateways,
        )
    }
}

/// istiod's `matchTCP`/`matchTLS`: the port, the proxy's labels and
/// namespace, `mesh` among the gateways.
fn applies(proxy: &ProxyClass, port: u16, m: &impl StaticPart) -> bool {
    let (at, labels, namespace, gateways) = m.parts();
    (at == 0 || at == u32::from(port))
        && labels_include(&proxy.labels, labels)
        && (namespace.is_empty() || namespace == proxy.namespace)
        && (gateways.is_empty() || gateways.iter().any(|g| rds::mesh(g)))
}

/// `tcp` rules: a rule (or match) without destination subnets takes
/// everything left and ends the list; matches with subnets collect them
/// into one chain per rule.
fn tcp_chains(
    ctx: &PushContext,
    proxy: &ProxyClass,
    vs: &Scoped<VirtualService>,
    port: u16,
) -> (Vec<L4Chain>, bool) {
    let mut out = Vec::new();
    for rule in &vs.spec.tcp {
        let targets = targets(ctx, vs, &rule.route, port);
        let mut subnets = Vec::new();
        let matching: Vec<&L4MatchAttributes> = rule
            .matches
            .iter()
            .filter(|m| applies(proxy, port, *m))
            .collect();
        if rule.matches.is_empty() || matching.iter().any(|m| m.destination_subnets.is_empty()) {
            out.push(L4Chain {
                server_names: Vec::new(),
                subnets: Vec::new(),
                idle_timeout: idle_timeout(ctx, proxy, vs, &rule.route, port),
                targets,
            });
            return (out, true);
        }
        for m in matching {
            subnets.extend(m.destination_subnets.iter().cloned());
        }
        if !subnets.is_empty() {
            out.push(L4Chain {
                server_names: Vec::new(),
                subnets,
                idle_timeout: idle_timeout(ctx, proxy, vs, &rule.route, port),
                targets,
            });
        }
    }
    (out, false)
}

/// `tls` rules: a chain per applicable match, the first of each set of SNI
/// names and subnets (a later one could never be reached).
fn tls_chains(
    ctx: &PushContext,
    proxy: &ProxyClass,
    vs: &Scoped<VirtualService>,
    port: u16,
) -> (Vec<L4Chain>, bool) {
    let mut handled = HashSet::new();
    let mut out = Vec::new();
    for rule in &vs.spec.tls {
        for m in rule.matches.iter().filter(|m| applies(proxy, port, *m)) {
            if !handled.insert((m.sni_hosts.clone(), m.destination_subnets.clone())) {
                continue;
            }
            out.push(L4Chain {
                server_names: m.sni_hosts.clone(),
                subnets: m.destination_subnets.clone(),
                targets: targets(ctx, vs, &rule.route, port),
                idle_timeout: idle_timeout(ctx, proxy, vs, &rule.route, port),
            });
        }
    }
    // Any TLS rule that applies replaces the service's own chain, as istiod.
    let complete = !out.is_empty();
    (out, complete)
}

/// The idle timeout of a rule's first destination.
pub(crate) fn idle_timeout(
    ctx: &PushContext,
    proxy: &ProxyClass,
    vs: &Scoped<VirtualService>,
    route: &[RouteDestination],
    port: u16,
) -> Option<Duration> {
    let only = route.first()?;
    let (host, port) = rds::destination_target(ctx, vs, &only.destination, port);
    let service = ctx.registry.services_for(&host).next()?;
    cluster::tcp_idle_timeout(ctx, proxy, service, port, &only.destination.subset)
}

/// A rule's destinations as clusters and weights (weight-0 ones left out
/// unless alone).
pub(crate) fn targets(
    ctx: &PushContext,
    vs: &Scoped<VirtualService>,
    route: &[RouteDestination],
    port: u16,
) -> Vec<(String, u32)> {
    let single = route.len() == 1;
    route
        .iter()
        .filter(|d| single || d.weight != 0)
        .map(|d| {
            (
                rds::destination_cluster(ctx, vs, &d.destination, port),
                d.weight.unsigned_abs(),
            )
        })
        .collect()
}

//! Routes bound to their parents: every listener that accepts a route (or,
//! for a Service parent, the mesh) gets the route's rules, merged per
//! listener and host in creation order and, for HTTP, ordered by the
//! Gateway API's precedence, as istiod merges and sorts them; and each
//! route's status per parent.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use oxmesh_config::gateway_api as api;
use oxmesh_config::hostname::Hostname;
use oxmesh_config::kind::Kind;
use oxmesh_config::networking::virtual_service::{self as vs, VirtualService};
use oxmesh_config::object::{Object, Resource};
use oxmesh_config::service::ExportTo;
use oxmesh_config::string_match::StringMatch;

use super::backend::Unresolved;
use super::listener::{Attachable, Gateways};
use super::rule::{self, Converted, Origin, Rules};
use super::status::{Body, Condition, ObjectStatus, ParentStatus};
use super::{GROUP, Translation, World};
use crate::push_context::Scoped;

/// A route of any kind, read the same way.
struct Route<'a> {
    object: &'a Object,
    kind: Kind,
    parent_refs: &'a [api::ParentReference],
    /// The hostnames it asks for (TCPRoutes have none: any).
    hostnames: &'a [String],
    /// Its rules for gateways (backends in other namespaces need grants).
    converted: Converted,
    /// Its rules for the mesh, when a parent is a Service.
    for_mesh: Option<Converted>,
}

impl Route<'_> {
    fn rules_for(&self, target: &Target) -> &Converted {
        match (target, &self.for_mesh) {
            (Target::Mesh { .. }, Some(mesh)) => mesh,
            _ => &self.converted,
        }
    }
}

/// VirtualService rules waiting to be merged under one key.
struct Pending {
    namespace: String,
    hosts: Vec<String>,
    gateways: Vec<String>,
    export_to: ExportTo,
    rules: Rules,
}

impl Pending {
    /// Appends another route's rules of the same kind (merge keys hold the
    /// kind, so two kinds never meet here).
    fn extend(&mut self, more: Rules) {
        match (&mut self.rules, more) {
            (Rules::Http(a), Rules::Http(b)) => a.extend(b),
            (Rules::Tcp(a), Rules::Tcp(b)) => a.extend(b),
            (Rules::Tls(a), Rules::Tls(b)) => a.extend(b),
            _ => {}
        }
    }

    fn into_virtual_service(self, name: String) -> Scoped<VirtualService> {
        let mut spec = VirtualService {
            hosts: self.hosts,
            gateways: self.gateways,
            from_gateway_api: true,
            ..Default::default()
        };
        match self.rules {
            Rules::Http(mut http) => {
                http.sort_by_key(precedence);
                spec.http = http;
            }
            Rules::Tcp(tcp) => spec.tcp = tcp,
            Rules::Tls(tls) => spec.tls = tls,
        }
        Scoped {
            namespace: self.namespace,
            name,
            export_to: self.export_to,
            spec,
        }
    }
}

/// Every route of the kinds served, with its rules converted.
fn routes<'a>(world: &'a World<'a>, objects: &'a [std::sync::Arc<Object>]) -> Vec<Route<'a>> {
    let mut routes = Vec::new();
    for object in objects {
        let (parent_refs, hostnames): (&[api::ParentReference], &[String]) = match &object.resource
        {
            Resource::HttpRoute(r) => (&r.parent_refs, &r.hostnames),
            Resource::GrpcRoute(r) => (&r.parent_refs, &r.hostnames),
            Resource::TcpRoute(r) => (&r.parent_refs, &[]),
            Resource::TlsRoute(r) => (&r.parent_refs, &r.hostnames),
            _ => continue,
        };
        let convert = |enforce_grants: bool| {
            let origin = Origin {
                world,
                kind: object.kind.name(),
                namespace: object.namespace().unwrap_or_default(),
                name: object.name(),
                enforce_grants,
            };
            match &object.resource {
                Resource::HttpRoute(r) => rule::http_like(&origin, &r.rules),
                Resource::GrpcRoute(r) => rule::http_like(&origin, &r.rules),
                Resource::TcpRoute(r) => rule::tcp(&origin, &r.rules),
                Resource::TlsRoute(r) => rule::tls(&origin, &r.hostnames, &r.rules),
                _ => rule::none(),
            }
        };
        let for_mesh = parent_refs.iter().any(is_service).then(|| convert(false));
        routes.push(Route {
            object,
            kind: object.kind,
            parent_refs,
            hostnames,
            converted: convert(true),
            for_mesh,
        });
    }
    routes.sort_by_key(|r| super::creation_order(r.object));
    routes
}

/// A parent that is a Service (GAMMA), not a Gateway.
fn is_service(r: &api::ParentReference) -> bool {
    matches!(r.group.as_deref(), Some("" | "core")) && r.kind.as_deref() == Some("Service")
}

pub(super) fn translate(
    world: &World<'_>,
    objects: &[std::sync::Arc<Object>],
    gateways: &mut Gateways<'_>,
    out: &mut Translation,
) {
    // Keyed by listener (or mesh port) and host, in creation order.
    let mut merged: BTreeMap<String, Pending> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    for route in routes(world, objects) {
        let parents = attach(world, gateways, &route);
        let mut statuses = Vec::new();
        for parent in &parents {
            for (key, pending) in bindings(gateways, &route, parent) {
                match merged.get_mut(&key) {
                    Some(existing) => existing.extend(pending.rules),
                    None => {
                        order.push(key.clone());
                        merged.insert(key, pending);
                    }
                }
            }
            let problem = route.rules_for(&parent.target).problem.as_ref();
            statuses.push(parent_status(parent, problem));
        }
        // A route none of whose parents is ours is another controller's.
        if statuses.is_empty() {
            continue;
        }
        out.statuses.push(ObjectStatus {
            kind: route.kind,
            api_version: route.object.api_version.clone(),
            namespace: route.object.namespace().unwrap_or_default().to_owned(),
            name: route.object.name().to_owned(),
            generation: route.object.meta.generation.unwrap_or(1),
            body: Body::Route { parents: statuses },
        });
    }
    for key in order {
        if let Some(pending) = merged.remove(&key) {
            out.virtual_services
                .push(pending.into_virtual_service(key.replace('/', "~")));
        }
    }
}

/// What one `parentRefs` entry came to.
struct Attached {
    reference: Value,
    target: Target,
    /// Why it was refused, when it was.
    denied: Option<(&'static str, String)>,
}

enum Target {
    /// Listeners that accepted the route, by index.
    Listeners(Vec<usize>),
    /// The mesh, for a Service: its host and the port the reference names.
    Mesh {
        host: String,
        port: Option<u16>,
        consumer: bool,
    },
    None,
}

/// Each of the route's parents that this controller owns, and what it made of it.
fn attach(world: &World<'_>, gateways: &mut Gateways<'_>, route: &Route<'_>) -> Vec<Attached> {
    let own = route.object.namespace().unwrap_or_default();
    let mut out = Vec::new();
    for r in route.parent_refs {
        let group = r.group.as_deref().unwrap_or(GROUP);
        let kind = r.kind.as_deref().unwrap_or("Gateway");
        let namespace = r.namespace.as_deref().unwrap_or(own);
        let mut reference =
            json!({"group": group, "kind": kind, "name": r.name, "namespace": namespace});
        if let Some(section) = &r.section_name {
            reference["sectionName"] = json!(section);
        }
        if let Some(port) = r.port {
            reference["port"] = json!(port);
        }
        let attached = match (group, kind) {
            (GROUP, "Gateway") => {
                if gateways.foreign.contains(&(namespace, r.name.as_str())) {
                    continue;
                }
                gateway_parent(gateways, route, r, namespace, reference)
            }
            ("" | "core", "Service") => mesh_parent(world, own, r, namespace, reference),
            _ => continue,
        };
        if let Target::Listeners(accepted) = &attached.target {
            for i in accepted {
                gateways.attachable[*i].attached += 1;
            }
        }
        out.push(attached);
    }
    out
}

fn gateway_parent(
    gateways: &Gateways<'_>,
    route: &Route<'_>,
    r: &api::ParentReference,
    namespace: &str,
    reference: Value,
) -> Attached {
    let own = route.object.namespace().unwrap_or_default();
    let candidates: Vec<(usize, &Attachable<'_>)> = gateways
        .attachable
        .iter()
        .enumerate()
        .filter(|(_, p)| p.namespace == namespace && p.gateway == r.name)
        .collect();
    if candidates.is_empty() {
        return Attached {
            reference,
            target: Target::None,
            denied: Some((
                "NoMatchingParent",
                format!("parent gateway {namespace}/{} not found", r.name),
            )),
        };
    }
    let mut accepted = Vec::new();
    // The least severe refusal is reported, as istiod does.
    let mut refusals: Vec<(u8, &'static str, String)> = Vec::new();
    for (i, parent) in candidates {
        match admits(parent, route, r, own) {
            Ok(()) => accepted.push(i),
            Err(refusal) => refusals.push(refusal),
        }
    }
    let denied = if accepted.is_empty() {
        let best = refusals
            .iter()
            .map(|(rank, ..)| *rank)
            .min()
            .unwrap_or(u8::MAX);
        let same: Vec<&(u8, &str, String)> =
            refusals.iter().filter(|(rank, ..)| *rank == best).collect();
        same.first().map(|(_, reason, _)| {
            let messages: Vec<&str> = same.iter().map(|(.., m)| m.as_str()).collect();
            (*reason, messages.join("; "))
        })
    } else {
        None
    };
    Attached {
        reference,
        target: Target::Listeners(accepted),
        denied,
    }
}

/// Whether a listener takes the route, or the refusal with its rank
/// (lower is reported first).
fn admits(
    parent: &Attachable<'_>,
    route: &Route<'_>,
    r: &api::ParentReference,
    own: &str,
) -> Result<(), (u8, &'static str, String)> {
    if let Some(port) = r.port
        && port != parent.listener.port
    {
        return Err((4, "NoMatchingParent", format!("port {port} not found")));
    }
    if let Some(section) = &r.section_name
        && *section != parent.listener.name
    {
        return Err((
            4,
            "NoMatchingParent",
            format!("sectionName {section:?} not found"),
        ));
    }
    let wildcard = ["*".to_owned()];
    let hostnames = if route.hostnames.is_empty() {
        &wildcard[..]
    } else {
        route.hostnames
    };
    let mut host_matched = false;
    let mut matched = false;
    for host in hostnames {
        for entry in &parent.hosts {
            let (namespace, listener_host) = entry.split_once('/').unwrap_or(("*", entry));
            let host_ok = Hostname::new(listener_host).matches(&Hostname::new(host));
            host_matched |= host_ok;
            matched |= host_ok && (namespace == "*" || namespace == own);
        }
    }
    let original = parent.listener.hostname.as_deref().unwrap_or_default();
    if !matched {
        return Err(if host_matched {
            (
                1,
                "NotAllowedByListeners",
                format!(
                    "hostnames matched parent hostname {original:?}, but namespace {own:?} is not allowed by the parent"
                ),
            )
        } else {
            (
                2,
                "NoMatchingListenerHostname",
                format!("no hostnames matched parent hostname {original:?}"),
            )
        });
    }
    if !parent.kinds.contains(&route.kind.name()) {
        return Err((
            1,
            "NotAllowedByListeners",
            format!("kind {GROUP}/v1/{} is not allowed", route.kind.name()),
        ));
    }
    Ok(())
}

/// GAMMA: a route whose parent is a Service routes the mesh's requests to it.
fn mesh_parent(
    world: &World<'_>,
    own: &str,
    r: &api::ParentReference,
    namespace: &str,
    reference: Value,
) -> Attached {
    if world.service(namespace, &r.name).is_none() {
        return Attached {
            reference,
            target: Target::None,
            denied: Some((
                "NoMatchingParent",
                format!("parent service: {:?} not found", r.name),
            )),
        };
    }
    Attached {
        reference,
        target: Target::Mesh {
            host: format!("{}.{namespace}.svc.{}", r.name, world.domain),
            port: r.port.and_then(|p| u16::try_from(p).ok()),
            consumer: namespace != own,
        },
        denied: None,
    }
}

/// The VirtualService rules one accepted parent gets, by merge key.
fn bindings(
    gateways: &Gateways<'_>,
    route: &Route<'_>,
    parent: &Attached,
) -> Vec<(String, Pending)> {
    let own = route.object.namespace().unwrap_or_default();
    let rules = &route.rules_for(&parent.target).rules;
    if rules.is_empty() || parent.denied.is_some() {
        return Vec::new();
    }
    match &parent.target {
        Target::None => Vec::new(),
        Target::Mesh {
            host,
            port,
            consumer,
        } => {
            let mut rules = rules.clone();
            let mut key = own.to_owned();
            if let Some(port) = port {
                rules.on_port(*port);
                key = format!("{key}/{port}");
            }
            // A consumer route (in the client's namespace, not the
            // Service's) steers only its own namespace's requests.
            let export_to = if *consumer {
                ExportTo::parse(["."], own)
            } else {
                ExportTo::All
            };
            vec![(
                format!("{}/{key}/{host}", rules.kind()),
                Pending {
                    namespace: own.to_owned(),
                    hosts: vec![host.clone()],
                    gateways: vec!["mesh".to_owned()],
                    export_to,
                    rules,
                },
            )]
        }
        Target::Listeners(accepted) => {
            let hostnames: Vec<&str> = if route.hostnames.is_empty() {
                vec!["*"]
            } else {
                route.hostnames.iter().map(String::as_str).collect()
            };
            let mut out = Vec::new();
            for i in accepted {
                let listener = &gateways.attachable[*i];
                for host in &hostnames {
                    if !host_stays_on(gateways, listener, host) {
                        continue;
                    }
                    out.push((
                        format!("{}/{}/{host}", rules.kind(), listener.internal),
                        Pending {
                            namespace: own.to_owned(),
                            hosts: vec![(*host).to_owned()],
                            gateways: vec![listener.internal.clone()],
                            export_to: ExportTo::All,
                            rules: rules.clone(),
                        },
                    ));
                }
            }
            out
        }
    }
}

/// Whether a route host bound to a wildcard listener stays there: a host that
/// a more specific listener of the same Gateway, port and protocol names
/// belongs to that listener only.
fn host_stays_on(gateways: &Gateways<'_>, ours: &Attachable<'_>, host: &str) -> bool {
    let route_host = Hostname::new(host);
    let Some(ours_host) = ours.listener.hostname.as_deref().map(Hostname::new) else {
        return sibling_hostnames(gateways, ours)
            .all(|other| !more_specific(&route_host, "", other));
    };
    if !ours_host.is_wildcard() {
        return true;
    }
    if !route_host.matches(&ours_host) {
        return false;
    }
    sibling_hostnames(gateways, ours)
        .all(|other| !more_specific(&route_host, ours_host.as_str(), other))
}

fn sibling_hostnames<'p>(
    gateways: &'p Gateways<'_>,
    ours: &'p Attachable<'_>,
) -> impl Iterator<Item = &'p str> {
    gateways
        .attachable
        .iter()
        .filter(move |p| {
            p.namespace == ours.namespace
                && p.gateway == ours.gateway
                && p.listener.name != ours.listener.name
                && p.listener.port == ours.listener.port
                && p.listener.protocol == ours.listener.protocol
        })
        .filter_map(|p| p.listener.hostname.as_deref())
}

fn more_specific(route_host: &Hostname, ours: &str, other: &str) -> bool {
    ours.len() <= other.len() && route_host.subset_of(&Hostname::new(other))
}

fn parent_status(parent: &Attached, problem: Option<&Unresolved>) -> ParentStatus {
    let accepted = match &parent.denied {
        Some((reason, message)) => Condition::fails("Accepted", reason, message.clone()),
        None => {
            let bound = match &parent.target {
                Target::Listeners(l) if l.len() > 1 => {
                    format!("Route was valid, bound to {} parents", l.len())
                }
                _ => "Route was valid".to_owned(),
            };
            Condition::holds("Accepted", "Accepted", bound)
        }
    };
    let resolved = match problem {
        Some(p) => Condition::fails("ResolvedRefs", p.reason, p.message.clone()),
        None => Condition::holds("ResolvedRefs", "ResolvedRefs", "All references resolved"),
    };
    ParentStatus {
        reference: parent.reference.clone(),
        conditions: vec![accepted, resolved],
    }
}

/// Where a rule goes among merged rules, as istiod sorts them: exact paths,
/// then prefixes, then regexes, longer first; then a method match; then
/// more header matches; then more query matches; rules without matches
/// last. Compared field by field, smallest first; the sort is stable, so
/// older routes win ties.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Precedence {
    /// Exact 0, prefix 1, regex 2, no path 3, no match at all 4.
    path_kind: u8,
    longer_path_first: std::cmp::Reverse<usize>,
    without_method: bool,
    more_headers_first: std::cmp::Reverse<usize>,
    more_queries_first: std::cmp::Reverse<usize>,
}

fn precedence(rule: &vs::HttpRoute) -> Precedence {
    let Some(m) = rule.matches.first() else {
        return Precedence {
            path_kind: 4,
            longer_path_first: std::cmp::Reverse(0),
            without_method: true,
            more_headers_first: std::cmp::Reverse(0),
            more_queries_first: std::cmp::Reverse(0),
        };
    };
    let (path_kind, length) = match &m.uri {
        Some(StringMatch::Exact(p)) => (0, p.len()),
        Some(StringMatch::Prefix(p)) => (1, p.len()),
        Some(StringMatch::Regex(r)) => (2, r.as_str().len()),
        _ => (3, 0),
    };
    Precedence {
        path_kind,
        longer_path_first: std::cmp::Reverse(length),
        without_method: m.method.is_none(),
        more_headers_first: std::cmp::Reverse(m.headers.len()),
        more_queries_first: std::cmp::Reverse(m.query_params.len()),
    }
}

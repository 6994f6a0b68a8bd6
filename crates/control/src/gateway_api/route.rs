//! HTTPRoutes and GRPCRoutes as VirtualService `http` rules: one rule per
//! match, bound to every listener (or, for a Service parent, to the mesh)
//! that accepts the route, merged per listener and host and ordered by the
//! Gateway API's precedence, as istiod merges and sorts them.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use oxmesh_config::gateway_api::{
    self as api, GrpcRoute, GrpcRouteFilter, HeaderMatch, HeaderModifier, HttpRoute,
    HttpRouteFilter, PathMatchType, RequestMirror, ValueMatchType,
};
use oxmesh_config::hostname::Hostname;
use oxmesh_config::kind::Kind;
use oxmesh_config::networking::virtual_service::{
    self as vs, HeaderOperations, Headers, HttpDirectResponse, HttpMatchRequest, HttpMirrorPolicy,
    HttpRedirect, HttpRewrite, HttpRouteDestination, RedirectPortSelection, RegexRewrite,
    VirtualService,
};
use oxmesh_config::object::{Object, Resource};
use oxmesh_config::percent::Percent;
use oxmesh_config::service::ExportTo;
use oxmesh_config::string_match::{Pattern, StringMatch};

use super::backend::{self, Reference, Unresolved};
use super::listener::{Listeners, Parent};
use super::status::{Body, Condition, ObjectStatus, ParentStatus};
use super::{GROUP, Translation, World};
use crate::push_context::Scoped;

/// A route of either kind, read the same way.
struct Route<'a> {
    object: &'a Object,
    kind: &'static str,
    parent_refs: &'a [api::ParentReference],
    hostnames: &'a [String],
}

/// Rules made from one route, and the first problem met making them.
struct Rules {
    http: Vec<vs::HttpRoute>,
    problem: Option<Unresolved>,
}

/// VirtualService rules waiting to be merged under one key.
struct Pending {
    namespace: String,
    hosts: Vec<String>,
    gateways: Vec<String>,
    export_to: ExportTo,
    http: Vec<vs::HttpRoute>,
}

pub(super) fn translate(
    world: &World<'_>,
    objects: &[std::sync::Arc<Object>],
    listeners: &mut Listeners<'_>,
    out: &mut Translation,
) {
    let mut routes: Vec<(&Object, Route<'_>, Rules)> = Vec::new();
    for object in objects {
        let namespace = object.namespace().unwrap_or_default();
        let (route, rules) = match &object.resource {
            Resource::HttpRoute(r) => (
                Route {
                    object,
                    kind: "HTTPRoute",
                    parent_refs: &r.parent_refs,
                    hostnames: &r.hostnames,
                },
                http_rules(world, object, namespace, r),
            ),
            Resource::GrpcRoute(r) => (
                Route {
                    object,
                    kind: "GRPCRoute",
                    parent_refs: &r.parent_refs,
                    hostnames: &r.hostnames,
                },
                grpc_rules(world, object, namespace, r),
            ),
            _ => continue,
        };
        routes.push((object, route, rules));
    }
    routes.sort_by_key(|(o, ..)| super::created(o));
    // Keyed by listener (or mesh port) and host, in creation order.
    let mut merged: BTreeMap<String, Pending> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    for (object, route, rules) in &routes {
        let parents = attach(world, listeners, route);
        let mut statuses = Vec::new();
        for parent in &parents {
            for (key, pending) in bindings(listeners, route, parent, &rules.http) {
                match merged.get_mut(&key) {
                    Some(existing) => existing.http.extend(pending.http),
                    None => {
                        order.push(key.clone());
                        merged.insert(key, pending);
                    }
                }
            }
            statuses.push(parent_status(parent, rules.problem.as_ref()));
        }
        out.statuses.push(ObjectStatus {
            kind: if route.kind == "HTTPRoute" {
                Kind::HttpRoute
            } else {
                Kind::GrpcRoute
            },
            namespace: object.namespace().unwrap_or_default().to_owned(),
            name: object.name().to_owned(),
            generation: object.meta.generation.unwrap_or(1),
            body: Body::Route { parents: statuses },
        });
    }
    for key in order {
        let Some(mut pending) = merged.remove(&key) else {
            continue;
        };
        pending.http.sort_by_key(precedence);
        out.virtual_services.push(Scoped {
            namespace: pending.namespace,
            name: key.replace('/', "~"),
            export_to: pending.export_to,
            spec: VirtualService {
                hosts: pending.hosts,
                gateways: pending.gateways,
                http: pending.http,
                from_gateway_api: true,
                ..Default::default()
            },
        });
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
fn attach(world: &World<'_>, listeners: &mut Listeners<'_>, route: &Route<'_>) -> Vec<Attached> {
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
                if listeners.foreign.contains(&(namespace, r.name.as_str())) {
                    continue;
                }
                gateway_parent(listeners, route, r, namespace, reference)
            }
            ("" | "core", "Service") => mesh_parent(world, own, r, namespace, reference),
            _ => continue,
        };
        if let Target::Listeners(accepted) = &attached.target {
            for i in accepted {
                listeners.parents[*i].attached += 1;
            }
        }
        out.push(attached);
    }
    out
}

fn gateway_parent(
    listeners: &Listeners<'_>,
    route: &Route<'_>,
    r: &api::ParentReference,
    namespace: &str,
    reference: Value,
) -> Attached {
    let own = route.object.namespace().unwrap_or_default();
    let candidates: Vec<(usize, &Parent<'_>)> = listeners
        .parents
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
    parent: &Parent<'_>,
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
    if !parent.kinds.contains(&route.kind) {
        return Err((
            1,
            "NotAllowedByListeners",
            format!("kind {GROUP}/v1/{} is not allowed", route.kind),
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
    listeners: &Listeners<'_>,
    route: &Route<'_>,
    parent: &Attached,
    http: &[vs::HttpRoute],
) -> Vec<(String, Pending)> {
    let own = route.object.namespace().unwrap_or_default();
    if http.is_empty() || parent.denied.is_some() {
        return Vec::new();
    }
    match &parent.target {
        Target::None => Vec::new(),
        Target::Mesh {
            host,
            port,
            consumer,
        } => {
            let mut rules = http.to_vec();
            let mut key = own.to_owned();
            if let Some(port) = port {
                with_port(&mut rules, *port);
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
                format!("{key}/{host}"),
                Pending {
                    namespace: own.to_owned(),
                    hosts: vec![host.clone()],
                    gateways: vec!["mesh".to_owned()],
                    export_to,
                    http: rules,
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
                let listener = &listeners.parents[*i];
                for host in &hostnames {
                    if !isolated_to(listeners, listener, host) {
                        continue;
                    }
                    out.push((
                        format!("{}/{host}", listener.internal),
                        Pending {
                            namespace: own.to_owned(),
                            hosts: vec![(*host).to_owned()],
                            gateways: vec![listener.internal.clone()],
                            export_to: ExportTo::All,
                            http: http.to_vec(),
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
fn isolated_to(listeners: &Listeners<'_>, ours: &Parent<'_>, host: &str) -> bool {
    let route_host = Hostname::new(host);
    let Some(ours_host) = ours.listener.hostname.as_deref().map(Hostname::new) else {
        return others(listeners, ours).all(|other| !more_specific(&route_host, "", other));
    };
    if !ours_host.is_wildcard() {
        return true;
    }
    if !route_host.matches(&ours_host) {
        return false;
    }
    others(listeners, ours).all(|other| !more_specific(&route_host, ours_host.as_str(), other))
}

fn others<'p>(listeners: &'p Listeners<'_>, ours: &'p Parent<'_>) -> impl Iterator<Item = &'p str> {
    listeners
        .parents
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

/// Every rule restricted to requests arriving on `port`.
fn with_port(rules: &mut [vs::HttpRoute], port: u16) {
    for rule in rules {
        if rule.matches.is_empty() {
            rule.matches.push(HttpMatchRequest::default());
        }
        for m in &mut rule.matches {
            m.port = u32::from(port);
        }
    }
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

/// Istio's ordering for merged rules: exact paths, then prefixes, then
/// regexes, longer first; then a method match; then more header matches;
/// then more query matches; rules without matches last. Stable, so older
/// routes win ties.
fn precedence(
    rule: &vs::HttpRoute,
) -> (
    u8,
    std::cmp::Reverse<usize>,
    bool,
    std::cmp::Reverse<usize>,
    std::cmp::Reverse<usize>,
) {
    let Some(m) = rule.matches.first() else {
        return (
            u8::MAX,
            std::cmp::Reverse(0),
            true,
            std::cmp::Reverse(0),
            std::cmp::Reverse(0),
        );
    };
    let (rank, length) = match &m.uri {
        Some(StringMatch::Exact(p)) => (0, p.len()),
        Some(StringMatch::Prefix(p)) => (1, p.len()),
        Some(StringMatch::Regex(r)) => (2, r.as_str().len()),
        _ => (3, 0),
    };
    (
        rank,
        std::cmp::Reverse(length),
        m.method.is_none(),
        std::cmp::Reverse(m.headers.len()),
        std::cmp::Reverse(m.query_params.len()),
    )
}

fn http_rules(world: &World<'_>, object: &Object, namespace: &str, route: &HttpRoute) -> Rules {
    let mut rules = Rules {
        http: Vec::new(),
        problem: None,
    };
    for (n, rule) in route.rules.iter().enumerate() {
        let name = rule
            .name
            .clone()
            .unwrap_or_else(|| format!("{namespace}.{}.{n}", object.name()));
        let matches: Vec<Option<&api::HttpRouteMatch>> = if rule.matches.is_empty() {
            vec![None]
        } else {
            rule.matches.iter().map(Some).collect()
        };
        for m in matches {
            let mut http = vs::HttpRoute {
                name: name.clone(),
                ..Default::default()
            };
            if let Some(m) = m {
                match http_match(m) {
                    Ok(matched) => http.matches.push(matched),
                    Err(problem) => {
                        rules.problem.get_or_insert(problem);
                        continue;
                    }
                }
            }
            for filter in &rule.filters {
                if let Err(problem) = http_filter(world, namespace, filter, &mut http) {
                    rules.problem.get_or_insert(problem);
                }
            }
            if let Some(timeouts) = &rule.timeouts {
                let nonzero = |d: Option<oxmesh_config::duration::Duration>| {
                    d.filter(|d| *d != oxmesh_config::duration::Duration::ZERO)
                };
                http.timeout = nonzero(timeouts.request);
                if let Some(backend) = nonzero(timeouts.backend_request) {
                    http.timeout = Some(backend);
                }
            }
            let backends: Vec<Backend<'_>> = rule
                .backend_refs
                .iter()
                .map(|b| Backend {
                    reference: reference_of(b),
                    weight: b.weight,
                    modifiers: b
                        .filters
                        .iter()
                        .map(|f| {
                            (
                                f.filter_type.as_str(),
                                f.request_header_modifier.as_ref(),
                                f.response_header_modifier.as_ref(),
                            )
                        })
                        .collect(),
                })
                .collect();
            destinations(
                world,
                "HTTPRoute",
                namespace,
                &backends,
                &mut http,
                &mut rules.problem,
            );
            rules.http.push(http);
        }
    }
    rules
}

fn grpc_rules(world: &World<'_>, object: &Object, namespace: &str, route: &GrpcRoute) -> Rules {
    let mut rules = Rules {
        http: Vec::new(),
        problem: None,
    };
    for (n, rule) in route.rules.iter().enumerate() {
        let name = rule
            .name
            .clone()
            .unwrap_or_else(|| format!("{namespace}.{}.{n}", object.name()));
        let matches: Vec<Option<&api::GrpcRouteMatch>> = if rule.matches.is_empty() {
            vec![None]
        } else {
            rule.matches.iter().map(Some).collect()
        };
        for m in matches {
            let mut http = vs::HttpRoute {
                name: name.clone(),
                ..Default::default()
            };
            if let Some(m) = m {
                match grpc_match(m) {
                    Ok(matched) => http.matches.push(matched),
                    Err(problem) => {
                        rules.problem.get_or_insert(problem);
                        continue;
                    }
                }
            }
            for filter in &rule.filters {
                if let Err(problem) = grpc_filter(world, namespace, filter, &mut http) {
                    rules.problem.get_or_insert(problem);
                }
            }
            let backends: Vec<Backend<'_>> = rule
                .backend_refs
                .iter()
                .map(|b| Backend {
                    reference: reference_of(b),
                    weight: b.weight,
                    modifiers: b
                        .filters
                        .iter()
                        .map(|f| {
                            (
                                f.filter_type.as_str(),
                                f.request_header_modifier.as_ref(),
                                f.response_header_modifier.as_ref(),
                            )
                        })
                        .collect(),
                })
                .collect();
            destinations(
                world,
                "GRPCRoute",
                namespace,
                &backends,
                &mut http,
                &mut rules.problem,
            );
            rules.http.push(http);
        }
    }
    rules
}

fn reference_of<F>(b: &api::BackendRef<F>) -> Reference<'_> {
    Reference {
        group: b.group.as_deref(),
        kind: b.kind.as_deref(),
        name: &b.name,
        namespace: b.namespace.as_deref(),
        port: b.port,
    }
}

/// A backendRef with its weight and its own header modifiers
/// (`(type, request, response)` per filter).
struct Backend<'a> {
    reference: Reference<'a>,
    weight: Option<i32>,
    modifiers: Vec<(
        &'a str,
        Option<&'a HeaderModifier>,
        Option<&'a HeaderModifier>,
    )>,
}

/// The rule's destinations: weight 1 unless given, weight-0 backends left
/// out, a 500 when nothing is left (and the rule does not redirect).
fn destinations(
    world: &World<'_>,
    route_kind: &str,
    namespace: &str,
    backends: &[Backend<'_>],
    http: &mut vs::HttpRoute,
    problem: &mut Option<Unresolved>,
) {
    let live: Vec<(&Backend<'_>, i32)> = backends
        .iter()
        .map(|b| (b, b.weight.unwrap_or(1)))
        .filter(|(_, w)| *w > 0)
        .collect();
    if live.is_empty() {
        if http.redirect.is_none() {
            http.direct_response = Some(HttpDirectResponse {
                status: 500,
                body: None,
            });
        }
        // A zero-weight backend still has to resolve.
        for b in backends {
            if let (_, Some(p)) = backend::destination(world, route_kind, namespace, &b.reference) {
                problem.get_or_insert(p);
            }
        }
        return;
    }
    let single = live.len() == 1;
    for (b, weight) in live {
        let (destination, unresolved) =
            backend::destination(world, route_kind, namespace, &b.reference);
        if let Some(p) = unresolved {
            problem.get_or_insert(p);
        }
        let mut headers = Headers::default();
        for (kind, request, response) in &b.modifiers {
            match *kind {
                "RequestHeaderModifier" => headers.request = request.map(header_operations),
                "ResponseHeaderModifier" => headers.response = response.map(header_operations),
                other => {
                    problem.get_or_insert(Unresolved {
                        reason: "InvalidFilter",
                        message: format!("unsupported filter type {other:?}"),
                    });
                }
            }
        }
        let has_headers = headers.request.is_some() || headers.response.is_some();
        http.route.push(HttpRouteDestination {
            destination,
            weight: if single { 0 } else { weight },
            headers: has_headers.then_some(headers),
        });
    }
}

fn http_match(m: &api::HttpRouteMatch) -> Result<HttpMatchRequest, Unresolved> {
    let path = m.path.as_ref();
    let value = path.and_then(|p| p.value.as_deref()).unwrap_or("/");
    let uri = match path
        .and_then(|p| p.match_type)
        .unwrap_or(PathMatchType::PathPrefix)
    {
        PathMatchType::PathPrefix => StringMatch::Prefix(if value == "/" {
            value.to_owned()
        } else {
            value.trim_end_matches('/').to_owned()
        }),
        PathMatchType::Exact => StringMatch::Exact(value.to_owned()),
        PathMatchType::RegularExpression => StringMatch::Regex(pattern(value)?),
    };
    Ok(HttpMatchRequest {
        uri: Some(uri),
        headers: value_matches(&m.headers)?,
        query_params: value_matches(&m.query_params)?,
        method: m.method.clone().map(StringMatch::Exact),
        ..Default::default()
    })
}

/// gRPC's `/<service>/<method>` as a path match, as istiod writes it.
fn grpc_match(m: &api::GrpcRouteMatch) -> Result<HttpMatchRequest, Unresolved> {
    let uri = match &m.method {
        None => None,
        Some(method) => {
            let regex = method.match_type.as_deref() == Some("RegularExpression");
            Some(
                match (method.service.as_deref(), method.method.as_deref()) {
                    (None, None) => {
                        return Err(Unresolved {
                            reason: "InvalidConfiguration",
                            message: "gRPC match must have method or service defined".to_owned(),
                        });
                    }
                    (Some(s), None) if regex => StringMatch::Regex(pattern(&format!("/{s}/.+"))?),
                    (Some(s), None) => StringMatch::Prefix(format!("/{s}/")),
                    (None, Some(m)) => StringMatch::Regex(pattern(&format!("/[^/]+/{m}"))?),
                    (Some(s), Some(m)) if regex => {
                        StringMatch::Regex(pattern(&format!("/{s}/{m}"))?)
                    }
                    (Some(s), Some(m)) => StringMatch::Exact(format!("/{s}/{m}")),
                },
            )
        }
    };
    Ok(HttpMatchRequest {
        uri,
        headers: value_matches(&m.headers)?,
        ..Default::default()
    })
}

fn pattern(source: &str) -> Result<Pattern, Unresolved> {
    Pattern::new(source).map_err(|e| Unresolved {
        reason: "InvalidConfiguration",
        message: format!("invalid regex {source:?}: {e}"),
    })
}

/// Header or query matches by name; a repeated name keeps its first entry.
fn value_matches(list: &[HeaderMatch]) -> Result<BTreeMap<String, StringMatch>, Unresolved> {
    let mut out = BTreeMap::new();
    for m in list {
        let test = match m.match_type.unwrap_or(ValueMatchType::Exact) {
            ValueMatchType::Exact => StringMatch::Exact(m.value.clone()),
            ValueMatchType::RegularExpression => StringMatch::Regex(pattern(&m.value)?),
        };
        out.entry(m.name.clone()).or_insert(test);
    }
    Ok(out)
}

fn http_filter(
    world: &World<'_>,
    namespace: &str,
    filter: &HttpRouteFilter,
    http: &mut vs::HttpRoute,
) -> Result<(), Unresolved> {
    match filter.filter_type.as_str() {
        "RequestHeaderModifier" => {
            http.headers.get_or_insert_default().request = filter
                .request_header_modifier
                .as_ref()
                .map(header_operations);
        }
        "ResponseHeaderModifier" => {
            http.headers.get_or_insert_default().response = filter
                .response_header_modifier
                .as_ref()
                .map(header_operations);
        }
        "RequestRedirect" => http.redirect = filter.request_redirect.as_ref().map(redirect),
        "URLRewrite" => {
            if let Some(rewrite) = &filter.url_rewrite {
                http.rewrite = url_rewrite(rewrite, http.matches.first());
            }
        }
        "RequestMirror" => {
            if let Some(mirror) = &filter.request_mirror {
                http.mirrors
                    .push(mirror_policy(world, "HTTPRoute", namespace, mirror)?);
            }
        }
        other => {
            return Err(Unresolved {
                reason: "InvalidFilter",
                message: format!("unsupported filter type {other:?}"),
            });
        }
    }
    Ok(())
}

fn grpc_filter(
    world: &World<'_>,
    namespace: &str,
    filter: &GrpcRouteFilter,
    http: &mut vs::HttpRoute,
) -> Result<(), Unresolved> {
    match filter.filter_type.as_str() {
        "RequestHeaderModifier" => {
            http.headers.get_or_insert_default().request = filter
                .request_header_modifier
                .as_ref()
                .map(header_operations);
        }
        "ResponseHeaderModifier" => {
            http.headers.get_or_insert_default().response = filter
                .response_header_modifier
                .as_ref()
                .map(header_operations);
        }
        "RequestMirror" => {
            if let Some(mirror) = &filter.request_mirror {
                http.mirrors
                    .push(mirror_policy(world, "GRPCRoute", namespace, mirror)?);
            }
        }
        other => {
            return Err(Unresolved {
                reason: "InvalidFilter",
                message: format!("unsupported filter type {other:?}"),
            });
        }
    }
    Ok(())
}

/// Header names are lower-cased; a repeated name keeps its first value.
fn header_operations(m: &HeaderModifier) -> HeaderOperations {
    let map = |list: &[api::HeaderValue]| {
        let mut out = BTreeMap::new();
        for h in list {
            out.entry(h.name.to_ascii_lowercase())
                .or_insert_with(|| h.value.clone());
        }
        out
    };
    HeaderOperations {
        set: map(&m.set),
        add: map(&m.add),
        remove: m.remove.clone(),
    }
}

/// The Gateway API's redirect: 302 unless told, the request's port unless a
/// port or a scheme is given.
fn redirect(r: &api::RequestRedirect) -> HttpRedirect {
    let (uri, prefix_rewrite) = match r.path.as_ref() {
        Some(p) if p.modifier_type == "ReplaceFullPath" => {
            (p.replace_full_path.clone().unwrap_or_default(), None)
        }
        Some(p) if p.modifier_type == "ReplacePrefixMatch" => {
            (String::new(), p.replace_prefix_match.clone())
        }
        _ => (String::new(), None),
    };
    HttpRedirect {
        uri,
        authority: r.hostname.clone().unwrap_or_default(),
        port: r.port.and_then(|p| u32::try_from(p).ok()),
        derive_port: r.port.is_none().then_some(if r.scheme.is_some() {
            RedirectPortSelection::FromProtocolDefault
        } else {
            RedirectPortSelection::FromRequestPort
        }),
        scheme: r.scheme.clone().unwrap_or_default(),
        redirect_code: r
            .status_code
            .and_then(|c| u32::try_from(c).ok())
            .unwrap_or(302),
        prefix_rewrite,
    }
}

/// URLRewrite. Replacing a prefix with `/` drops it (`/api/users` under
/// `/api` becomes `/users`), which a plain prefix rewrite would turn into
/// `//users`; that case is a regex rewrite of the matched prefix.
fn url_rewrite(r: &api::UrlRewrite, matched: Option<&HttpMatchRequest>) -> Option<HttpRewrite> {
    let mut rewrite = HttpRewrite {
        authority: r.hostname.clone().unwrap_or_default(),
        ..Default::default()
    };
    match r.path.as_ref() {
        Some(p) if p.modifier_type == "ReplacePrefixMatch" => {
            let replacement = p.replace_prefix_match.as_deref().unwrap_or("/");
            let trimmed = replacement.trim_end_matches('/');
            let prefix = matched.and_then(|m| match &m.uri {
                Some(StringMatch::Prefix(p)) if p != "/" => Some(p.as_str()),
                _ => None,
            });
            match (trimmed, prefix) {
                ("", Some(prefix)) => {
                    rewrite.uri_regex_rewrite = Some(RegexRewrite {
                        pattern: format!("^{}/*", regex_escape(prefix)),
                        rewrite: "/".to_owned(),
                    });
                }
                ("", None) => rewrite.uri = "/".to_owned(),
                (t, _) => rewrite.uri = t.to_owned(),
            }
        }
        Some(p) if p.modifier_type == "ReplaceFullPath" => {
            rewrite.uri_regex_rewrite = Some(RegexRewrite {
                pattern: "/.*".to_owned(),
                rewrite: p.replace_full_path.clone().unwrap_or_default(),
            });
        }
        _ => {}
    }
    let nothing = rewrite.uri.is_empty()
        && rewrite.uri_regex_rewrite.is_none()
        && rewrite.authority.is_empty();
    (!nothing).then_some(rewrite)
}

fn regex_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn mirror_policy(
    world: &World<'_>,
    route_kind: &str,
    namespace: &str,
    mirror: &RequestMirror,
) -> Result<HttpMirrorPolicy, Unresolved> {
    let b = &mirror.backend_ref;
    let reference = Reference {
        group: b.group.as_deref(),
        kind: b.kind.as_deref(),
        name: &b.name,
        namespace: b.namespace.as_deref(),
        port: b.port,
    };
    let (destination, problem) = backend::destination(world, route_kind, namespace, &reference);
    if let Some(p) = problem {
        return Err(p);
    }
    let percentage = match (&mirror.fraction, mirror.percent) {
        (Some(f), _) => {
            Some(f64::from(f.numerator) * 100.0 / f64::from(f.denominator.unwrap_or(100)))
        }
        (None, Some(p)) => Some(f64::from(p)),
        (None, None) => None,
    };
    Ok(HttpMirrorPolicy {
        destination,
        percentage: percentage.map(|value| Percent { value }),
    })
}

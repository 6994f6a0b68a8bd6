//! Gateway API rules: the schema and CEL checks of the standard-channel CRDs (Istio
//! itself adds none for these kinds).

use std::collections::HashSet;

use crate::gateway_api::{BackendRef, HeaderMatch};
use crate::gateway_api::{
    Gateway, GatewayClass, GrpcRoute, HttpRoute, L4RouteRule, ParentReference, ReferenceGrant,
    TcpRoute, TlsMode, TlsRoute,
};
use crate::path::FieldPath;
use crate::validation::Report;
use crate::validation::syntax;

fn hostname(name: &str, wildcard: bool) -> bool {
    let name = if wildcard {
        name.strip_prefix("*.").unwrap_or(name)
    } else {
        name
    };
    !name.is_empty()
        && name.len() <= 253
        && name
            .split('.')
            .all(|l| !l.is_empty() && l.len() <= 63 && syntax::is_kube_label(l))
}

/// `controllerName`: a domain-prefixed path, as the CRD's pattern asks.
pub fn validate_gateway_class(c: &GatewayClass, at: &FieldPath, report: &mut Report) {
    let here = at.field("controllerName");
    let valid = c
        .controller_name
        .split_once('/')
        .is_some_and(|(domain, path)| {
            hostname(domain, false) && !path.is_empty() && c.controller_name.len() <= 253
        });
    if !valid {
        report.error(
            &here,
            format!(
                "{:?} must be a domain-prefixed path (such as \"istio.io/gateway-controller\")",
                c.controller_name
            ),
        );
    }
}

pub fn validate_gateway(g: &Gateway, at: &FieldPath, report: &mut Report) {
    if g.gateway_class_name.is_empty() {
        report.error(
            &at.field("gatewayClassName"),
            "in body should be at least 1 chars long",
        );
    }
    let listeners = at.field("listeners");
    if g.listeners.is_empty() || g.listeners.len() > 64 {
        report.error(&listeners, "must have between 1 and 64 listeners");
    }
    let mut names = HashSet::new();
    let mut combos = HashSet::new();
    for (i, l) in g.listeners.iter().enumerate() {
        let here = listeners.index(i);
        if !names.insert(l.name.as_str()) {
            report.error(
                &here.field("name"),
                "Listener name must be unique within the Gateway",
            );
        }
        if !combos.insert((l.port, l.protocol.to_ascii_uppercase(), l.hostname.clone())) {
            report.error(
                &here,
                "Combination of port, protocol and hostname must be unique for each listener",
            );
        }
        if !(1..=65535).contains(&l.port) {
            report.error(
                &here.field("port"),
                format!("port must be between 1-65535, got {}", l.port),
            );
        }
        if let Some(h) = &l.hostname
            && !hostname(h, true)
        {
            report.error(&here.field("hostname"), format!("invalid hostname {h:?}"));
        }
        let protocol = l.protocol.to_ascii_uppercase();
        if matches!(protocol.as_str(), "HTTP" | "TCP" | "UDP") && l.tls.is_some() {
            report.error(
                &here.field("tls"),
                "tls must not be specified for protocols ['HTTP', 'TCP', 'UDP']",
            );
        }
        if matches!(protocol.as_str(), "TCP" | "UDP")
            && l.hostname.as_deref().is_some_and(|h| !h.is_empty())
        {
            report.error(
                &here.field("hostname"),
                "hostname must not be specified for protocols ['TCP', 'UDP']",
            );
        }
        if protocol == "HTTPS" && l.tls.as_ref().and_then(|t| t.mode) == Some(TlsMode::Passthrough)
        {
            report.error(
                &here.field("tls").field("mode"),
                "tls mode must be Terminate for protocol HTTPS",
            );
        }
        if protocol == "TLS" && l.tls.as_ref().and_then(|t| t.mode).is_none() {
            report.error(&here.field("tls"), "tls mode must be set for protocol TLS");
        }
        if let Some(tls) = &l.tls {
            let terminate = tls.mode.unwrap_or(TlsMode::Terminate) == TlsMode::Terminate;
            if terminate && tls.certificate_refs.is_empty() && tls.options.is_empty() {
                report.error(
                    &here.field("tls"),
                    "certificateRefs or options must be specified when mode is Terminate",
                );
            }
        }
    }
}

pub fn validate_http_route(r: &HttpRoute, at: &FieldPath, report: &mut Report) {
    parent_refs(&r.parent_refs, &at.field("parentRefs"), report);
    hostnames(&r.hostnames, &at.field("hostnames"), report);
    if r.rules.len() > 16 {
        report.error(&at.field("rules"), "must have at most 16 items");
    }
    let mut names = HashSet::new();
    for (i, rule) in r.rules.iter().enumerate() {
        let here = at.field("rules").index(i);
        if let Some(name) = &rule.name
            && !names.insert(name.as_str())
        {
            report.error(
                &here.field("name"),
                "Rule name must be unique within the route",
            );
        }
        let redirect = rule.filters.iter().any(|f| f.request_redirect.is_some());
        if redirect && !rule.backend_refs.is_empty() {
            report.error(
                &here,
                "RequestRedirect filter must not be used together with backendRefs",
            );
        }
        for (j, m) in rule.matches.iter().enumerate() {
            let match_at = here.field("matches").index(j);
            if let Some(path) = &m.path {
                http_path(path, &match_at.field("path"), report);
            }
            header_matches(&m.headers, &match_at.field("headers"), report);
            header_matches(&m.query_params, &match_at.field("queryParams"), report);
        }
        http_filters(&rule.filters, &here.field("filters"), report);
        for (j, backend) in rule.backend_refs.iter().enumerate() {
            let backend_at = here.field("backendRefs").index(j);
            backend_ref(backend, &backend_at, report);
            http_filters(&backend.filters, &backend_at.field("filters"), report);
        }
        if let Some(timeouts) = &rule.timeouts
            && let (Some(request), Some(backend)) = (timeouts.request, timeouts.backend_request)
            && request != crate::duration::Duration::ZERO
            && backend > request
        {
            report.error(
                &here.field("timeouts"),
                "backendRequest timeout cannot be longer than request timeout",
            );
        }
    }
}

fn http_path(path: &crate::gateway_api::HttpPathMatch, at: &FieldPath, report: &mut Report) {
    let Some(value) = &path.value else { return };
    let regex = path
        .match_type
        .is_some_and(|t| t == crate::gateway_api::PathMatchType::RegularExpression);
    if regex {
        report.check(&at.field("value"), syntax::regex(value, "path"));
        return;
    }
    let bad = [
        (
            !value.starts_with('/'),
            "value must be an absolute path and start with '/' when type one of ['Exact', 'PathPrefix']",
        ),
        (
            value.contains("//"),
            "must not contain '//' when type one of ['Exact', 'PathPrefix']",
        ),
        (
            value.contains("/./"),
            "must not contain '/./' when type one of ['Exact', 'PathPrefix']",
        ),
        (
            value.contains("/../"),
            "must not contain '/../' when type one of ['Exact', 'PathPrefix']",
        ),
        (
            value.contains("%2f") || value.contains("%2F"),
            "must not contain '%2f' when type one of ['Exact', 'PathPrefix']",
        ),
        (
            value.contains('#'),
            "must not contain '#' when type one of ['Exact', 'PathPrefix']",
        ),
        (
            value.ends_with("/..") || value.ends_with("/."),
            "must not end with '/..' or '/.' when type one of ['Exact', 'PathPrefix']",
        ),
    ];
    for (_, message) in bad.iter().filter(|(b, _)| *b) {
        report.error(&at.field("value"), *message);
    }
    if value.len() > 1024 {
        report.error(&at.field("value"), "must have at most 1024 characters");
    }
}

fn header_matches(matches: &[HeaderMatch], at: &FieldPath, report: &mut Report) {
    let mut names = HashSet::new();
    for (i, m) in matches.iter().enumerate() {
        let here = at.index(i);
        report.check(&here.field("name"), syntax::header_name(&m.name));
        if !names.insert(m.name.to_ascii_lowercase()) {
            report.error(
                &here.field("name"),
                format!("Duplicate value: {:?}", m.name),
            );
        }
        if m.value.is_empty() {
            report.error(
                &here.field("value"),
                "in body should be at least 1 chars long",
            );
        }
        if m.match_type == Some(crate::gateway_api::ValueMatchType::RegularExpression) {
            report.check(&here.field("value"), syntax::regex(&m.value, "value"));
        }
    }
}

fn http_filters(
    filters: &[crate::gateway_api::HttpRouteFilter],
    at: &FieldPath,
    report: &mut Report,
) {
    let mut seen = HashSet::new();
    for (i, f) in filters.iter().enumerate() {
        let here = at.index(i);
        let members = [
            (
                "requestHeaderModifier",
                "RequestHeaderModifier",
                f.request_header_modifier.is_some(),
            ),
            (
                "responseHeaderModifier",
                "ResponseHeaderModifier",
                f.response_header_modifier.is_some(),
            ),
            ("requestMirror", "RequestMirror", f.request_mirror.is_some()),
            (
                "requestRedirect",
                "RequestRedirect",
                f.request_redirect.is_some(),
            ),
            ("urlRewrite", "URLRewrite", f.url_rewrite.is_some()),
            ("extensionRef", "ExtensionRef", f.extension_ref.is_some()),
            ("cors", "CORS", f.cors.is_some()),
        ];
        filter_union(&f.filter_type, &members, &here, report);
        if let Some(mirror) = &f.request_mirror {
            mirror_share(mirror, &here.field("requestMirror"), report);
        }
        let repeatable = matches!(f.filter_type.as_str(), "RequestMirror" | "ExtensionRef");
        if !repeatable && !seen.insert(f.filter_type.as_str()) {
            report.error(
                &here,
                format!("{} filter cannot be repeated", f.filter_type),
            );
        }
    }
    if seen.contains("RequestRedirect") && seen.contains("URLRewrite") {
        report.error(at, "May specify either httpRouteFilterRequestRedirect or httpRouteFilterRequestRewrite, but not both");
    }
}

/// A filter's `type` must name exactly the member that is set.
fn filter_union(kind: &str, members: &[(&str, &str, bool)], at: &FieldPath, report: &mut Report) {
    if !members.iter().any(|(_, name, _)| *name == kind) {
        let names: Vec<&str> = members.iter().map(|(_, n, _)| *n).collect();
        report.error(
            &at.field("type"),
            format!("Unsupported value: {kind:?}: supported values: {names:?}"),
        );
        return;
    }
    for (field, name, set) in members {
        if *set && *name != kind {
            report.error(
                &at.field(field),
                format!("filter.{field} must be nil if the filter.type is not {name}"),
            );
        }
        if !*set && *name == kind {
            report.error(
                &at.field(field),
                format!("filter.{field} must be specified for {name} filter.type"),
            );
        }
    }
}

fn backend_ref<F>(b: &BackendRef<F>, at: &FieldPath, report: &mut Report) {
    let service = b.group.as_deref().unwrap_or_default().is_empty()
        && b.kind.as_deref().unwrap_or("Service") == "Service";
    if service && b.port.is_none() {
        report.error(&at.field("port"), "Must have port for Service reference");
    }
    if b.port.is_some_and(|p| !(1..=65535).contains(&p)) {
        report.error(&at.field("port"), "port must be between 1-65535");
    }
    if b.weight.is_some_and(|w| !(0..=1_000_000).contains(&w)) {
        report.error(&at.field("weight"), "weight must be between 0 and 1000000");
    }
    if b.name.is_empty() {
        report.error(&at.field("name"), "in body should be at least 1 chars long");
    }
}

fn parent_refs(refs: &[ParentReference], at: &FieldPath, report: &mut Report) {
    if refs.len() > 32 {
        report.error(at, "must have at most 32 items");
    }
    let mut seen = HashSet::new();
    for (i, r) in refs.iter().enumerate() {
        // The API server defaults these before its rules compare them.
        let key = (
            r.group
                .clone()
                .unwrap_or_else(|| "gateway.networking.k8s.io".to_owned()),
            r.kind.clone().unwrap_or_else(|| "Gateway".to_owned()),
            r.namespace.clone().unwrap_or_default(),
            r.name.clone(),
            r.section_name.clone(),
            r.port,
        );
        if !seen.insert(key) {
            report.error(&at.index(i), "sectionName must be unique when parentRefs includes 2 or more references to the same parent");
        }
    }
}

fn hostnames(names: &[String], at: &FieldPath, report: &mut Report) {
    if names.len() > 16 {
        report.error(at, "must have at most 16 items");
    }
    for (i, h) in names.iter().enumerate() {
        if !hostname(h, true) {
            report.error(&at.index(i), format!("invalid hostname {h:?}"));
        }
    }
}

pub fn validate_grpc_route(r: &GrpcRoute, at: &FieldPath, report: &mut Report) {
    parent_refs(&r.parent_refs, &at.field("parentRefs"), report);
    hostnames(&r.hostnames, &at.field("hostnames"), report);
    for (i, rule) in r.rules.iter().enumerate() {
        let here = at.field("rules").index(i);
        for (j, m) in rule.matches.iter().enumerate() {
            let match_at = here.field("matches").index(j);
            if let Some(method) = &m.method
                && method.service.is_none()
                && method.method.is_none()
            {
                report.error(
                    &match_at.field("method"),
                    "One or both of 'service' or 'method' must be specified",
                );
            }
            header_matches(&m.headers, &match_at.field("headers"), report);
        }
        for (j, backend) in rule.backend_refs.iter().enumerate() {
            backend_ref(backend, &here.field("backendRefs").index(j), report);
        }
    }
}

pub fn validate_tcp_route(r: &TcpRoute, at: &FieldPath, report: &mut Report) {
    parent_refs(&r.parent_refs, &at.field("parentRefs"), report);
    l4_rules(&r.rules, &at.field("rules"), report);
}

pub fn validate_tls_route(r: &TlsRoute, at: &FieldPath, report: &mut Report) {
    parent_refs(&r.parent_refs, &at.field("parentRefs"), report);
    hostnames(&r.hostnames, &at.field("hostnames"), report);
    l4_rules(&r.rules, &at.field("rules"), report);
}

/// TCPRoute and TLSRoute rules: 1 to 16, each with 1 to 16 backends.
fn l4_rules(rules: &[L4RouteRule], at: &FieldPath, report: &mut Report) {
    if rules.is_empty() || rules.len() > 16 {
        report.error(at, "must have between 1 and 16 items");
    }
    let mut names = HashSet::new();
    for (i, rule) in rules.iter().enumerate() {
        let here = at.index(i);
        if let Some(name) = &rule.name
            && !names.insert(name.as_str())
        {
            report.error(
                &here.field("name"),
                "Rule name must be unique within the route",
            );
        }
        if rule.backend_refs.is_empty() || rule.backend_refs.len() > 16 {
            report.error(
                &here.field("backendRefs"),
                "must have between 1 and 16 items",
            );
        }
        for (j, backend) in rule.backend_refs.iter().enumerate() {
            backend_ref(backend, &here.field("backendRefs").index(j), report);
        }
    }
}

pub fn validate_reference_grant(g: &ReferenceGrant, at: &FieldPath, report: &mut Report) {
    for (field, len) in [("from", g.from.len()), ("to", g.to.len())] {
        if !(1..=16).contains(&len) {
            report.error(&at.field(field), "must have between 1 and 16 items");
        }
    }
    for (i, from) in g.from.iter().enumerate() {
        if !syntax::is_kube_label(&from.namespace) {
            report.error(
                &at.field("from").index(i).field("namespace"),
                "must be a lower-case DNS-1123 label",
            );
        }
    }
}

/// A mirror's `fraction` (denominator at least 1, numerator at most it) or
/// `percent` (0 to 100), and not both.
fn mirror_share(mirror: &crate::gateway_api::RequestMirror, at: &FieldPath, report: &mut Report) {
    if let Some(f) = &mirror.fraction {
        let denominator = f.denominator.unwrap_or(100);
        if denominator < 1 {
            report.error(
                &at.field("fraction").field("denominator"),
                "should be greater than or equal to 1",
            );
        }
        if f.numerator < 0 {
            report.error(
                &at.field("fraction").field("numerator"),
                "should be greater than or equal to 0",
            );
        }
        if f.numerator > denominator {
            report.error(
                &at.field("fraction"),
                "numerator must be less than or equal to denominator",
            );
        }
    }
    if let Some(p) = mirror.percent
        && !(0..=100).contains(&p)
    {
        report.error(&at.field("percent"), "should be between 0 and 100");
    }
    if mirror.fraction.is_some() && mirror.percent.is_some() {
        report.error(
            at,
            "Only one of percent or fraction may be specified in HTTPRequestMirrorFilter",
        );
    }
}

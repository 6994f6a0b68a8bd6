//! VirtualService rules.

use crate::networking::virtual_service::{
    CorsPolicy, HttpFaultInjection, HttpMatchRequest, HttpRedirect, HttpRetry, HttpRewrite,
    HttpRoute, L4MatchAttributes, RouteDestination, TlsMatchAttributes, TlsRoute, VirtualService,
};
use crate::object::Object;
use crate::path::FieldPath;
use crate::percent::Percent;
use crate::string_match::StringMatch;
use crate::validation::Report;
use crate::validation::shared;
use crate::validation::syntax;

const ROUTE_SEMANTICS: &str = "internal.istio.io/route-semantics";

pub fn validate(vs: &VirtualService, object: &Object, at: &FieldPath, report: &mut Report) {
    let gateway_semantics = object
        .meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(ROUTE_SEMANTICS))
        .is_some_and(|v| v == "gateway");
    let delegate = vs.hosts.is_empty();
    if delegate {
        if !vs.gateways.is_empty() {
            report.error(
                &at.field("gateways"),
                "delegate virtual service must have no gateways specified",
            );
        }
        if !vs.tls.is_empty() {
            report.error(
                &at.field("tls"),
                "delegate virtual service must have no tls route specified",
            );
        }
        if !vs.tcp.is_empty() {
            report.error(
                &at.field("tcp"),
                "delegate virtual service must have no tcp route specified",
            );
        }
    }
    let applies_to_gateway = !vs.gateways.is_empty() && !vs.gateways.iter().any(|g| g == "mesh");
    gateway_names(
        &vs.gateways,
        &at.field("gateways"),
        gateway_semantics,
        report,
    );
    if !applies_to_gateway {
        jwt_claim_routes_need_gateway(vs, at, report);
    }
    hosts(vs, applies_to_gateway, at, report);
    if vs.http.is_empty() && vs.tcp.is_empty() && vs.tls.is_empty() {
        report.error(at, "http, tcp or tls must be provided in virtual service");
    }
    for (i, route) in vs.http.iter().enumerate() {
        http_route(
            route,
            delegate,
            gateway_semantics,
            &at.field("http").index(i),
            report,
        );
    }
    let sni_gateway = !vs.gateways.iter().any(|g| g == "mesh");
    for (i, route) in vs.tls.iter().enumerate() {
        tls_route(
            route,
            &vs.hosts,
            sni_gateway,
            &at.field("tls").index(i),
            report,
        );
    }
    for (i, route) in vs.tcp.iter().enumerate() {
        let here = at.field("tcp").index(i);
        for (j, m) in route.matches.iter().enumerate() {
            l4_match(m, &here.field("match").index(j), report);
        }
        if route.route.is_empty() {
            report.error(&here.field("route"), "TCP route is required");
        }
        route_destinations(&route.route, &here.field("route"), report);
    }
    shared::export_to(&vs.export_to, &at.field("exportTo"), false, report);
    super::unreachable_rules::check(vs, at, report);
}

fn hosts(vs: &VirtualService, applies_to_gateway: bool, at: &FieldPath, report: &mut Report) {
    let sni = vs
        .tls
        .iter()
        .any(|t| t.matches.iter().any(|m| !m.sni_hosts.is_empty()));
    let mut all_valid = true;
    for (i, host) in vs.hosts.iter().enumerate() {
        let here = at.field("hosts").index(i);
        let check = if applies_to_gateway && sni && host.starts_with("outbound_") {
            outbound_sni_host(host)
        } else {
            syntax::wildcard_domain(host)
        };
        if let Err(e) = check
            && !syntax::is_ip(host)
        {
            all_valid = false;
            report.error(&here, e);
        }
        if !applies_to_gateway && host == "*" {
            report.error(
                &here,
                "wildcard host * is not allowed for virtual services bound to the mesh gateway",
            );
        }
    }
    if !all_valid {
        return;
    }
    for (i, a) in vs.hosts.iter().enumerate() {
        for b in &vs.hosts[i + 1..] {
            if host_matches(a, b) {
                report.error(
                    &at.field("hosts"),
                    format!("duplicate hosts in virtual service: {a} & {b}"),
                );
            }
        }
    }
}

/// `outbound_.<PORT>_._.<HOSTNAME>`: the SNI of Istio's auto-passthrough gateways.
fn outbound_sni_host(host: &str) -> syntax::Check {
    let parts: Vec<&str> = host.split('_').collect();
    if parts.len() < 4 {
        return Err(format!(
            "domain name {host} invalid, should follow 'outbound_.<PORT>_._.<HOSTNAME>' format"
        ));
    }
    let port = parts[1].trim_matches('.');
    let name = parts[3].trim_matches('.');
    if !port.starts_with(|c: char| c.is_ascii_digit())
        || !name.starts_with(|c: char| c.is_ascii_alphabetic())
    {
        return Err(format!(
            "domain name {host:?} invalid. should follow outbound_.<PORT>_._.<HOSTNAME> format"
        ));
    }
    Ok(())
}

/// Whether two host names (with `*` wildcards) select a common host.
pub fn host_matches(a: &str, b: &str) -> bool {
    match (a.strip_prefix('*'), b.strip_prefix('*')) {
        (Some(sa), Some(sb)) => sa.ends_with(sb) || sb.ends_with(sa),
        (Some(sa), None) => b.ends_with(sa),
        (None, Some(sb)) => a.ends_with(sb),
        (None, None) => a == b,
    }
}

/// Whether every host `n` selects is also selected by `of`.
fn host_subset_of(n: &str, of: &str) -> bool {
    match (n.strip_prefix('*'), of.strip_prefix('*')) {
        (Some(sn), Some(so)) => sn.len() >= so.len() && sn.ends_with(so),
        (Some(_), None) => false,
        (None, Some(so)) => n.ends_with(so),
        (None, None) => n == of,
    }
}

/// `gateways:` entries: `mesh`, `<namespace>/<name>` or a legacy `<name>[.<namespace>]`.
pub fn gateway_names(
    names: &[String],
    at: &FieldPath,
    gateway_semantics: bool,
    report: &mut Report,
) {
    for (i, name) in names.iter().enumerate() {
        let here = at.index(i);
        match name.split_once('/') {
            None => {
                if let Some((gw, ns)) = name.split_once('.') {
                    report.warn(
                        &here,
                        format!("using legacy gatewayName format {name:?}; prefer the <namespace>/<name> format: \"{}/{gw}\"", ns.split('.').next().unwrap_or(ns)),
                    );
                }
                report.check(&here, syntax::fqdn(name));
            }
            Some((ns, gw)) => {
                if ns.is_empty() || gw.is_empty() {
                    report.error(&here, "config namespace and gateway name cannot be empty");
                    continue;
                }
                if !syntax::is_dns1123_label(ns) {
                    report.error(&here, format!("invalid value for namespace: {ns:?}"));
                }
                if !gateway_semantics && !syntax::is_dns1123_label(gw) {
                    report.error(&here, format!("invalid value for gateway name: {gw:?}"));
                }
            }
        }
    }
}

fn is_jwt_claim_route(key: &str) -> bool {
    let Some(rest) = key
        .get(..20)
        .filter(|p| p.eq_ignore_ascii_case("@request.auth.claims"))
        .map(|_| &key[20..])
    else {
        return false;
    };
    (rest.starts_with('.') && rest.len() > 1)
        || (rest.starts_with('[') && rest.ends_with(']') && rest.len() > 2)
}

fn jwt_claim_routes_need_gateway(vs: &VirtualService, at: &FieldPath, report: &mut Report) {
    for (i, route) in vs.http.iter().enumerate() {
        for (j, m) in route.matches.iter().enumerate() {
            for key in m
                .headers
                .keys()
                .chain(m.without_headers.keys())
                .filter(|k| is_jwt_claim_route(k))
            {
                report.error(
                    &at.field("http").index(i).field("match").index(j),
                    format!("JWT claim based routing (key: {key}) is only supported for gateway, found no gateways: {:?}", vs.gateways),
                );
            }
        }
    }
}

fn http_route(
    route: &HttpRoute,
    delegate: bool,
    gateway_semantics: bool,
    at: &FieldPath,
    report: &mut Report,
) {
    route_conflicts(route, delegate, at, report);
    for (j, m) in route.matches.iter().enumerate() {
        http_match(m, &at.field("match").index(j), report);
    }
    if let Some(headers) = &route.headers {
        shared::headers(headers, &at.field("headers"), report);
        authority_set_once(route, &at.field("headers"), report);
    }
    if let Some(cors) = &route.cors_policy {
        cors_policy(cors, &at.field("corsPolicy"), report);
    }
    if let Some(fault) = &route.fault {
        fault_injection(fault, &at.field("fault"), report);
    }
    mirrors(route, at, report);
    if let Some(redirect) = &route.redirect {
        http_redirect(redirect, &at.field("redirect"), report);
    }
    if let Some(response) = &route.direct_response {
        let here = at.field("directResponse");
        let size = response.body.as_ref().map_or(0, |b| {
            b.string
                .as_ref()
                .or(b.bytes.as_ref())
                .map_or(0, String::len)
        });
        if size > 1 << 20 {
            report.error(&here.field("body"), "large direct_responses may impact control plane performance, must be less than 1MB");
        } else if size > 100 << 10 {
            report.warn(
                &here.field("body"),
                "large direct_responses may impact control plane performance",
            );
        }
        report.check(&here.field("status"), http_status(response.status));
    }
    if let Some(retries) = &route.retries {
        http_retry(retries, &at.field("retries"), report);
    }
    if let Some(rewrite) = &route.rewrite {
        http_rewrite(rewrite, &at.field("rewrite"), report);
    }
    for (k, destination) in route.route.iter().enumerate() {
        let here = at.field("route").index(k);
        if let Some(headers) = &destination.headers {
            shared::headers(headers, &here.field("headers"), report);
        }
        if !gateway_semantics {
            shared::destination(&destination.destination, &here.field("destination"), report);
        }
        if destination.weight < 0 {
            report.error(
                &here.field("weight"),
                format!("weight {} < 0", destination.weight),
            );
        }
    }
    if route.route.len() > 1 && route.route.iter().map(|d| i64::from(d.weight)).sum::<i64>() == 0 {
        report.error(&at.field("route"), "total destination weight = 0");
    }
    if let Some(timeout) = route.timeout {
        report.check(&at.field("timeout"), syntax::duration(timeout));
    }
}

fn route_conflicts(route: &HttpRoute, delegate: bool, at: &FieldPath, report: &mut Report) {
    if route.delegate.is_some() {
        if route.redirect.is_some() {
            report.error(
                at,
                format!("root HTTP route {} must not specify redirect", route.name),
            );
        }
        if !route.route.is_empty() {
            report.error(
                at,
                format!("root HTTP route {} must not specify route", route.name),
            );
        }
        return;
    }
    if delegate && route.delegate.is_some() {
        report.error(at, "delegate HTTP route cannot contain delegate");
    }
    if route.redirect.is_some() {
        let conflicts = [
            (
                !route.route.is_empty(),
                "HTTP route cannot contain both route and redirect",
            ),
            (
                route.fault.is_some(),
                "HTTP route cannot contain both fault and redirect",
            ),
            (
                route.rewrite.is_some(),
                "HTTP route rule cannot contain both rewrite and redirect",
            ),
            (
                route.direct_response.is_some(),
                "HTTP route rule cannot contain both direct_response and redirect",
            ),
        ];
        conflicts
            .iter()
            .filter(|(c, _)| *c)
            .for_each(|(_, m)| report.error(at, *m));
    } else if route.direct_response.is_some() {
        let conflicts = [
            (
                !route.route.is_empty(),
                "HTTP route cannot contain both route and direct_response",
            ),
            (
                route.fault.is_some(),
                "HTTP route cannot contain both fault and direct_response",
            ),
            (
                route.rewrite.is_some(),
                "HTTP route rule cannot contain both rewrite and direct_response",
            ),
        ];
        conflicts
            .iter()
            .filter(|(c, _)| *c)
            .for_each(|(_, m)| report.error(at, *m));
    } else if route.route.is_empty() {
        report.error(at, "HTTP route, redirect or direct_response is required");
    }
    if route.mirror.is_some() && !route.mirrors.is_empty() {
        report.error(at, "HTTP route cannot contain both mirror and mirrors");
    }
}

fn http_match(m: &HttpMatchRequest, at: &FieldPath, report: &mut Report) {
    for (key, value) in &m.headers {
        let here = at.field("headers").field(key);
        header_match_name(key, &here, report);
        shared::string_match(value, &here, "headers", report);
    }
    for (key, value) in &m.without_headers {
        let here = at.field("withoutHeaders").field(key);
        header_match_name(key, &here, report);
        let presence = matches!(value, StringMatch::Regex(r) if r.as_str() == "*");
        if !presence {
            shared::string_match(value, &here, "withoutHeaders", report);
        }
    }
    if let Some(StringMatch::Regex(r)) = &m.uri {
        report.check(
            &at.field("uri").field("regex"),
            syntax::regex(r.as_str(), "uri"),
        );
    }
    for (field, value) in [
        ("scheme", &m.scheme),
        ("method", &m.method),
        ("authority", &m.authority),
    ] {
        if let Some(value) = value {
            shared::string_match(value, &at.field(field), field, report);
        }
    }
    for (key, value) in &m.query_params {
        shared::string_match(
            value,
            &at.field("queryParams").field(key),
            "queryParams",
            report,
        );
    }
    if m.port != 0 {
        report.check(&at.field("port"), syntax::port(m.port));
    }
    for e in syntax::labels(&m.source_labels) {
        report.error(&at.field("sourceLabels"), e);
    }
    gateway_names(&m.gateways, &at.field("gateways"), false, report);
    if !m.source_namespace.is_empty() && !syntax::is_dns1123_label(&m.source_namespace) {
        report.error(
            &at.field("sourceNamespace"),
            format!("sourceNamespace match {} is invalid", m.source_namespace),
        );
    }
}

fn header_match_name(key: &str, at: &FieldPath, report: &mut Report) {
    if key.is_empty() {
        report.error(at, "header name cannot be empty");
    } else if !is_jwt_claim_route(key)
        && !matches!(
            key,
            ":method" | ":scheme" | ":authority" | ":path" | ":status"
        )
    {
        report.check(at, syntax::header_name(key));
    }
}

fn authority_set_once(route: &HttpRoute, at: &FieldPath, report: &mut Report) {
    let mut set: Option<&str> = route
        .rewrite
        .as_ref()
        .map(|r| r.authority.as_str())
        .filter(|a| !a.is_empty());
    let Some(request) = route.headers.as_ref().and_then(|h| h.request.as_ref()) else {
        return;
    };
    for (name, value) in request.set.iter().chain(request.add.iter()) {
        if !name.eq_ignore_ascii_case(":authority") && !name.eq_ignore_ascii_case("host") {
            continue;
        }
        if let Some(previous) = set {
            report.error(at, format!("authority header cannot be set multiple times: have {previous:?}, attempting to set {value:?}"));
            return;
        }
        set = Some(value);
    }
}

const CORS_METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "OPTIONS", "TRACE", "*",
];

fn cors_policy(cors: &CorsPolicy, at: &FieldPath, report: &mut Report) {
    for (i, origin) in cors.allow_origins.iter().enumerate() {
        let here = at.field("allowOrigins").index(i);
        match origin {
            StringMatch::Any | StringMatch::Exact(_) | StringMatch::Prefix(_)
                if origin_empty(origin) =>
            {
                report.error(&here, "'' is not a valid match type for CORS allow origins")
            }
            StringMatch::Regex(r) => {
                report.check(&here, syntax::regex(r.as_str(), "corsPolicy.allowOrigins"))
            }
            _ => {}
        }
    }
    for (i, method) in cors.allow_methods.iter().enumerate() {
        if !CORS_METHODS.contains(&method.as_str()) {
            report.error(
                &at.field("allowMethods").index(i),
                format!("{method:?} is not a supported HTTP method"),
            );
        }
    }
    for (field, list) in [
        ("allowHeaders", &cors.allow_headers),
        ("exposeHeaders", &cors.expose_headers),
    ] {
        for (i, name) in list.iter().enumerate() {
            if name != "*" {
                report.check(&at.field(field).index(i), syntax::header_name(name));
            }
        }
    }
    if let Some(max_age) = cors.max_age {
        let here = at.field("maxAge");
        report.check(&here, syntax::duration(max_age));
        if max_age.as_std().subsec_nanos() != 0 {
            report.error(
                &here,
                "max_age duration is accurate only to seconds precision",
            );
        }
    }
}

fn origin_empty(origin: &StringMatch) -> bool {
    match origin {
        StringMatch::Any => true,
        StringMatch::Exact(s) | StringMatch::Prefix(s) => s.is_empty(),
        StringMatch::Regex(r) => r.as_str().is_empty(),
    }
}

fn fault_injection(fault: &HttpFaultInjection, at: &FieldPath, report: &mut Report) {
    if fault.abort.is_none() && fault.delay.is_none() {
        report.error(at, "HTTP fault injection must have an abort and/or a delay");
    }
    if let Some(abort) = &fault.abort {
        let here = at.field("abort");
        let kinds = [
            abort.http_status.is_some(),
            abort.grpc_status.is_some(),
            abort.http2_error.is_some(),
        ];
        if kinds.iter().filter(|k| **k).count() > 1 {
            report.error(
                &here,
                "only one of httpStatus, grpcStatus or http2Error may be set",
            );
        }
        if let Some(p) = abort.percentage {
            report.check(
                &here.field("percentage").field("value"),
                fault_percentage(p),
            );
        }
        if let Some(status) = &abort.grpc_status
            && crate::networking::virtual_service::grpc_status_code(status).is_none()
        {
            report.error(&here.field("grpcStatus"), format!("gRPC status {status:?} is not supported. See https://github.com/grpc/grpc/blob/master/doc/statuscodes.md for a list of supported codes, for example 'NOT_FOUND'"));
        }
        if abort.http2_error.is_some() {
            report.error(
                &here.field("http2Error"),
                "HTTP/2 abort fault injection not supported yet",
            );
        }
        if let Some(status) = abort.http_status {
            report.check(
                &here.field("httpStatus"),
                http_status(u32::try_from(status).unwrap_or(0)),
            );
        }
        if kinds.iter().all(|k| !k) {
            report.warn(&here, "abort configured, but error type not set");
        }
    }
    if let Some(delay) = &fault.delay {
        let here = at.field("delay");
        if delay.fixed_delay.is_some() && delay.exponential_delay.is_some() {
            report.error(
                &here,
                "only one of fixedDelay or exponentialDelay may be set",
            );
        }
        if let Some(p) = delay.percentage {
            report.check(
                &here.field("percentage").field("value"),
                fault_percentage(p),
            );
        }
        if let Some(d) = delay.fixed_delay {
            report.check(&here.field("fixedDelay"), syntax::duration(d));
        }
        if delay.exponential_delay.is_some() {
            report.error(
                &here.field("exponentialDelay"),
                "exponentialDelay not supported yet",
            );
        }
    }
}

fn fault_percentage(p: Percent) -> syntax::Check {
    let v = p.value;
    if !(0.0..=100.0).contains(&v) || (v > 0.0 && v < 0.0001) {
        return Err(format!(
            "percentage {v} is neither 0.0, nor in range [0.0001, 100.0]"
        ));
    }
    Ok(())
}

fn http_status(status: u32) -> syntax::Check {
    if (200..=600).contains(&status) {
        Ok(())
    } else {
        Err(format!("HTTP status {status} is not in range 200-599"))
    }
}

fn mirrors(route: &HttpRoute, at: &FieldPath, report: &mut Report) {
    for (field, value) in [
        ("mirrorPercent", route.mirror_percent),
        ("mirror_percent", route.mirror_percent_snake),
    ] {
        if let Some(v) = value {
            let here = at.field(field);
            if v > 100 {
                report.error(
                    &here,
                    format!("mirror_percent must have a max value of 100 (it has {v})"),
                );
            }
            report.warn(
                &here,
                "using deprecated setting \"mirrorPercent\", use \"mirrorPercentage\" instead",
            );
        }
    }
    if let Some(p) = route.mirror_percentage {
        report.check(
            &at.field("mirrorPercentage").field("value"),
            mirror_percentage(p, "mirror_percentage"),
        );
    }
    if let Some(mirror) = &route.mirror {
        shared::destination(mirror, &at.field("mirror"), report);
    }
    for (i, m) in route.mirrors.iter().enumerate() {
        let here = at.field("mirrors").index(i);
        shared::destination(&m.destination, &here.field("destination"), report);
        if let Some(p) = m.percentage {
            report.check(
                &here.field("percentage").field("value"),
                mirror_percentage(p, "mirror percentage"),
            );
        }
    }
}

fn mirror_percentage(p: Percent, what: &str) -> syntax::Check {
    if p.value > 100.0 {
        return Err(format!(
            "{what} must have a max value of 100 (it has {})",
            p.value
        ));
    }
    if p.value < 0.0 {
        return Err(format!(
            "{what} must have a min value of 0 (it has {})",
            p.value
        ));
    }
    Ok(())
}

fn http_redirect(r: &HttpRedirect, at: &FieldPath, report: &mut Report) {
    if r.port.is_some() && r.derive_port.is_some() {
        report.error(at, "only one of port or derivePort may be set");
    }
    if r.uri.is_empty()
        && r.authority.is_empty()
        && r.port.is_none()
        && r.derive_port.is_none()
        && r.scheme.is_empty()
        && r.prefix_rewrite.is_none()
    {
        report.error(at, "redirect must specify URI, authority, scheme, or port");
        return;
    }
    if r.redirect_code != 0 && !(300..=399).contains(&r.redirect_code) {
        report.error(
            &at.field("redirectCode"),
            format!(
                "{} is not a valid redirect code, must be 3xx",
                r.redirect_code
            ),
        );
    }
    if !matches!(r.scheme.as_str(), "" | "http" | "https") {
        report.error(
            &at.field("scheme"),
            "invalid redirect scheme, must be \"http\" or \"https\"",
        );
    }
    if let Some(port) = r.port.filter(|p| *p > 0) {
        report.check(&at.field("port"), syntax::port(port));
    }
    if !r.uri.is_empty() && r.prefix_rewrite.is_some() {
        report.error(at, "redirect may only contain one of uri or prefixRewrite");
    }
}

/// The retry conditions Envoy understands, besides plain status codes.
const RETRY_ON: &[&str] = &[
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "envoy-ratelimited",
    "http3-post-connect-failure",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

fn http_retry(r: &HttpRetry, at: &FieldPath, report: &mut Report) {
    if r.attempts < 0 {
        report.error(&at.field("attempts"), "attempts cannot be negative");
    }
    if r.attempts == 0
        && (r.per_try_timeout.is_some()
            || !r.retry_on.is_empty()
            || r.retry_remote_localities.is_some())
    {
        report.error(
            at,
            "http retry policy configured when attempts are set to 0 (disabled)",
        );
    }
    if let Some(d) = r.per_try_timeout {
        report.check(&at.field("perTryTimeout"), syntax::duration(d));
    }
    if let Some(d) = r.backoff {
        report.check(&at.field("backoff"), syntax::duration(d));
    }
    if !r.retry_on.is_empty() {
        for policy in r.retry_on.split(',') {
            let known = RETRY_ON.contains(&policy)
                || policy
                    .parse::<u16>()
                    .is_ok_and(|c| (100..=599).contains(&c));
            if !known {
                report.error(
                    &at.field("retryOn"),
                    format!("{policy:?} is not a valid retryOn policy"),
                );
            }
        }
    }
}

fn http_rewrite(r: &HttpRewrite, at: &FieldPath, report: &mut Report) {
    if !r.uri.is_empty() && r.uri_regex_rewrite.is_some() {
        report.error(at, "rewrite may only contain one of URI or UriRegexRewrite");
    }
    if r.uri.is_empty() && r.uri_regex_rewrite.is_none() && r.authority.is_empty() {
        report.error(at, "rewrite must specify at least one of URI, UriRegexRewrite, or authority. Only one of URI or UriRegexRewrite may be specified");
    }
    if let Some(regex) = &r.uri_regex_rewrite {
        let here = at.field("uriRegexRewrite");
        if regex.pattern.is_empty() || regex.rewrite.is_empty() {
            report.error(
                &here,
                "UriRegexRewrite requires both Rewrite and Match fields to be specified",
            );
        }
        if !regex.pattern.is_empty() {
            report.check(
                &here.field("match"),
                syntax::regex(&regex.pattern, "HTTPRewrite.UriRegexRewrite.Match"),
            );
        }
    }
}

fn tls_route(
    route: &TlsRoute,
    hosts: &[String],
    gateway: bool,
    at: &FieldPath,
    report: &mut Report,
) {
    if route.matches.is_empty() {
        report.error(
            &at.field("match"),
            "TLS route must have at least one match condition",
        );
    }
    for (j, m) in route.matches.iter().enumerate() {
        tls_match(m, hosts, gateway, &at.field("match").index(j), report);
    }
    if route.route.is_empty() {
        report.error(&at.field("route"), "TLS route is required");
    }
    route_destinations(&route.route, &at.field("route"), report);
}

fn tls_match(
    m: &TlsMatchAttributes,
    hosts: &[String],
    gateway: bool,
    at: &FieldPath,
    report: &mut Report,
) {
    if m.sni_hosts.is_empty() {
        report.error(
            &at.field("sniHosts"),
            "TLS match must have at least one SNI host",
        );
    }
    for (i, sni) in m.sni_hosts.iter().enumerate() {
        let here = at.field("sniHosts").index(i);
        let check = if gateway && sni.starts_with("outbound_") {
            outbound_sni_host(sni)
        } else {
            syntax::wildcard_domain(sni)
        };
        match check {
            Err(_) if syntax::is_ip(sni) => report.warn(
                &here,
                format!("using an IP address ({sni:?}) goes against SNI spec and most clients do not support this"),
            ),
            Err(e) => report.error(&here, e),
            Ok(()) if !hosts.iter().any(|h| host_subset_of(sni, h)) => report.error(
                &here,
                format!("SNI host {sni:?} is not a compatible subset of any of the virtual service hosts: [{}]", hosts.join(", ")),
            ),
            Ok(()) => {}
        }
    }
    for (i, subnet) in m.destination_subnets.iter().enumerate() {
        report.check(
            &at.field("destinationSubnets").index(i),
            syntax::ip_subnet(subnet),
        );
    }
    if m.port != 0 {
        report.check(&at.field("port"), syntax::port(m.port));
    }
    for e in syntax::labels(&m.source_labels) {
        report.error(&at.field("sourceLabels"), e);
    }
    gateway_names(&m.gateways, &at.field("gateways"), false, report);
}

fn l4_match(m: &L4MatchAttributes, at: &FieldPath, report: &mut Report) {
    for (i, subnet) in m.destination_subnets.iter().enumerate() {
        report.check(
            &at.field("destinationSubnets").index(i),
            syntax::ip_subnet(subnet),
        );
    }
    if m.port != 0 {
        report.check(&at.field("port"), syntax::port(m.port));
    }
    for e in syntax::labels(&m.source_labels) {
        report.error(&at.field("sourceLabels"), e);
    }
    gateway_names(&m.gateways, &at.field("gateways"), false, report);
}

fn route_destinations(routes: &[RouteDestination], at: &FieldPath, report: &mut Report) {
    for (i, r) in routes.iter().enumerate() {
        let here = at.index(i);
        shared::destination(&r.destination, &here.field("destination"), report);
        if r.weight < 0 {
            report.error(&here.field("weight"), format!("weight {} < 0", r.weight));
        }
    }
    if routes.len() > 1 && routes.iter().map(|r| i64::from(r.weight)).sum::<i64>() == 0 {
        report.error(at, "total destination weight = 0");
    }
}

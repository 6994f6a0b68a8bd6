//! A route's rules as VirtualService rules, as istiod converts them:
//! HTTPRoute and GRPCRoute rules split into one `http` rule per match, with
//! their filters and weighted destinations; TCPRoute and TLSRoute rules as
//! `tcp` and `tls` rules over their weighted backends.

use std::collections::BTreeMap;

use oxmesh_config::duration::Duration;
use oxmesh_config::gateway_api::{
    self as api, CorsFilter, GrpcRouteFilter, GrpcRouteRule, HeaderMatch, HeaderModifier,
    HttpRouteFilter, HttpRouteRule, L4RouteRule, PathMatchType, RequestMirror, RequestRedirect,
    UrlRewrite, ValueMatchType,
};
use oxmesh_config::networking::virtual_service::{
    self as vs, CorsPolicy, HeaderOperations, Headers, HttpDirectResponse, HttpMatchRequest,
    HttpMirrorPolicy, HttpRedirect, HttpRewrite, HttpRouteDestination, RedirectPortSelection,
    RegexRewrite, RouteDestination, TlsMatchAttributes,
};
use oxmesh_config::percent::Percent;
use oxmesh_config::string_match::{Pattern, StringMatch};

use super::World;
use super::backend::{self, Reference, Unresolved};

/// What one route's rules became, and the first problem met making them
/// (reported as `ResolvedRefs` False; the rest still serves).
pub(super) struct Converted {
    pub rules: Rules,
    pub problem: Option<Unresolved>,
}

#[derive(Clone)]
pub(super) enum Rules {
    Http(Vec<vs::HttpRoute>),
    Tcp(Vec<vs::TcpRoute>),
    Tls(Vec<vs::TlsRoute>),
}

impl Rules {
    /// `http`, `tcp` or `tls`: rules of one kind merge only with their kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Rules::Http(_) => "http",
            Rules::Tcp(_) => "tcp",
            Rules::Tls(_) => "tls",
        }
    }

    pub fn is_empty(&self) -> bool {
        match self {
            Rules::Http(r) => r.is_empty(),
            Rules::Tcp(r) => r.is_empty(),
            Rules::Tls(r) => r.is_empty(),
        }
    }

    /// Every rule restricted to connections arriving on `port`.
    pub fn on_port(&mut self, port: u16) {
        let port = u32::from(port);
        match self {
            Rules::Http(rules) => {
                for rule in rules {
                    if rule.matches.is_empty() {
                        rule.matches.push(HttpMatchRequest::default());
                    }
                    rule.matches.iter_mut().for_each(|m| m.port = port);
                }
            }
            Rules::Tcp(rules) => {
                for rule in rules {
                    if rule.matches.is_empty() {
                        rule.matches.push(vs::L4MatchAttributes::default());
                    }
                    rule.matches.iter_mut().for_each(|m| m.port = port);
                }
            }
            Rules::Tls(rules) => {
                for rule in rules {
                    rule.matches.iter_mut().for_each(|m| m.port = port);
                }
            }
        }
    }
}

/// One filter of either HTTP-like route kind, seen the same way.
pub(super) struct Filter<'a> {
    kind: &'a str,
    request: Option<&'a HeaderModifier>,
    response: Option<&'a HeaderModifier>,
    mirror: Option<&'a RequestMirror>,
    redirect: Option<&'a RequestRedirect>,
    rewrite: Option<&'a UrlRewrite>,
    cors: Option<&'a CorsFilter>,
}

impl<'a> From<&'a HttpRouteFilter> for Filter<'a> {
    fn from(f: &'a HttpRouteFilter) -> Self {
        Self {
            kind: &f.filter_type,
            request: f.request_header_modifier.as_ref(),
            response: f.response_header_modifier.as_ref(),
            mirror: f.request_mirror.as_ref(),
            redirect: f.request_redirect.as_ref(),
            rewrite: f.url_rewrite.as_ref(),
            cors: f.cors.as_ref(),
        }
    }
}

impl<'a> From<&'a GrpcRouteFilter> for Filter<'a> {
    fn from(f: &'a GrpcRouteFilter) -> Self {
        Self {
            kind: &f.filter_type,
            request: f.request_header_modifier.as_ref(),
            response: f.response_header_modifier.as_ref(),
            mirror: f.request_mirror.as_ref(),
            redirect: None,
            rewrite: None,
            cors: None,
        }
    }
}

/// A rule of HTTPRoute or GRPCRoute: what the conversion needs of it.
pub(super) trait HttpLikeRule {
    type Match;
    type Filter;
    fn name(&self) -> Option<&str>;
    fn matches(&self) -> &[Self::Match];
    fn to_match(m: &Self::Match) -> Result<HttpMatchRequest, Unresolved>;
    fn filters(&self) -> &[Self::Filter];
    fn backends(&self) -> &[api::BackendRef<Self::Filter>];
    fn timeouts(&self) -> (Option<Duration>, Option<Duration>) {
        (None, None)
    }
}

impl HttpLikeRule for HttpRouteRule {
    type Match = api::HttpRouteMatch;
    type Filter = HttpRouteFilter;
    fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }
    fn matches(&self) -> &[Self::Match] {
        &self.matches
    }
    fn to_match(m: &Self::Match) -> Result<HttpMatchRequest, Unresolved> {
        http_match(m)
    }
    fn filters(&self) -> &[Self::Filter] {
        &self.filters
    }
    fn backends(&self) -> &[api::BackendRef<Self::Filter>] {
        &self.backend_refs
    }
    fn timeouts(&self) -> (Option<Duration>, Option<Duration>) {
        self.timeouts
            .as_ref()
            .map_or((None, None), |t| (t.request, t.backend_request))
    }
}

impl HttpLikeRule for GrpcRouteRule {
    type Match = api::GrpcRouteMatch;
    type Filter = GrpcRouteFilter;
    fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }
    fn matches(&self) -> &[Self::Match] {
        &self.matches
    }
    fn to_match(m: &Self::Match) -> Result<HttpMatchRequest, Unresolved> {
        grpc_match(m)
    }
    fn filters(&self) -> &[Self::Filter] {
        &self.filters
    }
    fn backends(&self) -> &[api::BackendRef<Self::Filter>] {
        &self.backend_refs
    }
}

/// Where a route's rules are converted: its kind, namespace and name.
pub(super) struct Origin<'a> {
    pub world: &'a World<'a>,
    pub kind: &'static str,
    pub namespace: &'a str,
    pub name: &'a str,
    /// Whether a backend in another namespace needs a ReferenceGrant: for
    /// gateways yes, for the mesh (GAMMA) no, as in istiod.
    pub enforce_grants: bool,
}

impl Origin<'_> {
    fn destination(&self, to: &Reference<'_>) -> (vs::Destination, Option<Unresolved>) {
        backend::destination(
            self.world,
            self.kind,
            self.namespace,
            to,
            self.enforce_grants,
        )
    }
}

/// HTTPRoute or GRPCRoute rules: one `http` rule per match (a rule without
/// matches is one rule), named after the rule or `<ns>.<route>.<index>`.
pub(super) fn http_like<R>(origin: &Origin<'_>, rules: &[R]) -> Converted
where
    R: HttpLikeRule,
    for<'f> Filter<'f>: From<&'f R::Filter>,
{
    let mut problem = None;
    let mut out = Vec::new();
    for (n, rule) in rules.iter().enumerate() {
        let name = rule.name().map_or_else(
            || format!("{}.{}.{n}", origin.namespace, origin.name),
            str::to_owned,
        );
        let matches: Vec<Option<&R::Match>> = if rule.matches().is_empty() {
            vec![None]
        } else {
            rule.matches().iter().map(Some).collect()
        };
        for m in matches {
            let mut http = vs::HttpRoute {
                name: name.clone(),
                ..Default::default()
            };
            if let Some(m) = m {
                match R::to_match(m) {
                    Ok(matched) => http.matches.push(matched),
                    Err(p) => {
                        problem.get_or_insert(p);
                        continue;
                    }
                }
            }
            let mut broken = None;
            for filter in rule.filters() {
                match apply_filter(origin, &Filter::from(filter), &mut http) {
                    Ok(()) => {}
                    // A mirror's backend that does not resolve only loses
                    // the copies; a filter that cannot apply breaks the rule.
                    Err(p) if p.reason == "InvalidFilter" => {
                        broken.get_or_insert(p);
                    }
                    Err(p) => {
                        problem.get_or_insert(p);
                    }
                }
            }
            let nonzero = |d: Option<Duration>| d.filter(|d| *d != Duration::ZERO);
            let (request, backend) = rule.timeouts();
            // Without retries istiod lets the backend timeout win.
            http.timeout = nonzero(backend).or(nonzero(request));
            let backends: Vec<(Reference<'_>, Option<i32>, Vec<Filter<'_>>)> = rule
                .backends()
                .iter()
                .map(|b| {
                    let filters = b.filters.iter().map(Filter::from).collect();
                    (reference_of(b), b.weight, filters)
                })
                .collect();
            let found = http_destinations(origin, &backends, &mut http);
            if let Some(p) = found.unresolved {
                problem.get_or_insert(p);
            }
            if let Some(p) = found.broken_filter {
                broken.get_or_insert(p);
            }
            if let Some(p) = broken {
                // A filter that cannot be applied must not be skipped (it
                // may be the rule's authentication): the rule answers 500.
                http = failed(http);
                problem.get_or_insert(p);
            }
            out.push(http);
        }
    }
    Converted {
        rules: Rules::Http(out),
        problem,
    }
}

/// No rules: for kinds that are not routes.
pub(super) fn none() -> Converted {
    Converted {
        rules: Rules::Http(Vec::new()),
        problem: None,
    }
}

/// TCPRoute rules: their weighted backends.
pub(super) fn tcp(origin: &Origin<'_>, rules: &[L4RouteRule]) -> Converted {
    let mut problem = None;
    let out = rules
        .iter()
        .map(|rule| vs::TcpRoute {
            matches: Vec::new(),
            route: l4_destinations(origin, rule, &mut problem),
        })
        .collect();
    Converted {
        rules: Rules::Tcp(out),
        problem,
    }
}

/// TLSRoute rules: their backends, for the SNI names the route's hostnames
/// give (any, with none).
pub(super) fn tls(origin: &Origin<'_>, hostnames: &[String], rules: &[L4RouteRule]) -> Converted {
    let sni_hosts = if hostnames.is_empty() {
        vec!["*".to_owned()]
    } else {
        hostnames.to_vec()
    };
    let mut problem = None;
    let out = rules
        .iter()
        .map(|rule| vs::TlsRoute {
            matches: vec![TlsMatchAttributes {
                sni_hosts: sni_hosts.clone(),
                ..Default::default()
            }],
            route: l4_destinations(origin, rule, &mut problem),
        })
        .collect();
    Converted {
        rules: Rules::Tls(out),
        problem,
    }
}

fn l4_destinations(
    origin: &Origin<'_>,
    rule: &L4RouteRule,
    problem: &mut Option<Unresolved>,
) -> Vec<RouteDestination> {
    let live: Vec<(&api::BackendRef<api::NoFilter>, i32)> = rule
        .backend_refs
        .iter()
        .map(|b| (b, b.weight.unwrap_or(1)))
        .filter(|(_, w)| *w > 0)
        .collect();
    if live.is_empty() {
        // Nothing to send to: the connection goes nowhere and is closed.
        return vec![RouteDestination {
            destination: backend::refused(),
            weight: 0,
        }];
    }
    let single = live.len() == 1;
    live.into_iter()
        .map(|(b, weight)| {
            let (destination, unresolved) = origin.destination(&reference_of(b));
            if let Some(p) = unresolved {
                problem.get_or_insert(p);
            }
            RouteDestination {
                destination,
                weight: if single { 0 } else { weight },
            }
        })
        .collect()
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

/// What went wrong with a rule's backends: a backend that does not resolve
/// (its share gets 500), and a backend filter that cannot apply (the whole
/// rule must fail), kept apart so neither hides the other.
#[derive(Default)]
struct BackendProblems {
    unresolved: Option<Unresolved>,
    broken_filter: Option<Unresolved>,
}

/// The rule's destinations: weight 1 unless given, weight-0 backends left
/// out, a 500 when nothing is left (and the rule does not redirect). Every
/// backend must resolve, weight 0 or not.
fn http_destinations(
    origin: &Origin<'_>,
    backends: &[(Reference<'_>, Option<i32>, Vec<Filter<'_>>)],
    http: &mut vs::HttpRoute,
) -> BackendProblems {
    let mut problems = BackendProblems::default();
    let live: Vec<_> = backends
        .iter()
        .map(|(reference, weight, filters)| (reference, weight.unwrap_or(1), filters))
        .collect();
    let single = live.iter().filter(|(_, w, _)| *w > 0).count() == 1;
    for (reference, weight, filters) in live {
        let (destination, unresolved) = origin.destination(reference);
        if let Some(p) = unresolved {
            problems.unresolved.get_or_insert(p);
        }
        if weight <= 0 {
            continue;
        }
        let headers = match backend_headers(filters) {
            Ok(headers) => headers,
            Err(p) => {
                problems.broken_filter.get_or_insert(p);
                Headers::default()
            }
        };
        let has_headers = headers.request.is_some() || headers.response.is_some();
        http.route.push(HttpRouteDestination {
            destination,
            weight: if single { 0 } else { weight },
            headers: has_headers.then_some(headers),
        });
    }
    if http.route.is_empty() && http.redirect.is_none() {
        http.direct_response = Some(HttpDirectResponse {
            status: 500,
            body: None,
        });
    }
    problems
}

/// A backend's own header modifiers; any other filter there cannot apply.
fn backend_headers(filters: &[Filter<'_>]) -> Result<Headers, Unresolved> {
    let mut headers = Headers::default();
    for f in filters {
        match f.kind {
            "RequestHeaderModifier" => {
                headers.request = f.request.map(header_operations).transpose()?;
            }
            "ResponseHeaderModifier" => {
                headers.response = f.response.map(header_operations).transpose()?;
            }
            other => return Err(unsupported_filter(other)),
        }
    }
    Ok(headers)
}

/// The rule with nothing left but its match and name: a 500 for every request.
fn failed(http: vs::HttpRoute) -> vs::HttpRoute {
    vs::HttpRoute {
        name: http.name,
        matches: http.matches,
        direct_response: Some(HttpDirectResponse {
            status: 500,
            body: None,
        }),
        ..Default::default()
    }
}

fn unsupported_filter(kind: &str) -> Unresolved {
    Unresolved {
        reason: "InvalidFilter",
        message: format!("unsupported filter type {kind:?}"),
    }
}

fn http_match(m: &api::HttpRouteMatch) -> Result<HttpMatchRequest, Unresolved> {
    let path = m.path.as_ref();
    let value = path.and_then(|p| p.value.as_deref()).unwrap_or("/");
    let uri = match path
        .and_then(|p| p.match_type)
        .unwrap_or(PathMatchType::PathPrefix)
    {
        // "A trailing `/` is ignored."
        PathMatchType::PathPrefix if value == "/" => StringMatch::Prefix(value.to_owned()),
        // istiod trims one; `//` (which the CRD forbids) stays a prefix.
        PathMatchType::PathPrefix => match value.strip_suffix('/').unwrap_or(value) {
            "" => StringMatch::Prefix("/".to_owned()),
            trimmed => StringMatch::Prefix(trimmed.to_owned()),
        },
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

fn apply_filter(
    origin: &Origin<'_>,
    f: &Filter<'_>,
    http: &mut vs::HttpRoute,
) -> Result<(), Unresolved> {
    match f.kind {
        "RequestHeaderModifier" => {
            http.headers.get_or_insert_default().request =
                f.request.map(header_operations).transpose()?;
        }
        "ResponseHeaderModifier" => {
            http.headers.get_or_insert_default().response =
                f.response.map(header_operations).transpose()?;
        }
        "RequestRedirect" if f.redirect.is_some() => http.redirect = f.redirect.map(redirect),
        "URLRewrite" if f.rewrite.is_some() => {
            if let Some(rewrite) = f.rewrite {
                http.rewrite = url_rewrite(rewrite, http.matches.first());
            }
        }
        "RequestMirror" => {
            if let Some(mirror) = f.mirror {
                http.mirrors.push(mirror_policy(origin, mirror)?);
            }
        }
        "CORS" if f.cors.is_some() => http.cors_policy = f.cors.map(cors_policy),
        other => return Err(unsupported_filter(other)),
    }
    Ok(())
}

/// Header names are lower-cased; a repeated name keeps its first value. A
/// value no HTTP header may hold is refused, as istiod refuses it (the proxy
/// would refuse the whole route table).
fn header_operations(m: &HeaderModifier) -> Result<HeaderOperations, Unresolved> {
    let map = |list: &[api::HeaderValue]| {
        let mut out = BTreeMap::new();
        for h in list {
            let valid = h
                .value
                .bytes()
                .all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f));
            if !valid {
                return Err(Unresolved {
                    reason: "InvalidFilter",
                    message: format!("header {:?} value contains invalid characters", h.name),
                });
            }
            out.entry(h.name.to_ascii_lowercase())
                .or_insert_with(|| h.value.clone());
        }
        Ok(out)
    };
    Ok(HeaderOperations {
        set: map(&m.set)?,
        add: map(&m.add)?,
        remove: m.remove.clone(),
    })
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
                        pattern: format!("^{}/*", regex::escape(prefix)),
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

fn mirror_policy(
    origin: &Origin<'_>,
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
    let (destination, problem) = origin.destination(&reference);
    if let Some(p) = problem {
        return Err(p);
    }
    let percentage = match (&mirror.fraction, mirror.percent) {
        (Some(f), _) => {
            let denominator = f.denominator.unwrap_or(100);
            if denominator <= 0 {
                return Err(Unresolved {
                    reason: "InvalidFilter",
                    message: "a mirror fraction's denominator must be positive".to_owned(),
                });
            }
            Some(f64::from(f.numerator) * 100.0 / f64::from(denominator))
        }
        (None, Some(p)) => Some(f64::from(p)),
        (None, None) => None,
    };
    Ok(HttpMirrorPolicy {
        destination,
        percentage: percentage.map(|value| Percent { value }),
    })
}

/// The CORS filter as a VirtualService `corsPolicy`, as istiod writes it:
/// `*` as any well-formed origin, a trailing `*` as a prefix, other
/// wildcards as a regex, the rest exact; preflights from other origins are
/// answered by the proxy, not passed on.
fn cors_policy(c: &CorsFilter) -> CorsPolicy {
    let origin = |o: &String| -> Option<StringMatch> {
        if o == "*" {
            return Pattern::new(r"[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s?#]+")
                .ok()
                .map(StringMatch::Regex);
        }
        match o.matches('*').count() {
            0 => Some(StringMatch::Exact(o.clone())),
            1 if o.ends_with('*') => Some(StringMatch::Prefix(o.trim_end_matches('*').to_owned())),
            _ => Pattern::new(&regex::escape(o).replace(r"\*", ".*"))
                .ok()
                .map(StringMatch::Regex),
        }
    };
    CorsPolicy {
        allow_origins: c
            .allow_origins
            .iter()
            .filter(|o| !o.is_empty())
            .filter_map(origin)
            .collect(),
        allow_credentials: c.allow_credentials.filter(|b| *b),
        allow_methods: c.allow_methods.clone(),
        allow_headers: c.allow_headers.clone(),
        expose_headers: c.expose_headers.clone(),
        max_age: c
            .max_age
            .unwrap_or(5)
            .try_into()
            .ok()
            .filter(|s: &u64| *s > 0)
            .map(Duration::from_secs),
        unmatched_preflights: Some(vs::UnmatchedPreflights::Ignore),
        ..Default::default()
    }
}

//! RDS: virtual hosts chosen by `Host`, routes tried in order, and what a matched
//! route does (forward to clusters, redirect, answer directly).

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
use envoy_types::pb::envoy::config::route::v3::query_parameter_matcher::QueryParameterMatchSpecifier;
use envoy_types::pb::envoy::config::route::v3::redirect_action::{
    PathRewriteSpecifier, RedirectResponseCode, SchemeRewriteSpecifier,
};
use envoy_types::pb::envoy::config::route::v3::route::Action as EnvoyAction;
use envoy_types::pb::envoy::config::route::v3::route_action::{
    ClusterNotFoundResponseCode, ClusterSpecifier, HostRewriteSpecifier,
};
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::config::route::v3::weighted_cluster::ClusterWeight;
use envoy_types::pb::envoy::config::route::v3::{
    HeaderMatcher, RedirectAction, RetryPolicy, Route as EnvoyRoute, RouteAction,
    RouteConfiguration, RouteMatch as EnvoyRouteMatch, VirtualHost as EnvoyVirtualHost,
};
use http::{HeaderName, StatusCode};
use regex::Regex;

use super::header_ops::{self, HeaderOps, Lists};
use super::string_match::{Matcher, anchored};
use super::{ClusterName, ConvertError};

#[derive(Debug)]
pub struct RouteTable {
    pub name: String,
    pub virtual_hosts: Vec<VirtualHost>,
    /// Header mutations for every route here (applied last).
    pub headers: HeaderOps,
    /// `ignore_port_in_host_matching`: a Host's port is left out when
    /// virtual hosts are chosen (`example.com:31443` is `example.com`).
    pub ignore_port: bool,
}

#[derive(Debug)]
pub struct VirtualHost {
    pub name: String,
    pub domains: Vec<String>,
    pub routes: Vec<Route>,
    /// Plaintext requests are redirected to https (a Gateway's `httpsRedirect`).
    pub require_tls: bool,
    /// Header mutations for every route of the host (after the route's).
    pub headers: HeaderOps,
    /// Rate-limit policies for routes that have none of their own.
    pub rate_limits: Vec<super::rate_limit::Policy>,
    /// Local rate-limit configs by filter name, for routes without their own.
    pub local_rate_limits: PerFilter,
}

/// Local rate-limit configs by the name of the filter they are for (the key
/// of `typed_per_filter_config`).
pub type PerFilter = Vec<(String, Arc<super::local_rate_limit::LocalRateLimit>)>;

#[derive(Debug)]
pub struct Route {
    pub name: String,
    pub matcher: RouteMatch,
    pub action: Action,
    /// Faults to inject before the action (the fault filter's per-route config).
    pub fault: Option<super::fault::Fault>,
    /// Header mutations of the route (after a weighted cluster's).
    pub headers: HeaderOps,
    /// The CORS filter's per-route policy.
    pub cors: Option<super::cors::CorsPolicy>,
    pub local_rate_limits: PerFilter,
    /// Descriptors for the rate-limit filters (a forwarding route's
    /// `rate_limits`).
    pub rate_limits: Vec<super::rate_limit::Policy>,
    /// The host's policies apply as well as the route's (else only when the
    /// route has none).
    pub include_vh_rate_limits: bool,
    /// The span name of requests it takes (`decorator.operation`), and
    /// whether an outbound request tells the server's proxy it
    /// (`x-envoy-decorator-operation`).
    pub decorator: Option<Decorator>,
}

#[derive(Debug, Clone)]
pub struct Decorator {
    pub operation: Arc<str>,
    pub propagate: bool,
}

#[derive(Debug)]
pub struct RouteMatch {
    pub path: PathMatch,
    pub case_sensitive: bool,
    pub headers: Vec<HeaderMatch>,
    pub query: Vec<QueryMatch>,
}

#[derive(Debug)]
pub enum PathMatch {
    Prefix(String),
    /// `path_separated_prefix`: the prefix as whole path segments (`/foo`
    /// takes `/foo` and `/foo/bar`, never `/foobar`), as the Gateway API's
    /// `PathPrefix` means it.
    SeparatedPrefix(String),
    Exact(String),
    Regex(Regex),
}

impl PathMatch {
    /// `path` is the request's, without its query.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Prefix(p) => path.starts_with(p.as_str()),
            PathMatch::SeparatedPrefix(p) => path
                .strip_prefix(p.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/')),
            PathMatch::Exact(p) => path == p,
            PathMatch::Regex(r) => r.is_match(path),
        }
    }
}

#[derive(Debug)]
pub struct HeaderMatch {
    /// Lower case; `:method`, `:authority`, `:scheme` and `:path` are pseudo-headers.
    pub name: String,
    pub test: ValueTest,
    pub invert: bool,
}

#[derive(Debug)]
pub struct QueryMatch {
    pub name: String,
    pub test: ValueTest,
}

#[derive(Debug)]
pub enum ValueTest {
    Present(bool),
    Matches(Matcher),
}

#[derive(Debug)]
pub enum Action {
    Forward(Forward),
    Redirect(Redirect),
    Respond { status: u16, body: String },
}

#[derive(Debug)]
pub enum Target {
    Cluster(ClusterName),
    /// Clusters with their weights, and the weights' sum.
    Weighted(Vec<WeightedCluster>, u32),
}

/// One of a route's weighted clusters, with what it changes on its own.
#[derive(Debug)]
pub struct WeightedCluster {
    pub name: ClusterName,
    pub weight: u32,
    pub headers: HeaderOps,
    /// Used when the route names no host rewrite of its own.
    pub host_rewrite: Option<String>,
}

#[derive(Debug)]
pub struct Forward {
    pub target: Target,
    /// How the request's hash is made, for consistent-hash clusters.
    pub hash: Vec<HashPolicy>,
    /// `None`: no limit (Envoy's `0s`).
    pub timeout: Option<Duration>,
    pub retry: Option<Retry>,
    pub prefix_rewrite: Option<String>,
    /// A path rewrite by regex (`regex_rewrite`): every match replaced.
    pub regex_rewrite: Option<RegexRewrite>,
    pub host_rewrite: Option<String>,
    /// Where copies of the requests go (`request_mirror_policies`).
    pub mirrors: Vec<Mirror>,
    /// The answer when the picked cluster does not exist
    /// (`cluster_not_found_response_code`; 503 by default, 500 for the
    /// Gateway API's routes).
    pub cluster_not_found: StatusCode,
}

/// `regex_rewrite`: the pattern (unanchored, as RE2's global replace) and
/// the substitution in the `regex` crate's syntax.
#[derive(Debug)]
pub struct RegexRewrite {
    pub pattern: Regex,
    pub substitution: String,
}

impl RegexRewrite {
    /// The path with every match replaced.
    pub fn apply<'p>(&self, path: &'p str) -> std::borrow::Cow<'p, str> {
        self.pattern.replace_all(path, self.substitution.as_str())
    }
}

/// Envoy's (RE2's) substitution, `\1` for a group and `\\` for a
/// backslash, in the `regex` crate's syntax (`${1}`, with `$` escaped).
fn substitution(envoy: &str) -> Result<String, String> {
    let mut out = String::with_capacity(envoy.len());
    let mut chars = envoy.chars();
    while let Some(c) = chars.next() {
        match c {
            '$' => out.push_str("$$"),
            '\\' => match chars.next() {
                Some(d) if d.is_ascii_digit() => {
                    out.push_str("${");
                    out.push(d);
                    out.push('}');
                }
                Some('\\') => out.push('\\'),
                _ => {
                    return Err(format!(
                        "substitution {envoy:?}: a backslash must come before a digit or a backslash"
                    ));
                }
            },
            other => out.push(other),
        }
    }
    Ok(out)
}

/// A request mirror policy: a copy of a share of the requests to a cluster.
#[derive(Debug)]
pub struct Mirror {
    pub cluster: ClusterName,
    pub share: super::fault::Share,
    /// Append `-shadow` to the copy's host (Envoy's default; Istio turns it
    /// off since 1.28).
    pub shadow_suffix: bool,
}

#[derive(Debug, Clone)]
pub enum HashPolicy {
    Header(HeaderName),
    /// With a TTL, a client without the cookie is given one.
    Cookie {
        name: String,
        ttl: Option<Duration>,
        path: String,
    },
    SourceIp,
    Query(String),
}

#[derive(Debug, Default)]
pub struct Retry {
    pub attempts: u32,
    pub on: RetryOn,
    pub status_codes: Vec<u16>,
    pub per_try_timeout: Option<Duration>,
}

/// Envoy's `retry_on` conditions this proxy honours.
#[derive(Debug, Default, Clone, Copy)]
pub struct RetryOn {
    /// `5xx`: any 5xx or no response.
    pub server_error: bool,
    /// `gateway-error`: 502, 503, 504.
    pub gateway_error: bool,
    /// `connect-failure` (and `reset`, `refused-stream`, `unavailable`,
    /// `cancelled`, which for a request never answered amount to the same here).
    pub connect_failure: bool,
    pub reset: bool,
    pub retriable_status_codes: bool,
}

#[derive(Debug)]
pub struct Redirect {
    pub scheme: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub path: Option<String>,
    /// `prefix_rewrite`: the matched prefix of the path replaced by this.
    pub prefix: Option<String>,
    pub status: u16,
}

pub fn convert(config: &RouteConfiguration) -> Result<RouteTable, ConvertError> {
    let error = |reason: String| ConvertError::new("RouteConfiguration", &config.name, reason);
    let headers = header_ops::convert(Lists {
        request_add: &config.request_headers_to_add,
        request_remove: &config.request_headers_to_remove,
        response_add: &config.response_headers_to_add,
        response_remove: &config.response_headers_to_remove,
    })
    .map_err(error)?;
    let virtual_hosts = config
        .virtual_hosts
        .iter()
        .map(virtual_host)
        .collect::<Result<_, _>>()
        .map_err(error)?;
    Ok(RouteTable {
        name: config.name.clone(),
        virtual_hosts,
        headers,
        ignore_port: config.ignore_port_in_host_matching,
    })
}

impl RouteTable {
    /// Takes over `old`'s local rate-limit buckets where the same host and
    /// route (by name, then position among those of that name) keep a limit
    /// of the same shape.
    pub fn carry_over(&mut self, old: &RouteTable) {
        use super::local_rate_limit::carry_over_all;
        for vh in &mut self.virtual_hosts {
            let Some(previous) = old.virtual_hosts.iter().find(|o| o.name == vh.name) else {
                continue;
            };
            carry_over_all(&mut vh.local_rate_limits, &previous.local_rate_limits);
            let mut seen: Vec<&str> = Vec::new();
            for route in &mut vh.routes {
                let nth = seen.iter().filter(|n| **n == route.name).count();
                if let Some(was) = previous
                    .routes
                    .iter()
                    .filter(|r| r.name == route.name)
                    .nth(nth)
                {
                    carry_over_all(&mut route.local_rate_limits, &was.local_rate_limits);
                }
                seen.push(&route.name);
            }
        }
    }
}

fn virtual_host(vh: &EnvoyVirtualHost) -> Result<VirtualHost, String> {
    let context = |e: String| format!("virtual host {:?}: {e}", vh.name);
    if vh.retry_policy.is_some() {
        return Err(context(
            "per-host retry policies are not supported yet".to_owned(),
        ));
    }
    let mut local_rate_limits = Vec::new();
    for (filter, any) in &vh.typed_per_filter_config {
        let converted = super::local_rate_limit::per_route(any)
            .map_err(|e| context(format!("per-host config for {filter}: {e}")))?;
        local_rate_limits.push((filter.clone(), Arc::new(converted)));
    }
    let headers = header_ops::convert(Lists {
        request_add: &vh.request_headers_to_add,
        request_remove: &vh.request_headers_to_remove,
        response_add: &vh.response_headers_to_add,
        response_remove: &vh.response_headers_to_remove,
    })
    .map_err(context)?;
    Ok(VirtualHost {
        headers,
        rate_limits: super::rate_limit::policies(&vh.rate_limits).map_err(context)?,
        local_rate_limits,
        name: vh.name.clone(),
        // NONE is 0; ALL and EXTERNAL_ONLY both mean every client here, which
        // is outside the mesh at a gateway.
        require_tls: vh.require_tls != 0,
        domains: vh.domains.iter().map(|d| d.to_ascii_lowercase()).collect(),
        routes: vh
            .routes
            .iter()
            .map(route)
            .collect::<Result<_, _>>()
            .map_err(context)?,
    })
}

fn route(r: &EnvoyRoute) -> Result<Route, String> {
    let context = |e: String| format!("route {:?}: {e}", r.name);
    let headers = header_ops::convert(Lists {
        request_add: &r.request_headers_to_add,
        request_remove: &r.request_headers_to_remove,
        response_add: &r.response_headers_to_add,
        response_remove: &r.response_headers_to_remove,
    })
    .map_err(context)?;
    let mut fault = None;
    let mut cors = None;
    let mut local_rate_limits = Vec::new();
    for (filter, any) in &r.typed_per_filter_config {
        match filter.as_str() {
            super::fault::FILTER => {
                fault =
                    Some(super::fault::convert(any).map_err(context)?).filter(|f| !f.is_empty());
            }
            super::cors::FILTER => cors = Some(super::cors::convert(any).map_err(context)?),
            // Other keys name filters by the name the listener gives them;
            // a local rate limit is the one kind this proxy takes.
            _ => {
                let converted = super::local_rate_limit::convert(any)
                    .map_err(|e| context(format!("per-route config for {filter}: {e}")))?;
                local_rate_limits.push((filter.clone(), Arc::new(converted)));
            }
        }
    }
    let matcher = route_match(r.r#match.as_ref().ok_or("no match")?).map_err(context)?;
    let (rate_limits, include_vh_rate_limits) = match &r.action {
        Some(EnvoyAction::Route(a)) => (
            super::rate_limit::policies(&a.rate_limits).map_err(context)?,
            includes_host_limits(a),
        ),
        _ => (Vec::new(), false),
    };
    let action = match &r.action {
        Some(EnvoyAction::Route(a)) => Action::Forward(forward(a).map_err(context)?),
        Some(EnvoyAction::Redirect(a)) => Action::Redirect(redirect(a).map_err(context)?),
        Some(EnvoyAction::DirectResponse(d)) => Action::Respond {
            status: u16::try_from(d.status)
                .ok()
                .filter(|s| (200..600).contains(s))
                .ok_or_else(|| context(format!("status {} is not an HTTP status", d.status)))?,
            body: match d.body.as_ref().and_then(|b| b.specifier.as_ref()) {
                Some(Specifier::InlineString(s)) => s.clone(),
                Some(Specifier::InlineBytes(b)) => String::from_utf8_lossy(b).into_owned(),
                None => String::new(),
                Some(_) => return Err(context("bodies from files are not supported".to_owned())),
            },
        },
        _ => return Err(context("unsupported action".to_owned())),
    };
    Ok(Route {
        name: r.name.clone(),
        matcher,
        action,
        fault,
        headers,
        cors,
        local_rate_limits,
        rate_limits,
        include_vh_rate_limits,
        decorator: r
            .decorator
            .as_ref()
            .filter(|d| !d.operation.is_empty())
            .map(|d| Decorator {
                operation: Arc::from(d.operation.as_str()),
                propagate: d.propagate.as_ref().is_none_or(|b| b.value),
            }),
    })
}

/// Deprecated in Envoy for the rate-limit filter's per-route option, and
/// still honoured by it.
#[allow(deprecated)]
fn includes_host_limits(a: &RouteAction) -> bool {
    a.include_vh_rate_limits.as_ref().is_some_and(|b| b.value)
}

fn route_match(m: &EnvoyRouteMatch) -> Result<RouteMatch, String> {
    let case_sensitive = m.case_sensitive.as_ref().is_none_or(|b| b.value);
    let fold = |s: &str| {
        if case_sensitive {
            s.to_owned()
        } else {
            s.to_ascii_lowercase()
        }
    };
    let path = match &m.path_specifier {
        Some(PathSpecifier::Prefix(p)) => PathMatch::Prefix(fold(p)),
        Some(PathSpecifier::Path(p)) => PathMatch::Exact(fold(p)),
        Some(PathSpecifier::SafeRegex(r)) => PathMatch::Regex(anchored(&r.regex)?),
        Some(PathSpecifier::PathSeparatedPrefix(p)) => {
            // Envoy refuses these too: the prefix could never be matched whole.
            if p.ends_with('/') || p.contains(['?', '#']) {
                return Err(format!(
                    "path_separated_prefix {p:?} may not end in '/' or hold '?' or '#'"
                ));
            }
            PathMatch::SeparatedPrefix(fold(p))
        }
        _ => return Err("unsupported path match".to_owned()),
    };
    if m.runtime_fraction.is_some() || m.grpc.is_some() || !m.dynamic_metadata.is_empty() {
        return Err("runtime, gRPC and metadata matches are not supported".to_owned());
    }
    Ok(RouteMatch {
        path,
        case_sensitive,
        headers: m
            .headers
            .iter()
            .map(header_match)
            .collect::<Result<_, _>>()?,
        query: m
            .query_parameters
            .iter()
            .map(|q| {
                let test = match &q.query_parameter_match_specifier {
                    Some(QueryParameterMatchSpecifier::StringMatch(sm)) => {
                        ValueTest::Matches(Matcher::from_envoy(sm)?)
                    }
                    Some(QueryParameterMatchSpecifier::PresentMatch(p)) => ValueTest::Present(*p),
                    None => ValueTest::Present(true),
                };
                Ok(QueryMatch {
                    name: q.name.clone(),
                    test,
                })
            })
            .collect::<Result<_, String>>()?,
    })
}

// `exact_match` is deprecated in Envoy but still sent by older control planes.
#[allow(deprecated)]
pub(crate) fn header_match(h: &HeaderMatcher) -> Result<HeaderMatch, String> {
    let test = match &h.header_match_specifier {
        Some(HeaderMatchSpecifier::StringMatch(sm)) => ValueTest::Matches(Matcher::from_envoy(sm)?),
        Some(HeaderMatchSpecifier::PresentMatch(p)) => ValueTest::Present(*p),
        Some(HeaderMatchSpecifier::ExactMatch(s)) => ValueTest::Matches(Matcher::exact(s)),
        None => ValueTest::Present(true),
        Some(_) => return Err(format!("header {:?}: unsupported matcher", h.name)),
    };
    let name = h.name.to_ascii_lowercase();
    if !name.starts_with(':') && HeaderName::from_bytes(name.as_bytes()).is_err() {
        return Err(format!("{:?} is not a header name", h.name));
    }
    Ok(HeaderMatch {
        name,
        test,
        invert: h.invert_match,
    })
}

// `cors` is deprecated in Envoy; a control plane that sets it still means it.
#[allow(deprecated)]
fn forward(a: &RouteAction) -> Result<Forward, String> {
    if a.cors.is_some() {
        return Err(
            "the route-level cors field is not supported; use the CORS filter's per-route policy"
                .to_owned(),
        );
    }
    if !a.prefix_rewrite.is_empty() && a.regex_rewrite.is_some() {
        return Err("prefix_rewrite and regex_rewrite are both set".to_owned());
    }
    let target = match &a.cluster_specifier {
        Some(ClusterSpecifier::Cluster(name)) => Target::Cluster(ClusterName::new(name)),
        Some(ClusterSpecifier::WeightedClusters(w)) => {
            let clusters = w
                .clusters
                .iter()
                .map(weighted_cluster)
                .collect::<Result<Vec<_>, _>>()?;
            // Envoy refuses a total past u32; so does this proxy, rather than
            // wrap it around and send traffic where nobody asked.
            let total = clusters
                .iter()
                .try_fold(0u32, |sum, c| sum.checked_add(c.weight))
                .ok_or("weighted clusters whose weights sum past 4294967295")?;
            if total == 0 {
                return Err("weighted clusters whose weights sum to 0".to_owned());
            }
            Target::Weighted(clusters, total)
        }
        _ => return Err("unsupported cluster specifier".to_owned()),
    };
    let timeout = a
        .timeout
        .as_ref()
        .map(super::duration)
        .transpose()?
        .filter(|d| !d.is_zero())
        .or(Some(DEFAULT_ROUTE_TIMEOUT).filter(|_| a.timeout.is_none()));
    Ok(Forward {
        target,
        hash: a
            .hash_policy
            .iter()
            .map(hash_policy)
            .collect::<Result<_, _>>()?,
        timeout,
        retry: a.retry_policy.as_ref().map(retry).transpose()?,
        prefix_rewrite: Some(a.prefix_rewrite.clone()).filter(|p| !p.is_empty()),
        regex_rewrite: a
            .regex_rewrite
            .as_ref()
            .map(|r| -> Result<RegexRewrite, String> {
                let pattern = r
                    .pattern
                    .as_ref()
                    .ok_or("regex_rewrite without a pattern")?;
                Ok(RegexRewrite {
                    pattern: Regex::new(&pattern.regex)
                        .map_err(|e| format!("regex_rewrite {:?}: {e}", pattern.regex))?,
                    substitution: substitution(&r.substitution)?,
                })
            })
            .transpose()?,
        host_rewrite: match &a.host_rewrite_specifier {
            Some(HostRewriteSpecifier::HostRewriteLiteral(h)) => Some(h.clone()),
            None => None,
            Some(_) => return Err("only literal host rewrites are supported".to_owned()),
        },
        mirrors: a
            .request_mirror_policies
            .iter()
            .map(mirror)
            .collect::<Result<_, _>>()?,
        cluster_not_found: cluster_not_found(a.cluster_not_found_response_code)?,
    })
}

fn cluster_not_found(code: i32) -> Result<StatusCode, String> {
    match ClusterNotFoundResponseCode::try_from(code) {
        Ok(ClusterNotFoundResponseCode::ServiceUnavailable) => Ok(StatusCode::SERVICE_UNAVAILABLE),
        Ok(ClusterNotFoundResponseCode::NotFound) => Ok(StatusCode::NOT_FOUND),
        Ok(ClusterNotFoundResponseCode::InternalServerError) => {
            Ok(StatusCode::INTERNAL_SERVER_ERROR)
        }
        Err(_) => Err(format!("unknown cluster_not_found_response_code {code}")),
    }
}

fn mirror(
    p: &envoy_types::pb::envoy::config::route::v3::route_action::RequestMirrorPolicy,
) -> Result<Mirror, String> {
    if p.cluster.is_empty() {
        return Err(
            "a mirror policy without a cluster (cluster_header is not supported)".to_owned(),
        );
    }
    if !p.host_rewrite_literal.is_empty() || !p.request_headers_mutations.is_empty() {
        return Err(format!(
            "mirror to {}: host rewrites and header mutations of the copy are not supported yet",
            p.cluster
        ));
    }
    let share = super::fault::share(p.runtime_fraction.as_ref().and_then(|f| f.default_value))
        .map_err(|e| format!("mirror to {}: {e}", p.cluster))?;
    Ok(Mirror {
        cluster: ClusterName::new(&p.cluster),
        share,
        shadow_suffix: !p.disable_shadow_host_suffix_append,
    })
}

fn weighted_cluster(c: &ClusterWeight) -> Result<WeightedCluster, String> {
    use envoy_types::pb::envoy::config::route::v3::weighted_cluster::cluster_weight::HostRewriteSpecifier as ClusterHostRewrite;
    let context = |e: String| format!("weighted cluster {:?}: {e}", c.name);
    if !c.typed_per_filter_config.is_empty() {
        return Err(context(
            "per-cluster filter config is not supported yet".to_owned(),
        ));
    }
    Ok(WeightedCluster {
        name: ClusterName::new(&c.name),
        weight: c.weight.as_ref().map_or(0, |v| v.value),
        headers: header_ops::convert(Lists {
            request_add: &c.request_headers_to_add,
            request_remove: &c.request_headers_to_remove,
            response_add: &c.response_headers_to_add,
            response_remove: &c.response_headers_to_remove,
        })
        .map_err(context)?,
        host_rewrite: c
            .host_rewrite_specifier
            .as_ref()
            .map(|ClusterHostRewrite::HostRewriteLiteral(h)| h.clone()),
    })
}

fn hash_policy(
    p: &envoy_types::pb::envoy::config::route::v3::route_action::HashPolicy,
) -> Result<HashPolicy, String> {
    use envoy_types::pb::envoy::config::route::v3::route_action::hash_policy::PolicySpecifier;
    match &p.policy_specifier {
        Some(PolicySpecifier::Header(h)) if h.regex_rewrite.is_none() => {
            HeaderName::from_bytes(h.header_name.to_ascii_lowercase().as_bytes())
                .map(HashPolicy::Header)
                .map_err(|_| format!("hash policy: {:?} is not a header name", h.header_name))
        }
        Some(PolicySpecifier::Cookie(c)) if c.attributes.is_empty() => Ok(HashPolicy::Cookie {
            name: c.name.clone(),
            ttl: c.ttl.as_ref().map(super::duration).transpose()?,
            path: c.path.clone(),
        }),
        Some(PolicySpecifier::ConnectionProperties(c)) if c.source_ip => Ok(HashPolicy::SourceIp),
        Some(PolicySpecifier::QueryParameter(q)) => Ok(HashPolicy::Query(q.name.clone())),
        _ => Err(
            "hash policy: only header, cookie, source IP and query parameter are supported"
                .to_owned(),
        ),
    }
}

/// Envoy's route timeout when none is given.
const DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(15);

fn retry(p: &RetryPolicy) -> Result<Retry, String> {
    let mut on = RetryOn::default();
    for condition in p
        .retry_on
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
    {
        match condition {
            "5xx" => on.server_error = true,
            "gateway-error" => on.gateway_error = true,
            "connect-failure" | "refused-stream" | "unavailable" | "cancelled" => {
                on.connect_failure = true
            }
            "reset" | "reset-before-request" => on.reset = true,
            "retriable-status-codes" => on.retriable_status_codes = true,
            other => return Err(format!("retry condition {other:?} is not supported")),
        }
    }
    Ok(Retry {
        attempts: p.num_retries.as_ref().map_or(1, |n| n.value),
        on,
        status_codes: p
            .retriable_status_codes
            .iter()
            .filter_map(|c| u16::try_from(*c).ok())
            .collect(),
        per_try_timeout: p
            .per_try_timeout
            .as_ref()
            .map(super::duration)
            .transpose()?
            .filter(|d| !d.is_zero()),
    })
}

fn redirect(a: &RedirectAction) -> Result<Redirect, String> {
    let status = match RedirectResponseCode::try_from(a.response_code) {
        Ok(RedirectResponseCode::MovedPermanently) => 301,
        Ok(RedirectResponseCode::Found) => 302,
        Ok(RedirectResponseCode::SeeOther) => 303,
        Ok(RedirectResponseCode::TemporaryRedirect) => 307,
        Ok(RedirectResponseCode::PermanentRedirect) => 308,
        Err(_) => return Err(format!("unknown redirect code {}", a.response_code)),
    };
    Ok(Redirect {
        scheme: match &a.scheme_rewrite_specifier {
            Some(SchemeRewriteSpecifier::SchemeRedirect(s)) => Some(s.clone()),
            Some(SchemeRewriteSpecifier::HttpsRedirect(true)) => Some("https".to_owned()),
            _ => None,
        },
        host: Some(a.host_redirect.clone()).filter(|h| !h.is_empty()),
        port: u16::try_from(a.port_redirect).ok().filter(|p| *p != 0),
        path: match &a.path_rewrite_specifier {
            Some(PathRewriteSpecifier::PathRedirect(p)) => Some(p.clone()),
            _ => None,
        },
        prefix: match &a.path_rewrite_specifier {
            Some(PathRewriteSpecifier::PrefixRewrite(p)) => Some(p.clone()),
            Some(PathRewriteSpecifier::RegexRewrite(_)) => {
                return Err("regex redirects are not supported".to_owned());
            }
            _ => None,
        },
        status,
    })
}

impl RouteTable {
    /// The virtual host for `authority` by Envoy's order: an exact domain, then the
    /// longest `*.suffix`, then the longest `prefix*`, then `*`.
    pub fn virtual_host(&self, authority: &str) -> Option<&VirtualHost> {
        let authority = if self.ignore_port {
            without_port(authority)
        } else {
            authority
        };
        let host = authority.to_ascii_lowercase();
        let mut best: Option<(u8, usize, &VirtualHost)> = None;
        for vh in &self.virtual_hosts {
            for domain in &vh.domains {
                let Some(rank) = domain_rank(domain, &host) else {
                    continue;
                };
                if best.is_none_or(|(r, len, _)| (rank, domain.len()) > (r, len)) {
                    best = Some((rank, domain.len(), vh));
                }
            }
        }
        best.map(|(_, _, vh)| vh)
    }
}

/// The host of an authority: `[::1]:80` is `[::1]`, `a.example:8080` is
/// `a.example`.
fn without_port(authority: &str) -> &str {
    match authority.rsplit_once(':') {
        Some((host, port))
            if port.bytes().all(|b| b.is_ascii_digit())
                && (!host.contains(':') || host.ends_with(']')) =>
        {
            host
        }
        _ => authority,
    }
}

/// 3 exact, 2 suffix wildcard, 1 prefix wildcard, 0 catch-all.
fn domain_rank(domain: &str, host: &str) -> Option<u8> {
    if domain == host {
        Some(3)
    } else if domain == "*" {
        Some(0)
    } else if let Some(suffix) = domain.strip_prefix('*') {
        (host.len() > suffix.len() && host.ends_with(suffix)).then_some(2)
    } else if let Some(prefix) = domain.strip_suffix('*') {
        (host.len() > prefix.len() && host.starts_with(prefix)).then_some(1)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(domains: &[&[&str]]) -> RouteTable {
        RouteTable {
            name: "t".into(),
            virtual_hosts: domains
                .iter()
                .enumerate()
                .map(|(i, d)| VirtualHost {
                    name: i.to_string(),
                    domains: d.iter().map(|s| (*s).to_owned()).collect(),
                    routes: Vec::new(),
                    require_tls: false,
                    headers: HeaderOps::default(),
                    rate_limits: Vec::new(),
                    local_rate_limits: Vec::new(),
                })
                .collect(),
            headers: HeaderOps::default(),
            ignore_port: false,
        }
    }

    #[test]
    fn a_hosts_port_is_left_out_when_the_table_says_so() {
        let mut t = table(&[&["*"], &["httpbin.example.com"], &["[::1]"]]);
        let pick = |t: &RouteTable, h: &str| t.virtual_host(h).map(|v| v.name.clone());
        assert_eq!(pick(&t, "httpbin.example.com:31443").as_deref(), Some("0"));
        t.ignore_port = true;
        assert_eq!(pick(&t, "httpbin.example.com:31443").as_deref(), Some("1"));
        assert_eq!(pick(&t, "httpbin.example.com").as_deref(), Some("1"));
        assert_eq!(pick(&t, "[::1]:8080").as_deref(), Some("2"));
        assert_eq!(pick(&t, "[::1]").as_deref(), Some("2"));
    }

    #[test]
    fn re2_substitutions_become_the_regex_crates() {
        assert_eq!(substitution(r"/v\1/$x\\").as_deref(), Ok("/v${1}/$$x\\"));
        assert!(substitution(r"\x").is_err());
        let rewrite = RegexRewrite {
            pattern: Regex::new("^/service/([^/]+)(/.*)$").expect("regex"),
            substitution: substitution(r"\2/instance/\1").expect("substitution"),
        };
        assert_eq!(rewrite.apply("/service/foo/v1/api"), "/v1/api/instance/foo");
    }

    #[test]
    fn virtual_hosts_are_chosen_by_envoys_precedence() {
        let t = table(&[
            &["*"],
            &["*.example.com"],
            &["api.*"],
            &["reviews:9080", "reviews"],
        ]);
        let pick = |h: &str| t.virtual_host(h).map(|v| v.name.clone());
        assert_eq!(pick("reviews:9080").as_deref(), Some("3"));
        assert_eq!(pick("REVIEWS").as_deref(), Some("3"));
        assert_eq!(
            pick("api.example.com").as_deref(),
            Some("1"),
            "suffix beats prefix"
        );
        assert_eq!(pick("api.other").as_deref(), Some("2"));
        assert_eq!(pick("ratings").as_deref(), Some("0"));
    }

    #[test]
    fn weights_that_overflow_are_refused_not_wrapped() {
        use envoy_types::pb::envoy::config::route::v3::WeightedCluster;
        use envoy_types::pb::envoy::config::route::v3::weighted_cluster::ClusterWeight;
        use envoy_types::pb::google::protobuf::UInt32Value;
        let weighted = |weights: &[u32]| RouteAction {
            cluster_specifier: Some(ClusterSpecifier::WeightedClusters(WeightedCluster {
                clusters: weights
                    .iter()
                    .enumerate()
                    .map(|(i, w)| ClusterWeight {
                        name: format!("c{i}"),
                        weight: Some(UInt32Value { value: *w }),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            })),
            ..Default::default()
        };
        let error = forward(&weighted(&[u32::MAX, 2])).err();
        assert_eq!(
            error.as_deref(),
            Some("weighted clusters whose weights sum past 4294967295")
        );
        let ok = forward(&weighted(&[u32::MAX - 1, 1])).expect("fits");
        assert!(matches!(ok.target, Target::Weighted(_, u32::MAX)));
    }
}

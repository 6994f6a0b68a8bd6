//! RDS: a route configuration per outbound HTTP port (named by the port, as in
//! Istio), a virtual host per service on that port carrying every name a client
//! may use, routes from the VirtualService for the host or one default route.

use std::collections::HashSet;

use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::config::core::v3::{DataSource, RuntimeFractionalPercent};
use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
use envoy_types::pb::envoy::config::route::v3::query_parameter_matcher::QueryParameterMatchSpecifier;
use envoy_types::pb::envoy::config::route::v3::redirect_action::{
    PathRewriteSpecifier, SchemeRewriteSpecifier,
};
use envoy_types::pb::envoy::config::route::v3::retry_policy::RetryHostPredicate;
use envoy_types::pb::envoy::config::route::v3::route_action::hash_policy::{self, PolicySpecifier};
use envoy_types::pb::envoy::config::route::v3::route_action::{
    ClusterNotFoundResponseCode, ClusterSpecifier, HashPolicy, HostRewriteSpecifier,
    RequestMirrorPolicy,
};
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::config::route::v3::weighted_cluster::ClusterWeight;
use envoy_types::pb::envoy::config::route::v3::{
    DirectResponseAction, HeaderMatcher, QueryParameterMatcher, RedirectAction, RetryPolicy, Route,
    RouteAction, RouteConfiguration, RouteMatch, VirtualHost, WeightedCluster, redirect_action,
    retry_policy, route,
};
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::{FaultDelay, fault_delay};
use envoy_types::pb::envoy::extensions::filters::http::cors::v3::CorsPolicy as EnvoyCorsPolicy;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{
    FaultAbort, HttpFault, fault_abort,
};
use envoy_types::pb::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate;
use envoy_types::pb::envoy::r#type::matcher::v3::{
    RegexMatchAndSubstitute, RegexMatcher, StringMatcher, string_matcher::MatchPattern,
};
use envoy_types::pb::envoy::r#type::v3::{FractionalPercent, fractional_percent};
use envoy_types::pb::google::protobuf::BoolValue;
use envoy_types::util::pack_any;
use oxmesh_config::hostname::{Hostname, resolve_short_name};
use oxmesh_config::networking::destination_rule::ConsistentHashLb;
use oxmesh_config::networking::virtual_service::{
    CorsPolicy, Destination, HttpFaultInjection, HttpMatchRequest, HttpRedirect, HttpRetry,
    HttpRoute, HttpRouteDestination, RedirectPortSelection, UnmatchedPreflights, VirtualService,
};
use oxmesh_config::percent::Percent;
use oxmesh_config::service::Service;
use oxmesh_config::string_match::StringMatch;

use super::cluster::{self, PASSTHROUGH};
use super::header_ops::{self, HeaderMutations};
use super::wire;
use crate::mesh_config::OutboundTrafficPolicy;
use crate::proxy::ProxyClass;
use crate::push_context::{PushContext, Scoped, labels_include};

/// What Envoy retries by default in Istio: connection failures, refused and
/// reset streams, and 503s.
const DEFAULT_RETRY_ON: &str =
    "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes";
const DEFAULT_RETRIES: u32 = 2;

/// The route configuration names a proxy's outbound HTTP listeners use: one per
/// port that carries an HTTP (or not yet known) protocol.
pub fn outbound_ports(ctx: &PushContext, proxy: &ProxyClass) -> Vec<u16> {
    let mut ports: Vec<u16> = ctx
        .services_for(proxy)
        .flat_map(|s| &s.ports)
        .filter(|p| {
            p.protocol.is_http() || p.protocol == oxmesh_config::protocol::Protocol::Unknown
        })
        .map(|p| p.number)
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

pub fn generate(ctx: &PushContext, proxy: &ProxyClass) -> Vec<RouteConfiguration> {
    if proxy.kind == crate::proxy::ProxyKind::Router {
        return super::gateway::routes(ctx, proxy);
    }
    outbound_ports(ctx, proxy)
        .into_iter()
        .map(|port| route_configuration(ctx, proxy, port))
        .collect()
}

pub fn route_configuration(ctx: &PushContext, proxy: &ProxyClass, port: u16) -> RouteConfiguration {
    let mut taken = HashSet::new();
    let mut seen_hosts = HashSet::new();
    let mut virtual_hosts = Vec::new();
    for service in ctx.services_for(proxy) {
        if !service.ports.iter().any(|p| p.number == port)
            || !seen_hosts.insert(service.hostname.clone())
        {
            continue;
        }
        let domains: Vec<String> = domains(service, port, &proxy.namespace, &ctx.mesh.domain)
            .into_iter()
            .filter(|d| taken.insert(d.clone()))
            .collect();
        if domains.is_empty() {
            continue;
        }
        let routes = match virtual_service_for(ctx, proxy, &service.hostname) {
            Some(vs) => vs_routes(ctx, proxy, vs, port, &mesh),
            None => vec![default_route(
                &cluster::outbound_name(port, "", service.hostname.as_str()),
                cluster::consistent_hash(ctx, proxy, service, port, "")
                    .map(hash_policy)
                    .unwrap_or_default(),
            )],
        };
        virtual_hosts.push(VirtualHost {
            name: format!("{}:{port}", service.hostname),
            domains,
            routes,
            ..Default::default()
        });
    }
    virtual_hosts.push(fallthrough(ctx));
    RouteConfiguration {
        name: port.to_string(),
        virtual_hosts,
        validate_clusters: Some(BoolValue { value: false }),
        ..Default::default()
    }
}

/// Unknown hosts go where the mesh's outbound policy says: straight out through
/// PassthroughCluster, or (REGISTRY_ONLY) nowhere: a 502 answered by the proxy
/// itself, as Istio's `block_all` virtual host does.
fn fallthrough(ctx: &PushContext) -> VirtualHost {
    let (name, action) = match ctx.mesh.outbound_traffic_policy {
        OutboundTrafficPolicy::AllowAny => (
            "allow_any",
            route::Action::Route(RouteAction {
                cluster_specifier: Some(ClusterSpecifier::Cluster(PASSTHROUGH.to_owned())),
                timeout: Some(wire::duration(std::time::Duration::ZERO)),
                ..Default::default()
            }),
        ),
        OutboundTrafficPolicy::RegistryOnly => (
            "block_all",
            route::Action::DirectResponse(DirectResponseAction {
                status: 502,
                ..Default::default()
            }),
        ),
    };
    VirtualHost {
        name: name.to_owned(),
        domains: vec!["*".to_owned()],
        routes: vec![Route {
            name: name.to_owned(),
            r#match: Some(prefix("/")),
            action: Some(action),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Every name a client in `proxy_namespace` may put in `Host`, with and without
/// the port: clients send `Host: reviews:9080` as often as `reviews`.
pub fn domains(service: &Service, port: u16, proxy_namespace: &str, domain: &str) -> Vec<String> {
    let host = service.hostname.as_str();
    let mut names = vec![host.to_owned()];
    let cluster_suffix = format!(".svc.{domain}");
    if let Some(short) = host.strip_suffix(&cluster_suffix) {
        // `reviews.default`, `reviews.default.svc`, and `reviews` from its namespace.
        names.push(short.to_owned());
        names.push(format!("{short}.svc"));
        if service.namespace == proxy_namespace
            && let Some((name, _)) = short.split_once('.')
        {
            names.push(name.to_owned());
        }
    }
    names.extend(service.addresses.iter().map(|ip| match ip {
        std::net::IpAddr::V6(v6) => format!("[{v6}]"),
        std::net::IpAddr::V4(v4) => v4.to_string(),
    }));
    let with_port: Vec<String> = names.iter().map(|n| format!("{n}:{port}")).collect();
    names.extend(with_port);
    names
}

/// The VirtualService that routes `host` for this proxy: the first visible one
/// naming it (Istio takes the oldest).
pub(crate) fn virtual_service_for<'a>(
    ctx: &'a PushContext,
    proxy: &'a ProxyClass,
    host: &Hostname,
) -> Option<&'a Scoped<VirtualService>> {
    ctx.virtual_services_for(proxy).find(|vs| {
        vs.spec
            .hosts
            .iter()
            .any(|h| host.subset_of(&resolve_short_name(h, &vs.namespace, &ctx.mesh.domain)))
    })
}

/// The routes of a VirtualService's `http` rules on `port`. `bound` says whether
/// a name in a match's `gateways` is the context being generated (`mesh` for
/// sidecars, the gateway for gateways).
pub fn vs_routes(
    ctx: &PushContext,
    proxy: &ProxyClass,
    vs: &Scoped<VirtualService>,
    port: u16,
    bound: &dyn Fn(&str) -> bool,
) -> Vec<Route> {
    let mut routes = Vec::new();
    for http in &vs.spec.http {
        if http.delegate.is_some() {
            continue;
        }
        let matches: Vec<&HttpMatchRequest> = http
            .matches
            .iter()
            .filter(|m| applies(m, proxy, port, bound))
            .collect();
        if !http.matches.is_empty() && matches.is_empty() {
            continue;
        }
        let mut headers = header_ops::translate(http.headers.as_ref());
        let action = action(ctx, proxy, vs, http, port, &headers);
        // One destination: its headers join the route's, as istiod does.
        if let [only] = http.route.as_slice() {
            let own = header_ops::translate(only.headers.as_ref());
            headers.request_add.extend(own.request_add);
            headers.request_remove.extend(own.request_remove);
            headers.response_add.extend(own.response_add);
            headers.response_remove.extend(own.response_remove);
        }
        let route_matches = if matches.is_empty() {
            vec![prefix("/")]
        } else {
            matches
                .iter()
                .map(|m| route_match(m, vs.spec.from_gateway_api))
                .collect()
        };
        let per_filter: std::collections::HashMap<String, envoy_types::pb::google::protobuf::Any> =
            http.fault
                .as_ref()
                .and_then(fault)
                .map(|f| (super::http::FAULT_FILTER.to_owned(), pack_any(f)))
                .into_iter()
                .chain(http.cors_policy.as_ref().map(|c| {
                    (
                        super::http::CORS_FILTER.to_owned(),
                        pack_any(cors_policy(c)),
                    )
                }))
                .collect();
        for m in route_matches {
            routes.push(Route {
                name: http.name.clone(),
                r#match: Some(m),
                action: Some(action.clone()),
                typed_per_filter_config: per_filter.clone(),
                request_headers_to_add: headers.request_add.clone(),
                request_headers_to_remove: headers.request_remove.clone(),
                response_headers_to_add: headers.response_add.clone(),
                response_headers_to_remove: headers.response_remove.clone(),
                ..Default::default()
            });
        }
    }
    routes
}

/// A VirtualService's `corsPolicy` as the CORS filter's per-route policy,
/// as istiod writes it: origins as string matchers (the deprecated
/// `allowOrigin` as exact ones when `allowOrigins` is not given), lists joined with `,`, `maxAge` in seconds,
/// enabled for every request, and preflights from other origins forwarded
/// unless `unmatchedPreflights: IGNORE`.
fn cors_policy(c: &CorsPolicy) -> EnvoyCorsPolicy {
    // The deprecated `allowOrigin` counts only without `allowOrigins`.
    let origins = if c.allow_origins.is_empty() {
        c.allow_origin
            .iter()
            .map(|o| StringMatcher {
                match_pattern: Some(MatchPattern::Exact(o.clone())),
                ..Default::default()
            })
            .collect()
    } else {
        c.allow_origins.iter().filter_map(string_matcher).collect()
    };
    EnvoyCorsPolicy {
        allow_origin_string_match: origins,
        allow_methods: c.allow_methods.join(","),
        allow_headers: c.allow_headers.join(","),
        expose_headers: c.expose_headers.join(","),
        max_age: c
            .max_age
            .map(|d| d.as_std().as_secs().to_string())
            .unwrap_or_default(),
        allow_credentials: c.allow_credentials.map(|value| BoolValue { value }),
        filter_enabled: Some(RuntimeFractionalPercent {
            default_value: Some(hundredths(100)),
            ..Default::default()
        }),
        forward_not_matching_preflights: Some(BoolValue {
            value: c.unmatched_preflights != Some(UnmatchedPreflights::Ignore),
        }),
        ..Default::default()
    }
}

/// Whether a match condition can ever hold on this proxy and port: conditions on
/// the source and port are settled here, not in the proxy.
fn applies(
    m: &HttpMatchRequest,
    proxy: &ProxyClass,
    port: u16,
    bound: &dyn Fn(&str) -> bool,
) -> bool {
    (m.port == 0 || m.port == u32::from(port))
        && labels_include(&proxy.labels, &m.source_labels)
        && (m.source_namespace.is_empty() || m.source_namespace == proxy.namespace)
        && (m.gateways.is_empty() || m.gateways.iter().any(|g| bound(g)))
}

/// A VirtualService's `fault` as Envoy's per-route fault filter config: a fixed
/// delay and an HTTP or gRPC abort, each for a share of requests (100% when no
/// share is given, as Istio does).
fn fault(f: &HttpFaultInjection) -> Option<HttpFault> {
    let share = |percentage: Option<Percent>, percent: Option<i32>| {
        let value = percentage.map_or_else(|| f64::from(percent.unwrap_or(100)), |p| p.value);
        FractionalPercent {
            numerator: (value.clamp(0.0, 100.0) * 10_000.0).round() as u32,
            denominator: fractional_percent::DenominatorType::Million as i32,
        }
    };
    let delay = f.delay.as_ref().and_then(|d| {
        Some(FaultDelay {
            fault_delay_secifier: Some(fault_delay::FaultDelaySecifier::FixedDelay(
                wire::duration(d.fixed_delay?.as_std()),
            )),
            percentage: Some(share(d.percentage, d.percent)),
        })
    });
    let abort = f.abort.as_ref().and_then(|a| {
        let error = match (a.http_status, a.grpc_status.as_deref()) {
            (Some(status), _) => fault_abort::ErrorType::HttpStatus(status.unsigned_abs()),
            (None, Some(code)) => fault_abort::ErrorType::GrpcStatus(
                oxmesh_config::networking::virtual_service::grpc_status_code(code)?,
            ),
            _ => return None,
        };
        Some(FaultAbort {
            error_type: Some(error),
            percentage: Some(share(a.percentage, None)),
            ..Default::default()
        })
    });
    (delay.is_some() || abort.is_some()).then(|| HttpFault {
        delay,
        abort,
        ..Default::default()
    })
}

/// For sidecars, `gateways` entries bind when they say `mesh`.
pub fn mesh(gateway: &str) -> bool {
    gateway == "mesh"
}

pub fn prefix(p: &str) -> RouteMatch {
    RouteMatch {
        path_specifier: Some(PathSpecifier::Prefix(p.to_owned())),
        ..Default::default()
    }
}

/// `segments`: a prefix other than `/` matches whole path segments, as the
/// Gateway API's `PathPrefix` (istiod's gateway route semantics).
fn route_match(m: &HttpMatchRequest, segments: bool) -> RouteMatch {
    let path = match &m.uri {
        None | Some(StringMatch::Any) => PathSpecifier::Prefix("/".to_owned()),
        Some(StringMatch::Exact(p)) => PathSpecifier::Path(p.clone()),
        // istiod trims a trailing `/` (a GRPCRoute service match is
        // `/<service>/`), which Envoy refuses in a separated prefix.
        Some(StringMatch::Prefix(p)) if segments && p != "/" => {
            PathSpecifier::PathSeparatedPrefix(p.strip_suffix('/').unwrap_or(p).to_owned())
        }
        Some(StringMatch::Prefix(p)) => PathSpecifier::Prefix(p.clone()),
        Some(StringMatch::Regex(r)) => PathSpecifier::SafeRegex(regex(r.as_str())),
    };
    let mut headers: Vec<HeaderMatcher> = m
        .headers
        .iter()
        .map(|(name, sm)| header(name, sm, false))
        .collect();
    headers.extend(
        m.without_headers
            .iter()
            .map(|(name, sm)| header(name, sm, true)),
    );
    for (name, sm) in [
        (":method", &m.method),
        (":authority", &m.authority),
        (":scheme", &m.scheme),
    ] {
        if let Some(sm) = sm {
            headers.push(header(name, sm, false));
        }
    }
    RouteMatch {
        path_specifier: Some(path),
        case_sensitive: m.ignore_uri_case.then_some(BoolValue { value: false }),
        headers,
        query_parameters: m
            .query_params
            .iter()
            .map(|(name, sm)| query(name, sm))
            .collect(),
        ..Default::default()
    }
}

fn regex(pattern: &str) -> RegexMatcher {
    RegexMatcher {
        regex: pattern.to_owned(),
        ..Default::default()
    }
}

fn string_matcher(sm: &StringMatch) -> Option<StringMatcher> {
    let pattern = match sm {
        StringMatch::Any => return None,
        StringMatch::Exact(s) => MatchPattern::Exact(s.clone()),
        StringMatch::Prefix(s) => MatchPattern::Prefix(s.clone()),
        StringMatch::Regex(r) => MatchPattern::SafeRegex(regex(r.as_str())),
    };
    Some(StringMatcher {
        match_pattern: Some(pattern),
        ..Default::default()
    })
}

fn header(name: &str, sm: &StringMatch, invert: bool) -> HeaderMatcher {
    let specifier = match string_matcher(sm) {
        Some(m) => HeaderMatchSpecifier::StringMatch(m),
        None => HeaderMatchSpecifier::PresentMatch(true),
    };
    HeaderMatcher {
        name: name.to_ascii_lowercase(),
        invert_match: invert,
        header_match_specifier: Some(specifier),
        ..Default::default()
    }
}

fn query(name: &str, sm: &StringMatch) -> QueryParameterMatcher {
    let specifier = match string_matcher(sm) {
        Some(m) => QueryParameterMatchSpecifier::StringMatch(m),
        None => QueryParameterMatchSpecifier::PresentMatch(true),
    };
    QueryParameterMatcher {
        name: name.to_owned(),
        query_parameter_match_specifier: Some(specifier),
    }
}

fn action(
    ctx: &PushContext,
    proxy: &ProxyClass,
    vs: &Scoped<VirtualService>,
    http: &HttpRoute,
    port: u16,
    headers: &HeaderMutations,
) -> route::Action {
    if let Some(redirect) = &http.redirect {
        return route::Action::Redirect(redirect_action(redirect, port));
    }
    if let Some(direct) = &http.direct_response {
        let body = direct
            .body
            .as_ref()
            .and_then(|b| b.string.clone())
            .map(|s| DataSource {
                specifier: Some(Specifier::InlineString(s)),
                ..Default::default()
            });
        return route::Action::DirectResponse(DirectResponseAction {
            status: direct.status,
            body,
            ..Default::default()
        });
    }
    let rewrite = http.rewrite.as_ref();
    // The host rewrite: `rewrite.authority`, else the route's headers'.
    let mut authority = rewrite
        .map(|r| r.authority.clone())
        .filter(|a| !a.is_empty())
        .or_else(|| headers.authority.clone());
    let specifier = match http.route.as_slice() {
        [only] => {
            let own = header_ops::translate(only.headers.as_ref());
            authority = authority.or(own.authority);
            ClusterSpecifier::Cluster(destination_cluster(ctx, vs, &only.destination, port))
        }
        many => ClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters: many
                .iter()
                .filter(|d| d.weight != 0)
                .map(|d| weighted(ctx, vs, d, port))
                .collect(),
            ..Default::default()
        }),
    };
    let hash_policy = http
        .route
        .first()
        .map(|d| destination_hash(ctx, proxy, vs, &d.destination, port))
        .unwrap_or_default();
    route::Action::Route(RouteAction {
        cluster_specifier: Some(specifier),
        hash_policy,
        timeout: Some(wire::duration(
            http.timeout
                .map_or(std::time::Duration::ZERO, |t| t.as_std()),
        )),
        retry_policy: retry_policy(http.retries.as_ref()),
        // `uriRegexRewrite` wins over `uri` (validation refuses both).
        prefix_rewrite: rewrite
            .filter(|r| r.uri_regex_rewrite.is_none())
            .map(|r| r.uri.clone())
            .unwrap_or_default(),
        regex_rewrite: rewrite.and_then(|r| r.uri_regex_rewrite.as_ref()).map(|r| {
            RegexMatchAndSubstitute {
                pattern: Some(regex(&r.pattern)),
                substitution: r.rewrite.clone(),
            }
        }),
        host_rewrite_specifier: authority.map(HostRewriteSpecifier::HostRewriteLiteral),
        request_mirror_policies: mirror_policies(ctx, vs, http, port),
        cluster_not_found_response_code: if vs.spec.from_gateway_api {
            ClusterNotFoundResponseCode::InternalServerError as i32
        } else {
            ClusterNotFoundResponseCode::ServiceUnavailable as i32
        },
        ..Default::default()
    })
}

/// `mirror` (with `mirrorPercentage` or the older `mirrorPercent`) then each
/// of `mirrors`, as istiod writes them: 100 % when no share is given, none
/// at an explicit 0, the cluster named even when the registry lacks the host
/// (the proxy then skips the copy), and no `-shadow` suffix unless the
/// control plane runs with `DISABLE_SHADOW_HOST_SUFFIX=false`.
fn mirror_policies(
    ctx: &PushContext,
    vs: &Scoped<VirtualService>,
    http: &HttpRoute,
    port: u16,
) -> Vec<RequestMirrorPolicy> {
    let legacy = http.mirror.as_ref().map(|d| {
        let share = match (
            &http.mirror_percentage,
            http.mirror_percent.or(http.mirror_percent_snake),
        ) {
            (Some(p), _) => Some(millionths(p.value)),
            (None, Some(percent)) => Some(hundredths(percent)),
            (None, None) => None,
        };
        (d, share)
    });
    let listed = http.mirrors.iter().map(|m| {
        (
            &m.destination,
            m.percentage.as_ref().map(|p| millionths(p.value)),
        )
    });
    legacy
        .into_iter()
        .chain(listed)
        .filter(|(_, share)| share.as_ref().is_none_or(|s| s.numerator > 0))
        .map(|(destination, share)| RequestMirrorPolicy {
            cluster: destination_cluster(ctx, vs, destination, port),
            runtime_fraction: Some(RuntimeFractionalPercent {
                default_value: Some(share.unwrap_or_else(|| hundredths(100))),
                ..Default::default()
            }),
            trace_sampled: Some(BoolValue { value: false }),
            disable_shadow_host_suffix_append: !ctx.mesh.shadow_host_suffix,
            ..Default::default()
        })
        .collect()
}

fn millionths(percent: f64) -> FractionalPercent {
    FractionalPercent {
        numerator: (percent * 10_000.0) as u32,
        denominator: fractional_percent::DenominatorType::Million as i32,
    }
}

fn hundredths(percent: u32) -> FractionalPercent {
    FractionalPercent {
        numerator: percent,
        denominator: fractional_percent::DenominatorType::Hundred as i32,
    }
}

/// One of several destinations, with its own headers and host rewrite.
fn weighted(
    ctx: &PushContext,
    vs: &Scoped<VirtualService>,
    destination: &HttpRouteDestination,
    port: u16,
) -> ClusterWeight {
    use envoy_types::pb::envoy::config::route::v3::weighted_cluster::cluster_weight::HostRewriteSpecifier as ClusterHostRewrite;
    let own = header_ops::translate(destination.headers.as_ref());
    ClusterWeight {
        name: destination_cluster(ctx, vs, &destination.destination, port),
        weight: Some(wire::u32_value(destination.weight.unsigned_abs())),
        request_headers_to_add: own.request_add,
        request_headers_to_remove: own.request_remove,
        response_headers_to_add: own.response_add,
        response_headers_to_remove: own.response_remove,
        host_rewrite_specifier: own.authority.map(ClusterHostRewrite::HostRewriteLiteral),
        ..Default::default()
    }
}

/// `outbound|<port>|<subset>|<host>`; with no port named, the port the request
/// came in on.
pub(crate) fn destination_cluster(
    ctx: &PushContext,
    vs: &Scoped<VirtualService>,
    destination: &Destination,
    port: u16,
) -> String {
    let (host, port) = destination_target(ctx, vs, destination, port);
    cluster::outbound_name(port, &destination.subset, host.as_str())
}

/// The host and port a destination names; with no port, the service's only
/// port, else the port the request came in on.
pub(crate) fn destination_target(
    ctx: &PushContext,
    vs: &Scoped<VirtualService>,
    destination: &Destination,
    port: u16,
) -> (Hostname, u16) {
    let host = resolve_short_name(&destination.host, &vs.namespace, &ctx.mesh.domain);
    let only_port =
        ctx.registry
            .services_for(&host)
            .next()
            .and_then(|s| match s.ports.as_slice() {
                [only] => Some(only.number),
                _ => None,
            });
    let port = destination
        .port
        .as_ref()
        .and_then(|p| u16::try_from(p.number).ok())
        .filter(|n| *n != 0)
        .or(only_port)
        .unwrap_or(port);
    (host, port)
}

/// The hash policy of a route whose (first) destination's DestinationRule asks
/// for consistent hashing, as Istio derives it.
fn destination_hash(
    ctx: &PushContext,
    proxy: &ProxyClass,
    vs: &Scoped<VirtualService>,
    destination: &Destination,
    port: u16,
) -> Vec<HashPolicy> {
    let (host, port) = destination_target(ctx, vs, destination, port);
    ctx.registry
        .services_for(&host)
        .next()
        .and_then(|service| {
            cluster::consistent_hash(ctx, proxy, service, port, &destination.subset)
        })
        .map(hash_policy)
        .unwrap_or_default()
}

/// `consistentHash` as Envoy hash policies: header, cookie, source IP or query
/// parameter.
pub fn hash_policy(hash: &ConsistentHashLb) -> Vec<HashPolicy> {
    let specifier = if let Some(name) = &hash.http_header_name {
        PolicySpecifier::Header(hash_policy::Header {
            header_name: name.to_ascii_lowercase(),
            ..Default::default()
        })
    } else if let Some(cookie) = &hash.http_cookie {
        PolicySpecifier::Cookie(hash_policy::Cookie {
            name: cookie.name.clone(),
            ttl: cookie.ttl.map(|d| wire::duration(d.as_std())),
            path: cookie.path.clone(),
            ..Default::default()
        })
    } else if hash.use_source_ip == Some(true) {
        PolicySpecifier::ConnectionProperties(hash_policy::ConnectionProperties { source_ip: true })
    } else if let Some(name) = &hash.http_query_parameter_name {
        PolicySpecifier::QueryParameter(hash_policy::QueryParameter { name: name.clone() })
    } else {
        return Vec::new();
    };
    vec![HashPolicy {
        policy_specifier: Some(specifier),
        terminal: false,
    }]
}

/// `port` is the port the route serves: `derivePort: FROM_REQUEST_PORT`
/// redirects to it, as istiod writes it (routes are made per port).
fn redirect_action(redirect: &HttpRedirect, port: u16) -> RedirectAction {
    let code = match redirect.redirect_code {
        302 => redirect_action::RedirectResponseCode::Found,
        303 => redirect_action::RedirectResponseCode::SeeOther,
        307 => redirect_action::RedirectResponseCode::TemporaryRedirect,
        308 => redirect_action::RedirectResponseCode::PermanentRedirect,
        _ => redirect_action::RedirectResponseCode::MovedPermanently,
    };
    RedirectAction {
        host_redirect: redirect.authority.clone(),
        port_redirect: match (redirect.port, redirect.derive_port) {
            (Some(p), _) => p,
            (None, Some(RedirectPortSelection::FromRequestPort)) => u32::from(port),
            (None, _) => 0,
        },
        response_code: code as i32,
        scheme_rewrite_specifier: (!redirect.scheme.is_empty())
            .then(|| SchemeRewriteSpecifier::SchemeRedirect(redirect.scheme.clone())),
        path_rewrite_specifier: if !redirect.uri.is_empty() {
            Some(PathRewriteSpecifier::PathRedirect(redirect.uri.clone()))
        } else {
            redirect
                .prefix_rewrite
                .clone()
                .map(PathRewriteSpecifier::PrefixRewrite)
        },
        ..Default::default()
    }
}

/// Istio's retry defaults, or what the route's `retries` says; `attempts: 0`
/// turns retries off.
fn retry_policy(retries: Option<&HttpRetry>) -> Option<RetryPolicy> {
    let (attempts, retry_on, per_try) = match retries {
        Some(r) if r.attempts <= 0 => return None,
        Some(r) => (
            r.attempts.unsigned_abs(),
            if r.retry_on.is_empty() {
                DEFAULT_RETRY_ON.to_owned()
            } else {
                r.retry_on.clone()
            },
            r.per_try_timeout,
        ),
        None => (DEFAULT_RETRIES, DEFAULT_RETRY_ON.to_owned(), None),
    };
    // Istio writes status codes among the conditions; Envoy wants them apart.
    let (codes, conditions): (Vec<&str>, Vec<&str>) = retry_on
        .split(',')
        .map(str::trim)
        .partition(|c| c.parse::<u32>().is_ok());
    let mut retriable_status_codes: Vec<u32> =
        codes.iter().filter_map(|c| c.parse().ok()).collect();
    let mut conditions: Vec<&str> = conditions.into_iter().filter(|c| !c.is_empty()).collect();
    if retriable_status_codes.is_empty() {
        retriable_status_codes.push(503);
    } else if !conditions.contains(&"retriable-status-codes") {
        conditions.push("retriable-status-codes");
    }
    Some(RetryPolicy {
        retry_on: conditions.join(","),
        num_retries: Some(wire::u32_value(attempts)),
        per_try_timeout: per_try.map(|d| wire::duration(d.as_std())),
        retry_host_predicate: vec![RetryHostPredicate {
            name: "envoy.retry_host_predicates.previous_hosts".to_owned(),
            config_type: Some(retry_policy::retry_host_predicate::ConfigType::TypedConfig(
                pack_any(PreviousHostsPredicate::default()),
            )),
        }],
        host_selection_retry_max_attempts: 5,
        retriable_status_codes,
        ..Default::default()
    })
}

pub fn default_route(cluster: &str, hash_policy: Vec<HashPolicy>) -> Route {
    Route {
        name: "default".to_owned(),
        r#match: Some(prefix("/")),
        action: Some(route::Action::Route(RouteAction {
            cluster_specifier: Some(ClusterSpecifier::Cluster(cluster.to_owned())),
            timeout: Some(wire::duration(std::time::Duration::ZERO)),
            retry_policy: retry_policy(None),
            hash_policy,
            ..Default::default()
        })),
        ..Default::default()
    }
}

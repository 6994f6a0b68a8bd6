//! The rate-limit filters in the connection manager's chain: local (token
//! buckets in this proxy) and global (the rate limit service decides). Both
//! find the request's route first, as Envoy's do, for its per-route config and
//! its rate-limit policies; a limited request is answered 429 (flag `RL`) and
//! never reaches the route.

use std::net::IpAddr;

use http::{HeaderValue, Request};

use super::authorize::Filtered;
use super::{Outcome, State, headers, local_response};
use crate::config::global_rate_limit::GlobalRateLimit;
use crate::config::local_rate_limit::LocalRateLimit;
use crate::config::rate_limit::{Action, Descriptor, Policy};
use crate::config::route::{Action as RouteAction, Route, Target, VirtualHost};

/// What the actions read of a request.
pub(super) struct Facts<'a, B> {
    pub(super) req: &'a Request<B>,
    pub(super) remote_ip: IpAddr,
    pub(super) ctx: &'a crate::context::Context,
}

/// The local filter named `name`: the most specific config (the route's,
/// the host's, else the filter's own) decides.
pub(super) fn local<B>(
    state: &State<'_>,
    name: &str,
    filter: &LocalRateLimit,
    req: &mut Request<B>,
    authority: &str,
    remote_ip: IpAddr,
) -> Option<Outcome> {
    let routed = super::matched_route(state, req, authority);
    let config = routed
        .and_then(|(vhost, route)| {
            per_filter(&route.local_rate_limits, name)
                .or_else(|| per_filter(&vhost.local_rate_limits, name))
        })
        .unwrap_or(filter);
    if config.bucket.is_none() && config.descriptors.is_empty() {
        return None;
    }
    if !config.enabled.hits() {
        return None;
    }
    let [enabled, ok, rate_limited, enforced] = config
        .counters
        .get_or_init(|| state.ctx.metrics.local_rate_limit(&config.stat_prefix));
    enabled.inc();
    let descriptors = match routed {
        Some((vhost, route)) if !config.descriptors.is_empty() => {
            let facts = Facts {
                req: &*req,
                remote_ip,
                ctx: state.ctx,
            };
            descriptors(&config.rate_limits, config.stage, vhost, route, &facts)
        }
        _ => Vec::new(),
    };
    if allows(config, &descriptors) {
        ok.inc();
        return None;
    }
    rate_limited.inc();
    if !config.enforced.hits() {
        config.limited_headers.request.apply(req.headers_mut());
        return None;
    }
    enforced.inc();
    let mut outcome = Outcome::local(config.status, "RL", "local_rate_limited");
    let headers = outcome.response.headers_mut();
    headers.insert("x-envoy-ratelimited", HeaderValue::from_static("true"));
    config.limited_headers.response.apply(headers);
    outcome.details = Some("local_rate_limited".to_owned());
    Some(outcome)
}

fn per_filter<'a>(
    configs: &'a [(String, std::sync::Arc<LocalRateLimit>)],
    name: &str,
) -> Option<&'a LocalRateLimit> {
    configs
        .iter()
        .find(|(filter, _)| filter == name)
        .map(|(_, config)| &**config)
}

/// Envoy's order: the buckets of the request's descriptors, slowest-filling
/// first, each must give a token (without `always_consume_default`, the
/// first that does decides); then the default bucket, when none matched or
/// always unless told not.
fn allows(config: &LocalRateLimit, descriptors: &[Descriptor]) -> bool {
    let mut matched: Vec<_> = config
        .descriptors
        .iter()
        .filter(|bucket| descriptors.iter().any(|d| bucket.matches(d)))
        .collect();
    matched.sort_by(|a, b| a.fill_rate().total_cmp(&b.fill_rate()));
    for bucket in &matched {
        if !bucket.bucket.try_take() {
            return false;
        }
        if !config.always_consume_default {
            return true;
        }
    }
    config.bucket.as_ref().is_none_or(|b| b.try_take())
}

/// The global filter: asks the service about the route's descriptors; a
/// route that makes none is not limited.
pub(super) async fn global<B>(
    state: &State<'_>,
    filter: &GlobalRateLimit,
    req: &mut Request<B>,
    authority: &str,
    remote_ip: IpAddr,
    filtered: &mut Filtered,
) -> Option<Outcome> {
    if !filter.enabled.hits() {
        return None;
    }
    let (vhost, route) = super::matched_route(state, req, authority)?;
    let cluster = route_cluster(route)?;
    let facts = Facts {
        req: &*req,
        remote_ip,
        ctx: state.ctx,
    };
    let descriptors = descriptors(&filter.rate_limits, filter.stage, vhost, route, &facts);
    if descriptors.is_empty() {
        return None;
    }
    let metrics = &state.ctx.metrics;
    let original = state.downstream.original;
    let asked =
        crate::rate_limit_service::ask(state.ctx, &state.snapshot, filter, &descriptors, original)
            .await;
    let answer = match asked {
        Ok(answer) => answer,
        Err(reason) => {
            metrics.global_rate_limit(cluster, "error");
            tracing::debug!(%reason, "the rate limit service gave no answer");
            if !filter.failure_mode_deny {
                return None;
            }
            let mut outcome = Outcome::local(filter.status_on_error, "RLSE", "");
            outcome.details = Some("rate_limiter_error".to_owned());
            return Some(outcome);
        }
    };
    filtered.response_headers.extend(answer.response_headers);
    if !answer.over_limit || !filter.enforced.hits() {
        metrics.global_rate_limit(
            cluster,
            if answer.over_limit {
                "over_limit"
            } else {
                "ok"
            },
        );
        for (name, value) in answer.request_headers {
            req.headers_mut().insert(name, value);
        }
        return None;
    }
    metrics.global_rate_limit(cluster, "over_limit");
    let mut outcome = Outcome::local(filter.limited_status, "RL", "");
    // The service's body, if it gave one.
    outcome.response = local_response(filter.limited_status, answer.body);
    let headers = outcome.response.headers_mut();
    if filter.ratelimited_header {
        headers.insert("x-envoy-ratelimited", HeaderValue::from_static("true"));
    }
    filter.limited_headers.response.apply(headers);
    outcome.details = Some("request_rate_limited".to_owned());
    Some(outcome)
}

/// The cluster a forwarding route names (the first of weighted ones);
/// redirects and direct answers have none and are never globally limited.
fn route_cluster(route: &Route) -> Option<&str> {
    match &route.action {
        RouteAction::Forward(f) => Some(match &f.target {
            Target::Cluster(name) => name.as_str(),
            Target::Weighted(clusters, _) => clusters.first()?.name.as_str(),
        }),
        _ => None,
    }
}

/// The descriptors the request makes: with the filter's own policies when
/// it has any, else the route's of the filter's stage and the host's (when
/// the route has none, or includes them).
fn descriptors<B>(
    own: &[Policy],
    stage: u32,
    vhost: &VirtualHost,
    route: &Route,
    facts: &Facts<'_, B>,
) -> Vec<Descriptor> {
    let cluster = route_cluster(route);
    let make = |p: &Policy| descriptor(p, facts, cluster);
    if !own.is_empty() {
        return own.iter().filter_map(make).collect();
    }
    let (route_policies, include_host) =
        (route.rate_limits.as_slice(), route.include_vh_rate_limits);
    let of_stage = |p: &&Policy| p.stage == stage;
    let mut made: Vec<Descriptor> = route_policies
        .iter()
        .filter(of_stage)
        .filter_map(make)
        .collect();
    if include_host || route_policies.is_empty() {
        made.extend(vhost.rate_limits.iter().filter(of_stage).filter_map(make));
    }
    made
}

/// One policy's descriptor, or none when an action has nothing to say.
fn descriptor<B>(
    policy: &Policy,
    facts: &Facts<'_, B>,
    cluster: Option<&str>,
) -> Option<Descriptor> {
    let mut entries = Vec::with_capacity(policy.actions.len());
    for action in &policy.actions {
        let entry = match action {
            Action::SourceCluster => {
                let peer = &facts.ctx.local_peer;
                (
                    "source_cluster".to_owned(),
                    format!("{}.{}", peer.app, peer.namespace),
                )
            }
            Action::DestinationCluster => ("destination_cluster".to_owned(), cluster?.to_owned()),
            Action::RequestHeader {
                name,
                key,
                skip_if_absent,
            } => match headers::first_header_value(name, facts.req) {
                Some(value) => (key.clone(), value),
                None if *skip_if_absent => continue,
                None => return None,
            },
            Action::RemoteAddress => ("remote_address".to_owned(), facts.remote_ip.to_string()),
            Action::GenericKey { key, value } => (key.clone(), value.clone()),
            Action::HeaderValueMatch {
                key,
                value,
                expect_match,
                headers,
            } => {
                let matched = headers
                    .iter()
                    .all(|h| headers::header_matches(h, facts.req));
                if matched != *expect_match {
                    return None;
                }
                (key.clone(), value.clone())
            }
        };
        entries.push(entry);
    }
    (!entries.is_empty()).then_some(entries)
}

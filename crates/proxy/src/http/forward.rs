//! Forwarding a routed request: pick the cluster (weights), then per attempt an
//! endpoint and a pooled connection; retry on what the route's policy names, on a
//! different endpoint when there is one; bound the whole by the route timeout.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderValue, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::{Body, Incoming};

use super::{Outcome, State, headers};
use crate::balance;
use crate::breaker::{Resource, Slot};
use crate::config::ClusterName;
use crate::config::Snapshot;
use crate::config::cluster::Cluster;
use crate::config::header_ops::HeaderOps;
use crate::config::route::{self, Forward, HashPolicy, PathMatch, Retry};
use crate::config::tls::Carries;
use crate::context::Context;
use crate::metrics::Peer;
use crate::outlier::Attempt;
use crate::pool::{self, PoolKey, Pooled, UpstreamBody};
use crate::upstream::{self, Chosen, OriginalSource, UpstreamError};

/// Bodies up to this size are buffered so a retry can send them again.
const REPLAYABLE: u64 = 64 * 1024;

/// The request as routed: what forwarding needs beyond the request itself.
pub(super) struct Routed<'a> {
    pub route: &'a Forward,
    /// The path prefix the route matched, which `prefix_rewrite` replaces.
    pub matched: &'a PathMatch,
    pub authority: &'a str,
    /// The header mutations of the route, its virtual host and its table,
    /// in the order they apply (after the weighted cluster's).
    pub headers: [&'a HeaderOps; 3],
}

pub(super) async fn forward(
    state: &State<'_>,
    req: Request<Incoming>,
    routed: Routed<'_>,
) -> Outcome {
    let picked = pick(&routed.route.target);
    let mut outcome = match state.snapshot.cluster(picked.name).cloned() {
        Some(cluster) => to_cluster(state, req, &routed, &picked, cluster).await,
        None => failure(
            routed.route.cluster_not_found,
            "NC",
            "no healthy upstream",
            None,
        ),
    };
    if let Some(ops) = picked.headers {
        ops.response.apply(outcome.response.headers_mut());
    }
    outcome
}

/// Forwards to the picked cluster: rewrites and header mutations, then the
/// attempts within the route's timeout.
async fn to_cluster(
    state: &State<'_>,
    mut req: Request<Incoming>,
    routed: &Routed<'_>,
    picked: &Picked<'_>,
    cluster: Arc<Cluster>,
) -> Outcome {
    let route = routed.route;
    let downstream_upgrade =
        headers::is_upgrade(req.headers()).then(|| hyper::upgrade::on(&mut req));
    // An HTTP/1.1 upgrade (a WebSocket) has no HTTP/2 form every upstream
    // takes, so it goes as HTTP/1.1 even to a cluster upgraded to HTTP/2.
    let http2 = cluster.http2_for(req.version()) && downstream_upgrade.is_none();
    let (mut parts, body) = req.into_parts();
    let host_rewrite = route.host_rewrite.as_deref().or(picked.host_rewrite);
    let authority = rewrite(
        &mut parts,
        route,
        host_rewrite,
        routed.matched,
        routed.authority,
    );
    for ops in picked.headers.into_iter().chain(routed.headers) {
        ops.request.apply(&mut parts.headers);
    }
    let (hash, set_cookie) = request_hash(&route.hash, &parts, state.downstream.client);
    let (body, request_bytes) = match prepare_body(body).await {
        Ok(b) => b,
        Err(_) => return failure(StatusCode::BAD_REQUEST, "DC", "", Some(&cluster)),
    };
    let target = Target {
        parts: &parts,
        authority: &authority,
        cluster: &cluster,
        hash,
        announce: state.downstream.tls_peer.is_none(),
        http2,
    };
    if let RequestBody::Replayable(bytes) = &body {
        super::mirror::launch(state, &route.mirrors, &target, bytes, route.timeout);
    } else if !route.mirrors.is_empty() {
        tracing::debug!("a streamed request body is not mirrored");
    }
    let attempt = attempts(state, &target, body, route.retry.as_ref());
    let mut outcome = match route.timeout {
        Some(limit) => match tokio::time::timeout(limit, attempt).await {
            Ok(o) => o,
            Err(_) => failure(
                StatusCode::GATEWAY_TIMEOUT,
                "UT",
                "upstream request timeout",
                Some(&cluster),
            ),
        },
        None => attempt.await,
    };
    outcome.request_bytes = request_bytes;
    if let Some(cookie) = set_cookie {
        outcome
            .response
            .headers_mut()
            .append(http::header::SET_COOKIE, cookie);
    }
    if let Some(on_upgrade) = downstream_upgrade {
        splice_upgrade(&mut outcome, on_upgrade, &cluster);
    }
    outcome
}

/// The cluster a request goes to, and what a weighted cluster changes on it.
struct Picked<'a> {
    name: &'a ClusterName,
    headers: Option<&'a HeaderOps>,
    host_rewrite: Option<&'a str>,
}

fn pick(target: &route::Target) -> Picked<'_> {
    fn weighted(c: &route::WeightedCluster) -> Picked<'_> {
        Picked {
            name: &c.name,
            headers: Some(&c.headers).filter(|h| !h.is_empty()),
            host_rewrite: c.host_rewrite.as_deref(),
        }
    }
    match target {
        route::Target::Cluster(name) => Picked {
            name,
            headers: None,
            host_rewrite: None,
        },
        route::Target::Weighted(clusters, total) => {
            let mut point = (crate::balance::random_u64() % u64::from(*total)) as u32;
            for c in clusters {
                if point < c.weight {
                    return weighted(c);
                }
                point -= c.weight;
            }
            weighted(&clusters[0])
        }
    }
}

/// Applies the route's rewrites; returns the authority to send upstream.
fn rewrite(
    parts: &mut Parts,
    route: &Forward,
    host_rewrite: Option<&str>,
    matched: &PathMatch,
    authority: &str,
) -> String {
    if let Some(prefix) = &route.prefix_rewrite {
        let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        // A prefix match replaces the prefix; an exact or regex match, the path.
        let rest = match matched {
            PathMatch::Prefix(p) | PathMatch::SeparatedPrefix(p) => {
                path_and_query.get(p.len()..).unwrap_or_default()
            }
            _ => path_and_query
                .get(parts.uri.path().len()..)
                .unwrap_or_default(),
        };
        if let Ok(uri) = format!("{prefix}{rest}").parse::<Uri>() {
            parts.uri = uri;
        }
    } else if let Some(regex) = &route.regex_rewrite {
        // The path is rewritten; the query stays as it was.
        let path = regex.apply(parts.uri.path());
        let path = if path.is_empty() { "/".into() } else { path };
        let query = parts
            .uri
            .query()
            .map(|q| format!("?{q}"))
            .unwrap_or_default();
        match format!("{path}{query}").parse::<Uri>() {
            Ok(uri) => parts.uri = uri,
            Err(e) => tracing::debug!(%path, error = %e, "regex rewrite made no valid path; kept"),
        }
    }
    host_rewrite.unwrap_or(authority).to_owned()
}

enum RequestBody {
    Replayable(Bytes),
    Streaming(Option<Incoming>),
}

impl RequestBody {
    fn take(&mut self) -> Option<UpstreamBody> {
        match self {
            RequestBody::Replayable(b) => Some(Either::Left(Full::new(b.clone()))),
            RequestBody::Streaming(body) => body.take().map(Either::Right),
        }
    }

    fn replayable(&self) -> bool {
        matches!(self, RequestBody::Replayable(_))
    }
}

async fn prepare_body(body: Incoming) -> Result<(RequestBody, u64), hyper::Error> {
    let hint = body.size_hint();
    match hint.upper() {
        Some(upper) if upper <= REPLAYABLE => {
            let bytes = body.collect().await?.to_bytes();
            let len = bytes.len() as u64;
            Ok((RequestBody::Replayable(bytes), len))
        }
        _ => Ok((RequestBody::Streaming(Some(body)), hint.lower())),
    }
}

/// Where attempts go: the request head, the authority and the cluster, and the
/// request's hash for consistent-hash clusters.
pub(super) struct Target<'a> {
    pub parts: &'a Parts,
    pub authority: &'a str,
    pub cluster: &'a Arc<Cluster>,
    pub hash: Option<u64>,
    /// Tell a mesh upstream who the caller is (Istio's metadata headers):
    /// not when the request came over mTLS, whose peer already told.
    pub announce: bool,
    /// Speak HTTP/2 upstream (the cluster's protocol for this request).
    pub http2: bool,
}

/// The request's hash from the route's policies, combined as Envoy combines
/// them; and, for a cookie policy with a TTL the client lacks, the cookie to set.
fn request_hash(
    policies: &[HashPolicy],
    parts: &Parts,
    client: SocketAddr,
) -> (Option<u64>, Option<HeaderValue>) {
    let mut hash: Option<u64> = None;
    let mut set_cookie = None;
    for policy in policies {
        let one = match policy {
            HashPolicy::Header(name) => {
                let values: Vec<&[u8]> = parts
                    .headers
                    .get_all(name)
                    .iter()
                    .map(|v| v.as_bytes())
                    .collect();
                (!values.is_empty()).then(|| balance::stable_hash(values))
            }
            HashPolicy::SourceIp => Some(balance::stable_hash(client.ip())),
            HashPolicy::Query(name) => parts.uri.query().and_then(|q| {
                q.split('&')
                    .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| balance::stable_hash(v))
            }),
            HashPolicy::Cookie { name, ttl, path } => match headers::cookie(&parts.headers, name) {
                Some(value) => Some(balance::stable_hash(value)),
                None => ttl.and_then(|ttl| {
                    let value = format!("{:016x}", balance::random_u64());
                    let path = if path.is_empty() {
                        String::new()
                    } else {
                        format!("; Path={path}")
                    };
                    set_cookie = HeaderValue::from_str(&format!(
                        "{name}=\"{value}\"; Max-Age={}{path}; HttpOnly",
                        ttl.as_secs()
                    ))
                    .ok();
                    Some(balance::stable_hash(format!("\"{value}\"")))
                }),
            },
        };
        if let Some(one) = one {
            hash = Some(hash.map_or(one, |h| h.rotate_left(1) ^ one));
        }
    }
    (hash, set_cookie)
}

/// The attempts the route's retry policy allows. A retry holds its place
/// under `max_retries` (or the retry budget) through its back-off and while
/// it is in flight; over the limit it is not made, and the answer it would
/// have replaced stands (flag `UO`, as Envoy's).
async fn attempts(
    state: &State<'_>,
    target: &Target<'_>,
    mut body: RequestBody,
    retry: Option<&Retry>,
) -> Outcome {
    let cluster = target.cluster;
    let max_attempts = 1 + retry.map_or(0, |r| r.attempts);
    let mut tried: Vec<SocketAddr> = Vec::new();
    let mut _retrying: Option<Slot> = None;
    let mut attempt = 1;
    loop {
        let (mut outcome, retriable) =
            one_attempt(state, target, &mut body, retry, &mut tried).await;
        if !retriable {
            return outcome;
        }
        if attempt == max_attempts || !body.replayable() {
            // Still failing after the last retry: Envoy flags it URX.
            if attempt > 1 {
                outcome.flags = "URX";
            }
            return outcome;
        }
        _retrying = None;
        let Some(slot) = cluster.load.acquire(&cluster.limits, Resource::Retry) else {
            state
                .ctx
                .metrics
                .overflowed(cluster.name.as_str(), Resource::Retry);
            outcome.flags = "UO";
            return outcome;
        };
        _retrying = Some(slot);
        // The failed attempt's answer goes unread, its connection with it
        // (Envoy resets the stream), before the retry is made.
        drop(outcome);
        attempt += 1;
        tokio::time::sleep(backoff(attempt)).await;
    }
}

/// One attempt: an endpoint, a connection, the request sent. The outcome,
/// and whether the route's retry policy would try again after it.
async fn one_attempt(
    state: &State<'_>,
    target: &Target<'_>,
    body: &mut RequestBody,
    retry: Option<&Retry>,
    tried: &mut Vec<SocketAddr>,
) -> (Outcome, bool) {
    let cluster = target.cluster;
    let chosen = match upstream::choose(
        &state.snapshot,
        cluster,
        state.downstream.original,
        tried,
        target.hash,
    )
    .await
    {
        Ok(c) => c,
        Err(e) => return (upstream_failure(&e, Some(cluster)), false),
    };
    tried.push(chosen.address);
    let (mut outcome, again) = attempt_on(state, target, body, retry, &chosen).await;
    outcome.upstream_host = Some(chosen.address);
    (outcome, again)
}

/// One attempt on the endpoint chosen for it.
async fn attempt_on(
    state: &State<'_>,
    target: &Target<'_>,
    body: &mut RequestBody,
    retry: Option<&Retry>,
    chosen: &Chosen,
) -> (Outcome, bool) {
    let cluster = target.cluster;
    let _in_flight = chosen.in_flight();
    let source = state.downstream.original_source;
    let (mut pooled, request_slot) =
        match connection(state.ctx, source, cluster, chosen, target.http2).await {
            Ok(p) => p,
            Err(e @ UpstreamError::Overflow(..)) => {
                return (upstream_failure(&e, Some(cluster)), false);
            }
            Err(e) => {
                chosen.record(cluster, Attempt::Failed);
                let again = retry.is_some_and(|r| r.on.connect_failure);
                return (upstream_failure(&e, Some(cluster)), again);
            }
        };
    // Reached: a local-origin success, whatever the request gets now.
    chosen.record(cluster, Attempt::Reached);
    // Only a replayable body is ever retried, so a second attempt has one.
    let Some(attempt_body) = body.take() else {
        let e = UpstreamError::NoHealthy(cluster.name.clone());
        return (upstream_failure(&e, Some(cluster)), false);
    };
    let request = upstream_request(state.ctx, target, attempt_body, chosen);
    let per_try = retry.and_then(|r| r.per_try_timeout);
    let local = pooled.local;
    let sent_at = std::time::Instant::now();
    let sent = match per_try {
        Some(limit) => match tokio::time::timeout(limit, pooled.send(request)).await {
            Ok(result) => result.map_err(SendError::Hyper),
            Err(_) => Err(SendError::Timeout),
        },
        None => pooled.send(request).await.map_err(SendError::Hyper),
    };
    match sent {
        Ok(mut response) => {
            upstream_service_time(&mut response, sent_at);
            let status = response.status();
            chosen.record(cluster, Attempt::Status(status.as_u16()));
            let peer = response_peer(&mut response, &pooled);
            let again = retry.is_some_and(|r| retriable(r, status));
            // An HTTP/1 connection whose answer may be dropped unread is not
            // reused; an upgraded one belongs to the upgrade.
            let reusable = pooled.is_http2() || !again;
            let stream = pooled.take_stream();
            if reusable && status != StatusCode::SWITCHING_PROTOCOLS {
                pool::checkin(
                    pool_key(source, cluster, chosen, target.http2),
                    pooled,
                    &cluster.reuse,
                );
            }
            let held = Held {
                _request: request_slot,
                _stream: stream,
            };
            let mut outcome = passthrough(response, peer, cluster, held);
            outcome.upstream_local = local;
            (outcome, again)
        }
        Err(e) => {
            chosen.record(cluster, Attempt::Failed);
            tracing::debug!(cluster = %cluster.name, endpoint = %chosen.address, error = ?e, "upstream request failed");
            let outcome = failure(
                StatusCode::SERVICE_UNAVAILABLE,
                e.flag(),
                e.body(),
                Some(cluster),
            );
            (
                outcome,
                retry.is_some_and(|r| r.on.reset || r.on.connect_failure),
            )
        }
    }
}

/// A connection for the attempt and the request's place under
/// `max_requests`; over it, the request is refused and the connection goes
/// back to the pool.
pub(super) async fn connection(
    ctx: &Context,
    source: Option<OriginalSource>,
    cluster: &Cluster,
    chosen: &Chosen,
    http2: bool,
) -> Result<(Pooled, Slot), UpstreamError> {
    admit(ctx, cluster, Resource::Request)?;
    let pooled = checkout(ctx, source, cluster, chosen, http2).await?;
    match cluster.load.acquire(&cluster.limits, Resource::Request) {
        Some(slot) => Ok((pooled, slot)),
        None => {
            pool::checkin(
                pool_key(source, cluster, chosen, http2),
                pooled,
                &cluster.reuse,
            );
            Err(overflow(ctx, cluster, Resource::Request))
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum SendError {
    #[error(transparent)]
    Hyper(#[from] hyper::Error),
    #[error("per-try timeout")]
    Timeout,
}

impl SendError {
    /// UC: the upstream closed or reset the connection; UT: per-try timeout.
    fn flag(&self) -> &'static str {
        match self {
            SendError::Hyper(_) => "UC",
            SendError::Timeout => "UT",
        }
    }

    fn body(&self) -> &'static str {
        match self {
            SendError::Hyper(_) => {
                "upstream connect error or disconnect/reset before headers. reset reason: connection termination"
            }
            SendError::Timeout => "upstream request timeout",
        }
    }
}

fn retriable(r: &Retry, status: StatusCode) -> bool {
    let code = status.as_u16();
    (r.on.server_error && status.is_server_error())
        || (r.on.gateway_error && matches!(code, 502..=504))
        || (r.on.retriable_status_codes && r.status_codes.contains(&code))
}

/// Envoy's retry back-off: 25 ms doubling per attempt, full jitter.
fn backoff(attempt: u32) -> std::time::Duration {
    let ceiling = 25u64 << (attempt - 2).min(4);
    std::time::Duration::from_millis(crate::balance::random_u64() % ceiling + 1)
}

pub(super) fn pool_key(
    source: Option<OriginalSource>,
    cluster: &Cluster,
    chosen: &Chosen,
    http2: bool,
) -> PoolKey {
    PoolKey {
        cluster: cluster.name.clone(),
        address: chosen.address,
        tls: cluster.tls.for_endpoint(chosen.mesh_tls).is_some(),
        source: source.map(|s| s.ip),
        http2,
    }
}

/// A connection for the attempt: a pooled one, the HTTP/2 connection another
/// request is dialling, a new one, or (at the connection limit) the next one
/// given back. Waiting for one makes the request pending, which its own
/// limit bounds.
async fn checkout(
    ctx: &Context,
    source: Option<OriginalSource>,
    cluster: &Cluster,
    chosen: &Chosen,
    http2: bool,
) -> Result<Pooled, UpstreamError> {
    let key = pool_key(source, cluster, chosen, http2);
    let breakers = pool::Breakers {
        limits: &cluster.limits,
        load: &cluster.load,
        reuse: &cluster.reuse,
    };
    let mut pending: Option<Slot> = None;
    loop {
        let claim = pool::claim(&key, http2, &breakers);
        let waits = match &claim {
            pool::Claim::Ready(pooled) => !pooled.is_ready(),
            _ => true,
        };
        if waits && pending.is_none() {
            pending = Some(
                cluster
                    .load
                    .acquire(&cluster.limits, Resource::Pending)
                    .ok_or_else(|| overflow(ctx, cluster, Resource::Pending))?,
            );
        }
        let mut pooled = match claim {
            pool::Claim::Ready(pooled) => pooled,
            pool::Claim::Wait(waiter) => match waiter.wait().await {
                Some(Ok(pooled)) => pooled,
                Some(Err(failed)) => {
                    return Err(UpstreamError::Connect {
                        address: chosen.address,
                        source: std::io::Error::other(failed),
                    });
                }
                // The request dialling went away: claim again.
                None => continue,
            },
            pool::Claim::Queued(queued) => {
                ctx.metrics
                    .overflowed(cluster.name.as_str(), Resource::Connection);
                match queued.wait().await {
                    Some(pooled) => pooled,
                    None => continue,
                }
            }
            pool::Claim::Dial(mut ticket) => {
                if ticket.over_limit {
                    ctx.metrics
                        .overflowed(cluster.name.as_str(), Resource::Connection);
                }
                let opened = ticket.take_opened();
                let mut dialled = dial(ctx, source, cluster, chosen, opened, http2).await;
                ticket.finish(&mut dialled, &cluster.reuse);
                return dialled;
            }
        };
        // A connection still reading its last response is waited for; one
        // that closed meanwhile is no use.
        if pooled.ready().await.is_ok() {
            return Ok(pooled);
        }
    }
}

async fn dial(
    ctx: &Context,
    source: Option<OriginalSource>,
    cluster: &Cluster,
    chosen: &Chosen,
    opened: Option<pool::Opened>,
    http2: bool,
) -> Result<Pooled, UpstreamError> {
    let carries = if http2 {
        Carries::Http2
    } else {
        Carries::Http1
    };
    let connected = upstream::connect(ctx, cluster, chosen, carries, source).await?;
    pool::handshake(connected, http2, opened, &cluster.reuse)
        .await
        .map_err(|e| UpstreamError::Connect {
            address: chosen.address,
            source: std::io::Error::other(e),
        })
}

pub(super) fn upstream_request(
    ctx: &Context,
    target: &Target<'_>,
    body: UpstreamBody,
    chosen: &Chosen,
) -> Request<UpstreamBody> {
    let (parts, cluster, authority) = (target.parts, target.cluster, target.authority);
    let mut request = Request::new(body);
    *request.method_mut() = parts.method.clone();
    *request.headers_mut() = parts.headers.clone();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    *request.uri_mut() = if target.http2 {
        format!("http://{authority}{path}")
            .parse()
            .unwrap_or_default()
    } else {
        path.parse().unwrap_or_default()
    };
    if target.http2 {
        request.headers_mut().remove(http::header::HOST);
        *request.version_mut() = http::Version::HTTP_2;
    } else if let Ok(host) = HeaderValue::from_str(authority) {
        request.headers_mut().insert(http::header::HOST, host);
    }
    if target.announce && cluster.tls.for_endpoint(chosen.mesh_tls).is_some() {
        ctx.local_metadata.insert(request.headers_mut());
    }
    request
}

/// Envoy's router tells the client how long the upstream took to answer
/// (`x-envoy-upstream-service-time`, in milliseconds).
fn upstream_service_time(response: &mut Response<Incoming>, sent_at: std::time::Instant) {
    static NAME: http::HeaderName = http::HeaderName::from_static("x-envoy-upstream-service-time");
    let millis = sent_at.elapsed().as_millis();
    response
        .headers_mut()
        .insert(NAME.clone(), HeaderValue::from(millis as u64));
}

/// The upstream's workload, from the metadata its sidecar answered with (which
/// never reaches the app), else from its certificate.
fn response_peer(response: &mut Response<Incoming>, pooled: &Pooled) -> Option<Peer> {
    let from_metadata = crate::peer::take(response.headers_mut());
    let principal = pooled.peer.as_ref().map(ToString::to_string);
    match (from_metadata, principal) {
        (Some(mut peer), Some(principal)) => {
            peer.principal = principal;
            Some(peer)
        }
        (Some(peer), None) => Some(peer),
        (None, Some(principal)) => Some(crate::tcp::identity_peer(principal)),
        (None, None) => None,
    }
}

/// The upstream's response; the request counts against `max_requests`, and
/// holds its HTTP/2 stream, until its body ends.
fn passthrough(
    response: Response<Incoming>,
    peer: Option<Peer>,
    cluster: &Cluster,
    held: Held,
) -> Outcome {
    Outcome {
        cluster: Some(cluster.name.to_string()),
        upstream_peer: peer,
        ..Outcome::answer(response.map(|body| Counted { body, _held: held }.boxed()))
    }
}

fn upstream_failure(e: &UpstreamError, cluster: Option<&Arc<Cluster>>) -> Outcome {
    tracing::debug!(error = %e, "no upstream connection");
    let body = match e {
        UpstreamError::NoCluster(_) | UpstreamError::NoHealthy(_) => "no healthy upstream",
        UpstreamError::Overflow(..) => {
            "upstream connect error or disconnect/reset before headers. reset reason: overflow"
        }
        _ => {
            "upstream connect error or disconnect/reset before headers. reset reason: connection failure"
        }
    };
    let mut outcome = failure(StatusCode::SERVICE_UNAVAILABLE, e.flag(), body, cluster);
    if let UpstreamError::Overflow(..) = e {
        // Envoy's router marks what circuit breaking refused.
        outcome
            .response
            .headers_mut()
            .insert("x-envoy-overloaded", HeaderValue::from_static("true"));
        outcome.details = Some("upstream_reset_before_response_started{overflow}".to_owned());
    }
    outcome
}

/// Refused by `resource`'s circuit breaker: counted, and the error that
/// answers 503 `UO`.
fn overflow(ctx: &Context, cluster: &Cluster, resource: Resource) -> UpstreamError {
    ctx.metrics.overflowed(cluster.name.as_str(), resource);
    UpstreamError::Overflow(cluster.name.clone(), resource)
}

/// Whether one more `resource` fits under the cluster's limit now.
fn admit(ctx: &Context, cluster: &Cluster, resource: Resource) -> Result<(), UpstreamError> {
    if cluster.load.fits(&cluster.limits, resource) {
        Ok(())
    } else {
        Err(overflow(ctx, cluster, resource))
    }
}

/// What a request holds until its response ends.
struct Held {
    /// Its place under `max_requests`.
    _request: Slot,
    /// Its stream on a shared HTTP/2 connection whose streams are capped.
    _stream: Option<pool::Stream>,
}

/// A response body that holds what its request held.
struct Counted {
    body: Incoming,
    _held: Held,
}

impl Body for Counted {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        std::pin::Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

fn failure(
    status: StatusCode,
    flags: &'static str,
    body: &'static str,
    cluster: Option<&Arc<Cluster>>,
) -> Outcome {
    Outcome {
        cluster: cluster.map(|c| c.name.to_string()),
        ..Outcome::local(status, flags, body)
    }
}

/// After a 101, joins the client's and the upstream's upgraded connections.
/// The upgraded connection counts toward `max_connections` until it closes,
/// as in Envoy (the pool lets go of it at the upgrade).
fn splice_upgrade(outcome: &mut Outcome, downstream: hyper::upgrade::OnUpgrade, cluster: &Cluster) {
    if outcome.response.status() != StatusCode::SWITCHING_PROTOCOLS {
        return;
    }
    let upstream = hyper::upgrade::on(&mut outcome.response);
    let counted = cluster.load.force(Resource::Connection);
    tokio::spawn(async move {
        let _counted = counted;
        let (Ok(down), Ok(up)) = (downstream.await, upstream.await) else {
            tracing::debug!("upgrade did not complete");
            return;
        };
        let mut down = hyper_util::rt::TokioIo::new(down);
        let mut up = hyper_util::rt::TokioIo::new(up);
        if let Err(e) = tokio::io::copy_bidirectional(&mut down, &mut up).await {
            tracing::debug!(error = %e, "upgraded connection ended");
        }
    });
}

/// Why a side call got no response.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SideCallError {
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("the request failed: {0}")]
    Send(#[from] hyper::Error),
    #[error("no response within {0:?}")]
    Timeout(std::time::Duration),
}

/// A request of the proxy's own (an ext_authz check) to `cluster`: one
/// attempt, on a pooled connection like any request to it, bounded by
/// `timeout`. `request` carries a path; the authority goes where the
/// cluster's protocol wants it.
pub(crate) async fn side_call(
    ctx: &Context,
    snapshot: &Snapshot,
    cluster: &str,
    original: SocketAddr,
    mut request: Request<UpstreamBody>,
    timeout: std::time::Duration,
) -> Result<Response<Incoming>, SideCallError> {
    let call = async {
        let cluster = snapshot
            .cluster_named(cluster)
            .ok_or_else(|| UpstreamError::NoCluster(ClusterName::new(cluster)))?;
        let chosen = upstream::choose(snapshot, cluster, original, &[], None).await?;
        let _in_flight = chosen.in_flight();
        let http2 = cluster.http2_for(request.version());
        let mut pooled = checkout(ctx, None, cluster, &chosen, http2).await?;
        let authority = request
            .headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        if http2 {
            let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
            *request.uri_mut() = format!("http://{authority}{path}")
                .parse()
                .unwrap_or_default();
            request.headers_mut().remove(http::header::HOST);
            *request.version_mut() = http::Version::HTTP_2;
        }
        let response = pooled.send(request).await;
        match &response {
            Ok(r) => chosen.record(cluster, Attempt::Status(r.status().as_u16())),
            Err(_) => chosen.record(cluster, Attempt::Failed),
        }
        let response = response?;
        let key = pool_key(None, cluster, &chosen, http2);
        pool::checkin(key, pooled, &cluster.reuse);
        Ok(response)
    };
    tokio::time::timeout(timeout, call)
        .await
        .map_err(|_| SideCallError::Timeout(timeout))?
}

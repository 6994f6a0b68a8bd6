//! The HTTP connection manager: serves HTTP/1.1 and HTTP/2 (h2c or inside mTLS)
//! downstream, picks a virtual host and route, and forwards with retries and
//! timeouts to a pooled upstream connection, answering errors with Envoy's
//! status codes and response flags.

mod authenticate;
mod authorize;
mod cors;
pub(crate) mod forward;
pub(crate) mod headers;
mod logged;
mod metered;
mod mirror;
mod rate_limit;
mod read_deadlines;
mod traced;

use logged::{LogFacts, pending, request_head};

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::config::Snapshot;
use crate::config::header_ops::HeaderOps;
use crate::config::listener::{Direction, HttpFilter, HttpManager, RouteSource};
use crate::config::route::{Action, Redirect, Route, RouteTable, VirtualHost};
use crate::config::stats::StandardMetric;
use crate::context::Context;
use crate::metrics::{Exchange, Peer, Reporter, RequestLabels, ServiceLabels};
use crate::upstream::OriginalSource;

pub use headers::TlsPeer;

pub type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// The longest a client may take to send a request's headers, unless the
/// connection manager's `request_headers_timeout` says otherwise.
pub const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// The most request-header bytes accepted (Envoy's max_request_headers_kb: 60).
const MAX_HEADERS: usize = 60 * 1024;

/// The connection a request arrived on.
pub struct Downstream {
    pub direction: Direction,
    pub client: SocketAddr,
    pub original: SocketAddr,
    /// The client's certificate, when it came over mTLS.
    pub tls_peer: Option<TlsPeer>,
    /// The client is outside the mesh (a gateway's): it joins x-forwarded-for.
    pub edge: bool,
    /// The connection was TLS the proxy terminated (x-forwarded-proto: https).
    pub tls: bool,
    /// Upstream connections leave from the client's address (TPROXY inbound).
    pub original_source: Option<OriginalSource>,
    /// The server name the client asked for in its TLS ClientHello.
    pub sni: Option<std::sync::Arc<str>>,
}

/// The listener and filter chain a connection was accepted on.
pub struct ChainId {
    pub listener: Arc<str>,
    pub chain: Arc<str>,
}

/// What a connection keeps for its life: its filter chain's routes and who is
/// on the other end.
struct Connection {
    origin: ChainId,
    ctx: Arc<Context>,
    routes: RouteSource,
    downstream: Downstream,
    /// The filters before the router (RBAC) as the chain had them when the
    /// connection came; each request uses the chain's current ones.
    filters: Vec<HttpFilter>,
    stat_prefix: Arc<str>,
    xff_num_trusted_hops: u32,
    /// The chain has the CORS filter: routes' CORS policies apply.
    cors: bool,
    /// The client spoke HTTP/2 here: a drain tells it with GOAWAY.
    http2: AtomicBool,
    /// Its requests, for the read deadlines to tell heads from the rest.
    exchanges: Arc<read_deadlines::Exchanges>,
}

/// One request's view: its connection, and the config snapshot current when the
/// request arrived (not when the connection did), so a push reaches keep-alive
/// and HTTP/2 clients at their next request.
struct State<'c> {
    ctx: &'c Arc<Context>,
    snapshot: Arc<Snapshot>,
    /// The routes the connection's chain had when it opened.
    routes: &'c RouteSource,
    /// The listener and chain the connection came on.
    origin: &'c ChainId,
    downstream: &'c Downstream,
    cors: bool,
    /// An access log is on: the outcome names its route.
    logging: bool,
    /// The request is traced: the outcome carries its route's decorator.
    tracing: bool,
}

/// Serves HTTP on `io` until the client closes it. When the proxy drains, an
/// HTTP/2 client gets GOAWAY (its streams in flight finish) and an HTTP/1.1
/// client `Connection: close` on its next response, so neither sends a request
/// on a connection about to close.
pub async fn serve<I>(
    ctx: Arc<Context>,
    manager: &HttpManager,
    origin: ChainId,
    io: I,
    downstream: Downstream,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut draining = ctx.draining();
    let connection = Arc::new(Connection {
        origin,
        ctx,
        routes: manager.routes.clone(),
        downstream,
        filters: manager.filters.clone(),
        stat_prefix: Arc::from(manager.stat_prefix.as_str()),
        xff_num_trusted_hops: manager.xff_num_trusted_hops,
        cors: manager.cors,
        http2: AtomicBool::new(false),
        exchanges: Arc::default(),
    });
    let service = {
        let connection = connection.clone();
        hyper::service::service_fn(move |req| handle(connection.clone(), req))
    };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Envoy's limits: 60 KiB of request headers (larger gets 431), and a client
    // that trickles its headers (slowloris) or says nothing is cut off. The
    // heads are timed by `read_deadlines`, since hyper's timer would also cut
    // a keep-alive connection waiting for its next request.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_buf_size(MAX_HEADERS);
    builder.http2().max_header_list_size(MAX_HEADERS as u32);
    let limits = read_deadlines::Limits {
        head: manager
            .request_headers_timeout
            .unwrap_or(HEADER_READ_TIMEOUT),
        idle: manager.idle_timeout,
    };
    let io = read_deadlines::ReadDeadlines::new(io, connection.exchanges.clone(), limits);
    let serving = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(serving);
    let drained = async move {
        // The guard `wait_for` returns must not live across the next await.
        let _ = draining.wait_for(|d| *d).await.map(|_| ());
    };
    let ended = tokio::select! {
        ended = serving.as_mut() => ended,
        () = drained => {
            if connection.http2.load(Ordering::Relaxed) {
                serving.as_mut().graceful_shutdown();
            }
            serving.await
        }
    };
    if let Err(e) = ended {
        tracing::debug!(error = %e, "downstream HTTP connection ended");
    }
}

/// The connection manager of the connection's chain as the config has it
/// now: a policy or an inline route pushed while a keep-alive or HTTP/2
/// connection is open applies to its next request (Envoy would keep the old
/// ones until the connection drains). `None` when the chain is gone.
fn current_manager<'a>(origin: &ChainId, snapshot: &'a Snapshot) -> Option<&'a HttpManager> {
    snapshot
        .listeners
        .get(&*origin.listener)
        .and_then(|l| l.chain_named(&origin.chain))
        .and_then(|c| match &c.filter {
            crate::config::listener::NetworkFilter::Http(m) => Some(m),
            crate::config::listener::NetworkFilter::Tcp(_) => None,
        })
}

/// What became of one request, for the response and the metrics.
pub struct Outcome {
    pub response: Response<ProxyBody>,
    pub flags: &'static str,
    /// Envoy's `%RESPONSE_CODE_DETAILS%` when it is not `via_upstream`.
    pub details: Option<String>,
    pub cluster: Option<String>,
    /// The upstream peer: from its metadata headers, else its certificate.
    pub upstream_peer: Option<Peer>,
    pub request_bytes: u64,
    /// The endpoint tried last, and the local end of its connection.
    pub upstream_host: Option<SocketAddr>,
    pub upstream_local: Option<SocketAddr>,
    /// The route taken, when an access log wants it.
    pub route_name: Option<String>,
    /// The route's `decorator.operation`, when the request is traced.
    pub operation: Option<Arc<str>>,
}

impl Outcome {
    fn local(status: StatusCode, flags: &'static str, body: &'static str) -> Self {
        Self {
            flags,
            ..Self::answer(local_response(status, body))
        }
    }

    /// A route's direct response or redirect (Envoy's `direct_response`).
    fn direct(response: Response<ProxyBody>) -> Self {
        Self {
            details: Some("direct_response".to_owned()),
            ..Self::answer(response)
        }
    }

    /// A response the proxy makes itself, with nothing gone wrong.
    fn answer(response: Response<ProxyBody>) -> Self {
        Self {
            response,
            flags: "",
            details: None,
            cluster: None,
            upstream_peer: None,
            request_bytes: 0,
            upstream_host: None,
            upstream_local: None,
            route_name: None,
            operation: None,
        }
    }
}

/// The service an inbound request was for: the inbound cluster's
/// `istio.services`, as Istio's stats take it, else the one its Host names.
fn inbound_service(state: &State<'_>, authority: &str, cluster: Option<&str>) -> ServiceLabels {
    cluster
        .and_then(|c| state.snapshot.cluster_named(c))
        .and_then(|c| c.service.clone())
        .unwrap_or_else(|| headers::inbound_service(authority, &state.ctx.workload))
}

async fn handle(
    connection: Arc<Connection>,
    mut req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let started = Instant::now();
    let in_flight = connection.exchanges.begin();
    if req.version() == http::Version::HTTP_2 {
        connection.http2.store(true, Ordering::Relaxed);
    }
    let mut state = State {
        ctx: &connection.ctx,
        snapshot: connection.ctx.snapshot(),
        routes: &connection.routes,
        origin: &connection.origin,
        downstream: &connection.downstream,
        cors: connection.cors,
        logging: false,
        tracing: false,
    };
    let manager = current_manager(&connection.origin, &state.snapshot);
    // The chain's filters and logs as they are now, or the filters it had.
    let filters = manager.map_or(connection.filters.as_slice(), |m| m.filters.as_slice());
    let access_logs = manager
        .and_then(|m| m.access_logs.clone())
        .filter(|logs| !logs.is_empty());
    let tracing = manager.and_then(|m| m.tracing.as_deref());
    let stats = manager.and_then(|m| m.stats.clone());
    state.logging = access_logs.is_some();
    let inbound = state.downstream.direction == Direction::Inbound;
    let remote_ip = authorize::remote_ip(&connection, &req);
    let source_meta = headers::prepare_request(&mut req, state.downstream, state.ctx);
    let authority = headers::authority(&req).unwrap_or_default();
    let mut span =
        tracing.and_then(|t| traced::begin(t, &mut req, state.downstream, state.ctx, &authority));
    state.tracing = span.is_some();
    let logged_head = access_logs.as_ref().map(|logs| {
        request_head(&req, &authority, state.downstream.tls, |h| {
            logs.keep_request(h)
        })
    });
    // Metric tags read from the request keep its head (every header).
    let tagged_head = stats.as_ref().filter(|s| s.reads_request).map(|_| {
        request_head(&req, &authority, state.downstream.tls, |h| {
            h.iter().map(|(n, v)| (n.clone(), v.clone())).collect()
        })
    });
    let protocol = if req.version() == http::Version::HTTP_2 {
        "http2"
    } else {
        "http"
    };
    let protocol = if headers::is_grpc(req.headers()) {
        "grpc"
    } else {
        protocol
    };
    let http1 = req.version() < http::Version::HTTP_2;
    let filtered = authorize::check(
        &state,
        &connection,
        filters,
        &mut req,
        &authority,
        remote_ip,
    )
    .await;
    let outcome = match filtered.refused {
        Some(refused) => refused,
        None => route(&state, req, &authority).await,
    };
    let mut response = outcome.response;
    for (name, value) in filtered.response_headers {
        response.headers_mut().insert(name, value);
    }
    let facts = || LogFacts {
        connection: &connection,
        started,
        remote_ip,
        status: response.status(),
        flags: outcome.flags,
        details: outcome.details.as_deref(),
        cluster: outcome.cluster.as_deref(),
        upstream_peer: outcome.upstream_peer.as_ref(),
        upstream_host: outcome.upstream_host,
        upstream_local: outcome.upstream_local,
        route_name: outcome.route_name.clone(),
    };
    let log = access_logs
        .zip(logged_head)
        .map(|(logs, request)| Box::new(pending(Some(logs), request, response.headers(), facts())));
    // A Telemetry's metric tags are read as the response starts.
    let no_headers = http::HeaderMap::new();
    let tagged = stats.as_ref().map(|s| {
        let headers = if s.reads_response {
            response.headers()
        } else {
            &no_headers
        };
        pending(None, tagged_head.unwrap_or_default(), headers, facts())
    });
    if let Some(span) = &mut span {
        span.answered(traced::Answered {
            status: response.status().as_u16(),
            flags: outcome.flags,
            cluster: outcome.cluster.as_deref(),
            operation: outcome.operation.as_deref(),
        });
    }
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        connection.exchanges.upgrade();
    }
    if http1 && state.ctx.is_draining() && response.status() != StatusCode::SWITCHING_PROTOCOLS {
        response.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
    }
    if inbound && state.downstream.tls_peer.is_some() {
        state.ctx.local_metadata.insert(response.headers_mut());
    }
    let downstream_peer = state.downstream.tls_peer.as_ref().map(|p| {
        let mut peer = source_meta.clone().unwrap_or_else(Peer::unknown);
        peer.principal = p.principal();
        if peer.namespace == "unknown" {
            peer.namespace = crate::tcp::identity_peer(p.principal()).namespace;
        }
        peer
    });
    let (reporter, source, destination, service) = if inbound {
        (
            Reporter::Destination,
            downstream_peer.unwrap_or_else(|| source_meta.unwrap_or_else(Peer::unknown)),
            state.ctx.local_peer.clone(),
            inbound_service(&state, &authority, outcome.cluster.as_deref()),
        )
    } else {
        (
            Reporter::Source,
            state.ctx.local_peer.clone(),
            outcome.upstream_peer.unwrap_or_else(Peer::unknown),
            outcome
                .cluster
                .as_deref()
                .and_then(ServiceLabels::from_cluster)
                .unwrap_or_else(|| {
                    headers::outbound_service(&authority, outcome.cluster.as_deref())
                }),
        )
    };
    let exchange = Exchange {
        reporter,
        source: &source,
        destination: &destination,
        service: &service,
        protocol,
        mutual_tls: state.downstream.tls_peer.is_some(),
    };
    let labels = exchange.request_labels(response.status().as_u16(), outcome.flags);
    let shaped = stats.zip(tagged).map(|(stats, tagged)| {
        let entry = tagged.entry(started.elapsed(), outcome.request_bytes, 0);
        Box::new(
            stats.shaped(StandardMetric::HTTP, &labels, &entry, |l, custom| {
                RequestLabels { custom, ..l }
            }),
        )
    });
    let record = metered::Record {
        ctx: state.ctx.clone(),
        labels,
        shaped,
        started,
        request_bytes: outcome.request_bytes,
        in_flight,
        log,
        span,
    };
    Ok(metered::wrap(response, record))
}

/// The route table this request's connection routes by, as current now
/// (inline tables too, from the chain as it is now).
fn route_table<'s>(state: &'s State<'_>) -> Option<&'s RouteTable> {
    let source = current_manager(state.origin, &state.snapshot).map_or(state.routes, |m| &m.routes);
    match source {
        RouteSource::Inline(t) => Some(t),
        RouteSource::Rds(name) => state.snapshot.routes.get(name).map(|t| &**t),
    }
}

/// The virtual host and route `req` matches, for filters that need them
/// before routing (rate limits).
fn matched_route<'s, B>(
    state: &'s State<'_>,
    req: &Request<B>,
    authority: &str,
) -> Option<(&'s VirtualHost, &'s Route)> {
    let vhost = route_table(state)?.virtual_host(authority)?;
    let route = vhost
        .routes
        .iter()
        .find(|r| headers::matches(&r.matcher, req))?;
    Some((vhost, route))
}

async fn route(state: &State<'_>, req: Request<Incoming>, authority: &str) -> Outcome {
    let Some(table) = route_table(state) else {
        return Outcome::local(StatusCode::NOT_FOUND, "NR", "");
    };
    let Some(vhost) = table.virtual_host(authority) else {
        return Outcome::local(StatusCode::NOT_FOUND, "NR", "");
    };
    if vhost.require_tls && !state.downstream.tls {
        let to_https = Redirect {
            scheme: Some("https".to_owned()),
            host: None,
            port: None,
            path: None,
            prefix: None,
            status: 301,
        };
        return Outcome::answer(redirect(&to_https, &req, authority, None, false));
    }
    let Some(route) = vhost
        .routes
        .iter()
        .find(|r| headers::matches(&r.matcher, &req))
    else {
        return Outcome::local(StatusCode::NOT_FOUND, "NR", "");
    };
    let mut delayed = false;
    if let Some(fault) = &route.fault {
        if let Some((delay, share)) = fault.delay
            && share.hits()
        {
            tokio::time::sleep(delay).await;
            delayed = true;
        }
        if let Some((with, share)) = fault.abort
            && share.hits()
        {
            return aborted(with);
        }
    }
    // The CORS filter runs after the fault filter, as Istio orders them, and
    // (as Envoy's) only on routes that forward: not on redirects or direct
    // responses.
    let forwards = matches!(route.action, Action::Forward(_));
    let cors = route
        .cors
        .as_ref()
        .filter(|policy| forwards && state.cors && policy.enabled.hits());
    let origin = req
        .headers()
        .get(http::header::ORIGIN)
        .filter(|o| !o.is_empty())
        .cloned();
    if let (Some(policy), Some(origin)) = (cors, &origin)
        && let Some(answered) = cors::preflight(policy, &req, origin)
    {
        return answered;
    }
    let mut outcome = act(
        state,
        route,
        req,
        authority,
        [&route.headers, &vhost.headers, &table.headers],
    )
    .await;
    if let (Some(policy), Some(origin)) = (cors, &origin) {
        cors::decorate(policy, origin, outcome.response.headers_mut());
    }
    // Envoy flags a delayed request DI unless something else went wrong.
    if delayed && outcome.flags.is_empty() {
        outcome.flags = "DI";
    }
    outcome
}

/// A request the fault filter aborts: the status asked for (flag FI), or for
/// gRPC a trailers-only answer with the grpc-status.
fn aborted(with: crate::config::fault::AbortWith) -> Outcome {
    use crate::config::fault::AbortWith;
    match with {
        AbortWith::Http(status) => Outcome::local(
            StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
            "FI",
            "fault filter abort",
        ),
        AbortWith::Grpc(code) => {
            let mut outcome = Outcome::local(StatusCode::OK, "FI", "");
            let headers = outcome.response.headers_mut();
            headers.insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/grpc"),
            );
            if let Ok(v) = http::HeaderValue::from_str(&code.to_string()) {
                headers.insert("grpc-status", v);
            }
            headers.insert(
                "grpc-message",
                http::HeaderValue::from_static("fault filter abort"),
            );
            outcome
        }
    }
}

/// What the route does, with its (and its host's and table's) response
/// header mutations on the answer, whoever made it.
async fn act(
    state: &State<'_>,
    route: &crate::config::route::Route,
    mut req: Request<Incoming>,
    authority: &str,
    headers: [&HeaderOps; 3],
) -> Outcome {
    let decorator = route.decorator.as_ref().filter(|_| state.tracing);
    if let Some(d) = decorator
        && d.propagate
        && state.downstream.direction == Direction::Outbound
    {
        traced::propagate_operation(&mut req, &d.operation);
    }
    let mut outcome = respond(state, route, req, authority, headers).await;
    outcome.operation = decorator.map(|d| d.operation.clone());
    for ops in headers {
        ops.response.apply(outcome.response.headers_mut());
    }
    if state.logging {
        outcome.route_name = Some(route.name.clone());
    }
    outcome
}

async fn respond(
    state: &State<'_>,
    route: &crate::config::route::Route,
    req: Request<Incoming>,
    authority: &str,
    headers: [&HeaderOps; 3],
) -> Outcome {
    match &route.action {
        Action::Respond { status, body } => Outcome::direct(local_response(
            StatusCode::from_u16(*status).unwrap_or(StatusCode::OK),
            body.clone(),
        )),
        Action::Redirect(r) => {
            let tls = state.downstream.tls;
            Outcome::direct(redirect(r, &req, authority, Some(&route.matcher.path), tls))
        }
        Action::Forward(f) => {
            let routed = forward::Routed {
                route: f,
                matched: &route.matcher.path,
                authority,
                headers,
            };
            forward::forward(state, req, routed).await
        }
    }
}

fn redirect(
    r: &Redirect,
    req: &Request<Incoming>,
    authority: &str,
    matched: Option<&crate::config::route::PathMatch>,
    tls: bool,
) -> Response<ProxyBody> {
    // An HTTP/1.1 request names no scheme: the connection's is the request's.
    let scheme = r
        .scheme
        .as_deref()
        .or(req.uri().scheme_str())
        .unwrap_or(if tls { "https" } else { "http" });
    let host = r
        .host
        .clone()
        .unwrap_or_else(|| authority.split(':').next().unwrap_or_default().to_owned());
    // A scheme's own port is left out, as browsers and the Gateway API
    // expect (`http://a/`, not `http://a:80/`).
    let default_port = match scheme {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    };
    let port = r
        .port
        .filter(|p| Some(*p) != default_port)
        .map(|p| format!(":{p}"))
        .unwrap_or_default();
    let original = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let path = match (&r.path, &r.prefix) {
        (Some(path), _) => path.clone(),
        (None, Some(prefix)) => replace_prefix(original, matched, prefix),
        (None, None) => original.to_owned(),
    };
    let mut response = local_response(
        StatusCode::from_u16(r.status).unwrap_or(StatusCode::MOVED_PERMANENTLY),
        String::new(),
    );
    if let Ok(location) = http::HeaderValue::from_str(&format!("{scheme}://{host}{port}{path}")) {
        response
            .headers_mut()
            .insert(http::header::LOCATION, location);
    }
    response
}

/// The path with the route's matched prefix replaced: `/old/a` under
/// `/old` with `/new` is `/new/a`, with `/` is `/a` (one slash, not two).
fn replace_prefix(
    original: &str,
    matched: Option<&crate::config::route::PathMatch>,
    prefix: &str,
) -> String {
    use crate::config::route::PathMatch;
    let rest = match matched {
        Some(PathMatch::Prefix(p) | PathMatch::SeparatedPrefix(p)) => {
            original.get(p.len()..).unwrap_or_default()
        }
        _ => original,
    };
    let joined = match (prefix.strip_suffix('/'), rest.starts_with('/')) {
        (Some(trimmed), true) => format!("{trimmed}{rest}"),
        _ => format!("{prefix}{rest}"),
    };
    if joined.starts_with('/') {
        joined
    } else {
        format!("/{joined}")
    }
}

/// A response the proxy makes itself.
pub fn local_response(status: StatusCode, body: impl Into<Bytes>) -> Response<ProxyBody> {
    let body = body.into();
    let mut response = Response::new(
        http_body_util::Full::new(body.clone())
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    if !body.is_empty() {
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain"),
        );
    }
    response
}

//! What an HTTP request keeps for its access log line: its head as the
//! proxy forwarded it (after `x-forwarded-for` and `x-request-id` were set,
//! as Envoy logs them), and how it was answered.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::SystemTime;

use http::{HeaderMap, HeaderName, HeaderValue, Request, StatusCode};

use super::Connection;
use crate::access_log::{AccessLogs, Pending, RequestHead, details_for};
use crate::metrics::Peer;

/// The request's head with the headers `keep` keeps.
pub(super) fn request_head<B>(
    req: &Request<B>,
    authority: &str,
    tls: bool,
    keep: impl FnOnce(&HeaderMap) -> Vec<(HeaderName, HeaderValue)>,
) -> RequestHead {
    RequestHead {
        method: req.method().as_str().to_owned(),
        path: req
            .uri()
            .path_and_query()
            .map_or_else(|| req.uri().path().to_owned(), |p| p.as_str().to_owned()),
        authority: (!authority.is_empty()).then(|| authority.to_owned()),
        scheme: Some(if tls { "https" } else { "http" }),
        protocol: protocol(req.version()),
        headers: keep(req.headers()),
    }
}

/// The protocol as Envoy names it in logs and span tags.
pub(super) fn protocol(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

/// How a request was answered, as the log prints it.
pub(super) struct LogFacts<'a> {
    pub connection: &'a Connection,
    pub started: std::time::Instant,
    pub remote_ip: IpAddr,
    pub status: StatusCode,
    pub flags: &'static str,
    pub details: Option<&'a str>,
    pub cluster: Option<&'a str>,
    pub upstream_peer: Option<&'a Peer>,
    pub upstream_host: Option<SocketAddr>,
    pub upstream_local: Option<SocketAddr>,
    pub route_name: Option<String>,
}

/// What the request keeps until its response ends: for `logs` (which keep
/// the response headers they print), or, without, for metric tags (which may
/// read any).
pub(super) fn pending(
    logs: Option<Arc<AccessLogs>>,
    request: RequestHead,
    response_headers: &HeaderMap,
    facts: LogFacts<'_>,
) -> Pending {
    let downstream = &facts.connection.downstream;
    let client = downstream.client;
    let remote = if facts.remote_ip == client.ip() {
        client
    } else {
        SocketAddr::new(facts.remote_ip, 0)
    };
    // An answer that came from the upstream has one: the proxy's own have none.
    let from_upstream = facts.upstream_local.is_some();
    let details = facts
        .details
        .map(str::to_owned)
        .or_else(|| details_for(facts.flags, from_upstream).map(str::to_owned));
    let response_headers = match &logs {
        Some(logs) => logs.keep_response(response_headers),
        None => response_headers
            .iter()
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect(),
    };
    Pending {
        start: SystemTime::now()
            .checked_sub(facts.started.elapsed())
            .unwrap_or(SystemTime::UNIX_EPOCH),
        request,
        response_headers,
        response_code: facts.status.as_u16(),
        flags: facts.flags,
        details,
        upstream_host: facts.upstream_host,
        upstream_local: facts.upstream_local,
        upstream_cluster: facts.cluster.map(str::to_owned),
        upstream_peer_uri: facts
            .upstream_peer
            .map(|p| p.principal.clone())
            .filter(|p| p.starts_with("spiffe://")),
        downstream_local: downstream.original,
        downstream_remote: remote,
        downstream_direct: client,
        downstream_peer_uri: downstream.tls_peer.as_ref().and_then(|p| p.uri.clone()),
        local_uri: downstream
            .tls_peer
            .as_ref()
            .map(|_| Arc::from(facts.connection.ctx.credentials.identity().to_string())),
        sni: downstream.sni.clone(),
        route_name: facts.route_name,
        logs,
    }
}

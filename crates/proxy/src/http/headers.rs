//! What the proxy reads from and writes into requests: route matching, the
//! client-certificate header (XFCC), hop-by-hop headers, request ids.

use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Request};
use oxmesh_identity::SpiffeId;

use super::Downstream;
use crate::config::listener::Direction;
use crate::config::route::{HeaderMatch, RouteMatch, ValueTest};
use crate::context::Context;
use crate::metrics::{Peer, ServiceLabels};
use crate::peer;
use crate::workload::Workload;

pub static XFCC: HeaderName = HeaderName::from_static("x-forwarded-client-cert");
static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static EXTERNAL_ADDRESS: HeaderName = HeaderName::from_static("x-envoy-external-address");

/// A downstream client's certificate, as XFCC and telemetry describe it.
#[derive(Clone, Debug)]
pub struct TlsPeer {
    pub identity: Option<SpiffeId>,
    /// The identity as RBAC principals name it (`spiffe://...`).
    pub uri: Option<String>,
    /// SHA-256 of the leaf certificate's DER, lower-case hex.
    pub hash: String,
}

impl TlsPeer {
    pub fn from_leaf(der: &[u8]) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, der);
        let identity = oxmesh_identity::certificate::identity_of(der);
        Self {
            uri: identity.as_ref().map(ToString::to_string),
            identity,
            hash: digest.as_ref().iter().map(|b| format!("{b:02x}")).collect(),
        }
    }

    pub fn principal(&self) -> String {
        self.identity
            .as_ref()
            .map_or_else(|| "unknown".to_owned(), SpiffeId::to_string)
    }
}

/// Hop-by-hop headers never cross the proxy (RFC 9110 §7.6.1). `te: trailers`
/// is kept: gRPC needs it end to end, and HTTP/2 allows exactly that value.
const HOP_BY_HOP: [&str; 5] = [
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "trailer",
];

/// Cleans the request for the upstream and returns the peer metadata the
/// client's sidecar sent (inbound). XFCC is set from the mTLS client's
/// certificate and removed from anything that did not come over mTLS, so an
/// application can trust it.
pub fn prepare_request<B>(
    req: &mut Request<B>,
    downstream: &Downstream,
    ctx: &Context,
) -> Option<Peer> {
    let upgrade = is_upgrade(req.headers());
    let headers = req.headers_mut();
    strip_hop_by_hop(headers, upgrade);
    let peer_meta = peer::take(headers);
    match (&downstream.tls_peer, downstream.direction) {
        (Some(tls), Direction::Inbound) => {
            let mine = format!(
                "By={};Hash={};Subject=\"\";URI={}",
                ctx.credentials.identity(),
                tls.hash,
                tls.principal()
            );
            let value = match headers.get(&XFCC).and_then(|v| v.to_str().ok()) {
                Some(existing) => format!("{existing},{mine}"),
                None => mine,
            };
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.insert(XFCC.clone(), v);
            }
        }
        _ => {
            headers.remove(&XFCC);
        }
    }
    if !headers.contains_key(&REQUEST_ID) {
        headers.insert(REQUEST_ID.clone(), request_id());
    }
    if downstream.edge {
        // At the edge the client's own claims are not trusted: the scheme is
        // ours to say, and the client's address joins the chain.
        let scheme = if downstream.tls { "https" } else { "http" };
        headers.insert(FORWARDED_PROTO.clone(), HeaderValue::from_static(scheme));
        let client = downstream.client.ip().to_string();
        let chain = match headers.get(&FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
            Some(existing) => format!("{existing}, {client}"),
            None => client.clone(),
        };
        if let (Ok(chain), Ok(client)) = (
            HeaderValue::from_str(&chain),
            HeaderValue::from_str(&client),
        ) {
            headers.insert(FORWARDED_FOR.clone(), chain);
            headers.insert(EXTERNAL_ADDRESS.clone(), client);
        }
    } else if !headers.contains_key(&FORWARDED_PROTO) {
        headers.insert(FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
    }
    // Only a mesh peer's metadata counts; an app's headers are not telemetry.
    peer_meta.filter(|_| downstream.tls_peer.is_some())
}

fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .filter(|name| !(upgrade && name == header::UPGRADE))
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    let te_trailers = headers
        .get(header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    if !te_trailers {
        headers.remove(header::TE);
    }
    if !upgrade {
        headers.remove(header::CONNECTION);
        headers.remove(header::UPGRADE);
    }
}

/// `Connection: upgrade` with an `Upgrade` header (WebSocket and the like).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// A random UUID v4, as Envoy generates `x-request-id`.
fn request_id() -> HeaderValue {
    let a = crate::balance::random_u64();
    let b = crate::balance::random_u64();
    let text = format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0x0fff,
        0x8000 | (b >> 48) & 0x3fff,
        b & 0xffff_ffff_ffff
    );
    HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static("0"))
}

/// `:authority` for HTTP/2, `Host` for HTTP/1.
pub fn authority<B>(req: &Request<B>) -> Option<String> {
    req.uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        })
}

pub fn matches<B>(m: &RouteMatch, req: &Request<B>) -> bool {
    let path = req.uri().path();
    let folded;
    let path = if m.case_sensitive {
        path
    } else {
        folded = path.to_ascii_lowercase();
        &folded
    };
    m.path.matches(path)
        && m.headers.iter().all(|h| header_matches(h, req))
        && m.query.iter().all(|q| {
            let value = query_value(req.uri().query().unwrap_or_default(), &q.name);
            test(&q.test, value.as_deref())
        })
}

pub(crate) fn header_matches<B>(h: &HeaderMatch, req: &Request<B>) -> bool {
    let value = header_value(&h.name, req);
    test(&h.test, value.as_deref()) != h.invert
}

/// A header's first value (pseudo-headers from the request line), as rate
/// limit actions read it.
pub(crate) fn first_header_value<B>(name: &str, req: &Request<B>) -> Option<String> {
    if name.starts_with(':') {
        return header_value(name, req);
    }
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// A header's value as route matching sees it: pseudo-headers from the
/// request line, repeated headers joined with commas.
pub(crate) fn header_value<B>(name: &str, req: &Request<B>) -> Option<String> {
    match name {
        ":method" => Some(req.method().as_str().to_owned()),
        ":path" => req.uri().path_and_query().map(|p| p.as_str().to_owned()),
        ":authority" => authority(req),
        ":scheme" => Some(req.uri().scheme_str().unwrap_or("http").to_owned()),
        name => {
            let values: Vec<&str> = req
                .headers()
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            (!values.is_empty()).then(|| values.join(","))
        }
    }
}

fn test(t: &ValueTest, value: Option<&str>) -> bool {
    match (t, value) {
        (ValueTest::Present(want), v) => v.is_some() == *want,
        (ValueTest::Matches(m), Some(v)) => m.matches(v),
        (ValueTest::Matches(_), None) => false,
    }
}

fn query_value(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| v.to_owned())
    })
}

/// The service an inbound request was for, from its `Host`: `reviews:9080`,
/// `reviews.default` or the full name.
pub fn inbound_service(authority: &str, workload: &Workload) -> ServiceLabels {
    let host = authority.split(':').next().unwrap_or_default();
    if host.is_empty() || host.parse::<std::net::IpAddr>().is_ok() {
        return ServiceLabels::unknown();
    }
    let mut labels = host.split('.');
    let name = labels.next().unwrap_or_default().to_owned();
    let namespace = labels.next().unwrap_or(&workload.namespace).to_owned();
    ServiceLabels {
        host: format!("{name}.{namespace}.svc.{}", workload.dns_domain),
        name,
        namespace,
    }
}

/// Outbound traffic to no known service (PassthroughCluster): named by host.
pub fn outbound_service(authority: &str, cluster: Option<&str>) -> ServiceLabels {
    let host = authority.split(':').next().unwrap_or_default();
    ServiceLabels {
        host: host.to_owned(),
        name: cluster.unwrap_or(host).to_owned(),
        namespace: "unknown".to_owned(),
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub(crate) fn cookie<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

//! Asking an external authorizer, as Envoy's ext_authz filters do (Istio's
//! CUSTOM action): over plain HTTP (the original method and path, chosen
//! headers, no body; 200 allows, any other answer denies with itself) or over
//! gRPC (`envoy.service.auth.v3.Authorization/Check` with the request's
//! attributes; an OK status allows). The check goes to the authorizer's
//! cluster like any request of this proxy, mTLS included.

use std::net::SocketAddr;

use bytes::Bytes;
use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::{Address, HeaderValueOption, SocketAddress};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request};
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest, CheckResponse};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use http_body_util::{Either, Full};

use crate::config::Snapshot;
use crate::config::ext_authz::{ExtAuthz, GrpcService, HttpService, Service};
use crate::config::string_match::Matcher;
use crate::context::Context;
use crate::pool::UpstreamBody;

const CHECK_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";
/// Headers of a denial that are not passed to the client: the authorizer's
/// Host and the ones about its own connection and body.
const FRAMING: [http::HeaderName; 6] = [
    http::header::HOST,
    http::header::CONTENT_LENGTH,
    http::header::TRANSFER_ENCODING,
    http::header::CONNECTION,
    http::header::TE,
    http::header::UPGRADE,
];

/// What the authorizer decided.
#[derive(Debug)]
pub enum Decision {
    Allow(Allowed),
    Deny(Denied),
    /// No usable answer: the filter's `failure_mode_allow` decides.
    Error(String),
}

#[derive(Debug, Default)]
pub struct Allowed {
    /// Set on the request before it goes upstream.
    pub upstream_headers: Vec<(HeaderName, HeaderValue)>,
    pub remove_headers: Vec<HeaderName>,
    /// Set on the response to the client.
    pub downstream_headers: Vec<(HeaderName, HeaderValue)>,
}

#[derive(Debug)]
pub struct Denied {
    pub status: StatusCode,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
}

/// What the check is about.
pub struct Subject<'a> {
    pub source: SocketAddr,
    /// The peer's SPIFFE identity, when it presented one.
    pub source_principal: Option<&'a str>,
    pub destination: SocketAddr,
    pub destination_principal: &'a str,
    /// For HTTP filters, the request; `None` for a connection.
    pub request: Option<RequestView<'a>>,
}

pub struct RequestView<'a> {
    pub method: &'a Method,
    pub uri: &'a Uri,
    pub headers: &'a HeaderMap,
    pub authority: &'a str,
    pub scheme: &'a str,
    pub protocol: &'a str,
}

/// Asks the filter's authorizer about `subject`.
pub async fn ask(
    ctx: &Context,
    snapshot: &Snapshot,
    filter: &ExtAuthz,
    subject: &Subject<'_>,
) -> Decision {
    match &filter.service {
        Service::Http(service) => match &subject.request {
            Some(request) => ask_http(ctx, snapshot, service, subject.destination, request).await,
            None => Decision::Error("an HTTP authorizer cannot check a connection".to_owned()),
        },
        Service::Grpc(service) => ask_grpc(ctx, snapshot, service, subject).await,
    }
}

async fn ask_http(
    ctx: &Context,
    snapshot: &Snapshot,
    service: &HttpService,
    original: SocketAddr,
    request: &RequestView<'_>,
) -> Decision {
    let path = request.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut check = http::Request::new(empty());
    *check.method_mut() = request.method.clone();
    *check.uri_mut() = match format!("{}{path}", service.path_prefix).parse() {
        Ok(uri) => uri,
        Err(e) => return Decision::Error(format!("check path: {e}")),
    };
    let headers = check.headers_mut();
    for (name, value) in request.headers {
        if name == http::header::AUTHORIZATION || matches_any(&service.allowed_headers, name) {
            headers.append(name.clone(), value.clone());
        }
    }
    headers.remove(http::header::HOST);
    if let Ok(host) = HeaderValue::from_str(request.authority) {
        headers.insert(http::header::HOST, host);
    }
    headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    for (name, value) in &service.headers_to_add {
        headers.insert(name.clone(), value.clone());
    }
    let call = Call {
        cluster: &service.cluster,
        original,
        timeout: service.timeout,
    };
    let (parts, body) = match call.exchange(ctx, snapshot, check).await {
        Ok((parts, collected)) => (parts, collected.to_bytes()),
        Err(e) => return Decision::Error(e),
    };
    let pick = |matchers: &[Matcher]| -> Vec<(HeaderName, HeaderValue)> {
        parts
            .headers
            .iter()
            .filter(|(name, _)| matches_any(matchers, name))
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect()
    };
    if parts.status == StatusCode::OK {
        Decision::Allow(Allowed {
            upstream_headers: pick(&service.allowed_upstream_headers),
            remove_headers: Vec::new(),
            downstream_headers: pick(&service.allowed_client_headers_on_success),
        })
    } else {
        let headers = match &service.allowed_client_headers {
            Some(listed) => parts
                .headers
                .iter()
                .filter(|(name, _)| {
                    matches_any(listed, name)
                        || *name == http::header::LOCATION
                        || *name == http::header::WWW_AUTHENTICATE
                })
                .map(|(n, v)| (n.clone(), v.clone()))
                .collect(),
            // Unset: everything but Host and what frames the answer itself.
            None => parts
                .headers
                .iter()
                .filter(|(name, _)| !FRAMING.contains(name))
                .map(|(n, v)| (n.clone(), v.clone()))
                .collect(),
        };
        Decision::Deny(Denied {
            status: parts.status,
            headers,
            body,
        })
    }
}

async fn ask_grpc(
    ctx: &Context,
    snapshot: &Snapshot,
    service: &GrpcService,
    subject: &Subject<'_>,
) -> Decision {
    let check = check_request(subject);
    let answer = crate::grpc_call::unary::<CheckResponse>(
        ctx,
        snapshot,
        service,
        CHECK_PATH,
        subject.destination,
        &check,
    )
    .await;
    match answer {
        Ok(answer) => decide(answer),
        Err(e) => Decision::Error(format!("asking the authorizer: {e}")),
    }
}

/// Where a check goes.
struct Call<'a> {
    cluster: &'a str,
    /// The downstream's original destination (for an original-destination
    /// cluster).
    original: SocketAddr,
    timeout: std::time::Duration,
}

impl Call<'_> {
    /// Sends `check` and reads the whole answer (at most 64 KiB).
    async fn exchange(
        &self,
        ctx: &Context,
        snapshot: &Snapshot,
        check: http::Request<UpstreamBody>,
    ) -> Result<(http::response::Parts, http_body_util::Collected<Bytes>), String> {
        crate::grpc_call::exchange(
            ctx,
            snapshot,
            self.cluster,
            self.original,
            check,
            self.timeout,
        )
        .await
    }
}

/// An OK status allows (with the OK response's header changes); any other
/// denies with the denied response, 403 unless it says otherwise.
fn decide(answer: CheckResponse) -> Decision {
    let ok = answer.status.as_ref().is_none_or(|s| s.code == 0);
    match (ok, answer.http_response) {
        (true, Some(HttpResponse::OkResponse(r))) => Decision::Allow(Allowed {
            upstream_headers: headers(&r.headers),
            remove_headers: r
                .headers_to_remove
                .iter()
                .filter_map(|h| HeaderName::try_from(h.as_str()).ok())
                .collect(),
            downstream_headers: headers(&r.response_headers_to_add),
        }),
        (true, _) => Decision::Allow(Allowed::default()),
        (false, response) => {
            let (status, headers, body) = match response {
                Some(HttpResponse::DeniedResponse(d)) => (
                    d.status
                        .and_then(|s| u16::try_from(s.code).ok())
                        .and_then(|c| StatusCode::from_u16(c).ok()),
                    headers(&d.headers),
                    Bytes::from(d.body),
                ),
                _ => (None, Vec::new(), Bytes::new()),
            };
            Decision::Deny(Denied {
                status: status.unwrap_or(StatusCode::FORBIDDEN),
                headers,
                body,
            })
        }
    }
}

fn headers(options: &[HeaderValueOption]) -> Vec<(HeaderName, HeaderValue)> {
    options
        .iter()
        .filter_map(|o| o.header.as_ref())
        .filter_map(crate::grpc_call::header)
        .collect()
}

fn check_request(subject: &Subject<'_>) -> CheckRequest {
    let request = subject.request.as_ref().map(|r| Request {
        http: Some(HttpRequest {
            method: r.method.to_string(),
            headers: r
                .headers
                .iter()
                .filter_map(|(n, v)| Some((n.as_str().to_owned(), v.to_str().ok()?.to_owned())))
                .chain([
                    (":authority".to_owned(), r.authority.to_owned()),
                    (":method".to_owned(), r.method.to_string()),
                    (":path".to_owned(), path(r.uri).to_owned()),
                ])
                .collect(),
            path: path(r.uri).to_owned(),
            host: r.authority.to_owned(),
            scheme: r.scheme.to_owned(),
            protocol: r.protocol.to_owned(),
            ..Default::default()
        }),
        ..Default::default()
    });
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer {
                address: Some(address(subject.source)),
                principal: subject.source_principal.unwrap_or_default().to_owned(),
                ..Default::default()
            }),
            destination: Some(Peer {
                address: Some(address(subject.destination)),
                principal: subject.destination_principal.to_owned(),
                ..Default::default()
            }),
            request,
            ..Default::default()
        }),
    }
}

fn path(uri: &Uri) -> &str {
    uri.path_and_query().map_or("/", |p| p.as_str())
}

fn address(a: SocketAddr) -> Address {
    Address {
        address: Some(AddressKind::SocketAddress(SocketAddress {
            address: a.ip().to_string(),
            port_specifier: Some(PortSpecifier::PortValue(u32::from(a.port()))),
            ..Default::default()
        })),
    }
}

fn matches_any(matchers: &[Matcher], name: &HeaderName) -> bool {
    matchers.iter().any(|m| m.matches(name.as_str()))
}

fn empty() -> UpstreamBody {
    Either::Left(Full::new(Bytes::new()))
}

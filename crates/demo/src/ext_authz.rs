//! An external authorizer for CUSTOM AuthorizationPolicies, as Istio's
//! `ext-authz` sample: a request carrying `x-ext-authz: allow` is allowed and
//! any other denied (403), over plain HTTP (Envoy's HTTP ext_authz service)
//! and over gRPC (`envoy.service.auth.v3.Authorization`). Every answer carries
//! `x-ext-authz-check-result: allowed|denied`. A connection (a TCP check,
//! gRPC only) is allowed unless its peer's identity ends with one of the
//! suffixes it was given.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use envoy_types::pb::envoy::service::auth::v3::authorization_server::{
    Authorization, AuthorizationServer,
};
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{
    CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse,
};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::google::rpc::Status;
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::net::TcpListener;

pub const CHECK_HEADER: &str = "x-ext-authz";
pub const ALLOW_VALUE: &str = "allow";
pub const RESULT_HEADER: &str = "x-ext-authz-check-result";
/// What a denied request gets back, as Istio's sample words it.
pub const DENIED_BODY: &str =
    "denied by ext_authz for not found header `x-ext-authz: allow` in the request";
/// gRPC's PERMISSION_DENIED.
const PERMISSION_DENIED: i32 = 7;

/// Serves HTTP checks on `http_port` and gRPC checks on `grpc_port`.
pub async fn run(
    http_port: u16,
    grpc_port: u16,
    deny_principals: Vec<String>,
) -> std::io::Result<()> {
    let any = |port| SocketAddr::from(([0, 0, 0, 0], port));
    let http = TcpListener::bind(any(http_port)).await?;
    let grpc = TcpListener::bind(any(grpc_port)).await?;
    tokio::select! {
        served = serve_http(http) => served,
        served = serve_grpc(grpc, deny_principals) => served,
    }
}

/// The HTTP service: every request is a check.
pub async fn serve_http(listener: TcpListener) -> std::io::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let service = hyper::service::service_fn(|req: http::Request<Incoming>| async move {
                Ok::<_, std::convert::Infallible>(http_answer(req.headers()))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

fn http_answer(headers: &http::HeaderMap) -> http::Response<Full<Bytes>> {
    let allowed = headers
        .get(CHECK_HEADER)
        .is_some_and(|v| v.as_bytes() == ALLOW_VALUE.as_bytes());
    let (status, result, body) = if allowed {
        (http::StatusCode::OK, "allowed", "")
    } else {
        (http::StatusCode::FORBIDDEN, "denied", DENIED_BODY)
    };
    let mut response = http::Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(RESULT_HEADER, http::HeaderValue::from_static(result));
    response
}

/// The gRPC service, in plaintext (h2c), as apps in a mesh serve.
pub async fn serve_grpc(
    listener: TcpListener,
    deny_principals: Vec<String>,
) -> std::io::Result<()> {
    let checker = Checker {
        deny_principals: Arc::new(deny_principals),
    };
    tonic::transport::Server::builder()
        .add_service(AuthorizationServer::new(checker))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
        .await
        .map_err(std::io::Error::other)
}

struct Checker {
    deny_principals: Arc<Vec<String>>,
}

#[tonic::async_trait]
impl Authorization for Checker {
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        let attributes = request.into_inner().attributes.unwrap_or_default();
        let http = attributes.request.and_then(|r| r.http);
        let allowed = match &http {
            Some(http) => http
                .headers
                .get(CHECK_HEADER)
                .is_some_and(|v| v == ALLOW_VALUE),
            None => {
                let principal = attributes.source.map(|s| s.principal).unwrap_or_default();
                !self
                    .deny_principals
                    .iter()
                    .any(|d| principal.ends_with(d.as_str()))
            }
        };
        Ok(tonic::Response::new(grpc_answer(allowed)))
    }
}

fn grpc_answer(allowed: bool) -> CheckResponse {
    let result = |value: &str| HeaderValueOption {
        header: Some(HeaderValue {
            key: RESULT_HEADER.to_owned(),
            value: value.to_owned(),
            ..Default::default()
        }),
        ..Default::default()
    };
    if allowed {
        CheckResponse {
            status: Some(Status::default()),
            http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                headers: vec![result("allowed")],
                ..Default::default()
            })),
            ..Default::default()
        }
    } else {
        CheckResponse {
            status: Some(Status {
                code: PERMISSION_DENIED,
                ..Default::default()
            }),
            http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
                status: Some(HttpStatus { code: 403 }),
                headers: vec![result("denied")],
                body: DENIED_BODY.to_owned(),
            })),
            ..Default::default()
        }
    }
}

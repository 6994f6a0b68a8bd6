//! One unary gRPC call from the data path to a cluster of this proxy (the
//! external authorizer, the rate limit service): framed by hand over the
//! pooled upstream connection like any request, mTLS included, so no second
//! HTTP stack is needed.

use std::net::SocketAddr;

use bytes::{BufMut, Bytes, BytesMut};
use envoy_types::pb::envoy::config::core::v3::HeaderValue as EnvoyHeader;
use http::{HeaderName, HeaderValue, Method, Uri};
use http_body_util::{BodyExt, Either, Full};
use prost::Message;

use crate::config::Snapshot;
use crate::config::ext_authz::GrpcService;
use crate::context::Context;
use crate::http::forward::side_call;
use crate::pool::UpstreamBody;

/// Answers beyond this are refused (Envoy buffers them too).
const MAX_ANSWER: usize = 64 * 1024;

/// Sends `request` to `cluster` and reads the whole answer, refused past
/// [`MAX_ANSWER`] bytes.
pub(crate) async fn exchange(
    ctx: &Context,
    snapshot: &Snapshot,
    cluster: &str,
    original: SocketAddr,
    request: http::Request<UpstreamBody>,
    timeout: std::time::Duration,
) -> Result<(http::response::Parts, http_body_util::Collected<Bytes>), String> {
    let response = side_call(ctx, snapshot, cluster, original, request, timeout)
        .await
        .map_err(|e| e.to_string())?;
    let (parts, body) = response.into_parts();
    let collected = http_body_util::Limited::new(body, MAX_ANSWER)
        .collect()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?;
    Ok((parts, collected))
}

/// A header an Envoy service sent (`raw_value` before `value`), when it
/// makes a valid HTTP header.
pub(crate) fn header(h: &EnvoyHeader) -> Option<(HeaderName, HeaderValue)> {
    let name = HeaderName::try_from(h.key.as_str()).ok()?;
    let value = if h.raw_value.is_empty() {
        HeaderValue::from_str(&h.value).ok()?
    } else {
        HeaderValue::from_bytes(&h.raw_value).ok()?
    };
    Some((name, value))
}

/// Calls `path` with `request` and decodes the answer; any failure (no
/// connection, the deadline, a non-OK gRPC status, an undecodable answer)
/// comes back as a sentence.
pub(crate) async fn unary<Answer: Message + Default>(
    ctx: &Context,
    snapshot: &Snapshot,
    service: &GrpcService,
    path: &'static str,
    original: SocketAddr,
    request: &impl Message,
) -> Result<Answer, String> {
    let message = request.encode_to_vec();
    let mut frame = BytesMut::with_capacity(message.len() + 5);
    frame.put_u8(0);
    frame.put_u32(message.len() as u32);
    frame.extend_from_slice(&message);
    let mut call = http::Request::new(Either::Left(Full::new(frame.freeze())));
    *call.method_mut() = Method::POST;
    *call.uri_mut() = Uri::from_static(path);
    let headers = call.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert(http::header::TE, HeaderValue::from_static("trailers"));
    if let Ok(host) = HeaderValue::from_str(&service.authority) {
        headers.insert(http::header::HOST, host);
    }
    let (parts, collected) = exchange(
        ctx,
        snapshot,
        &service.cluster,
        original,
        call,
        service.timeout,
    )
    .await?;
    let trailers = collected.trailers().cloned().unwrap_or_default();
    let status = trailers
        .get("grpc-status")
        .or_else(|| parts.headers.get("grpc-status"))
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if status != "0" {
        return Err(format!("the service answered gRPC status {status:?}"));
    }
    let bytes: Bytes = collected.to_bytes();
    let message = bytes.get(5..).ok_or("an empty gRPC answer")?;
    Answer::decode(message).map_err(|e| format!("an undecodable answer: {e}"))
}

//! The ADS service as tonic's router takes it, with the responses framed here
//! rather than by tonic's encoder. tonic keeps each stream's encode buffer at
//! the size of the largest response it sent (a CDS of a thousand services is
//! over a megabyte) for as long as the stream lives, which at a hundred
//! proxies was most of the control plane's memory; here each response is its
//! own allocation, freed once written. Requests are still decoded by tonic.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes};
use http_body::Frame;
use tokio_stream::Stream;
use tonic::Status;
use tonic::body::Body;
use tonic::codec::{Codec, Streaming};
use tonic::metadata::MetadataMap;
use tonic::server::NamedService;

use super::server::AdsServer;
use super::session::Session;
use super::{Generator, delta, sotw};

const SERVICE: &str = "envoy.service.discovery.v3.AggregatedDiscoveryService";
const SOTW: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const DELTA: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";
/// gRPC's length prefix: a compression flag and a big-endian length.
const PREFIX: usize = 5;

/// [`AdsServer`] as a tower service for tonic's router.
pub struct AdsService<G>(Arc<AdsServer<G>>);

impl<G> Clone for AdsService<G> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<G> AdsService<G> {
    pub fn new(server: AdsServer<G>) -> Self {
        Self(Arc::new(server))
    }
}

impl<G> NamedService for AdsService<G> {
    const NAME: &'static str = SERVICE;
}

type Answer =
    Pin<Box<dyn std::future::Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

impl<G: Generator> tower::Service<http::Request<Body>> for AdsService<G> {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Answer;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Answer {
        let server = self.0.clone();
        Box::pin(async move {
            let path = request.uri().path().to_owned();
            let metadata = MetadataMap::from_headers(request.headers().clone());
            let body = request.into_body();
            let answered = match path.as_str() {
                SOTW => stream::<G, sotw::Connection<G>>(&server, metadata, body).await,
                DELTA => stream::<G, delta::Connection<G>>(&server, metadata, body).await,
                other => Err(Status::unimplemented(format!("no method {other}"))),
            };
            Ok(answered.unwrap_or_else(Status::into_http))
        })
    }
}

async fn stream<G: Generator, S: Session<G> + 'static>(
    server: &AdsServer<G>,
    metadata: MetadataMap,
    body: Body,
) -> Result<http::Response<Body>, Status>
where
    S::Response: prost::Message,
{
    let caller = server.caller(&metadata).await?;
    let mut codec = tonic_prost::ProstCodec::<S::Response, S::Request>::default();
    let requests =
        Streaming::new_request(codec.decoder(), body, None, Some(super::MAX_REQUEST_BYTES));
    let responses = server.open::<S>(requests, caller)?.into_inner();
    let framed = Framed {
        responses,
        done: false,
    };
    http::Response::builder()
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .body(Body::new(framed))
        .map_err(|e| Status::internal(e.to_string()))
}

/// The response stream as HTTP/2 frames: a DATA frame per message, then the
/// trailers with the status.
struct Framed<M> {
    responses: Pin<Box<dyn Stream<Item = Result<M, Status>> + Send>>,
    done: bool,
}

fn trailers(status: &Status) -> Frame<Bytes> {
    let mut map = http::HeaderMap::new();
    if status.add_header(&mut map).is_err() {
        map.insert("grpc-status", http::HeaderValue::from_static("13"));
    }
    Frame::trailers(map)
}

fn frame<M: prost::Message>(message: &M) -> Result<Bytes, Status> {
    let len = message.encoded_len();
    let prefix_len = u32::try_from(len).map_err(|_| Status::internal("response too large"))?;
    let mut buf = Vec::with_capacity(PREFIX + len);
    buf.put_u8(0);
    buf.put_u32(prefix_len);
    message
        .encode(&mut buf)
        .map_err(|e| Status::internal(e.to_string()))?;
    Ok(Bytes::from(buf))
}

impl<M: prost::Message> http_body::Body for Framed<M> {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let next = match self.responses.as_mut().poll_next(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(next) => next,
        };
        let frame = match next {
            Some(Ok(message)) => match frame(&message) {
                Ok(bytes) => Frame::data(bytes),
                Err(status) => {
                    self.done = true;
                    trailers(&status)
                }
            },
            Some(Err(status)) => {
                self.done = true;
                trailers(&status)
            }
            None => {
                self.done = true;
                trailers(&Status::ok(""))
            }
        };
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

//! The roles the bench binary plays inside the pods: the application server
//! (HTTP/1.1 and h2c on one port, gRPC echo) and the gRPC load generator, for
//! which Debian has no standard tool.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;

/// The size of every HTTP response body.
pub const BODY: usize = 1024;
/// The size of every gRPC message's payload.
pub const MESSAGE: usize = 64;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Serves every port in `ports`: GET answers `BODY` bytes, a gRPC call is
/// echoed back message by message, with `grpc-status: 0` when the caller ends.
pub fn serve(ports: &[u16]) {
    runtime().block_on(async move {
        let body = Bytes::from(vec![b'x'; BODY]);
        let mut listeners = Vec::new();
        for &port in ports {
            let listener = tokio::net::TcpListener::bind(("0.0.0.0", port))
                .await
                .expect("bind");
            listeners.push(tokio::spawn(accept(listener, body.clone())));
        }
        for l in listeners {
            let _ = l.await;
        }
    });
}

async fn accept(listener: tokio::net::TcpListener, body: Bytes) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let body = body.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let body = body.clone();
                async move { Ok::<_, Infallible>(answer(req, body)) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn answer(req: hyper::Request<Incoming>, body: Bytes) -> hyper::Response<Reply> {
    let grpc = req
        .headers()
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if grpc {
        let mut response = hyper::Response::new(Reply::Echo {
            inner: req.into_body(),
            ended: false,
        });
        response.headers_mut().insert(
            "content-type",
            hyper::header::HeaderValue::from_static("application/grpc"),
        );
        response
    } else {
        hyper::Response::new(Reply::Fixed(Some(body)))
    }
}

/// A response body: fixed bytes, or the request's own data frames echoed back
/// (gRPC's length-prefixed messages survive as they are) and then trailers.
pub enum Reply {
    Fixed(Option<Bytes>),
    Echo { inner: Incoming, ended: bool },
}

impl Body for Reply {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            Reply::Fixed(body) => Poll::Ready(body.take().map(|b| Ok(Frame::data(b)))),
            Reply::Echo { inner, ended } => loop {
                if *ended {
                    return Poll::Ready(None);
                }
                match Pin::new(&mut *inner).poll_frame(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Ok(data) = frame.into_data() {
                            return Poll::Ready(Some(Ok(Frame::data(data))));
                        }
                    }
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                    Poll::Ready(None) => {
                        *ended = true;
                        let mut trailers = hyper::HeaderMap::new();
                        trailers
                            .insert("grpc-status", hyper::header::HeaderValue::from_static("0"));
                        return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                    }
                }
            },
        }
    }
}

/// gRPC's framing of one message: not compressed, 4-byte length, payload.
fn message() -> Bytes {
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(MESSAGE as u32).to_be_bytes());
    framed.extend(std::iter::repeat_n(b'm', MESSAGE));
    Bytes::from(framed)
}

type Sender = hyper::client::conn::http2::SendRequest<GrpcBody>;
/// A unary call's body is one DATA frame that ends the stream, as gRPC
/// clients send it; a stream's body is fed message by message.
type GrpcBody = http_body_util::Either<
    http_body_util::Full<Bytes>,
    http_body_util::StreamBody<
        tokio_stream::wrappers::ReceiverStream<Result<Frame<Bytes>, Infallible>>,
    >,
>;

/// Drives gRPC calls at `address` for `seconds` from `connections` h2c
/// connections with `streams` callers each, and prints one JSON line:
/// completed calls (or stream messages), errors, rate and latency percentiles
/// in µs. `unary`: one message per call; `stream`: one long call per caller,
/// each message waiting for its echo before the next.
pub fn grpc(address: &str, mode: &str, connections: usize, streams: usize, seconds: u64) {
    let streaming = mode == "stream";
    let address = address.to_owned();
    let (mut all, errors, elapsed) = runtime().block_on(async move {
        let until = Instant::now() + Duration::from_secs(seconds);
        let mut tasks = Vec::new();
        for _ in 0..connections {
            let Some(sender) = connect(&address).await else {
                continue;
            };
            for _ in 0..streams {
                let sender = sender.clone();
                tasks.push(tokio::spawn(async move {
                    if streaming {
                        stream_calls(sender, until).await
                    } else {
                        unary_calls(sender, until).await
                    }
                }));
            }
        }
        let started = Instant::now();
        let mut all = Vec::new();
        let mut errors = if tasks.is_empty() { 1 } else { 0 };
        for t in tasks {
            if let Ok((latencies, failed)) = t.await {
                all.extend(latencies);
                errors += failed;
            }
        }
        (all, errors, started.elapsed().as_secs_f64())
    });
    all.sort_unstable();
    println!("{}", summary(&all, errors, elapsed));
}

/// Latency percentiles of sorted microsecond samples, as one JSON object.
pub fn summary(sorted: &[u64], errors: u64, seconds: f64) -> serde_json::Value {
    let pick = |q: f64| {
        sorted
            .get(((sorted.len() as f64 * q) as usize).min(sorted.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    json!({
        "count": sorted.len(), "errors": errors,
        "rps": sorted.len() as f64 / seconds.max(1e-9),
        "p50": pick(0.50), "p90": pick(0.90), "p99": pick(0.99), "p999": pick(0.999),
    })
}

async fn connect(address: &str) -> Option<Sender> {
    let stream = tokio::net::TcpStream::connect(address).await.ok()?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .ok()?;
    tokio::spawn(conn);
    Some(sender)
}

fn call(path: &'static str, body: GrpcBody) -> hyper::Request<GrpcBody> {
    hyper::Request::post(path)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("host", "bench")
        .body(body)
        .expect("request")
}

async fn unary_calls(mut sender: Sender, until: Instant) -> (Vec<u64>, u64) {
    let (mut latencies, mut errors) = (Vec::new(), 0);
    while Instant::now() < until {
        let started = Instant::now();
        let body = http_body_util::Full::new(message());
        let request = call("/bench.Echo/Unary", http_body_util::Either::Left(body));
        let ok = match sender.send_request(request).await {
            Ok(response) => match response.into_body().collect().await {
                Ok(collected) => {
                    let ok = grpc_ok(collected.trailers());
                    ok && collected.to_bytes().len() == MESSAGE + 5
                }
                Err(_) => false,
            },
            Err(_) => false,
        };
        if ok {
            latencies.push(started.elapsed().as_micros() as u64);
        } else {
            errors += 1;
            if sender.ready().await.is_err() {
                break;
            }
        }
    }
    (latencies, errors)
}

fn grpc_ok(trailers: Option<&hyper::HeaderMap>) -> bool {
    trailers
        .and_then(|t| t.get("grpc-status"))
        .is_some_and(|v| v == "0")
}

async fn stream_calls(mut sender: Sender, until: Instant) -> (Vec<u64>, u64) {
    let (mut latencies, mut errors) = (Vec::new(), 0);
    let (send, receive) = tokio::sync::mpsc::channel(4);
    let body =
        http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(receive));
    let request = call("/bench.Echo/Stream", http_body_util::Either::Right(body));
    let Ok(response) = sender.send_request(request).await else {
        return (latencies, 1);
    };
    let mut body = response.into_body();
    let mut pending = 0usize;
    while Instant::now() < until {
        let started = Instant::now();
        if send.send(Ok(Frame::data(message()))).await.is_err() {
            errors += 1;
            break;
        }
        pending += MESSAGE + 5;
        // The echo may arrive split across frames: wait for all of it.
        while pending > 0 {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        pending = pending.saturating_sub(data.len());
                    }
                }
                _ => {
                    errors += 1;
                    return (latencies, errors);
                }
            }
        }
        latencies.push(started.elapsed().as_micros() as u64);
    }
    drop(send);
    // The call must end with grpc-status 0.
    let mut ok = false;
    while let Some(Ok(frame)) = body.frame().await {
        if let Ok(trailers) = frame.into_trailers() {
            ok = grpc_ok(Some(&trailers));
        }
    }
    if !ok {
        errors += 1;
    }
    (latencies, errors)
}

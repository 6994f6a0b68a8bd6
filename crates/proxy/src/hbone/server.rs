//! The server side: accept mutual TLS from mesh workloads (any identity of
//! the trust domain: who may connect is authorization's question), then
//! HTTP/2; each CONNECT stream is one TCP connection to its authority, opened
//! by the caller-supplied [`Upstream`], which decides and may refuse.
//! Answers as ztunnel's: 400 for a request that is not a CONNECT to
//! `ip:port`, 401 when authorization refuses, 503 when the destination
//! cannot be reached.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use oxmesh_identity::SpiffeId;
use oxmesh_identity::credentials::Credentials;
use oxmesh_identity::verify::PeerPolicy;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};

use super::{CONNECT_TIMEOUT, CONNECTION_WINDOW, FRAME_SIZE, STREAM_WINDOW};

/// How long to wait after a failed accept before the next.
const ACCEPT_BACKOFF: std::time::Duration = std::time::Duration::from_millis(50);

/// One CONNECT, as the upstream side sees it.
#[derive(Clone, Debug)]
pub struct Inbound {
    /// Who called, proven by its certificate.
    pub peer: SpiffeId,
    /// The caller's address (its node proxy's or waypoint's).
    pub remote: SocketAddr,
    /// The address the caller dialled: the destination workload's.
    pub local: SocketAddr,
    /// Where the stream should go.
    pub authority: SocketAddr,
    pub headers: HeaderMap,
}

/// Why a tunnel is refused, and the status the caller gets.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("not allowed: {0}")]
    Denied(String),
    #[error("unavailable: {0}")]
    Unavailable(String),
}

impl Refusal {
    fn status(&self) -> StatusCode {
        match self {
            Refusal::BadRequest(_) => StatusCode::BAD_REQUEST,
            Refusal::Denied(_) => StatusCode::UNAUTHORIZED,
            Refusal::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// Opens the connection a tunnel carries, or refuses it.
pub trait Upstream: Send + Sync + 'static {
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    fn open(&self, inbound: Inbound) -> impl Future<Output = Result<Self::Stream, Refusal>> + Send;
}

/// Connects to the authority itself: the destination is local (a node
/// proxy's pod, a sidecar's app).
pub struct Direct;

impl Upstream for Direct {
    type Stream = TcpStream;

    async fn open(&self, inbound: Inbound) -> Result<TcpStream, Refusal> {
        TcpStream::connect(inbound.authority)
            .await
            .map_err(|e| Refusal::Unavailable(format!("{}: {e}", inbound.authority)))
    }
}

/// Serves HBONE on `listener` until the task is dropped.
pub async fn serve<U: Upstream>(
    listener: TcpListener,
    credentials: Arc<Credentials>,
    upstream: Arc<U>,
) {
    let trust_domain = credentials.identity().trust_domain().clone();
    let mut config = credentials.server_config(PeerPolicy::TrustDomains(vec![trust_domain]));
    config.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    loop {
        let (tcp, remote) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors, say: give the others time to close.
                tracing::warn!(error = %e, "HBONE accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let upstream = upstream.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(acceptor, tcp, remote, upstream).await {
                tracing::debug!(%remote, error = %e, "HBONE connection ended");
            }
        });
    }
}

async fn connection<U: Upstream>(
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: TcpStream,
    remote: SocketAddr,
    upstream: Arc<U>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let local = tcp.local_addr()?;
    let _ = tcp.set_nodelay(true);
    // A client that never finishes its handshake gives its task back.
    let tls = tokio::time::timeout(CONNECT_TIMEOUT, acceptor.accept(tcp))
        .await
        .map_err(|_| "the TLS handshake timed out")??;
    let peer = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|leaf| oxmesh_identity::certificate::identity_of(leaf))
        .ok_or("the client's certificate names no SPIFFE identity")?;
    let service = service_fn(move |request: Request<Incoming>| {
        let upstream = upstream.clone();
        let peer = peer.clone();
        async move { Ok::<_, Infallible>(tunnel(request, peer, remote, local, upstream).await) }
    });
    http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(FRAME_SIZE)
        .serve_connection(TokioIo::new(tls), service)
        .await?;
    Ok(())
}

/// Answers one CONNECT: opens its upstream, then carries bytes both ways
/// once the stream is upgraded.
async fn tunnel<U: Upstream>(
    mut request: Request<Incoming>,
    peer: SpiffeId,
    remote: SocketAddr,
    local: SocketAddr,
    upstream: Arc<U>,
) -> Response<Empty<Bytes>> {
    let inbound = match inbound(&request, peer, remote, local) {
        Ok(inbound) => inbound,
        Err(refusal) => return refuse(&refusal),
    };
    let authority = inbound.authority;
    let mut stream = match upstream.open(inbound).await {
        Ok(stream) => stream,
        Err(refusal) => return refuse(&refusal),
    };
    let upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => {
                let mut tunnel = TokioIo::new(upgraded);
                let _ = crate::relay::relay(&mut tunnel, &mut stream).await;
            }
            Err(e) => {
                tracing::debug!(%authority, error = %e, "HBONE stream ended before it opened")
            }
        }
    });
    Response::new(Empty::new())
}

fn inbound(
    request: &Request<Incoming>,
    peer: SpiffeId,
    remote: SocketAddr,
    local: SocketAddr,
) -> Result<Inbound, Refusal> {
    if request.method() != Method::CONNECT {
        return Err(Refusal::BadRequest(format!(
            "{} is not CONNECT",
            request.method()
        )));
    }
    let authority = request
        .uri()
        .authority()
        .map(|a| a.as_str())
        .and_then(|a| a.parse::<SocketAddr>().ok())
        .ok_or_else(|| Refusal::BadRequest(format!("{} is not ip:port", request.uri())))?;
    Ok(Inbound {
        peer,
        remote,
        local,
        authority,
        headers: request.headers().clone(),
    })
}

fn refuse(refusal: &Refusal) -> Response<Empty<Bytes>> {
    tracing::debug!(%refusal, "HBONE tunnel refused");
    let mut response = Response::new(Empty::new());
    *response.status_mut() = refusal.status();
    response
}

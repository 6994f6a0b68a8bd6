//! Upstream HTTP connections kept for reuse: HTTP/1.1 connections serve one request
//! at a time and return to the pool when their response head arrives (hyper
//! queues nothing on a busy one: checkout takes only ready ones); an HTTP/2
//! connection is shared by every request to that endpoint.
//!
//! Each worker thread has its own pool, as each Envoy worker does: connections
//! and the requests on them stay on one thread, so the pool takes no lock and a
//! request never waits for another thread to wake.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use oxmesh_identity::SpiffeId;

use crate::config::ClusterName;
use crate::upstream::Connected;

/// What goes upstream: a buffered body (replayable for retries) or the client's.
pub type UpstreamBody = Either<Full<Bytes>, Incoming>;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub cluster: ClusterName,
    pub address: SocketAddr,
    pub tls: bool,
    /// Connections made from a client's own address serve only that client.
    pub source: Option<std::net::IpAddr>,
}

pub enum Sender {
    Http1(http1::SendRequest<UpstreamBody>),
    Http2(http2::SendRequest<UpstreamBody>),
}

pub struct Pooled {
    pub sender: Sender,
    pub peer: Option<SpiffeId>,
    /// Requests sent on this connection, for max_requests_per_connection.
    pub requests: u32,
}

/// Idle HTTP/1 connections kept per endpoint; more are closed.
const MAX_IDLE: usize = 64;

thread_local! {
    static IDLE: RefCell<HashMap<PoolKey, Vec<Pooled>>> = RefCell::new(HashMap::new());
}

/// A connection ready for a request, if this thread's pool has one.
pub fn checkout(key: &PoolKey) -> Option<Pooled> {
    IDLE.with_borrow_mut(|idle| {
        let list = idle.get_mut(key)?;
        list.retain(|p| !p.is_closed());
        let position = list.iter().position(Pooled::is_ready)?;
        match &list[position].sender {
            Sender::Http2(s) => Some(Pooled {
                sender: Sender::Http2(s.clone()),
                peer: list[position].peer.clone(),
                requests: 0,
            }),
            Sender::Http1(_) => Some(list.swap_remove(position)),
        }
    })
}

/// Returns an HTTP/1 connection after its response head arrived, or keeps a new
/// HTTP/2 connection for sharing.
pub fn checkin(key: PoolKey, pooled: Pooled, max_requests: Option<u32>) {
    if pooled.is_closed() || max_requests.is_some_and(|max| pooled.requests >= max) {
        return;
    }
    IDLE.with_borrow_mut(|idle| {
        let list = idle.entry(key).or_default();
        let shared = matches!(pooled.sender, Sender::Http2(_));
        if shared && list.iter().any(|p| !p.is_closed()) {
            return;
        }
        if list.len() < MAX_IDLE {
            list.push(pooled);
        }
    });
}

impl Pooled {
    fn is_closed(&self) -> bool {
        match &self.sender {
            Sender::Http1(s) => s.is_closed(),
            Sender::Http2(s) => s.is_closed(),
        }
    }

    fn is_ready(&self) -> bool {
        match &self.sender {
            Sender::Http1(s) => s.is_ready(),
            Sender::Http2(s) => s.is_ready(),
        }
    }

    pub async fn send(
        &mut self,
        request: http::Request<UpstreamBody>,
    ) -> Result<http::Response<Incoming>, hyper::Error> {
        self.requests += 1;
        match &mut self.sender {
            Sender::Http1(s) => {
                s.ready().await?;
                s.send_request(request).await
            }
            Sender::Http2(s) => {
                s.ready().await?;
                s.send_request(request).await
            }
        }
    }
}

/// Speaks HTTP over a new upstream connection; the connection's driver runs as
/// its own task until either side closes.
pub async fn handshake(connected: Connected, http2: bool) -> Result<Pooled, hyper::Error> {
    let io = TokioIo::new(connected.io);
    let sender = if http2 {
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .handshake(io)
            .await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "upstream HTTP/2 connection ended");
            }
        });
        Sender::Http2(sender)
    } else {
        let (sender, connection) = http1::Builder::new().handshake(io).await?;
        tokio::spawn(async move {
            if let Err(e) = connection.with_upgrades().await {
                tracing::debug!(error = %e, "upstream HTTP/1 connection ended");
            }
        });
        Sender::Http1(sender)
    };
    Ok(Pooled {
        sender,
        peer: connected.peer,
        requests: 0,
    })
}

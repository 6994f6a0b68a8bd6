//! HTTP/2 stream caps (`max_concurrent_streams`): how many requests one
//! shared connection carries now, each request's place among them, and the
//! hand-over of a freed place to the first request waiting for one, so a
//! newcomer never overtakes a request already queued (Envoy serves its
//! pending queue first).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use hyper::client::conn::http2;
use oxmesh_identity::SpiffeId;
use tokio::time::Instant;

use super::{PoolKey, Pooled, Sender, UpstreamBody, with_entry};

/// A capped connection: its stream count and cap, the key its waiting
/// requests queue under, and what a request needs to use it.
pub(super) struct Share {
    streams: AtomicU32,
    max: u32,
    key: PoolKey,
    sender: http2::SendRequest<UpstreamBody>,
    peer: Option<SpiffeId>,
    local: Option<std::net::SocketAddr>,
    born: Instant,
}

impl Share {
    pub(super) fn new(
        max: u32,
        key: PoolKey,
        sender: http2::SendRequest<UpstreamBody>,
        peer: Option<SpiffeId>,
        local: Option<std::net::SocketAddr>,
        born: Instant,
    ) -> Arc<Self> {
        Arc::new(Self {
            streams: AtomicU32::new(0),
            max,
            key,
            sender,
            peer,
            local,
            born,
        })
    }

    pub(super) fn max(&self) -> u32 {
        self.max
    }

    /// Whether requests are open on it (then it is not idle, whatever its
    /// idle timeout says).
    pub(super) fn is_busy(&self) -> bool {
        self.streams.load(Ordering::Acquire) > 0
    }

    /// One more stream, if the connection has room for it.
    pub(super) fn take(self: &Arc<Self>) -> Option<Stream> {
        self.streams
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()?;
        Some(Stream(self.clone()))
    }

    /// A request's handle on the connection, with its stream, if there is
    /// room (nothing is cloned when there is not).
    pub(super) fn pooled(self: &Arc<Self>) -> Option<Pooled> {
        let stream = self.take()?;
        Some(Pooled {
            sender: Sender::Http2(self.sender.clone()),
            peer: self.peer.clone(),
            local: self.local,
            requests: 0,
            born: self.born,
            share: Some(self.clone()),
            stream: Some(stream),
        })
    }
}

/// A request's place among its connection's streams, held until its
/// response ends.
pub struct Stream(Arc<Share>);

impl Drop for Stream {
    fn drop(&mut self) {
        self.0.streams.fetch_sub(1, Ordering::AcqRel);
        let share = self.0.clone();
        // The freed place goes to the first request still waiting; what
        // nobody took is dropped once the pool is free again.
        let unclaimed = with_entry(&share.key, |entry| {
            if entry.queued.is_empty() {
                return None;
            }
            entry.pass_on(share.pooled()?)
        });
        drop(unclaimed);
    }
}

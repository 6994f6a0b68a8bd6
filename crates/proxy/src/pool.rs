//! Upstream HTTP connections kept for reuse: HTTP/1.1 connections serve one request
//! at a time and return to the pool when their response head arrives (hyper
//! queues nothing on a busy one: checkout takes only ready ones); an HTTP/2
//! connection is shared by every request to that endpoint, and only one is
//! dialled at a time per key: requests that find one being dialled wait for it
//! instead of each dialling their own. Connections idle for longer than their
//! cluster's idle timeout (Envoy's default: an hour) are closed.
//!
//! A cluster's `max_concurrent_streams` caps the requests one HTTP/2
//! connection carries at once, as Envoy's HTTP/2 pool does: a request that
//! finds every connection full dials another (under `max_connections`),
//! or waits for a stream to end. Without the cap nothing is counted.
//!
//! Each worker thread has its own pool, as each Envoy worker does: connections
//! and the requests on them stay on one thread, so the pool takes no lock and a
//! request never waits for another thread to wake.
//!
//! The cluster's `max_connections` (counted over all workers) bounds the
//! HTTP/1 connections: at the limit, a request waits in its worker's queue
//! for the key until a connection is returned or closes. As in Envoy, a
//! worker's pool for an endpoint may always open its first connection.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use oxmesh_identity::SpiffeId;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use crate::breaker::{Limits, Load, Resource, Slot};
use crate::config::ClusterName;
use crate::config::cluster::Reuse;
use crate::upstream::Connected;

mod streams;

use streams::Share;
pub use streams::Stream;

/// What goes upstream: a buffered body (replayable for retries) or the client's.
pub type UpstreamBody = Either<Full<Bytes>, Incoming>;

/// Envoy's upstream idle timeout when a cluster names none.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// How often each worker looks for idle connections to close.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub cluster: ClusterName,
    pub address: SocketAddr,
    pub tls: bool,
    /// Connections made from a client's own address serve only that client.
    pub source: Option<std::net::IpAddr>,
    /// HTTP/2 and HTTP/1.1 connections pool apart (a cluster that follows
    /// the client's protocol has both).
    pub http2: bool,
}

pub enum Sender {
    Http1(http1::SendRequest<UpstreamBody>),
    Http2(http2::SendRequest<UpstreamBody>),
}

pub struct Pooled {
    pub sender: Sender,
    pub peer: Option<SpiffeId>,
    /// The connection's own address.
    pub local: Option<SocketAddr>,
    /// Requests sent on this connection, for max_requests_per_connection.
    pub requests: u32,
    /// When the connection opened, for max_connection_duration.
    pub born: Instant,
    /// An HTTP/2 connection's stream count, when its cluster caps it.
    share: Option<Arc<Share>>,
    /// The request's stream on it, while the request holds the connection.
    stream: Option<Stream>,
}

/// A pooled connection and when it was last handed out or returned.
struct Idle {
    pooled: Pooled,
    last_used: Instant,
    idle_timeout: Duration,
    /// When it takes no more requests (`max_connection_duration`).
    retires: Option<Instant>,
}

impl Idle {
    /// Open, not idle for too long (a capped connection with requests on
    /// it is not idle), not retired.
    fn alive(&self, now: Instant) -> bool {
        let busy = self.pooled.share.as_ref().is_some_and(|s| s.is_busy());
        !self.pooled.is_closed()
            && (busy || now.duration_since(self.last_used) < self.idle_timeout)
            && self.retires.is_none_or(|at| now < at)
    }

    /// Alive, and shared as the cluster now says (a push that changes the
    /// stream cap retires the connections made under the old one).
    fn usable(&self, now: Instant, max_streams: Option<u32>) -> bool {
        let cap = self.pooled.share.as_ref().map(|s| s.max());
        self.alive(now) && (!self.pooled.is_http2() || cap == max_streams)
    }
}

/// An HTTP/2 connection as the requests waiting for its dial receive it.
#[derive(Clone)]
struct SharedH2 {
    sender: http2::SendRequest<UpstreamBody>,
    peer: Option<SpiffeId>,
    local: Option<SocketAddr>,
    born: Instant,
    share: Option<Arc<Share>>,
}

impl SharedH2 {
    /// A handle on the shared connection, as the pool keeps it.
    fn handle(&self) -> Pooled {
        Pooled {
            sender: Sender::Http2(self.sender.clone()),
            peer: self.peer.clone(),
            local: self.local,
            requests: 0,
            born: self.born,
            share: self.share.clone(),
            stream: None,
        }
    }

    /// A handle for one more request, if the connection has room for it.
    fn pooled(self) -> Option<Pooled> {
        match &self.share {
            Some(share) => share.pooled(),
            None => Some(Pooled {
                sender: Sender::Http2(self.sender),
                peer: self.peer,
                local: self.local,
                requests: 0,
                born: self.born,
                share: None,
                stream: None,
            }),
        }
    }
}

/// What waiters see of a dial.
#[derive(Clone)]
enum Dial {
    Pending,
    Ready(SharedH2),
    Failed(String),
    /// The dialling request went away first.
    Abandoned,
}

#[derive(Default)]
struct Entry {
    idle: Vec<Idle>,
    /// The HTTP/2 dial in progress, by the ticket that owns it. The ticket
    /// holds the sender too, so its result reaches the waiters from whatever
    /// thread it finishes on.
    dialing: Option<(u64, Arc<watch::Sender<Dial>>)>,
    /// Connections this pool has open or is dialling for the key.
    open: usize,
    /// HTTP/1 requests waiting for a connection, first come first served.
    queued: VecDeque<oneshot::Sender<Handoff>>,
}

impl Entry {
    fn is_unused(&self) -> bool {
        self.idle.is_empty() && self.dialing.is_none() && self.open == 0 && self.queued.is_empty()
    }

    fn opened(&mut self, key: &PoolKey, slot: Slot, over_limit: bool) -> Opened {
        self.open += 1;
        Opened {
            key: key.clone(),
            _slot: slot,
            over_limit,
        }
    }

    /// Tells the first request still waiting that it may claim again.
    fn wake_one(&mut self) {
        while let Some(waiter) = self.queued.pop_front() {
            if waiter.send(Handoff::ClaimAgain).is_ok() {
                return;
            }
        }
    }

    /// Gives a connection to the first request still waiting; returns it
    /// when nobody waits.
    fn pass_on(&mut self, mut pooled: Pooled) -> Option<Pooled> {
        while let Some(waiter) = self.queued.pop_front() {
            match waiter.send(Handoff::Connection(pooled)) {
                Ok(()) => return None,
                Err(Handoff::Connection(back)) => pooled = back,
                Err(Handoff::ClaimAgain) => return None,
            }
        }
        Some(pooled)
    }
}

/// What a queued request receives.
enum Handoff {
    /// A connection another request gave back.
    Connection(Pooled),
    /// A connection closed: there may be room to dial.
    ClaimAgain,
}

/// A connection's place in its cluster's count and in its worker's pool,
/// held by the connection (by its dial until then) and given back when it
/// closes, waking a request queued for its key.
pub struct Opened {
    key: PoolKey,
    _slot: Slot,
    /// Opened over the limit (a worker's first connection to the endpoint).
    over_limit: bool,
}

impl Drop for Opened {
    fn drop(&mut self) {
        with_entry(&self.key, |entry| {
            entry.open = entry.open.saturating_sub(1);
            entry.wake_one();
            None::<()>
        });
    }
}

/// `f` on this thread's pool entry for `key`. At thread exit the pool may
/// be gone, and inside the pool's own work it is borrowed: nothing waits
/// then.
fn with_entry<R>(key: &PoolKey, f: impl FnOnce(&mut Entry) -> Option<R>) -> Option<R> {
    POOL.try_with(|pool| {
        let mut pool = pool.try_borrow_mut().ok()?;
        f(pool.get_mut(key)?)
    })
    .ok()
    .flatten()
}

/// Idle HTTP/1 connections kept per endpoint; more are closed.
const MAX_IDLE: usize = 64;

thread_local! {
    static POOL: RefCell<HashMap<PoolKey, Entry>> = RefCell::new(HashMap::new());
    static SWEEPING: Cell<bool> = const { Cell::new(false) };
}

static NEXT_TICKET: AtomicU64 = AtomicU64::new(1);

/// What a request gets from the pool.
pub enum Claim {
    /// A connection for it (an HTTP/1 one may still be finishing a response:
    /// wait until it is ready).
    Ready(Pooled),
    /// Another request is dialling the shared HTTP/2 connection: wait for it.
    Wait(Waiter),
    /// At the connection limit: wait for a connection to come back or close.
    Queued(Queued),
    /// Dial, and report how it went through the ticket.
    Dial(Ticket),
}

/// The cluster's breakers and connection reuse, as the pool needs them.
pub struct Breakers<'a> {
    pub limits: &'a Limits,
    pub load: &'a Arc<Load>,
    pub reuse: &'a Reuse,
}

/// Asks this thread's pool for a connection to `key`; `shared` for HTTP/2.
pub fn claim(key: &PoolKey, shared: bool, breakers: &Breakers<'_>) -> Claim {
    POOL.with_borrow_mut(|pool| {
        let now = Instant::now();
        let entry = pool.entry(key.clone()).or_default();
        let cap = breakers.reuse.max_streams;
        entry.idle.retain(|i| i.usable(now, cap));
        if let Some(ready) = take_ready(entry, now) {
            return Claim::Ready(ready);
        }
        if !shared {
            return claim_http1(key, entry, breakers);
        }
        // A dial still pending is joined; one that ended (its ticket finished
        // elsewhere, or went away) is no longer a dial.
        if let Some((_, tx)) = &entry.dialing {
            if matches!(*tx.borrow(), Dial::Pending) {
                return Claim::Wait(Waiter(tx.subscribe()));
            }
            entry.dialing = None;
        }
        // One shared connection per endpoint and worker: always allowed.
        // With a stream cap, more only under the limit (past the worker's
        // first); else the request waits for a stream to end.
        let opened = if cap.is_some() {
            match open(key, entry, breakers) {
                Some(opened) => opened,
                None => return queue(key, entry),
            }
        } else {
            open_anyway(key, entry, breakers)
        };
        let id = NEXT_TICKET.fetch_add(1, Ordering::Relaxed);
        let sender = Arc::new(watch::Sender::new(Dial::Pending));
        entry.dialing = Some((id, sender.clone()));
        Claim::Dial(Ticket {
            key: Some(key.clone()),
            id,
            sender: Some(sender),
            over_limit: opened.over_limit,
            opened: Some(opened),
        })
    })
}

/// A ready connection: an idle HTTP/1 one, or a shared HTTP/2 one with
/// room for another stream.
fn take_ready(entry: &mut Entry, now: Instant) -> Option<Pooled> {
    for position in 0..entry.idle.len() {
        let idle = &mut entry.idle[position];
        if !idle.pooled.is_ready() {
            continue;
        }
        // A capped connection is asked for room before anything is cloned.
        let pooled = if let Some(share) = &idle.pooled.share {
            share.pooled()
        } else if let Some(shared) = idle.pooled.shared() {
            shared.pooled()
        } else {
            return Some(entry.idle.swap_remove(position).pooled);
        };
        if pooled.is_some() {
            idle.last_used = now;
            return pooled;
        }
    }
    None
}

/// HTTP/1 with no ready connection: dial under the limit (or for the
/// worker's first connection to the endpoint); at the limit, take a
/// connection still busy with its response, else queue.
fn claim_http1(key: &PoolKey, entry: &mut Entry, breakers: &Breakers<'_>) -> Claim {
    if let Some(opened) = open(key, entry, breakers) {
        return Claim::Dial(Ticket {
            key: None,
            id: 0,
            sender: None,
            over_limit: opened.over_limit,
            opened: Some(opened),
        });
    }
    if let Some(idle) = entry.idle.pop() {
        return Claim::Ready(idle.pooled);
    }
    queue(key, entry)
}

/// Waits in line for the key: for a connection given back (HTTP/1), or for
/// room to claim again.
fn queue(key: &PoolKey, entry: &mut Entry) -> Claim {
    let (tx, rx) = oneshot::channel();
    entry.queued.push_back(tx);
    Claim::Queued(Queued {
        key: key.clone(),
        handoff: Some(rx),
    })
}

/// A new connection's place under the cluster's limit; over it only for the
/// worker's first connection to the endpoint, as Envoy allows.
fn open(key: &PoolKey, entry: &mut Entry, breakers: &Breakers<'_>) -> Option<Opened> {
    let (slot, over) = match breakers.load.acquire(breakers.limits, Resource::Connection) {
        Some(slot) => (slot, false),
        None if entry.open == 0 => (breakers.load.force(Resource::Connection), true),
        None => return None,
    };
    Some(entry.opened(key, slot, over))
}

/// A new connection's place, over the limit if need be.
fn open_anyway(key: &PoolKey, entry: &mut Entry, breakers: &Breakers<'_>) -> Opened {
    let (slot, over) = match breakers.load.acquire(breakers.limits, Resource::Connection) {
        Some(slot) => (slot, false),
        None => (breakers.load.force(Resource::Connection), true),
    };
    entry.opened(key, slot, over)
}

/// An HTTP/1 request waiting for a connection at the limit.
pub struct Queued {
    key: PoolKey,
    handoff: Option<oneshot::Receiver<Handoff>>,
}

impl Queued {
    /// A connection handed over, or `None`: claim again.
    pub async fn wait(mut self) -> Option<Pooled> {
        let handoff = self.handoff.as_mut()?;
        let got = handoff.await;
        self.handoff = None;
        match got {
            Ok(Handoff::Connection(pooled)) => Some(pooled),
            Ok(Handoff::ClaimAgain) | Err(_) => None,
        }
    }
}

impl Drop for Queued {
    /// A request that gives up waiting (its client went, its timeout hit)
    /// passes on what it was handed, so the next in line is not left waiting.
    fn drop(&mut self) {
        let Some(mut handoff) = self.handoff.take() else {
            return;
        };
        handoff.close();
        let _ = POOL.try_with(|pool| {
            let Ok(mut pool) = pool.try_borrow_mut() else {
                return;
            };
            let Some(entry) = pool.get_mut(&self.key) else {
                return;
            };
            match handoff.try_recv() {
                Ok(Handoff::ClaimAgain) => entry.wake_one(),
                // With nobody else waiting it is dropped; its closing makes
                // room for a new one.
                Ok(Handoff::Connection(pooled)) => drop(entry.pass_on(pooled)),
                Err(_) => {}
            }
        });
    }
}

/// A request waiting for another's HTTP/2 dial.
pub struct Waiter(watch::Receiver<Dial>);

/// Why a shared dial gave no connection.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the shared connection attempt failed: {0}")]
pub struct DialFailed(String);

impl Waiter {
    /// The shared connection, or why its dial failed; `None` when the dialling
    /// request went away first, or the new connection is already full
    /// (claim again).
    pub async fn wait(mut self) -> Option<Result<Pooled, DialFailed>> {
        let state = self
            .0
            .wait_for(|d| !matches!(d, Dial::Pending))
            .await
            .ok()?
            .clone();
        match state {
            Dial::Ready(shared) => shared.pooled().map(Ok),
            Dial::Failed(reason) => Some(Err(DialFailed(reason))),
            Dial::Pending | Dial::Abandoned => None,
        }
    }
}

/// The right to dial for a key. For HTTP/2 it stands for the one dial in
/// progress; dropping it unfinished lets the waiters claim again.
pub struct Ticket {
    key: Option<PoolKey>,
    id: u64,
    sender: Option<Arc<watch::Sender<Dial>>>,
    opened: Option<Opened>,
    /// The new connection goes over the cluster's `max_connections`.
    pub over_limit: bool,
}

impl Ticket {
    /// The new connection's place, for the connection to hold.
    pub fn take_opened(&mut self) -> Option<Opened> {
        self.opened.take()
    }

    /// Reports the dial's result to the waiters; a new HTTP/2 connection joins
    /// the pool so later requests share it, its first stream the dialler's.
    pub fn finish<E: std::fmt::Display>(mut self, result: &mut Result<Pooled, E>, reuse: &Reuse) {
        let (Some(key), Some(sender)) = (self.key.take(), self.sender.take()) else {
            return;
        };
        self.forget(&key);
        let state = match result {
            Ok(pooled) => match pooled.shared() {
                Some(mut shared) => {
                    // The new connection's count, and the dialler its first.
                    shared.share = reuse.max_streams.map(|max| {
                        Share::new(
                            max,
                            key.clone(),
                            shared.sender.clone(),
                            shared.peer.clone(),
                            shared.local,
                            shared.born,
                        )
                    });
                    pooled.share = shared.share.clone();
                    pooled.stream = shared.share.as_ref().and_then(Share::take);
                    keep(key, shared.handle(), reuse);
                    Dial::Ready(shared)
                }
                None => Dial::Abandoned,
            },
            Err(e) => Dial::Failed(e.to_string()),
        };
        sender.send_replace(state);
    }

    /// Removes this ticket's dial from this thread's pool, if it is there.
    fn forget(&self, key: &PoolKey) {
        POOL.with_borrow_mut(|pool| {
            if let Some(entry) = pool.get_mut(key)
                && entry.dialing.as_ref().is_some_and(|(id, _)| *id == self.id)
            {
                entry.dialing = None;
            }
        });
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        // Unfinished (the request went away mid-dial): the waiters claim again.
        if let (Some(key), Some(sender)) = (self.key.take(), self.sender.take()) {
            self.forget(&key);
            sender.send_replace(Dial::Abandoned);
        }
    }
}

/// Returns an HTTP/1 connection after its response head arrived.
pub fn checkin(key: PoolKey, pooled: Pooled, reuse: &Reuse) {
    let now = Instant::now();
    let worn = reuse.max_requests.is_some_and(|max| pooled.requests >= max)
        || reuse
            .max_duration
            .is_some_and(|max| now.duration_since(pooled.born) >= max);
    if pooled.is_closed() || worn {
        return;
    }
    let Some(pooled) = hand_over(&key, pooled) else {
        return;
    };
    if matches!(pooled.sender, Sender::Http2(_)) {
        // The pool already holds it (or a newer one): nothing to return.
        let held = POOL.with_borrow(|pool| {
            pool.get(&key)
                .is_some_and(|e| e.idle.iter().any(|i| !i.pooled.is_closed()))
        });
        if held {
            return;
        }
    }
    keep(key, pooled, reuse);
}

/// Gives an HTTP/1 connection to the first request queued for its key;
/// returns it when nobody waits.
fn hand_over(key: &PoolKey, pooled: Pooled) -> Option<Pooled> {
    if matches!(pooled.sender, Sender::Http2(_)) {
        return Some(pooled);
    }
    POOL.with_borrow_mut(|pool| match pool.get_mut(key) {
        Some(entry) => entry.pass_on(pooled),
        None => Some(pooled),
    })
}

fn keep(key: PoolKey, mut pooled: Pooled, reuse: &Reuse) {
    // What the pool keeps holds no request's stream.
    pooled.stream = None;
    sweep_in_background();
    POOL.with_borrow_mut(|pool| {
        let entry = pool.entry(key).or_default();
        if entry.idle.len() < MAX_IDLE {
            let retires = reuse.max_duration.map(|max| pooled.born + max);
            entry.idle.push(Idle {
                pooled,
                last_used: Instant::now(),
                // Zero turns the timeout off, as in Envoy.
                idle_timeout: match reuse.idle_timeout {
                    None => DEFAULT_IDLE_TIMEOUT,
                    Some(Duration::ZERO) => Duration::MAX,
                    Some(timeout) => timeout,
                },
                retires,
            });
        }
    });
}

/// Once per thread: a task that closes idle connections past their timeout,
/// so a pool nobody uses any more lets its connections go.
fn sweep_in_background() {
    if SWEEPING.replace(true) {
        return;
    }
    if tokio::runtime::Handle::try_current().is_err() {
        SWEEPING.set(false);
        return;
    }
    tokio::spawn(async {
        loop {
            tokio::time::sleep(SWEEP_EVERY).await;
            sweep(Instant::now());
        }
    });
}

/// Drops the connections on this thread idle past their timeout, and the
/// entries left empty.
fn sweep(now: Instant) {
    POOL.with_borrow_mut(|pool| {
        pool.retain(|_, entry| {
            entry.idle.retain(|i| i.alive(now));
            !entry.is_unused()
        });
    });
}

impl Pooled {
    fn is_closed(&self) -> bool {
        match &self.sender {
            Sender::Http1(s) => s.is_closed(),
            Sender::Http2(s) => s.is_closed(),
        }
    }

    /// Waits until the connection can take a request (an HTTP/1 one may
    /// still be reading the previous response).
    pub async fn ready(&mut self) -> Result<(), hyper::Error> {
        match &mut self.sender {
            Sender::Http1(s) => s.ready().await,
            Sender::Http2(s) => s.ready().await,
        }
    }

    pub(crate) fn is_http2(&self) -> bool {
        matches!(self.sender, Sender::Http2(_))
    }

    /// The shared HTTP/2 connection, if this is one.
    fn shared(&self) -> Option<SharedH2> {
        match &self.sender {
            Sender::Http2(s) => Some(SharedH2 {
                sender: s.clone(),
                peer: self.peer.clone(),
                local: self.local,
                born: self.born,
                share: self.share.clone(),
            }),
            Sender::Http1(_) => None,
        }
    }

    /// The request's stream, for its response body to hold until it ends.
    pub(crate) fn take_stream(&mut self) -> Option<Stream> {
        self.stream.take()
    }

    pub(crate) fn is_ready(&self) -> bool {
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
/// its own task until either side closes, holding the connection's place.
pub async fn handshake(
    connected: Connected,
    http2: bool,
    opened: Option<Opened>,
    reuse: &Reuse,
) -> Result<Pooled, hyper::Error> {
    let io = TokioIo::new(connected.io);
    let sender = if http2 {
        let mut builder = http2::Builder::new(TokioExecutor::new());
        if let Some(ping) = reuse.ping {
            // PINGs whether or not requests are open, as Envoy sends them.
            builder
                .timer(TokioTimer::new())
                .keep_alive_interval(ping.interval)
                .keep_alive_timeout(ping.timeout)
                .keep_alive_while_idle(true);
        }
        let (sender, connection) = builder.handshake(io).await?;
        tokio::spawn(async move {
            let _opened = opened;
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "upstream HTTP/2 connection ended");
            }
        });
        Sender::Http2(sender)
    } else {
        let (sender, connection) = http1::Builder::new().handshake(io).await?;
        tokio::spawn(async move {
            let _opened = opened;
            if let Err(e) = connection.with_upgrades().await {
                tracing::debug!(error = %e, "upstream HTTP/1 connection ended");
            }
        });
        Sender::Http1(sender)
    };
    Ok(Pooled {
        sender,
        peer: connected.peer,
        local: connected.local,
        requests: 0,
        born: Instant::now(),
        share: None,
        stream: None,
    })
}

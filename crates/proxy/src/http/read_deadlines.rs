//! Deadlines on a downstream HTTP connection's reads. hyper's own header
//! timer also runs while a keep-alive connection waits for its next request,
//! so an idle connection was cut after the header timeout (10 s) where Envoy
//! keeps it for an hour, and a client reusing it as it closed saw a reset.
//! Here a request head is timed from its first byte (the first request's from
//! the accept, so a client that connects and says nothing is cut off too),
//! and the quiet time between requests has the connection manager's idle
//! timeout instead. An HTTP/2 connection is timed to its first bytes only:
//! hyper's HTTP/2 owns it after the preface.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// The client preface every HTTP/2 connection begins with.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The requests of one connection, as its service sees them: what the read
/// side needs to tell a request head from a body and from the quiet between.
#[derive(Debug, Default)]
pub struct Exchanges {
    /// Requests whose head has been read, ever.
    begun: AtomicU64,
    /// Requests begun and not yet answered to the end.
    open: AtomicU64,
    /// The connection was upgraded (101): its bytes are no longer HTTP.
    upgraded: AtomicBool,
}

/// One request from its head to the end of its response.
#[derive(Debug)]
pub struct InFlight(Arc<Exchanges>);

impl Exchanges {
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.open.fetch_add(1, Ordering::Relaxed);
        self.begun.fetch_add(1, Ordering::Release);
        InFlight(self.clone())
    }

    pub fn upgrade(&self) {
        self.upgraded.store(true, Ordering::Relaxed);
    }

    fn begun(&self) -> u64 {
        self.begun.load(Ordering::Acquire)
    }

    fn busy(&self) -> bool {
        self.open.load(Ordering::Relaxed) > 0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How long a client may take over a request head, and may stay quiet
/// between requests (`None`: as long as it likes).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub head: Duration,
    pub idle: Option<Duration>,
}

/// What the timer is timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timing {
    /// The head of the request after the first `begun`.
    Head { begun: u64 },
    /// The quiet between requests.
    Idle,
    /// A request is being served: nothing to time.
    Nothing,
    /// HTTP/2 or an upgraded connection: never again.
    Off,
}

pub struct ReadDeadlines<I> {
    inner: I,
    exchanges: Arc<Exchanges>,
    limits: Limits,
    timer: Pin<Box<Sleep>>,
    timing: Timing,
    /// No byte has been read yet.
    fresh: bool,
}

impl<I> ReadDeadlines<I> {
    pub fn new(inner: I, exchanges: Arc<Exchanges>, limits: Limits) -> Self {
        Self {
            inner,
            exchanges,
            limits,
            timer: Box::pin(tokio::time::sleep(limits.head)),
            timing: Timing::Head { begun: 0 },
            fresh: true,
        }
    }

    fn arm(&mut self, timing: Timing, limit: Duration) {
        self.timing = timing;
        self.timer.as_mut().reset(Instant::now() + limit);
    }

    fn on_bytes(&mut self, read: &[u8]) {
        if std::mem::take(&mut self.fresh) && is_h2_preface(read) {
            self.timing = Timing::Off;
        }
        if self.timing == Timing::Off || self.exchanges.upgraded.load(Ordering::Relaxed) {
            self.timing = Timing::Off;
            return;
        }
        if self.exchanges.busy() {
            // A body of the request being served.
            self.timing = Timing::Nothing;
            return;
        }
        let begun = self.exchanges.begun();
        if self.timing != (Timing::Head { begun }) {
            self.arm(Timing::Head { begun }, self.limits.head);
        }
    }

    /// A read found nothing to read: is it waiting too long?
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Timing::Head { begun } = self.timing
            && begun != self.exchanges.begun()
        {
            // That head was read: a request has begun since.
            self.timing = Timing::Nothing;
        }
        if self.exchanges.upgraded.load(Ordering::Relaxed) {
            self.timing = Timing::Off;
        }
        if self.timing == Timing::Off || self.exchanges.busy() {
            if self.timing != Timing::Off {
                self.timing = Timing::Nothing;
            }
            return Poll::Pending;
        }
        if self.timing == Timing::Nothing {
            match self.limits.idle {
                Some(idle) => self.arm(Timing::Idle, idle),
                None => return Poll::Pending,
            }
        }
        match self.timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                match self.timing {
                    Timing::Idle => "idle longer than the idle timeout",
                    _ => "no request head within the request header timeout",
                },
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// The first bytes read begin the HTTP/2 preface (all of them, when fewer).
fn is_h2_preface(read: &[u8]) -> bool {
    let n = read.len().min(H2_PREFACE.len());
    n >= 2 && read[..n] == H2_PREFACE[..n]
}

impl<I: AsyncRead + Unpin> AsyncRead for ReadDeadlines<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if this.timing != Timing::Off && buf.filled().len() > before {
                    this.on_bytes(&buf.filled()[before..]);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => this.poll_expired(cx),
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for ReadDeadlines<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    const LIMITS: Limits = Limits {
        head: Duration::from_secs(10),
        idle: Some(Duration::from_secs(3600)),
    };

    fn wrapped() -> (DuplexStream, ReadDeadlines<DuplexStream>, Arc<Exchanges>) {
        let (peer, io) = tokio::io::duplex(256);
        let exchanges = Arc::new(Exchanges::default());
        (
            peer,
            ReadDeadlines::new(io, exchanges.clone(), LIMITS),
            exchanges,
        )
    }

    async fn read_err(io: &mut ReadDeadlines<DuplexStream>) -> (io::Error, Duration) {
        let started = Instant::now();
        let mut buf = [0u8; 64];
        let error = io.read(&mut buf).await.expect_err("cut off");
        (error, started.elapsed())
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_is_cut_off_at_the_head_limit() {
        let (_peer, mut io, _) = wrapped();
        let (error, after) = read_err(&mut io).await;
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(after, LIMITS.head);
    }

    #[tokio::test(start_paused = true)]
    async fn a_keep_alive_connection_waits_the_idle_limit_not_the_head_limit() {
        let (mut peer, mut io, exchanges) = wrapped();
        let mut buf = [0u8; 64];
        peer.write_all(b"GET / HTTP/1.1\r\n\r\n")
            .await
            .expect("write");
        assert!(io.read(&mut buf).await.expect("head") > 0);
        // The head is read and served; its response ends.
        drop(exchanges.begin());
        let (error, after) = read_err(&mut io).await;
        assert_eq!(error.to_string(), "idle longer than the idle timeout");
        assert_eq!(after, Duration::from_secs(3600));
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickled_second_head_is_timed_from_its_first_byte() {
        let (mut peer, mut io, exchanges) = wrapped();
        let mut buf = [0u8; 64];
        peer.write_all(b"GET / HTTP/1.1\r\n\r\n")
            .await
            .expect("write");
        assert!(io.read(&mut buf).await.expect("head") > 0);
        drop(exchanges.begin());
        tokio::time::sleep(Duration::from_secs(60)).await;
        peer.write_all(b"GET / HT").await.expect("write");
        assert!(io.read(&mut buf).await.expect("part of a head") > 0);
        let (error, after) = read_err(&mut io).await;
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(after, LIMITS.head);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_body_is_not_timed_while_its_request_is_served() {
        let (mut peer, mut io, exchanges) = wrapped();
        let mut buf = [0u8; 64];
        peer.write_all(b"POST / HTTP/1.1\r\n").await.expect("write");
        assert!(io.read(&mut buf).await.expect("head") > 0);
        let request = exchanges.begin();
        peer.write_all(b"body").await.expect("write");
        assert!(io.read(&mut buf).await.expect("body") > 0);
        let quiet = tokio::time::timeout(Duration::from_secs(600), io.read(&mut buf)).await;
        assert!(quiet.is_err(), "a request in flight waits for its body");
        drop(request);
    }

    #[tokio::test(start_paused = true)]
    async fn http2_and_upgraded_connections_are_left_to_themselves() {
        let (mut peer, mut io, _) = wrapped();
        let mut buf = [0u8; 64];
        peer.write_all(&H2_PREFACE[..10]).await.expect("write");
        assert!(io.read(&mut buf).await.expect("preface") > 0);
        let quiet = tokio::time::timeout(Duration::from_secs(7200), io.read(&mut buf)).await;
        assert!(quiet.is_err(), "HTTP/2 is not timed after its preface");

        let (mut peer, mut io, exchanges) = wrapped();
        peer.write_all(b"GET /ws HTTP/1.1\r\n\r\n")
            .await
            .expect("write");
        assert!(io.read(&mut buf).await.expect("head") > 0);
        exchanges.upgrade();
        drop(exchanges.begin());
        peer.write_all(b"frame").await.expect("write");
        assert!(io.read(&mut buf).await.expect("frame") > 0);
        let quiet = tokio::time::timeout(Duration::from_secs(7200), io.read(&mut buf)).await;
        assert!(quiet.is_err(), "an upgraded connection is not timed");
    }
}

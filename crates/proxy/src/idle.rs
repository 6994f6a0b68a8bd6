//! tcp_proxy's `idle_timeout`: a proxied TCP connection with no bytes in
//! either direction for that long is closed (Envoy's default: one hour; 0
//! turns it off). Each side notes when it last delivered bytes, and counts
//! what was written to it; the watchdog sleeps until the last activity plus
//! the limit, so an active connection costs one clock read per read.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// Envoy's tcp_proxy idle timeout when the config sets none.
pub const DEFAULT: Duration = Duration::from_secs(3600);

/// When either side of one connection last delivered bytes.
#[derive(Debug)]
pub struct Activity {
    start: Instant,
    /// Milliseconds after `start`.
    last: AtomicU64,
}

impl Activity {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            start: Instant::now(),
            last: AtomicU64::new(0),
        })
    }

    fn touch(&self) {
        let ms = self.start.elapsed().as_millis();
        self.last
            .store(u64::try_from(ms).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Returns once `limit` has passed without activity.
    pub async fn idle_for(&self, limit: Duration) {
        loop {
            let last = Duration::from_millis(self.last.load(Ordering::Relaxed));
            let deadline = self.start + last + limit;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// One side of a proxied connection, counting what was written to it.
pub struct Watched<S> {
    inner: S,
    activity: Arc<Activity>,
    /// Bytes written to this side so far (what the other side sent that
    /// arrived here).
    pub written: u64,
}

impl<S> Watched<S> {
    pub fn new(inner: S, activity: Arc<Activity>) -> Self {
        Self {
            inner,
            activity,
            written: 0,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &polled {
            self.written += *n as u64;
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// With time paused: reads keep the connection alive past the limit;
    /// silence for the limit ends it, not a moment before.
    #[tokio::test(start_paused = true)]
    async fn silence_for_the_limit_ends_it() {
        let activity = Activity::new();
        let (client, server) = tokio::io::duplex(64);
        let mut watched = Watched::new(server, activity.clone());
        let mut client = client;
        watched.write_all(b"hello").await.expect("write");
        assert_eq!(watched.written, 5);
        let limit = Duration::from_secs(10);
        let watchdog = activity.clone();
        let idle = tokio::spawn(async move { watchdog.idle_for(limit).await });
        let mut buf = [0u8; 8];
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_secs(6)).await;
            client.write_all(b"ping").await.expect("write");
            let n = watched.read(&mut buf).await.expect("read");
            assert_eq!(n, 4);
            assert!(!idle.is_finished(), "activity keeps it open");
        }
        let quiet = Instant::now();
        idle.await.expect("the watchdog");
        assert_eq!(quiet.elapsed(), limit);
    }
}

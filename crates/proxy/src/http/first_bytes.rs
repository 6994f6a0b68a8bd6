//! A deadline on a connection's first bytes. hyper times a request head only
//! once it is being read, and its protocol detection waits for the first bytes
//! without a limit, so a client that connects and says nothing would hold its
//! connection forever. Here it is cut off once the time to send a request head
//! has passed; after the first bytes, reads pass straight through.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

pub struct FirstBytes<I> {
    inner: I,
    /// Until the first bytes (or end of stream) arrive.
    deadline: Option<Pin<Box<Sleep>>>,
}

impl<I> FirstBytes<I> {
    pub fn new(inner: I, limit: Duration) -> Self {
        Self {
            inner,
            deadline: Some(Box::pin(tokio::time::sleep(limit))),
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for FirstBytes<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let Some(deadline) = &mut this.deadline else {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        };
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(read) => {
                this.deadline = None;
                Poll::Ready(read)
            }
            Poll::Pending if deadline.as_mut().poll(cx).is_ready() => {
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "nothing sent within the request header timeout",
                )))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for FirstBytes<I> {
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
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn a_silent_peer_is_cut_off_and_a_talking_one_is_not() {
        let (_silent_peer, silent) = tokio::io::duplex(64);
        let mut silent = FirstBytes::new(silent, Duration::from_secs(10));
        let mut buf = [0u8; 8];
        let error = silent.read(&mut buf).await.expect_err("cut off");
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);

        let (mut peer, talking) = tokio::io::duplex(64);
        let mut talking = FirstBytes::new(talking, Duration::from_secs(10));
        peer.write_all(b"GET").await.expect("write");
        assert_eq!(talking.read(&mut buf).await.expect("read"), 3);
        // Past the first bytes, a quiet spell is no longer this deadline's.
        let later = tokio::time::timeout(Duration::from_secs(60), talking.read(&mut buf)).await;
        assert!(later.is_err(), "still open a minute later");
    }
}

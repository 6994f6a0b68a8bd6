//! Copying a TCP stream both ways between two connections until both
//! directions are done, each direction's end passed on as a half-close.
//! Each direction's buffer starts small, since most connections carry
//! little and a node proxy may hold many, and grows as the direction carries
//! more: a bulk transfer wants large reads and large HTTP/2 DATA frames.
//! (ztunnel sizes its buffers the same way; tokio's fixed 8 KiB buffer held
//! bulk HBONE at two thirds of ztunnel's throughput.)

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Buffer sizes by what the direction has carried so far: 1 KiB at first,
/// 16 KiB past 128 KiB, 256 KiB past 10 MiB.
const SIZES: [(u64, usize); 3] = [(0, 1024), (128 << 10, 16 << 10), (10 << 20, 256 << 10)];

fn size_after(carried: u64) -> usize {
    SIZES
        .iter()
        .rev()
        .find(|(threshold, _)| carried >= *threshold)
        .map_or(SIZES[0].1, |(_, size)| *size)
}

/// One direction: what was read and not yet written, and how much went.
#[derive(Default)]
struct Direction {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    carried: u64,
    read_done: bool,
    unflushed: bool,
}

impl Direction {
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut reader: Pin<&mut R>,
        mut writer: Pin<&mut W>,
    ) -> Poll<io::Result<u64>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        loop {
            if self.start == self.end && !self.read_done {
                // Empty: the moment to grow.
                let size = size_after(self.carried);
                if self.buf.len() < size {
                    self.buf = vec![0; size];
                }
                let mut read = ReadBuf::new(&mut self.buf);
                match reader.as_mut().poll_read(cx, &mut read) {
                    Poll::Ready(Ok(())) => {
                        let n = read.filled().len();
                        self.read_done = n == 0;
                        (self.start, self.end) = (0, n);
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        // Nothing more to read for now: what was written
                        // must not wait in the writer for the next read.
                        if self.unflushed {
                            ready!(writer.as_mut().poll_flush(cx))?;
                            self.unflushed = false;
                        }
                        return Poll::Pending;
                    }
                }
            }
            while self.start < self.end {
                let n = ready!(
                    writer
                        .as_mut()
                        .poll_write(cx, &self.buf[self.start..self.end])
                )?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.start += n;
                self.carried += n as u64;
                self.unflushed = true;
            }
            if self.read_done {
                ready!(writer.as_mut().poll_flush(cx))?;
                ready!(writer.as_mut().poll_shutdown(cx))?;
                return Poll::Ready(Ok(self.carried));
            }
        }
    }
}

/// Relays between `a` and `b` until both directions end; the bytes carried
/// `a` to `b` and `b` to `a`. The first error ends both.
pub async fn relay<A, B>(a: &mut A, b: &mut B) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let (mut a_to_b, mut b_to_a) = (Direction::default(), Direction::default());
    let (mut up, mut down) = (None, None);
    poll_fn(|cx| {
        if up.is_none()
            && let Poll::Ready(carried) = a_to_b.poll_copy(cx, Pin::new(&mut *a), Pin::new(&mut *b))
        {
            up = Some(carried?);
        }
        if down.is_none()
            && let Poll::Ready(carried) = b_to_a.poll_copy(cx, Pin::new(&mut *b), Pin::new(&mut *a))
        {
            down = Some(carried?);
        }
        match (up, down) {
            (Some(up), Some(down)) => Poll::Ready(Ok((up, down))),
            _ => Poll::Pending,
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn buffers_grow_with_what_was_carried() {
        assert_eq!(size_after(0), 1024);
        assert_eq!(size_after(128 << 10), 16 << 10);
        assert_eq!(size_after((10 << 20) - 1), 16 << 10);
        assert_eq!(size_after(10 << 20), 256 << 10);
    }

    /// A bulk transfer one way (past every threshold) and a short answer the
    /// other, each end's half-close passed on: every byte arrives, in order,
    /// and the counts are right.
    #[tokio::test]
    async fn relays_both_ways_with_half_closes() {
        let (mut client, mut proxy_client) = tokio::io::duplex(64 << 10);
        let (mut proxy_server, mut server) = tokio::io::duplex(64 << 10);
        let relaying =
            tokio::spawn(async move { relay(&mut proxy_client, &mut proxy_server).await });
        let payload: Vec<u8> = (0..(11 << 20)).map(|i: u32| (i % 251) as u8).collect();
        let sent = payload.clone();
        let sending = tokio::spawn(async move {
            client.write_all(&sent).await?;
            client.shutdown().await?;
            let mut answer = Vec::new();
            client.read_to_end(&mut answer).await?;
            io::Result::Ok(answer)
        });
        let mut received = Vec::new();
        server.read_to_end(&mut received).await.expect("read");
        assert!(
            received == payload,
            "the payload arrives whole and in order"
        );
        server.write_all(b"done").await.expect("answer");
        server.shutdown().await.expect("close");
        let answer = sending.await.expect("task").expect("client");
        assert_eq!(answer, b"done");
        let (up, down) = relaying.await.expect("task").expect("relay");
        assert_eq!((up, down), (payload.len() as u64, 4));
    }
}

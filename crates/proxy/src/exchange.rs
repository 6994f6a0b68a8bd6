//! Istio's metadata exchange for TCP: when mesh TLS negotiated the ALPN
//! `istio-peer-exchange`, each proxy starts its side of the stream with a frame
//! (a big-endian magic `0x3D230467`, a big-endian length, then a
//! `google.protobuf.Any` holding the node metadata as a `Struct`) and takes the
//! other's off the front of what it receives, so TCP metrics can name both
//! workloads, as they can for HTTP.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use envoy_types::pb::google::protobuf::{Any, Struct};
use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

use crate::metrics::Peer;

pub const ALPN: &[u8] = b"istio-peer-exchange";
const MAGIC: u32 = 0x3D23_0467;
const STRUCT_TYPE: &str = "type.googleapis.com/google.protobuf.Struct";
/// A frame larger than this is not metadata.
const MAX_FRAME: usize = 64 * 1024;
/// How long to wait for the other side's frame; it comes first or not at all.
const WAIT: Duration = Duration::from_secs(1);

/// This workload's frame.
pub fn frame(metadata: &Struct) -> Bytes {
    let any = Any {
        type_url: STRUCT_TYPE.to_owned(),
        value: metadata.encode_to_vec(),
    }
    .encode_to_vec();
    let mut out = BytesMut::with_capacity(8 + any.len());
    out.put_u32(MAGIC);
    out.put_u32(u32::try_from(any.len()).unwrap_or(u32::MAX));
    out.put_slice(&any);
    out.freeze()
}

/// Reads the other side's frame off the front of `stream`. Whatever was read
/// that is not a frame (a peer that does not exchange) is handed back, to be
/// delivered before the rest of the stream.
pub async fn read_frame<S: AsyncRead + Unpin>(stream: &mut S) -> (Option<Peer>, Vec<u8>) {
    let mut head = Vec::with_capacity(8);
    let read = tokio::time::timeout(WAIT, async {
        while head.len() < 8 {
            let mut byte = [0u8; 8];
            let want = 8 - head.len();
            match stream.read(&mut byte[..want]).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => head.extend_from_slice(&byte[..n]),
            }
        }
        true
    })
    .await;
    if read != Ok(true) || u32::from_be_bytes([head[0], head[1], head[2], head[3]]) != MAGIC {
        return (None, head);
    }
    let size = u32::from_be_bytes([head[4], head[5], head[6], head[7]]) as usize;
    if size > MAX_FRAME {
        return (None, Vec::new());
    }
    let mut body = vec![0u8; size];
    match tokio::time::timeout(WAIT, stream.read_exact(&mut body)).await {
        Ok(Ok(_)) => {}
        _ => return (None, Vec::new()),
    }
    let peer = Any::decode(body.as_slice())
        .ok()
        .filter(|any| any.type_url == STRUCT_TYPE)
        .and_then(|any| Struct::decode(any.value.as_slice()).ok())
        .map(|s| crate::peer::from_struct(&s));
    (peer, Vec::new())
}

/// A stream that first yields `prefix` (bytes read ahead), then the stream.
pub struct Prefixed<S> {
    prefix: Vec<u8>,
    at: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    pub fn new(prefix: Vec<u8>, inner: S) -> Self {
        Self {
            prefix,
            at: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.at < self.prefix.len() {
            let n = (self.prefix.len() - self.at).min(buf.remaining());
            let at = self.at;
            buf.put_slice(&self.prefix[at..at + n]);
            self.at += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
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
    use envoy_types::pb::google::protobuf::{Value, value::Kind};

    fn metadata(workload: &str) -> Struct {
        let string = |s: &str| Value {
            kind: Some(Kind::StringValue(s.to_owned())),
        };
        Struct {
            fields: [
                ("WORKLOAD_NAME".to_owned(), string(workload)),
                ("NAMESPACE".to_owned(), string("default")),
            ]
            .into_iter()
            .collect(),
        }
    }

    #[tokio::test]
    async fn a_frame_is_taken_off_and_the_rest_flows() {
        let mut wire = frame(&metadata("sleep")).to_vec();
        wire.extend_from_slice(b"application bytes");
        let mut stream = wire.as_slice();
        let (peer, leftover) = read_frame(&mut stream).await;
        assert_eq!(peer.map(|p| p.workload).as_deref(), Some("sleep"));
        assert!(leftover.is_empty());
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).await.expect("rest");
        assert_eq!(rest, b"application bytes");
    }

    #[tokio::test]
    async fn a_peer_that_does_not_exchange_loses_nothing() {
        let wire = b"GET / HTTP/1.1\r\n\r\n".to_vec();
        let mut stream = wire.as_slice();
        let (peer, leftover) = read_frame(&mut stream).await;
        assert!(peer.is_none());
        let mut all = Prefixed::new(leftover, stream);
        let mut got = Vec::new();
        all.read_to_end(&mut got).await.expect("read");
        assert_eq!(got, wire);
    }
}

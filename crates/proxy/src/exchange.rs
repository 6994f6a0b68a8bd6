//! Istio's metadata exchange for TCP. When mesh TLS negotiated the ALPN
//! `istio-peer-exchange`, each proxy starts its side of the stream with a frame:
//! a big-endian magic `0x3D230467`, a big-endian length, then a
//! `google.protobuf.Any` holding a `Struct` of the form
//! `{x-envoy-peer-metadata: <node metadata>, x-envoy-peer-metadata-id: <node id>}`,
//! as Istio's Envoy filter writes it. The other side takes the frame off the
//! front of what it receives, so TCP metrics can name both workloads.
//!
//! Envoy sends its frame with its side's first bytes, which for a server-first
//! protocol may come late; so the frame is taken off whenever it arrives
//! ([`Stripped`]), and nothing waits for it but the metric labels.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{BufMut, Bytes, BytesMut};
use envoy_types::pb::google::protobuf::value::Kind;
use envoy_types::pb::google::protobuf::{Any, Struct, Value};
use prost::Message;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;

pub const ALPN: &[u8] = b"istio-peer-exchange";
const MAGIC: [u8; 4] = 0x3D23_0467u32.to_be_bytes();
const HEADER: usize = 8;
const STRUCT_TYPE: &str = "type.googleapis.com/google.protobuf.Struct";
const METADATA_KEY: &str = "x-envoy-peer-metadata";
const ID_KEY: &str = "x-envoy-peer-metadata-id";
/// A frame larger than this is not metadata: the connection is closed.
const MAX_FRAME: usize = 64 * 1024;

/// This workload's frame.
pub fn frame(metadata: &Struct, id: &str) -> Bytes {
    let data = Struct {
        fields: [
            (
                METADATA_KEY.to_owned(),
                Value {
                    kind: Some(Kind::StructValue(metadata.clone())),
                },
            ),
            (
                ID_KEY.to_owned(),
                Value {
                    kind: Some(Kind::StringValue(id.to_owned())),
                },
            ),
        ]
        .into_iter()
        .collect(),
    };
    let any = Any {
        type_url: STRUCT_TYPE.to_owned(),
        value: data.encode_to_vec(),
    }
    .encode_to_vec();
    let mut out = BytesMut::with_capacity(HEADER + any.len());
    out.put_slice(&MAGIC);
    out.put_u32(u32::try_from(any.len()).unwrap_or(u32::MAX));
    out.put_slice(&any);
    out.freeze()
}

/// The node metadata a frame's body carries; `None` when it is not metadata.
fn decode(body: &[u8]) -> Option<Struct> {
    let any = Any::decode(body)
        .ok()
        .filter(|a| a.type_url == STRUCT_TYPE)?;
    let data = Struct::decode(any.value.as_slice()).ok()?;
    match data.fields.get(METADATA_KEY).and_then(|v| v.kind.as_ref()) {
        Some(Kind::StructValue(metadata)) => Some(metadata.clone()),
        // Not Istio's layout: the metadata itself.
        _ => Some(data),
    }
}

enum State {
    /// The first bytes, while they may still be a frame's header.
    Head(Vec<u8>),
    /// A frame's body: its size, and what has come of it.
    Body(usize, Vec<u8>),
    /// Bytes read ahead that were not a frame, to be delivered first.
    Replay(Vec<u8>, usize),
    Pass,
}

/// A stream whose leading metadata frame, if the peer sends one, is taken off;
/// everything else reaches the reader unchanged. The node metadata the frame
/// carried is sent once on the channel `new` returns (`None`: no frame).
pub struct Stripped<S> {
    inner: S,
    state: State,
    told: Option<oneshot::Sender<Option<Struct>>>,
}

impl<S> Stripped<S> {
    /// Watches `inner` for a frame.
    pub fn new(inner: S) -> (Self, oneshot::Receiver<Option<Struct>>) {
        let (tx, rx) = oneshot::channel();
        let stream = Self {
            inner,
            state: State::Head(Vec::with_capacity(HEADER)),
            told: Some(tx),
        };
        (stream, rx)
    }

    /// A stream with no exchange: passed through as is.
    pub fn plain(inner: S) -> Self {
        Self {
            inner,
            state: State::Pass,
            told: None,
        }
    }

    fn tell(&mut self, peer: Option<Struct>) {
        if let Some(tx) = self.told.take() {
            let _ = tx.send(peer);
        }
    }
}

impl<S: AsyncRead + Unpin> Stripped<S> {
    /// Reads at most `want` bytes from the inner stream; 0 is end of stream.
    fn read_some(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<Vec<u8>>> {
        let mut space = vec![0u8; want.min(16 * 1024)];
        let mut buf = ReadBuf::new(&mut space);
        ready!(Pin::new(&mut self.inner).poll_read(cx, &mut buf))?;
        let n = buf.filled().len();
        space.truncate(n);
        Poll::Ready(Ok(space))
    }

    /// Moves the state on by one read; `Ready(Ok(()))` when it changed.
    fn advance(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match std::mem::replace(&mut self.state, State::Pass) {
            State::Head(mut head) => {
                let got = match self.read_some(cx, HEADER - head.len()) {
                    Poll::Pending => {
                        self.state = State::Head(head);
                        return Poll::Pending;
                    }
                    Poll::Ready(result) => result?,
                };
                let ended = got.is_empty();
                head.extend_from_slice(&got);
                let matched = head.len().min(MAGIC.len());
                if ended || head[..matched] != MAGIC[..matched] {
                    // Not a frame: what was read is the application's.
                    self.tell(None);
                    self.state = State::Replay(head, 0);
                } else if head.len() < HEADER {
                    self.state = State::Head(head);
                } else {
                    let size = u32::from_be_bytes([head[4], head[5], head[6], head[7]]) as usize;
                    if size > MAX_FRAME {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("a metadata exchange frame of {size} bytes"),
                        )));
                    }
                    self.state = State::Body(size, Vec::with_capacity(size));
                }
            }
            State::Body(size, mut body) => {
                if body.len() < size {
                    let got = match self.read_some(cx, size - body.len()) {
                        Poll::Pending => {
                            self.state = State::Body(size, body);
                            return Poll::Pending;
                        }
                        Poll::Ready(result) => result?,
                    };
                    if got.is_empty() {
                        return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
                    }
                    body.extend_from_slice(&got);
                }
                if body.len() < size {
                    self.state = State::Body(size, body);
                } else {
                    // A frame that does not decode is dropped all the same, as
                    // Envoy drains it.
                    let peer = decode(&body);
                    self.tell(peer);
                }
            }
            other => self.state = other,
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Stripped<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            match &mut self.state {
                State::Pass => return Pin::new(&mut self.inner).poll_read(cx, buf),
                State::Replay(bytes, at) => {
                    let n = (bytes.len() - *at).min(buf.remaining());
                    buf.put_slice(&bytes[*at..*at + n]);
                    *at += n;
                    if *at == bytes.len() {
                        self.state = State::Pass;
                    }
                    return Poll::Ready(Ok(()));
                }
                State::Head(_) | State::Body(..) => ready!(self.advance(cx))?,
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Stripped<S> {
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
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

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

    fn workload(metadata: &Struct) -> &str {
        match metadata
            .fields
            .get("WORKLOAD_NAME")
            .and_then(|v| v.kind.as_ref())
        {
            Some(Kind::StringValue(s)) => s,
            _ => "",
        }
    }

    async fn read_all<S: AsyncRead + Unpin>(stream: &mut S) -> Vec<u8> {
        let mut out = Vec::new();
        stream.read_to_end(&mut out).await.expect("read");
        out
    }

    #[tokio::test]
    async fn a_frame_in_envoys_layout_is_taken_off_and_the_rest_flows() {
        let mut wire = frame(
            &metadata("sleep"),
            "sidecar~198.18.0.3~sleep.default~default.svc.cluster.local",
        )
        .to_vec();
        // Envoy's layout, checked by hand: the node metadata sits under its key.
        let any = Any::decode(&wire[HEADER..]).expect("any");
        let data = Struct::decode(any.value.as_slice()).expect("struct");
        assert!(data.fields.contains_key("x-envoy-peer-metadata"));
        assert!(data.fields.contains_key("x-envoy-peer-metadata-id"));
        wire.extend_from_slice(b"application bytes");
        let (mut stream, told) = Stripped::new(wire.as_slice());
        assert_eq!(read_all(&mut stream).await, b"application bytes");
        let metadata = told.await.expect("told").expect("metadata");
        assert_eq!(workload(&metadata), "sleep");
    }

    #[tokio::test]
    async fn a_peer_that_does_not_exchange_loses_nothing() {
        for wire in [&b"GET / HTTP/1.1\r\n\r\n"[..], b"\x3D\x23x", b"", b"\x3D"] {
            let (mut stream, told) = Stripped::new(wire);
            assert_eq!(read_all(&mut stream).await, wire);
            assert!(told.await.expect("told").is_none());
        }
    }

    /// Envoy sends its frame with its first bytes, which may come long after
    /// the connection opened (time is paused: the wait costs nothing).
    #[tokio::test(start_paused = true)]
    async fn a_late_frame_split_across_reads_is_still_taken_off() {
        let (mut near, far) = tokio::io::duplex(64);
        let (mut stream, told) = Stripped::new(far);
        let wire = frame(&metadata("late"), "id");
        let writer = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_secs(30)).await;
            for chunk in wire.chunks(3) {
                near.write_all(chunk).await.expect("write");
                tokio::task::yield_now().await;
            }
            near.write_all(b"after").await.expect("write");
        });
        assert_eq!(read_all(&mut stream).await, b"after");
        let metadata = told.await.expect("told").expect("metadata");
        assert_eq!(workload(&metadata), "late");
        writer.await.expect("writer");
    }

    #[tokio::test]
    async fn an_oversized_frame_closes_the_stream() {
        let mut wire = MAGIC.to_vec();
        wire.extend_from_slice(&(1u32 << 20).to_be_bytes());
        wire.extend_from_slice(b"whatever follows");
        let (mut stream, _told) = Stripped::new(wire.as_slice());
        let mut out = Vec::new();
        let error = stream.read_to_end(&mut out).await.expect_err("refused");
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        assert!(out.is_empty(), "nothing of it reached the reader");
    }

    #[tokio::test]
    async fn a_frame_that_ends_short_of_its_length_is_an_error() {
        let mut wire = MAGIC.to_vec();
        wire.extend_from_slice(&1000u32.to_be_bytes());
        wire.extend_from_slice(b"only this much");
        let (mut stream, told) = Stripped::new(wire.as_slice());
        let mut out = Vec::new();
        let error = stream.read_to_end(&mut out).await.expect_err("refused");
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
        assert!(out.is_empty(), "the partial frame never reached the reader");
        drop(stream);
        assert!(told.await.is_err(), "no metadata was told");
    }
}

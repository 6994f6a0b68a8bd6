//! ZDS on the wire: the Unix socket between ambient mode's node agent (the
//! server) and the node proxy (the client). It is a `SOCK_SEQPACKET`
//! socket, so each protobuf message is one packet and needs no framing; a
//! pod's network namespace rides along an `AddWorkload` as an `SCM_RIGHTS`
//! descriptor. Std and tokio speak only stream sockets, so the sockets are
//! made and the messages moved with rustix, under tokio's readiness.

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use prost::Message;
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketAddrUnix, SocketFlags, SocketType,
};
use tokio::io::Interest;
use tokio::net::{UnixListener, UnixStream};

/// Istio's CNI agent listens here on a node.
pub const DEFAULT_SOCKET: &str = "/var/run/ztunnel/ztunnel.sock";

/// Larger than any message either side sends (a pod's names and uid).
const MAX_MESSAGE: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum ZdsError {
    #[error("ZDS socket {path}: {source}")]
    Socket {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("ZDS connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("ZDS message truncated (over {MAX_MESSAGE} bytes, or more than one descriptor)")]
    Truncated,
    #[error("ZDS message does not decode: {0}")]
    Decode(#[from] prost::DecodeError),
}

/// One end of a ZDS connection.
pub struct Channel {
    stream: UnixStream,
}

impl From<UnixStream> for Channel {
    fn from(stream: UnixStream) -> Self {
        Self { stream }
    }
}

impl Channel {
    /// Connects to the node agent at `path`.
    pub async fn connect(path: &Path) -> Result<Self, ZdsError> {
        let fail = |source: std::io::Error| ZdsError::Socket {
            path: path.to_owned(),
            source,
        };
        let fd = seqpacket().map_err(fail)?;
        let address = SocketAddrUnix::new(path).map_err(|e| fail(e.into()))?;
        let pending = match rustix::net::connect(&fd, &address) {
            Ok(()) => false,
            // A non-blocking Unix socket may finish connecting later.
            Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INPROGRESS) => true,
            Err(e) => return Err(fail(e.into())),
        };
        let stream =
            UnixStream::from_std(std::os::unix::net::UnixStream::from(fd)).map_err(fail)?;
        if pending {
            stream.writable().await.map_err(fail)?;
            if let Some(e) = stream.take_error().map_err(fail)? {
                return Err(fail(e));
            }
        }
        Ok(Self { stream })
    }

    /// Sends `message` as one packet, with `fd` if given.
    pub async fn send(
        &self,
        message: &impl Message,
        fd: Option<BorrowedFd<'_>>,
    ) -> Result<(), ZdsError> {
        let bytes = message.encode_to_vec();
        let fds: Vec<BorrowedFd<'_>> = fd.into_iter().collect();
        self.stream
            .async_io(Interest::WRITABLE, || {
                let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
                let mut control = SendAncillaryBuffer::new(&mut space);
                if !fds.is_empty() {
                    control.push(SendAncillaryMessage::ScmRights(&fds));
                }
                let iov = [IoSlice::new(&bytes)];
                rustix::net::sendmsg(&self.stream, &iov, &mut control, SendFlags::NOSIGNAL)
                    .map_err(std::io::Error::from)
            })
            .await?;
        Ok(())
    }

    /// The next message and the descriptor it carried; `None` once the peer
    /// has closed. A descriptor is taken (and closed if unwanted) before the
    /// message is decoded, so a bad message leaks nothing.
    pub async fn recv<M: Message + Default>(
        &self,
    ) -> Result<Option<(M, Option<OwnedFd>)>, ZdsError> {
        let mut buffer = vec![0u8; MAX_MESSAGE];
        loop {
            self.stream.readable().await?;
            let received = self.stream.try_io(Interest::READABLE, || {
                let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
                let mut control = RecvAncillaryBuffer::new(&mut space);
                let mut iov = [IoSliceMut::new(&mut buffer)];
                let msg = rustix::net::recvmsg(
                    &self.stream,
                    &mut iov,
                    &mut control,
                    RecvFlags::CMSG_CLOEXEC,
                )?;
                Ok((msg.bytes, msg.flags, descriptors(&mut control)))
            });
            let (len, flags, mut fds) = match received {
                Ok(received) => received,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e.into()),
            };
            if len == 0 {
                return Ok(None);
            }
            if flags.intersects(ReturnFlags::TRUNC | ReturnFlags::CTRUNC) || fds.len() > 1 {
                return Err(ZdsError::Truncated);
            }
            let message = M::decode(&buffer[..len])?;
            return Ok(Some((message, fds.pop())));
        }
    }
}

/// Every descriptor in a received message's control data, owned.
fn descriptors(control: &mut RecvAncillaryBuffer<'_>) -> Vec<OwnedFd> {
    control
        .drain()
        .filter_map(|message| match message {
            RecvAncillaryMessage::ScmRights(fds) => Some(fds),
            _ => None,
        })
        .flatten()
        .collect()
}

/// The node agent's listening socket at `path` (a stale one is replaced).
pub fn listen(path: &Path) -> Result<UnixListener, ZdsError> {
    let fail = |source: std::io::Error| ZdsError::Socket {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(fail)?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(fail(e)),
        _ => {}
    }
    let fd = seqpacket().map_err(fail)?;
    let address = SocketAddrUnix::new(path).map_err(|e| fail(e.into()))?;
    rustix::net::bind(&fd, &address).map_err(|e| fail(e.into()))?;
    rustix::net::listen(&fd, 128).map_err(|e| fail(e.into()))?;
    UnixListener::from_std(std::os::unix::net::UnixListener::from(fd)).map_err(fail)
}

fn seqpacket() -> std::io::Result<OwnedFd> {
    Ok(rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
        None,
    )?)
}

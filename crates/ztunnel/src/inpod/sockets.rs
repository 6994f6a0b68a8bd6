//! Where a workload's proxy makes its sockets. Dedicated mode: in the node
//! proxy's own namespace (which is the workload's). In-pod mode: in the
//! pod's namespace, marked 1337 so the pod's redirection rules let them
//! pass, and connections into the workload leave from the caller's own
//! address (IP_TRANSPARENT), so the app sees who called it.

use std::net::SocketAddr;

use oxmesh_proxy::hbone::client;
use socket2::{Domain, Socket, Type};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use super::netns::NetNs;

/// Istio's in-pod mark: the pod's rules never redirect what carries it.
pub const INPOD_MARK: u32 = 1337;

#[derive(Clone, Debug)]
pub enum Sockets {
    Host,
    InPod(NetNs),
}

impl Sockets {
    pub fn listen(&self, addr: SocketAddr) -> std::io::Result<TcpListener> {
        let listener = self.make(|| {
            let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
            if addr.is_ipv6() {
                // IPv4 has its own listener.
                socket.set_only_v6(true)?;
            }
            socket.set_reuse_address(true)?;
            socket.bind(&addr.into())?;
            socket.listen(1024)?;
            Ok(socket)
        })?;
        listener.set_nonblocking(true)?;
        TcpListener::from_std(listener.into())
    }

    /// Dials out for the workload: a tunnel or a passthrough connection.
    pub async fn connect(&self, to: SocketAddr) -> std::io::Result<TcpStream> {
        let stream = client::Sockets::tcp(self, to)?.connect(to).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    /// Dials the workload itself for an inbound connection from `caller`.
    pub async fn connect_to_workload(
        &self,
        to: SocketAddr,
        caller: SocketAddr,
    ) -> std::io::Result<TcpStream> {
        match self {
            Self::Host => oxmesh_proxy::upstream::dial_inbound(to).await,
            Self::InPod(_) => {
                let socket = self.make(|| {
                    let socket = Socket::new(Domain::for_address(to), Type::STREAM, None)?;
                    if to.is_ipv4() {
                        socket.set_ip_transparent_v4(true)?;
                    } else {
                        socket.set_ip_transparent_v6(true)?;
                    }
                    socket.bind(&SocketAddr::new(caller.ip(), 0).into())?;
                    Ok(socket)
                })?;
                socket.set_nonblocking(true)?;
                let stream = TcpSocket::from_std_stream(socket.into())
                    .connect(to)
                    .await?;
                stream.set_nodelay(true)?;
                Ok(stream)
            }
        }
    }

    /// Makes a socket where this workload's sockets live, marked in-pod.
    fn make(&self, make: impl FnOnce() -> std::io::Result<Socket>) -> std::io::Result<Socket> {
        match self {
            Self::Host => make(),
            Self::InPod(netns) => netns.run(|| {
                let socket = make()?;
                socket.set_mark(INPOD_MARK)?;
                Ok(socket)
            }),
        }
    }
}

impl client::Sockets for Sockets {
    fn tcp(&self, peer: SocketAddr) -> std::io::Result<TcpSocket> {
        let socket = self.make(|| Socket::new(Domain::for_address(peer), Type::STREAM, None))?;
        socket.set_nonblocking(true)?;
        Ok(TcpSocket::from_std_stream(socket.into()))
    }
}

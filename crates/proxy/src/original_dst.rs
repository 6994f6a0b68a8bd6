//! Where a redirected connection was really going: iptables' REDIRECT rewrites the
//! destination and keeps the original in conntrack, which `SO_ORIGINAL_DST`
//! (`IP6T_SO_ORIGINAL_DST` for IPv6) reads back.

use std::io;
use std::net::SocketAddr;

use socket2::SockRef;
use tokio::net::TcpStream;

/// The original destination, or the local address when the connection was not
/// redirected (a client that dialled the proxy's port directly).
pub fn original_destination(stream: &TcpStream) -> io::Result<SocketAddr> {
    let local = stream.local_addr()?;
    let socket = SockRef::from(stream);
    let original = if local.is_ipv4() {
        socket.original_dst_v4()
    } else {
        socket.original_dst_v6()
    };
    match original {
        Ok(addr) => addr
            .as_socket()
            .ok_or_else(|| io::Error::other("original destination is not an IP socket address")),
        // No conntrack entry (not NATed): the address dialled is the destination.
        Err(e) if e.raw_os_error() == Some(libc_enoent()) => Ok(local),
        Err(e) => Err(e),
    }
}

/// ENOENT, what the kernel answers when the connection was not NATed.
const fn libc_enoent() -> i32 {
    2
}

//! Readiness probes, run inside the pod's network namespace by `oxmesh
//! testbed-probe` (as root, so the sidecar's rules let it straight to the app,
//! as the kubelet's probes reach it): an HTTP GET answered 2xx or 3xx, or a TCP
//! connection.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(1);

/// Whether GET `path` at `address` answers 2xx or 3xx within a second.
pub fn http(address: SocketAddr, path: &str) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&address, TIMEOUT) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(TIMEOUT));
    let request = format!(
        "GET {path} HTTP/1.1\r\nhost: {address}\r\nuser-agent: kube-probe/oxmesh\r\nconnection: close\r\n\r\n"
    );
    if s.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    if s.read_exact(&mut head).is_err() {
        return false;
    }
    let status = String::from_utf8_lossy(&head[9..12])
        .parse::<u16>()
        .unwrap_or(0);
    (200..400).contains(&status)
}

pub fn tcp(address: SocketAddr) -> bool {
    TcpStream::connect_timeout(&address, TIMEOUT).is_ok()
}

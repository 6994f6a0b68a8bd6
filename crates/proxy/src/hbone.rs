//! HBONE: a TCP connection carried as an HTTP/2 CONNECT stream over mutual
//! TLS, to port 15008, as Istio's ambient mode carries traffic between node
//! proxies, waypoints and sidecars. The CONNECT's authority is where the
//! stream goes (`<pod ip>:<port>`); each side's certificate is its workload's
//! SPIFFE identity, which the other checks.

pub mod client;
pub mod server;

use std::time::Duration;

/// Where HBONE is served.
pub const PORT: u16 = 15008;

/// ztunnel's HTTP/2 windows and frame size: large, since one connection
/// carries many bulk streams between two nodes.
const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
const FRAME_SIZE: u32 = 1024 * 1024;

/// How long a TCP connect plus TLS handshake to a peer may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum HboneError {
    #[error("cannot connect to {peer}: {source}")]
    Connect {
        peer: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("connecting to {0} timed out")]
    Timeout(std::net::SocketAddr),
    #[error("TLS with {peer}: {source} (is its certificate for the identity expected?)")]
    Tls {
        peer: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("HTTP/2 with {peer}: {source}")]
    Http {
        peer: std::net::SocketAddr,
        source: hyper::Error,
    },
    #[error("{peer} refused the tunnel to {authority}: {status}")]
    Refused {
        peer: std::net::SocketAddr,
        authority: std::net::SocketAddr,
        status: http::StatusCode,
    },
    #[error("{0} is no CONNECT authority")]
    Authority(std::net::SocketAddr),
    #[error("no certificate yet: is the control plane reachable on 15012?")]
    NoCertificate,
}

//! How the host reaches the ingress gateway without any route into the testbed:
//! a relay inside the gateway's pod listens on a Unix socket (a file, which
//! crosses network namespaces) and connects to the gateway there; `oxmesh up`
//! accepts on a loopback port of the host and splices each connection to that
//! socket. The host sees that one port and nothing else.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};

/// Inside the pod: each connection on `socket` to `to`.
pub async fn unix_to_tcp(socket: &Path, to: SocketAddr) -> std::io::Result<()> {
    let _ = std::fs::remove_file(socket);
    let listener = UnixListener::bind(socket)?;
    loop {
        let (mut inbound, _) = listener.accept().await?;
        tokio::spawn(async move {
            if let Ok(mut outbound) = TcpStream::connect(to).await {
                let _ = outbound.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}

/// On the host: each connection on `listener` to the relay's `socket`.
pub async fn tcp_to_unix(listener: TcpListener, socket: PathBuf) -> std::io::Result<()> {
    loop {
        let (mut inbound, _) = listener.accept().await?;
        let _ = inbound.set_nodelay(true);
        let socket = socket.clone();
        tokio::spawn(async move {
            match UnixStream::connect(&socket).await {
                Ok(mut outbound) => {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
                Err(e) => tracing::warn!(error = %e, "the ingress relay is not there"),
            }
        });
    }
}

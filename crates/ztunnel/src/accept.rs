//! Accepting a listener's connections for ever, each handed to a task of its
//! own. Every one gets TCP_NODELAY: the node proxy's writes are as small as
//! what it relays, and Nagle would hold a response's tail back for the
//! peer's delayed ACK. A failed accept (descriptors exhausted) waits a
//! moment before the next.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

/// How long to wait after a failed accept before the next.
pub(crate) const BACKOFF: Duration = Duration::from_millis(50);

pub async fn each<F, Fut>(listener: TcpListener, handle: F)
where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        match listener.accept().await {
            Ok((stream, remote)) => {
                let _ = stream.set_nodelay(true);
                tokio::spawn(handle(stream, remote));
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(BACKOFF).await;
            }
        }
    }
}

//! The TLS gRPC port (15012): rustls accepts connections with the control plane's
//! current certificate (renewals apply to new connections), tonic serves them.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Router;

/// Serves `router` over TLS on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let (sender, receiver) = tokio::sync::mpsc::channel(64);
    let accept_loop = tokio::spawn(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed on the secure port");
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, sender) = (acceptor.clone(), sender.clone());
            // Handshakes run apart, so one slow client cannot hold up the others.
            tokio::spawn(async move {
                match acceptor.accept(tcp).await {
                    Ok(tls) => {
                        let _ = sender.send(Ok::<_, std::io::Error>(tls)).await;
                    }
                    Err(e) => log_handshake_failure(peer, &e),
                }
            });
        }
    });
    let result = router
        .serve_with_incoming_shutdown(ReceiverStream::new(receiver), shutdown)
        .await;
    accept_loop.abort();
    result
}

fn log_handshake_failure(peer: SocketAddr, error: &std::io::Error) {
    tracing::debug!(%peer, %error, "TLS handshake failed on the secure port");
}

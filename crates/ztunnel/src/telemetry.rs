//! Istio's L4 metrics as ztunnel reports them: `istio_tcp_connections_opened`
//! and `_closed`, `istio_tcp_received_bytes` (client to server) and
//! `istio_tcp_sent_bytes` (server to client), each by `reporter` (`source`
//! for what a workload sends out, `destination` for what it takes in), with
//! both workloads' names and principals and `connection_security_policy`
//! (`mutual_tls` for HBONE). The families and their labels are the sidecar's.
//! And ztunnel's access log: a `connection complete` line per connection at
//! info level (target `access`), with both ends' addresses, workloads and
//! identities, the direction, the bytes each way and the duration.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use oxmesh_proxy::metrics::{Exchange, Metrics, Peer, Reporter, ServiceLabels, TcpLabels};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::state::Workload;

/// A workload as metric labels name it.
pub fn peer(workload: &Workload) -> Peer {
    Peer {
        workload: workload.workload_name.clone(),
        namespace: workload.namespace.clone(),
        principal: workload.identity.to_string(),
        app: workload.canonical_name.clone(),
        version: workload.canonical_revision.clone(),
        canonical_service: workload.canonical_name.clone(),
        canonical_revision: workload.canonical_revision.clone(),
        cluster: workload.cluster_id.clone(),
    }
}

/// One connection's labels, fixed when it opens.
pub fn labels(
    reporter: Reporter,
    source: &Peer,
    destination: &Peer,
    service: &ServiceLabels,
    mutual_tls: bool,
) -> TcpLabels {
    let mut labels = Exchange {
        reporter,
        source,
        destination,
        service,
        protocol: "tcp",
        mutual_tls,
    }
    .tcp_labels("");
    // A node proxy knows what it sent: HBONE is mutual TLS either way.
    if mutual_tls {
        labels.connection_security_policy = "mutual_tls";
    }
    labels
}

/// Where a connection ran, for its access log line.
#[derive(Clone, Copy, Debug)]
pub struct Ends {
    /// `inbound` or `outbound`, as ztunnel says.
    pub direction: &'static str,
    pub src: SocketAddr,
    /// The address connected to: the HBONE server's for a tunnel.
    pub dst: SocketAddr,
    /// In a tunnel, the address the tunnel is for.
    pub hbone: Option<SocketAddr>,
}

/// Counts one connection: opened now, its bytes and its close recorded
/// (and its access log line written) when [`Connection::closed`] is called
/// or it is dropped.
pub struct Connection {
    metrics: Arc<Metrics>,
    labels: TcpLabels,
    ends: Ends,
    opened: Instant,
    done: bool,
}

impl Connection {
    pub fn open(metrics: Arc<Metrics>, labels: TcpLabels, ends: Ends) -> Self {
        metrics.tcp_opened.get_or_create(&labels).inc();
        Self {
            metrics,
            labels,
            ends,
            opened: Instant::now(),
            done: false,
        }
    }

    /// Records the bytes each way and the close.
    pub fn closed(mut self, from_client: u64, to_client: u64) {
        self.finish(from_client, to_client);
    }

    fn finish(&mut self, from_client: u64, to_client: u64) {
        if self.done {
            return;
        }
        self.done = true;
        let m = &self.metrics;
        m.tcp_received
            .get_or_create(&self.labels)
            .inc_by(from_client);
        m.tcp_sent.get_or_create(&self.labels).inc_by(to_client);
        m.tcp_closed.get_or_create(&self.labels).inc();
        self.log(from_client, to_client);
    }

    /// ztunnel's line: `bytes_sent` is what went to the destination.
    fn log(&self, from_client: u64, to_client: u64) {
        let (l, e) = (&self.labels, &self.ends);
        tracing::info!(
            target: "access",
            direction = e.direction,
            "src.addr" = %e.src,
            "src.workload" = %l.source_workload,
            "src.namespace" = %l.source_workload_namespace,
            "src.identity" = %l.source_principal,
            "dst.addr" = %e.dst,
            "dst.hbone_addr" = e.hbone.map(tracing::field::display),
            "dst.service" = %l.destination_service,
            "dst.workload" = %l.destination_workload,
            "dst.namespace" = %l.destination_workload_namespace,
            "dst.identity" = %l.destination_principal,
            bytes_sent = from_client,
            bytes_recv = to_client,
            duration = ?self.opened.elapsed(),
            "connection complete",
        );
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.finish(0, 0);
    }
}

/// A stream toward a workload that counts what passes: bytes written to it
/// came from the client, bytes read from it go back to the client.
pub struct Counted<S> {
    inner: S,
    from_client: u64,
    to_client: u64,
    connection: Option<Connection>,
}

impl<S> Counted<S> {
    pub fn new(inner: S, connection: Connection) -> Self {
        Self {
            inner,
            from_client: 0,
            to_client: 0,
            connection: Some(connection),
        }
    }
}

impl<S> Drop for Counted<S> {
    fn drop(&mut self) {
        if let Some(connection) = self.connection.take() {
            connection.closed(self.from_client, self.to_client);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len().saturating_sub(before);
        self.to_client += read as u64;
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = &polled {
            self.from_client += *n as u64;
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

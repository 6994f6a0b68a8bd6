//! Opaque TCP: connect to the chain's cluster and copy both ways until both sides
//! close, half-closes passed through, bytes counted for Istio's TCP metrics.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::config::Snapshot;
use crate::config::listener::TcpRoute;
use crate::config::tls::Carries;
use crate::context::Context;
use crate::exchange::{self, Prefixed};
use crate::metrics::{Exchange, Peer, Reporter, ServiceLabels};
use crate::upstream::{self, OriginalSource, UpstreamError};

const COPY_BUFFER: usize = 64 * 1024;

/// Who is on each side of a proxied connection, for telemetry.
pub struct Sides {
    pub reporter: Reporter,
    /// The downstream's identity, when it came over mTLS (inbound).
    pub downstream_peer: Option<Peer>,
    pub mutual_tls: bool,
    /// The downstream negotiated Istio's metadata exchange.
    pub exchange: bool,
    /// Connect from the client's address (TPROXY inbound).
    pub original_source: Option<OriginalSource>,
}

pub async fn proxy<D>(
    ctx: &Arc<Context>,
    snapshot: &Snapshot,
    route: &TcpRoute,
    downstream: D,
    original: SocketAddr,
    sides: Sides,
) where
    D: AsyncRead + AsyncWrite + Unpin,
{
    let service = service_of(snapshot, route, original);
    let (mut downstream, downstream_peer) = if sides.exchange {
        swap_metadata(ctx, downstream, sides.downstream_peer).await
    } else {
        (Prefixed::new(Vec::new(), downstream), sides.downstream_peer)
    };
    let dialled = connect(ctx, snapshot, route, original, sides.original_source).await;
    let (connected, upstream_peer) = match dialled {
        Ok(c) => {
            let (io, peer) = upstream_side(ctx, c).await;
            (Ok(io), peer)
        }
        Err(e) => (Err(e), None),
    };
    let (source, destination) = match sides.reporter {
        Reporter::Source => (
            ctx.local_peer.clone(),
            upstream_peer.unwrap_or_else(Peer::unknown),
        ),
        Reporter::Destination => (
            downstream_peer.unwrap_or_else(Peer::unknown),
            ctx.local_peer.clone(),
        ),
    };
    let exchange = Exchange {
        reporter: sides.reporter,
        source: &source,
        destination: &destination,
        service: &service,
        protocol: "tcp",
        mutual_tls: sides.mutual_tls,
    };
    let mut upstream = match connected {
        Ok(io) => io,
        Err(e) => {
            tracing::debug!(cluster = %route.cluster, error = %e, "TCP upstream unavailable");
            let labels = exchange.tcp_labels(e.flag());
            ctx.metrics.tcp_opened.get_or_create(&labels).inc();
            ctx.metrics.tcp_closed.get_or_create(&labels).inc();
            return;
        }
    };
    let labels = exchange.tcp_labels("");
    ctx.metrics.tcp_opened.get_or_create(&labels).inc();
    // 64 KiB buffers: TLS records are up to 16 KiB, and bulk transfers move
    // several per read instead of one small copy each.
    let (request_bytes, response_bytes) = match tokio::io::copy_bidirectional_with_sizes(
        &mut downstream,
        &mut upstream,
        COPY_BUFFER,
        COPY_BUFFER,
    )
    .await
    {
        Ok(counts) => counts,
        Err(e) => {
            tracing::debug!(cluster = %route.cluster, error = %e, "TCP proxying ended with an error");
            (0, 0)
        }
    };
    // Istio counts "sent" in the response direction, "received" in the request's.
    ctx.metrics
        .tcp_sent
        .get_or_create(&labels)
        .inc_by(response_bytes);
    ctx.metrics
        .tcp_received
        .get_or_create(&labels)
        .inc_by(request_bytes);
    ctx.metrics.tcp_closed.get_or_create(&labels).inc();
}

/// The service a connection is for: the outbound cluster's host, the inbound
/// cluster's `istio.services`, or the address dialled.
fn service_of(snapshot: &Snapshot, route: &TcpRoute, original: SocketAddr) -> ServiceLabels {
    ServiceLabels::from_cluster(route.cluster.as_str())
        .or_else(|| snapshot.cluster(&route.cluster)?.service.clone())
        .unwrap_or_else(|| ServiceLabels {
            host: original.ip().to_string(),
            name: route.cluster.to_string(),
            namespace: "unknown".into(),
        })
}

/// The upstream connection, with the frame of an upstream that agreed to the
/// metadata exchange taken off the front.
async fn upstream_side(
    ctx: &Context,
    connected: upstream::Connected,
) -> (Prefixed<upstream::Io>, Option<Peer>) {
    let proved = connected.peer.map(|id| identity_peer(id.to_string()));
    if !connected.exchange {
        return (Prefixed::new(Vec::new(), connected.io), proved);
    }
    swap_metadata(ctx, connected.io, proved).await
}

/// Sends our metadata frame and takes the other side's. The peer is what its
/// frame says, with the principal its certificate proved.
async fn swap_metadata<S>(
    ctx: &Context,
    mut stream: S,
    proved: Option<Peer>,
) -> (Prefixed<S>, Option<Peer>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if stream
        .write_all(&ctx.local_metadata.tcp_frame)
        .await
        .is_err()
    {
        return (Prefixed::new(Vec::new(), stream), proved);
    }
    let (told, leftover) = exchange::read_frame(&mut stream).await;
    let peer = match (told, proved) {
        (Some(told), Some(proved)) => Some(Peer {
            principal: proved.principal,
            ..told
        }),
        (told, proved) => told.or(proved),
    };
    (Prefixed::new(leftover, stream), peer)
}

async fn connect(
    ctx: &Context,
    snapshot: &Snapshot,
    route: &TcpRoute,
    original: SocketAddr,
    source: Option<OriginalSource>,
) -> Result<upstream::Connected, UpstreamError> {
    let cluster = snapshot
        .cluster(&route.cluster)
        .ok_or_else(|| UpstreamError::NoCluster(route.cluster.clone()))?;
    let chosen = upstream::choose(snapshot, cluster, original, &[], None).await?;
    let _in_flight = chosen.in_flight();
    upstream::connect(ctx, cluster, &chosen, Carries::Tcp, source).await
}

/// A peer known only by the SPIFFE id it proved: namespace from the id.
pub fn identity_peer(principal: String) -> Peer {
    let namespace = principal
        .split("/ns/")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap_or("unknown")
        .to_owned();
    Peer {
        namespace,
        principal,
        ..Peer::unknown()
    }
}

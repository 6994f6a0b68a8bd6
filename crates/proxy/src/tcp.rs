//! Opaque TCP: connect to the chain's cluster and copy both ways until both sides
//! close, half-closes passed through, bytes counted for Istio's TCP metrics.

use std::net::SocketAddr;
use std::sync::Arc;

use std::time::Duration;

use envoy_types::pb::google::protobuf::Struct;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::oneshot;

use crate::access_log::{AccessLogs, Entry};
use crate::breaker::{Resource, Slot};
use crate::config::listener::TcpRoute;
use crate::config::stats::{Shaped, StandardMetric, StatsConfig};
use crate::config::tls::Carries;
use crate::config::{ClusterName, Snapshot};
use crate::context::Context;
use crate::exchange::Stripped;
use crate::metrics::{Exchange, Peer, Reporter, ServiceLabels, TcpLabels};
use crate::outlier::Attempt;
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
    /// For the access log: the client, the SNI it sent, its certificate's URI.
    pub client: SocketAddr,
    pub sni: Option<Arc<str>>,
    pub downstream_peer_uri: Option<String>,
}

impl Sides {
    fn client_facts(&self, original: SocketAddr) -> Client<'_> {
        Client {
            client: self.client,
            original,
            sni: self.sni.as_deref(),
            peer_uri: self.downstream_peer_uri.as_deref(),
        }
    }
}

/// Where each metric is in [`StandardMetric::TCP`].
const OPENED: usize = 0;
const CLOSED: usize = 1;
const SENT: usize = 2;
const RECEIVED: usize = 3;

/// How long the metric labels wait for the peer's metadata frame; the bytes
/// never wait for it.
const LABELS_WAIT: Duration = Duration::from_secs(1);

type Told = Option<oneshot::Receiver<Option<Struct>>>;

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
    let started = (std::time::Instant::now(), std::time::SystemTime::now());
    // A weighted route picks its cluster once per connection.
    let cluster = route.pick();
    let service = service_of(snapshot, cluster, original);
    let (downstream, mut downstream_told) = exchanging(ctx, downstream, sides.exchange).await;
    let labels = |peer: Option<Peer>, flag: &str| {
        let (source, destination) = match sides.reporter {
            Reporter::Source => (ctx.local_peer.clone(), peer.unwrap_or_else(Peer::unknown)),
            Reporter::Destination => (peer.unwrap_or_else(Peer::unknown), ctx.local_peer.clone()),
        };
        Exchange {
            reporter: sides.reporter,
            source: &source,
            destination: &destination,
            service: &service,
            protocol: "tcp",
            mutual_tls: sides.mutual_tls,
        }
        .tcp_labels(flag)
    };
    let (connected, _opened) =
        match connect(ctx, snapshot, cluster, original, sides.original_source).await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(%cluster, error = %e, "TCP upstream unavailable");
                let known = match sides.reporter {
                    Reporter::Source => None,
                    Reporter::Destination => merge(
                        told_now(&mut downstream_told),
                        sides.downstream_peer.clone(),
                    ),
                };
                let closed = Closed {
                    flags: e.flag(),
                    termination: None,
                    cluster: Some(cluster),
                    upstream: None,
                    bytes: (0, 0),
                    started,
                };
                let client = sides.client_facts(original);
                let labels = ConnectionLabels::new(
                    route.stats.as_deref(),
                    labels(known, e.flag()),
                    &client,
                    &closed,
                );
                if let Some(l) = labels.of(OPENED) {
                    ctx.metrics.tcp_opened.get_or_create(l).inc();
                }
                if let Some(l) = labels.of(CLOSED) {
                    ctx.metrics.tcp_closed.get_or_create(l).inc();
                }
                if let Some(logs) = &route.access_logs {
                    log(logs, &client, &closed);
                }
                return;
            }
        };
    let upstream_ends = (connected.remote, connected.local);
    let upstream_proved = connected.peer.map(|id| identity_peer(id.to_string()));
    let (upstream, upstream_told) = exchanging(ctx, connected.io, connected.exchange).await;
    let (mut told, proved) = match sides.reporter {
        Reporter::Source => (upstream_told, upstream_proved),
        Reporter::Destination => (downstream_told, sides.downstream_peer.clone()),
    };
    let activity = crate::idle::Activity::new();
    let mut downstream = crate::idle::Watched::new(downstream, activity.clone());
    let mut upstream = crate::idle::Watched::new(upstream, activity.clone());
    let idle_timeout = route.idle_timeout;
    let copying = async move {
        let outcome = {
            // 64 KiB buffers: TLS records are up to 16 KiB, and bulk
            // transfers move several per read instead of one small copy each.
            let copy = tokio::io::copy_bidirectional_with_sizes(
                &mut downstream,
                &mut upstream,
                COPY_BUFFER,
                COPY_BUFFER,
            );
            match idle_timeout {
                None => copy.await.map(drop),
                Some(limit) => tokio::select! {
                    copied = copy => copied.map(drop),
                    () = activity.idle_for(limit) => {
                        tracing::debug!(?limit, "TCP connection idle: closed");
                        Ok(())
                    }
                },
            }
        };
        // Counted as written, so what moved before an error or the idle
        // timeout still counts, and nothing unsent does.
        (outcome, upstream.written, downstream.written)
    };
    tokio::pin!(copying);
    // The labels wait (briefly) for the peer's frame while the bytes flow.
    let (peer, finished) = tokio::select! {
        peer = wait_told(&mut told) => (peer, None),
        result = &mut copying => (told_now(&mut told), Some(result)),
    };
    let client = sides.client_facts(original);
    let opening = Closed {
        flags: "",
        termination: None,
        cluster: Some(cluster),
        upstream: Some(upstream_ends),
        bytes: (0, 0),
        started,
    };
    let labels = ConnectionLabels::new(
        route.stats.as_deref(),
        labels(merge(peer, proved), ""),
        &client,
        &opening,
    );
    if let Some(l) = labels.of(OPENED) {
        ctx.metrics.tcp_opened.get_or_create(l).inc();
    }
    let result = match finished {
        Some(result) => result,
        None => copying.await,
    };
    let (outcome, request_bytes, response_bytes) = result;
    if let Err(e) = outcome {
        tracing::debug!(%cluster, error = %e, "TCP proxying ended with an error");
    }
    // Istio counts "sent" in the response direction, "received" in the request's.
    if let Some(l) = labels.of(SENT) {
        ctx.metrics.tcp_sent.get_or_create(l).inc_by(response_bytes);
    }
    if let Some(l) = labels.of(RECEIVED) {
        ctx.metrics
            .tcp_received
            .get_or_create(l)
            .inc_by(request_bytes);
    }
    if let Some(l) = labels.of(CLOSED) {
        ctx.metrics.tcp_closed.get_or_create(l).inc();
    }
    if let Some(logs) = &route.access_logs {
        let closed = Closed {
            bytes: (request_bytes, response_bytes),
            ..opening
        };
        log(logs, &client, &closed);
    }
}

/// Why a connection was closed before it was proxied (network RBAC or
/// ext_authz): `%CONNECTION_TERMINATION_DETAILS%` and the response flags.
#[derive(Debug)]
pub struct Refused {
    pub flags: &'static str,
    pub details: String,
}

/// Who a connection came from and was for, for its log line.
pub struct Client<'a> {
    pub client: SocketAddr,
    pub original: SocketAddr,
    pub sni: Option<&'a str>,
    pub peer_uri: Option<&'a str>,
}

/// How a connection ended, for its log line.
pub struct Closed<'a> {
    pub flags: &'static str,
    pub termination: Option<&'a str>,
    /// The cluster proxied to; none when refused before the proxy ran.
    pub cluster: Option<&'a ClusterName>,
    /// The endpoint and the local end of the connection to it.
    pub upstream: Option<(SocketAddr, Option<SocketAddr>)>,
    /// From the client, and to it.
    pub bytes: (u64, u64),
    /// When it was accepted, on both clocks.
    pub started: (std::time::Instant, std::time::SystemTime),
}

impl Closed<'_> {
    /// A connection refused before it was proxied, as Envoy logs it: no
    /// upstream, no bytes, the reason in the termination details.
    pub fn refused(refused: &Refused) -> Closed<'_> {
        Closed {
            flags: refused.flags,
            termination: Some(&refused.details),
            cluster: None,
            upstream: None,
            bytes: (0, 0),
            started: (std::time::Instant::now(), std::time::SystemTime::now()),
        }
    }
}

/// Writes a connection's access log line, as Envoy's tcp_proxy does when a
/// connection closes: no request, response code 0.
pub fn log(logs: &AccessLogs, client: &Client<'_>, closed: &Closed<'_>) {
    logs.write(&entry(client, closed));
}

/// The connection's attributes, as logs and metric tags read them.
fn entry<'a>(client: &Client<'a>, closed: &Closed<'a>) -> Entry<'a> {
    Entry {
        start: closed.started.1,
        duration: closed.started.0.elapsed(),
        request: None,
        response_headers: &[],
        response_code: 0,
        flags: closed.flags,
        details: None,
        termination_details: closed.termination,
        transport_failure: None,
        bytes_received: closed.bytes.0,
        bytes_sent: closed.bytes.1,
        upstream_host: closed.upstream.map(|(remote, _)| remote),
        upstream_local: closed.upstream.and_then(|(_, local)| local),
        upstream_cluster: closed.cluster.map(ClusterName::as_str),
        upstream_peer_uri: None,
        downstream_local: client.original,
        downstream_remote: client.client,
        downstream_direct: client.client,
        downstream_peer_uri: client.peer_uri,
        local_uri: None,
        sni: client.sni,
        route_name: None,
    }
}

/// A connection's metric labels: Istio's standard ones, and each metric's
/// (opened, closed, sent, received) when the chain's `istio.stats` reshapes
/// them (`None` inside for a dropped one).
struct ConnectionLabels {
    standard: TcpLabels,
    shaped: Option<[Shaped<TcpLabels>; 4]>,
}

impl ConnectionLabels {
    fn new(
        stats: Option<&StatsConfig>,
        standard: TcpLabels,
        client: &Client<'_>,
        closed: &Closed<'_>,
    ) -> Self {
        let shaped = stats.map(|stats| {
            stats.shaped(
                StandardMetric::TCP,
                &standard,
                &entry(client, closed),
                |l, custom| TcpLabels { custom, ..l },
            )
        });
        Self { standard, shaped }
    }

    /// The labels of the `i`th of [`StandardMetric::TCP`], unless dropped.
    fn of(&self, i: usize) -> Option<&TcpLabels> {
        match self.shaped.as_ref().map(|s| &s[i]) {
            None | Some(Shaped::Standard) => Some(&self.standard),
            Some(Shaped::Dropped) => None,
            Some(Shaped::Custom(labels)) => Some(labels),
        }
    }
}

/// A side of the connection: with the exchange, our frame goes out first
/// (flushed, since the peer may wait for it before sending its own) and the
/// peer's is taken off what comes in.
async fn exchanging<S>(ctx: &Context, mut stream: S, exchange: bool) -> (Stripped<S>, Told)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if !exchange {
        return (Stripped::plain(stream), None);
    }
    let sent = async {
        stream.write_all(&ctx.local_metadata.tcp_frame).await?;
        stream.flush().await
    };
    if let Err(e) = sent.await {
        // The copy that follows meets the same error and ends the connection.
        tracing::debug!(error = %e, "could not send our metadata frame");
    }
    let (stream, told) = Stripped::new(stream);
    (stream, Some(told))
}

async fn wait_told(told: &mut Told) -> Option<Peer> {
    let rx = told.as_mut()?;
    let metadata = tokio::time::timeout(LABELS_WAIT, rx).await.ok()?.ok()??;
    Some(crate::peer::from_struct(&metadata))
}

fn told_now(told: &mut Told) -> Option<Peer> {
    let metadata = told.as_mut()?.try_recv().ok()??;
    Some(crate::peer::from_struct(&metadata))
}

/// What the peer's frame said, with the principal its certificate proved.
fn merge(told: Option<Peer>, proved: Option<Peer>) -> Option<Peer> {
    match (told, proved) {
        (Some(told), Some(proved)) => Some(Peer {
            principal: proved.principal,
            ..told
        }),
        (told, proved) => told.or(proved),
    }
}

/// The service a connection is for: the outbound cluster's host, the inbound
/// cluster's `istio.services`, or the address dialled.
fn service_of(snapshot: &Snapshot, cluster: &ClusterName, original: SocketAddr) -> ServiceLabels {
    ServiceLabels::from_cluster(cluster.as_str())
        .or_else(|| snapshot.cluster(cluster)?.service.clone())
        .unwrap_or_else(|| ServiceLabels {
            host: original.ip().to_string(),
            name: cluster.to_string(),
            namespace: "unknown".into(),
        })
}

/// The upstream connection and its place under the cluster's
/// `max_connections`, which, as Envoy's tcp_proxy, it never goes over: a
/// connection over the limit is closed at once (flag `UO`).
async fn connect(
    ctx: &Context,
    snapshot: &Snapshot,
    name: &ClusterName,
    original: SocketAddr,
    source: Option<OriginalSource>,
) -> Result<(upstream::Connected, Slot), UpstreamError> {
    let cluster = snapshot
        .cluster(name)
        .ok_or_else(|| UpstreamError::NoCluster(name.clone()))?;
    let Some(slot) = cluster.load.acquire(&cluster.limits, Resource::Connection) else {
        ctx.metrics
            .overflowed(cluster.name.as_str(), Resource::Connection);
        return Err(UpstreamError::Overflow(
            cluster.name.clone(),
            Resource::Connection,
        ));
    };
    let chosen = upstream::choose(snapshot, cluster, original, &[], None).await?;
    let _in_flight = chosen.in_flight();
    let connected = upstream::connect(ctx, cluster, &chosen, Carries::Tcp, source).await;
    let attempt = match &connected {
        Ok(_) => Attempt::Connected,
        Err(_) => Attempt::Failed,
    };
    chosen.record(cluster, attempt);
    Ok((connected?, slot))
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

//! Reaching an upstream: choose the endpoint (balancing, original destination,
//! DNS), connect within the cluster's timeout from its bind address, and wrap the
//! connection in mesh mTLS when the endpoint has a sidecar, or reach it in an
//! HBONE tunnel when it takes one (ambient).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use oxmesh_identity::SpiffeId;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;

use crate::config::cluster::{Cluster, Discovery, Keepalive};
use crate::config::tls::Carries;
use crate::config::{ClusterName, Snapshot};
use crate::context::Context;
use crate::state::{Balanced, InFlight};
use crate::{balance, outlier};

/// Why no upstream connection: each maps to Envoy's response flag.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cluster {0} is not known")]
    NoCluster(ClusterName),
    #[error("cluster {0} has no healthy endpoint")]
    NoHealthy(ClusterName),
    #[error("cluster {0}: circuit breaker open ({1:?} limit)")]
    Overflow(ClusterName, crate::breaker::Resource),
    #[error("connecting to {address}: {source}")]
    Connect {
        address: SocketAddr,
        source: io::Error,
    },
    #[error("connecting to {0}: timed out")]
    Timeout(SocketAddr),
    #[error("mTLS with {address}: {source}")]
    Tls {
        address: SocketAddr,
        source: io::Error,
    },
}

impl UpstreamError {
    /// Envoy's response flag: NC cluster not found, UH no healthy upstream,
    /// UO upstream overflow (circuit breaking), UF upstream connection failure.
    pub fn flag(&self) -> &'static str {
        match self {
            UpstreamError::NoCluster(_) => "NC",
            UpstreamError::NoHealthy(_) => "UH",
            UpstreamError::Overflow(..) => "UO",
            _ => "UF",
        }
    }
}

/// An endpoint chosen for one attempt.
#[derive(Clone)]
pub struct Chosen {
    pub address: SocketAddr,
    pub mesh_tls: bool,
    /// Reached in an HBONE tunnel to its 15008.
    pub tunnel: bool,
    set: Option<Arc<Balanced>>,
    index: usize,
}

impl Chosen {
    /// Counts the attempt as in flight on the endpoint, for LEAST_REQUEST.
    pub fn in_flight(&self) -> Option<InFlight> {
        self.set
            .as_deref()
            .and_then(|set| set.states.get(self.index))
            .map(InFlight::start)
    }

    /// Tells outlier detection how the attempt on this endpoint went.
    pub fn record(&self, cluster: &Cluster, attempt: outlier::Attempt) {
        if let (Some(policy), Some(set)) = (&cluster.outlier, &self.set) {
            outlier::record(set, self.index, policy, attempt);
        }
    }
}

pub async fn choose(
    snapshot: &Snapshot,
    cluster: &Cluster,
    original: SocketAddr,
    tried: &[SocketAddr],
    hash: Option<u64>,
) -> Result<Chosen, UpstreamError> {
    let no_healthy = || UpstreamError::NoHealthy(cluster.name.clone());
    let set = match &cluster.discovery {
        Discovery::OriginalDst => {
            return Ok(Chosen {
                address: original,
                mesh_tls: false,
                tunnel: false,
                set: None,
                index: 0,
            });
        }
        Discovery::Eds(_) => snapshot
            .endpoints_of(cluster)
            .cloned()
            .ok_or_else(no_healthy)?,
        Discovery::Static(set) => set.clone(),
        Discovery::Dns(dns) => dns.endpoints().await,
    };
    let index =
        balance::pick(&set, &cluster.balance_policy(), tried, hash).ok_or_else(no_healthy)?;
    let endpoint = &set.set.endpoints[index];
    Ok(Chosen {
        address: endpoint.address,
        mesh_tls: endpoint.mesh_tls,
        tunnel: endpoint.tunnel,
        index,
        set: Some(set),
    })
}

/// Connect from the downstream client's own address (Envoy's original_src, used
/// with TPROXY): the socket is transparent, so it may bind an address the pod
/// does not own, and carries `mark`, which routes the app's replies back to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OriginalSource {
    pub ip: IpAddr,
    pub mark: u32,
}

/// A connection to an upstream: plain, mesh mTLS, or an HBONE tunnel.
pub enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    Tunnel(Box<crate::hbone::client::Tunnel>),
}

/// A connected upstream and what telemetry needs of it.
pub struct Connected {
    pub io: Io,
    /// The SPIFFE id the upstream proved, over mTLS.
    pub peer: Option<SpiffeId>,
    /// The upstream agreed to Istio's TCP metadata exchange.
    pub exchange: bool,
    /// The connection's own address (`%UPSTREAM_LOCAL_ADDRESS%`).
    pub local: Option<SocketAddr>,
    /// The endpoint's.
    pub remote: SocketAddr,
}

pub async fn connect(
    ctx: &Context,
    cluster: &Cluster,
    chosen: &Chosen,
    carries: Carries,
    source: Option<OriginalSource>,
) -> Result<Connected, UpstreamError> {
    let address = chosen.address;
    if chosen.tunnel {
        return tunnel(ctx, cluster, address).await;
    }
    let dialling = async {
        match source.filter(|s| s.ip.is_ipv4() == address.is_ipv4()) {
            Some(source) => dial_from(address, source).await,
            None => dial(address, cluster.bind).await,
        }
    };
    let tcp = tokio::time::timeout(cluster.connect_timeout, dialling)
        .await
        .map_err(|_| UpstreamError::Timeout(address))?
        .map_err(|source| UpstreamError::Connect { address, source })?;
    if let Some(keepalive) = &cluster.keepalive
        && let Err(e) = keep_alive(&tcp, keepalive)
    {
        tracing::debug!(error = %e, "cannot set TCP keep-alive");
    }
    let local = tcp.local_addr().ok();
    let Some(tls) = cluster.tls.for_endpoint(chosen.mesh_tls) else {
        return Ok(Connected {
            io: Io::Plain(tcp),
            peer: None,
            exchange: false,
            local,
            remote: address,
        });
    };
    let config = ctx
        .client_tls(tls, carries)
        .map_err(|e| UpstreamError::Tls {
            address,
            source: std::io::Error::other(e),
        })?;
    let connector = tokio_rustls::TlsConnector::from(config);
    let name = ServerName::try_from(tls.sni.clone())
        .unwrap_or_else(|_| ServerName::IpAddress(address.ip().into()));
    let stream = tokio::time::timeout(cluster.connect_timeout, connector.connect(name, tcp))
        .await
        .map_err(|_| UpstreamError::Timeout(address))?
        .map_err(|source| UpstreamError::Tls { address, source })?;
    let session = stream.get_ref().1;
    let peer = session
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|leaf| oxmesh_identity::certificate::identity_of(leaf));
    let exchange = session.alpn_protocol() == Some(crate::exchange::ALPN);
    Ok(Connected {
        io: Io::Tls(Box::new(stream)),
        peer,
        exchange,
        local,
        remote: address,
    })
}

/// An HBONE tunnel to the endpoint: a CONNECT for `address` through its
/// 15008, under mutual TLS with this proxy's certificate; the server must
/// be one of the identities the cluster expects (any workload of the mesh
/// when it names none). Pooled per endpoint, as the node proxy pools.
async fn tunnel(
    ctx: &Context,
    cluster: &Cluster,
    address: SocketAddr,
) -> Result<Connected, UpstreamError> {
    let identities = match cluster.tls.mesh_endpoints.as_deref().map(|t| &t.kind) {
        Some(crate::config::tls::UpstreamKind::Mesh { identities }) => identities.clone(),
        _ => Vec::new(),
    };
    let target = crate::hbone::client::Target {
        peer: SocketAddr::new(address.ip(), crate::hbone::PORT),
        identities,
        authority: address,
        headers: http::HeaderMap::new(),
    };
    let opened = tokio::time::timeout(cluster.connect_timeout, ctx.hbone.open_to(&target))
        .await
        .map_err(|_| UpstreamError::Timeout(address))?
        .map_err(|e| UpstreamError::Tls {
            address,
            source: io::Error::other(e),
        })?;
    let (tunnel, peer) = opened;
    Ok(Connected {
        io: Io::Tunnel(Box::new(tunnel)),
        peer,
        exchange: false,
        local: None,
        remote: address,
    })
}

/// SO_KEEPALIVE with the cluster's probe settings; what it leaves unset
/// keeps the system's.
fn keep_alive(tcp: &TcpStream, keepalive: &Keepalive) -> io::Result<()> {
    let mut settings = socket2::TcpKeepalive::new();
    if let Some(time) = keepalive.time {
        settings = settings.with_time(time);
    }
    if let Some(interval) = keepalive.interval {
        settings = settings.with_interval(interval);
    }
    if let Some(probes) = keepalive.probes {
        settings = settings.with_retries(probes);
    }
    socket2::SockRef::from(tcp).set_tcp_keepalive(&settings)
}

const INBOUND_SOURCE_V4: std::net::Ipv4Addr = std::net::Ipv4Addr::new(127, 0, 0, 6);
const INBOUND_SOURCE_V6: std::net::Ipv6Addr = std::net::Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 6);

/// Connects to a local workload from the inbound passthrough source
/// (127.0.0.6, or ::6), which interception never captures again: how a
/// proxy hands an inbound connection to its app.
pub async fn dial_inbound(address: SocketAddr) -> io::Result<TcpStream> {
    dial(address, Some(IpAddr::V4(INBOUND_SOURCE_V4))).await
}

async fn dial(address: SocketAddr, bind: Option<IpAddr>) -> io::Result<TcpStream> {
    let socket = if address.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // The inbound source 127.0.0.6 has an IPv6 twin, ::6 (which interception
    // puts on loopback): traffic from either is never captured again.
    let bind = match bind {
        Some(IpAddr::V4(v4)) if address.is_ipv6() && v4 == INBOUND_SOURCE_V4 => {
            Some(IpAddr::V6(INBOUND_SOURCE_V6))
        }
        other => other.filter(|ip| ip.is_ipv4() == address.is_ipv4()),
    };
    if let Some(ip) = bind {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = socket.connect(address).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Dials from the client's address, as original_src does; needs CAP_NET_ADMIN
/// (IP_TRANSPARENT and SO_MARK).
async fn dial_from(address: SocketAddr, source: OriginalSource) -> io::Result<TcpStream> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(address),
        socket2::Type::STREAM,
        None,
    )?;
    if address.is_ipv4() {
        socket.set_ip_transparent_v4(true)?;
    } else {
        socket.set_ip_transparent_v6(true)?;
    }
    if source.mark != 0 {
        socket.set_mark(source.mark)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&SocketAddr::new(source.ip, 0).into())?;
    let socket = TcpSocket::from_std_stream(socket.into());
    let stream = socket.connect(address).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Io::Tunnel(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Io::Tunnel(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Io::Tunnel(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Io::Tunnel(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::cluster::v3::Cluster as EnvoyCluster;
    use envoy_types::pb::envoy::config::cluster::v3::cluster::{
        ClusterDiscoveryType, DiscoveryType,
    };
    use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
    use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
    use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress};
    use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
    use envoy_types::pb::envoy::config::endpoint::v3::{
        ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
    };

    use super::*;

    /// A STRICT_DNS cluster over two host names (IP literals: no resolver needed).
    fn dns_cluster() -> Cluster {
        let host = |ip: &str| LbEndpoint {
            host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
                address: Some(Address {
                    address: Some(AddressKind::SocketAddress(SocketAddress {
                        address: ip.to_owned(),
                        port_specifier: Some(PortSpecifier::PortValue(80)),
                        ..Default::default()
                    })),
                }),
                ..Default::default()
            })),
            ..Default::default()
        };
        let cluster = EnvoyCluster {
            name: "outbound|80||example.com".to_owned(),
            cluster_discovery_type: Some(ClusterDiscoveryType::Type(
                DiscoveryType::StrictDns as i32,
            )),
            load_assignment: Some(ClusterLoadAssignment {
                cluster_name: "outbound|80||example.com".to_owned(),
                endpoints: vec![LocalityLbEndpoints {
                    lb_endpoints: vec![host("127.0.0.1"), host("127.0.0.2")],
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        crate::config::cluster::convert(&cluster).expect("converts")
    }

    #[tokio::test]
    async fn dns_clusters_keep_their_turn_across_resolutions() {
        let cluster = dns_cluster();
        let snapshot = Snapshot::default();
        let original = SocketAddr::from(([127, 0, 0, 9], 80));
        let mut picked = Vec::new();
        for _ in 0..4 {
            let chosen = choose(&snapshot, &cluster, original, &[], None)
                .await
                .expect("an endpoint");
            picked.push(chosen.address.ip().to_string());
        }
        assert_eq!(
            picked,
            ["127.0.0.1", "127.0.0.2", "127.0.0.1", "127.0.0.2"],
            "round robin goes on over the resolved addresses"
        );
    }
}

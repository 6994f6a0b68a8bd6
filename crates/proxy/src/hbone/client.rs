//! The client side: open a tunnel to `authority` through the HBONE server at
//! `peer`. Connections are pooled per peer address and expected identity, so
//! tunnels between the same two workloads share one TLS connection as HTTP/2
//! streams; a connection that closed is replaced on the next tunnel. One
//! dial per pool key at a time: tunnels that open together while there is
//! no connection wait for the one being made instead of making their own.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, Version};
use http_body_util::Empty;
use hyper::client::conn::http2::{self, SendRequest};
use hyper::upgrade::Upgraded;
use hyper_util::rt::{TokioExecutor, TokioIo};
use oxmesh_identity::SpiffeId;
use oxmesh_identity::credentials::Credentials;
use oxmesh_identity::verify::PeerPolicy;
use rustls::pki_types::ServerName;
use tokio::net::TcpSocket;

use super::{CONNECT_TIMEOUT, CONNECTION_WINDOW, FRAME_SIZE, HboneError, STREAM_WINDOW};

/// One tunnel to open.
#[derive(Clone, Debug)]
pub struct Target {
    /// The HBONE server: the destination's (or its waypoint's) address and 15008.
    pub peer: SocketAddr,
    /// Identities the server may present; any other is refused. None listed:
    /// any workload of this workload's trust domain.
    pub identities: Vec<SpiffeId>,
    /// Where the server sends the stream.
    pub authority: SocketAddr,
    /// Sent with the CONNECT (`forwarded`, `baggage`).
    pub headers: HeaderMap,
}

/// An open tunnel: read and write it as the TCP connection it carries.
pub type Tunnel = TokioIo<Upgraded>;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    peer: SocketAddr,
    identities: Vec<SpiffeId>,
}

/// A pooled connection and the identity its server proved.
#[derive(Clone)]
struct Pooled {
    sender: SendRequest<Empty<Bytes>>,
    peer: Option<SpiffeId>,
}

/// A pool key's connection, and the lock its dial is made under.
type Slot = Arc<tokio::sync::Mutex<Option<Pooled>>>;

/// Makes the sockets a client dials from: a node proxy serving a pod makes
/// them in the pod's network namespace, so its tunnels leave from the pod's
/// own address.
pub trait Sockets: Send + Sync {
    /// An unconnected TCP socket of `peer`'s family.
    fn tcp(&self, peer: SocketAddr) -> std::io::Result<TcpSocket>;
}

/// Sockets of the proxy's own network namespace.
pub struct HostSockets;

impl Sockets for HostSockets {
    fn tcp(&self, peer: SocketAddr) -> std::io::Result<TcpSocket> {
        if peer.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
    }
}

/// Opens tunnels with this workload's certificate.
pub struct Client {
    credentials: Arc<Credentials>,
    sockets: Arc<dyn Sockets>,
    /// Held only to find a key's slot, never across I/O.
    pool: Mutex<HashMap<Key, Slot>>,
}

impl Client {
    pub fn new(credentials: Arc<Credentials>) -> Self {
        Self::with_sockets(credentials, Arc::new(HostSockets))
    }

    pub fn with_sockets(credentials: Arc<Credentials>, sockets: Arc<dyn Sockets>) -> Self {
        Self {
            credentials,
            sockets,
            pool: Mutex::new(HashMap::new()),
        }
    }

    /// Opens a tunnel: a CONNECT on a pooled connection to the peer, or on a
    /// new one.
    pub async fn open(&self, target: &Target) -> Result<Tunnel, HboneError> {
        self.open_to(target).await.map(|(tunnel, _)| tunnel)
    }

    /// [`Client::open`], with the identity the server proved.
    pub async fn open_to(&self, target: &Target) -> Result<(Tunnel, Option<SpiffeId>), HboneError> {
        let key = Key {
            peer: target.peer,
            identities: target.identities.clone(),
        };
        let Pooled { mut sender, peer } = self.connection(key, target).await?;
        let request = connect_request(target)?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|source| HboneError::Http {
                peer: target.peer,
                source,
            })?;
        if response.status() != StatusCode::OK {
            return Err(HboneError::Refused {
                peer: target.peer,
                authority: target.authority,
                status: response.status(),
            });
        }
        let upgraded = hyper::upgrade::on(response)
            .await
            .map_err(|source| HboneError::Http {
                peer: target.peer,
                source,
            })?;
        Ok((TokioIo::new(upgraded), peer))
    }

    /// The key's pooled connection if it can still take streams, else a new
    /// one, dialled while the key's other tunnels wait.
    async fn connection(&self, key: Key, target: &Target) -> Result<Pooled, HboneError> {
        let slot = self
            .pool
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(key)
            .or_default()
            .clone();
        let mut held = slot.lock().await;
        match held.as_ref() {
            Some(pooled) if !pooled.sender.is_closed() => Ok(pooled.clone()),
            _ => {
                let pooled = self.dial(target).await?;
                *held = Some(pooled.clone());
                Ok(pooled)
            }
        }
    }

    async fn dial(&self, target: &Target) -> Result<Pooled, HboneError> {
        if self.credentials.svid().is_none() {
            return Err(HboneError::NoCertificate);
        }
        let peer = target.peer;
        let policy = if target.identities.is_empty() {
            let own = self.credentials.identity().trust_domain().clone();
            PeerPolicy::TrustDomains(vec![own])
        } else {
            PeerPolicy::Identities(target.identities.clone())
        };
        let mut config = self.credentials.client_config(policy);
        config.alpn_protocols = vec![b"h2".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let handshake = async {
            let connect = |source| HboneError::Connect { peer, source };
            let tcp = self
                .sockets
                .tcp(peer)
                .map_err(connect)?
                .connect(peer)
                .await
                .map_err(connect)?;
            let _ = tcp.set_nodelay(true);
            // An address as the server name: rustls sends no SNI, as ztunnel.
            connector
                .connect(ServerName::IpAddress(peer.ip().into()), tcp)
                .await
                .map_err(|source| HboneError::Tls { peer, source })
        };
        let tls = tokio::time::timeout(CONNECT_TIMEOUT, handshake)
            .await
            .map_err(|_| HboneError::Timeout(peer))??;
        let proved = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|leaf| oxmesh_identity::certificate::identity_of(leaf));
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(FRAME_SIZE)
            .handshake(TokioIo::new(tls))
            .await
            .map_err(|source| HboneError::Http { peer, source })?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%peer, error = %e, "HBONE connection ended");
            }
        });
        Ok(Pooled {
            sender,
            peer: proved,
        })
    }
}

fn connect_request(target: &Target) -> Result<Request<Empty<Bytes>>, HboneError> {
    let mut request = Request::new(Empty::new());
    *request.method_mut() = Method::CONNECT;
    *request.version_mut() = Version::HTTP_2;
    // Authority form, `ip:port` (`[v6]:port`), as SocketAddr prints it.
    *request.uri_mut() = target
        .authority
        .to_string()
        .parse()
        .map_err(|_| HboneError::Authority(target.authority))?;
    *request.headers_mut() = target.headers.clone();
    Ok(request)
}

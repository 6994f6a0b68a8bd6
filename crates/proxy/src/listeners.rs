//! Runs the listeners the config names: binds new ones, stops removed ones, and
//! hands each accepted connection to its filter chain. A connection looks its
//! listener up in the snapshot current when it arrives, so a push changes what new
//! connections do without rebinding anything.

use std::collections::HashMap;
use std::net::{Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use socket2::{Domain, Socket, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::authz::{Facts, Metadata};
use crate::config::ext_authz::ExtAuthz;
use crate::config::listener::{
    ConnectionFacts, Direction, FilterChain, NetworkFilter, NetworkGuard, Transport,
};
use crate::config::rbac::RbacFilter;
use crate::config::{Listener, Snapshot};
use crate::context::Context;
use crate::ext_authz::{Decision, Subject};
use crate::http::{self, Downstream, TlsPeer};
use crate::inspect;
use crate::metrics::Reporter;
use crate::original_dst::original_destination;
use crate::tcp::{self, Sides};
use crate::upstream::OriginalSource;

/// The network RBAC filter's metadata namespace.
const NETWORK_RBAC_NAMESPACE: &str = "envoy.filters.network.rbac";

/// A TLS handshake that takes longer is abandoned.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

struct Running {
    address: SocketAddr,
    transparent: bool,
    /// Takes traffic into the workload (a sidecar's `virtualInbound`).
    inbound: bool,
    /// Where the sockets are bound (port 0 in config: the port the OS chose).
    bound: Vec<SocketAddr>,
    tasks: Vec<JoinHandle<()>>,
}

pub struct Listeners {
    running: Mutex<HashMap<String, Running>>,
    /// The data-plane runtimes: each gets its own socket per listener, and the
    /// connections it accepts.
    workers: Vec<tokio::runtime::Handle>,
}

impl Listeners {
    /// At least one worker is needed.
    pub fn new(workers: Vec<tokio::runtime::Handle>) -> Self {
        Self {
            running: Mutex::new(HashMap::new()),
            workers,
        }
    }

    /// The data-plane runtimes.
    pub fn workers(&self) -> &[tokio::runtime::Handle] {
        &self.workers
    }

    /// Makes the running listeners match `snapshot`; returns bind errors by name.
    pub fn reconcile(&self, ctx: &Arc<Context>, snapshot: &Snapshot) -> Vec<String> {
        let Ok(mut running) = self.running.lock() else {
            return vec!["listener table poisoned".to_owned()];
        };
        running.retain(|name, r| {
            let keep = snapshot
                .listeners
                .get(name)
                .is_some_and(|l| l.address == r.address && l.transparent == r.transparent);
            if !keep {
                r.tasks.iter().for_each(JoinHandle::abort);
                tracing::info!(listener = %name, "listener stopped");
            }
            keep
        });
        let mut errors = Vec::new();
        for (name, listener) in &snapshot.listeners {
            if running.contains_key(name) {
                continue;
            }
            match self.bind(listener) {
                Ok(sockets) => {
                    let bound = sockets
                        .iter()
                        .filter_map(|(_, s)| s.local_addr().ok())
                        .collect::<std::collections::BTreeSet<_>>()
                        .into_iter()
                        .collect();
                    let tasks = sockets
                        .into_iter()
                        .map(|(worker, s)| worker.spawn(accept_loop(ctx.clone(), name.clone(), s)))
                        .collect();
                    tracing::info!(listener = %name, address = %listener.address, "listening");
                    running.insert(
                        name.clone(),
                        Running {
                            address: listener.address,
                            transparent: listener.transparent,
                            inbound: listener.direction == Direction::Inbound,
                            bound,
                            tasks,
                        },
                    );
                }
                Err(e) if listener.transparent => errors.push(format!(
                    "listener {name:?} on {} (transparent, for TPROXY; needs CAP_NET_ADMIN): {e}",
                    listener.address
                )),
                Err(e) => errors.push(format!("listener {name:?} on {}: {e}", listener.address)),
            }
        }
        errors
    }

    /// The addresses listener `name` is bound to.
    pub fn bound(&self, name: &str) -> Vec<SocketAddr> {
        self.running
            .lock()
            .ok()
            .and_then(|r| r.get(name).map(|r| r.bound.clone()))
            .unwrap_or_default()
    }

    /// Stops accepting everywhere (a gateway's drain).
    pub fn stop_all(&self) {
        self.stop(|_| true);
    }

    /// Stops accepting traffic into the workload only (a sidecar's drain, as
    /// Istio's agent drains inbound listeners): the app's own calls out keep
    /// working while it shuts down.
    pub fn stop_inbound(&self) {
        self.stop(|r| r.inbound);
    }

    fn stop(&self, which: impl Fn(&Running) -> bool) {
        if let Ok(mut running) = self.running.lock() {
            running.retain(|_, r| {
                let stop = which(r);
                if stop {
                    r.tasks.iter().for_each(JoinHandle::abort);
                }
                !stop
            });
        }
    }
}

impl Listeners {
    /// One socket per worker on the listener's address (port 0: the port the
    /// first one got); for `0.0.0.0`, also `[::]` (IPv6 only) when the host has
    /// IPv6, as Istio's dual-stack listeners do.
    fn bind(
        &self,
        listener: &Listener,
    ) -> std::io::Result<Vec<(tokio::runtime::Handle, TcpListener)>> {
        let mut sockets = Vec::new();
        let mut address = listener.address;
        for worker in &self.workers {
            let _entered = worker.enter();
            let socket = listen(address, false, listener.transparent)?;
            address = socket.local_addr()?;
            sockets.push((worker.clone(), socket));
        }
        if address.ip().is_unspecified() && address.is_ipv4() {
            let v6 = SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), address.port());
            for worker in &self.workers {
                let _entered = worker.enter();
                match listen(v6, true, listener.transparent) {
                    Ok(s) => sockets.push((worker.clone(), s)),
                    Err(_) => break,
                }
            }
        }
        Ok(sockets)
    }
}

fn listen(address: SocketAddr, v6_only: bool, transparent: bool) -> std::io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(address), Type::STREAM, None)?;
    // TPROXY hands over connections for addresses the proxy does not own;
    // this needs CAP_NET_ADMIN.
    if transparent && address.is_ipv4() {
        socket.set_ip_transparent_v4(true)?;
    } else if transparent {
        socket.set_ip_transparent_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if v6_only {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// Accepts until the listener is stopped (its task aborted: a removed
/// listener, or a drain).
async fn accept_loop(ctx: Arc<Context>, name: String, socket: TcpListener) {
    loop {
        match socket.accept().await {
            Ok((stream, client)) => {
                let _ = stream.set_nodelay(true);
                tokio::spawn(connection(ctx.clone(), name.clone(), stream, client));
            }
            Err(e) => {
                tracing::warn!(listener = %name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn connection(ctx: Arc<Context>, name: String, stream: TcpStream, client: SocketAddr) {
    let _open = ctx.open_connection();
    let snapshot = ctx.snapshot();
    let Some(listener) = snapshot.listeners.get(&name).cloned() else {
        return;
    };
    // REDIRECT leaves the original destination with conntrack; TPROXY
    // delivers the connection to the address the client dialled.
    let original = if listener.use_original_dst {
        original_destination(&stream).or_else(|e| {
            if listener.transparent {
                stream.local_addr()
            } else {
                Err(e)
            }
        })
    } else {
        stream.local_addr()
    };
    let Ok(original) = original else {
        return;
    };
    let wanted = inspect::Wanted {
        tls: listener
            .inspect_tls
            .as_ref()
            .is_some_and(|disabled| !disabled.holds(original.port())),
        http: listener
            .inspect_http
            .as_ref()
            .is_some_and(|disabled| !disabled.holds(original.port())),
    };
    let detected = if wanted.tls || wanted.http {
        match inspect::detect(&stream, listener.inspect_timeout, wanted).await {
            Ok(Some(d)) => d,
            // Nothing said in time: a server-first protocol, plain TCP.
            Ok(None) if listener.continue_on_timeout => inspect::Detected::default(),
            Ok(None) | Err(_) => return,
        }
    } else {
        inspect::Detected::default()
    };
    let facts = ConnectionFacts {
        destination: Some(original),
        sni: detected.sni.as_deref(),
        transport: Some(detected.transport.unwrap_or(Transport::RawBuffer)),
        alpn: &detected.alpn,
    };
    let Some(chain) = listener.select(&facts) else {
        tracing::debug!(listener = %name, %original, "no filter chain matches; closing");
        return;
    };
    let conn = Conn {
        ctx,
        listener: Arc::from(name.as_str()),
        snapshot: snapshot.clone(),
        direction: listener.direction,
        client,
        original,
        sni: detected.sni.as_deref().map(Arc::from),
        tls: chain.tls.is_some(),
        original_source: listener.original_source_mark.map(|mark| OriginalSource {
            ip: client.ip(),
            mark,
        }),
    };
    // The metadata exchange runs only on TCP chains, and rustls must not be
    // offered an ALPN list the client shares nothing with.
    let exchange = matches!(chain.filter, NetworkFilter::Tcp(_))
        && detected
            .alpn
            .iter()
            .any(|p| p.as_bytes() == crate::exchange::ALPN);
    match &chain.tls {
        Some(tls) => conn.terminate_tls(chain, tls, stream, exchange).await,
        None => conn.run(chain, stream, None, false).await,
    }
}

struct Conn {
    ctx: Arc<Context>,
    /// The listener that accepted the connection.
    listener: Arc<str>,
    snapshot: Arc<Snapshot>,
    direction: Direction,
    client: SocketAddr,
    original: SocketAddr,
    sni: Option<Arc<str>>,
    /// The connection arrived over TLS the proxy terminated.
    tls: bool,
    original_source: Option<OriginalSource>,
}

impl Conn {
    async fn terminate_tls(
        self,
        chain: &FilterChain,
        tls: &crate::config::tls::DownstreamTls,
        stream: TcpStream,
        exchange: bool,
    ) {
        let config = match self.ctx.server_tls(tls, exchange) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "cannot terminate TLS on this chain");
                return;
            }
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let accepted = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await;
        let stream = match accepted {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(client = %self.client, error = %e, "mTLS handshake refused");
                return;
            }
            Err(_) => return,
        };
        let session = stream.get_ref().1;
        let leaf = session.peer_certificates().and_then(|c| c.first());
        // A MUTUAL gateway's pins and names, past what the CA check did.
        if let Some(leaf) = leaf
            && !tls.client_checks.admits(leaf.as_ref())
        {
            tracing::debug!(client = %self.client, "client certificate refused by the server's subject alt names or pins");
            return;
        }
        let peer = leaf.map(|leaf| TlsPeer::from_leaf(leaf.as_ref()));
        let exchange = session.alpn_protocol() == Some(crate::exchange::ALPN);
        self.run(chain, stream, peer, exchange).await;
    }

    /// Serves the chain's filter; `exchange` is true when mesh TLS agreed to
    /// Istio's TCP metadata exchange.
    async fn run<I>(self, chain: &FilterChain, io: I, tls_peer: Option<TlsPeer>, exchange: bool)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        if let Err(denied) = self.authorized(chain, tls_peer.as_ref()).await {
            // Envoy's network RBAC closes a denied connection without a word,
            // and its access log says why.
            if let NetworkFilter::Tcp(route) = &chain.filter
                && let Some(logs) = &route.access_logs
            {
                let peer_uri = tls_peer.as_ref().and_then(|p| p.uri.as_deref());
                tcp::log(
                    logs,
                    &self.client_facts(peer_uri),
                    &tcp::Closed::refused(&denied),
                );
            }
            return;
        }
        match &chain.filter {
            NetworkFilter::Http(manager) => {
                let downstream = Downstream {
                    direction: self.direction,
                    client: self.client,
                    original: self.original,
                    tls_peer,
                    edge: manager.use_remote_address,
                    tls: self.tls,
                    original_source: self.original_source,
                    sni: self.sni.clone(),
                };
                let origin = http::ChainId {
                    listener: self.listener.clone(),
                    chain: Arc::from(chain.name.as_str()),
                };
                http::serve(self.ctx, manager, origin, io, downstream).await;
            }
            NetworkFilter::Tcp(route) => {
                let sides = Sides {
                    reporter: if self.direction == Direction::Inbound {
                        Reporter::Destination
                    } else {
                        Reporter::Source
                    },
                    mutual_tls: tls_peer.is_some(),
                    downstream_peer_uri: tls_peer.as_ref().and_then(|p| p.uri.clone()),
                    downstream_peer: tls_peer.map(|p| tcp::identity_peer(p.principal())),
                    exchange,
                    original_source: self.original_source,
                    client: self.client,
                    sni: self.sni.clone(),
                };
                // AUTO_PASSTHROUGH: the client named the cluster in its SNI.
                let by_sni = self
                    .sni
                    .as_deref()
                    .filter(|_| chain.sni_cluster)
                    .and_then(|sni| route.for_sni(sni));
                let route = by_sni.as_ref().unwrap_or(route);
                tcp::proxy(&self.ctx, &self.snapshot, route, io, self.original, sides).await;
            }
        }
    }
}

impl Conn {
    /// The chain's guards, decided once per connection with what is known of
    /// it (Envoy decides on the first bytes; nothing a TCP rule looks at
    /// changes in between): network RBAC, and ext_authz when its shadow RBAC
    /// matched.
    async fn authorized(
        &self,
        chain: &FilterChain,
        tls_peer: Option<&TlsPeer>,
    ) -> Result<(), tcp::Refused> {
        if chain.authz.is_empty() {
            return Ok(());
        }
        let mut metadata = Metadata::default();
        let peer = tls_peer.and_then(|p| p.uri.as_deref());
        for guard in &chain.authz {
            match guard {
                NetworkGuard::Rbac(rbac) => self.rbac(rbac, tls_peer, &mut metadata)?,
                NetworkGuard::ExtAuthz(authz) => self.ask(authz, peer, &metadata).await?,
            }
        }
        Ok(())
    }

    /// What a refused connection's log line says of its client.
    fn client_facts<'a>(&'a self, peer_uri: Option<&'a str>) -> tcp::Client<'a> {
        tcp::Client {
            client: self.client,
            original: self.original,
            sni: self.sni.as_deref(),
            peer_uri,
        }
    }

    fn rbac(
        &self,
        rbac: &RbacFilter,
        tls_peer: Option<&TlsPeer>,
        metadata: &mut Metadata,
    ) -> Result<(), tcp::Refused> {
        let facts = Facts {
            direct_remote: self.client,
            remote_ip: self.client.ip(),
            destination: self.original,
            peer: tls_peer.map(|p| p.uri.as_deref()),
            sni: self.sni.as_deref(),
            request: None,
            metadata,
        };
        let verdict = rbac.check(&facts);
        for (decision, shadow) in verdict.decisions() {
            let prefix = if shadow {
                rbac.shadow_prefix.as_str()
            } else {
                ""
            };
            self.ctx.metrics.rbac_tcp(decision, prefix).inc();
        }
        verdict.leave_shadow_result(NETWORK_RBAC_NAMESPACE, &rbac.shadow_prefix, metadata);
        if let Some(details) = verdict.details() {
            tracing::debug!(client = %self.client, %details, "connection denied");
            return Err(tcp::Refused { flags: "", details });
        }
        Ok(())
    }

    async fn ask(
        &self,
        authz: &ExtAuthz,
        peer: Option<&str>,
        metadata: &Metadata,
    ) -> Result<(), tcp::Refused> {
        if authz.enabled.as_ref().is_some_and(|m| !m.matches(metadata)) {
            return Ok(());
        }
        let local = self.ctx.credentials.identity().to_string();
        let subject = Subject {
            source: self.client,
            source_principal: peer,
            destination: self.original,
            destination_principal: &local,
            request: None,
        };
        let refused = |details: &str| tcp::Refused {
            flags: "UAEX",
            details: details.to_owned(),
        };
        match crate::ext_authz::ask(&self.ctx, &self.snapshot, authz, &subject).await {
            Decision::Allow(_) => Ok(()),
            Decision::Deny(_) => {
                tracing::debug!(client = %self.client, "connection denied by the external authorizer");
                Err(refused("ext_authz_denied"))
            }
            Decision::Error(reason) => {
                tracing::debug!(client = %self.client, %reason, "external authorizer failed");
                if authz.failure_mode_allow {
                    Ok(())
                } else {
                    Err(refused("ext_authz_error"))
                }
            }
        }
    }
}

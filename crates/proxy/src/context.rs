//! What every connection shares: the current config snapshot, the upstreams'
//! runtime state, the workload's credentials and the metrics.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use arc_swap::ArcSwap;
use oxmesh_identity::credentials::Credentials;
use oxmesh_identity::verify::PeerPolicy;
use tokio::sync::watch;

use crate::config::Snapshot;
use crate::config::tls::{
    Carries, CredentialConfig, DownstreamKind, DownstreamTls, Material, UpstreamKind, UpstreamTls,
    UserServer,
};
use crate::metrics::{Metrics, Peer};
use crate::peer::{self, LocalMetadata};
use crate::state::Upstreams;
use crate::workload::Workload;

pub struct Context {
    pub config: ArcSwap<Snapshot>,
    /// What balancing and outlier detection count, kept across pushes.
    pub(crate) upstreams: Upstreams,
    pub credentials: Arc<Credentials>,
    pub workload: Arc<Workload>,
    pub local_metadata: LocalMetadata,
    /// This workload as telemetry labels it.
    pub local_peer: Peer,
    pub metrics: Metrics,
    /// Set once listeners and clusters from the control plane (or a bootstrap) are
    /// in place: the first half of readiness.
    config_applied: AtomicBool,
    /// Whether readiness also waits for a workload certificate (the second half).
    needs_certificate: bool,
    /// `true` once draining began: listeners stop accepting.
    draining: watch::Sender<bool>,
    /// The same, for the data path to read without a lock.
    drain_started: AtomicBool,
    /// Downstream connections open now, for the drain to wait on.
    active: AtomicUsize,
}

/// Counts a downstream connection as open for as long as it lives.
pub struct OpenConnection(Arc<Context>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Context {
    pub fn new(
        workload: Workload,
        credentials: Arc<Credentials>,
        needs_certificate: bool,
    ) -> Arc<Self> {
        let principal = credentials.identity().to_string();
        Arc::new(Self {
            config: ArcSwap::from_pointee(Snapshot::default()),
            upstreams: Upstreams::default(),
            local_metadata: LocalMetadata::of(&workload),
            local_peer: peer::local_peer(&workload, principal),
            workload: Arc::new(workload),
            credentials,
            metrics: Metrics::default(),
            config_applied: AtomicBool::new(false),
            needs_certificate,
            draining: watch::Sender::new(false),
            drain_started: AtomicBool::new(false),
            active: AtomicUsize::new(0),
        })
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.config.load_full()
    }

    pub fn open_connection(self: &Arc<Self>) -> OpenConnection {
        self.active.fetch_add(1, Ordering::Relaxed);
        OpenConnection(self.clone())
    }

    pub fn active_connections(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    pub fn mark_config_applied(&self) {
        self.config_applied.store(true, Ordering::Release);
    }

    /// Ready: config applied, (when the proxy has a CA) a valid certificate, and
    /// not draining, so load balancers stop sending new work during a drain.
    pub fn is_ready(&self) -> bool {
        self.config_applied.load(Ordering::Acquire)
            && (!self.needs_certificate || self.credentials.is_ready())
            && !self.is_draining()
    }

    pub fn start_draining(&self) {
        self.drain_started.store(true, Ordering::Release);
        self.draining.send_replace(true);
    }

    pub fn draining(&self) -> watch::Receiver<bool> {
        self.draining.subscribe()
    }

    pub fn is_draining(&self) -> bool {
        self.drain_started.load(Ordering::Acquire)
    }

    /// The client TLS config for a cluster, built once per cluster version.
    pub fn client_tls(
        &self,
        tls: &UpstreamTls,
        carries: Carries,
    ) -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
        let cached = &tls.client_configs[carries.index()];
        if let Some(config) = cached.get() {
            return Ok(config.clone());
        }
        let mut config = match &tls.kind {
            UpstreamKind::Mesh { identities } => {
                let policy = if identities.is_empty() {
                    PeerPolicy::TrustDomains(vec![
                        self.credentials.identity().trust_domain().clone(),
                    ])
                } else {
                    PeerPolicy::Identities(identities.clone())
                };
                self.credentials.client_config(policy)
            }
            UpstreamKind::User {
                client_certificate,
                roots,
                names,
            } => crate::origination::client_config(
                roots.as_ref(),
                names,
                client_certificate.as_ref(),
            )?,
        };
        config.alpn_protocols = match (&tls.kind, carries.mesh_alpn()) {
            (UpstreamKind::Mesh { .. }, Some(alpn)) => vec![alpn.to_vec()],
            _ => tls.alpn.clone(),
        };
        Ok(cached.get_or_init(|| Arc::new(config)).clone())
    }

    /// The server TLS config for an inbound chain: mesh clients of our trust
    /// domain. `exchange` (a TCP chain whose client offered
    /// `istio-peer-exchange`) accepts that ALPN, so the metadata exchange runs.
    pub fn server_tls(
        &self,
        tls: &DownstreamTls,
        exchange: bool,
    ) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
        if let DownstreamKind::Credential {
            certificate,
            client_ca,
        } = &tls.kind
        {
            return self.credential_tls(tls, certificate, client_ca.as_deref());
        }
        let exchange = exchange && matches!(tls.kind, DownstreamKind::Mesh);
        let cached = if exchange {
            &tls.exchange_config
        } else {
            &tls.server_config
        };
        if let Some(config) = cached.get() {
            return Ok(config.clone());
        }
        let config = match &tls.kind {
            DownstreamKind::Mesh => {
                let mut config = if tls.require_client_certificate {
                    let domain = self.credentials.identity().trust_domain().clone();
                    self.credentials
                        .server_config(PeerPolicy::TrustDomains(vec![domain]))
                } else {
                    self.credentials.server_config_without_client_auth()
                };
                // Mesh clients offer Istio's ALPN tokens, which name no
                // application protocol; rustls would refuse a client whose tokens
                // overlap none of ours, so only the exchange's is accepted, and
                // only from a client known to offer it. What the app speaks (h2
                // or HTTP/1.1) is recognised inside the tunnel.
                config.alpn_protocols = if exchange {
                    vec![crate::exchange::ALPN.to_vec()]
                } else {
                    Vec::new()
                };
                config
            }
            DownstreamKind::User(user) => crate::origination::server_config(
                user,
                tls.require_client_certificate,
                tls.alpn.clone(),
                &tls.params,
            )?,
            DownstreamKind::Credential { .. } => {
                return Err(rustls::Error::General("not a fixed credential".into()));
            }
        };
        Ok(cached.get_or_init(|| Arc::new(config)).clone())
    }

    /// A gateway chain whose certificate the control plane serves by name: the
    /// Secret as it is now, so a renewal serves the next handshake; the config
    /// is built again only when a Secret changed.
    fn credential_tls(
        &self,
        tls: &DownstreamTls,
        certificate: &str,
        client_ca: Option<&str>,
    ) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
        let snapshot = self.snapshot();
        let missing = |name: &str| rustls::Error::General(format!("secret {name} not received"));
        let served = |name: &str| {
            snapshot
                .credentials
                .get(name)
                .cloned()
                .ok_or_else(|| missing(name))
        };
        let certificate_material = served(certificate)?;
        let ca_material = client_ca.map(served).transpose()?;
        if let Some(cached) = tls.credential_config.load().as_ref()
            && Arc::ptr_eq(&cached.certificate, &certificate_material)
            && match (&cached.client_ca, &ca_material) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            }
        {
            return Ok(cached.config.clone());
        }
        let Material::Certificate(key) = certificate_material.as_ref() else {
            return Err(missing(certificate));
        };
        let client_roots = match ca_material.as_deref() {
            None => None,
            Some(Material::Roots(roots)) => Some(roots.clone()),
            Some(Material::Certificate(_)) => return Err(missing(client_ca.unwrap_or_default())),
        };
        let user = UserServer {
            certificate: key.clone(),
            client_roots,
        };
        let config = Arc::new(crate::origination::server_config(
            &user,
            tls.require_client_certificate,
            tls.alpn.clone(),
            &tls.params,
        )?);
        tls.credential_config.store(Some(Arc::new(CredentialConfig {
            certificate: certificate_material,
            client_ca: ca_material,
            config: config.clone(),
        })));
        Ok(config)
    }
}

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
    Carries, CredentialConfig, DownstreamKind, DownstreamTls, Material, Roots, UpstreamKind,
    UpstreamTls, UserServer,
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
    /// Tunnels to endpoints that take HBONE, pooled per endpoint.
    pub hbone: crate::hbone::client::Client,
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
            hbone: crate::hbone::client::Client::new(credentials.clone()),
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
        if let UpstreamKind::Credential {
            client_certificate,
            roots,
            names,
        } = &tls.kind
        {
            return self.credential_client_tls(
                tls,
                client_certificate.as_deref(),
                roots.as_deref(),
                names,
            );
        }
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
            UpstreamKind::Credential { .. } => {
                return Err(rustls::Error::General("not a fixed credential".into()));
            }
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
            certificates,
            client_ca,
        } = &tls.kind
        {
            return self.credential_server_tls(tls, certificates, client_ca.as_deref());
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

    /// The served Secrets `names` as they are now; an error names one not
    /// received yet.
    fn served(&self, names: &[&str]) -> Result<Vec<Arc<Material>>, rustls::Error> {
        let snapshot = self.config.load();
        names
            .iter()
            .map(|name| {
                snapshot
                    .credentials
                    .get(*name)
                    .cloned()
                    .ok_or_else(|| rustls::Error::General(format!("secret {name} not received")))
            })
            .collect()
    }

    /// The config `cache` holds, if it was built from the Secrets `names`
    /// are served as now: the handshake's path, which allocates nothing.
    fn still_current<'a, C>(
        &self,
        cache: &arc_swap::ArcSwapOption<CredentialConfig<C>>,
        names: impl Iterator<Item = &'a str>,
    ) -> Option<Arc<C>> {
        let cached = cache.load();
        let cached = cached.as_ref()?;
        cached
            .current(&self.config.load().credentials, names)
            .then(|| cached.config.clone())
    }

    /// A gateway chain whose certificates the control plane serves by name:
    /// the Secrets as they are now, so a renewal serves the next handshake;
    /// the config is built again only when a Secret changed.
    fn credential_server_tls(
        &self,
        tls: &DownstreamTls,
        certificates: &[String],
        client_ca: Option<&str>,
    ) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
        let names = || certificates.iter().map(String::as_str).chain(client_ca);
        if let Some(config) = self.still_current(&tls.credential_config, names()) {
            return Ok(config);
        }
        let names: Vec<&str> = names().collect();
        let materials = self.served(&names)?;
        let (keys, ca) = materials.split_at(certificates.len());
        let user = UserServer {
            certificates: keys
                .iter()
                .zip(&names)
                .map(|(m, name)| certificate_of(m, name))
                .collect::<Result<_, _>>()?,
            client_roots: ca
                .first()
                .map(|m| roots_of(m, client_ca.unwrap_or_default()))
                .transpose()?,
        };
        let config = Arc::new(crate::origination::server_config(
            &user,
            tls.require_client_certificate,
            tls.alpn.clone(),
            &tls.params,
        )?);
        tls.credential_config.store(Some(Arc::new(CredentialConfig {
            materials,
            config: config.clone(),
        })));
        Ok(config)
    }

    /// A cluster originating TLS with served Secrets (a DestinationRule's
    /// `credentialName` at a gateway), built again when one changed.
    fn credential_client_tls(
        &self,
        tls: &UpstreamTls,
        client_certificate: Option<&str>,
        roots: Option<&str>,
        names: &[String],
    ) -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
        let wanted = || client_certificate.into_iter().chain(roots);
        if let Some(config) = self.still_current(&tls.credential_config, wanted()) {
            return Ok(config);
        }
        let wanted: Vec<&str> = wanted().collect();
        let materials = self.served(&wanted)?;
        let mut served = materials.iter().zip(&wanted);
        let key = client_certificate
            .and_then(|_| served.next())
            .map(|(m, name)| certificate_of(m, name))
            .transpose()?;
        let roots = served
            .next()
            .map(|(m, name)| roots_of(m, name))
            .transpose()?;
        let mut config = crate::origination::client_config(roots.as_ref(), names, key.as_ref())?;
        config.alpn_protocols = tls.alpn.clone();
        let config = Arc::new(config);
        tls.credential_config.store(Some(Arc::new(CredentialConfig {
            materials,
            config: config.clone(),
        })));
        Ok(config)
    }
}

fn certificate_of(
    material: &Material,
    name: &str,
) -> Result<Arc<rustls::sign::CertifiedKey>, rustls::Error> {
    match material {
        Material::Certificate(key) => Ok(key.clone()),
        Material::Roots(_) => Err(rustls::Error::General(format!(
            "secret {name} holds no certificate and key"
        ))),
    }
}

fn roots_of(material: &Material, name: &str) -> Result<Arc<Roots>, rustls::Error> {
    match material {
        Material::Roots(roots) => Ok(roots.clone()),
        Material::Certificate(_) => {
            Err(rustls::Error::General(format!("secret {name} holds no CA")))
        }
    }
}

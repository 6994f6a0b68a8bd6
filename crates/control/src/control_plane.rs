//! Starting the control plane: its CA, its own certificate, and its ports.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use oxmesh_identity::ca::{Authority, CaError, Lifetimes};
use oxmesh_identity::credentials::Credentials;
use oxmesh_identity::manager::{CertificateManager, ManagerError, Rotation};
use oxmesh_identity::token::{TokenAuthority, TokenError};
use oxmesh_identity::{SpiffeId, TrustDomain};
use oxmesh_xds::ads::metrics::AdsMetrics;
use oxmesh_xds::ads::status::StatusRegistry;
use oxmesh_xds::ads::{AdsServer, AdsService, DEFAULT_PUSH_THROTTLE};
use oxmesh_xds::istio_ca::istio_certificate_service_server::IstioCertificateServiceServer;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::discovery::{DEBOUNCE, Discovery, Triggers};
use crate::jwks::JwksResolver;
use crate::mesh_config::MeshConfig;
use crate::monitoring::Monitoring;
use crate::push_context::PushContext;
use crate::source::Snapshot;
use crate::source::directory::DirectorySource;
use crate::source::kubernetes::{self, KubernetesError};

use crate::authenticate::{LocalTokens, XdsCallers};
use crate::ca_service::CaService;
use crate::live_authority::LiveAuthority;
use crate::node_authorizer::NodeAuthorizer;
use crate::serving_certificate::{InProcessCa, default_dns_names};
use crate::token_review::{Callers, TokenReview};

/// How long open connections get to finish when the control plane stops.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// How often a plug-in CA's files are checked for changes.
const CA_RELOAD_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// How to run the control plane.
#[derive(Clone)]
pub struct Options {
    /// CA, token key and other state; kept across restarts.
    pub state_dir: PathBuf,
    /// A plug-in CA (Istio's `cacerts` layout) instead of the self-signed root.
    pub ca_dir: Option<PathBuf>,
    pub trust_domain: TrustDomain,
    pub lifetimes: Lifetimes,
    /// The namespace the control plane runs in (`istio-system`).
    pub namespace: String,
    /// Its revision (`istio.io/rev`); `default` for the unnamed one.
    pub revision: String,
    /// Port 15012: CA and xDS over TLS.
    pub secure_addr: SocketAddr,
    /// Port 15010: xDS in plaintext.
    pub xds_addr: SocketAddr,
    /// Port 15014: metrics and debug endpoints.
    pub monitoring_addr: SocketAddr,
    /// Port 15017: the admission webhooks (`/inject`, `/validate`) over HTTPS.
    pub webhook_addr: SocketAddr,
    /// What the injection webhook puts in pods.
    pub injection: crate::inject::Settings,
    /// On Kubernetes, the API server: the config source, and the reviewer of
    /// service-account tokens.
    pub kubernetes: Option<kube::Client>,
    /// The watched config directory, when not on Kubernetes; with neither the
    /// mesh is empty.
    pub config_dir: Option<PathBuf>,
    pub mesh: MeshConfig,
    /// How RequestAuthentications' key sets are fetched.
    pub jwks: crate::jwks::Settings,
    pub limits: Limits,
    /// A Prometheus (`http://host:port`) the dashboard reads traffic from,
    /// instead of scraping the proxies itself.
    pub dashboard_prometheus: Option<String>,
    /// `namespace/account` entries (comma-separated) whose node proxies may
    /// have their node's pods' certificates.
    pub trusted_node_accounts: String,
}

/// What one control plane takes on at once, so a flood of streams or
/// certificate requests costs bounded memory and leaves the rest served.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Open xDS streams on each port.
    pub xds_streams: usize,
    /// Certificate requests being authenticated or signed.
    pub csrs_in_flight: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            xds_streams: oxmesh_xds::ads::DEFAULT_MAX_STREAMS,
            csrs_in_flight: crate::ca_service::DEFAULT_IN_FLIGHT,
        }
    }
}

/// What a revision adds to Istio's names (`istiod-canary`,
/// `istio-sidecar-injector-canary`): nothing for the default one.
pub fn revision_suffix(revision: &str) -> String {
    match revision {
        "default" | "" => String::new(),
        named => format!("-{named}"),
    }
}

/// The control plane's Service for a revision, as Istio names it: `istiod`,
/// `istiod-canary`.
pub fn service_name(revision: &str) -> String {
    format!("istiod{}", revision_suffix(revision))
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("the control plane's own certificate: {0}")]
    Certificate(#[from] ManagerError),
    #[error("cannot listen on {addr} (is another control plane running? change it with {flag})")]
    Listen {
        addr: SocketAddr,
        flag: &'static str,
        source: std::io::Error,
    },
    #[error("invalid control-plane identity: {0}")]
    Identity(String),
    #[error(transparent)]
    Kubernetes(#[from] KubernetesError),
    #[error(transparent)]
    CaSecret(#[from] crate::ca_secret::CaSecretError),
    #[error(transparent)]
    Jwks(#[from] crate::jwks::RootsError),
}

/// The first PushContext, built before any port answers, and the task that keeps
/// it current.
async fn start_discovery(
    authority: &Arc<LiveAuthority>,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    mesh: MeshConfig,
    jwks: Arc<JwksResolver>,
) -> (Arc<Discovery>, tokio::task::JoinHandle<()>) {
    let first = snapshots.borrow().clone();
    let roots = {
        let authority = authority.clone();
        move || authority.roots_pem().into_bytes()
    };
    let mut context = PushContext::build(
        &first.objects,
        mesh.clone(),
        Arc::from(roots()),
        first.generation << 20,
    );
    context.jwt_keys = jwks.resolve(context.jwks_sources()).await;
    let discovery = Discovery::new(context, first);
    let triggers = Triggers {
        snapshots,
        roots_changed: authority.roots_changed(),
        jwks_changed: jwks.changed(),
    };
    let task = discovery
        .clone()
        .follow(triggers, roots, mesh, jwks, DEBOUNCE);
    (discovery, task)
}

/// Whether a plug-in CA directory holds any of its files: an empty one (the
/// optional `cacerts` Secret not created) means the self-signed root, as in
/// istiod; a partial one is an error that names what is missing.
fn holds_a_ca(dir: &std::path::Path) -> bool {
    let present = oxmesh_identity::ca::files::NAMES
        .iter()
        .any(|name| dir.join(name).exists());
    if !present {
        tracing::info!(dir = %dir.display(), "no plug-in CA there; using the self-signed root");
    }
    present
}

/// The CA that signs: the plug-in one, else on Kubernetes the root kept in
/// `istio-ca-secret`, else the self-signed root in the state directory.
async fn initial_authority(
    options: &Options,
    plug_in: Option<&PathBuf>,
) -> Result<Authority, StartError> {
    if let Some(dir) = plug_in {
        return Ok(Authority::plug_in(dir, options.lifetimes)?);
    }
    if let Some(client) = &options.kubernetes {
        // The API server may not be up yet: wait for it, as the config source does.
        let mut delay = std::time::Duration::from_millis(500);
        loop {
            let loaded = crate::ca_secret::load_or_publish(
                client,
                &options.namespace,
                &options.state_dir,
                &options.trust_domain,
                options.lifetimes,
            )
            .await;
            match loaded {
                Err(e) if e.is_unavailable() => {
                    tracing::warn!(error = %e, retry_in = ?delay, "cannot reach the mesh root's Secret");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(std::time::Duration::from_secs(30));
                }
                other => return Ok(other?),
            }
        }
    }
    Ok(Authority::self_signed(
        &options.state_dir,
        &options.trust_domain,
        options.lifetimes,
    )?)
}

/// What the leader writes to the cluster: the root in every namespace and in
/// the webhook configurations. One Lease per revision decides who leads.
fn start_writers(
    client: &kube::Client,
    options: &Options,
    discovery: &Arc<Discovery>,
    authority: &Arc<LiveAuthority>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let service = service_name(&options.revision);
    let leading = crate::leader::Election::new(
        client.clone(),
        &options.namespace,
        &format!("{service}-leader"),
        crate::leader::identity(),
    )
    .run();
    let root_cert = crate::root_cert::Publisher {
        client: client.clone(),
        discovery: discovery.clone(),
        authority: authority.clone(),
        leading: leading.clone(),
    };
    let status = crate::gateway_status::StatusWriter {
        discovery: discovery.clone(),
        sink: crate::gateway_status::Sink::Kubernetes {
            client: client.clone(),
            leading: leading.clone(),
        },
    };
    let deployer = crate::gateway_deployer::Deployer {
        client: client.clone(),
        discovery: discovery.clone(),
        leading: leading.clone(),
    };
    let ca_bundle = crate::webhook_ca_bundle::Patcher {
        client: client.clone(),
        authority: authority.clone(),
        leading,
        configurations: crate::webhook_ca_bundle::configurations(
            &options.revision,
            &options.namespace,
        ),
    };
    vec![
        root_cert.spawn(),
        ca_bundle.spawn(),
        status.spawn(),
        deployer.spawn(),
    ]
}

/// A started control plane; dropping it does not stop it, `shutdown` does.
pub struct ControlPlane {
    pub authority: Arc<LiveAuthority>,
    pub discovery: Arc<Discovery>,
    pub status: StatusRegistry,
    pub secure_addr: SocketAddr,
    pub xds_addr: SocketAddr,
    pub monitoring_addr: SocketAddr,
    pub webhook_addr: SocketAddr,
    shutdown: tokio::sync::watch::Sender<bool>,
    servers: Vec<tokio::task::JoinHandle<()>>,
    background: Vec<tokio::task::JoinHandle<()>>,
}

async fn bind(
    addr: SocketAddr,
    flag: &'static str,
) -> Result<(TcpListener, SocketAddr), StartError> {
    let listen_error = |source| StartError::Listen { addr, flag, source };
    let listener = TcpListener::bind(addr).await.map_err(listen_error)?;
    let bound = listener.local_addr().map_err(listen_error)?;
    Ok((listener, bound))
}

/// The config the control plane serves: the cluster, the watched directory, or
/// nothing. On Kubernetes this returns once every kind has listed.
async fn config_source(options: &Options) -> Result<watch::Receiver<Arc<Snapshot>>, StartError> {
    Ok(match (&options.kubernetes, &options.config_dir) {
        (Some(client), _) => {
            kubernetes::start(client.clone(), options.mesh.root_namespace.clone()).await?
        }
        // The watcher's thread ends by itself once the receivers are gone.
        (None, Some(dir)) => DirectorySource::new(dir.clone()).watch().0,
        (None, None) => watch::channel(Arc::new(Snapshot::default())).1,
    })
}

impl ControlPlane {
    pub async fn start(options: Options) -> Result<Self, StartError> {
        // Ports first: a second control plane on the same ports stops here, untouched.
        let (listener, secure_addr) = bind(options.secure_addr, "--secure-port").await?;
        let (xds_listener, xds_addr) = bind(options.xds_addr, "--xds-port").await?;
        let (monitoring_listener, monitoring_addr) =
            bind(options.monitoring_addr, "--monitoring-port").await?;
        let (webhook_listener, webhook_addr) = bind(options.webhook_addr, "--webhook-port").await?;
        let plug_in = options.ca_dir.as_ref().filter(|dir| holds_a_ca(dir));
        let authority = LiveAuthority::new(initial_authority(&options, plug_in).await?);
        if let Some(dir) = plug_in {
            authority
                .clone()
                .watch(dir.clone(), options.lifetimes, CA_RELOAD_INTERVAL);
        }
        let tokens = Callers {
            local: LocalTokens(Arc::new(TokenAuthority::load_or_create(
                &options.state_dir,
                options.trust_domain.clone(),
            )?)),
            cluster: options
                .kubernetes
                .clone()
                .map(|api| TokenReview::new(api, options.trust_domain.clone())),
        };
        let identity = SpiffeId::new(options.trust_domain.clone(), &options.namespace, "istiod")
            .map_err(|e| StartError::Identity(e.to_string()))?;
        let credentials = Credentials::new(identity.clone());
        let in_process = InProcessCa::new(
            authority.clone(),
            identity,
            default_dns_names(&options.namespace, &service_name(&options.revision)),
        );
        let manager = CertificateManager::new(in_process, credentials.clone(), Rotation::default());
        manager.refresh().await?;
        let manager_task = tokio::spawn(manager.run());

        let mut background = vec![manager_task];
        let snapshots = config_source(&options).await?;
        let jwks = JwksResolver::from_settings(&options.jwks)?;
        background.push(jwks.spawn_refresh());
        let discovery = start_discovery(&authority, snapshots, options.mesh.clone(), jwks).await;
        background.push(discovery.1);
        let discovery = discovery.0;
        if let Some(client) = &options.kubernetes {
            background.extend(start_writers(client, &options, &discovery, &authority));
        } else {
            let status = crate::gateway_status::StatusWriter {
                discovery: discovery.clone(),
                sink: crate::gateway_status::Sink::File(
                    options.state_dir.join(crate::gateway_status::STATUS_FILE),
                ),
            };
            background.push(status.spawn());
        }
        let status = StatusRegistry::default();
        let metrics = Arc::new(AdsMetrics::default());
        let throttle = Arc::new(Semaphore::new(DEFAULT_PUSH_THROTTLE));
        // Each port has its own stream limit: a flood on the unauthenticated
        // 15010 cannot take the places of proxies that prove who they are.
        let ads = || {
            AdsServer::new(discovery.clone(), status.clone(), metrics.clone())
                .with_throttle(throttle.clone())
                .with_stream_limit(Arc::new(Semaphore::new(options.limits.xds_streams)))
        };
        // 15012 serves only proxies that prove who they are, and only their
        // own config; 15010 is Istio's unauthenticated port.
        let secure_ads = AdsService::new(ads().authenticated(Arc::new(XdsCallers(tokens.clone()))));
        let plain_ads = AdsService::new(ads());
        let monitoring = Arc::new(Monitoring::new(
            discovery.clone(),
            status.clone(),
            &metrics,
            options.dashboard_prometheus.clone(),
        ));

        let mut webhook_tls = credentials.server_config_without_client_auth();
        webhook_tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let mut tls = credentials.server_config_without_client_auth();
        tls.alpn_protocols = vec![b"h2".to_vec()];
        let secure_router = tonic::transport::Server::builder()
            .add_service(IstioCertificateServiceServer::new(
                CaService::new(authority.clone(), tokens)
                    .with_limit(options.limits.csrs_in_flight)
                    .with_node_authorizer(NodeAuthorizer::new(
                        &options.trusted_node_accounts,
                        discovery.clone(),
                    )),
            ))
            .add_service(secure_ads);
        let plain_router = tonic::transport::Server::builder().add_service(plain_ads);
        let (shutdown, stop) = watch::channel(false);
        let stopped = move || {
            let mut stop = stop.clone();
            async move {
                let _ = stop.wait_for(|s| *s).await;
            }
        };
        let secure_stop = stopped();
        let secure = tokio::spawn(async move {
            if let Err(e) =
                crate::secure_server::serve(listener, Arc::new(tls), secure_router, secure_stop)
                    .await
            {
                tracing::error!(error = %e, "the secure port stopped");
            }
        });
        let plain_stop = stopped();
        let plain = tokio::spawn(async move {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(xds_listener);
            if let Err(e) = plain_router
                .serve_with_incoming_shutdown(incoming, plain_stop)
                .await
            {
                tracing::error!(error = %e, "the xDS port stopped");
            }
        });
        let monitoring = tokio::spawn(monitoring.serve(monitoring_listener, stopped()));
        let webhooks = Arc::new(crate::webhook::Webhooks {
            settings: options.injection.clone(),
        });
        let webhooks =
            tokio::spawn(webhooks.serve(webhook_listener, Arc::new(webhook_tls), stopped()));
        tracing::info!(%secure_addr, %xds_addr, %monitoring_addr, %webhook_addr, "control plane serving the CA, xDS, monitoring and webhooks");
        Ok(Self {
            authority,
            discovery,
            status,
            secure_addr,
            xds_addr,
            monitoring_addr,
            webhook_addr,
            shutdown,
            servers: vec![secure, plain, monitoring, webhooks],
            background,
        })
    }

    /// Stops serving. Open streams get `SHUTDOWN_GRACE` to finish, then are cut:
    /// xDS streams never finish by themselves.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for mut server in self.servers {
            if tokio::time::timeout(SHUTDOWN_GRACE, &mut server)
                .await
                .is_err()
            {
                server.abort();
            }
        }
        for task in self.background {
            task.abort();
        }
    }
}

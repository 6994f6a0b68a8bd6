//! Starting and stopping a proxy: credentials from the CA, config over ADS (or
//! from a bootstrap file), the operator endpoints, and a graceful drain on
//! SIGTERM. Admin work (xDS, certificates, endpoints) runs on its own small
//! runtime so a config storm or a scrape never competes with traffic; listeners
//! run on the caller's runtime.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use oxmesh_identity::bundle::TrustBundle;
use oxmesh_identity::credentials::Credentials;
use oxmesh_identity::manager::{CertificateManager, Rotation};
use oxmesh_identity::{SpiffeId, TrustDomain};
use oxmesh_xds::ads::client::{ClientError, SotwClient};
use oxmesh_xds::ca_client::{GrpcCaClient, Token};
use tokio::sync::mpsc;

use crate::admin::{Admin, Command};
use crate::agent::Agent;
use crate::app_metrics::AppMetrics;
use crate::app_probe::AppProbers;
use crate::bootstrap::{self, BootstrapError};
use crate::context::Context;
use crate::listeners::Listeners;
use crate::workload::Workload;

/// Where config comes from.
#[derive(Clone, Debug)]
pub enum Source {
    /// ADS at `address`; plaintext (the control plane's 15010) or TLS (15012).
    Xds { address: String, plaintext: bool },
    /// A static Envoy-style bootstrap file.
    Bootstrap(PathBuf),
}

/// How the workload gets its certificate.
#[derive(Clone, Debug)]
pub struct CaOptions {
    /// Istio serves the CA beside xDS on 15012.
    pub address: String,
    /// The bearer token presented to the CA (a projected service-account token).
    pub token_file: PathBuf,
}

#[derive(Clone, Debug)]
pub struct Options {
    pub source: Source,
    /// `None`: no workload certificate (a bootstrap without mesh TLS).
    pub ca: Option<CaOptions>,
    /// The mesh root the control plane's certificate chains to.
    pub root_cert: Option<PathBuf>,
    /// The name the control plane's certificate carries.
    pub control_plane_name: String,
    pub trust_domain: TrustDomain,
    /// Admin (localhost), health and metrics ports; `None` serves none of them.
    pub ports: Option<AdminPorts>,
    /// How long draining waits for open connections on SIGTERM, and how long
    /// it lasts at least (see [`Drain`]).
    pub drain: Drain,
    /// The app probes answered on the metrics ports (`/app-health/...`).
    pub app_probes: AppProbers,
    /// The app's own metrics, merged into the metrics ports' answer.
    pub app_metrics: Option<AppMetrics>,
}

/// A drain's bounds. New connections are refused at once; the proxy then waits
/// for the open ones, but stays at least `minimum` (Istio's
/// MINIMUM_DRAIN_DURATION) even with none open: callers that have not yet heard
/// that this endpoint is going keep being refused quickly (and retry
/// elsewhere) instead of meeting a pod whose network is already gone.
#[derive(Clone, Copy, Debug)]
pub struct Drain {
    pub duration: Duration,
    pub minimum: Duration,
}

impl Drain {
    /// Istio's terminationDrainDuration and MINIMUM_DRAIN_DURATION: 5 s each.
    pub const ISTIO: Self = Self {
        duration: Duration::from_secs(5),
        minimum: Duration::from_secs(5),
    };
}

#[derive(Clone, Debug)]
pub struct AdminPorts {
    pub admin: u16,
    pub health: u16,
    pub metrics: Vec<u16>,
    /// Istio's agent port (15020); `None` serves none.
    pub status: Option<u16>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot read the root certificate {path}: {reason}")]
    Root { path: PathBuf, reason: String },
    #[error("--root-cert is needed to reach the control plane over TLS and its CA")]
    NoRoot,
    #[error("the workload's identity is invalid: {0}")]
    Identity(String),
    #[error("cannot set up the CA client: {0}")]
    Ca(String),
    #[error(transparent)]
    Bootstrap(#[from] BootstrapError),
    #[error("cannot listen: {0}")]
    Listen(String),
    #[error("cannot bind the proxy's own ports: {0}")]
    Bind(std::io::Error),
    #[error("cannot start the admin runtime: {0}")]
    Runtime(std::io::Error),
}

/// A running proxy, stopped by [`Proxy::wait`].
pub struct Proxy {
    pub ctx: Arc<Context>,
    pub listeners: Arc<Listeners>,
    commands: mpsc::Receiver<Command>,
    drain: Drain,
}

impl Proxy {
    /// Starts everything; traffic runs on `workers` (see [`crate::workers`]).
    pub fn start(
        options: Options,
        workload: Workload,
        workers: Vec<tokio::runtime::Handle>,
    ) -> Result<Self, StartError> {
        let roots = options.root_cert.as_ref().map(read_roots).transpose()?;
        let identity = SpiffeId::new(
            options.trust_domain.clone(),
            &workload.namespace,
            &workload.service_account,
        )
        .map_err(|e| StartError::Identity(e.to_string()))?;
        let credentials = Credentials::new(identity);
        if let Some(roots) = &roots {
            credentials.set_bundle(roots.clone());
        }
        let ca = match &options.ca {
            Some(ca) => Some(ca_client(ca, &options, roots.as_ref())?),
            None => None,
        };
        let node = workload.node();
        let ctx = Context::new(workload, credentials.clone(), ca.is_some());
        let listeners = Arc::new(Listeners::new(workers));
        if let Source::Bootstrap(path) = &options.source {
            let snapshot = Arc::new(bootstrap::load(path)?);
            ctx.config.store(snapshot.clone());
            let errors = listeners.reconcile(&ctx, &snapshot);
            if !errors.is_empty() {
                return Err(StartError::Listen(errors.join("; ")));
            }
            ctx.mark_config_applied();
        }
        let (commands_tx, commands) = mpsc::channel(4);
        let admin = Admin::new(ctx.clone(), listeners.clone(), commands_tx).with_app(
            Arc::new(options.app_probes.clone()),
            options.app_metrics.clone().map(Arc::new),
        );
        let background = Background {
            admin,
            ports: options.ports.clone(),
            ca,
            credentials,
            xds: match &options.source {
                Source::Xds { .. } => {
                    Some((ctx.clone(), listeners.clone(), node, options.clone(), roots))
                }
                Source::Bootstrap(_) => None,
            },
        };
        background.spawn()?;
        Ok(Self {
            ctx,
            listeners,
            commands,
            drain: options.drain,
        })
    }

    /// Runs until `/quitquitquit` (exit now) or `shutdown` resolves (SIGTERM):
    /// then stops accepting and waits for open connections, at least the
    /// drain's minimum and at most its duration.
    pub async fn wait(mut self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::select! {
            _ = self.commands.recv() => {
                tracing::info!("quitquitquit: exiting");
                return;
            }
            _ = shutdown => {}
        }
        tracing::info!(drain = ?self.drain.duration, minimum = ?self.drain.minimum, "draining");
        if self.ctx.workload.mode == crate::workload::Mode::Sidecar {
            self.listeners.stop_inbound();
        } else {
            self.listeners.stop_all();
        }
        self.ctx.start_draining();
        let started = tokio::time::Instant::now();
        let deadline = started + self.drain.duration;
        let floor = started + self.drain.minimum.min(self.drain.duration);
        loop {
            let now = tokio::time::Instant::now();
            let open = self.ctx.active_connections();
            if now >= deadline || (open == 0 && now >= floor) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn read_roots(path: &PathBuf) -> Result<TrustBundle, StartError> {
    let error = |reason: String| StartError::Root {
        path: path.clone(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| error(e.to_string()))?;
    TrustBundle::from_pem(&pem).map_err(|e| error(e.to_string()))
}

fn ca_client(
    ca: &CaOptions,
    options: &Options,
    roots: Option<&TrustBundle>,
) -> Result<GrpcCaClient, StartError> {
    let roots = roots.ok_or(StartError::NoRoot)?;
    GrpcCaClient::new(
        &ca.address,
        &options.control_plane_name,
        roots.roots(),
        Token::File(ca.token_file.clone()),
    )
    .map_err(|e| StartError::Ca(e.to_string()))
}

type XdsParts = (
    Arc<Context>,
    Arc<Listeners>,
    Node,
    Options,
    Option<TrustBundle>,
);

/// What runs on the admin runtime.
struct Background {
    admin: Admin,
    ports: Option<AdminPorts>,
    ca: Option<GrpcCaClient>,
    credentials: Arc<Credentials>,
    xds: Option<XdsParts>,
}

impl Background {
    /// Starts the admin thread; returns once the admin ports are bound.
    fn spawn(self) -> Result<(), StartError> {
        let (bound_tx, bound_rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("oxmesh-admin".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = bound_tx.send(Err(StartError::Runtime(e)));
                        return;
                    }
                };
                runtime.block_on(self.run(bound_tx));
            })
            .map_err(StartError::Runtime)?;
        bound_rx
            .recv()
            .map_err(|_| StartError::Runtime(std::io::Error::other("admin thread died")))?
    }

    async fn run(self, bound: std::sync::mpsc::Sender<Result<(), StartError>>) {
        if let Some(ports) = &self.ports {
            let local = |port| SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
            let any = |port| SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port);
            let metrics: Vec<SocketAddr> = ports.metrics.iter().map(|p| any(*p)).collect();
            let status = ports.status.map(any);
            if let Err(e) = self
                .admin
                .serve(local(ports.admin), any(ports.health), &metrics, status)
                .await
            {
                let _ = bound.send(Err(StartError::Bind(e)));
                return;
            }
        }
        let _ = bound.send(Ok(()));
        if let Some(ca) = self.ca {
            let manager = CertificateManager::new(ca, self.credentials, Rotation::default());
            tokio::spawn(manager.run());
        }
        match self.xds {
            Some((ctx, listeners, node, options, roots)) => {
                let connect = move || connect(options.clone(), node.clone(), roots.clone());
                Agent::new(ctx, listeners, connect).run().await;
            }
            // Nothing else to do here, but the admin endpoints keep serving.
            None => std::future::pending().await,
        }
    }
}

async fn connect(
    options: Options,
    node: Node,
    roots: Option<TrustBundle>,
) -> Result<SotwClient, ClientError> {
    let Source::Xds { address, plaintext } = &options.source else {
        return Err(ClientError::Setup("no xDS source".into()));
    };
    if *plaintext {
        return SotwClient::connect(address, node).await;
    }
    let roots = roots.ok_or_else(|| ClientError::Setup(StartError::NoRoot.to_string()))?;
    // 15012 asks who is calling: the same token the CA gets.
    let token = options
        .ca
        .as_ref()
        .map_or(Token::None, |ca| Token::File(ca.token_file.clone()));
    let bearer = token.bearer().map_err(ClientError::Setup)?;
    SotwClient::connect_tls(
        address,
        &options.control_plane_name,
        roots.roots(),
        node,
        bearer.as_deref(),
    )
    .await
}

//! Starting and stopping a proxy: credentials from the CA, config over ADS, the
//! operator endpoints, and a graceful drain on SIGTERM. Admin work (xDS,
//! certificates, endpoints) runs on its own small runtime so a config storm or a
//! scrape never competes with traffic; listeners run on the caller's runtime.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use oxmesh_identity::bundle::TrustBundle;
use oxmesh_identity::credentials::Credentials;
use oxmesh_identity::manager::{CertificateManager, Rotation};
use oxmesh_identity::{SpiffeId, TrustDomain};
use oxmesh_xds::ads::client::{ClientError, SotwClient};
use oxmesh_xds::ca_client::{GrpcCaClient, Token};
use oxmesh_xds::tls_connector;
use rustls::pki_types::ServerName;
use tokio::sync::mpsc;

use crate::admin::{Admin, Command};
use crate::agent::Agent;
use crate::context::Context;
use crate::listeners::Listeners;
use crate::workload::Workload;

#[derive(Clone, Debug)]
pub struct Options {
    /// The control plane's xDS address (`host:port`).
    pub discovery_address: String,
    /// Plaintext xDS (15010) instead of TLS (15012).
    pub plaintext_xds: bool,
    /// The CA's address; Istio serves it beside xDS on 15012.
    pub ca_address: String,
    /// The name the control plane's certificate carries.
    pub control_plane_name: String,
    pub token_file: PathBuf,
    pub root_cert: PathBuf,
    pub trust_domain: TrustDomain,
    pub admin_port: u16,
    pub health_port: u16,
    pub metrics_ports: Vec<u16>,
    /// How long draining waits for open connections on SIGTERM.
    pub drain_duration: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot read the root certificate {path}: {reason}")]
    Root { path: PathBuf, reason: String },
    #[error("the workload's identity is invalid: {0}")]
    Identity(String),
    #[error("cannot set up the CA client: {0}")]
    Ca(String),
    #[error("cannot bind the proxy's own ports: {0}")]
    Bind(std::io::Error),
    #[error("cannot start the admin runtime: {0}")]
    Runtime(std::io::Error),
}

/// A running proxy, stopped by [`Proxy::wait`].
pub struct Proxy {
    pub ctx: Arc<Context>,
    listeners: Arc<Listeners>,
    commands: mpsc::Receiver<Command>,
    drain_duration: Duration,
}

impl Proxy {
    /// Starts everything; call from within the data-plane runtime.
    pub fn start(options: Options, workload: Workload) -> Result<Self, StartError> {
        let root_pem = std::fs::read(&options.root_cert).map_err(|e| StartError::Root {
            path: options.root_cert.clone(),
            reason: e.to_string(),
        })?;
        let roots = TrustBundle::from_pem(&root_pem).map_err(|e| StartError::Root {
            path: options.root_cert.clone(),
            reason: e.to_string(),
        })?;
        let identity = SpiffeId::new(
            options.trust_domain.clone(),
            &workload.namespace,
            &workload.service_account,
        )
        .map_err(|e| StartError::Identity(e.to_string()))?;
        let credentials = Credentials::new(identity);
        credentials.set_bundle(roots.clone());
        let ca = GrpcCaClient::new(
            &options.ca_address,
            &options.control_plane_name,
            roots.roots(),
            Token::File(options.token_file.clone()),
        )
        .map_err(|e| StartError::Ca(e.to_string()))?;
        let node = workload.node();
        let drain_duration = options.drain_duration;
        let ctx = Context::new(workload, credentials.clone());
        let listeners = Arc::new(Listeners::new(tokio::runtime::Handle::current()));
        let (commands_tx, commands) = mpsc::channel(4);
        let admin = Admin::new(ctx.clone(), listeners.clone(), commands_tx);
        let local = |port| SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
        let any = |port| SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port);
        let admin_addresses = (
            local(options.admin_port),
            any(options.health_port),
            options
                .metrics_ports
                .iter()
                .map(|p| any(*p))
                .collect::<Vec<_>>(),
        );
        let agent_ctx = ctx.clone();
        let agent_listeners = listeners.clone();
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
                runtime.block_on(async move {
                    let (admin_at, health_at, metrics_at) = admin_addresses;
                    let served = admin.serve(admin_at, health_at, &metrics_at).await;
                    let failed = served.is_err();
                    let _ = bound_tx.send(served.map_err(StartError::Bind));
                    if failed {
                        return;
                    }
                    let manager = CertificateManager::new(ca, credentials, Rotation::default());
                    tokio::spawn(manager.run());
                    let connect = move || connect(options.clone(), node.clone(), roots.clone());
                    Agent::new(agent_ctx, agent_listeners, connect).run().await;
                });
            })
            .map_err(StartError::Runtime)?;
        bound_rx
            .recv()
            .map_err(|_| StartError::Runtime(std::io::Error::other("admin thread died")))??;
        Ok(Self {
            ctx,
            listeners,
            commands,
            drain_duration,
        })
    }

    /// Runs until `/quitquitquit` (exit now) or `shutdown` resolves (SIGTERM):
    /// then stops accepting and waits for open connections, at most the drain
    /// duration.
    pub async fn wait(mut self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::select! {
            _ = self.commands.recv() => {
                tracing::info!("quitquitquit: exiting");
                return;
            }
            _ = shutdown => {}
        }
        tracing::info!(drain = ?self.drain_duration, "draining");
        self.ctx.start_draining();
        self.listeners.stop_all();
        let deadline = tokio::time::Instant::now() + self.drain_duration;
        while self.ctx.active_connections() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn connect(
    options: Options,
    node: envoy_types::pb::envoy::config::core::v3::Node,
    roots: TrustBundle,
) -> Result<SotwClient, ClientError> {
    if options.plaintext_xds {
        return SotwClient::connect(&options.discovery_address, node).await;
    }
    let error = |source| ClientError::Connect {
        address: options.discovery_address.clone(),
        source,
    };
    let config = tls_connector::control_plane_config(roots.roots())
        .map_err(|e| error_from_tls(&options.discovery_address, e))?;
    let name = ServerName::try_from(options.control_plane_name.clone()).map_err(|_| {
        error_from_tls(
            &options.discovery_address,
            rustls::Error::General("bad server name".into()),
        )
    })?;
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", options.discovery_address))
            .map_err(error)?
            .connect_timeout(Duration::from_secs(5))
            .connect_with_connector(tls_connector::connector(Arc::new(config), name))
            .await
            .map_err(error)?;
    SotwClient::over(channel, node).await
}

fn error_from_tls(address: &str, e: rustls::Error) -> ClientError {
    ClientError::Setup(format!("TLS to {address}: {e}"))
}

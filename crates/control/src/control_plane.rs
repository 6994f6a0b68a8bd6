//! Starting the control plane: its CA, its own certificate, and its ports.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use oxmesh_identity::ca::{Authority, CaError, Lifetimes};
use oxmesh_identity::credentials::Credentials;
use oxmesh_identity::manager::{CertificateManager, ManagerError, Rotation};
use oxmesh_identity::token::{TokenAuthority, TokenError};
use oxmesh_identity::{SpiffeId, TrustDomain};
use oxmesh_xds::istio_ca::istio_certificate_service_server::IstioCertificateServiceServer;
use tokio::net::TcpListener;

use crate::authenticate::LocalTokens;
use crate::ca_service::CaService;
use crate::live_authority::LiveAuthority;
use crate::serving_certificate::{InProcessCa, default_dns_names};

/// How often a plug-in CA's files are checked for changes.
const CA_RELOAD_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// How to run the control plane.
#[derive(Clone, Debug)]
pub struct Options {
    /// CA, token key and other state; kept across restarts.
    pub state_dir: PathBuf,
    /// A plug-in CA (Istio's `cacerts` layout) instead of the self-signed root.
    pub ca_dir: Option<PathBuf>,
    pub trust_domain: TrustDomain,
    pub lifetimes: Lifetimes,
    /// The namespace the control plane runs in (`istio-system`).
    pub namespace: String,
    /// Port 15012: CA (and later xDS) over TLS.
    pub secure_addr: SocketAddr,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("the control plane's own certificate: {0}")]
    Certificate(#[from] ManagerError),
    #[error(
        "cannot listen on {addr} (is another control plane running? change it with --secure-port)"
    )]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("invalid control-plane identity: {0}")]
    Identity(String),
}

/// A started control plane; dropping it does not stop it, `shutdown` does.
pub struct ControlPlane {
    pub authority: Arc<LiveAuthority>,
    pub secure_addr: SocketAddr,
    shutdown: tokio::sync::watch::Sender<bool>,
    server: tokio::task::JoinHandle<()>,
}

impl ControlPlane {
    pub async fn start(options: Options) -> Result<Self, StartError> {
        // Ports first: a second control plane on the same ports stops here, untouched.
        let listener = TcpListener::bind(options.secure_addr)
            .await
            .map_err(|source| StartError::Listen {
                addr: options.secure_addr,
                source,
            })?;
        let secure_addr = listener.local_addr().map_err(|source| StartError::Listen {
            addr: options.secure_addr,
            source,
        })?;
        let authority = LiveAuthority::new(match &options.ca_dir {
            Some(dir) => Authority::plug_in(dir, options.lifetimes)?,
            None => Authority::self_signed(
                &options.state_dir,
                &options.trust_domain,
                options.lifetimes,
            )?,
        });
        if let Some(dir) = &options.ca_dir {
            authority
                .clone()
                .watch(dir.clone(), options.lifetimes, CA_RELOAD_INTERVAL);
        }
        let tokens =
            TokenAuthority::load_or_create(&options.state_dir, options.trust_domain.clone())?;
        let identity = SpiffeId::new(options.trust_domain.clone(), &options.namespace, "istiod")
            .map_err(|e| StartError::Identity(e.to_string()))?;
        let credentials = Credentials::new(identity.clone());
        let in_process = InProcessCa::new(
            authority.clone(),
            identity,
            default_dns_names(&options.namespace),
        );
        let manager = CertificateManager::new(in_process, credentials.clone(), Rotation::default());
        manager.refresh().await?;
        tokio::spawn(manager.run());

        let mut tls = credentials.server_config_without_client_auth();
        tls.alpn_protocols = vec![b"h2".to_vec()];
        let router =
            tonic::transport::Server::builder().add_service(IstioCertificateServiceServer::new(
                CaService::new(authority.clone(), LocalTokens(tokens)),
            ));
        let (shutdown, mut stop) = tokio::sync::watch::channel(false);
        let server = tokio::spawn(async move {
            let stopped = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            if let Err(e) =
                crate::secure_server::serve(listener, Arc::new(tls), router, stopped).await
            {
                tracing::error!(error = %e, "the secure port stopped");
            }
        });
        tracing::info!(%secure_addr, "control plane serving the CA");
        Ok(Self {
            authority,
            secure_addr,
            shutdown,
            server,
        })
    }

    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.server.await;
    }
}

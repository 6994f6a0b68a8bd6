//! Istio's `grpc-agent` template: beside a proxyless gRPC app there is no proxy,
//! only this agent. It writes the app's xDS bootstrap, keeps the workload
//! certificate in files that gRPC's xDS credentials read for mTLS (renewed
//! before it expires, written whole or not at all), answers the app's rewritten
//! probes on 15020, and reports ready on 15021 once the certificate is there.

use std::convert::Infallible;
use std::net::{Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use oxmesh_identity::TrustDomain;
use oxmesh_identity::bundle::TrustBundle;
use oxmesh_identity::credentials::Credentials;
use oxmesh_identity::file::write_atomically;
use oxmesh_identity::manager::{CertificateManager, IssuedPem, Rotation};
use oxmesh_xds::ca_client::{GrpcCaClient, Token};
use oxmesh_xds::grpc_bootstrap::{GrpcNode, grpc_bootstrap};
use tokio::net::TcpListener;

use crate::app_probe::AppProbers;
use crate::workload::Workload;

#[derive(Clone, Debug)]
pub struct AgentOptions {
    /// The CA (Istio serves it on 15012).
    pub ca_address: String,
    /// The name in the control plane's certificate.
    pub control_plane_name: String,
    /// The mesh root the control plane's certificate chains to.
    pub root_cert: PathBuf,
    /// The bearer token for the CA (a projected service-account token).
    pub token_file: PathBuf,
    pub trust_domain: TrustDomain,
    /// The xDS address the app dials (the control plane's plaintext 15010).
    pub xds_address: String,
    /// Where the app's bootstrap goes (`GRPC_XDS_BOOTSTRAP`).
    pub bootstrap: PathBuf,
    /// Where `cert-chain.pem`, `key.pem` and `root-cert.pem` go.
    pub certificates: PathBuf,
    pub health_port: u16,
    pub status_port: u16,
    pub app_probes: AppProbers,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot read the root certificate {path}: {reason}")]
    Root { path: PathBuf, reason: String },
    #[error("the workload's identity is invalid: {0}")]
    Identity(String),
    #[error("cannot set up the CA client: {0}")]
    Ca(String),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A running agent; it stops with the process.
pub struct GrpcAgent {
    pub credentials: Arc<Credentials>,
}

/// Ready once the app can read a certificate: installed and written.
struct Readiness {
    credentials: Arc<Credentials>,
    written: Arc<AtomicBool>,
}

impl Readiness {
    fn is_ready(&self) -> bool {
        self.credentials.is_ready() && self.written.load(Ordering::Acquire)
    }
}

impl GrpcAgent {
    /// Writes the bootstrap, starts the certificate's rotation and the health
    /// ports. The certificate arrives in the background; readiness says when.
    pub async fn start(options: AgentOptions, workload: &Workload) -> Result<Self, AgentError> {
        let roots = std::fs::read(&options.root_cert)
            .map_err(|e| e.to_string())
            .and_then(|pem| TrustBundle::from_pem(&pem).map_err(|e| e.to_string()))
            .map_err(|reason| AgentError::Root {
                path: options.root_cert.clone(),
                reason,
            })?;
        let identity = oxmesh_identity::SpiffeId::new(
            options.trust_domain.clone(),
            &workload.namespace,
            &workload.service_account,
        )
        .map_err(|e| AgentError::Identity(e.to_string()))?;
        write_bootstrap(&options, workload)?;
        let client = GrpcCaClient::new(
            &options.ca_address,
            &options.control_plane_name,
            roots.roots(),
            Token::File(options.token_file.clone()),
        )
        .map_err(|e| AgentError::Ca(e.to_string()))?;
        let credentials = Credentials::new(identity);
        credentials.set_bundle(roots);
        let directory = options.certificates.clone();
        let written = Arc::new(AtomicBool::new(false));
        let flag = written.clone();
        let sink = Arc::new(move |issued: &IssuedPem| {
            write_certificates(&directory, issued)?;
            flag.store(true, Ordering::Release);
            Ok(())
        });
        let manager = CertificateManager::new(client, credentials.clone(), Rotation::default())
            .with_sink(sink);
        tokio::spawn(manager.run());
        let probes = Arc::new(options.app_probes.clone());
        let readiness = Arc::new(Readiness {
            credentials: credentials.clone(),
            written,
        });
        for port in [options.health_port, options.status_port] {
            let addr = SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port);
            let listener = bind(addr).await?;
            tokio::spawn(serve(listener, readiness.clone(), probes.clone()));
        }
        Ok(Self { credentials })
    }
}

/// Both families where the host has IPv6, else IPv4.
async fn bind(addr: SocketAddr) -> Result<TcpListener, AgentError> {
    match TcpListener::bind(addr).await {
        Ok(listener) => Ok(listener),
        Err(_) => {
            let v4 = SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), addr.port());
            TcpListener::bind(v4)
                .await
                .map_err(|source| AgentError::Listen { addr: v4, source })
        }
    }
}

fn write_bootstrap(options: &AgentOptions, workload: &Workload) -> Result<(), AgentError> {
    let ip = workload
        .ips
        .first()
        .map(ToString::to_string)
        .unwrap_or_default();
    let node = GrpcNode {
        pod_name: &workload.pod_name,
        namespace: &workload.namespace,
        ip: &ip,
    };
    let bootstrap = grpc_bootstrap(&node, &options.xds_address, Some(&options.certificates));
    let text = serde_json::to_vec_pretty(&bootstrap).unwrap_or_default();
    let write = || {
        if let Some(parent) = options.bootstrap.parent() {
            std::fs::create_dir_all(parent)?;
        }
        write_atomically(&options.bootstrap, &text, 0o644)
    };
    write().map_err(|source| AgentError::Write {
        path: options.bootstrap.clone(),
        source,
    })
}

/// The three files gRPC's `file_watcher` provider reads, each replaced whole,
/// the key first. They live in the pod's own `istio-data` volume, mounted only
/// by the agent and the app; the app runs as any uid, so they are readable by
/// all who can reach the volume (the key too: the volume is the boundary).
fn write_certificates(directory: &Path, issued: &IssuedPem) -> std::io::Result<()> {
    std::fs::create_dir_all(directory)?;
    for (name, text) in [
        ("key.pem", &issued.key),
        ("cert-chain.pem", &issued.chain),
        ("root-cert.pem", &issued.roots),
    ] {
        write_atomically(&directory.join(name), text.as_bytes(), 0o644)?;
    }
    Ok(())
}

async fn serve(listener: TcpListener, readiness: Arc<Readiness>, probes: Arc<AppProbers>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (readiness, probes) = (readiness.clone(), probes.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let (readiness, probes) = (readiness.clone(), probes.clone());
                async move { Ok::<_, Infallible>(answer(request, &readiness, &probes).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(
    request: Request<Incoming>,
    readiness: &Readiness,
    probes: &AppProbers,
) -> Response<Full<Bytes>> {
    let path = request.uri().path();
    let (status, body) = match path {
        "/healthz/ready" if readiness.is_ready() => (StatusCode::OK, Bytes::new()),
        "/healthz/ready" => (
            StatusCode::SERVICE_UNAVAILABLE,
            Bytes::from_static(b"not ready: waiting for the workload certificate\n"),
        ),
        p if crate::admin::is_app_path(p) => probes.probe(p, request.headers()).await,
        _ => (StatusCode::NOT_FOUND, Bytes::from_static(b"not found\n")),
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
}

//! Starting the node proxy: its workload's certificate from the CA, the
//! workload API from the control plane (both on 15012, with the workload's
//! token), and its ports: 15001 outbound, 15006 plaintext inbound, 15008
//! HBONE, 15021 readiness. This is ztunnel's dedicated mode (one workload,
//! run in its network namespace); the shared, in-pod mode builds on it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use oxmesh_identity::credentials::Credentials;
use oxmesh_identity::manager::{CertificateManager, Rotation};
use oxmesh_identity::{SpiffeId, TrustDomain};
use oxmesh_proxy::hbone::client::Client;
use oxmesh_proxy::metrics::Metrics;
use oxmesh_xds::ads::client::{ClientError, SotwClient};
use oxmesh_xds::ca_client::{GrpcCaClient, Token};
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::inbound::{Local, ToWorkload};
use crate::outbound::Outbound;
use crate::state::State;

/// How long to wait after a failed accept before the next.
pub(crate) const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

pub const OUTBOUND_PORT: u16 = 15001;
pub const INBOUND_PLAINTEXT_PORT: u16 = 15006;
pub const READINESS_PORT: u16 = 15021;
/// Istio's metrics on `/metrics` and `/stats/prometheus`, as ztunnel's.
pub const METRICS_PORT: u16 = 15020;
/// `/config_dump`, on localhost only.
pub const ADMIN_PORT: u16 = 15000;

/// The workload a dedicated node proxy serves (ztunnel's
/// `PROXY_WORKLOAD_INFO`: `namespace/name/service-account`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadInfo {
    pub namespace: String,
    pub name: String,
    pub service_account: String,
}

impl std::str::FromStr for WorkloadInfo {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.splitn(3, '/').collect::<Vec<_>>().as_slice() {
            [ns, name, sa] if !ns.is_empty() && !name.is_empty() && !sa.is_empty() => Ok(Self {
                namespace: (*ns).to_owned(),
                name: (*name).to_owned(),
                service_account: (*sa).to_owned(),
            }),
            _ => Err(format!("{s:?} is not namespace/name/service-account")),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Options {
    pub workload: WorkloadInfo,
    /// The control plane's 15012 (`host:port`): xDS and the CA.
    pub discovery_address: String,
    /// The name its certificate carries.
    pub control_plane_name: String,
    pub root_cert: PathBuf,
    pub token_file: PathBuf,
    pub trust_domain: TrustDomain,
    /// The workload's address, for the node id.
    pub instance_ip: IpAddr,
    /// Where the proxy's ports listen.
    pub bind: IpAddr,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot read the root certificate {path}: {reason}")]
    Root { path: PathBuf, reason: String },
    #[error("the workload's identity is invalid: {0}")]
    Identity(String),
    #[error("cannot set up the CA client: {0}")]
    Ca(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Runs the node proxy until the task is dropped.
pub async fn run(options: Options) -> Result<(), StartError> {
    let roots = read_roots(&options.root_cert)?;
    let identity = SpiffeId::new(
        options.trust_domain.clone(),
        &options.workload.namespace,
        &options.workload.service_account,
    )
    .map_err(|e| StartError::Identity(e.to_string()))?;
    let credentials = Credentials::new(identity);
    let ca = GrpcCaClient::new(
        &options.discovery_address,
        &options.control_plane_name,
        &roots,
        Token::File(options.token_file.clone()),
    )
    .map_err(|e| StartError::Ca(e.to_string()))?;
    let manager = CertificateManager::new(ca, credentials.clone(), Rotation::default());
    tokio::spawn(manager.run());

    let state = Arc::new(ArcSwap::from_pointee(State::default()));
    let (synced, mut is_synced) = watch::channel(false);
    let connect = {
        let options = options.clone();
        let roots = roots.clone();
        move || connect(options.clone(), roots.clone())
    };
    tokio::spawn(crate::xds::follow(connect, state.clone(), synced));

    let bind = |port| SocketAddr::new(options.bind, port);
    let listen = |addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Listen { addr, source })
    };
    let outbound = listen(bind(OUTBOUND_PORT)).await?;
    let plaintext = listen(bind(INBOUND_PLAINTEXT_PORT)).await?;
    let hbone = listen(bind(oxmesh_proxy::hbone::PORT)).await?;
    let readiness = listen(bind(READINESS_PORT)).await?;
    let metrics_port = listen(bind(METRICS_PORT)).await?;
    let admin = listen(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), ADMIN_PORT)).await?;
    let metrics = Arc::new(Metrics::default());
    let local = Local {
        namespace: options.workload.namespace.clone(),
        name: options.workload.name.clone(),
    };
    let to_workload = Arc::new(ToWorkload {
        state: state.clone(),
        local: local.clone(),
        metrics: metrics.clone(),
    });
    tokio::spawn(oxmesh_proxy::hbone::server::serve(
        hbone,
        credentials.clone(),
        to_workload.clone(),
    ));
    tokio::spawn(crate::inbound::plaintext(plaintext, to_workload));
    let dumped = (state.clone(), credentials.clone());
    tokio::spawn(serve(admin, move |path| match path {
        "/config_dump" => Answer::json(crate::admin::config_dump(&dumped.0.load(), &dumped.1)),
        _ => Answer::not_found(),
    }));
    let outbound_proxy = Arc::new(Outbound::new(
        state,
        Client::new(credentials.clone()),
        local,
        metrics.clone(),
    ));
    tokio::spawn(outbound_proxy.serve(outbound));
    tracing::info!(workload = ?options.workload, "node proxy listening (dedicated mode)");
    let synced = is_synced.clone();
    tokio::spawn(serve(readiness, move |path| {
        let ready = *synced.borrow() && credentials.is_ready();
        match (path, ready) {
            ("/healthz/ready", true) => Answer::ok("ready\n".to_owned()),
            ("/healthz/ready", false) => Answer::unavailable("not ready\n"),
            _ => Answer::not_found(),
        }
    }));
    tokio::spawn(serve(metrics_port, move |path| match path {
        "/metrics" | "/stats/prometheus" => Answer::ok(metrics.encode()),
        _ => Answer::not_found(),
    }));
    let _ = is_synced.wait_for(|s| *s).await;
    tracing::info!("workload API synced");
    std::future::pending::<()>().await;
    Ok(())
}

fn read_roots(path: &PathBuf) -> Result<Vec<CertificateDer<'static>>, StartError> {
    let fail = |reason: String| StartError::Root {
        path: path.clone(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
    oxmesh_identity::certificate::pem_certificates(&pem).map_err(|e| fail(e.to_string()))
}

/// The xDS node ztunnel sends: `ztunnel~<ip>~<pod>.<ns>~<ns>.svc.cluster.local`.
fn node(options: &Options) -> Node {
    let workload = &options.workload;
    let string = |s: &str| Value {
        kind: Some(Kind::StringValue(s.to_owned())),
    };
    let fields = [
        ("NAME", workload.name.as_str()),
        ("NAMESPACE", workload.namespace.as_str()),
        ("SERVICE_ACCOUNT", workload.service_account.as_str()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), string(v)))
    .collect();
    Node {
        id: format!(
            "ztunnel~{}~{}.{}~{}.svc.cluster.local",
            options.instance_ip, workload.name, workload.namespace, workload.namespace
        ),
        metadata: Some(Struct { fields }),
        ..Node::default()
    }
}

async fn connect(
    options: Options,
    roots: Vec<CertificateDer<'static>>,
) -> Result<SotwClient, ClientError> {
    let bearer = Token::File(options.token_file.clone())
        .bearer()
        .map_err(ClientError::Setup)?;
    SotwClient::connect_tls(
        &options.discovery_address,
        &options.control_plane_name,
        &roots,
        node(&options),
        bearer.as_deref(),
    )
    .await
}

/// What a GET on one of the proxy's own ports answers.
struct Answer {
    status: &'static str,
    content_type: &'static str,
    body: String,
}

impl Answer {
    /// Text: Prometheus' exposition format is text too.
    fn ok(body: String) -> Self {
        Self {
            status: "200 OK",
            content_type: "text/plain; version=0.0.4",
            body,
        }
    }

    fn json(value: serde_json::Value) -> Self {
        Self {
            status: "200 OK",
            content_type: "application/json",
            body: serde_json::to_string_pretty(&value).unwrap_or_default(),
        }
    }

    fn unavailable(body: &str) -> Self {
        Self {
            status: "503 Service Unavailable",
            content_type: "text/plain",
            body: body.to_owned(),
        }
    }

    fn not_found() -> Self {
        Self {
            status: "404 Not Found",
            content_type: "text/plain",
            body: String::new(),
        }
    }
}

/// Answers GETs on `listener` by their path: the readiness (15021, 200 once
/// the workload API is synced and the certificate is in hand), metrics
/// (15020) and admin (15000) ports, which need nothing of HTTP but a status
/// line and a body.
async fn serve(listener: TcpListener, answer: impl Fn(&str) -> Answer + Send + Sync + 'static) {
    let answer = Arc::new(answer);
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            tokio::time::sleep(ACCEPT_BACKOFF).await;
            continue;
        };
        let answer = answer.clone();
        tokio::spawn(async move {
            let mut request = vec![0u8; 2048];
            let Ok(n) = stream.read(&mut request).await else {
                return;
            };
            let head = String::from_utf8_lossy(&request[..n]);
            let path = head
                .split_whitespace()
                .nth(1)
                .map(|p| p.split('?').next().unwrap_or(p))
                .unwrap_or("/");
            let Answer {
                status,
                content_type,
                body,
            } = answer(path);
            let reply = format!(
                "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(reply.as_bytes()).await;
        });
    }
}

/// Listens on every IPv4 address, as a pod's proxy does.
pub const BIND_ALL: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);

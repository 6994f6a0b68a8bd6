//! Starting the node proxy: the workload API from the control plane (on
//! 15012, with the proxy's token), its readiness (15021), metrics (15020)
//! and admin (127.0.0.1:15000) ports, and the workloads it serves, in one
//! of ztunnel's two modes. Dedicated: one workload, the proxy beside it in
//! its network namespace, with the workload's own certificate. Shared: every
//! ambient pod of the node, each served from inside its own namespace (the
//! node agent hands them over ZDS), each pod's certificate got by
//! impersonation with the node proxy's own token.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use oxmesh_identity::credentials::Credentials;
use oxmesh_identity::manager::{CertificateManager, Rotation};
use oxmesh_identity::{SpiffeId, TrustDomain};
use oxmesh_proxy::metrics::Metrics;
use oxmesh_xds::ads::client::{ClientError, SotwClient};
use oxmesh_xds::ca_client::{GrpcCaClient, Token};
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::inbound::Local;
use crate::inpod::pods::{Pods, Published};
use crate::inpod::sockets::Sockets;
use crate::state::State;
use crate::workload_proxy::{self, Listeners, Served, Shared};

pub use crate::workload_proxy::{INBOUND_PLAINTEXT_PORT, OUTBOUND_PORT};
pub const READINESS_PORT: u16 = 15021;
/// Istio's metrics on `/metrics` and `/stats/prometheus`, as ztunnel's.
pub const METRICS_PORT: u16 = 15020;
/// `/config_dump`, on localhost only.
pub const ADMIN_PORT: u16 = 15000;

/// A workload (ztunnel's `PROXY_WORKLOAD_INFO`:
/// `namespace/name/service-account`).
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
pub enum Mode {
    /// Serves `proxy` (the workload it runs beside).
    Dedicated,
    /// Serves the pods the node agent at `zds_socket` hands over.
    Shared { zds_socket: PathBuf },
}

#[derive(Clone, Debug)]
pub struct Options {
    pub mode: Mode,
    /// Who the proxy is: the workload in dedicated mode, the node proxy's
    /// own pod in shared mode. Its node id names it.
    pub proxy: WorkloadInfo,
    /// The control plane's 15012 (`host:port`): xDS and the CA.
    pub discovery_address: String,
    /// The name its certificate carries.
    pub control_plane_name: String,
    pub root_cert: PathBuf,
    pub token_file: PathBuf,
    pub trust_domain: TrustDomain,
    /// The proxy's address, for the node id.
    pub instance_ip: IpAddr,
    /// Where the proxy's own ports listen (and, dedicated, the workload's).
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
    #[error(transparent)]
    Listen(#[from] workload_proxy::ListenError),
    #[error("in-pod mode cannot open its own network namespace: {0}")]
    Netns(std::io::Error),
}

/// Runs the node proxy until the task is dropped.
pub async fn run(options: Options) -> Result<(), StartError> {
    let roots = read_roots(&options.root_cert)?;
    let ca = GrpcCaClient::new(
        &options.discovery_address,
        &options.control_plane_name,
        &roots,
        Token::File(options.token_file.clone()),
    )
    .map_err(|e| StartError::Ca(e.to_string()))?;
    let shared = Shared {
        state: Arc::new(ArcSwap::from_pointee(State::default())),
        metrics: Arc::new(Metrics::default()),
    };
    let (synced, mut is_synced) = watch::channel(false);
    let connect = {
        let options = options.clone();
        let roots = roots.clone();
        move || connect(options.clone(), roots.clone())
    };
    tokio::spawn(crate::xds::follow(connect, shared.state.clone(), synced));

    let (_served, published) = match &options.mode {
        Mode::Dedicated => {
            let (served, published) = dedicated(&options, ca, &shared)?;
            (Some(served), published)
        }
        Mode::Shared { zds_socket } => {
            crate::inpod::netns::remember_home().map_err(StartError::Netns)?;
            let pods = Pods::new(shared.clone(), ca, options.trust_domain.clone());
            let published = pods.published();
            tokio::spawn(pods.follow(zds_socket.clone()));
            (None, published)
        }
    };
    own_ports(&options, &shared, published, is_synced.clone())?;
    tracing::info!(proxy = ?options.proxy, mode = ?options.mode, "node proxy listening");
    let _ = is_synced.wait_for(|s| *s).await;
    tracing::info!("workload API synced");
    std::future::pending::<()>().await;
    Ok(())
}

/// Serves the one workload of dedicated mode; what it publishes never
/// changes.
fn dedicated(
    options: &Options,
    ca: GrpcCaClient,
    shared: &Shared,
) -> Result<(Served, watch::Receiver<Published>), StartError> {
    let workload = &options.proxy;
    let identity = SpiffeId::new(
        options.trust_domain.clone(),
        &workload.namespace,
        &workload.service_account,
    )
    .map_err(|e| StartError::Identity(e.to_string()))?;
    let credentials = Credentials::new(identity);
    let listeners = Listeners::open(&Sockets::Host, options.bind)?;
    let local = Local {
        namespace: workload.namespace.clone(),
        name: workload.name.clone(),
    };
    let mut served =
        workload_proxy::serve(listeners, shared, local, credentials.clone(), Sockets::Host);
    let renewal = CertificateManager::new(ca, credentials.clone(), Rotation::default());
    served.also(tokio::spawn(renewal.run()));
    let (_, published) = watch::channel(Published {
        snapshot: true,
        certificates: vec![credentials],
    });
    Ok((served, published))
}

/// Readiness (200 once the workload API is synced and every certificate is
/// in hand; in shared mode also the node agent's snapshot), metrics and the
/// config dump.
fn own_ports(
    options: &Options,
    shared: &Shared,
    published: watch::Receiver<Published>,
    synced: watch::Receiver<bool>,
) -> Result<(), StartError> {
    let listen = |addr: SocketAddr| {
        Sockets::Host
            .listen(addr)
            .map_err(|source| workload_proxy::ListenError { addr, source })
    };
    let readiness = listen(SocketAddr::new(options.bind, READINESS_PORT))?;
    let metrics_port = listen(SocketAddr::new(options.bind, METRICS_PORT))?;
    let admin = listen(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), ADMIN_PORT))?;
    let dumped = (shared.state.clone(), published.clone());
    tokio::spawn(serve(admin, move |path| match path {
        "/config_dump" => Answer::json(crate::admin::config_dump(
            &dumped.0.load(),
            &dumped.1.borrow().certificates,
        )),
        _ => Answer::not_found(),
    }));
    tokio::spawn(serve(readiness, move |path| {
        let ready = *synced.borrow() && {
            let published = published.borrow();
            published.snapshot && published.certificates.iter().all(|c| c.is_ready())
        };
        match (path, ready) {
            ("/healthz/ready", true) => Answer::ok("ready\n".to_owned()),
            ("/healthz/ready", false) => Answer::unavailable("not ready\n"),
            _ => Answer::not_found(),
        }
    }));
    let metrics = shared.metrics.clone();
    tokio::spawn(serve(metrics_port, move |path| match path {
        "/metrics" | "/stats/prometheus" => Answer::ok(metrics.encode()),
        _ => Answer::not_found(),
    }));
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
    let workload = &options.proxy;
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
    crate::accept::each(listener, |mut stream, _| {
        let answer = answer.clone();
        async move {
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
        }
    })
    .await;
}

/// Listens on every IPv4 address, as a pod's proxy does.
pub const BIND_ALL: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);

//! `oxmesh proxy`: the sidecar (or gateway, or waypoint) beside a workload, and
//! `oxmesh proxy wait`, which returns once it is ready (Istio's
//! holdApplicationUntilProxyStarts, as a command an app's start script can run).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use oxmesh_identity::TrustDomain;
use oxmesh_proxy::process::{AdminPorts, CaOptions, Options, Proxy, Source};
use oxmesh_proxy::workers::Workers;
use oxmesh_proxy::workload::{Mode, Workload};

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Wait until the proxy on this host reports ready on its health port.
    Wait {
        /// Give up after this long.
        #[arg(long, default_value = "60s")]
        timeout: oxmesh_config::duration::Duration,
        #[arg(long, default_value_t = 15021)]
        health_port: u16,
        /// Where the proxy is: an ambient pod waits for its node proxy's
        /// address.
        #[arg(long, default_value = "127.0.0.1")]
        address: std::net::IpAddr,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    #[arg(long, value_enum, default_value = "sidecar")]
    mode: ModeArg,
    /// Static config from an Envoy-style bootstrap file (YAML or JSON) instead of
    /// a control plane.
    #[arg(long, conflicts_with = "discovery_address")]
    bootstrap: Option<PathBuf>,
    /// The control plane's xDS address.
    #[arg(long, default_value = "istiod.istio-system.svc:15012")]
    discovery_address: String,
    /// xDS in plaintext (the control plane's 15010) instead of TLS.
    #[arg(long)]
    plaintext_xds: bool,
    /// The CA's address; by default the discovery address's host on port 15012.
    #[arg(long)]
    ca_address: Option<String>,
    /// The name in the control plane's certificate; by default the discovery
    /// address's host name (`istiod-canary.istio-system.svc` for a revision),
    /// or `istiod.istio-system.svc` when the address is an IP.
    #[arg(long)]
    control_plane_name: Option<String>,
    /// The bearer token presented to the CA (a projected service-account token).
    #[arg(long, default_value = "/var/run/secrets/tokens/istio-token")]
    token_file: PathBuf,
    /// The mesh root the control plane's certificate chains to.
    #[arg(long, default_value = "/var/run/secrets/istio/root-cert.pem")]
    root_cert: PathBuf,
    #[arg(long, default_value = "cluster.local")]
    trust_domain: TrustDomain,
    #[arg(long, default_value_t = 15000)]
    admin_port: u16,
    #[arg(long, default_value_t = 15021)]
    health_port: u16,
    /// Prometheus ports (`/stats/prometheus`).
    #[arg(long, value_delimiter = ',', default_value = "15090")]
    metrics_ports: Vec<u16>,
    /// Istio's agent port: metrics with the app's merged in, and the app's
    /// probes (`/app-health/...`) and hooks (`/app-lifecycle/...`); 0 for none.
    #[arg(long, default_value_t = 15020)]
    status_port: u16,
    /// On SIGTERM, how long to wait for open connections after listeners close
    /// (Istio's terminationDrainDuration).
    #[arg(long, default_value = "5s")]
    drain_duration: oxmesh_config::duration::Duration,
    /// On SIGTERM, how long to stay at least, even with no connection open, so
    /// callers still sending here are refused (and retry elsewhere) until the
    /// endpoint's removal reaches them (Istio's MINIMUM_DRAIN_DURATION).
    #[arg(long, default_value = "5s")]
    minimum_drain_duration: oxmesh_config::duration::Duration,
    /// Data-plane worker threads, each with its own event loop and connection
    /// pool (Istio's proxy concurrency defaults to 2).
    #[arg(long, default_value_t = 2)]
    concurrency: usize,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ModeArg {
    Sidecar,
    Gateway,
    Waypoint,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        Some(Command::Wait {
            timeout,
            health_port,
            address,
        }) => wait(timeout.as_std(), SocketAddr::new(address, health_port)),
        None => serve(args.run),
    }
}

fn serve(args: RunArgs) -> anyhow::Result<ExitCode> {
    let mode = match args.mode {
        ModeArg::Sidecar => Mode::Sidecar,
        ModeArg::Gateway => Mode::Gateway,
        ModeArg::Waypoint => Mode::Waypoint,
    };
    let workload = Workload::from_env(mode, |k| std::env::var(k).ok(), std::env::vars())?;
    let ca_address = args
        .ca_address
        .clone()
        .unwrap_or_else(|| format!("{}:15012", host_of(&args.discovery_address)));
    // With a bootstrap and no CA named, the proxy runs without a certificate.
    let ca = (args.bootstrap.is_none() || args.ca_address.is_some()).then(|| CaOptions {
        address: ca_address,
        token_file: args.token_file.clone(),
    });
    let tls_xds = args.bootstrap.is_none() && !args.plaintext_xds;
    let root_cert = (ca.is_some() || tls_xds).then(|| args.root_cert.clone());
    let app_ip = app_ip(&workload);
    let app_probes = app_probes(app_ip)?;
    let app_metrics = match std::env::var("ISTIO_PROMETHEUS_ANNOTATIONS") {
        Ok(json) => oxmesh_proxy::app_metrics::AppMetrics::parse(&json, app_ip)?,
        Err(_) => None,
    };
    let control_plane_name = args
        .control_plane_name
        .unwrap_or_else(|| default_control_plane_name(&args.discovery_address));
    let options = Options {
        source: match args.bootstrap {
            Some(path) => Source::Bootstrap(path),
            None => Source::Xds {
                address: args.discovery_address,
                plaintext: args.plaintext_xds,
            },
        },
        ca,
        root_cert,
        control_plane_name,
        trust_domain: args.trust_domain,
        ports: Some(AdminPorts {
            admin: args.admin_port,
            health: args.health_port,
            metrics: args.metrics_ports,
            status: (args.status_port != 0).then_some(args.status_port),
        }),
        drain: oxmesh_proxy::process::Drain {
            duration: args.drain_duration.as_std(),
            minimum: args.minimum_drain_duration.as_std(),
        },
        app_probes,
        app_metrics,
    };
    match oxmesh_proxy::descriptors::raise_to_hard_limit() {
        Ok(limit) => tracing::debug!(limit, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
    let workers = Workers::start(args.concurrency)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let proxy = Proxy::start(options, workload, workers.handles())?;
        proxy.wait(crate::signal::terminated()).await;
        anyhow::Ok(())
    })?;
    // Connections still open after the drain are cut when the process exits.
    Ok(ExitCode::SUCCESS)
}

fn wait(timeout: Duration, health: SocketAddr) -> anyhow::Result<ExitCode> {
    let deadline = Instant::now() + timeout;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        loop {
            if crate::debug_client::get_status(&health.to_string(), "/healthz/ready")
                .await
                .is_ok_and(|s| s == 200)
            {
                return Ok(ExitCode::SUCCESS);
            }
            if Instant::now() >= deadline {
                return Err(anyhow::anyhow!(
                    "the proxy was not ready at {health} within {timeout:?}"
                ))
                .context("oxmesh proxy wait");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

/// `host` of `host:port`, brackets kept (`[2001:2::1]`) so a port can follow.
pub fn host_of(address: &str) -> &str {
    address.rsplit_once(':').map_or(address, |(host, _)| host)
}

/// The discovery address's host name, as Istio's agent expects it in the
/// control plane's certificate; an IP says nothing of the name.
pub fn default_control_plane_name(address: &str) -> String {
    let host = host_of(address)
        .trim_start_matches('[')
        .trim_end_matches(']');
    if host.parse::<std::net::IpAddr>().is_ok() {
        "istiod.istio-system.svc".to_owned()
    } else {
        host.to_owned()
    }
}

/// The app is probed and scraped at the pod's IP: it may not listen on localhost.
pub fn app_ip(workload: &Workload) -> std::net::IpAddr {
    workload
        .ips
        .first()
        .copied()
        .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST))
}

/// The app's probes injection handed over in `ISTIO_KUBE_APP_PROBERS`.
pub fn app_probes(app_ip: std::net::IpAddr) -> anyhow::Result<oxmesh_proxy::app_probe::AppProbers> {
    Ok(match std::env::var("ISTIO_KUBE_APP_PROBERS") {
        Ok(json) => oxmesh_proxy::app_probe::AppProbers::parse(&json, app_ip)?,
        Err(_) => Default::default(),
    })
}

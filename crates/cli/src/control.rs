//! `oxmesh control`: run the control plane until SIGINT or SIGTERM.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use oxmesh_control::control_plane::{ControlPlane, Options};
use oxmesh_identity::TrustDomain;
use oxmesh_identity::ca::Lifetimes;

#[derive(clap::Args)]
pub struct Args {
    /// Directory for the CA, the token key and other state kept across restarts.
    #[arg(long)]
    state_dir: PathBuf,
    /// Use a plug-in CA from this directory (Istio's cacerts layout) instead of a
    /// self-signed root.
    #[arg(long)]
    ca_dir: Option<PathBuf>,
    #[arg(long, default_value = "cluster.local")]
    trust_domain: TrustDomain,
    /// The namespace the control plane runs in: names its identity and DNS names.
    #[arg(long, default_value = "istio-system")]
    namespace: String,
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0")]
    bind: IpAddr,
    /// CA and xDS over TLS.
    #[arg(long, default_value_t = 15012)]
    secure_port: u16,
    /// Default lifetime of workload certificates.
    #[arg(long, default_value = "24h")]
    workload_cert_ttl: oxmesh_config::duration::Duration,
    /// Longest lifetime a workload may ask for (capped at 90 days).
    #[arg(long, default_value = "2160h")]
    max_workload_cert_ttl: oxmesh_config::duration::Duration,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let options = Options {
            state_dir: args.state_dir,
            ca_dir: args.ca_dir,
            trust_domain: args.trust_domain,
            lifetimes: Lifetimes::new(
                args.workload_cert_ttl.as_std(),
                args.max_workload_cert_ttl.as_std(),
            ),
            namespace: args.namespace,
            secure_addr: SocketAddr::new(args.bind, args.secure_port),
        };
        let control_plane = ControlPlane::start(options).await?;
        crate::signal::terminated().await;
        tracing::info!("shutting down");
        control_plane.shutdown().await;
        Ok(ExitCode::SUCCESS)
    })
}

//! `oxmesh grpc-agent`: the agent alone beside a proxyless gRPC app (Istio's
//! `grpc-agent` template): the app's xDS bootstrap, its certificate in files,
//! its probes and readiness.

use std::path::PathBuf;
use std::process::ExitCode;

use oxmesh_identity::TrustDomain;
use oxmesh_proxy::grpc_agent::{AgentOptions, GrpcAgent};
use oxmesh_proxy::workload::{Mode, Workload};

#[derive(clap::Args)]
pub struct Args {
    /// The control plane's CA and xDS over TLS.
    #[arg(long, default_value = "istiod.istio-system.svc:15012")]
    discovery_address: String,
    /// The xDS address written into the app's bootstrap; by default the
    /// discovery address's host on the plaintext port 15010.
    #[arg(long)]
    xds_address: Option<String>,
    /// The name in the control plane's certificate; by default the discovery
    /// address's host name.
    #[arg(long)]
    control_plane_name: Option<String>,
    #[arg(long, default_value = "/var/run/secrets/tokens/istio-token")]
    token_file: PathBuf,
    #[arg(long, default_value = "/var/run/secrets/istio/root-cert.pem")]
    root_cert: PathBuf,
    #[arg(long, default_value = "cluster.local")]
    trust_domain: TrustDomain,
    /// Where the app's bootstrap goes (the app's GRPC_XDS_BOOTSTRAP).
    #[arg(long, default_value = "/etc/istio/proxy/grpc-bootstrap.json")]
    bootstrap: PathBuf,
    /// Where the certificate, key and roots go for the app to read.
    #[arg(long, default_value = "/var/lib/istio/data")]
    certificates: PathBuf,
    #[arg(long, default_value_t = 15021)]
    health_port: u16,
    /// The app's rewritten probes (`/app-health/...`).
    #[arg(long, default_value_t = 15020)]
    status_port: u16,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let workload = Workload::from_env(Mode::Sidecar, |k| std::env::var(k).ok(), std::env::vars())?;
    let host = crate::proxy::host_of(&args.discovery_address).to_owned();
    let options = AgentOptions {
        ca_address: args.discovery_address.clone(),
        control_plane_name: args
            .control_plane_name
            .unwrap_or_else(|| crate::proxy::default_control_plane_name(&args.discovery_address)),
        root_cert: args.root_cert,
        token_file: args.token_file,
        trust_domain: args.trust_domain,
        xds_address: args.xds_address.unwrap_or(format!("{host}:15010")),
        bootstrap: args.bootstrap,
        certificates: args.certificates,
        health_port: args.health_port,
        status_port: args.status_port,
        app_probes: crate::proxy::app_probes(crate::proxy::app_ip(&workload))?,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let _agent = GrpcAgent::start(options, &workload).await?;
        crate::signal::terminated().await;
        Ok(ExitCode::SUCCESS)
    })
}

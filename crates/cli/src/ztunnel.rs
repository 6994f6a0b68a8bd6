//! `oxmesh ztunnel`: ambient mode's node proxy. Today in ztunnel's dedicated
//! mode: one workload, run in its network namespace with its traffic
//! captured (`oxmesh iptables`), its certificate and the workload API from
//! the control plane's 15012.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use oxmesh_identity::TrustDomain;
use oxmesh_ztunnel::node_proxy::{self, Options, WorkloadInfo};

#[derive(clap::Args)]
pub struct Args {
    /// `dedicated` (one workload, beside it in its network namespace);
    /// `shared` (every ambient pod of a node, in-pod) is not built yet.
    #[arg(long, env = "PROXY_MODE", default_value = "dedicated")]
    mode: String,
    /// The workload served: `namespace/name/service-account`.
    #[arg(long, env = "PROXY_WORKLOAD_INFO")]
    workload: WorkloadInfo,
    /// The control plane's 15012 (xDS and CA), `host:port`.
    #[arg(long, default_value = "istiod.istio-system.svc:15012")]
    discovery_address: String,
    /// The name the control plane's certificate carries.
    #[arg(long, default_value = "istiod.istio-system.svc")]
    control_plane_name: String,
    /// The workload's service-account token.
    #[arg(long, default_value = "/var/run/secrets/tokens/istio-token")]
    token_file: PathBuf,
    /// The mesh root certificate.
    #[arg(long, default_value = "/var/run/secrets/istio/root-cert.pem")]
    root_cert: PathBuf,
    #[arg(long, default_value = "cluster.local")]
    trust_domain: TrustDomain,
    /// The workload's address.
    #[arg(long, env = "INSTANCE_IP")]
    instance_ip: IpAddr,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.mode != "dedicated" {
        bail!(
            "--mode {:?}: only `dedicated` is built yet (the shared, in-pod mode is next)",
            args.mode
        );
    }
    let options = Options {
        workload: args.workload,
        discovery_address: args.discovery_address,
        control_plane_name: args.control_plane_name,
        root_cert: args.root_cert,
        token_file: args.token_file,
        trust_domain: args.trust_domain,
        instance_ip: args.instance_ip,
        bind: node_proxy::BIND_ALL,
    };
    let runtime = tokio::runtime::Runtime::new().context("cannot start the runtime")?;
    runtime.block_on(async {
        tokio::select! {
            ran = node_proxy::run(options) => ran.context("the node proxy stopped"),
            () = crate::signal::terminated() => Ok(()),
        }
    })?;
    Ok(ExitCode::SUCCESS)
}

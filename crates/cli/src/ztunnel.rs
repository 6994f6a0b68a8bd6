//! `oxmesh ztunnel`: ambient mode's node proxy, in ztunnel's two modes.
//! Dedicated: one workload, run in its network namespace with its traffic
//! captured (`oxmesh iptables`). Shared: every ambient pod of a node, which
//! the node agent (`oxmesh node-agent`) hands over ZDS; each pod is served
//! from inside its own namespace with its own certificate.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use oxmesh_identity::TrustDomain;
use oxmesh_ztunnel::node_proxy::{self, Mode, Options, WorkloadInfo};

#[derive(clap::Args)]
pub struct Args {
    /// `dedicated` (one workload, beside it in its network namespace) or
    /// `shared` (every ambient pod of a node, in-pod).
    #[arg(long, env = "PROXY_MODE", default_value = "dedicated")]
    mode: String,
    /// Dedicated: the workload served, `namespace/name/service-account`.
    #[arg(long, env = "PROXY_WORKLOAD_INFO")]
    workload: Option<WorkloadInfo>,
    /// Shared: the node agent's ZDS socket.
    #[arg(long, env = "INPOD_UDS", default_value = oxmesh_ztunnel::zds::DEFAULT_SOCKET)]
    zds_socket: PathBuf,
    /// Shared: the node proxy's own pod, `namespace/name/service-account`
    /// (its xDS node id; its token is that account's).
    #[arg(long, default_value = "istio-system/ztunnel/ztunnel")]
    pod: WorkloadInfo,
    /// The control plane's 15012 (xDS and CA), `host:port`.
    #[arg(long, default_value = "istiod.istio-system.svc:15012")]
    discovery_address: String,
    /// The name the control plane's certificate carries.
    #[arg(long, default_value = "istiod.istio-system.svc")]
    control_plane_name: String,
    /// The proxy's service-account token (shared: bound to its node).
    #[arg(long, default_value = "/var/run/secrets/tokens/istio-token")]
    token_file: PathBuf,
    /// The mesh root certificate.
    #[arg(long, default_value = "/var/run/secrets/istio/root-cert.pem")]
    root_cert: PathBuf,
    #[arg(long, default_value = "cluster.local")]
    trust_domain: TrustDomain,
    /// The proxy's address (dedicated: the workload's; shared: the node's).
    #[arg(long, env = "INSTANCE_IP")]
    instance_ip: IpAddr,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (mode, proxy) = match (args.mode.as_str(), args.workload) {
        ("dedicated", Some(workload)) => (Mode::Dedicated, workload),
        ("dedicated", None) => bail!("--mode dedicated needs --workload namespace/name/sa"),
        ("shared", _) => (
            Mode::Shared {
                zds_socket: args.zds_socket,
            },
            args.pod,
        ),
        (other, _) => bail!("--mode {other:?}: expected `dedicated` or `shared`"),
    };
    let options = Options {
        mode,
        proxy,
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

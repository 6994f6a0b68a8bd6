//! `oxmesh node-agent`: ambient mode's node agent on its own, for pods
//! named on the command line (`oxmesh up` runs one per node inside itself
//! and enrolls pods as namespaces are labelled).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use oxmesh_ztunnel::node_agent::NodeAgent;
use oxmesh_ztunnel::node_proxy::WorkloadInfo;

#[derive(clap::Args)]
pub struct Args {
    /// The ZDS socket the node proxy connects to.
    #[arg(long, env = "INPOD_UDS", default_value = oxmesh_ztunnel::zds::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// An ambient pod: `namespace/name/service-account=NETNS` (NETNS a
    /// path such as /run/netns/NAME). Its ZDS uid is `namespace/name`.
    #[arg(long = "pod", value_parser = parse_pod)]
    pods: Vec<(WorkloadInfo, PathBuf)>,
}

fn parse_pod(value: &str) -> Result<(WorkloadInfo, PathBuf), String> {
    let (info, netns) = value
        .split_once('=')
        .ok_or_else(|| format!("{value:?} is not namespace/name/service-account=NETNS"))?;
    Ok((info.parse()?, PathBuf::from(netns)))
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let agent = NodeAgent::default();
    for (info, netns) in args.pods {
        let uid = format!("{}/{}", info.namespace, info.name);
        agent.enroll(&uid, info, &netns)?;
    }
    let runtime = tokio::runtime::Runtime::new().context("cannot start the runtime")?;
    let served = runtime.block_on(async {
        tokio::select! {
            served = agent.clone().serve(&args.socket) => served.map_err(anyhow::Error::from),
            () = crate::signal::terminated() => Ok(()),
        }
    });
    // Enrolled pods go back to flowing unredirected.
    let uids: Vec<String> = agent.uids();
    for uid in uids {
        let _ = agent.release(&uid);
    }
    served.context("the node agent stopped")?;
    Ok(ExitCode::SUCCESS)
}

//! The commands that act on a running local mesh (`oxmesh up`): `apply`,
//! `delete`, `logs`, `exec`, `scale`, `rollout`, `down`. Each finds the
//! mesh by `--mesh DIR` or as the only one running.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use oxmesh_testbed::running::{self, RunningMesh};

#[derive(clap::Args)]
pub struct MeshArg {
    /// The directory `oxmesh up` runs; by default the only mesh running.
    #[arg(long)]
    mesh: Option<PathBuf>,
}

impl MeshArg {
    pub fn find(&self) -> anyhow::Result<RunningMesh> {
        Ok(RunningMesh::find(self.mesh.as_deref())?)
    }
}

#[derive(clap::Args)]
pub struct FileArgs {
    /// A file or a directory of files, as kubectl takes them.
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<PathBuf>,
    #[command(flatten)]
    mesh: MeshArg,
}

/// The objects in `files`, checked as `oxmesh validate` checks them: any error
/// and nothing is applied.
fn read_objects(files: &[PathBuf]) -> anyhow::Result<Vec<serde_json::Value>> {
    let documents = oxmesh_testbed::manifest::read_files(files)
        .map_err(|e| anyhow::anyhow!("{e}\nnothing was applied"))?;
    Ok(documents.into_iter().map(|(_, v)| v).collect())
}

pub fn apply(args: FileArgs) -> anyhow::Result<ExitCode> {
    let objects = read_objects(&args.files)?;
    for line in args.mesh.find()?.apply(&objects)? {
        println!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}

pub fn delete(args: FileArgs) -> anyhow::Result<ExitCode> {
    let objects = read_objects(&args.files)?;
    for line in args.mesh.find()?.delete(&objects)? {
        println!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args)]
pub struct LogsArgs {
    /// A pod, or deploy/NAME.
    pod: String,
    #[arg(short, long)]
    namespace: Option<String>,
    /// The container; by default the pod's only app container.
    #[arg(short, long)]
    container: Option<String>,
    #[command(flatten)]
    mesh: MeshArg,
}

pub fn logs(args: LogsArgs) -> anyhow::Result<ExitCode> {
    let mesh = args.mesh.find()?;
    let pod = mesh.pod(&args.pod, args.namespace.as_deref())?;
    let container = match args.container {
        Some(c) => c,
        None => {
            // The testbed's own relays are not the pod's containers.
            let apps: Vec<String> = mesh
                .containers(&pod)
                .into_iter()
                .filter(|c| c != "istio-proxy" && !c.starts_with("relay"))
                .collect();
            match apps.as_slice() {
                [one] => one.clone(),
                // A gateway's only container is its proxy.
                [] if pod.gateway => "istio-proxy".to_owned(),
                _ => anyhow::bail!(
                    "pod {} has containers {:?} (and istio-proxy): choose one with -c",
                    pod.name,
                    apps
                ),
            }
        }
    };
    let path = mesh.log_file(&pod, &container);
    let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args)]
pub struct ExecArgs {
    /// A pod, or deploy/NAME.
    pod: String,
    #[arg(short, long)]
    namespace: Option<String>,
    #[command(flatten)]
    mesh: MeshArg,
    /// The command, after `--`.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

pub fn exec(args: ExecArgs) -> anyhow::Result<ExitCode> {
    let mesh = args.mesh.find()?;
    let pod = mesh.pod(&args.pod, args.namespace.as_deref())?;
    let status = std::process::Command::new("ip")
        .args(["netns", "exec", &pod.netns])
        .args(&args.command)
        .status()
        .context("ip netns exec")?;
    Ok(ExitCode::from(
        u8::try_from(status.code().unwrap_or(1)).unwrap_or(1),
    ))
}

/// `deploy/NAME`, `deployment/NAME`, `sts/NAME` or `statefulset/NAME`: the name.
fn workload_name(target: &str) -> anyhow::Result<&str> {
    ["deploy/", "deployment/", "sts/", "statefulset/"]
        .iter()
        .find_map(|p| target.strip_prefix(p))
        .filter(|n| !n.is_empty())
        .ok_or_else(|| anyhow::anyhow!("{target:?}: name a workload as deploy/NAME or sts/NAME"))
}

#[derive(clap::Args)]
pub struct ScaleArgs {
    /// deploy/NAME or sts/NAME (`-n istio-system deploy/istiod`: the control
    /// plane, 0 or 1).
    target: String,
    #[arg(short, long, default_value = "default")]
    namespace: String,
    #[arg(long)]
    replicas: usize,
    #[command(flatten)]
    mesh: MeshArg,
}

pub fn scale(args: ScaleArgs) -> anyhow::Result<ExitCode> {
    let name = workload_name(&args.target)?;
    for line in args
        .mesh
        .find()?
        .scale(&args.namespace, name, args.replicas)?
    {
        println!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Subcommand)]
pub enum Rollout {
    /// Replace every pod of a workload, as a rolling update.
    Restart(RolloutArgs),
    /// Wait until a workload has rolled out: every replica of its current
    /// template ready, no older pod left.
    Status {
        #[command(flatten)]
        args: RolloutArgs,
        /// Give up after this long.
        #[arg(long, default_value = "120s")]
        timeout: oxmesh_config::duration::Duration,
    },
}

#[derive(clap::Args)]
pub struct RolloutArgs {
    /// deploy/NAME or sts/NAME.
    target: String,
    #[arg(short, long, default_value = "default")]
    namespace: String,
    #[command(flatten)]
    mesh: MeshArg,
}

pub fn rollout(command: Rollout) -> anyhow::Result<ExitCode> {
    match command {
        Rollout::Restart(args) => {
            let name = workload_name(&args.target)?;
            for line in args.mesh.find()?.restart(&args.namespace, name)? {
                println!("{line}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Rollout::Status { args, timeout } => {
            let name = workload_name(&args.target)?;
            let mesh = args.mesh.find()?;
            let deadline = std::time::Instant::now() + timeout.as_std();
            loop {
                match mesh.rolled_out(&args.namespace, name)? {
                    None => anyhow::bail!("no workload {}/{name} in the mesh", args.namespace),
                    Some(true) => {
                        println!("{} successfully rolled out", args.target);
                        return Ok(ExitCode::SUCCESS);
                    }
                    Some(false) if std::time::Instant::now() > deadline => {
                        anyhow::bail!("{} has not rolled out after {timeout}", args.target)
                    }
                    Some(false) => std::thread::sleep(Duration::from_millis(200)),
                }
            }
        }
    }
}

#[derive(clap::Args)]
pub struct DownArgs {
    #[command(flatten)]
    mesh: MeshArg,
}

pub fn down(args: DownArgs) -> anyhow::Result<ExitCode> {
    match args.mesh.find() {
        Ok(mesh) => {
            mesh.stop(Duration::from_secs(30))?;
            println!("stopped the mesh in {}", mesh.dir.display());
        }
        Err(e) => {
            let removed = running::remove_leftovers();
            if removed.is_empty() {
                println!("{e}; nothing left behind either");
            } else {
                for r in removed {
                    println!("removed {r}");
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

//! `oxmesh install` and `oxmesh uninstall`: the control plane on a Kubernetes
//! cluster under Istio's names, printed (`--dry-run`) or applied.

use std::path::PathBuf;
use std::process::ExitCode;

use oxmesh_control::install::Install;

#[derive(clap::Args)]
pub struct Args {
    /// Print the manifests instead of applying them.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    target: Target,
}

#[derive(clap::Args)]
pub struct UninstallArgs {
    /// Also delete the CRDs, and with them every Istio object in the cluster.
    #[arg(long)]
    purge: bool,
    #[command(flatten)]
    target: Target,
}

#[derive(clap::Args)]
struct Target {
    /// Install a control plane beside the default one, under `istio.io/rev`
    /// (`istiod-<revision>`, its own webhooks; no gateway).
    #[arg(long, default_value = "default")]
    revision: String,
    #[arg(long, default_value = "istio-system")]
    namespace: String,
    /// The image holding the `oxmesh` binary (manifests/Containerfile).
    #[arg(long, default_value = "ghcr.io/oxmesh/oxmesh:0.1.0")]
    image: String,
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// The cluster; by default what kubectl uses ($KUBECONFIG, ~/.kube/config).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
}

impl Target {
    fn install(&self) -> Install {
        Install {
            namespace: self.namespace.clone(),
            revision: self.revision.clone(),
            image: self.image.clone(),
            trust_domain: self.trust_domain.clone(),
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let install = args.target.install();
    install.check()?;
    if args.dry_run {
        print!("{}", install.render());
        return Ok(ExitCode::SUCCESS);
    }
    runtime()?.block_on(async {
        let client =
            oxmesh_control::kube_api::connect_as_user(args.target.kubeconfig.as_deref()).await?;
        for object in install.apply(&client).await? {
            println!("{object} applied");
        }
        Ok(ExitCode::SUCCESS)
    })
}

pub fn uninstall(args: UninstallArgs) -> anyhow::Result<ExitCode> {
    let install = args.target.install();
    runtime()?.block_on(async {
        let client =
            oxmesh_control::kube_api::connect_as_user(args.target.kubeconfig.as_deref()).await?;
        for object in install.remove(&client, args.purge).await? {
            println!("{object} deleted");
        }
        Ok(ExitCode::SUCCESS)
    })
}

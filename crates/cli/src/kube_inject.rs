//! `oxmesh kube-inject`: sidecar injection offline, as `istioctl kube-inject`
//! does it: every pod in the input gets the sidecar unless it opts out;
//! namespace labels are not consulted. Writes YAML to stdout (or `-o`).

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use oxmesh_control::inject::{Settings, inject_object};
use serde_json::Value;

#[derive(clap::Args)]
pub struct Args {
    /// The manifests: a file, or `-` for standard input.
    #[arg(short = 'f', long = "filename")]
    filename: PathBuf,
    /// Where to write the result; standard output by default.
    #[arg(short = 'o', long = "output")]
    output: Option<PathBuf>,
    /// The image holding `oxmesh` for the proxy and the iptables step.
    #[arg(long)]
    image: Option<String>,
    /// The control plane's xDS and CA address, as proxies reach it.
    #[arg(long, default_value = "istiod.istio-system.svc:15012")]
    discovery_address: String,
    /// The control-plane revision to inject for.
    #[arg(long, default_value = "default")]
    revision: String,
    /// Run the proxy as a native sidecar (Kubernetes 1.29+); `false` puts it
    /// among the app's containers, first, with the app held until it is ready.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    native_sidecars: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let text = read(&args.filename)?;
    let source = args.filename.display().to_string();
    let mut documents: Vec<Value> =
        serde_saphyr::from_multiple(&text).with_context(|| format!("{source}: not YAML"))?;
    documents.retain(|d| !d.is_null());
    let defaults = Settings::default();
    let settings = Settings {
        image: args.image.unwrap_or(defaults.image.clone()),
        discovery_address: args.discovery_address,
        revision: args.revision,
        native_sidecars: args.native_sidecars,
        ..defaults
    };
    for document in &mut documents {
        if let Err(e) = inject_object(document, &settings) {
            eprintln!("error: {source}: {e}");
            return Ok(ExitCode::from(1));
        }
    }
    let yaml = serde_saphyr::to_string_multiple(&documents)?;
    match &args.output {
        Some(path) => std::fs::write(path, yaml)
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => print!("{yaml}"),
    }
    Ok(ExitCode::SUCCESS)
}

fn read(path: &PathBuf) -> anyhow::Result<String> {
    if path.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read standard input")?;
        return Ok(text);
    }
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

/// `oxmesh grpc-bootstrap`: what the `grpc-simple` template's init container
/// runs, writing the app's xDS bootstrap from the pod's environment.
#[derive(clap::Args)]
pub struct BootstrapArgs {
    #[arg(long, default_value = "/etc/istio/proxy/grpc-bootstrap.json")]
    output: PathBuf,
    /// The control plane's plaintext xDS address.
    #[arg(long, default_value = "istiod.istio-system.svc:15010")]
    discovery_address: String,
}

pub fn bootstrap(args: BootstrapArgs) -> anyhow::Result<ExitCode> {
    let var = |name: &str| {
        std::env::var(name).with_context(|| format!("{name} is not set (the pod's downward API)"))
    };
    let (pod_name, namespace, ip) = (var("POD_NAME")?, var("POD_NAMESPACE")?, var("INSTANCE_IP")?);
    let node = oxmesh_control::inject::GrpcNode {
        pod_name: &pod_name,
        namespace: &namespace,
        ip: &ip,
    };
    let bootstrap = oxmesh_control::inject::grpc_bootstrap(&node, &args.discovery_address, None);
    std::fs::write(&args.output, serde_json::to_vec_pretty(&bootstrap)?)
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    Ok(ExitCode::SUCCESS)
}

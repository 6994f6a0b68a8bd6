//! `oxmesh`: one binary for every part of the mesh. This crate parses arguments and
//! wires the library crates together; it holds no mesh logic of its own.

mod analyze;
mod ca;
mod control;
mod dashboard;
mod debug_client;
mod demo;
mod get;
mod grpc_agent;
mod install;
mod intention;
mod iptables;
mod kube_inject;
mod local;
mod node_agent;
mod port_forward;
mod proxy;
mod proxy_config;
mod proxy_status;
mod signal;
mod table;
mod up;
mod validate;
mod ztunnel;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "oxmesh",
    version,
    about = "A service mesh that speaks Istio's API"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check Istio and Kubernetes objects as Istio's validating webhook would.
    Validate(validate::Args),
    /// Run the control plane (istiod's job): xDS on 15010 and 15012, the CA on 15012,
    /// metrics and debug endpoints on 15014.
    Control(control::Args),
    /// Each connected proxy and whether it holds what the control plane sent it.
    ProxyStatus(proxy_status::Args),
    /// The Envoy resources the control plane sends a connected proxy.
    ProxyConfig(proxy_config::Args),
    /// Find mistakes across objects, with istioctl analyze's codes (and validate's checks).
    Analyze(analyze::Args),
    /// Run the proxy beside a workload (sidecar, gateway or waypoint), or wait for it.
    Proxy(proxy::Args),
    /// Run ambient mode's node proxy (ztunnel's job): HBONE between workloads,
    /// L4 policy, workloads from the control plane's workload API.
    Ztunnel(ztunnel::Args),
    /// Run ambient mode's node agent (Istio CNI's job): install in-pod
    /// redirection in ambient pods and hand them to the node proxy over ZDS.
    NodeAgent(node_agent::Args),
    /// Send a pod's traffic through its proxy (istio-iptables' flags); run in the
    /// pod's network namespace.
    Iptables(iptables::Args),
    /// Install the control plane, webhooks and ingress gateway on a Kubernetes
    /// cluster (server-side apply), or print the manifests with --dry-run.
    Install(install::Args),
    /// Remove what `oxmesh install` applied (the namespace stays; the CRDs too,
    /// unless --purge).
    Uninstall(install::UninstallArgs),
    /// Add the sidecar to the pods in Kubernetes manifests, offline (istioctl
    /// kube-inject's job); the result goes to standard output.
    KubeInject(kube_inject::Args),
    /// Write a proxyless gRPC app's xDS bootstrap (the grpc-simple template's
    /// init step).
    GrpcBootstrap(kube_inject::BootstrapArgs),
    /// Run beside a proxyless gRPC app instead of a proxy (the grpc-agent
    /// template): its bootstrap, its certificate in files, its probes.
    GrpcAgent(grpc_agent::Args),
    /// Run the manifests in DIR as a local cluster on network namespaces, with
    /// the control plane and sidecars (root).
    Up(up::Args),
    /// Create or replace Istio objects in the running local mesh.
    Apply(local::FileArgs),
    /// Remove Istio objects from the running local mesh.
    Delete(local::FileArgs),
    /// Show the running local mesh's objects, as kubectl get does.
    Get(get::GetArgs),
    /// A container's log in the running local mesh.
    Logs(local::LogsArgs),
    /// A port of the running local mesh on the host's loopback, as kubectl
    /// port-forward gives one.
    PortForward(port_forward::PortForwardArgs),
    /// The mesh dashboard (service graph, proxies' sync, config findings),
    /// served by the control plane, on this host, as istioctl dashboard
    /// opens Kiali.
    Dashboard(dashboard::DashboardArgs),
    /// Run a command inside a pod's network namespace.
    Exec(local::ExecArgs),
    /// Set a workload's replicas in the running local mesh (kubectl scale).
    Scale(local::ScaleArgs),
    /// Restart a workload's pods as a rolling update, or wait for a rollout
    /// (kubectl rollout restart | status).
    Rollout {
        #[command(subcommand)]
        command: local::Rollout,
    },
    /// Consul-style intentions (allow or deny SRC to DST, namespace defaults),
    /// kept as AuthorizationPolicies in the local mesh or a directory.
    Intention {
        #[command(subcommand)]
        command: intention::Command,
    },
    /// Stop the running local mesh (or remove what a crashed one left).
    Down(local::DownArgs),
    /// The sample apps `oxmesh up` runs: bookinfo's services and an echo server.
    Demo {
        #[command(subcommand)]
        command: demo::Command,
    },
    #[command(hide = true)]
    TestbedDns(up::DnsArgs),
    #[command(hide = true)]
    TestbedRelay(up::RelayArgs),
    #[command(hide = true)]
    TestbedProbe(up::ProbeArgs),
    /// The mesh certificate authority: print roots, sign CSRs offline, inspect certificates.
    Ca {
        #[command(subcommand)]
        command: ca::Command,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let result = match cli.command {
        Command::Validate(args) => validate::run(args),
        Command::Analyze(args) => analyze::run(args),
        Command::Ca { command } => ca::run(command),
        Command::Control(args) => control::run(args),
        Command::ProxyStatus(args) => proxy_status::run(args),
        Command::ProxyConfig(args) => proxy_config::run(args),
        Command::Proxy(args) => proxy::run(args),
        Command::Iptables(args) => iptables::run(args),
        Command::Ztunnel(args) => ztunnel::run(args),
        Command::NodeAgent(args) => node_agent::run(args),
        Command::Up(args) => up::run(args),
        Command::Scale(args) => local::scale(args),
        Command::Rollout { command } => local::rollout(command),
        Command::Install(args) => install::run(args),
        Command::Uninstall(args) => install::uninstall(args),
        Command::KubeInject(args) => kube_inject::run(args),
        Command::GrpcBootstrap(args) => kube_inject::bootstrap(args),
        Command::GrpcAgent(args) => grpc_agent::run(args),
        Command::Demo { command } => demo::run(command),
        Command::Intention { command } => intention::run(command),
        Command::Apply(args) => local::apply(args),
        Command::Delete(args) => local::delete(args),
        Command::Get(args) => get::get(args),
        Command::Logs(args) => local::logs(args),
        Command::PortForward(args) => port_forward::run(args),
        Command::Dashboard(args) => dashboard::run(args),
        Command::Exec(args) => local::exec(args),
        Command::Down(args) => local::down(args),
        Command::TestbedDns(args) => up::dns(args),
        Command::TestbedRelay(args) => up::relay(args),
        Command::TestbedProbe(args) => up::probe(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr; `RUST_LOG` (e.g. `oxmesh=debug`) overrides the default level.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

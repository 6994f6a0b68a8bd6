//! `oxmesh iptables`: the init step that sends a pod's traffic through its proxy,
//! with istio-iptables' flags. Run it inside the pod's network namespace.

use std::process::ExitCode;

use ipnet::IpNet;
use oxmesh_proxy::interception::{Family, Mode, Rules};

#[derive(clap::Args)]
pub struct Args {
    /// Port outbound traffic is redirected to.
    #[arg(short = 'p', long = "envoy-port", default_value_t = 15001)]
    outbound_port: u16,
    /// Port inbound traffic is redirected to.
    #[arg(short = 'z', long = "inbound-capture-port", default_value_t = 15006)]
    inbound_port: u16,
    /// The proxy's uid: its own traffic is never captured.
    #[arg(short = 'u', long = "proxy-uid", default_value_t = 1337)]
    proxy_uid: u32,
    /// The proxy's gid; the uid by default.
    #[arg(short = 'g', long = "proxy-gid")]
    proxy_gid: Option<u32>,
    /// REDIRECT or TPROXY.
    #[arg(
        short = 'm',
        long = "istio-inbound-interception-mode",
        default_value = "REDIRECT"
    )]
    mode: String,
    /// Outbound ranges to capture, comma-separated; `*` for all, empty for none.
    #[arg(short = 'i', long = "istio-service-cidr", default_value = "*")]
    include_outbound: String,
    /// Outbound ranges never captured, comma-separated.
    #[arg(short = 'x', long = "istio-service-exclude-cidr", default_value = "")]
    exclude_outbound: String,
    /// Inbound ports to capture, comma-separated; `*` for all.
    #[arg(short = 'b', long = "istio-inbound-ports", default_value = "*")]
    include_inbound_ports: String,
    /// Inbound ports never captured (the proxy's own are always excluded).
    #[arg(short = 'd', long = "istio-local-exclude-ports", default_value = "")]
    exclude_inbound_ports: String,
    /// Outbound ports never captured.
    #[arg(
        short = 'o',
        long = "istio-local-outbound-ports-exclude",
        default_value = ""
    )]
    exclude_outbound_ports: String,
    /// Outbound ports always captured, comma-separated (with `-i ""`, only these).
    #[arg(
        short = 'q',
        long = "outbound-ports-include",
        visible_alias = "istio-local-outbound-ports-include",
        default_value = ""
    )]
    include_outbound_ports: String,
    /// Interfaces whose incoming traffic (a VM's) is treated as outbound,
    /// comma-separated.
    #[arg(
        short = 'k',
        long = "reroute-virtual-interfaces",
        visible_alias = "kube-virt-interfaces",
        default_value = ""
    )]
    reroute_interfaces: String,
    /// Print the rules instead of installing them.
    #[arg(long)]
    dry_run: bool,
    /// Remove the rules and chains a previous run installed.
    #[arg(long)]
    cleanup: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let rules = rules(&args)?;
    if args.cleanup {
        rules.cleanup()?;
        return Ok(ExitCode::SUCCESS);
    }
    if args.dry_run {
        print!("{}", rules.script(Family::V4));
        print!("{}", rules.script(Family::V6));
        return Ok(ExitCode::SUCCESS);
    }
    rules.apply()?;
    Ok(ExitCode::SUCCESS)
}

fn rules(args: &Args) -> anyhow::Result<Rules> {
    let defaults = Rules::default();
    let mode = match args.mode.to_ascii_uppercase().as_str() {
        "REDIRECT" => Mode::Redirect,
        "TPROXY" => Mode::Tproxy,
        other => anyhow::bail!("-m {other:?}: use REDIRECT or TPROXY"),
    };
    let mut exclude_inbound_ports = defaults.exclude_inbound_ports.clone();
    exclude_inbound_ports.extend(list::<u16>(&args.exclude_inbound_ports, "-d")?);
    Ok(Rules {
        outbound_port: args.outbound_port,
        inbound_port: args.inbound_port,
        proxy_uid: args.proxy_uid,
        proxy_gid: args.proxy_gid.unwrap_or(args.proxy_uid),
        mode,
        include_outbound: star_or(&args.include_outbound, "-i")?,
        exclude_outbound: list::<IpNet>(&args.exclude_outbound, "-x")?,
        include_inbound_ports: star_or(&args.include_inbound_ports, "-b")?,
        exclude_inbound_ports,
        exclude_outbound_ports: list::<u16>(&args.exclude_outbound_ports, "-o")?,
        include_outbound_ports: list::<u16>(&args.include_outbound_ports, "-q")?,
        reroute_interfaces: interfaces(&args.reroute_interfaces)?,
    })
}

fn interfaces(value: &str) -> anyhow::Result<Vec<String>> {
    let names = list::<String>(value, "-k")?;
    for name in &names {
        oxmesh_config::validation::syntax::interface_name(name)
            .map_err(|reason| anyhow::anyhow!("-k: {reason}"))?;
    }
    Ok(names)
}

/// `*` means everything (`None`); otherwise the listed values.
fn star_or<T: std::str::FromStr>(value: &str, flag: &str) -> anyhow::Result<Option<Vec<T>>>
where
    T::Err: std::fmt::Display,
{
    if value.trim() == "*" {
        Ok(None)
    } else {
        list(value, flag).map(Some)
    }
}

fn list<T: std::str::FromStr>(value: &str, flag: &str) -> anyhow::Result<Vec<T>>
where
    T::Err: std::fmt::Display,
{
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|e| anyhow::anyhow!("{flag} {s:?}: {e}")))
        .collect()
}

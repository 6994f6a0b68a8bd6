//! `oxmesh dashboard`: the control plane's dashboard (its monitoring port,
//! 15014) on this host, as `istioctl dashboard kiali` port-forwards to Kiali:
//! on the local mesh, `127.0.0.1:20001` (Kiali's port) reaches istiod's pod
//! through a relay in it, the URL is printed and a browser opened.

use std::net::SocketAddr;
use std::process::{Command, ExitCode, Stdio};

use anyhow::Context as _;

use crate::local::MeshArg;
use crate::port_forward::{SocketDir, serve, start_relay};

/// The control plane's monitoring port, where the dashboard is served.
const MONITORING_PORT: u16 = 15014;

#[derive(clap::Args)]
pub struct DashboardArgs {
    #[command(flatten)]
    mesh: MeshArg,
    /// Where to serve the dashboard on this host.
    #[arg(long, default_value = "127.0.0.1:20001")]
    address: SocketAddr,
    /// Print the URL without opening a browser.
    #[arg(long)]
    no_browser: bool,
    /// A Prometheus scraping the mesh, for the dashboard's traffic, as the
    /// control plane reaches it (`http://prometheus.istio-system:9090`);
    /// without it, the control plane's own `--prometheus`, else the
    /// proxies' metrics.
    #[arg(long)]
    prometheus: Option<String>,
}

pub fn run(args: DashboardArgs) -> anyhow::Result<ExitCode> {
    let mesh = args.mesh.find().context(
        "oxmesh dashboard reaches the local mesh `oxmesh up` runs; none is running (on Kubernetes, port-forward to istiod's 15014 and open it)",
    )?;
    let istiod = mesh.pod("istiod", Some("istio-system"))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(args.address))
        .with_context(|| format!("cannot listen on {} (--address)", args.address))?;
    let sockets = SocketDir::new()?;
    let relay = start_relay(&istiod, MONITORING_PORT, sockets.0.join("dashboard.sock"))?;
    let url = url(listener.local_addr()?, args.prometheus.as_deref());
    println!("dashboard: {url} (Ctrl-C stops it)");
    if !args.no_browser {
        open_browser(&url);
    }
    runtime.spawn(oxmesh_testbed::relay::tcp_to_unix(
        listener,
        relay.socket.clone(),
    ));
    match serve(&runtime, vec![relay], sockets) {
        None => Ok(ExitCode::SUCCESS),
        Some(pod) => anyhow::bail!("lost connection to the control plane ({pod})"),
    }
}

fn url(address: SocketAddr, prometheus: Option<&str>) -> String {
    let query = prometheus.map(|p| {
        let encoded = percent_encoding::utf8_percent_encode(p, percent_encoding::NON_ALPHANUMERIC);
        format!("?prometheus={encoded}")
    });
    format!("http://{address}/{}", query.unwrap_or_default())
}

/// The desktop's browser, if there is one; without, the printed URL does.
fn open_browser(url: &str) {
    let opened = Command::new("xdg-open")
        .arg(url)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    if opened.is_err() {
        println!("(no xdg-open here: open the URL in a browser)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prometheus_url_rides_in_the_query() {
        let address: SocketAddr = "127.0.0.1:20001".parse().expect("address");
        assert_eq!(url(address, None), "http://127.0.0.1:20001/");
        assert_eq!(
            url(address, Some("http://prometheus:9090")),
            "http://127.0.0.1:20001/?prometheus=http%3A%2F%2Fprometheus%3A9090"
        );
    }
}

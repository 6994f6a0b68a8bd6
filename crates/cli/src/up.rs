//! `oxmesh up DIR`: the manifests in DIR as a local cluster on this host, in the
//! foreground until Ctrl-C or SIGTERM, which tear it all down.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use oxmesh_testbed::cluster::{Cluster, Options};
use oxmesh_testbed::prometheus::Scraping;

#[derive(clap::Args)]
pub struct Args {
    /// A directory of Kubernetes manifests and Istio objects (files directly in
    /// it; subdirectories and dot-directories are not read). State and logs go
    /// to DIR/.oxmesh/.
    dir: PathBuf,
    /// How long to wait for every pod to be ready.
    #[arg(long, default_value = "120s")]
    ready_timeout: oxmesh_config::duration::Duration,
    /// The host port (on 127.0.0.1) that reaches the ingress gateway's Service
    /// port 80.
    #[arg(long, default_value_t = 8080)]
    ingress_port: u16,
    /// A host port (on 127.0.0.1) that reaches the ingress gateway's Service
    /// port 443, for the secure-gateway tasks; none unless asked.
    #[arg(long)]
    ingress_https_port: Option<u16>,
    /// Run Prometheus (Debian's `prometheus` package) as the pod
    /// `istio-system/prometheus`, scraping every pod's `prometheus.io/*`
    /// annotations and istiod's 15014 as Istio's addon does.
    #[arg(long)]
    prometheus: bool,
    /// The host port (on 127.0.0.1) that reaches Prometheus, with
    /// `--prometheus`.
    #[arg(long, default_value_t = 9090)]
    prometheus_port: u16,
    /// How often Prometheus scrapes, with `--prometheus` (Istio's addon:
    /// 15s).
    #[arg(long, default_value = "15s")]
    scrape_interval: oxmesh_config::duration::Duration,
    /// Return once every pod is ready, leaving the mesh running (`oxmesh down`
    /// stops it); its output goes to DIR/.oxmesh/up.log.
    #[arg(long)]
    detach: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.detach {
        return detach(&args);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let options = Options {
        dir: args.dir.clone(),
        binary: std::env::current_exe()?,
        ready_timeout: args.ready_timeout.as_std(),
        stop: stop.clone(),
        prometheus: args.prometheus.then(|| Scraping {
            interval: args.scrape_interval.as_std(),
        }),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Bound first: a taken port fails before anything is built.
    let ingress = runtime
        .block_on(tokio::net::TcpListener::bind((
            "127.0.0.1",
            args.ingress_port,
        )))
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot listen on 127.0.0.1:{} (--ingress-port): {e}",
                args.ingress_port
            )
        })?;
    let bind = |port: u16, flag: &str| {
        runtime
            .block_on(tokio::net::TcpListener::bind(("127.0.0.1", port)))
            .map_err(|e| anyhow::anyhow!("cannot listen on 127.0.0.1:{port} ({flag}): {e}"))
    };
    let ingress_https = match args.ingress_https_port {
        Some(port) => Some(bind(port, "--ingress-https-port")?),
        None => None,
    };
    let prometheus = match args.prometheus {
        true => Some(bind(args.prometheus_port, "--prometheus-port")?),
        false => None,
    };
    runtime.block_on(async move {
        // Signals are watched from the start: Ctrl-C while pods start removes
        // what was started.
        let flag = stop.clone();
        tokio::spawn(async move {
            crate::signal::terminated().await;
            flag.store(true, Ordering::SeqCst);
        });
        tokio::task::yield_now().await;
        let mut cluster = tokio::task::spawn_blocking(move || Cluster::start(&options)).await??;
        for finding in &cluster.findings {
            println!("{finding}");
        }
        print_pods(&cluster);
        println!(
            "ingress: http://127.0.0.1:{} reaches the ingress gateway",
            args.ingress_port
        );
        tokio::spawn(oxmesh_testbed::relay::tcp_to_unix(
            ingress,
            cluster.ingress_socket(),
        ));
        if let Some(listener) = ingress_https {
            println!(
                "ingress: https://127.0.0.1:{} reaches the ingress gateway's port 443",
                listener.local_addr()?.port()
            );
            tokio::spawn(oxmesh_testbed::relay::tcp_to_unix(
                listener,
                cluster.ingress_https_socket(),
            ));
        }
        if let Some(listener) = prometheus {
            println!(
                "prometheus: http://127.0.0.1:{} (scraping the mesh every {} as Istio's addon does)",
                listener.local_addr()?.port(),
                args.scrape_interval
            );
            tokio::spawn(oxmesh_testbed::relay::tcp_to_unix(
                listener,
                cluster.prometheus_socket(),
            ));
        }
        // Last: `--detach` and the tests take this line as the mesh's start.
        println!("ready: state and logs in {}", cluster.state_dir().display());
        while !stop.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(100)).await;
            cluster.supervise();
        }
        tracing::info!("tearing the cluster down");
        drop(cluster);
        anyhow::Ok(ExitCode::SUCCESS)
    })
}

/// Runs `up` again in its own session, without `--detach`, and waits for it to
/// say `ready` (or to fail, whose log then says why).
fn detach(args: &Args) -> anyhow::Result<ExitCode> {
    let state = args.dir.join(".oxmesh");
    std::fs::create_dir_all(&state)?;
    let log_path = state.join("up.log");
    let log = std::fs::File::create(&log_path)?;
    let mut child = std::process::Command::new("setsid")
        .arg(std::env::current_exe()?)
        .arg("up")
        .arg(&args.dir)
        .args(["--ingress-port", &args.ingress_port.to_string()])
        .args(
            args.ingress_https_port
                .iter()
                .flat_map(|p| ["--ingress-https-port".to_owned(), p.to_string()]),
        )
        .args(args.prometheus.then_some("--prometheus"))
        .args(["--prometheus-port", &args.prometheus_port.to_string()])
        .args(["--scrape-interval", &args.scrape_interval.to_string()])
        .args([
            "--ready-timeout",
            &format!("{}s", args.ready_timeout.as_std().as_secs()),
        ])
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    let deadline =
        std::time::Instant::now() + args.ready_timeout.as_std() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        if text.lines().any(|l| l.starts_with("ready")) {
            print!(
                "{}",
                text.lines()
                    .filter(|l| !l.contains(" INFO ") && !l.contains(" WARN "))
                    .map(|l| format!("{l}\n"))
                    .collect::<String>()
            );
            return Ok(ExitCode::SUCCESS);
        }
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("oxmesh up failed ({status}):\n{text}");
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!(
                "oxmesh up was not ready in time; see {}",
                log_path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn print_pods(cluster: &Cluster) {
    let mut rows = vec![vec![
        "NAMESPACE".to_owned(),
        "POD".into(),
        "IP".into(),
        "SIDECAR".into(),
    ]];
    for p in &cluster.plan.pods {
        rows.push(vec![
            p.namespace.clone(),
            p.name.clone(),
            p.ip.to_string(),
            match (p.injected, p.gateway) {
                (true, _) => "yes",
                (_, true) => "gateway",
                _ => "no",
            }
            .into(),
        ]);
    }
    print!("{}", crate::table::render(&rows));
}

/// `oxmesh testbed-dns`: the testbed's cluster DNS, run by `oxmesh up` inside its
/// DNS pod.
#[derive(clap::Args)]
pub struct DnsArgs {
    /// JSON object of name → IPv4 address.
    #[arg(long)]
    records: PathBuf,
    #[arg(long, default_value = "0.0.0.0:53")]
    bind: std::net::SocketAddr,
}

pub fn dns(args: DnsArgs) -> anyhow::Result<ExitCode> {
    oxmesh_testbed::dns::serve(&args.records, args.bind)?;
    Ok(ExitCode::SUCCESS)
}

/// `oxmesh testbed-relay`: inside the gateway's pod, the end of the host's
/// ingress port.
#[derive(clap::Args)]
pub struct RelayArgs {
    #[arg(long)]
    socket: PathBuf,
    #[arg(long)]
    to: std::net::SocketAddr,
}

pub fn relay(args: RelayArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(oxmesh_testbed::relay::unix_to_tcp(&args.socket, args.to))?;
    Ok(ExitCode::SUCCESS)
}

/// `oxmesh testbed-probe`: one readiness check, run by `oxmesh up` inside the
/// pod; exits 0 when it passes.
#[derive(clap::Args)]
pub struct ProbeArgs {
    #[arg(long, conflicts_with = "tcp")]
    http: Option<std::net::SocketAddr>,
    #[arg(long, default_value = "/")]
    path: String,
    #[arg(long)]
    tcp: Option<std::net::SocketAddr>,
}

pub fn probe(args: ProbeArgs) -> anyhow::Result<ExitCode> {
    let passed = match (args.http, args.tcp) {
        (Some(address), _) => oxmesh_testbed::probe::http(address, &args.path),
        (None, Some(address)) => oxmesh_testbed::probe::tcp(address),
        (None, None) => anyhow::bail!("give --http or --tcp"),
    };
    Ok(if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

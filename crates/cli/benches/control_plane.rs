//! The control plane under load, end to end: a real `oxmesh control` process with
//! a config directory of N services × M endpoints, C proxies connected over ADS
//! (each subscribed to clusters, their endpoints, listeners and routes, and ACKing
//! like Envoy), then edits to the files. Reports, in bench/RESULTS.md's terms:
//!
//! - time from starting the connections to all proxies holding ACKed config;
//! - time from a file edit (a VirtualService) to every proxy having ACKed the new
//!   routes, and from an endpoint edit to every proxy having ACKed new endpoints;
//! - the control plane's CPU seconds and resident memory (VmRSS, VmHWM).
//!
//! - bytes of xDS responses pushed to all proxies, for the initial sync and per edit.
//!
//! `cargo bench -p oxmesh --bench control_plane -- [services] [endpoints] [proxies]`
//! (defaults 1000 10 100). Bounded: every wait gives up after 120 s. Besides
//! printing, writes `control-plane-<services>x<endpoints>-<proxies>.md` and
//! `.json` into `bench/results/` (`OXMESH_BENCH_OUT` elsewhere), which
//! `bench/run` gathers. With `OXMESH_BENCH_SOURCE=kubernetes` the config comes
//! from the tests' API server fixture instead (`control-plane-kubernetes-...`):
//! the control plane watches it over HTTPS, and an endpoint edit is one Pod
//! event rather than a rewritten file.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[path = "common/measure.rs"]
mod measure;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use oxmesh_xds::ads::client::SotwClient;
use oxmesh_xds::ads::types;
use prost::Message;
use tokio::sync::watch;

const LIMIT: Duration = Duration::from_secs(120);
const PORT: u16 = 8080;

struct Scale {
    services: usize,
    endpoints: usize,
    proxies: usize,
}

fn scale() -> Scale {
    let numbers: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    Scale {
        services: numbers.first().copied().unwrap_or(1000),
        endpoints: numbers.get(1).copied().unwrap_or(10),
        proxies: numbers.get(2).copied().unwrap_or(100),
    }
}

/// Pod `n`'s address in the testbed's pod range, 198.18.0.0/16.
fn pod_ip(n: usize) -> String {
    format!("198.18.{}.{}", (n >> 8) & 0xff, n & 0xff)
}

/// Service `n`'s VIP in the testbed's service range, 198.19.0.0/16.
fn service_ip(n: usize) -> String {
    format!("198.19.{}.{}", (n >> 8) & 0xff, n & 0xff)
}

fn services_yaml(scale: &Scale) -> String {
    let mut services = String::new();
    for s in 0..scale.services {
        services.push_str(&format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: svc-{s}, namespace: bench}}\nspec:\n  clusterIP: {}\n  selector: {{app: svc-{s}}}\n  ports: [{{name: http, port: {PORT}}}]\n",
            service_ip(s)
        ));
    }
    services
}

/// The pods (`first_only`: just the first); `generation` moves the first
/// service's first pod to a new address.
fn pods_yaml(scale: &Scale, generation: usize, first_only: bool) -> String {
    let mut pods = String::new();
    let count = if first_only {
        1
    } else {
        scale.services * scale.endpoints
    };
    for n in 0..count {
        let (s, e) = (n / scale.endpoints, n % scale.endpoints);
        let ip = if n == 0 {
            pod_ip(65_000 + generation)
        } else {
            pod_ip(n)
        };
        pods.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: svc-{s}-{e}\n  namespace: bench\n  labels: {{app: svc-{s}, version: v{}, security.istio.io/tlsMode: istio}}\nspec:\n  containers: [{{name: app, image: app}}]\nstatus: {{phase: Running, podIP: {ip}}}\n",
            e % 2 + 1
        ));
    }
    pods
}

fn routes_yaml(subset: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: svc-0, namespace: bench}}\nspec: {{host: svc-0, subsets: [{{name: v1, labels: {{version: v1}}}}, {{name: v2, labels: {{version: v2}}}}]}}\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: svc-0, namespace: bench}}\nspec:\n  hosts: [svc-0]\n  http: [{{route: [{{destination: {{host: svc-0, subset: {subset}}}}}]}}]\n"
    )
}

/// Where the control plane reads the mesh: a directory of files (rewritten
/// whole on each edit, as a user's tooling would), or a Kubernetes API server
/// (the tests' fixture over HTTPS: an edit is one watch event). Chosen with
/// `OXMESH_BENCH_SOURCE=kubernetes`.
enum Config {
    Directory(PathBuf),
    Kubernetes {
        api: oxmesh_testkit::api_server::ApiServer,
        kubeconfig: PathBuf,
    },
}

impl Config {
    async fn new(dir: &Path) -> Self {
        if std::env::var("OXMESH_BENCH_SOURCE").as_deref() != Ok("kubernetes") {
            return Config::Directory(dir.to_owned());
        }
        let api = oxmesh_testkit::api_server::ApiServer::start(
            oxmesh_testkit::api_server::standard_types(),
        )
        .await;
        let kubeconfig = api.kubeconfig(dir);
        Config::Kubernetes { api, kubeconfig }
    }

    fn label(&self) -> &'static str {
        match self {
            Config::Directory(_) => "directory",
            Config::Kubernetes { .. } => "kubernetes",
        }
    }

    fn source_args(&self) -> [std::ffi::OsString; 2] {
        match self {
            Config::Directory(dir) => ["--config-dir".into(), dir.into()],
            Config::Kubernetes { kubeconfig, .. } => ["--kubeconfig".into(), kubeconfig.into()],
        }
    }

    fn write_all(&self, scale: &Scale) {
        self.write("services.yaml", &services_yaml(scale));
        self.write("pods.yaml", &pods_yaml(scale, 0, false));
        self.write_routes("v1");
    }

    fn write_routes(&self, subset: &str) {
        self.write("routes.yaml", &routes_yaml(subset));
    }

    /// Moves one pod: the whole pods file rewritten, or one Pod event.
    fn move_pod(&self, scale: &Scale, generation: usize) {
        match self {
            Config::Directory(_) => self.write("pods.yaml", &pods_yaml(scale, generation, false)),
            Config::Kubernetes { .. } => {
                self.write("pods.yaml", &pods_yaml(scale, generation, true))
            }
        }
    }

    fn write(&self, file: &str, text: &str) {
        match self {
            Config::Directory(dir) => replace(&dir.join(file), text),
            // One document at a time: a YAML reader caps documents per text.
            Config::Kubernetes { api, .. } => {
                for document in text.split("---\n").filter(|d| !d.trim().is_empty()) {
                    api.apply_yaml(document);
                }
            }
        }
    }
}

/// Writes through a rename, so the watcher never reads half a file.
fn replace(path: &Path, text: &str) {
    let temp = path.with_extension("tmp");
    std::fs::write(&temp, text).expect("write");
    std::fs::rename(&temp, path).expect("rename");
}

struct Process {
    child: Child,
    xds: String,
}

impl Drop for Process {
    /// SIGTERM first, so a wrapping tool (valgrind) can write its report.
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        for _ in 0..100 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(state: &Path, config: &Config) -> Process {
    // OXMESH_BENCH_WRAP runs the control plane under a tool (valgrind, perf).
    let wrap = std::env::var("OXMESH_BENCH_WRAP").unwrap_or_default();
    let mut words = wrap
        .split_whitespace()
        .map(str::to_owned)
        .collect::<Vec<_>>();
    words.push(env!("CARGO_BIN_EXE_oxmesh").to_owned());
    let mut child = Command::new(&words[0])
        .args(&words[1..])
        .args([
            "control",
            "--bind",
            "127.0.0.1",
            "--secure-port",
            "0",
            "--xds-port",
            "0",
            "--monitoring-port",
            "0",
            "--webhook-port",
            "0",
        ])
        .arg("--state-dir")
        .arg(state)
        .args(config.source_args())
        .env(
            "RUST_LOG",
            "warn,oxmesh_control::control_plane=info,oxmesh_control::discovery=info",
        )
        .stderr(Stdio::piped())
        .spawn()
        .expect("start oxmesh control");
    let stderr = child.stderr.take().expect("stderr");
    let (found, receive) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(addr) = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("xds_addr="))
            {
                let _ = found.send(addr.to_owned());
            }
            if std::env::var_os("OXMESH_BENCH_LOG").is_some() {
                eprintln!("{line}");
            }
        }
    });
    let xds = receive
        .recv_timeout(LIMIT)
        .expect("the control plane reports its xDS port");
    Process { child, xds }
}

/// CPU seconds (user + system) and VmRSS, VmHWM in MiB of a process.
fn usage(pid: u32) -> (f64, f64, f64) {
    (
        measure::cpu_seconds(pid),
        measure::rss_mib(pid),
        measure::memory_mib(pid, "VmHWM"),
    )
}

fn node(n: usize) -> Node {
    let string = |s: &str| Value {
        kind: Some(Kind::StringValue(s.to_owned())),
    };
    Node {
        id: format!(
            "sidecar~{}~client-{n}.bench~bench.svc.cluster.local",
            pod_ip(60_000 + n)
        ),
        metadata: Some(Struct {
            fields: [("NAMESPACE".to_owned(), string("bench"))]
                .into_iter()
                .collect(),
        }),
        ..Default::default()
    }
}

/// What each proxy reports: (kind of update, when it ACKed it).
type Report = tokio::sync::mpsc::UnboundedSender<(&'static str, Instant)>;

/// One Envoy-like proxy: subscribes to clusters and listeners, then to the
/// endpoints and routes they name, and ACKs everything. Reports when it ACKs
/// routes naming `expected_route` and endpoints containing `expected_ip`.
async fn proxy(
    xds: String,
    n: usize,
    report: Report,
    mut expected: watch::Receiver<(String, String)>,
    pushed: Arc<AtomicU64>,
) {
    let mut client = SotwClient::connect(&xds, node(n)).await.expect("connect");
    client
        .subscribe(types::CLUSTER, &[])
        .await
        .expect("subscribe");
    client
        .subscribe(types::LISTENER, &[])
        .await
        .expect("subscribe");
    let mut eds_names: Vec<String> = Vec::new();
    let mut synced = BTreeSet::new();
    loop {
        let response = match client.recv().await {
            Ok(response) => response,
            Err(_) => return,
        };
        pushed.fetch_add(response.encoded_len() as u64, Ordering::Relaxed);
        let (route_wanted, ip_wanted) = expected.borrow_and_update().clone();
        match response.type_url.as_str() {
            types::CLUSTER => {
                eds_names = names::<Cluster>(&response, |c| c.name.clone())
                    .into_iter()
                    .filter(|n| n.starts_with("outbound"))
                    .collect();
                ack(&mut client, &response, &[]).await;
                let refs: Vec<&str> = eds_names.iter().map(String::as_str).collect();
                client
                    .subscribe(types::ENDPOINT, &refs)
                    .await
                    .expect("subscribe eds");
            }
            types::LISTENER => {
                ack(&mut client, &response, &[]).await;
                client
                    .subscribe(types::ROUTE, &[&PORT.to_string()])
                    .await
                    .expect("subscribe rds");
            }
            types::ENDPOINT => {
                let refs: Vec<&str> = eds_names.iter().map(String::as_str).collect();
                ack(&mut client, &response, &refs).await;
                let has_ip = response
                    .resources
                    .iter()
                    .any(|r| contains(&r.value, ip_wanted.as_bytes()));
                if has_ip {
                    let _ = report.send(("endpoints", Instant::now()));
                }
                synced.insert("eds");
            }
            types::ROUTE => {
                ack(&mut client, &response, &[&PORT.to_string()]).await;
                let routes: Vec<RouteConfiguration> = response
                    .resources
                    .iter()
                    .filter_map(|r| RouteConfiguration::decode(r.value.as_slice()).ok())
                    .collect();
                if routes
                    .iter()
                    .any(|r| contains(&r.encode_to_vec(), route_wanted.as_bytes()))
                {
                    let _ = report.send(("routes", Instant::now()));
                }
                synced.insert("rds");
            }
            _ => {}
        }
        if synced.len() == 2 && synced.insert("all") {
            let _ = report.send(("synced", Instant::now()));
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn names<T: Message + Default>(
    response: &DiscoveryResponse,
    name: impl Fn(&T) -> String,
) -> Vec<String> {
    response
        .resources
        .iter()
        .filter_map(|r| T::decode(r.value.as_slice()).ok())
        .map(|t| name(&t))
        .collect()
}

async fn ack(client: &mut SotwClient, response: &DiscoveryResponse, names: &[&str]) {
    client.ack(response, names).await.expect("ack");
}

/// Waits until `count` reports of `kind` arrive; the time of the last one.
async fn wait_for(
    reports: &mut tokio::sync::mpsc::UnboundedReceiver<(&'static str, Instant)>,
    kind: &str,
    count: usize,
) -> Instant {
    let mut seen = 0;
    let mut last = Instant::now();
    while seen < count {
        let (k, at) = tokio::time::timeout(LIMIT, reports.recv())
            .await
            .expect("within the limit")
            .expect("reports");
        if k == kind {
            seen += 1;
            last = at;
        }
    }
    last
}

fn temp(name: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("oxmesh-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&path);
    std::fs::create_dir_all(&path).expect("temp dir");
    path
}

/// What one edit cost: time to every proxy's ACK, control-plane CPU, bytes.
struct Edit {
    ms: f64,
    cpu: f64,
    bytes: u64,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let scale = scale();
    let (state, config_dir) = (temp("state"), temp("config"));
    let config = Config::new(&config_dir).await;
    config.write_all(&scale);
    let started = Instant::now();
    let process = start(&state, &config);
    let pid = process.child.id();
    println!(
        "control plane ({} source): {} services x {} endpoints, {} proxies (started in {:.0} ms)",
        config.label(),
        scale.services,
        scale.endpoints,
        scale.proxies,
        started.elapsed().as_secs_f64() * 1000.0
    );
    // The config alone (objects, registry, push context), before any proxy.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, idle, _) = usage(pid);
    println!("control plane RSS with the config loaded, no proxy yet: {idle:.0} MiB");
    let (report, mut reports) = tokio::sync::mpsc::unbounded_channel();
    let (expect, expected) = watch::channel(("|v1|svc-0".to_owned(), pod_ip(65_000)));
    let pushed = Arc::new(AtomicU64::new(0));
    let connecting = Instant::now();
    let proxies: Vec<_> = (0..scale.proxies)
        .map(|n| {
            tokio::spawn(proxy(
                process.xds.clone(),
                n,
                report.clone(),
                expected.clone(),
                pushed.clone(),
            ))
        })
        .collect();
    let synced = wait_for(&mut reports, "synced", scale.proxies).await;
    let initial_ms = (synced - connecting).as_secs_f64() * 1000.0;
    let initial_bytes = pushed.swap(0, Ordering::Relaxed);
    let (cpu0, rss0, _) = usage(pid);
    println!(
        "initial sync of all proxies: {initial_ms:.0} ms, {} pushed; control plane CPU so far {cpu0:.2} s, RSS {rss0:.0} MiB",
        mib(initial_bytes)
    );

    let mut route_edits = Vec::new();
    for round in 1..=3 {
        let subset = if round % 2 == 1 { "v2" } else { "v1" };
        expect.send_replace((format!("|{subset}|svc-0"), pod_ip(65_000 + round - 1)));
        let edit = measure(pid, &mut reports, &pushed, "routes", scale.proxies, || {
            config.write_routes(subset)
        })
        .await;
        println!(
            "route edit {round}: all {} proxies ACKed new routes {:.0} ms after the write (CPU {:.2} s, {} pushed)",
            scale.proxies,
            edit.ms,
            edit.cpu,
            mib(edit.bytes)
        );
        route_edits.push(edit);
    }
    let mut endpoint_edits = Vec::new();
    for round in 1..=3 {
        expect.send_replace(("|v1|svc-0".to_owned(), pod_ip(65_000 + round)));
        let edit = measure(
            pid,
            &mut reports,
            &pushed,
            "endpoints",
            scale.proxies,
            || config.move_pod(&scale, round),
        )
        .await;
        println!(
            "endpoint edit {round}: all {} proxies ACKed new endpoints {:.0} ms after the write (CPU {:.2} s, {} pushed)",
            scale.proxies,
            edit.ms,
            edit.cpu,
            mib(edit.bytes)
        );
        endpoint_edits.push(edit);
    }
    let (cpu, rss, hwm) = usage(pid);
    println!("control plane totals: CPU {cpu:.2} s, RSS {rss:.0} MiB, peak RSS {hwm:.0} MiB");
    // What it holds once the last push is done and freed memory is returned.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, settled, _) = usage(pid);
    println!("control plane RSS 3 s after the last edit: {settled:.0} MiB");
    for p in proxies {
        p.abort();
    }
    drop(process);
    let _ = std::fs::remove_dir_all(&state);
    let _ = std::fs::remove_dir_all(&config_dir);
    let figures = serde_json::json!({
        "source": config.label(),
        "services": scale.services, "endpoints": scale.endpoints, "proxies": scale.proxies,
        "rss_config_only_mib": idle,
        "initial_sync_ms": initial_ms, "initial_sync_bytes": initial_bytes,
        "route_edit_ms": route_edits.iter().map(|e| e.ms).collect::<Vec<_>>(),
        "route_edit_cpu_s": route_edits.iter().map(|e| e.cpu).collect::<Vec<_>>(),
        "route_edit_bytes": route_edits.iter().map(|e| e.bytes).collect::<Vec<_>>(),
        "endpoint_edit_ms": endpoint_edits.iter().map(|e| e.ms).collect::<Vec<_>>(),
        "endpoint_edit_cpu_s": endpoint_edits.iter().map(|e| e.cpu).collect::<Vec<_>>(),
        "endpoint_edit_bytes": endpoint_edits.iter().map(|e| e.bytes).collect::<Vec<_>>(),
        "cpu_total_s": cpu, "rss_settled_mib": settled, "rss_peak_mib": hwm,
    });
    write_results(
        &scale,
        config.label(),
        &figures,
        [&route_edits, &endpoint_edits],
        initial_ms,
        initial_bytes,
        [idle, settled, hwm],
    );
}

/// Runs `edit` and waits for every proxy to ACK the `kind` it changes.
async fn measure(
    pid: u32,
    reports: &mut tokio::sync::mpsc::UnboundedReceiver<(&'static str, Instant)>,
    pushed: &AtomicU64,
    kind: &str,
    proxies: usize,
    edit: impl FnOnce(),
) -> Edit {
    tokio::time::sleep(Duration::from_millis(300)).await;
    while reports.try_recv().is_ok() {}
    let (cpu_before, _, _) = usage(pid);
    pushed.store(0, Ordering::Relaxed);
    let edited = Instant::now();
    edit();
    let done = wait_for(reports, kind, proxies).await;
    let (cpu_after, _, _) = usage(pid);
    Edit {
        ms: (done - edited).as_secs_f64() * 1000.0,
        cpu: cpu_after - cpu_before,
        bytes: pushed.load(Ordering::Relaxed),
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / 1_048_576.0)
}

/// "min–max" of the edits' figures.
fn span(edits: &[Edit], figure: impl Fn(&Edit) -> f64, decimals: usize) -> String {
    let values: Vec<f64> = edits.iter().map(figure).collect();
    let low = values.iter().copied().fold(f64::INFINITY, f64::min);
    let high = values.iter().copied().fold(0.0, f64::max);
    format!("{low:.decimals$}–{high:.decimals$}")
}

fn write_results(
    scale: &Scale,
    source: &str,
    figures: &serde_json::Value,
    [routes, endpoints]: [&[Edit]; 2],
    initial_ms: f64,
    initial_bytes: u64,
    [idle, settled, peak]: [f64; 3],
) {
    let out = measure::results_dir();
    let name = match source {
        "directory" => format!(
            "control-plane-{}x{}-{}",
            scale.services, scale.endpoints, scale.proxies
        ),
        other => format!(
            "control-plane-{other}-{}x{}-{}",
            scale.services, scale.endpoints, scale.proxies
        ),
    };
    let row = format!(
        "| {} × {}, {} proxies, {source} | {initial_ms:.0} ms, {} | {} ms, {} MiB | {} ms, {} MiB | {} s | {} s | {idle:.0} / {settled:.0} / {peak:.0} |\n",
        scale.services,
        scale.endpoints,
        scale.proxies,
        mib(initial_bytes),
        span(routes, |e| e.ms, 0),
        span(routes, |e| e.bytes as f64 / 1_048_576.0, 1),
        span(endpoints, |e| e.ms, 0),
        span(endpoints, |e| e.bytes as f64 / 1_048_576.0, 1),
        span(routes, |e| e.cpu, 2),
        span(endpoints, |e| e.cpu, 2),
    );
    let written = std::fs::create_dir_all(&out)
        .and_then(|()| std::fs::write(out.join(format!("{name}.md")), &row))
        .and_then(|()| {
            std::fs::write(
                out.join(format!("{name}.json")),
                serde_json::to_string_pretty(figures).unwrap_or_default(),
            )
        });
    if let Err(e) = written {
        eprintln!("cannot write results into {}: {e}", out.display());
    }
}

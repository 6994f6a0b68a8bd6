//! Ambient mode's data plane: two pods on two simulated nodes (a network
//! namespace per node, each pod routed through its node, the nodes linked),
//! oxmesh's node agent on each node enrolling its pod, and the node proxy
//! pair in shared mode between them: oxmesh's, then Istio's own ztunnel
//! (`../shared/peers/ztunnel/ztunnel`, skipped with a note when absent) on
//! the same agents and pods, against the pods with no mesh. Fixed-rate
//! HTTP/1.1 latency, CPU per 1,000 requests and RSS per node proxy, and one
//! bulk TCP stream.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use oxmesh_testbed::{Netns, istio_ztunnel};
use oxmesh_testkit::TempDir;
use serde_json::Value;

use crate::bed::{APP_PORT, BIN, IPERF_PORT};
use crate::measure;
use crate::report::{Table, added_ms, ms};
use crate::scenarios::Settings;
use crate::tools;

/// `pod-a` (the client) behind `node-a`, `pod-b` (the server) behind
/// `node-b`; the control plane on node-a's end of its pod link.
const NET: &str = "198.18.240";
const POD_A: &str = "198.18.240.2";
const POD_B: &str = "198.18.240.6";
const CONTROL: &str = "198.18.240.1";

const MESH: &str = "apiVersion: v1
kind: Pod
metadata: {name: pod-a, namespace: default, labels: {app: pod-a}, annotations: {ambient.istio.io/redirection: enabled}}
spec: {nodeName: node-a, serviceAccountName: pod-a, containers: [{name: app, image: app}]}
status: {phase: Running, podIP: 198.18.240.2, conditions: [{type: Ready, status: \"True\"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: pod-b, namespace: default, labels: {app: pod-b}, annotations: {ambient.istio.io/redirection: enabled}}
spec: {nodeName: node-b, serviceAccountName: pod-b, containers: [{name: app, image: app}]}
status: {phase: Running, podIP: 198.18.240.6, conditions: [{type: Ready, status: \"True\"}]}
";

#[derive(Clone, Copy)]
enum Which {
    Node(usize),
    Pod(usize),
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The two nodes and their pods. Processes are dropped before the
/// namespaces they run in.
struct Nodes {
    running: Vec<Running>,
    dir: TempDir,
    nodes: [Netns; 2],
    pods: [Netns; 2],
}

impl Nodes {
    fn up() -> Self {
        let n = std::process::id();
        let make = |name: &str| Netns::create(&format!("oxab{name}-{n}")).expect("netns (root)");
        let nodes = [make("na"), make("nb")];
        let pods = [make("pa"), make("pb")];
        let ip = |ns: &Netns, args: &[&str]| ns.run("ip", args).expect("ip");
        for (a, a_dev, b, b_dev) in [
            (&nodes[0], "pod", &pods[0], "eth0"),
            (&nodes[1], "pod", &pods[1], "eth0"),
            (&nodes[0], "peer", &nodes[1], "peer"),
        ] {
            a.link(a_dev, b, b_dev).expect("veth");
        }
        for (ns, addrs) in [
            (&nodes[0], vec![("pod", "1"), ("peer", "9")]),
            (&nodes[1], vec![("pod", "5"), ("peer", "10")]),
        ] {
            ip(ns, &["link", "set", "lo", "up"]);
            ns.run("sysctl", &["-qw", "net.ipv4.ip_forward=1"])
                .expect("forwarding");
            for (dev, last) in addrs {
                ip(
                    ns,
                    &["addr", "add", &format!("{NET}.{last}/30"), "dev", dev],
                );
                ip(ns, &["link", "set", dev, "up"]);
            }
        }
        ip(
            &nodes[0],
            &[
                "route",
                "add",
                &format!("{NET}.4/30"),
                "via",
                &format!("{NET}.10"),
            ],
        );
        ip(
            &nodes[1],
            &[
                "route",
                "add",
                &format!("{NET}.0/30"),
                "via",
                &format!("{NET}.9"),
            ],
        );
        for (pod, addr, gateway) in [(&pods[0], POD_A, "1"), (&pods[1], POD_B, "5")] {
            ip(pod, &["link", "set", "lo", "up"]);
            ip(pod, &["addr", "add", &format!("{addr}/30"), "dev", "eth0"]);
            ip(pod, &["link", "set", "eth0", "up"]);
            ip(
                pod,
                &[
                    "route",
                    "add",
                    "default",
                    "via",
                    &format!("{NET}.{gateway}"),
                ],
            );
        }
        let dir = TempDir::new("bench-ambient");
        dir.write("config/mesh.yaml", MESH);
        Self {
            running: Vec::new(),
            dir,
            nodes,
            pods,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path(name)
    }

    /// Runs `program` in `ns` (a node or pod, by index into `which`),
    /// logging to `log`; returns its pid.
    fn spawn(&mut self, which: Which, program: &str, args: &[&str], log: &str) -> u32 {
        let log = std::fs::File::create(self.path(log)).expect("log");
        let ns = match which {
            Which::Node(i) => &self.nodes[i],
            Which::Pod(i) => &self.pods[i],
        };
        let child = ns
            .command(program)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn");
        let pid = child.id();
        self.running.push(Running(child));
        pid
    }

    fn stop(&mut self, pids: &[u32]) {
        self.running.retain(|r| !pids.contains(&r.0.id()));
    }

    /// The control plane in node-a, its root written out; the app server
    /// and iperf3 in pod-b.
    fn start_mesh(&mut self) {
        let state = self.path("state").to_string_lossy().into_owned();
        let config = self.path("config").to_string_lossy().into_owned();
        self.spawn(
            Which::Node(0),
            BIN,
            &[
                "control",
                "--state-dir",
                &state,
                "--config-dir",
                &config,
                "--bind",
                CONTROL,
            ],
            "control.log",
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        let root = loop {
            let out = std::process::Command::new(BIN)
                .args(["ca", "root", "--state-dir", &state])
                .output()
                .expect("oxmesh ca root");
            if out.status.success() {
                break out.stdout;
            }
            assert!(Instant::now() < deadline, "no CA");
            std::thread::sleep(Duration::from_millis(100));
        };
        std::fs::write(self.path("root-cert.pem"), root).expect("root");
        for node in ["node-a", "node-b"] {
            let token = std::process::Command::new(BIN)
                .args(["ca", "token", "--state-dir", &state, "-n", "istio-system"])
                .args(["--service-account", "ztunnel", "--node", node])
                .output()
                .expect("token");
            std::fs::write(
                self.path(&format!("{node}.token")),
                String::from_utf8_lossy(&token.stdout).trim(),
            )
            .expect("token file");
        }
        let me = std::env::current_exe().expect("bench binary");
        self.spawn(
            Which::Pod(1),
            &me.to_string_lossy(),
            &["--serve", "8080"],
            "app.log",
        );
        self.spawn(Which::Pod(1), "iperf3", &["-s", "-p", "5201"], "iperf.log");
    }

    /// oxmesh's node agent on each node, enrolling its pod.
    fn start_agents(&mut self) {
        for i in 0..2 {
            let pod = ["pod-a", "pod-b"][i];
            let socket = self.socket(i).to_string_lossy().into_owned();
            let netns = format!("/run/netns/{}", self.pods[i].name());
            self.spawn(
                Which::Node(i),
                BIN,
                &[
                    "node-agent",
                    "--socket",
                    &socket,
                    "--pod",
                    &format!("default/{pod}/{pod}={netns}"),
                ],
                &format!("agent-{i}.log"),
            );
        }
    }

    fn socket(&self, node: usize) -> PathBuf {
        self.path(&format!("ztunnel-{node}.sock"))
    }

    /// oxmesh's node proxies, one per node; their pids once ready.
    fn start_oxmesh(&mut self) -> Vec<u32> {
        let mut pids = Vec::new();
        for i in 0..2 {
            let node = ["node-a", "node-b"][i];
            let socket = self.socket(i).to_string_lossy().into_owned();
            let token = self
                .path(&format!("{node}.token"))
                .to_string_lossy()
                .into_owned();
            let root = self.path("root-cert.pem").to_string_lossy().into_owned();
            let address = format!("{CONTROL}:15012");
            pids.push(self.spawn(
                Which::Node(i),
                BIN,
                &[
                    "ztunnel",
                    "--mode",
                    "shared",
                    "--zds-socket",
                    &socket,
                    "--pod",
                    &format!("istio-system/ztunnel-{node}/ztunnel"),
                    "--discovery-address",
                    &address,
                    "--token-file",
                    &token,
                    "--root-cert",
                    &root,
                    "--instance-ip",
                    &node_ip(i),
                ],
                &format!("oxmesh-{node}.log"),
            ));
        }
        self.wait_ready("oxmesh's node proxies");
        pids
    }

    /// Istio's ztunnels, one per node, on the same agents.
    fn start_istio(&mut self, binary: &Path) -> Vec<u32> {
        let mut pids = Vec::new();
        let root = self.path("root-cert.pem");
        let secure = format!("{CONTROL}:15012");
        for i in 0..2 {
            let node = ["node-a", "node-b"][i];
            let token = self.path(&format!("{node}.token"));
            let socket = self.socket(i);
            let mesh = istio_ztunnel::Mesh {
                secure: &secure,
                root: &root,
                token: &token,
                zds_socket: &socket,
            };
            let log = std::fs::File::create(self.path(&format!("istio-{node}.log"))).expect("log");
            let child = istio_ztunnel::command(binary, &self.nodes[i], &mesh)
                .envs([
                    ("POD_NAME", format!("ztunnel-{node}")),
                    ("POD_NAMESPACE", "istio-system".to_owned()),
                    ("SERVICE_ACCOUNT", "ztunnel".to_owned()),
                    ("NODE_NAME", node.to_owned()),
                    ("INSTANCE_IP", node_ip(i)),
                    ("RUST_LOG", "warn".to_owned()),
                ])
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("Istio's ztunnel");
            pids.push(child.id());
            self.running.push(Running(child));
        }
        self.wait_ready("Istio's ztunnels");
        pids
    }

    fn wait_ready(&self, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        for node in &self.nodes {
            while !node
                .output(
                    "curl",
                    &["-sf", "-m", "2", "http://127.0.0.1:15021/healthz/ready"],
                )
                .is_ok_and(|o| o.status.success())
            {
                assert!(Instant::now() < deadline, "{what} never ready");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        // Each pod's traffic flows once its certificate is in hand.
        let url = format!("http://{POD_B}:{APP_PORT}/");
        while !self.pods[0]
            .output("curl", &["-sf", "-m", "2", "-o", "/dev/null", &url])
            .is_ok_and(|o| o.status.success())
        {
            assert!(Instant::now() < deadline, "{what}: no traffic");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The address a node proxy names itself by: its node's end of the pod link.
fn node_ip(node: usize) -> String {
    format!("{NET}.{}", [1, 5][node])
}

/// One path's figures.
struct Measured {
    name: String,
    latency: Value,
    cpu_per_thousand: Option<f64>,
    rss: Vec<f64>,
    bulk: Value,
}

fn measure_path(nodes: &Nodes, name: &str, proxies: &[u32], s: &Settings) -> Measured {
    let url = format!("http://{POD_B}:{APP_PORT}/");
    let cpu = || {
        proxies
            .iter()
            .map(|p| measure::cpu_seconds(*p))
            .sum::<f64>()
    };
    tools::fixed_rate(&nodes.pods[0], &url, s.rps, s.connections, s.warmup);
    let before = cpu();
    let latency = tools::fixed_rate(&nodes.pods[0], &url, s.rps, s.connections, s.seconds);
    let used = cpu() - before;
    let count = latency["count"].as_f64().unwrap_or(0.0).max(1.0);
    let rss = proxies.iter().map(|p| measure::rss_mib(*p)).collect();
    let bulk = tools::bulk(&nodes.pods[0], POD_B, IPERF_PORT, s.seconds);
    Measured {
        name: name.to_owned(),
        latency,
        cpu_per_thousand: (!proxies.is_empty()).then(|| used / 2.0 / (count / 1000.0)),
        rss,
        bulk,
    }
}

pub fn ambient(s: &Settings) -> Vec<Table> {
    let mut nodes = Nodes::up();
    nodes.start_mesh();
    let mut paths = vec![measure_path(&nodes, "direct (no mesh)", &[], s)];
    nodes.start_agents();
    let ours = nodes.start_oxmesh();
    paths.push(measure_path(
        &nodes,
        "oxmesh node proxy pair (HBONE, mTLS)",
        &ours,
        s,
    ));
    nodes.stop(&ours);
    let istio = istio_ztunnel::binary();
    match &istio {
        Some(binary) => {
            let theirs = nodes.start_istio(binary);
            paths.push(measure_path(
                &nodes,
                "Istio ztunnel pair (HBONE, mTLS)",
                &theirs,
                s,
            ));
            nodes.stop(&theirs);
        }
        None => eprintln!("{}: no row for it", istio_ztunnel::ABSENT),
    }
    drop(nodes);
    tables(&paths, s, istio.is_none())
}

fn tables(paths: &[Measured], s: &Settings, no_istio: bool) -> Vec<Table> {
    let f = |v: &Value, k: &str| v[k].as_f64().unwrap_or(0.0);
    let mut latency = Table::new(
        format!(
            "Ambient: two pods on two simulated nodes, HTTP/1.1 at {} rps over {} connections for {} s (oha, latency corrected)",
            s.rps, s.connections, s.seconds
        ),
        &[
            "path",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "added p50",
            "added p90",
            "added p99",
            "CPU s per 1,000 requests, each node proxy",
            "RSS MiB, each node proxy",
            "bulk TCP MB/s",
            "errors",
        ],
    );
    let base = &paths[0].latency;
    for p in paths {
        let keys = ["p50", "p90", "p99"];
        let mut cells = vec![p.name.clone()];
        cells.extend(keys.iter().map(|k| ms(f(&p.latency, k))));
        cells.extend(keys.iter().map(|k| added_ms(f(&p.latency, k) - f(base, k))));
        cells.push(p.cpu_per_thousand.map_or("–".into(), |c| format!("{c:.4}")));
        cells.push(match p.rss.as_slice() {
            [a, b] => format!("{a:.1} / {b:.1}"),
            _ => "–".into(),
        });
        cells.push(format!("{:.0}", f(&p.bulk, "mb_per_s")));
        cells.push(format!("{}", f(&p.latency, "errors")));
        latency.row(
            cells,
            serde_json::json!({"latency": p.latency, "cpu_per_thousand": p.cpu_per_thousand, "rss_mib": p.rss, "bulk": p.bulk}),
        );
    }
    if no_istio {
        latency.note("Istio's ztunnel was absent (../shared/peers/ztunnel/ztunnel or OXMESH_ZTUNNEL): no row for it.");
    }
    vec![latency]
}

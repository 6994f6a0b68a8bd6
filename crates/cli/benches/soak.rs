//! The soak: `oxmesh up` with a client and echo v1/v2 under STRICT mutual TLS,
//! 1,000 requests/s through the client's sidecar and the server's (700 over
//! eight HTTP/1.1 keep-alive connections, 100 with a connection each, 200 over
//! two HTTP/2 connections) for SECONDS, while the VirtualService flips between
//! v1 and v2 once a minute. Every 10 s each sidecar's resident memory, open
//! file descriptors, threads and live async tasks are sampled; the report
//! compares the end with the warmed-up state two minutes in.
//!
//! `cargo bench -p oxmesh --bench soak -- [SECONDS]` (release; root; 3600 by
//! default, `bench/run soak`). Bounded by SECONDS; the mesh is torn down at
//! the end. Writes bench/results/soak.md and soak.json (every sample).

#[path = "common/measure.rs"]
mod measure;
#[path = "common/up.rs"]
mod up;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use oxmesh_testkit::TempDir;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_oxmesh");
const SAMPLE_EVERY: Duration = Duration::from_secs(10);
const PUSH_EVERY: Duration = Duration::from_secs(60);
/// The baseline is taken once connections, pools and caches have warmed up.
const WARM_UP: Duration = Duration::from_secs(120);

const MESH: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: istio-system}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
---
apiVersion: v1
kind: Namespace
metadata: {name: default, labels: {istio-injection: enabled}}
---
apiVersion: v1
kind: Service
metadata: {name: echo}
spec:
  selector: {app: echo}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: echo-v1}
spec:
  selector: {matchLabels: {app: echo, version: v1}}
  template:
    metadata: {labels: {app: echo, version: v1}}
    spec: {containers: [{name: echo, image: echo}]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: echo-v2}
spec:
  selector: {matchLabels: {app: echo, version: v2}}
  template:
    metadata: {labels: {app: echo, version: v2}}
    spec: {containers: [{name: echo, image: echo}]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: client}
spec:
  selector: {matchLabels: {app: client}}
  template:
    metadata: {labels: {app: client}}
    spec: {containers: [{name: client, image: curl, command: [sleep, "86400"]}]}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: echo}
spec:
  host: echo
  trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
"#;

/// The load: (mode, requests/s, connections).
const LOADS: [(&str, u32, u32); 3] = [
    ("keepalive", 700, 8),
    ("new-connection", 100, 4),
    ("http2", 200, 2),
];

fn route_to(subset: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: echo}}\nspec:\n  hosts: [echo]\n  http:\n  - route:\n    - destination: {{host: echo, subset: {subset}}}\n"
    )
}

/// One sidecar's figures at one moment.
#[derive(Clone, Copy, Default)]
struct Sample {
    rss_mib: f64,
    fds: usize,
    threads: usize,
    tasks: usize,
}

struct Sidecar {
    pod: String,
    pid: u32,
    netns: String,
    restarts: u32,
}

impl Sidecar {
    /// Looked up again at each sample: a sidecar that restarted shows its new
    /// process, and the restart in the count.
    fn sample(&mut self) -> Sample {
        if let Some(pid) = proxy_in(&self.netns)
            && pid != self.pid
        {
            self.pid = pid;
            self.restarts += 1;
        }
        let fds = std::fs::read_dir(format!("/proc/{}/fd", self.pid)).map_or(0, Iterator::count);
        let threads = std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .ok()
            .and_then(|status| {
                let line = status.lines().find_map(|l| l.strip_prefix("Threads:"))?;
                line.trim().parse().ok()
            })
            .unwrap_or(0);
        let tasks = Command::new("ip")
            .args(["netns", "exec", &self.netns, "curl", "-s", "-m", "2"])
            .arg("http://127.0.0.1:15000/runtime")
            .output()
            .ok()
            .and_then(|o| serde_json::from_slice::<Value>(&o.stdout).ok())
            .and_then(|v| v["aliveTasks"].as_u64())
            .map_or(0, |n| usize::try_from(n).unwrap_or(usize::MAX));
        Sample {
            rss_mib: measure::rss_mib(self.pid),
            fds,
            threads,
            tasks,
        }
    }
}

/// Each injected pod's sidecar process, from the testbed's pods file.
fn sidecars(state: &std::path::Path) -> Vec<Sidecar> {
    let text = std::fs::read_to_string(state.join("pods.json")).expect("pods.json");
    let pods: Value = serde_json::from_str(&text).expect("pods.json is JSON");
    pods["pods"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["sidecar"] == true)
        .filter_map(|p| {
            let netns = p["netns"].as_str()?.to_owned();
            Some(Sidecar {
                pod: p["name"].as_str()?.to_owned(),
                pid: proxy_in(&netns)?,
                netns,
                restarts: 0,
            })
        })
        .collect()
}

/// The sidecar process in a pod's network namespace.
fn proxy_in(netns: &str) -> Option<u32> {
    let out = Command::new("ip")
        .args(["netns", "pids", netns])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|pid| pid.parse::<u32>().ok())
        .find(|pid| is_proxy(*pid))
}

fn is_proxy(pid: u32) -> bool {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let mut args = cmdline.split(|b| *b == 0);
    let program = args.next().unwrap_or_default();
    program.ends_with(b"oxmesh") && args.next() == Some(b"proxy".as_slice())
}

fn start_load(mesh: &str, mode: &str, rate: u32, connections: u32, seconds: u64) -> Child {
    Command::new(BIN)
        .args([
            "exec",
            "--mesh",
            mesh,
            "deploy/client",
            "--",
            BIN,
            "demo",
            "load",
        ])
        .args(["http://echo/", "--mode", mode, "--marker", "server"])
        .args(["--rate", &rate.to_string()])
        .args(["--connections", &connections.to_string()])
        .args(["--duration", &format!("{seconds}s")])
        .stdout(Stdio::piped())
        .spawn()
        .expect("oxmesh demo load")
}

fn apply(dir: &TempDir, mesh: &str, subset: &str) {
    dir.write("route.yaml", &route_to(subset));
    let out = Command::new(BIN)
        .args(["apply", "--mesh", mesh, "-f"])
        .arg(dir.path("route.yaml"))
        .output()
        .expect("oxmesh apply");
    assert!(out.status.success(), "apply failed");
}

fn main() {
    let seconds: u64 = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .and_then(|a| a.parse().ok())
        .unwrap_or(3600);
    let dir = TempDir::new("bench-soak");
    dir.write("mesh.yaml", MESH);
    dir.write("route.yaml", &route_to("v1"));
    let mesh = dir.0.to_string_lossy().into_owned();
    let mesh_up = up::start(&dir);
    let mut sidecars = sidecars(&dir.path(".oxmesh"));
    assert_eq!(
        sidecars.len(),
        3,
        "three sidecars: client, echo-v1, echo-v2"
    );

    let loads: Vec<Child> = LOADS
        .iter()
        .map(|(mode, rate, conns)| start_load(&mesh, mode, *rate, *conns, seconds))
        .collect();
    let started = Instant::now();
    let mut samples: BTreeMap<String, Vec<(u64, Sample)>> = BTreeMap::new();
    let mut baseline: BTreeMap<String, Sample> = BTreeMap::new();
    let (mut next_sample, mut next_push, mut pushes) = (started, started + PUSH_EVERY, 0u32);
    while started.elapsed() < Duration::from_secs(seconds) {
        let now = Instant::now();
        if now >= next_sample {
            let at = started.elapsed().as_secs();
            for s in &mut sidecars {
                let sample = s.sample();
                if started.elapsed() >= WARM_UP {
                    baseline.entry(s.pod.clone()).or_insert(sample);
                }
                samples.entry(s.pod.clone()).or_default().push((at, sample));
            }
            next_sample += SAMPLE_EVERY;
        }
        if now >= next_push {
            pushes += 1;
            apply(&dir, &mesh, if pushes % 2 == 1 { "v2" } else { "v1" });
            next_push += PUSH_EVERY;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let reports: Vec<Value> = loads
        .into_iter()
        .map(|l| {
            let out = l.wait_with_output().expect("the load ran");
            serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
        })
        .collect();
    let end: BTreeMap<String, (Sample, u32)> = sidecars
        .iter_mut()
        .map(|s| (s.pod.clone(), (s.sample(), s.restarts)))
        .collect();
    drop(mesh_up);
    write_report(seconds, pushes, &reports, &samples, &baseline, &end);
}

fn write_report(
    seconds: u64,
    pushes: u32,
    reports: &[Value],
    samples: &BTreeMap<String, Vec<(u64, Sample)>>,
    baseline: &BTreeMap<String, Sample>,
    end: &BTreeMap<String, (Sample, u32)>,
) {
    let mut text = format!(
        "## Soak: `cargo bench -p oxmesh --bench soak -- {seconds}`\n\n\
         {seconds} s at 1,000 requests/s (700 keep-alive over 8 connections, 100 with a connection each, \
         200 over 2 HTTP/2 connections) from a client sidecar to echo sidecars under STRICT mTLS, \
         the VirtualService flipped v1/v2 every minute ({pushes} pushes). Baseline at {} s.\n\n\
         | load | requests | failed | statuses | errors |\n|---|---|---|---|---|\n",
        WARM_UP.as_secs()
    );
    for ((mode, _, _), r) in LOADS.iter().zip(reports) {
        text += &format!(
            "| {mode} | {} | {} | {} | {} |\n",
            r["requests"], r["failed"], r["statuses"], r["errors"]
        );
    }
    text += "\n| sidecar | RSS MiB baseline → end (growth) | peak RSS MiB | fds baseline → end | threads | async tasks baseline → end | restarts |\n|---|---|---|---|---|---|---|\n";
    for (pod, (last, restarts)) in end {
        let first = baseline.get(pod).copied().unwrap_or_default();
        let peak = samples
            .get(pod)
            .into_iter()
            .flatten()
            .map(|(_, s)| s.rss_mib)
            .fold(last.rss_mib, f64::max);
        let growth = if first.rss_mib > 0.0 {
            (last.rss_mib / first.rss_mib - 1.0) * 100.0
        } else {
            0.0
        };
        text += &format!(
            "| {pod} | {:.1} → {:.1} ({growth:+.1} %) | {peak:.1} | {} → {} | {} → {} | {} → {} | {restarts} |\n",
            first.rss_mib,
            last.rss_mib,
            first.fds,
            last.fds,
            first.threads,
            last.threads,
            first.tasks,
            last.tasks
        );
    }
    let series: BTreeMap<&String, Vec<Value>> = samples
        .iter()
        .map(|(pod, v)| {
            let points = v
                .iter()
                .map(|(at, s)| json!({"at": at, "rssMiB": s.rss_mib, "fds": s.fds, "threads": s.threads, "tasks": s.tasks}))
                .collect();
            (pod, points)
        })
        .collect();
    let results = measure::results_dir();
    let _ = std::fs::create_dir_all(&results);
    let _ = std::fs::write(results.join("soak.md"), &text);
    let _ = std::fs::write(
        results.join("soak.json"),
        json!({"loads": reports, "samples": series}).to_string(),
    );
    print!("{text}");
}

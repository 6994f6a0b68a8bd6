//! The dashboard end to end: Istio's bookinfo on `oxmesh up`, traffic from
//! the ingress (mutual TLS inside the mesh) and from a pod outside the mesh
//! (plaintext), `oxmesh dashboard` on the host. `/api/graph` is checked, then
//! the page is loaded in Debian's Chromium driven by Playwright for Python:
//! its graph, mTLS marks, a NACK after a config the proxies refuse, and a
//! service's drill-down; the screenshot is kept as `target/dashboard.png`.
//! Needs root, iproute2, iptables, curl, `chromium` and Playwright (which
//! `.ci/run` installs); without the browser it says so and skips.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use oxmesh_testkit::TempDir;
use serde_json::Value;
use support::mesh::Mesh;
use support::up::start_up;

mod support;

const BIN: &str = env!("CARGO_BIN_EXE_oxmesh");
const CHROMIUM: &str = "/usr/bin/chromium";

/// The mesh's edges once traffic flowed: the ingress and bookinfo's calls
/// (jason's requests reach reviews v2, which calls ratings), and the pod
/// outside the mesh calling productpage in plaintext.
const EDGES: [(&str, &str, bool); 5] = [
    (
        "istio-ingressgateway.istio-system",
        "productpage.default",
        true,
    ),
    ("productpage.default", "details.default", true),
    ("productpage.default", "reviews.default", true),
    ("reviews.default", "ratings.default", true),
    ("unknown", "productpage.default", false),
];

/// `oxmesh dashboard`, stopped when dropped.
struct Dashboard(Child);

impl Drop for Dashboard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Python with Playwright, and Debian's Chromium; `None` (with why) when
/// this machine lacks them.
fn browser() -> Result<String, String> {
    let chromium = Path::new(CHROMIUM);
    if !chromium.is_file() {
        return Err(format!(
            "{CHROMIUM} is missing (Debian's `chromium`; Ubuntu's is a snap Playwright cannot drive)"
        ));
    }
    let python = std::env::var("OXMESH_PYTHON").unwrap_or_else(|_| "python3".into());
    let has_playwright = Command::new(&python)
        .args(["-c", "import playwright"])
        .status()
        .is_ok_and(|s| s.success());
    if !has_playwright {
        return Err(format!(
            "{python} lacks Playwright (pip install playwright)"
        ));
    }
    Ok(python)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// `oxmesh dashboard` on `port`; returns once it printed its URL.
fn dashboard(mesh: &Mesh, port: u16) -> (Dashboard, String) {
    let mut child = Command::new(BIN)
        .args(["dashboard", "--mesh", &mesh.path(), "--no-browser"])
        .args(["--address", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::piped())
        .spawn()
        .expect("oxmesh dashboard");
    let stdout = child.stdout.take().expect("stdout");
    let running = Dashboard(child);
    let line = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find(|l| l.starts_with("dashboard: "))
        .expect("the dashboard's URL");
    let url = line
        .trim_start_matches("dashboard: ")
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned();
    (running, url)
}

fn get_json(url: &str) -> Value {
    let out = Command::new("curl")
        .args(["-s", "-m", "5", url])
        .output()
        .expect("curl");
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

/// Requests at the ingress (half as jason) and from the pod outside the
/// mesh straight to productpage.
fn traffic(mesh: &Mesh, ingress: u16) {
    for i in 0..20 {
        let user = if i % 2 == 0 { "?u=jason" } else { "" };
        let _ = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-m", "5"])
            .arg(format!("http://127.0.0.1:{ingress}/productpage{user}"))
            .status();
    }
    let out = mesh.run(
        "outside",
        &[
            "sh",
            "-c",
            "for i in $(seq 10); do curl -s -o /dev/null -m 5 productpage:9080/productpage; done",
        ],
    );
    assert!(out.status.success(), "{out:?}");
}

fn edge<'a>(graph: &'a Value, source: &str, destination: &str) -> Option<&'a Value> {
    graph["edges"]
        .as_array()?
        .iter()
        .find(|e| e["source"] == source && e["destination"] == destination)
}

/// Traffic until `/api/graph` shows every edge (the dashboard needs two
/// readings of the proxies, five seconds apart).
fn graph_with_every_edge(mesh: &Mesh, ingress: u16, api: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        traffic(mesh, ingress);
        let graph = get_json(api);
        if EDGES.iter().all(|(s, d, _)| edge(&graph, s, d).is_some()) {
            return graph;
        }
        assert!(Instant::now() < deadline, "edges missing: {graph:#}");
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[test]
fn the_dashboard_shows_the_mesh_its_traffic_and_a_refused_config() {
    let python = match browser() {
        Ok(python) => Some(python),
        Err(why) => {
            eprintln!("the browser half is skipped: {why}");
            None
        }
    };
    let dir = TempDir::new("dashboard");
    support::up::write_istio_bookinfo(&dir);
    dir.write("outside.yaml", support::edge::OUTSIDE);
    let (up, ingress) = start_up(&dir);
    let mesh = Mesh::new(dir, up, "default");
    let (_dashboard, url) = dashboard(&mesh, free_port());
    let api = format!("{url}api/graph");

    let graph = graph_with_every_edge(&mesh, ingress, &api);
    assert_eq!(graph["source"], "proxies");
    let nodes: Vec<&str> = graph["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n["id"].as_str())
        .collect();
    for id in [
        "productpage.default",
        "reviews.default",
        "ratings.default",
        "details.default",
        "istio-ingressgateway.istio-system",
    ] {
        assert!(nodes.contains(&id), "{id} in {nodes:?}");
    }
    for (source, destination, mtls) in EDGES {
        let e = edge(&graph, source, destination).expect("edge");
        assert_eq!(e["mtls"], mtls, "{e}");
        assert!(e["requestsPerSecond"].as_f64() > Some(0.0), "{e}");
        assert_eq!(e["errorRate"], 0.0, "{e}");
        assert!(e["p99Ms"].as_f64().is_some(), "{e}");
    }

    let Some(python) = python else {
        return;
    };
    mesh.apply("refused.yaml", support::HEALTH_CHECKED);
    let screenshot = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/dashboard.png");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/dashboard/browse.py");
    let mut browse = Command::new(&python);
    browse.arg(&script).arg(&url).arg(&screenshot).args([
        "--chromium",
        CHROMIUM,
        "--want-nack",
        "--select",
        "reviews.default",
    ]);
    for (source, destination, _) in EDGES {
        browse.args(["--want-edge", source, destination]);
    }
    // The page's edges last a minute after the traffic.
    traffic(&mesh, ingress);
    let out = browse.output().expect("playwright");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: Value = serde_json::from_slice(&out.stdout).expect("what the page showed");
    let edges = seen["edges"].as_array().cloned().unwrap_or_default();
    for (source, destination, mtls) in EDGES {
        let shown = edges
            .iter()
            .find(|e| e["source"] == source && e["destination"] == destination)
            .unwrap_or_else(|| panic!("{source} -> {destination} on the page: {edges:?}"));
        assert_eq!(shown["mtls"], mtls, "{shown}");
        let label = shown["label"].as_str().unwrap_or_default();
        assert!(label.contains("rps"), "{label}");
        assert!(
            label.ends_with(if mtls { "mTLS" } else { "plaintext" }),
            "{label}"
        );
    }
    let nack = seen["workloads"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|w| w["status"] == "NACK")
        .expect("a NACKed proxy");
    assert!(
        nack["text"]
            .as_str()
            .is_some_and(|t| t.contains("health checks")),
        "{nack}"
    );
    let detail = seen["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("reviews.default"), "{detail}");
    assert!(detail.contains("productpage.default"), "{detail}");
    assert!(screenshot.is_file(), "{}", screenshot.display());
}

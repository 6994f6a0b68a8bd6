//! `oxmesh up examples/bookinfo`: time from the command to the first 200 from the
//! product page through the ingress, and the resident memory of the whole mesh
//! (every process in its pods, the control plane, and `up` itself), by part.
//!
//! `cargo bench -p oxmesh --bench up` (release; root). Bounded: gives up after
//! 120 s; the mesh is torn down at the end.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use oxmesh_testkit::TempDir;

#[path = "common/measure.rs"]
mod measure;

const BIN: &str = env!("CARGO_BIN_EXE_oxmesh");

fn main() {
    let dir = TempDir::new("bench-up");
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/bookinfo");
    for file in ["bookinfo.yaml", "gateway.yaml"] {
        dir.write(
            file,
            &std::fs::read_to_string(example.join(file)).expect("example"),
        );
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let started = Instant::now();
    let mut up = Command::new(BIN)
        .arg("up")
        .arg(&dir.0)
        .args(["--ingress-port", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("oxmesh up");
    let first_200 = loop {
        if product_page(port) {
            break started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no product page in 120 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    // Warm: a few pages through every hop, then measure.
    for _ in 0..30 {
        product_page(port);
    }
    let memory = mesh_memory(up.id());
    let _ = Command::new("kill")
        .args(["-TERM", &up.id().to_string()])
        .status();
    let _ = up.wait();

    println!("\n## oxmesh up examples/bookinfo\n");
    println!("| | |\n|---|---|");
    println!(
        "| time to the first 200 from /productpage | {:.2} s |",
        first_200.as_secs_f64()
    );
    let total: u64 = memory.values().map(|(_, kib)| kib).sum();
    println!(
        "| RSS of the whole mesh | {:.1} MiB |",
        total as f64 / 1024.0
    );
    for (part, (count, kib)) in &memory {
        println!("| {part} ({count}) | {:.1} MiB |", *kib as f64 / 1024.0);
    }
}

fn product_page(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = write!(
        s,
        "GET /productpage HTTP/1.1\r\nhost: bookinfo\r\nconnection: close\r\n\r\n"
    );
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text.starts_with("HTTP/1.1 200") && text.contains("Book Reviews")
}

/// VmRSS in KiB of every process of the mesh, grouped by what it is.
fn mesh_memory(up_pid: u32) -> BTreeMap<&'static str, (usize, u64)> {
    // Every namespace of the mesh carries the pid of the `up` that made it.
    let listed = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let namespaces: Vec<String> = listed
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with("oxm-") && n.contains(&format!("-{up_pid}-")))
        .map(str::to_owned)
        .collect();
    let mut pids: Vec<u32> = vec![up_pid];
    for ns in &namespaces {
        if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
            pids.extend(
                String::from_utf8_lossy(&out.stdout)
                    .split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
    }
    pids.sort_unstable();
    pids.dedup();
    let mut parts: BTreeMap<&'static str, (usize, u64)> = BTreeMap::new();
    for pid in pids {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let words: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|w| String::from_utf8_lossy(w).into_owned())
            .collect();
        let part = match words.get(1).map(String::as_str) {
            _ if pid == up_pid => "oxmesh up",
            Some("control") => "control plane",
            Some("proxy") if words.iter().any(|w| w == "gateway") => "ingress gateway",
            Some("proxy") => "sidecars",
            Some("demo") => "bookinfo apps",
            Some("testbed-dns" | "testbed-relay") => "DNS and ingress relay",
            _ => continue,
        };
        let entry = parts.entry(part).or_default();
        entry.0 += 1;
        entry.1 += (measure::rss_mib(pid) * 1024.0) as u64;
    }
    parts
}

//! `oxmesh up` as a process for the end-to-end tests.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use oxmesh_testkit::TempDir;

/// `oxmesh up DIR` in the foreground: SIGTERM and a wait when dropped, also
/// when a test fails, so its namespaces go.
pub struct Up(pub Child);

impl Drop for Up {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `oxmesh up DIR` on a free ingress port; returns once it printed
/// `ready`, with the port.
pub fn start_up(dir: &TempDir) -> (Up, u16) {
    start_up_with(dir, &[])
}

/// `start_up` with more arguments for `oxmesh up`.
pub fn start_up_with(dir: &TempDir, extra: &[&str]) -> (Up, u16) {
    let ingress_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let mut child = Command::new(env!("CARGO_BIN_EXE_oxmesh"))
        .arg("up")
        .arg(&dir.0)
        .args(["--ingress-port", &ingress_port.to_string()])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("oxmesh up");
    let stdout = child.stdout.take().expect("stdout");
    let up = Up(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("oxmesh up printed `ready`");
        if line.starts_with("ready") {
            return (up, ingress_port);
        }
    }
}

/// Istio's bookinfo manifests, its gateway, its destination rules and the
/// route sending jason to reviews v2, unchanged, in an injected `default`
/// namespace.
pub fn write_istio_bookinfo(dir: &TempDir) {
    let conformance = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/conformance/istio/bookinfo");
    for (from, to) in [
        ("bookinfo.yaml", "bookinfo.yaml"),
        ("networking/bookinfo-gateway.yaml", "gateway.yaml"),
        (
            "networking/destination-rule-all.yaml",
            "destination-rules.yaml",
        ),
        (
            "networking/virtual-service-reviews-test-v2.yaml",
            "reviews.yaml",
        ),
    ] {
        let text = std::fs::read_to_string(conformance.join(from)).expect("Istio's sample");
        dir.write(to, &text);
    }
    dir.write(
        "namespace.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: default, labels: {istio-injection: enabled}}\n",
    );
}

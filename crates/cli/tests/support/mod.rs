//! What the cli's end-to-end tests share: `oxmesh control` and `oxmesh up` as
//! processes.

#![allow(dead_code)]

pub mod edge;
pub mod mesh;
pub mod up;
pub mod ztunnel;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use oxmesh_testkit::TempDir;

/// An EnvoyFilter adding a health-checked cluster, which the proxies refuse
/// (they do no active health checks): every sidecar NACKs the push, and
/// the rest of it keeps serving.
pub const HEALTH_CHECKED: &str = r#"
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: health-checked, namespace: default}
spec:
  configPatches:
  - applyTo: CLUSTER
    match: {context: SIDECAR_OUTBOUND}
    patch:
      operation: ADD
      value:
        name: health-checked
        type: STATIC
        connect_timeout: 1s
        health_checks:
        - {timeout: 1s, interval: 5s, unhealthy_threshold: 1, healthy_threshold: 1, tcp_health_check: {}}
"#;

/// How long a test waits for a process to report or answer.
pub const WAIT: Duration = Duration::from_secs(15);

/// A process a test started; killed when dropped, also when the test fails.
pub struct Process(pub Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `oxmesh args` to success and returns what it printed.
pub fn oxmesh(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_oxmesh"))
        .args(args)
        .output()
        .expect("run oxmesh");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The control plane process; killed when dropped, also when a test fails.
pub struct ControlPlane {
    child: Child,
    pub xds: String,
    pub secure: String,
    pub monitoring: String,
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `oxmesh control` on ephemeral loopback ports with its config from
/// `source` (`--config-dir D` or `--kubeconfig K`), and reads the bound
/// addresses from its log.
pub fn start(state: &TempDir, source: &[&std::ffi::OsStr]) -> ControlPlane {
    start_with(
        Command::new(env!("CARGO_BIN_EXE_oxmesh")),
        "127.0.0.1",
        state,
        source,
    )
}

/// As [`start`], with `oxmesh` run by `command` (inside a network
/// namespace, say), listening on `bind`.
pub fn start_with(
    mut command: Command,
    bind: &str,
    state: &TempDir,
    source: &[&std::ffi::OsStr],
) -> ControlPlane {
    let mut child = command
        .args([
            "control",
            "--bind",
            bind,
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
        .arg(&state.0)
        .args(source)
        .stderr(Stdio::piped())
        .spawn()
        .expect("start oxmesh control");
    let stderr = child.stderr.take().expect("stderr");
    let (found, receive) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("monitoring_addr=") {
                let _ = found.send(line);
            }
        }
    });
    let line = receive
        .recv_timeout(WAIT)
        .expect("the control plane reports its ports");
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("{name} in {line}"))
            .to_owned()
    };
    ControlPlane {
        xds: field("xds_addr"),
        secure: field("secure_addr"),
        monitoring: field("monitoring_addr"),
        child,
    }
}

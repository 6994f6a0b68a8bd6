//! Istio's own ztunnel as the tests run it: the binary built from its
//! source (skipped, saying so, when absent), a token and root as Kubernetes
//! would mount them, and its admin endpoints inside its network namespace.

use std::path::{Path, PathBuf};

use oxmesh_testbed::{Netns, istio_ztunnel};
use oxmesh_testkit::TempDir;
use serde_json::Value;

use super::{Process, oxmesh};

/// A running, ready pod of `default` named `name`, with the service account
/// and `app` label of its name, at `ip`, captured by ambient (the annotation
/// Istio's CNI agent writes).
pub fn ambient_pod(name: &str, ip: &str) -> String {
    ambient_pod_on(name, ip, None)
}

/// [`ambient_pod`], scheduled on `node` when given.
pub fn ambient_pod_on(name: &str, ip: &str, node: Option<&str>) -> String {
    let node = node.map_or_else(String::new, |n| format!("nodeName: {n}, "));
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: default
  labels: {{app: {name}}}
  annotations: {{ambient.istio.io/redirection: enabled}}
spec: {{{node}serviceAccountName: {name}, containers: [{{name: app, image: app}}]}}
status: {{phase: Running, podIP: {ip}, conditions: [{{type: Ready, status: "True"}}]}}
---
"#
    )
}

/// GETs a loopback URL inside the namespace.
pub fn get(netns: &Netns, url: &str) -> Option<Value> {
    let out = netns
        .output("curl", &["-sf", "--max-time", "5", url])
        .ok()?;
    serde_json::from_slice(&out.stdout).ok()
}

/// A token the control plane at `state` accepts, in a file, as Kubernetes
/// mounts a pod's projected token; bound to `node` when given.
pub fn token(state: &TempDir, namespace: &str, account: &str, node: Option<&str>) -> PathBuf {
    let state_dir = state.0.to_string_lossy().into_owned();
    let mut args = vec![
        "ca",
        "token",
        "--state-dir",
        &state_dir,
        "-n",
        namespace,
        "--service-account",
        account,
    ];
    args.extend(node.iter().flat_map(|n| ["--node", n]));
    let file = state.path(&format!("{namespace}.{account}.token"));
    std::fs::write(&file, oxmesh(&args).trim()).expect("write token");
    file
}

/// Starts Istio's ztunnel in `netns` against the control plane at `secure`
/// (its 15012), with `token` and the mesh's root, and `env` besides;
/// returns it and its log.
pub fn start(
    binary: &Path,
    netns: &Netns,
    state: &TempDir,
    secure: &str,
    token: &Path,
    env: &[(&str, &str)],
) -> (Process, PathBuf) {
    let state_dir = state.0.to_string_lossy().into_owned();
    let root = state.path("root-cert.pem");
    std::fs::write(&root, oxmesh(&["ca", "root", "--state-dir", &state_dir])).expect("write root");
    let socket = state.path("ztunnel.sock");
    let mesh = istio_ztunnel::Mesh {
        secure,
        root: &root,
        token,
        zds_socket: &socket,
    };
    let log = state.path("ztunnel.log");
    let log_file = std::fs::File::create(&log).expect("log file");
    let process = istio_ztunnel::command(binary, netns, &mesh)
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .stdout(log_file.try_clone().expect("log file"))
        .stderr(log_file)
        .spawn()
        .expect("start ztunnel");
    (Process(process), log)
}

pub fn find<'a>(list: &'a Value, key: &str, value: &str) -> Option<&'a Value> {
    list.as_array()?.iter().find(|v| v[key] == value)
}

/// A node proxy's metrics (15020, inside `netns`).
pub fn metrics(netns: &Netns) -> String {
    let out = netns
        .output("curl", &["-s", "http://127.0.0.1:15020/metrics"])
        .expect("metrics");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The lines of `metrics` counting a connection opened, as `reporter` saw
/// it, with `label` (`source_principal` or `destination_principal`) naming
/// `account` of `namespace`, under mutual TLS.
pub fn mtls_opened<'a>(
    metrics: &'a str,
    reporter: &str,
    label: &str,
    (namespace, account): (&str, &str),
) -> impl Iterator<Item = &'a str> {
    let reporter = format!(r#"reporter="{reporter}""#);
    let principal = format!(r#"{label}="spiffe://cluster.local/ns/{namespace}/sa/{account}""#);
    metrics.lines().filter(move |l| {
        l.starts_with("istio_tcp_connections_opened_total")
            && l.contains(&reporter)
            && l.contains(&principal)
            && l.contains(r#"connection_security_policy="mutual_tls""#)
    })
}

/// Whether [`mtls_opened`] finds a line for `account` of `default`.
pub fn counts_mtls(metrics: &str, reporter: &str, label: &str, account: &str) -> bool {
    mtls_opened(metrics, reporter, label, ("default", account))
        .next()
        .is_some()
}

/// `curl URL` inside `netns`: whether it succeeded, and what it printed.
pub fn curl(netns: &Netns, url: &str) -> (bool, String) {
    let out = netns
        .output("curl", &["-sS", "--max-time", "10", url])
        .expect("curl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// `oxmesh demo echo` on `port` inside `netns`.
pub fn echo(netns: &Netns, port: u16) -> Process {
    Process(
        netns
            .command(env!("CARGO_BIN_EXE_oxmesh"))
            .args(["demo", "echo", "--port", &port.to_string()])
            .spawn()
            .expect("app"),
    )
}

/// Waits up to 30 s for `ready`, failing with `what` and the logs.
pub fn wait_until(what: &str, logs: &dyn Fn() -> String, ready: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !ready() {
        assert!(
            std::time::Instant::now() < deadline,
            "never {what}:\n{}",
            logs()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// Whether the node proxy in `netns` answers ready on 15021.
pub fn ready(netns: &Netns) -> bool {
    netns
        .output(
            "curl",
            &[
                "-sf",
                "--max-time",
                "2",
                "http://127.0.0.1:15021/healthz/ready",
            ],
        )
        .is_ok_and(|o| o.status.success())
}

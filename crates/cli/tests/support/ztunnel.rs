//! Istio's own ztunnel as the tests run it: the binary built from its
//! source (skipped, saying so, when absent), a token and root as Kubernetes
//! would mount them, and its admin endpoints inside its network namespace.

use std::path::{Path, PathBuf};

use oxmesh_testbed::Netns;
use oxmesh_testkit::TempDir;
use serde_json::Value;

use super::{Process, oxmesh};

/// `../shared/peers/ztunnel/ztunnel`, or `OXMESH_ZTUNNEL`.
pub fn binary() -> Option<PathBuf> {
    let path = std::env::var_os("OXMESH_ZTUNNEL").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/peers/ztunnel/ztunnel"),
        PathBuf::from,
    );
    path.is_file().then_some(path)
}

/// A running, ready pod of `default` named `name`, with the service account
/// and `app` label of its name, at `ip`, captured by ambient (the annotation
/// Istio's CNI agent writes).
pub fn ambient_pod(name: &str, ip: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: default
  labels: {{app: {name}}}
  annotations: {{ambient.istio.io/redirection: enabled}}
spec: {{serviceAccountName: {name}, containers: [{{name: app, image: app}}]}}
status: {{phase: Running, podIP: {ip}, conditions: [{{type: Ready, status: "True"}}]}}
---
"#
    )
}

/// Says why a test does not run.
pub const ABSENT: &str =
    "skipped: Istio's ztunnel is not at ../shared/peers/ztunnel/ztunnel (or OXMESH_ZTUNNEL)";

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
    let root = root.to_string_lossy().into_owned();
    let token = token.to_string_lossy().into_owned();
    let socket = state.path("ztunnel.sock").to_string_lossy().into_owned();
    let control = format!("https://{secure}");
    let log = state.path("ztunnel.log");
    let log_file = std::fs::File::create(&log).expect("log file");
    let process = netns
        .command(&binary.to_string_lossy())
        .env_clear()
        .envs([
            ("XDS_ADDRESS", control.as_str()),
            ("CA_ADDRESS", control.as_str()),
            // oxmesh serves 15012 under istiod's Service name.
            ("ALT_XDS_HOSTNAME", "istiod.istio-system.svc"),
            ("ALT_CA_HOSTNAME", "istiod.istio-system.svc"),
            ("XDS_ROOT_CA", root.as_str()),
            ("CA_ROOT_CA", root.as_str()),
            ("AUTH_TOKEN", token.as_str()),
            ("INPOD_UDS", socket.as_str()),
            ("RUST_LOG", "info"),
        ])
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

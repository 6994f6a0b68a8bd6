//! `oxmesh port-forward`: a port of the running local mesh on the host's
//! loopback, as `kubectl port-forward` gives one: `svc/NAME`, `deploy/NAME`
//! or a pod, `LOCAL:REMOTE` (or `PORT` for both). As with kubectl, a
//! Service's port is reached at one of its ready pods, on the pod's own
//! loopback and so past its sidecar. The host is joined to the pod through
//! a Unix socket, as `up`'s ingress port is: nothing is routed between the
//! host and the testbed.

use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use oxmesh_testbed::running::{PodInfo, RunningMesh};
use serde_json::Value;

use crate::local::MeshArg;

#[derive(clap::Args)]
pub struct PortForwardArgs {
    /// `svc/NAME`, `deploy/NAME`, `sts/NAME` or a pod's name.
    target: String,
    /// `LOCAL:REMOTE`, or `PORT` for both; for a Service, REMOTE is its port.
    #[arg(required = true)]
    ports: Vec<String>,
    #[arg(short, long)]
    namespace: Option<String>,
    #[command(flatten)]
    mesh: MeshArg,
}

/// The relay in the pod's namespace, stopped and its socket removed on drop.
pub(crate) struct Relay {
    child: Child,
    pub(crate) socket: PathBuf,
    /// `namespace/name`, for the message when it ends.
    pod: String,
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// A directory only root can enter, for the relays' sockets: a socket in
/// it reaches past the pod's sidecar, so no other user may connect to it.
pub(crate) struct SocketDir(pub(crate) PathBuf);

impl SocketDir {
    pub(crate) fn new() -> anyhow::Result<Self> {
        use std::os::unix::fs::DirBuilderExt as _;
        sweep_dead();
        let path = std::env::temp_dir().join(format!("{PREFIX}{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .with_context(|| format!("cannot make {}", path.display()))?;
        Ok(Self(path))
    }
}

const PREFIX: &str = "oxmesh-port-forward-";

/// Removes the directories of earlier runs that were killed (their `Drop`
/// never ran): those whose process is gone.
fn sweep_dead() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let pid = name
            .to_str()
            .and_then(|n| n.strip_prefix(PREFIX))
            .and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|p| !std::path::Path::new(&format!("/proc/{p}")).exists()) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

impl Drop for SocketDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn run(args: PortForwardArgs) -> anyhow::Result<ExitCode> {
    let mesh = args.mesh.find()?;
    let namespace = args.namespace.as_deref().unwrap_or("default");
    let mut forwards = Vec::new();
    for spec in &args.ports {
        let (local, remote) = ports(spec)?;
        let (pod, port) = target(&mesh, &args.target, namespace, remote)?;
        forwards.push((local, remote, pod, port));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let sockets = SocketDir::new()?;
    let mut relays = Vec::new();
    for (n, (local, remote, pod, port)) in forwards.into_iter().enumerate() {
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(("127.0.0.1", local)))
            .with_context(|| format!("cannot listen on 127.0.0.1:{local}"))?;
        let relay = start_relay(&pod, port, sockets.0.join(format!("{n}.sock")))?;
        println!(
            "Forwarding from 127.0.0.1:{} -> {remote} ({}/{} port {port})",
            listener.local_addr()?.port(),
            pod.namespace,
            pod.name
        );
        runtime.spawn(oxmesh_testbed::relay::tcp_to_unix(
            listener,
            relay.socket.clone(),
        ));
        relays.push(relay);
    }
    match serve(&runtime, relays, sockets) {
        None => Ok(ExitCode::SUCCESS),
        Some(pod) => anyhow::bail!("lost connection to pod {pod}"),
    }
}

/// Serves until a signal, or until a relay ends (its pod went), as kubectl
/// stops; then removes the relays and their sockets. The pod whose relay
/// ended, if one did.
pub(crate) fn serve(
    runtime: &tokio::runtime::Runtime,
    mut relays: Vec<Relay>,
    sockets: SocketDir,
) -> Option<String> {
    let ended = runtime.block_on(async {
        tokio::select! {
            () = crate::signal::terminated() => None,
            gone = relay_ended(&mut relays) => Some(gone),
        }
    });
    drop(relays);
    drop(sockets);
    ended
}

/// Resolves, with its pod, when a relay has ended.
async fn relay_ended(relays: &mut [Relay]) -> String {
    loop {
        for relay in relays.iter_mut() {
            if matches!(relay.child.try_wait(), Ok(Some(_))) {
                return relay.pod.clone();
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `LOCAL:REMOTE` or `PORT`.
fn ports(spec: &str) -> anyhow::Result<(u16, u16)> {
    let parse = |p: &str| {
        p.parse::<u16>()
            .with_context(|| format!("{spec:?}: {p:?} is not a port"))
    };
    match spec.split_once(':') {
        Some((local, remote)) => Ok((parse(local)?, parse(remote)?)),
        None => {
            let port = parse(spec)?;
            Ok((port, port))
        }
    }
}

/// The pod to forward to and the port inside it: for `svc/NAME`, a ready
/// pod the Service selects and the `targetPort` of its port `remote`.
fn target(
    mesh: &RunningMesh,
    target: &str,
    namespace: &str,
    remote: u16,
) -> anyhow::Result<(PodInfo, u16)> {
    let Some(name) = ["svc/", "service/", "services/"]
        .iter()
        .find_map(|p| target.strip_prefix(p))
    else {
        return Ok((mesh.pod(target, Some(namespace))?, remote));
    };
    let objects = mesh.config_objects()?;
    let in_namespace =
        |o: &&Value| o["metadata"]["namespace"].as_str().unwrap_or("default") == namespace;
    let service = objects
        .iter()
        .filter(in_namespace)
        .find(|o| o["kind"] == "Service" && o["metadata"]["name"] == name)
        .with_context(|| format!("no Service {namespace}/{name}"))?;
    let entry = service["spec"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["port"].as_u64() == Some(u64::from(remote)))
        .with_context(|| format!("Service {namespace}/{name} has no port {remote}"))?;
    let port = match &entry["targetPort"] {
        Value::Null => remote,
        Value::Number(n) => n
            .as_u64()
            .and_then(|n| u16::try_from(n).ok())
            .with_context(|| format!("Service {namespace}/{name}: targetPort {n}"))?,
        other => anyhow::bail!(
            "Service {namespace}/{name}: the named targetPort {other} is not followed yet; forward to the pod's port"
        ),
    };
    let selector = &service["spec"]["selector"];
    let selected = |labels: &Value| {
        selector
            .as_object()
            .is_some_and(|s| !s.is_empty() && s.iter().all(|(k, v)| &labels[k] == v))
    };
    let names: Vec<&str> = objects
        .iter()
        .filter(in_namespace)
        .filter(|o| o["kind"] == "Pod" && selected(&o["metadata"]["labels"]))
        .filter_map(|o| o["metadata"]["name"].as_str())
        .collect();
    let pod = mesh
        .pods()?
        .into_iter()
        .filter(|p| p.namespace == namespace && names.contains(&p.name.as_str()) && !p.terminating)
        .max_by_key(|p| p.ready)
        .with_context(|| format!("Service {namespace}/{name} selects no running pod"))?;
    Ok((pod, port))
}

/// `oxmesh testbed-relay` in the pod's namespace, to the pod's loopback.
pub(crate) fn start_relay(pod: &PodInfo, port: u16, socket: PathBuf) -> anyhow::Result<Relay> {
    let child = Command::new("ip")
        .args(["netns", "exec", &pod.netns])
        .arg(std::env::current_exe()?)
        .arg("testbed-relay")
        .arg("--socket")
        .arg(&socket)
        .args(["--to", &format!("127.0.0.1:{port}")])
        .stdin(Stdio::null())
        .spawn()
        .context("ip netns exec")?;
    let relay = Relay {
        child,
        socket,
        pod: format!("{}/{}", pod.namespace, pod.name),
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !relay.socket.exists() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the relay in {} did not start",
            pod.name
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(relay)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_read_as_kubectl_reads_them() {
        assert_eq!(ports("8080:80").ok(), Some((8080, 80)));
        assert_eq!(ports("9000").ok(), Some((9000, 9000)));
        assert!(ports("80:http").is_err());
    }

    /// A killed run's directory goes; a live process's stays.
    #[test]
    fn directories_of_dead_runs_are_swept() {
        // Beyond the kernel's pid range: no such process.
        let dead = std::env::temp_dir().join(format!("{PREFIX}4194305"));
        let live = std::env::temp_dir().join(format!("{PREFIX}1"));
        std::fs::create_dir_all(&dead).expect("dir");
        let made_live = std::fs::create_dir(&live).is_ok();
        sweep_dead();
        assert!(!dead.exists(), "a dead run's directory is swept");
        assert!(live.exists(), "pid 1 lives: its directory stays");
        if made_live {
            let _ = std::fs::remove_dir(&live);
        }
    }
}

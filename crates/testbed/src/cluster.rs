//! `oxmesh up`: the manifests in a directory run as a local cluster. The control
//! plane runs in its own pod; every Deployment replica gets a pod namespace with
//! Kubernetes-style names, DNS and (in injected namespaces) `oxmesh iptables` and
//! `oxmesh proxy` as uid 1337 before the app starts; every pod's traffic that
//! gets past its sidecar to a Service VIP is sent on as kube-proxy would send
//! it. Processes
//! that exit are restarted (restartPolicy Always, with back-off); everything is
//! removed when the cluster is dropped. Pods are known by namespace and name,
//! as in Kubernetes; Deployments roll out and scale as Kubernetes does
//! ([`rollout`]), and a deleted pod leaves its Services' endpoints, gets
//! SIGTERM and its grace period before it goes ([`pods`]).

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::Network;
use crate::manifest;
use crate::plan::{DNS_IP, Plan, PodId};
use crate::prometheus::{self, Scraping, Target};
use crate::readiness::Probes;

mod ambient;
mod changes;
mod control_planes;
mod pods;
mod rollout;

pub(crate) use control_planes::control_plane_host;

#[derive(Debug, thiserror::Error)]
pub enum UpError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Plan(#[from] crate::plan::PlanError),
    #[error(transparent)]
    Testbed(#[from] crate::TestbedError),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Start(String),
    #[error("interrupted while starting; everything started so far was removed")]
    Interrupted,
}

/// Where things are and which binary plays every part.
#[derive(Clone, Debug)]
pub struct Options {
    pub dir: PathBuf,
    pub binary: PathBuf,
    /// How long to wait for every pod to be ready.
    pub ready_timeout: Duration,
    /// Set (by a signal handler) to abandon a start midway; what was started is
    /// removed.
    pub stop: Arc<AtomicBool>,
    /// Run Prometheus in the mesh, scraping it as Istio's addon does.
    pub prometheus: Option<Scraping>,
}

struct Process {
    pod: PodId,
    container: String,
    command: Command,
    child: Option<Child>,
    restarts: u32,
    next_start: Instant,
    /// Stopped on purpose (a terminating pod, a control plane scaled to 0):
    /// not restarted.
    stopped: bool,
}

fn dns_pod() -> PodId {
    PodId::new("kube-system", "kube-dns")
}

pub struct Cluster {
    /// As started (with the binary pods can run).
    options: Options,
    processes: Vec<Process>,
    probes: Probes,
    /// The analyzers' warnings and errors about the manifests.
    pub findings: Vec<String>,
    pub plan: Plan,
    state: PathBuf,
    run: PathBuf,
    /// Each pod's network namespace.
    netns_names: HashMap<PodId, String>,
    /// Pods being deleted, with when their grace period ends.
    terminating: BTreeMap<PodId, Instant>,
    /// The node agent and what it enrolled, once a pod runs in ambient mode.
    ambient: Option<ambient::Ambient>,
    net: Network,
}

impl Cluster {
    pub fn start(options: &Options) -> Result<Self, UpError> {
        if !is_root() {
            return Err(UpError::Start(
                "oxmesh up needs root: pods are network namespaces with iptables rules".into(),
            ));
        }
        if let Some(running) = crate::running::RunningMesh::in_dir(&options.dir) {
            return Err(UpError::Start(format!(
                "a mesh is already running from {} (oxmesh up, pid {}); `oxmesh down` stops it",
                running.dir.display(),
                running.pid
            )));
        }
        preflight()?;
        let files = manifest::files_in(&options.dir)?;
        let mut documents = manifest::read_files(&files)?;
        let findings = manifest::findings(&files);
        let state = options.dir.join(".oxmesh");
        let canonical = options
            .dir
            .canonicalize()
            .unwrap_or_else(|_| options.dir.clone());
        let mesh = canonical
            .file_name()
            .map_or_else(|| "mesh".into(), |n| n.to_string_lossy().into_owned());
        // Two DIRs may share a name: the run directory also carries the path's hash.
        let path_hash = crate::plan::stable(&canonical.to_string_lossy()) & 0xffff_ffff;
        let run = PathBuf::from("/run/oxmesh").join(format!("{mesh}-{path_hash:08x}"));
        if let Some(scraping) = &options.prometheus {
            documents.extend(prepare_prometheus(&state, &run, scraping)?);
        }
        let plan = Plan::new(&documents)?;
        // The network first: if it cannot be made, nothing else was.
        let net = Network::new(&short(&mesh))?;
        for d in [state.join("config"), state.join("logs"), run.clone()] {
            fs::create_dir_all(&d).map_err(|source| UpError::Write {
                path: d.clone(),
                source,
            })?;
        }
        // Marks the run directory as this process's while it starts, so a
        // `down` clearing leftovers meanwhile leaves it alone.
        write(
            &run.join(crate::running::OWNER_FILE),
            std::process::id().to_string().as_bytes(),
        )?;
        let options = &Options {
            binary: binary_for_pods(&options.binary, &run)?,
            ..options.clone()
        };
        let mut cluster = Self {
            options: options.clone(),
            processes: Vec::new(),
            probes: Probes::default(),
            findings,
            plan,
            state,
            run,
            netns_names: HashMap::new(),
            terminating: BTreeMap::new(),
            ambient: None,
            net,
        };
        manifest::write_config(&cluster.state.join("config/cluster.yaml"), &cluster.plan)?;
        cluster.start_control_planes(options)?;
        interrupted(options)?;
        cluster.start_dns(options)?;
        let pods = cluster.plan.pods.clone();
        for pod in &pods {
            interrupted(options)?;
            cluster.start_pod(options, pod)?;
        }
        cluster.write_pods_file()?;
        crate::running::register(&cluster.run, &options.dir, std::process::id())
            .map_err(|e| UpError::Start(e.to_string()))?;
        cluster.wait_ready(options)?;
        Ok(cluster)
    }

    fn add_pod(&mut self, pod: &PodId, ip: Ipv4Addr) -> Result<String, UpError> {
        let ns = self.net.add_pod(&pod.flat(), ip)?.name().to_owned();
        self.netns_names.insert(pod.clone(), ns.clone());
        Ok(ns)
    }

    /// `logs/<namespace>/<pod>/<container>.log`.
    fn log(&self, pod: &PodId, container: &str) -> Result<File, UpError> {
        let dir = self.state.join("logs").join(&pod.namespace).join(&pod.name);
        fs::create_dir_all(&dir).map_err(|source| UpError::Write {
            path: dir.clone(),
            source,
        })?;
        let path = dir.join(format!("{container}.log"));
        File::options()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|source| UpError::Write { path, source })
    }

    fn spawn(&mut self, pod: &PodId, container: &str, command: Command) -> Result<(), UpError> {
        let mut p = Process {
            pod: pod.clone(),
            container: container.to_owned(),
            command,
            child: None,
            restarts: 0,
            next_start: Instant::now(),
            stopped: false,
        };
        let log = self.log(pod, container)?;
        start_process(&mut p, log)?;
        self.processes.push(p);
        Ok(())
    }

    fn start_dns(&mut self, options: &Options) -> Result<(), UpError> {
        let file = self.write_dns_records()?;
        let pod = dns_pod();
        let ns = self.add_pod(&pod, DNS_IP)?;
        let mut c = netns_command(&ns, &options.binary.to_string_lossy());
        c.args(["testbed-dns", "--records"]).arg(file);
        self.spawn(&pod, "coredns", c)
    }

    /// The Services' names and VIPs for the DNS server, which reloads them
    /// when the file changes.
    fn write_dns_records(&self) -> Result<PathBuf, UpError> {
        let records: HashMap<String, String> = self
            .plan
            .services
            .iter()
            .map(|s| {
                (
                    format!("{}.{}.svc.cluster.local", s.name, s.namespace),
                    s.vip.to_string(),
                )
            })
            .collect();
        let file = self.run.join("dns.json");
        manifest::replace(&file, &[json!(records).to_string()])?;
        Ok(file)
    }

    /// `pods.json`: what `get`, `exec`, `logs` and `rollout status` read;
    /// and Prometheus's target file, which lists the same pods.
    pub(crate) fn write_pods_file(&self) -> Result<(), UpError> {
        // The control planes and DNS are pods too, as on a cluster, so `get`
        // and `exec` reach them (`exec -n istio-system istiod -- curl ...:15014`).
        let control_planes = self.control_plane_pods();
        let system = control_planes
            .iter()
            .cloned()
            .chain([(dns_pod(), DNS_IP, true)])
            .chain(self.node_proxy_pods())
            .map(|(pod, ip, up)| {
                json!({
                    "name": pod.name, "namespace": pod.namespace, "ip": ip.to_string(),
                    "netns": self.netns_names.get(&pod),
                    "sidecar": false, "workload": pod.name, "revision": "",
                    "ready": up, "terminating": !up,
                })
            });
        let pods: Vec<Value> = system
            .into_iter()
            .chain(self.plan.pods.iter().map(|p| {
                json!({
                    "name": p.name, "namespace": p.namespace, "ip": p.ip.to_string(),
                    "netns": self.netns_names.get(&p.id()),
                    "sidecar": p.injected,
                    "ambient": self.is_enrolled(&p.id()),
                    "gateway": p.gateway,
                    "workload": p.workload,
                    "revision": p.revision,
                    "ready": !p.terminating && self.probes.is_ready(&p.id()),
                    "terminating": p.terminating,
                })
            }))
            .collect();
        let services: Vec<Value> = self
            .plan
            .services
            .iter()
            .map(|s| json!({"name": s.name, "namespace": s.namespace, "vip": s.vip.to_string()}))
            .collect();
        let mut workloads: Vec<Value> = self
            .plan
            .workloads
            .iter()
            .map(|w| {
                json!({
                    "kind": w.kind.as_str(), "namespace": w.namespace, "name": w.name,
                    "replicas": w.replicas, "revision": w.revision,
                })
            })
            .collect();
        for (istiod, _, up) in &control_planes {
            workloads.push(json!({
                "kind": "Deployment", "namespace": istiod.namespace, "name": istiod.name,
                "replicas": usize::from(*up), "revision": "",
            }));
        }
        let text = serde_json::to_string_pretty(
            &json!({"pods": pods, "services": services, "workloads": workloads}),
        )
        .unwrap_or_default();
        write(&self.state.join("pods.json"), text.as_bytes())?;
        self.write_scrape_targets()
    }

    /// With Prometheus, the pods it discovers, rewritten whole (Prometheus
    /// watches the file).
    fn write_scrape_targets(&self) -> Result<(), UpError> {
        if self.options.prometheus.is_none() {
            return Ok(());
        }
        let control_planes = self
            .control_plane_pods()
            .into_iter()
            .map(|(pod, ip, up)| Target::control_plane(&pod.name, ip, up));
        let pods = self
            .plan
            .pods
            .iter()
            .map(|p| Target::of_pod(p, !p.terminating && self.probes.is_ready(&p.id())));
        let targets: Vec<Target> = control_planes.chain(pods).collect();
        let files = prometheus::Files::new(self.state.join("prometheus"));
        write(
            &files.targets(),
            prometheus::target_file(&targets).as_bytes(),
        )
    }

    /// The Unix socket that reaches Prometheus's port.
    pub fn prometheus_socket(&self) -> PathBuf {
        prometheus_socket(&self.run)
    }

    /// Every pod ready (its app's probes and its sidecar's), polled so an
    /// interrupt is seen within a tenth of a second.
    fn wait_ready(&mut self, options: &Options) -> Result<(), UpError> {
        let deadline = Instant::now() + options.ready_timeout;
        loop {
            self.probe();
            let waiting = self.probes.waiting();
            if waiting.is_empty() {
                return Ok(());
            }
            interrupted(options)?;
            if Instant::now() > deadline {
                let named: Vec<String> = waiting.iter().map(ToString::to_string).collect();
                return Err(UpError::Start(format!(
                    "pods never became ready: {}; see .oxmesh/logs/<namespace>/<pod>/ (istio-proxy.log for the sidecar)",
                    named.join(", ")
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs readiness probes; a pod whose readiness changes is reported to
    /// the control plane (its endpoints follow).
    fn probe(&mut self) {
        let changed = self.probes.run();
        for (pod, ready) in &changed {
            tracing::info!(%pod, ready, "readiness changed");
            let config = self.state.join("config/cluster.yaml");
            if let Err(e) = manifest::set_pod_ready(&config, pod, *ready) {
                tracing::warn!(%pod, error = %e, "cannot report readiness");
            }
        }
        if !changed.is_empty() {
            self.pods_changed();
        }
    }

    /// What follows any change of pods or their readiness: every pod's
    /// Service rules and the pods file.
    fn pods_changed(&self) {
        self.refresh_vip_rules();
        if let Err(e) = self.write_pods_file() {
            tracing::warn!(error = %e, "cannot write the pods file");
        }
    }

    /// One turn of the mesh's loop: requests from the CLI, probes, rollouts,
    /// pods whose grace period ran out, and restarts of what exited
    /// (Kubernetes' back-off: 1 s doubling to 30 s).
    pub fn supervise(&mut self) {
        self.handle_requests();
        self.probe();
        self.roll_out();
        self.finish_terminations();
        let now = Instant::now();
        let mut restart = Vec::new();
        for (i, p) in self.processes.iter_mut().enumerate() {
            let exited = match p.child.as_mut().map(Child::try_wait) {
                Some(Ok(Some(status))) => Some(status),
                _ => None,
            };
            if let Some(status) = exited {
                p.child = None;
                if p.stopped {
                    continue;
                }
                p.restarts += 1;
                let delay =
                    Duration::from_secs(1 << p.restarts.min(5)).min(Duration::from_secs(30));
                p.next_start = now + delay;
                tracing::warn!(pod = %p.pod, container = %p.container, %status, restart_in = ?delay, "container exited");
            }
            if p.child.is_none() && !p.stopped && now >= p.next_start {
                restart.push(i);
            }
        }
        for i in restart {
            let (pod, container) = (
                self.processes[i].pod.clone(),
                self.processes[i].container.clone(),
            );
            if let Ok(log) = self.log(&pod, &container) {
                let _ = start_process(&mut self.processes[i], log);
            }
        }
    }

    pub fn state_dir(&self) -> &Path {
        &self.state
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for p in &mut self.processes {
            if let Some(child) = p.child.as_mut() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        for ns in self.netns_names.values() {
            let _ = fs::remove_dir_all(Path::new("/etc/netns").join(ns));
        }
        let _ = fs::remove_dir_all(&self.run);
    }
}

fn prometheus_socket(run: &Path) -> PathBuf {
    run.join("prometheus.sock")
}

/// Prometheus's fresh files, and the pod that runs it, as manifests; refused
/// up front when the server is not installed.
fn prepare_prometheus(
    state: &Path,
    run: &Path,
    scraping: &Scraping,
) -> Result<Vec<(String, Value)>, UpError> {
    if !Path::new(prometheus::BINARY).is_file() {
        return Err(UpError::Start(format!(
            "--prometheus runs Debian's Prometheus, {} is missing: apt-get install prometheus",
            prometheus::BINARY
        )));
    }
    let files = prometheus::Files::new(state.join("prometheus"));
    files.prepare(scraping).map_err(|source| UpError::Write {
        path: state.join("prometheus"),
        source,
    })?;
    Ok(prometheus::documents(&files, &prometheus_socket(run)))
}

fn start_process(p: &mut Process, log: File) -> Result<(), UpError> {
    let err = log
        .try_clone()
        .map_err(|e| UpError::Start(format!("log file: {e}")))?;
    p.command
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(err))
        .stdin(Stdio::null());
    let child = p
        .command
        .spawn()
        .map_err(|e| UpError::Start(format!("pod {} container {}: {e}", p.pod, p.container)))?;
    p.child = Some(child);
    Ok(())
}

/// The proxies run as uid 1337: if that user cannot reach the binary (a
/// checkout under a private home directory), a copy goes where pods can read it.
fn binary_for_pods(binary: &Path, run: &Path) -> Result<PathBuf, UpError> {
    use std::os::unix::fs::PermissionsExt;
    let others_may = |path: &Path, bits: u32| {
        fs::metadata(path).is_ok_and(|m| m.permissions().mode() & bits == bits)
    };
    let reachable = others_may(binary, 0o005)
        && binary
            .ancestors()
            .skip(1)
            .filter(|a| !a.as_os_str().is_empty())
            .all(|a| others_may(a, 0o001));
    if reachable {
        return Ok(binary.to_owned());
    }
    let copy = run.join("oxmesh");
    fs::copy(binary, &copy).map_err(|source| UpError::Write {
        path: copy.clone(),
        source,
    })?;
    fs::set_permissions(&copy, fs::Permissions::from_mode(0o755)).map_err(|source| {
        UpError::Write {
            path: copy.clone(),
            source,
        }
    })?;
    Ok(copy)
}

fn interrupted(options: &Options) -> Result<(), UpError> {
    if options.stop.load(Ordering::SeqCst) {
        Err(UpError::Interrupted)
    } else {
        Ok(())
    }
}

/// The host programs the testbed runs, each with the package that has it.
fn preflight() -> Result<(), UpError> {
    let needed = [
        ("ip", "iproute2"),
        ("iptables", "iptables"),
        ("iptables-restore", "iptables"),
        ("setpriv", "util-linux"),
    ];
    let path = std::env::var("PATH").unwrap_or_default();
    let missing: Vec<String> = needed
        .iter()
        .filter(|(program, _)| {
            !path
                .split(':')
                .any(|d| Path::new(d).join(program).is_file())
        })
        .map(|(program, package)| format!("{program} (package {package})"))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(UpError::Start(format!(
            "missing on this host: {}",
            missing.join(", ")
        )))
    }
}

fn is_root() -> bool {
    fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
            == Some("0")
    })
}

fn netns_command(ns: &str, program: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, program]);
    c
}

/// Writes `path` whole or not at all (a temporary file renamed over it), so
/// `oxmesh get` or `rollout status` reading it meanwhile never sees half.
fn write(path: &Path, bytes: &[u8]) -> Result<(), UpError> {
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    let partial = std::path::PathBuf::from(partial);
    fs::write(&partial, bytes)
        .and_then(|()| fs::rename(&partial, path))
        .map_err(|source| UpError::Write {
            path: path.to_owned(),
            source,
        })
}

/// A short tag for namespace names (interface names are limited to 15 bytes,
/// namespace names are not, but short names read better).
fn short(mesh: &str) -> String {
    mesh.chars()
        .filter(char::is_ascii_alphanumeric)
        .take(8)
        .collect::<String>()
        .to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_binary_the_proxy_user_cannot_reach_is_copied_where_it_can() {
        let base = std::env::temp_dir().join(format!("oxmesh-binary-{}", std::process::id()));
        let private = base.join("private");
        let run = base.join("run");
        fs::create_dir_all(&private).expect("dirs");
        fs::create_dir_all(&run).expect("dirs");
        let binary = private.join("oxmesh");
        fs::write(&binary, b"#!/bin/sh\n").expect("binary");
        fs::set_permissions(&binary, fs::Permissions::from_mode(0o755)).expect("mode");
        fs::set_permissions(&base, fs::Permissions::from_mode(0o755)).expect("mode");
        fs::set_permissions(&private, fs::Permissions::from_mode(0o755)).expect("mode");
        assert_eq!(binary_for_pods(&binary, &run).expect("usable"), binary);
        fs::set_permissions(&private, fs::Permissions::from_mode(0o700)).expect("mode");
        let copy = binary_for_pods(&binary, &run).expect("copied");
        assert_eq!(copy, run.join("oxmesh"));
        assert_eq!(
            fs::metadata(&copy).expect("copy").permissions().mode() & 0o777,
            0o755
        );
        let _ = fs::remove_dir_all(&base);
    }
}

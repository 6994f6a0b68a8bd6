//! A local mesh that `oxmesh up` is running, as the other commands find it: by
//! `--mesh DIR`, or the only one registered under `/run/oxmesh/`. Applying and
//! deleting Istio objects edits the control plane's config (which it watches);
//! `down` stops the `up` process, or after a crash removes what it left.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const RUN_ROOT: &str = "/run/oxmesh";
/// The pid of the `up` that made a run directory, written before anything
/// else is started in it.
pub const OWNER_FILE: &str = "owner";
/// Every network namespace the testbed makes starts with this.
pub const NETNS_PREFIX: &str = "oxm-";

#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[error("no local mesh is running (start one with `oxmesh up DIR`)")]
    NoneRunning,
    #[error("several local meshes are running ({0}): name one with --mesh DIR")]
    Several(String),
    #[error("no mesh is running from {0} (is `oxmesh up` running there?)")]
    NotRunning(PathBuf),
    #[error("no pod {0:?} (see `oxmesh get pods`)")]
    NoPod(String),
    #[error("{0}")]
    Refused(String),
    #[error("{path}: {reason}")]
    Io { path: PathBuf, reason: String },
}

/// What `up` registers about itself.
#[derive(Debug, Clone)]
pub struct RunningMesh {
    pub dir: PathBuf,
    pub pid: u32,
}

/// One pod, as `get pods` lists it.
#[derive(Debug, Clone)]
pub struct PodInfo {
    pub name: String,
    pub namespace: String,
    pub ip: String,
    pub netns: String,
    pub sidecar: bool,
    /// The pod is a gateway (`oxmesh proxy --mode gateway`, no sidecar).
    pub gateway: bool,
    /// The Deployment or StatefulSet it belongs to.
    pub workload: String,
    /// Its pod template's hash.
    pub revision: String,
    pub ready: bool,
    pub terminating: bool,
}

/// A Deployment or StatefulSet as last applied.
#[derive(Debug, Clone)]
pub struct WorkloadInfo {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub replicas: usize,
    pub revision: String,
}

fn io(path: &Path, e: impl std::fmt::Display) -> MeshError {
    MeshError::Io {
        path: path.to_owned(),
        reason: e.to_string(),
    }
}

/// Records that `up` (process `pid`) runs the mesh in `dir`; `run` is the
/// mesh's directory under `/run/oxmesh`.
pub fn register(run: &Path, dir: &Path, pid: u32) -> Result<(), MeshError> {
    let path = run.join("mesh.json");
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
    fs::write(&path, json!({"dir": dir, "pid": pid}).to_string()).map_err(|e| io(&path, e))
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn registered() -> Vec<RunningMesh> {
    let Ok(entries) = fs::read_dir(RUN_ROOT) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| fs::read_to_string(e.path().join("mesh.json")).ok())
        .filter_map(|text| serde_json::from_str::<Value>(&text).ok())
        .filter_map(|v| {
            Some(RunningMesh {
                dir: PathBuf::from(v["dir"].as_str()?),
                pid: u32::try_from(v["pid"].as_u64()?).ok()?,
            })
        })
        .filter(|m| alive(m.pid))
        .collect()
}

impl RunningMesh {
    /// The mesh running from `dir`, or the only one running.
    pub fn find(dir: Option<&Path>) -> Result<Self, MeshError> {
        let running = registered();
        match dir {
            Some(dir) => {
                let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
                running
                    .into_iter()
                    .find(|m| m.dir == dir)
                    .ok_or(MeshError::NotRunning(dir))
            }
            None => match running.as_slice() {
                [] => Err(MeshError::NoneRunning),
                [one] => Ok(one.clone()),
                several => Err(MeshError::Several(
                    several
                        .iter()
                        .map(|m| m.dir.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                )),
            },
        }
    }

    /// The mesh in `dir` if it is running (to refuse a second `up` there).
    pub fn in_dir(dir: &Path) -> Option<Self> {
        Self::find(Some(dir)).ok()
    }

    fn state(&self) -> PathBuf {
        self.dir.join(".oxmesh")
    }

    fn pods_file(&self) -> Result<Value, MeshError> {
        let path = self.state().join("pods.json");
        let text = fs::read_to_string(&path).map_err(|e| io(&path, e))?;
        serde_json::from_str(&text).map_err(|e| io(&path, e))
    }

    pub fn pods(&self) -> Result<Vec<PodInfo>, MeshError> {
        let v = self.pods_file()?;
        Ok(v["pods"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                let field = |k: &str| p[k].as_str().unwrap_or_default().to_owned();
                PodInfo {
                    name: field("name"),
                    namespace: field("namespace"),
                    ip: field("ip"),
                    netns: field("netns"),
                    sidecar: p["sidecar"].as_bool().unwrap_or(false),
                    gateway: p["gateway"].as_bool().unwrap_or(false),
                    workload: field("workload"),
                    revision: field("revision"),
                    ready: p["ready"].as_bool().unwrap_or(false),
                    terminating: p["terminating"].as_bool().unwrap_or(false),
                }
            })
            .collect())
    }

    pub fn workloads(&self) -> Result<Vec<WorkloadInfo>, MeshError> {
        let v = self.pods_file()?;
        Ok(v["workloads"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|w| {
                let field = |k: &str| w[k].as_str().unwrap_or_default().to_owned();
                WorkloadInfo {
                    kind: field("kind"),
                    namespace: field("namespace"),
                    name: field("name"),
                    replicas: w["replicas"]
                        .as_u64()
                        .and_then(|n| usize::try_from(n).ok())
                        .unwrap_or(0),
                    revision: field("revision"),
                }
            })
            .collect())
    }

    pub fn services(&self) -> Result<Vec<(String, String, String)>, MeshError> {
        let v = self.pods_file()?;
        Ok(v["services"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| {
                let field = |k: &str| s[k].as_str().unwrap_or_default().to_owned();
                (field("namespace"), field("name"), field("vip"))
            })
            .collect())
    }

    /// A pod by name, or `deploy/NAME` (`sts/NAME`) for a running pod of that
    /// workload (a ready one if there is one), in `namespace`; without one, in
    /// `default`, else wherever the name is unique.
    pub fn pod(&self, name: &str, namespace: Option<&str>) -> Result<PodInfo, MeshError> {
        let pods = self.pods()?;
        let workload = ["deploy/", "deployment/", "sts/", "statefulset/"]
            .iter()
            .find_map(|p| name.strip_prefix(p));
        let matches = |p: &&PodInfo| match workload {
            Some(w) => p.workload == w && !p.terminating,
            None => p.name == name,
        };
        let candidates: Vec<&PodInfo> = pods.iter().filter(matches).collect();
        let in_namespace = |ns: &str| -> Vec<&PodInfo> {
            candidates
                .iter()
                .copied()
                .filter(|p| p.namespace == ns)
                .collect()
        };
        let chosen = match namespace {
            Some(ns) => in_namespace(ns),
            None => {
                let default = in_namespace("default");
                let namespaces: std::collections::BTreeSet<&str> =
                    candidates.iter().map(|p| p.namespace.as_str()).collect();
                if !default.is_empty() || namespaces.len() != 1 {
                    if namespaces.len() > 1 && default.is_empty() {
                        return Err(MeshError::Refused(format!(
                            "{name:?} is in namespaces {}: choose one with -n",
                            namespaces.into_iter().collect::<Vec<_>>().join(", ")
                        )));
                    }
                    default
                } else {
                    candidates
                }
            }
        };
        chosen
            .iter()
            .find(|p| p.ready)
            .or(chosen.first())
            .map(|p| (*p).clone())
            .ok_or_else(|| MeshError::NoPod(name.to_owned()))
    }

    /// `logs/<namespace>/<pod>/<container>.log`.
    pub fn log_file(&self, pod: &PodInfo, container: &str) -> PathBuf {
        self.logs_of(pod).join(format!("{container}.log"))
    }

    fn logs_of(&self, pod: &PodInfo) -> PathBuf {
        self.state()
            .join("logs")
            .join(&pod.namespace)
            .join(&pod.name)
    }

    /// The containers that have logs, for `logs` without `-c`.
    pub fn containers(&self, pod: &PodInfo) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.logs_of(pod))
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_suffix(".log"))
                    .map(str::to_owned)
            })
            .collect();
        names.sort();
        names
    }

    /// `oxmesh scale`: the workload's replicas; its pods follow.
    pub fn scale(
        &self,
        namespace: &str,
        name: &str,
        replicas: usize,
    ) -> Result<Vec<String>, MeshError> {
        self.ask_up(&json!({"scale": {"namespace": namespace, "name": name, "replicas": replicas}}))
    }

    /// `oxmesh rollout restart`: every pod of the workload replaced, rolling.
    pub fn restart(&self, namespace: &str, name: &str) -> Result<Vec<String>, MeshError> {
        self.ask_up(&json!({"restart": {"namespace": namespace, "name": name}}))
    }

    /// Whether a workload has rolled out: as many ready pods of its current
    /// template as replicas, and no other pod left. `None` when no such
    /// workload runs.
    pub fn rolled_out(&self, namespace: &str, name: &str) -> Result<Option<bool>, MeshError> {
        let Some(workload) = self
            .workloads()?
            .into_iter()
            .find(|w| w.namespace == namespace && w.name == name)
        else {
            return Ok(None);
        };
        let pods: Vec<PodInfo> = self
            .pods()?
            .into_iter()
            .filter(|p| p.namespace == namespace && p.workload == name)
            .collect();
        let current = pods
            .iter()
            .filter(|p| p.revision == workload.revision && p.ready && !p.terminating)
            .count();
        Ok(Some(
            current == workload.replicas && pods.len() == workload.replicas,
        ))
    }

    /// Every object of the control plane's config (Istio's objects, and the
    /// Services, Pods and Namespaces `up` writes there).
    pub fn config_objects(&self) -> Result<Vec<Value>, MeshError> {
        let path = self.state().join("config/cluster.yaml");
        let text = fs::read_to_string(&path).map_err(|e| io(&path, e))?;
        Ok(crate::manifest::split_documents(&text)
            .into_iter()
            .filter_map(|doc| serde_saphyr::from_str::<Value>(doc).ok())
            .filter(Value::is_object)
            .collect())
    }

    /// `config_objects` with the status the control plane wrote for them
    /// (the Gateway API's conditions), as the API server would serve them.
    pub fn objects_with_status(&self) -> Result<Vec<Value>, MeshError> {
        let mut objects = self.config_objects()?;
        let path = self.state().join("state/gateway-api-status.json");
        let statuses: Vec<Value> = fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        for status in statuses {
            let found = objects.iter_mut().find(|o| {
                o["kind"] == status["kind"]
                    && o["metadata"]["name"] == status["name"]
                    && o["metadata"]["namespace"].as_str().unwrap_or_default()
                        == status["namespace"]
                    && o["apiVersion"]
                        .as_str()
                        .is_some_and(|v| v.starts_with("gateway.networking.k8s.io/"))
            });
            if let Some(object) = found {
                object["status"] = status["status"].clone();
            }
        }
        Ok(objects)
    }

    /// Creates or replaces each object: Istio's in the control plane's config
    /// (which it watches); Namespaces, Services, Deployments, StatefulSets and
    /// IstioOperators (a revision's control plane) through `up`, which starts
    /// and stops their pods. Returns what changed,
    /// then what the analyzers find in the result.
    pub fn apply(&self, objects: &[Value]) -> Result<Vec<String>, MeshError> {
        self.edit(objects, true)
    }

    pub fn delete(&self, objects: &[Value]) -> Result<Vec<String>, MeshError> {
        self.edit(objects, false)
    }

    fn edit(&self, objects: &[Value], apply: bool) -> Result<Vec<String>, MeshError> {
        // A Gateway of class `istio` comes and goes with its Deployment and
        // Service, as Istio's deployment controller makes them.
        let objects: Vec<Value> = objects
            .iter()
            .flat_map(|o| {
                std::iter::once(o.clone())
                    .chain(oxmesh_config::gateway_api::deployment::derived(o, |c| {
                        c == oxmesh_config::gateway_api::CLASS
                    }))
            })
            .collect();
        let (workloads, config): (Vec<Value>, Vec<Value>) =
            objects.iter().cloned().partition(|o| {
                matches!(
                    o["kind"].as_str(),
                    Some("Namespace" | "Service" | "Deployment" | "StatefulSet" | "IstioOperator")
                )
            });
        if let Some(o) = config.iter().find(|o| {
            matches!(
                o["kind"].as_str(),
                Some("Pod" | "DaemonSet" | "ReplicaSet" | "Job" | "CronJob")
            )
        }) {
            return Err(MeshError::Refused(format!(
                "{} {}: the local mesh runs Deployments and StatefulSets; nothing was changed",
                o["kind"].as_str().unwrap_or_default(),
                o["metadata"]["name"].as_str().unwrap_or_default()
            )));
        }
        let mut changed = if workloads.is_empty() {
            Vec::new()
        } else {
            self.ask_up(&json!({"apply": apply, "objects": workloads}))?
        };
        let path = self.state().join("config/cluster.yaml");
        if config.is_empty() {
            changed.extend(crate::manifest::findings(std::slice::from_ref(&path)));
            return Ok(changed);
        }
        let mut outcome = Vec::new();
        crate::manifest::edit(&path, |docs| {
            for o in &config {
                let mut o = o.clone();
                let cluster_scoped = matches!(o["kind"].as_str(), Some("GatewayClass"));
                if o["metadata"]["namespace"].is_null() && !cluster_scoped {
                    o["metadata"]["namespace"] = json!("default");
                }
                let k = key(&o);
                let label = format!("{}/{}.{}", k.0, k.1, k.2);
                let existing = docs.iter().position(|d| key(d) == k);
                match (apply, existing) {
                    (true, Some(i)) => docs[i] = o,
                    (true, None) => docs.push(o),
                    (false, Some(i)) => {
                        docs.remove(i);
                    }
                    (false, None) => {
                        outcome.push(format!("{label} not found"));
                        continue;
                    }
                }
                outcome.push(format!(
                    "{label} {}",
                    if apply { "configured" } else { "deleted" }
                ));
            }
        })
        .map_err(|e| io(&path, e))?;
        changed.extend(outcome);
        changed.extend(crate::manifest::findings(std::slice::from_ref(&path)));
        Ok(changed)
    }

    /// Hands a request to the running `up` (only it can start and stop pods)
    /// and waits for its answer.
    fn ask_up(&self, request: &Value) -> Result<Vec<String>, MeshError> {
        let dir = self.state().join("requests");
        fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
        let id = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let file = dir.join(format!("{id}-{}.json", std::process::id()));
        let staging = file.with_extension("tmp");
        fs::write(&staging, request.to_string()).map_err(|e| io(&staging, e))?;
        fs::rename(&staging, &file).map_err(|e| io(&file, e))?;
        let done = file.with_extension("done");
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(text) = fs::read_to_string(&done) {
                let _ = fs::remove_file(&done);
                let answer: Value = serde_json::from_str(&text).map_err(|e| io(&done, e))?;
                let lines: Vec<String> = answer["lines"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|l| l.as_str().map(str::to_owned))
                    .collect();
                return if answer["ok"] == true {
                    Ok(lines)
                } else {
                    Err(MeshError::Refused(lines.join("\n")))
                };
            }
            if Instant::now() > deadline || !alive(self.pid) {
                let _ = fs::remove_file(&file);
                return Err(MeshError::Refused(
                    "oxmesh up did not take the change (is it still running?)".into(),
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Asks `up` to tear the mesh down and waits for it.
    pub fn stop(&self, timeout: Duration) -> Result<(), MeshError> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        let deadline = Instant::now() + timeout;
        while alive(self.pid) {
            if Instant::now() > deadline {
                return Err(MeshError::Refused(format!(
                    "oxmesh up (pid {}) did not stop within {timeout:?}",
                    self.pid
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }
}

use crate::manifest::key;

/// What a crashed `up` left behind: namespaces named with the testbed's
/// prefix, their `/etc/netns` files, and run directories of dead meshes.
/// Returns what was removed.
pub fn remove_leftovers() -> Vec<String> {
    let mut removed = Vec::new();
    let listed = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    for ns in listed
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(NETNS_PREFIX))
        .filter(|n| !owner_alive(n))
    {
        if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        }
        let _ = Command::new("ip").args(["netns", "del", ns]).status();
        let _ = fs::remove_dir_all(Path::new("/etc/netns").join(ns));
        removed.push(format!("network namespace {ns}"));
    }
    if let Ok(entries) = fs::read_dir(RUN_ROOT) {
        for e in entries.filter_map(|e| e.ok()) {
            let path = e.path();
            let registered = fs::read_to_string(path.join("mesh.json"))
                .ok()
                .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                .and_then(|v| v["pid"].as_u64())
                .and_then(|pid| u32::try_from(pid).ok());
            // A mesh still starting has no mesh.json yet, but has its owner.
            let starting = fs::read_to_string(path.join(OWNER_FILE))
                .ok()
                .and_then(|t| t.trim().parse::<u32>().ok());
            let live = registered.or(starting).is_some_and(alive);
            if !live && fs::remove_dir_all(&path).is_ok() {
                removed.push(format!("{}", path.display()));
            }
        }
    }
    removed
}

/// Namespaces are named `oxm-<tag>-<pid of their maker>-<pod>`: one whose
/// maker still runs is not a leftover.
fn owner_alive(netns: &str) -> bool {
    netns
        .split('-')
        .nth(2)
        .and_then(|pid| pid.parse::<u32>().ok())
        .is_some_and(alive)
}

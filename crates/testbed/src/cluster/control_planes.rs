//! The control planes: the default one (`deploy/istiod`, 198.18.0.2) and one
//! per revision an IstioOperator installs (`deploy/istiod-<revision>`), as
//! `istioctl install --revision` adds them beside each other. Every revision
//! shares the mesh's CA and token key (Istio's `cacerts`), so proxies of two
//! revisions trust each other while namespaces move across; each serves the
//! proxies its revision injected. Each runs as one replica or none.

use std::fs;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{Cluster, Options, UpError, interrupted, netns_command, write};
use crate::plan::{DEFAULT_REVISION, PodId, installed_revision};

/// A revision's control-plane pod: `istiod`, or `istiod-<revision>`.
pub(crate) fn control_plane_pod(revision: &str) -> PodId {
    if revision == DEFAULT_REVISION {
        PodId::new("istio-system", "istiod")
    } else {
        PodId::new("istio-system", &format!("istiod-{revision}"))
    }
}

/// The name the revision's serving certificate carries, which its proxies
/// check.
pub(crate) fn control_plane_host(revision: &str) -> String {
    format!("{}.istio-system.svc", control_plane_pod(revision).name)
}

impl Cluster {
    /// The revision whose control plane `pod` is.
    pub(super) fn revision_of(&self, pod: &PodId) -> Option<String> {
        self.plan
            .control_planes
            .keys()
            .find(|r| control_plane_pod(r) == *pod)
            .cloned()
    }

    /// Where a revision keeps its state: the default one's is the mesh's,
    /// which holds the CA and token key the others copy.
    fn control_plane_state(&self, revision: &str) -> PathBuf {
        if revision == DEFAULT_REVISION {
            self.state.join("state")
        } else {
            self.state.join(format!("state-{revision}"))
        }
    }

    /// Starts every planned control plane, the default one first (it makes
    /// the CA the others share).
    pub(super) fn start_control_planes(&mut self, options: &Options) -> Result<(), UpError> {
        self.start_control_plane(options, DEFAULT_REVISION)?;
        let others: Vec<String> = self
            .plan
            .control_planes
            .keys()
            .filter(|r| *r != DEFAULT_REVISION)
            .cloned()
            .collect();
        for revision in others {
            self.start_control_plane(options, &revision)?;
        }
        Ok(())
    }

    fn start_control_plane(&mut self, options: &Options, revision: &str) -> Result<(), UpError> {
        let pod = control_plane_pod(revision);
        let ip = self
            .plan
            .control_planes
            .get(revision)
            .copied()
            .ok_or_else(|| {
                UpError::Invalid(format!("no address planned for revision {revision}"))
            })?;
        let state = self.control_plane_state(revision);
        if revision != DEFAULT_REVISION {
            share_ca(&self.control_plane_state(DEFAULT_REVISION), &state)?;
        }
        let ns = self.add_pod(&pod, ip)?;
        // A pod like any other: cluster DNS and Service VIPs (the dashboard
        // reaches a Prometheus by its Service name).
        self.write_netns_files(&ns, &pod, ip)?;
        if let Some(netns) = self.net.pod(&pod.flat()) {
            self.service_rules(netns)?;
        }
        let mut c = netns_command(&ns, &options.binary.to_string_lossy());
        c.arg("control")
            .arg("--state-dir")
            .arg(&state)
            .arg("--config-dir")
            .arg(self.state.join("config"))
            .args(["--revision", revision]);
        if options.prometheus.is_some() {
            c.args(["--prometheus", &crate::prometheus::in_cluster_url()]);
        }
        self.spawn(&pod, "discovery", c)?;
        if revision == DEFAULT_REVISION {
            self.wait_for_ca(options)?;
        }
        Ok(())
    }

    /// The CA the default control plane makes (or loads) on its first start.
    fn wait_for_ca(&self, options: &Options) -> Result<(), UpError> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = std::process::Command::new(&options.binary)
                .args(["ca", "root", "--state-dir"])
                .arg(self.control_plane_state(DEFAULT_REVISION))
                .output()
                .map_err(|e| UpError::Start(format!("oxmesh ca root: {e}")))?;
            if out.status.success() {
                return write(&self.run.join("root-cert.pem"), &out.stdout);
            }
            if Instant::now() > deadline {
                return Err(UpError::Start(
                    "the control plane made no CA within 30 s; see .oxmesh/logs/istio-system/istiod"
                        .into(),
                ));
            }
            interrupted(options)?;
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `oxmesh apply` / `delete` of an IstioOperator: a revision's control
    /// plane starts (or starts again), or stops as if scaled to 0 (its pod
    /// and address stay until `oxmesh down`). Deleting is refused while pods
    /// of the revision run: their proxies would lose their control plane.
    pub(super) fn install(&mut self, doc: &Value, apply: bool) -> Result<String, UpError> {
        let name = doc["metadata"]["name"].as_str().unwrap_or("installed");
        let Some(revision) = installed_revision(doc) else {
            return Ok(format!(
                "IstioOperator/{name} unchanged: the default revision always runs"
            ));
        };
        let pod = control_plane_pod(&revision);
        let started = self.processes.iter().any(|p| p.pod == pod);
        if apply {
            if started {
                self.scale_control_plane(&revision, 1)?;
            } else {
                let options = self.options.clone();
                self.plan
                    .add_control_plane(&revision)
                    .map_err(UpError::Invalid)?;
                self.start_control_plane(&options, &revision)?;
                self.write_pods_file()?;
            }
            return Ok(format!(
                "IstioOperator/{name} configured: deployment/{} runs",
                pod.name
            ));
        }
        let users: Vec<String> = self
            .plan
            .pods
            .iter()
            .filter(|p| (p.injected || p.gateway) && p.control_plane == revision && !p.terminating)
            .map(|p| p.id().to_string())
            .collect();
        if !users.is_empty() {
            return Err(UpError::Invalid(format!(
                "IstioOperator/{name}: pods of revision {revision} still run ({}); move their namespaces to another revision and restart them first",
                users.join(", ")
            )));
        }
        if started {
            self.scale_control_plane(&revision, 0)?;
        }
        Ok(format!(
            "IstioOperator/{name} deleted: deployment/{} stopped",
            pod.name
        ))
    }

    /// A control plane's replicas, 0 or 1: scaled to 0 it stops (SIGTERM)
    /// and stays stopped; back to 1 it starts again. Proxies keep serving
    /// their last config meanwhile.
    pub(super) fn scale_control_plane(
        &mut self,
        revision: &str,
        replicas: usize,
    ) -> Result<String, UpError> {
        let pod = control_plane_pod(revision);
        match replicas {
            0 => self.signal(&pod, "TERM"),
            1 => {
                for p in self.processes.iter_mut().filter(|p| p.pod == pod) {
                    if p.stopped {
                        p.stopped = false;
                        p.restarts = 0;
                        p.next_start = Instant::now();
                    }
                }
            }
            _ => {
                return Err(UpError::Invalid(format!(
                    "the local mesh runs each control plane as one replica: scale {} to 0 or 1",
                    pod.name
                )));
            }
        }
        self.write_pods_file()?;
        Ok(format!("deployment/{} scaled", pod.name))
    }

    /// Each control plane's pod, address and whether it runs.
    pub(super) fn control_plane_pods(&self) -> Vec<(PodId, Ipv4Addr, bool)> {
        self.plan
            .control_planes
            .iter()
            .map(|(revision, ip)| {
                let pod = control_plane_pod(revision);
                let up = self.processes.iter().any(|p| p.pod == pod && !p.stopped);
                (pod, *ip, up)
            })
            .collect()
    }
}

/// Gives a revision's state directory the default one's CA (`ca/`) and
/// token key (the PEM files beside it), as every istiod of a cluster reads
/// the same `cacerts` and reviews tokens with the same API server.
fn share_ca(from: &Path, to: &Path) -> Result<(), UpError> {
    copy_pem_files(from, to)?;
    copy_pem_files(&from.join("ca"), &to.join("ca"))
}

fn copy_pem_files(from: &Path, to: &Path) -> Result<(), UpError> {
    let read_error = |source| UpError::Read {
        path: from.to_path_buf(),
        source,
    };
    fs::create_dir_all(to).map_err(|source| UpError::Write {
        path: to.to_path_buf(),
        source,
    })?;
    for entry in fs::read_dir(from).map_err(read_error)? {
        let path = entry.map_err(read_error)?.path();
        if path.extension().is_none_or(|x| x != "pem") {
            continue;
        }
        let bytes = fs::read(&path).map_err(|source| UpError::Read {
            path: path.clone(),
            source,
        })?;
        if let Some(name) = path.file_name() {
            let target = to.join(name);
            write(&target, &bytes)?;
            // Keys stay the owner's alone, as the originals are.
            fs::set_permissions(&target, fs::Permissions::from_mode(0o600)).map_err(|source| {
                UpError::Write {
                    path: target.clone(),
                    source,
                }
            })?;
        }
    }
    Ok(())
}

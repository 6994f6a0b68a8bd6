//! Workloads, Services and Namespaces applied or deleted while the mesh runs
//! (`oxmesh apply` / `delete` hand them to `up` as request files): the plan
//! changes, the control plane's config follows, pods of a changed workload are
//! replaced, and DNS and the VIP rules of pods without sidecars are rebuilt.

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::{Cluster, UpError, dns_rules};
use crate::manifest;
use crate::plan::{PodPlan, asks_for_injection, pod_object};

/// Where `oxmesh apply` leaves requests for `up`.
pub fn requests_dir(state: &Path) -> PathBuf {
    state.join("requests")
}

impl Cluster {
    /// Handles every waiting request, answering each in a `.done` file.
    pub(super) fn handle_requests(&mut self) {
        let dir = requests_dir(&self.state);
        let Ok(entries) = fs::read_dir(&dir) else {
            return;
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        files.sort();
        for file in files {
            let request = fs::read_to_string(&file)
                .ok()
                .and_then(|t| serde_json::from_str::<Value>(&t).ok());
            let outcome = match &request {
                Some(r) => {
                    let objects = r["objects"].as_array().cloned().unwrap_or_default();
                    self.change(&objects, r["apply"].as_bool().unwrap_or(true))
                }
                None => Err(UpError::Invalid("an unreadable request".into())),
            };
            let answer = match outcome {
                Ok(lines) => json!({"ok": true, "lines": lines}),
                Err(e) => json!({"ok": false, "lines": [e.to_string()]}),
            };
            let _ = manifest::replace(&file.with_extension("done"), &[answer.to_string()]);
            let _ = fs::remove_file(&file);
        }
    }

    /// Applies (or deletes) Namespaces, Services and workloads, in that order.
    fn change(&mut self, objects: &[Value], apply: bool) -> Result<Vec<String>, UpError> {
        let rank = |o: &Value| match o["kind"].as_str() {
            Some("Namespace") => 0,
            Some("Service") => 1,
            _ => 2,
        };
        let mut objects = objects.to_vec();
        objects.sort_by_key(rank);
        let mut lines = Vec::new();
        let mut remove = Vec::new();
        let mut add = Vec::new();
        let mut new_pods: Vec<PodPlan> = Vec::new();
        for o in &objects {
            let key = manifest::key(o);
            let (kind, namespace, name) = (&key.0, &key.1, &key.2);
            match kind.as_str() {
                "Namespace" => {
                    self.plan.injected.remove(name);
                    if apply && asks_for_injection(o) {
                        self.plan.injected.insert(name.clone());
                    }
                }
                "Service" => {
                    let replacement = apply
                        .then(|| self.plan.service_for(o))
                        .transpose()
                        .map_err(UpError::Invalid)?;
                    self.plan
                        .services
                        .retain(|s| !(s.name == *name && s.namespace == *namespace));
                    if let Some((service, doc)) = replacement {
                        self.plan.services.push(service);
                        add.push(doc);
                        lines.push(format!("Service/{namespace}.{name} configured"));
                        continue;
                    }
                }
                "Deployment" | "StatefulSet" => {
                    let old: Vec<String> = self
                        .plan
                        .pods
                        .iter()
                        .filter(|p| p.namespace == *namespace && p.workload == *name)
                        .map(|p| p.name.clone())
                        .collect();
                    for pod in &old {
                        self.remove_pod(pod);
                        remove.push(("Pod".to_owned(), namespace.clone(), pod.clone()));
                    }
                    if apply {
                        let pods = self.plan.pods_for(o).map_err(UpError::Invalid)?;
                        self.plan.pods.extend(pods.iter().cloned());
                        add.extend(pods.iter().map(pod_object));
                        new_pods.extend(pods);
                    }
                }
                other => {
                    return Err(UpError::Invalid(format!(
                        "{other} cannot change while the mesh runs"
                    )));
                }
            }
            if apply {
                add.push(o.clone());
                lines.push(format!("{kind}/{namespace}.{name} configured"));
            } else {
                remove.push(key.clone());
                lines.push(format!("{kind}/{namespace}.{name} deleted"));
            }
        }
        // The control plane learns of the pods before their proxies ask.
        manifest::edit_config(&self.state.join("config/cluster.yaml"), &remove, &add)?;
        let options = self.options.clone();
        for pod in &new_pods {
            self.start_pod(&options, pod)?;
        }
        self.write_dns_records()?;
        self.refresh_vip_rules()?;
        self.write_pods_file()?;
        Ok(lines)
    }

    /// Stops a pod's processes and probes and removes its namespace.
    fn remove_pod(&mut self, pod: &str) {
        for p in self.processes.iter_mut().filter(|p| p.pod == pod) {
            if let Some(child) = p.child.as_mut() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        self.processes.retain(|p| p.pod != pod);
        self.probes.remove(pod);
        if let Some(ns) = self.net.pod(pod).map(|n| n.name().to_owned()) {
            let _ = fs::remove_dir_all(Path::new("/etc/netns").join(&ns));
            self.netns_names.retain(|n| *n != ns);
        }
        self.net.remove_pod(pod);
        self.plan.pods.retain(|p| p.name != pod);
    }

    /// Pods without a sidecar reach Services by DNAT rules naming endpoints:
    /// rebuilt whenever Services or pods change.
    fn refresh_vip_rules(&self) -> Result<(), UpError> {
        let plain: Vec<String> = self
            .plan
            .pods
            .iter()
            .filter(|p| !p.injected && !p.gateway)
            .map(|p| p.name.clone())
            .collect();
        for pod in plain {
            let Some(netns) = self.net.pod(&pod) else {
                continue;
            };
            netns.run("iptables", &["-t", "nat", "-F", "OUTPUT"])?;
            dns_rules(netns)?;
            self.kube_proxy_rules(&pod)?;
        }
        Ok(())
    }
}

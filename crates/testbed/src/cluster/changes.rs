//! Workloads, Services and Namespaces applied or deleted while the mesh runs
//! (`oxmesh apply` / `delete` hand them to `up` as request files), and
//! `oxmesh scale` and `oxmesh rollout restart`: the plan changes, the control
//! plane's config follows, workloads roll out ([`super::rollout`]), running
//! pods are enrolled in or released from ambient mode as their namespace's
//! label says, and DNS and the VIP rules of pods without sidecars are
//! rebuilt.

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::{Cluster, UpError};
use crate::manifest;
use crate::plan::{namespace_ambient, namespace_injection};

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
                Some(r) => self.request(r),
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

    fn request(&mut self, request: &Value) -> Result<Vec<String>, UpError> {
        let target = |r: &Value| {
            let field = |k: &str| r[k].as_str().unwrap_or_default().to_owned();
            (field("namespace"), field("name"))
        };
        if let Some(scale) = request.get("scale") {
            let (namespace, name) = target(scale);
            let replicas = scale["replicas"]
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| UpError::Invalid("--replicas is missing".into()))?;
            return self.scale(&namespace, &name, replicas).map(|l| vec![l]);
        }
        if let Some(restart) = request.get("restart") {
            let (namespace, name) = target(restart);
            return self.restart(&namespace, &name).map(|l| vec![l]);
        }
        let objects = request["objects"].as_array().cloned().unwrap_or_default();
        self.change(&objects, request["apply"].as_bool().unwrap_or(true))
    }

    /// Applies (or deletes) control planes (IstioOperators), Namespaces,
    /// Services and workloads, in that order.
    fn change(&mut self, objects: &[Value], apply: bool) -> Result<Vec<String>, UpError> {
        let rank = |o: &Value| match o["kind"].as_str() {
            Some("IstioOperator") => 0,
            Some("Namespace") => 1,
            Some("Service") => 2,
            _ => 3,
        };
        let mut objects = objects.to_vec();
        objects.sort_by_key(rank);
        let mut lines = Vec::new();
        let mut remove = Vec::new();
        let mut add = Vec::new();
        let mut workloads = Vec::new();
        for o in &objects {
            let key = manifest::key(o);
            let (kind, namespace, name) = (&key.0, &key.1, &key.2);
            match kind.as_str() {
                "IstioOperator" => {
                    lines.push(self.install(o, apply)?);
                    continue;
                }
                "Namespace" => {
                    self.plan.injected.remove(name);
                    if let Some(injection) = namespace_injection(o).filter(|_| apply) {
                        self.plan.injected.insert(name.clone(), injection);
                    }
                    self.plan.ambient.remove(name);
                    if apply && namespace_ambient(o) {
                        self.plan.ambient.insert(name.clone());
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
                    // Checked before anything changes.
                    if apply {
                        self.plan.workload_plan(o).map_err(UpError::Invalid)?;
                    }
                    workloads.push((o.clone(), namespace.clone(), name.clone()));
                    if apply {
                        lines.push(format!("{kind}/{namespace}.{name} configured"));
                    } else {
                        remove.push(key.clone());
                        lines.push(format!("{kind}/{namespace}.{name} deleted"));
                    }
                    continue;
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
        manifest::edit_config(&self.state.join("config/cluster.yaml"), &remove, &add)?;
        // Services first, so new pods' proxies find them; then the workloads,
        // which roll out from here on.
        for (doc, namespace, name) in &workloads {
            if apply {
                self.set_workload(doc)?;
            } else {
                self.delete_workload(namespace, name);
            }
        }
        // Running pods follow their namespace's ambient label.
        self.sync_enrollment();
        self.write_dns_records()?;
        self.pods_changed();
        Ok(lines)
    }
}

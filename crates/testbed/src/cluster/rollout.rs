//! Workloads converging on what was last applied, as Kubernetes' controllers
//! do it, one step per turn of the mesh's loop:
//! - a Deployment rolls out a new template within `maxSurge` pods over its
//!   replicas and `maxUnavailable` under them: new pods start, old ones are
//!   deleted only while enough ready pods remain; scaling adds or deletes pods;
//! - a StatefulSet makes its pods in order, each once the ones before it are
//!   ready, and replaces them one at a time from the highest ordinal.
//!
//! Deleted pods go as [`super::pods`] ends a pod (endpoints first, then
//! SIGTERM and the grace period), so a rollout under load loses nothing.

use serde_json::{Value, json};

use super::{Cluster, UpError, control_plane_pod};
use crate::manifest;
use crate::plan::{PodId, PodPlan, WorkloadKind, WorkloadPlan, pod_object};

/// The annotation `kubectl rollout restart` sets on the pod template.
const RESTARTED_AT: &str = "kubectl.kubernetes.io/restartedAt";

impl Cluster {
    /// One step of every workload towards its desired state.
    pub(super) fn roll_out(&mut self) {
        let workloads = self.plan.workloads.clone();
        for workload in &workloads {
            let step = match workload.kind {
                WorkloadKind::Deployment => self.step_deployment(workload),
                WorkloadKind::StatefulSet => self.step_stateful_set(workload),
            };
            if let Err(e) = step {
                tracing::warn!(workload = %workload.name, namespace = %workload.namespace, error = %e, "rollout step failed");
            }
        }
    }

    /// The live (not terminating) pods of `workload`.
    fn live_pods(&self, workload: &WorkloadPlan) -> Vec<PodPlan> {
        self.plan
            .pods
            .iter()
            .filter(|p| {
                !p.terminating
                    && !p.gateway
                    && p.namespace == workload.namespace
                    && p.workload == workload.name
            })
            .cloned()
            .collect()
    }

    fn is_ready(&self, pod: &PodPlan) -> bool {
        self.probes.is_ready(&pod.id())
    }

    fn any_terminating(&self, workload: &WorkloadPlan) -> bool {
        self.plan.pods.iter().any(|p| {
            p.namespace == workload.namespace && p.workload == workload.name && p.terminating
        })
    }

    fn step_deployment(&mut self, workload: &WorkloadPlan) -> Result<(), UpError> {
        let live = self.live_pods(workload);
        let (current, old): (Vec<PodPlan>, Vec<PodPlan>) = live
            .into_iter()
            .partition(|p| p.revision == workload.revision);
        // Too many of the current template (scaled down): unready ones first,
        // then the newest.
        if current.len() > workload.replicas {
            // Kubernetes deletes unready pods first, then the newest.
            let mut extra: Vec<(usize, PodPlan)> = current.iter().cloned().enumerate().collect();
            extra.sort_by_key(|(age, p)| (self.is_ready(p), std::cmp::Reverse(*age)));
            for (_, pod) in extra.iter().take(current.len() - workload.replicas) {
                self.terminate(&pod.id());
            }
            return Ok(());
        }
        // Recreate: every old pod gone, terminating ones included, before
        // any new one starts.
        if workload.recreate && !old.is_empty() {
            for pod in &old {
                self.terminate(&pod.id());
            }
            return Ok(());
        }
        if workload.recreate && self.any_terminating(workload) {
            return Ok(());
        }
        // Surge: new pods while the total stays within replicas + maxSurge.
        let total = current.len() + old.len();
        let room = (workload.replicas + workload.max_surge).saturating_sub(total);
        let wanted = workload.replicas - current.len();
        for _ in 0..room.min(wanted) {
            self.add_workload_pod(workload, 0)?;
        }
        if old.is_empty() {
            return Ok(());
        }
        // Old pods that are not ready count for nothing: they go first.
        let (old_ready, old_unready): (Vec<PodPlan>, Vec<PodPlan>) =
            old.into_iter().partition(|p| self.is_ready(p));
        for pod in &old_unready {
            self.terminate(&pod.id());
        }
        // Ready ones go while enough ready pods remain.
        let available = old_ready.len() + current.iter().filter(|p| self.is_ready(p)).count();
        let minimum = workload.replicas.saturating_sub(workload.max_unavailable);
        let removable = available.saturating_sub(minimum);
        for pod in old_ready.iter().take(removable) {
            self.terminate(&pod.id());
        }
        Ok(())
    }

    fn step_stateful_set(&mut self, workload: &WorkloadPlan) -> Result<(), UpError> {
        let live = self.live_pods(workload);
        let ordinal_of = |p: &PodPlan| {
            p.name
                .strip_prefix(&format!("{}-", workload.name))
                .and_then(|n| n.parse::<usize>().ok())
        };
        let busy = self.any_terminating(workload) || live.iter().any(|p| !self.is_ready(p));
        // Beyond the replicas: the highest ordinal goes first, one at a time.
        let mut beyond: Vec<&PodPlan> = live
            .iter()
            .filter(|p| ordinal_of(p).is_none_or(|n| n >= workload.replicas))
            .collect();
        beyond.sort_by_key(|p| std::cmp::Reverse(ordinal_of(p)));
        if let Some(pod) = beyond.first() {
            if !busy {
                self.terminate(&pod.id());
            }
            return Ok(());
        }
        // Missing ordinals are made in order, each after the ones before are
        // ready; a name still terminating waits for the old pod to go.
        for ordinal in 0..workload.replicas {
            let name = format!("{}-{ordinal}", workload.name);
            let taken = self
                .plan
                .pods
                .iter()
                .any(|p| p.namespace == workload.namespace && p.name == name);
            if !taken {
                if !busy {
                    self.add_workload_pod(workload, ordinal)?;
                }
                return Ok(());
            }
        }
        // Outdated pods are replaced from the highest ordinal down.
        let mut outdated: Vec<&PodPlan> = live
            .iter()
            .filter(|p| p.revision != workload.revision)
            .collect();
        outdated.sort_by_key(|p| std::cmp::Reverse(ordinal_of(p)));
        if let Some(pod) = outdated.first()
            && !busy
        {
            self.terminate(&pod.id());
        }
        Ok(())
    }

    /// Starts a new pod of `workload`; the control plane learns of it first.
    fn add_workload_pod(&mut self, workload: &WorkloadPlan, ordinal: usize) -> Result<(), UpError> {
        let pod = self
            .plan
            .new_pod(workload, ordinal)
            .map_err(UpError::Invalid)?;
        tracing::info!(pod = %pod.id(), revision = %pod.revision, "creating");
        self.plan.pods.push(pod.clone());
        let config = self.state.join("config/cluster.yaml");
        manifest::edit_config(&config, &[], &[pod_object(&pod)])?;
        let options = self.options.clone();
        if let Err(e) = self.start_pod(&options, &pod) {
            // Half a pod counts for nothing: it goes, so the rollout never
            // takes it for a ready replica.
            self.remove_pod(&pod.id());
            let key = ("Pod".to_owned(), pod.namespace.clone(), pod.name.clone());
            let _ = manifest::edit_config(&config, &[key], &[]);
            self.pods_changed();
            return Err(e);
        }
        self.pods_changed();
        Ok(())
    }

    /// `oxmesh scale`: a workload's replicas (the control plane's: 0 or 1).
    pub(super) fn scale(
        &mut self,
        namespace: &str,
        name: &str,
        replicas: usize,
    ) -> Result<String, UpError> {
        if control_plane_pod() == PodId::new(namespace, name) {
            return self.scale_control_plane(replicas);
        }
        let workload = self.find_workload(namespace, name)?;
        let mut doc = workload.doc.clone();
        doc["spec"]["replicas"] = json!(replicas);
        self.set_workload(&doc)?;
        Ok(format!(
            "{}/{name} scaled",
            workload.kind.as_str().to_ascii_lowercase()
        ))
    }

    /// `oxmesh rollout restart`: a new template annotation, so every pod is
    /// replaced by a rolling update.
    pub(super) fn restart(&mut self, namespace: &str, name: &str) -> Result<String, UpError> {
        if control_plane_pod() == PodId::new(namespace, name) {
            self.scale_control_plane(0)?;
            return self
                .scale_control_plane(1)
                .map(|_| format!("deployment/{name} restarted"));
        }
        let workload = self.find_workload(namespace, name)?;
        let mut doc = workload.doc.clone();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let Some(template) = doc
            .get_mut("spec")
            .and_then(|s| s.get_mut("template"))
            .and_then(Value::as_object_mut)
        else {
            return Err(UpError::Invalid(format!(
                "{namespace}/{name} has no pod template to restart"
            )));
        };
        let metadata = template.entry("metadata").or_insert_with(|| json!({}));
        if !metadata.is_object() {
            *metadata = json!({});
        }
        let annotations = &mut metadata["annotations"];
        if !annotations.is_object() {
            *annotations = json!({});
        }
        annotations[RESTARTED_AT] = json!(now.to_string());
        self.set_workload(&doc)?;
        Ok(format!(
            "{}/{name} restarted",
            workload.kind.as_str().to_ascii_lowercase()
        ))
    }

    fn find_workload(&self, namespace: &str, name: &str) -> Result<WorkloadPlan, UpError> {
        self.plan
            .workloads
            .iter()
            .find(|w| w.namespace == namespace && w.name == name)
            .cloned()
            .ok_or_else(|| {
                UpError::Invalid(format!(
                    "no Deployment or StatefulSet {namespace}/{name} (see `oxmesh get pods -A`)"
                ))
            })
    }

    /// Makes `doc` the desired state of its workload (new or changed); the
    /// loop rolls it out.
    pub(super) fn set_workload(&mut self, doc: &Value) -> Result<(), UpError> {
        let workload = WorkloadPlan::from_doc(doc).map_err(UpError::Invalid)?;
        manifest::edit_config(
            &self.state.join("config/cluster.yaml"),
            &[],
            std::slice::from_ref(doc),
        )?;
        self.plan
            .workloads
            .retain(|w| !(w.namespace == workload.namespace && w.name == workload.name));
        self.plan.workloads.push(workload);
        self.roll_out();
        self.write_pods_file()
    }

    /// Deletes a workload: all its pods terminate.
    pub(super) fn delete_workload(&mut self, namespace: &str, name: &str) {
        self.plan
            .workloads
            .retain(|w| !(w.namespace == namespace && w.name == name));
        let pods: Vec<PodId> = self
            .plan
            .pods
            .iter()
            .filter(|p| p.namespace == namespace && p.workload == name && !p.gateway)
            .map(PodPlan::id)
            .collect();
        for pod in &pods {
            self.terminate(pod);
        }
    }

    /// The control plane runs as one replica or none: scaled to 0 it stops
    /// (SIGTERM) and stays stopped; back to 1 it starts again. Proxies keep
    /// serving their last config meanwhile.
    fn scale_control_plane(&mut self, replicas: usize) -> Result<String, UpError> {
        let pod = control_plane_pod();
        match replicas {
            0 => self.signal(&pod, "TERM"),
            1 => {
                for p in self.processes.iter_mut().filter(|p| p.pod == pod) {
                    if p.stopped {
                        p.stopped = false;
                        p.restarts = 0;
                        p.next_start = std::time::Instant::now();
                    }
                }
            }
            _ => {
                return Err(UpError::Invalid(
                    "the local mesh runs one control plane: scale istiod to 0 or 1".into(),
                ));
            }
        }
        self.write_pods_file()?;
        Ok("deployment/istiod scaled".to_owned())
    }
}

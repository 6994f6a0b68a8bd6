//! Workloads converging on what was last applied: each turn of the mesh's
//! loop carries out the next steps [`crate::plan::rollout`] decides, and
//! serves `oxmesh scale` and `oxmesh rollout restart`.
//!
//! Deleted pods go as [`super::pods`] ends a pod (endpoints first, then
//! SIGTERM and the grace period), so a rollout under load loses nothing.

use serde_json::{Value, json};

use super::{Cluster, UpError};
use crate::manifest;
use crate::plan::rollout::{self, Member, Step};
use crate::plan::{PodId, PodPlan, WorkloadKind, WorkloadPlan, pod_object};

/// The annotation `kubectl rollout restart` sets on the pod template.
const RESTARTED_AT: &str = "kubectl.kubernetes.io/restartedAt";

impl Cluster {
    /// One step of every workload towards its desired state.
    pub(super) fn roll_out(&mut self) {
        for i in 0..self.plan.workloads.len() {
            let steps = self.next_steps(&self.plan.workloads[i]);
            if steps.is_empty() {
                continue;
            }
            let workload = self.plan.workloads[i].clone();
            for step in steps {
                let done = match step {
                    Step::Create { ordinal } => self.add_workload_pod(&workload, ordinal),
                    Step::Terminate(pod) => {
                        self.terminate(&pod);
                        Ok(())
                    }
                };
                if let Err(e) = done {
                    tracing::warn!(workload = %workload.name, namespace = %workload.namespace, error = %e, "rollout step failed");
                    break;
                }
            }
        }
    }

    /// What `workload`'s controller does next, from its pods as they are.
    fn next_steps(&self, workload: &WorkloadPlan) -> Vec<Step> {
        let ours = |p: &&PodPlan| {
            !p.is_builtin_ingress()
                && p.namespace == workload.namespace
                && p.workload == workload.name
        };
        let live: Vec<Member<'_>> = self
            .plan
            .pods
            .iter()
            .filter(ours)
            .filter(|p| !p.terminating)
            .map(|pod| Member {
                pod,
                ready: self.probes.is_ready(&pod.id()),
            })
            .collect();
        let terminating = self.plan.pods.iter().filter(ours).any(|p| p.terminating);
        match workload.kind {
            WorkloadKind::Deployment => rollout::deployment(workload, &live, terminating),
            WorkloadKind::StatefulSet => {
                let taken = |name: &str| {
                    self.plan
                        .pods
                        .iter()
                        .any(|p| p.namespace == workload.namespace && p.name == name)
                };
                rollout::stateful_set(workload, &live, terminating, taken)
            }
        }
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
        let object = pod_object(&pod, self.plan.is_ambient(&pod));
        manifest::edit_config(&config, &[], &[object])?;
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

    /// `oxmesh scale`: a workload's replicas (a control plane's: 0 or 1).
    pub(super) fn scale(
        &mut self,
        namespace: &str,
        name: &str,
        replicas: usize,
    ) -> Result<String, UpError> {
        if let Some(revision) = self.revision_of(&PodId::new(namespace, name)) {
            return self.scale_control_plane(&revision, replicas);
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
        if let Some(revision) = self.revision_of(&PodId::new(namespace, name)) {
            self.scale_control_plane(&revision, 0)?;
            return self
                .scale_control_plane(&revision, 1)
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
        let workload = self.plan.workload_plan(doc).map_err(UpError::Invalid)?;
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
            .filter(|p| p.namespace == namespace && p.workload == name && !p.is_builtin_ingress())
            .map(PodPlan::id)
            .collect();
        for pod in &pods {
            self.terminate(pod);
        }
    }
}

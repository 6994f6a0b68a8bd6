//! What a workload's controller does next, decided from its pods alone, as
//! Kubernetes' controllers decide it (the cluster carries the steps out, one
//! turn of its loop at a time):
//! - a Deployment rolls out a new template within `maxSurge` pods over its
//!   replicas and `maxUnavailable` under them: new pods start, old ones are
//!   deleted only while enough ready pods remain; scaling adds or deletes pods,
//!   unready ones first, then the newest; Recreate deletes every old pod and
//!   waits for them to go before it starts new ones;
//! - a StatefulSet makes its pods in order, each once the ones before it are
//!   ready, and replaces them one at a time from the highest ordinal.

use super::{PodId, PodPlan, WorkloadPlan};

/// A live (not terminating) pod of the workload, oldest first, and whether it
/// is ready.
pub struct Member<'a> {
    pub pod: &'a PodPlan,
    pub ready: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// A new pod (a StatefulSet's of that ordinal).
    Create {
        ordinal: usize,
    },
    Terminate(PodId),
}

pub fn deployment(workload: &WorkloadPlan, live: &[Member<'_>], terminating: bool) -> Vec<Step> {
    let (current, old): (Vec<&Member<'_>>, Vec<&Member<'_>>) = live
        .iter()
        .partition(|m| m.pod.revision == workload.revision);
    let terminate = |m: &&Member<'_>| Step::Terminate(m.pod.id());
    if current.len() > workload.replicas {
        let mut extra: Vec<(usize, &&Member<'_>)> = current.iter().enumerate().collect();
        extra.sort_by_key(|(age, m)| (m.ready, std::cmp::Reverse(*age)));
        return extra
            .iter()
            .take(current.len() - workload.replicas)
            .map(|(_, m)| terminate(m))
            .collect();
    }
    if workload.recreate && !old.is_empty() {
        return old.iter().map(terminate).collect();
    }
    if workload.recreate && terminating {
        return Vec::new();
    }
    let mut steps = Vec::new();
    // Surge: new pods while the total stays within replicas + maxSurge.
    let room = (workload.replicas + workload.max_surge).saturating_sub(current.len() + old.len());
    let wanted = workload.replicas - current.len();
    steps.extend((0..room.min(wanted)).map(|_| Step::Create { ordinal: 0 }));
    // Old pods that are not ready count for nothing: they go first; ready
    // ones while enough ready pods remain.
    let (old_ready, old_unready): (Vec<&&Member<'_>>, Vec<&&Member<'_>>) =
        old.iter().partition(|m| m.ready);
    steps.extend(old_unready.into_iter().map(terminate));
    let available = old_ready.len() + current.iter().filter(|m| m.ready).count();
    let minimum = workload.replicas.saturating_sub(workload.max_unavailable);
    let removable = available.saturating_sub(minimum);
    steps.extend(old_ready.into_iter().take(removable).map(terminate));
    steps
}

/// `taken`: whether a pod of that name exists, terminating ones included.
pub fn stateful_set(
    workload: &WorkloadPlan,
    live: &[Member<'_>],
    terminating: bool,
    taken: impl Fn(&str) -> bool,
) -> Vec<Step> {
    let ordinal_of = |m: &Member<'_>| {
        m.pod
            .name
            .strip_prefix(&format!("{}-", workload.name))
            .and_then(|n| n.parse::<usize>().ok())
    };
    let busy = terminating || live.iter().any(|m| !m.ready);
    // Beyond the replicas: the highest ordinal goes first, one at a time.
    let mut beyond: Vec<&Member<'_>> = live
        .iter()
        .filter(|m| ordinal_of(m).is_none_or(|n| n >= workload.replicas))
        .collect();
    beyond.sort_by_key(|m| std::cmp::Reverse(ordinal_of(m)));
    if let Some(m) = beyond.first() {
        return if busy {
            Vec::new()
        } else {
            vec![Step::Terminate(m.pod.id())]
        };
    }
    // Missing ordinals are made in order, each after the ones before are
    // ready; a name still terminating waits for the old pod to go.
    if let Some(ordinal) =
        (0..workload.replicas).find(|n| !taken(&format!("{}-{n}", workload.name)))
    {
        return if busy {
            Vec::new()
        } else {
            vec![Step::Create { ordinal }]
        };
    }
    // Outdated pods are replaced from the highest ordinal down.
    let mut outdated: Vec<&Member<'_>> = live
        .iter()
        .filter(|m| m.pod.revision != workload.revision)
        .collect();
    outdated.sort_by_key(|m| std::cmp::Reverse(ordinal_of(m)));
    match outdated.first() {
        Some(m) if !busy => vec![Step::Terminate(m.pod.id())],
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use serde_json::{Value, json};

    use super::*;

    fn workload(kind: &str, replicas: u64, strategy: Value, version: &str) -> WorkloadPlan {
        WorkloadPlan::from_doc(
            &json!({
                "kind": kind,
                "metadata": {"name": "web", "namespace": "default"},
                "spec": {
                    "replicas": replicas,
                    "strategy": strategy,
                    "template": {
                        "metadata": {"labels": {"app": "web", "version": version}},
                        "spec": {"containers": [{"name": "web", "image": "echo"}]},
                    },
                },
            }),
            &crate::plan::Injection::new(),
        )
        .expect("plan")
    }

    fn pods(w: &WorkloadPlan, names: &[&str]) -> Vec<PodPlan> {
        names
            .iter()
            .map(|n| {
                w.pod(n, Ipv4Addr::UNSPECIFIED, &crate::plan::Injection::new())
                    .expect("pod")
            })
            .collect()
    }

    fn members<'a>(pods: &'a [PodPlan], ready: &[bool]) -> Vec<Member<'a>> {
        pods.iter()
            .zip(ready)
            .map(|(pod, ready)| Member { pod, ready: *ready })
            .collect()
    }

    fn terminated(steps: &[Step]) -> Vec<String> {
        steps
            .iter()
            .filter_map(|s| match s {
                Step::Terminate(id) => Some(id.name.clone()),
                Step::Create { .. } => None,
            })
            .collect()
    }

    fn created(steps: &[Step]) -> usize {
        steps
            .iter()
            .filter(|s| matches!(s, Step::Create { .. }))
            .count()
    }

    #[test]
    fn a_rolling_update_stays_within_surge_and_unavailability() {
        // 4 replicas, 25 %: one pod over, one pod under.
        let old = workload("Deployment", 4, Value::Null, "v1");
        let new = workload("Deployment", 4, Value::Null, "v2");
        let mut all = pods(&old, &["a", "b", "c", "d"]);
        let live = members(&all, &[true; 4]);
        let steps = deployment(&new, &live, false);
        assert_eq!(created(&steps), 1, "one surge pod: {steps:?}");
        assert_eq!(terminated(&steps), ["a"], "one old pod may go: {steps:?}");
        // The surge pod is not ready yet and `a` is gone: nothing more may go.
        all.remove(0);
        all.extend(pods(&new, &["e"]));
        let live = members(&all, &[true, true, true, false]);
        let steps = deployment(&new, &live, true);
        assert_eq!(created(&steps), 1, "room for one more: {steps:?}");
        assert!(terminated(&steps).is_empty(), "{steps:?}");
        // Once ready, another old one goes.
        let live = members(&all, &[true, true, true, true]);
        assert_eq!(terminated(&deployment(&new, &live, false)), ["b"]);
    }

    #[test]
    fn scaling_down_takes_unready_pods_then_the_newest() {
        let w = workload("Deployment", 1, Value::Null, "v1");
        let all = pods(&w, &["oldest", "middle", "newest"]);
        let steps = deployment(&w, &members(&all, &[true, false, true]), false);
        assert_eq!(terminated(&steps), ["middle", "newest"]);
    }

    #[test]
    fn recreate_waits_for_every_old_pod_to_go() {
        let strategy = json!({"type": "Recreate"});
        let old = workload("Deployment", 2, strategy.clone(), "v1");
        let new = workload("Deployment", 2, strategy, "v2");
        let all = pods(&old, &["a", "b"]);
        let steps = deployment(&new, &members(&all, &[true, true]), false);
        assert_eq!(terminated(&steps), ["a", "b"]);
        assert_eq!(created(&steps), 0);
        assert!(deployment(&new, &[], true).is_empty(), "still terminating");
        assert_eq!(created(&deployment(&new, &[], false)), 2);
    }

    #[test]
    fn a_stateful_set_goes_one_pod_at_a_time_in_order() {
        let old = workload("StatefulSet", 3, Value::Null, "v1");
        let new = workload("StatefulSet", 3, Value::Null, "v2");
        // Made in order, each once the ones before are ready.
        let first = pods(&old, &["web-0"]);
        let taken = |n: &str| n == "web-0";
        assert_eq!(
            stateful_set(&old, &members(&first, &[true]), false, taken),
            [Step::Create { ordinal: 1 }]
        );
        assert!(stateful_set(&old, &members(&first, &[false]), false, taken).is_empty());
        // Replaced from the highest ordinal, one at a time.
        let all = pods(&old, &["web-0", "web-1", "web-2"]);
        let steps = stateful_set(&new, &members(&all, &[true; 3]), false, |_| true);
        assert_eq!(terminated(&steps), ["web-2"]);
        assert!(stateful_set(&new, &members(&all, &[true; 3]), true, |_| true).is_empty());
    }
}

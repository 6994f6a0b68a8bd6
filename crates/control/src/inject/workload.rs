//! Where a Kubernetes object keeps its pods: a Pod is one, a workload has a
//! pod template, a List holds objects. Other kinds pass through untouched.

use serde_json::Value;

use super::{InjectError, Outcome, Settings, inject_pod};

/// Injects every pod `object` holds, in place; one outcome per pod template.
pub fn inject_object(object: &mut Value, settings: &Settings) -> Result<Vec<Outcome>, InjectError> {
    let kind = object
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let name = object
        .pointer("/metadata/name")
        .or_else(|| object.pointer("/metadata/generateName"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .trim_end_matches('-')
        .to_owned();
    let describe = || format!("{kind} {name}");
    let template = match kind.as_str() {
        "List" => return list(object, settings),
        "Pod" => None,
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "ReplicationController"
        | "DeploymentConfig"
        | "Job" => Some("/spec/template"),
        "CronJob" => Some("/spec/jobTemplate/spec/template"),
        _ => return Ok(Vec::new()),
    };
    let pod = match template {
        None => Some(object),
        Some(path) => object.pointer_mut(path),
    };
    let Some(pod) = pod.filter(|p| p.is_object()) else {
        return Err(InjectError::Malformed {
            field: template
                .unwrap_or("/")
                .trim_start_matches('/')
                .replace('/', "."),
            reason: "has no pod template".into(),
        }
        .at(&describe()));
    };
    let mut metadata = pod
        .get_mut("metadata")
        .map(Value::take)
        .unwrap_or(Value::Null);
    let mut spec = pod.get_mut("spec").map(Value::take).unwrap_or(Value::Null);
    let outcome = if spec.is_object() {
        inject_pod(&mut metadata, &mut spec, &name, settings).map_err(|e| e.at(&describe()))
    } else {
        Err(InjectError::Malformed {
            field: "spec".into(),
            reason: "the pod has no spec".into(),
        }
        .at(&describe()))
    };
    if !metadata.is_null() {
        pod["metadata"] = metadata;
    }
    pod["spec"] = spec;
    Ok(vec![outcome?])
}

fn list(object: &mut Value, settings: &Settings) -> Result<Vec<Outcome>, InjectError> {
    let mut outcomes = Vec::new();
    if let Some(items) = object.get_mut("items").and_then(Value::as_array_mut) {
        for item in items {
            outcomes.extend(inject_object(item, settings)?);
        }
    }
    Ok(outcomes)
}

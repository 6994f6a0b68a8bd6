//! Reading the manifests `oxmesh up` runs and writing the control plane's view
//! of them: documents validated first (so a bad manifest stops `up` with its
//! reason), split into JSON values; the config file the control plane watches,
//! and the edits made to it while the mesh runs.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::cluster::UpError;
use crate::plan::{Plan, PodId};

/// The manifest files directly in `dir` (not subdirectories, never
/// dot-directories).
pub fn files_in(dir: &Path) -> Result<Vec<PathBuf>, UpError> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(|source| UpError::Read {
            path: dir.to_owned(),
            source,
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// What `istioctl analyze` would say of `files`, warnings and errors, one line
/// each: shown when the mesh starts and after each apply, so a dangling subset
/// is seen before traffic fails on it.
pub fn findings(files: &[PathBuf]) -> Vec<String> {
    use oxmesh_config::analysis::{self, Level};
    let loaded = oxmesh_config::load::load_paths(files);
    analysis::analyze(&loaded.objects, &loaded.diagnostics, &Default::default())
        .iter()
        .filter(|m| m.level() != Level::Info)
        .map(ToString::to_string)
        .collect()
}

/// The documents of `files` (files or directories, as `oxmesh validate` takes
/// them), checked as `oxmesh validate` checks them: any error refuses them all.
pub fn read_files(files: &[PathBuf]) -> Result<Vec<(String, Value)>, UpError> {
    let loaded = oxmesh_config::load::load_paths(files);
    let errors = loaded.error_messages();
    if !errors.is_empty() {
        return Err(UpError::Invalid(errors.join("\n")));
    }
    let mut paths = Vec::new();
    for f in files {
        collect(f, &mut paths);
    }
    let mut documents = Vec::new();
    for file in &paths {
        let text = fs::read_to_string(file).map_err(|source| UpError::Read {
            path: file.clone(),
            source,
        })?;
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        for chunk in split_documents(&text) {
            let value: Value = serde_saphyr::from_str(chunk)
                .map_err(|e| UpError::Invalid(format!("{name}: {e}")))?;
            if value.is_object() {
                documents.push((name.clone(), value));
            }
        }
    }
    Ok(documents)
}

fn collect(path: &Path, out: &mut Vec<PathBuf>) {
    if !path.is_dir() {
        out.push(path.to_owned());
        return;
    }
    let mut entries: Vec<PathBuf> = fs::read_dir(path)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for e in entries {
        let yaml = e
            .extension()
            .and_then(|x| x.to_str())
            .is_some_and(|x| matches!(x, "yaml" | "yml" | "json"));
        if e.is_dir() || yaml {
            collect(&e, out);
        }
    }
}

/// A YAML stream's documents (split at `---` lines).
pub fn split_documents(text: &str) -> Vec<&str> {
    let mut docs = Vec::new();
    let mut start = 0;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        if line.trim_end() == "---" || line.starts_with("--- ") {
            docs.push(&text[start..offset]);
            start = offset + line.len();
        }
        offset += line.len();
    }
    docs.push(&text[start..]);
    docs.into_iter().filter(|d| !d.trim().is_empty()).collect()
}

/// The control plane's config: every document, as JSON.
pub fn write_config(path: &Path, plan: &Plan) -> Result<(), UpError> {
    let docs: Vec<String> = plan
        .control_plane_config
        .iter()
        .map(Value::to_string)
        .collect();
    replace(path, &docs)
}

/// Rewrites a pod's Ready condition in the control plane's config.
pub fn set_pod_ready(path: &Path, pod: &PodId, ready: bool) -> Result<(), UpError> {
    edit_pods(path, std::slice::from_ref(pod), |v| {
        let status = if ready { "True" } else { "False" };
        v["status"]["conditions"] = json!([{"type": "Ready", "status": status}]);
    })
}

/// Writes (or removes) the annotation saying pods are enrolled in ambient
/// mode in the control plane's config, as Istio's CNI agent annotates them;
/// one edit for them all.
pub fn set_pods_ambient(path: &Path, pods: &[PodId], ambient: bool) -> Result<(), UpError> {
    use crate::plan::REDIRECTION_ANNOTATION;
    if pods.is_empty() {
        return Ok(());
    }
    edit_pods(path, pods, |v| {
        let annotations = &mut v["metadata"]["annotations"];
        if !annotations.is_object() {
            *annotations = json!({});
        }
        if let Some(map) = annotations.as_object_mut() {
            if ambient {
                map.insert(REDIRECTION_ANNOTATION.into(), json!("enabled"));
            } else {
                map.remove(REDIRECTION_ANNOTATION);
            }
        }
    })
}

/// Changes the objects of `pods` in the control plane's config.
fn edit_pods(
    path: &Path,
    pods: &[PodId],
    mut change: impl FnMut(&mut Value),
) -> Result<(), UpError> {
    edit(path, |docs| {
        let ours = |v: &Value| {
            v["kind"] == "Pod"
                && pods.iter().any(|pod| {
                    v["metadata"]["name"] == pod.name.as_str()
                        && v["metadata"]["namespace"] == pod.namespace.as_str()
                })
        };
        docs.iter_mut().filter(|v| ours(v)).for_each(&mut change);
    })
}

/// Reads, changes and replaces the control plane's config under an exclusive
/// lock: `up` and `oxmesh apply` both edit it, and neither may lose the
/// other's change.
pub fn edit(path: &Path, change: impl FnOnce(&mut Vec<Value>)) -> Result<(), UpError> {
    let lock_path = path.with_extension("lock");
    let lock = File::create(&lock_path).map_err(|source| UpError::Write {
        path: lock_path.clone(),
        source,
    })?;
    lock.lock().map_err(|source| UpError::Write {
        path: lock_path,
        source,
    })?;
    let text = fs::read_to_string(path).map_err(|source| UpError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut docs: Vec<Value> = text
        .split(SEPARATOR)
        .filter_map(|chunk| serde_json::from_str(chunk).ok())
        .collect();
    change(&mut docs);
    let text: Vec<String> = docs.iter().map(Value::to_string).collect();
    replace(path, &text)
    // The lock goes with `lock`.
}

/// How documents are separated in the control plane's config.
pub const SEPARATOR: &str = "\n---\n";

/// Writes `docs` to `path` in one step (a new file renamed over the old), so
/// the control plane never reads half a file.
pub fn replace(path: &Path, docs: &[String]) -> Result<(), UpError> {
    let temporary = path.with_extension("yaml.new");
    fs::write(&temporary, docs.join(SEPARATOR)).map_err(|source| UpError::Write {
        path: temporary.clone(),
        source,
    })?;
    fs::rename(&temporary, path).map_err(|source| UpError::Write {
        path: path.to_owned(),
        source,
    })
}

/// A document's identity: kind, namespace (`default` when unsaid), name.
pub fn key(v: &Value) -> (String, String, String) {
    let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let namespace = v["metadata"]["namespace"].as_str().unwrap_or("default");
    (
        s(&v["kind"]),
        namespace.to_owned(),
        s(&v["metadata"]["name"]),
    )
}

/// Edits the control plane's config in one step: documents whose key is in
/// `remove` go, `add` replace those with their keys or join at the end.
pub fn edit_config(
    path: &Path,
    remove: &[(String, String, String)],
    add: &[Value],
) -> Result<(), UpError> {
    let added: Vec<(String, String, String)> = add.iter().map(key).collect();
    edit(path, |docs| {
        docs.retain(|v| {
            let k = key(v);
            !remove.contains(&k) && !added.contains(&k)
        });
        docs.extend(add.iter().cloned());
    })
}

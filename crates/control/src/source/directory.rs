//! A directory of YAML/JSON files, watched. Files are re-read when their size or
//! modification time changes, so an edit reaches proxies within a second. A file
//! whose new content is refused keeps its last good objects serving.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use oxmesh_config::decode::Sourced;
use oxmesh_config::load::load_bytes;
use oxmesh_config::{Diagnostic, ObjectRef};
use tokio::sync::watch;

use super::{FindingsLog, Snapshot, trim};

/// How often the directory is looked at.
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);

const EXTENSIONS: &[&str] = &["yaml", "yml", "json"];

/// What is known about one file.
struct FileState {
    stamp: (Option<SystemTime>, u64),
    /// The objects that serve from this file: the valid ones of its latest content,
    /// plus the last good version of any that its latest content breaks.
    objects: Vec<Sourced>,
    diagnostics: Vec<Diagnostic>,
}

pub struct DirectorySource {
    root: PathBuf,
    files: BTreeMap<PathBuf, FileState>,
    generation: u64,
}

impl DirectorySource {
    pub fn new(root: PathBuf) -> Self {
        Self {
            root,
            files: BTreeMap::new(),
            generation: 0,
        }
    }

    /// Reads the directory once; `Some(snapshot)` when anything changed.
    pub fn scan(&mut self) -> Option<Snapshot> {
        let mut found = BTreeMap::new();
        walk(&self.root, &mut found);
        let mut changed = self.files.keys().any(|path| !found.contains_key(path));
        self.files.retain(|path, _| found.contains_key(path));
        for (path, stamp) in found {
            if self.files.get(&path).is_some_and(|f| f.stamp == stamp) {
                continue;
            }
            changed = true;
            let previous = self
                .files
                .remove(&path)
                .map(|f| f.objects)
                .unwrap_or_default();
            self.files
                .insert(path.clone(), read(&path, stamp, previous));
        }
        if !changed && self.generation > 0 {
            return None;
        }
        self.generation += 1;
        let objects: Vec<Sourced> = self
            .files
            .values()
            .flat_map(|f| f.objects.iter().cloned())
            .collect();
        let diagnostics = self
            .files
            .values()
            .flat_map(|f| f.diagnostics.iter().cloned())
            .collect();
        Some(Snapshot::new(&objects, diagnostics, self.generation))
    }

    /// Scans every `POLL_INTERVAL` on a thread of its own and publishes each new
    /// snapshot; the thread ends once nobody watches. One long-lived thread, not
    /// a blocking task per scan: parsing a large file allocates a lot, and
    /// glibc keeps what one thread freed for that thread.
    pub fn watch(mut self) -> (watch::Receiver<Arc<Snapshot>>, std::thread::JoinHandle<()>) {
        let first = self.scan().unwrap_or_default();
        let mut findings = FindingsLog::default();
        findings.log(&first);
        let (sender, receiver) = watch::channel(Arc::new(first));
        let thread = std::thread::Builder::new()
            .name("oxmesh-config-dir".to_owned())
            .spawn(move || {
                while !sender.is_closed() {
                    std::thread::sleep(POLL_INTERVAL);
                    if let Some(snapshot) = self.scan() {
                        findings.log(&snapshot);
                        if sender.send(Arc::new(snapshot)).is_err() {
                            return;
                        }
                    }
                }
            });
        let thread = match thread {
            Ok(thread) => thread,
            // Without a thread the directory is read once: still serving, not following.
            Err(e) => {
                tracing::error!(error = %e, "cannot start the config directory watcher; changes will not be seen");
                std::thread::spawn(|| {})
            }
        };
        (receiver, thread)
    }
}

fn walk(dir: &Path, found: &mut BTreeMap<PathBuf, (Option<SystemTime>, u64)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            walk(&path, found);
        } else if path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| EXTENSIONS.contains(&e))
        {
            found.insert(path, (meta.modified().ok(), meta.len()));
        }
    }
}

/// Reads one file; objects its new content breaks keep their `previous` version.
fn read(path: &Path, stamp: (Option<SystemTime>, u64), previous: Vec<Sourced>) -> FileState {
    let loaded = match std::fs::read(path) {
        Ok(bytes) => load_bytes(path, &bytes),
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "cannot read config file; its last good objects keep serving");
            return FileState {
                stamp,
                objects: previous,
                diagnostics: Vec::new(),
            };
        }
    };
    let valid: HashSet<ObjectRef> = loaded
        .objects
        .iter()
        .map(|s| s.object.reference())
        .collect();
    let errors: Vec<&Diagnostic> = loaded.diagnostics.iter().filter(|d| d.is_error()).collect();
    // A document too broken to name its object may have been any of them.
    let unknown_broken = errors.iter().any(|d| d.object.is_none());
    let broken: HashSet<&ObjectRef> = errors.iter().filter_map(|d| d.object.as_ref()).collect();
    let mut objects = loaded.objects;
    for sourced in &mut objects {
        trim(sourced);
    }
    for old in previous {
        let reference = old.object.reference();
        let keep = !valid.contains(&reference) && (unknown_broken || broken.contains(&reference));
        if keep {
            tracing::warn!(object = %reference, file = %path.display(), "refused a new version; the last good one keeps serving");
            objects.push(old);
        }
    }
    FileState {
        stamp,
        objects,
        diagnostics: loaded.diagnostics,
    }
}

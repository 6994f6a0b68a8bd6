//! The objects the watches have delivered, kind by kind, as the mesh reads them.
//! A watch's re-list (`Init` … `InitDone`) replaces its kind's objects at once,
//! so objects deleted while the API server was out of reach go too. An object
//! whose new version is refused keeps its last good version serving.

use std::collections::BTreeMap;
use std::path::PathBuf;

use kube::api::DynamicObject;
use kube::core::{ApiResource, TypeMeta};
use kube::runtime::watcher::Event;
use oxmesh_config::Diagnostic;
use oxmesh_config::decode::Sourced;
use oxmesh_config::kind::Kind;
use oxmesh_config::load::load_bytes;

use crate::source::{Snapshot, trim};

/// (namespace, name); the namespace is empty for cluster-scoped kinds.
type Key = (String, String);

#[derive(Clone, Default)]
struct Entry {
    serving: Option<Sourced>,
    diagnostics: Vec<Diagnostic>,
}

#[derive(Default)]
struct KindStore {
    objects: BTreeMap<Key, Entry>,
    /// A re-list in progress: filled by `InitApply`, swapped in at `InitDone`.
    relisting: Option<BTreeMap<Key, Entry>>,
    synced: bool,
}

#[derive(Default)]
pub struct Store {
    kinds: BTreeMap<Kind, KindStore>,
    generation: u64,
}

impl Store {
    /// Starts expecting `kind`: the first snapshot waits until it has listed.
    pub fn expect(&mut self, kind: Kind) {
        self.kinds.entry(kind).or_default();
    }

    /// Whether every expected kind has listed once.
    pub fn synced(&self) -> bool {
        self.kinds.values().all(|k| k.synced)
    }

    /// The kinds still waiting for their first list.
    pub fn unsynced(&self) -> Vec<Kind> {
        self.kinds
            .iter()
            .filter(|(_, k)| !k.synced)
            .map(|(kind, _)| *kind)
            .collect()
    }

    pub fn apply(&mut self, kind: Kind, resource: &ApiResource, event: Event<DynamicObject>) {
        let store = self.kinds.entry(kind).or_default();
        match event {
            Event::Init => store.relisting = Some(BTreeMap::new()),
            Event::InitApply(object) => {
                let (key, entry) = read(resource, object, &store.objects);
                store.relisting.get_or_insert_default().insert(key, entry);
            }
            Event::InitDone => {
                store.objects = store.relisting.take().unwrap_or_default();
                store.synced = true;
            }
            Event::Apply(object) => {
                let (key, entry) = read(resource, object, &store.objects);
                store.objects.insert(key, entry);
            }
            Event::Delete(object) => {
                store.objects.remove(&key_of(&object));
            }
        }
    }

    /// Everything that serves now, as one snapshot.
    pub fn snapshot(&mut self) -> Snapshot {
        self.generation += 1;
        let entries = self.kinds.values().flat_map(|k| k.objects.values());
        let mut objects = Vec::new();
        let mut diagnostics = Vec::new();
        for entry in entries {
            objects.extend(entry.serving.iter().cloned());
            diagnostics.extend(entry.diagnostics.iter().cloned());
        }
        Snapshot::new(&objects, diagnostics, self.generation)
    }
}

fn key_of(object: &DynamicObject) -> Key {
    (
        object.metadata.namespace.clone().unwrap_or_default(),
        object.metadata.name.clone().unwrap_or_default(),
    )
}

/// Where an object lives in the API, which is where its findings point.
fn origin(resource: &ApiResource, (namespace, name): &Key) -> PathBuf {
    let group = if resource.group.is_empty() {
        format!("/api/{}", resource.version)
    } else {
        format!("/apis/{}", resource.api_version)
    };
    let scope = if namespace.is_empty() {
        String::new()
    } else {
        format!("/namespaces/{namespace}")
    };
    PathBuf::from(format!(
        "kubernetes:{group}{scope}/{}/{name}",
        resource.plural
    ))
}

/// Reads one object as the mesh does. Refused, it keeps its `previous` good
/// version with the refusal beside it.
fn read(
    resource: &ApiResource,
    mut object: DynamicObject,
    previous: &BTreeMap<Key, Entry>,
) -> (Key, Entry) {
    let key = key_of(&object);
    // List items come without apiVersion and kind; the watch knows them.
    object.types = Some(TypeMeta {
        api_version: resource.api_version.clone(),
        kind: resource.kind.clone(),
    });
    object.metadata.managed_fields = None;
    let origin = origin(resource, &key);
    let loaded = match serde_json::to_vec(&object) {
        Ok(bytes) => load_bytes(&origin, &bytes),
        Err(e) => {
            tracing::warn!(object = %origin.display(), error = %e, "cannot re-encode an object from the API server");
            return (key.clone(), previous.get(&key).cloned().unwrap_or_default());
        }
    };
    let errors = loaded.has_errors();
    let mut fresh = loaded.objects.into_iter().find(|s| !s.rejected && !errors);
    let serving = match fresh.as_mut() {
        Some(sourced) => {
            trim(sourced);
            fresh
        }
        None => {
            for d in loaded.diagnostics.iter().filter(|d| d.is_error()) {
                tracing::warn!("{d}; the last good version keeps serving");
            }
            previous.get(&key).and_then(|e| e.serving.clone())
        }
    };
    let entry = Entry {
        serving,
        diagnostics: loaded.diagnostics,
    };
    (key, entry)
}

//! Where the control plane's config comes from. Every source yields snapshots of
//! valid objects; sources merge (a later source's object replaces an earlier one of
//! the same kind, namespace and name); every object remembers its origin.

pub mod directory;
pub mod kubernetes;

use std::sync::Arc;

use oxmesh_config::analysis::{self, Message};
use oxmesh_config::decode::Sourced;
use oxmesh_config::kind::Kind;
use oxmesh_config::node::{Node, Value};
use oxmesh_config::{Diagnostic, Object};

/// One consistent view of a source: the objects that serve, and what is wrong.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Valid objects, in the order applying them would leave them (later wins).
    pub objects: Vec<Arc<Object>>,
    /// Problems with the input. An object whose new version is refused keeps its
    /// last good version among `objects`, and its refusal stays here.
    pub diagnostics: Vec<Diagnostic>,
    /// The analyzers' findings over `objects`.
    pub analysis: Vec<Message>,
    /// Increases with every change.
    pub generation: u64,
}

impl Snapshot {
    pub fn new(sourced: &[Sourced], diagnostics: Vec<Diagnostic>, generation: u64) -> Self {
        let analysis = analysis::analyze(sourced, &diagnostics, &Default::default());
        // Later definitions of the same object replace earlier ones, in place of
        // the last one, as applying them in order would leave them.
        let mut last = std::collections::HashMap::new();
        for (i, s) in sourced.iter().enumerate() {
            last.insert(s.object.reference(), i);
        }
        let objects: Vec<Arc<Object>> = sourced
            .iter()
            .enumerate()
            .filter(|(i, s)| last.get(&s.object.reference()) == Some(i))
            .map(|(_, s)| s.object.clone())
            .collect();
        Self {
            objects,
            diagnostics,
            analysis,
            generation,
        }
    }
}

/// Drops the field-by-field line map of kinds that come by the thousand and whose
/// findings are reported at the object (pods, endpoint slices): it is most of
/// their memory. Findings about them keep the object's first line.
fn trim(sourced: &mut Sourced) {
    if matches!(
        sourced.object.kind,
        Kind::Pod | Kind::EndpointSlice | Kind::Endpoints | Kind::ReplicaSet | Kind::Node
    ) {
        sourced.tree = Node {
            line: sourced.tree.line,
            value: Value::Null,
        };
    }
}

/// Logs what is wrong with the config once, when it first shows, not again
/// with every snapshot that still holds it.
#[derive(Default)]
struct FindingsLog {
    logged: std::collections::HashSet<String>,
}

impl FindingsLog {
    fn log(&mut self, snapshot: &Snapshot) {
        let mut now = std::collections::HashSet::new();
        for d in snapshot.diagnostics.iter().filter(|d| d.is_error()) {
            let text = d.to_string();
            if !self.logged.contains(&text) {
                tracing::warn!(generation = snapshot.generation, "{text}");
            }
            now.insert(text);
        }
        for message in &snapshot.analysis {
            let text = message.to_string();
            if !self.logged.contains(&text) {
                tracing::info!(generation = snapshot.generation, "{text}");
            }
            now.insert(text);
        }
        self.logged = now;
    }
}

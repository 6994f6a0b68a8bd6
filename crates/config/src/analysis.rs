//! Cross-object analysis, as `istioctl analyze` does it, with Istio's message codes:
//! mistakes no single object shows, such as a route to a subset nobody defined.
//!
//! `oxmesh analyze` reports these together with `oxmesh validate`'s findings
//! (schema errors as IST0106, warnings as IST0133, unreachable rules as IST0130/0131).

mod codes;
mod destination_rules;
mod gateways;
mod mesh;
mod namespaces;
mod policies;
mod ports;
mod sidecars;
mod suppress;
mod virtual_services;

use std::fmt;

use crate::decode::Sourced;
use crate::diagnostic::{Diagnostic, ObjectRef, Origin, Severity};
use crate::path::FieldPath;

pub use codes::{Code, Level};
pub use suppress::{Suppression, SuppressionError};

/// One finding of the analysis.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub code: Code,
    pub object: Option<ObjectRef>,
    /// The file and line the message is about, when the object came from a file.
    pub origin: Option<Origin>,
    pub text: String,
}

impl Message {
    pub fn level(&self) -> Level {
        self.code.level()
    }
}

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} [{}]", self.level(), self.code.id())?;
        match (&self.object, &self.origin) {
            (Some(object), Some(origin)) => write!(f, " ({object} {origin})")?,
            (Some(object), None) => write!(f, " ({object})")?,
            _ => {}
        }
        write!(f, " {}", self.text)
    }
}

/// Settings the analysis needs from the mesh's configuration.
#[derive(Clone, Debug)]
pub struct Options {
    /// The cluster DNS domain: `reviews` is `reviews.<ns>.svc.<domain>`.
    pub domain: String,
    /// The mesh root namespace (policies there apply mesh-wide).
    pub root_namespace: String,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            domain: "cluster.local".to_owned(),
            root_namespace: "istio-system".to_owned(),
        }
    }
}

/// Collects messages, placing each on the line of the field it is about.
pub(crate) struct Sink {
    messages: Vec<Message>,
}

impl Sink {
    fn new() -> Self {
        Self {
            messages: Vec::new(),
        }
    }

    /// A message about `at` in `sourced` (the object's first line when `at` is root).
    pub(crate) fn report(&mut self, code: Code, sourced: &Sourced, at: &FieldPath, text: String) {
        let line = sourced.tree.line_of(at);
        self.messages.push(Message {
            code,
            object: Some(sourced.object.reference()),
            origin: Some(sourced.object.origin.at_line(line)),
            text,
        });
    }
}

/// Runs every analyzer over `objects` (the valid ones), and turns the loading and
/// validation `diagnostics` that concern an object into messages. Sorted as
/// istioctl sorts them, duplicates dropped.
pub fn analyze(objects: &[Sourced], diagnostics: &[Diagnostic], options: &Options) -> Vec<Message> {
    let applied = as_applied(objects);
    let mesh = mesh::Mesh::new(&applied, options);
    let mut sink = Sink::new();
    virtual_services::analyze(&mesh, &mut sink);
    destination_rules::analyze(&mesh, &mut sink);
    gateways::analyze(&mesh, &mut sink);
    sidecars::analyze(&mesh, &mut sink);
    policies::analyze(&mesh, &mut sink);
    namespaces::analyze(&mesh, &mut sink);
    ports::analyze(&mesh, &mut sink);
    let mut messages = sink.messages;
    messages.extend(diagnostics.iter().filter_map(from_diagnostic));
    messages.sort_by(|a, b| {
        (a.level(), a.code.id(), &a.object, &a.origin, &a.text).cmp(&(
            b.level(),
            b.code.id(),
            &b.object,
            &b.origin,
            &b.text,
        ))
    });
    messages.dedup();
    messages
}

/// The objects as applying every input in order would leave them: a later definition
/// of the same kind, namespace and name replaces an earlier one.
fn as_applied(objects: &[Sourced]) -> Vec<&Sourced> {
    let mut last = std::collections::HashMap::new();
    for (i, sourced) in objects.iter().enumerate() {
        last.insert(sourced.object.reference(), i);
    }
    let mut kept: Vec<usize> = last.into_values().collect();
    kept.sort_unstable();
    kept.into_iter().map(|i| &objects[i]).collect()
}

/// A validation finding about an object, under its analysis code.
fn from_diagnostic(d: &Diagnostic) -> Option<Message> {
    let object = d.object.clone()?;
    let field = if d.path.is_root() {
        String::new()
    } else {
        format!("{}: ", d.path)
    };
    let (code, text) = match (d.code, d.severity) {
        (Some(id), _) => {
            let code = Code::from_id(id)?;
            (code, istio_sentence(&d.message))
        }
        (None, Severity::Error) => (
            Code::SchemaValidationError,
            format!("Schema validation error: {field}{}", d.message),
        ),
        (None, Severity::Warning) => (
            Code::SchemaValidationWarning,
            format!("Schema validation warning: {field}{}", d.message),
        ),
        (None, Severity::Info) => return None,
    };
    Some(Message {
        code,
        object: Some(object),
        origin: Some(d.origin.clone()),
        text,
    })
}

/// Istio's validation says "virtualService rule #1 not used (...)"; its analyzer
/// says "VirtualService rule #1 not used (...)."
fn istio_sentence(message: &str) -> String {
    let mut text = message.replacen("virtualService", "VirtualService", 1);
    if !text.ends_with('.') {
        text.push('.');
    }
    text
}

//! Reading files and directories into checked objects.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::decode::{self, Sourced};
use crate::diagnostic::{Diagnostic, Finding, ObjectRef, Origin, Severity};
use crate::document::{self, Parsed};
use crate::path::FieldPath;
use crate::validation;

/// Everything read from the inputs: the objects that passed, and every finding.
#[derive(Debug, Default)]
pub struct Loaded {
    pub objects: Vec<Sourced>,
    pub diagnostics: Vec<Diagnostic>,
}

impl Loaded {
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }

    /// Every error, as `oxmesh validate` prints it (file, object, field, message).
    pub fn error_messages(&self) -> Vec<String> {
        self.diagnostics
            .iter()
            .filter(|d| d.is_error())
            .map(ToString::to_string)
            .collect()
    }

    fn diagnose(&mut self, severity: Severity, origin: Origin, message: impl Into<String>) {
        self.diagnostics.push(Diagnostic {
            severity,
            origin,
            object: None,
            path: FieldPath::root(),
            message: message.into(),
            code: None,
        });
    }
}

/// The file extensions read when walking a directory, as `kubectl apply -R` does.
const EXTENSIONS: &[&str] = &["yaml", "yml", "json"];

/// Loads, decodes and validates every object in `paths` (files or directories,
/// walked recursively). Objects with errors are reported and left out.
pub fn load_paths(paths: &[PathBuf]) -> Loaded {
    let mut loaded = Loaded::default();
    let mut duplicates = Duplicates::default();
    for path in paths {
        let mut files = Vec::new();
        if let Err(message) = collect(path, &mut files, &mut HashSet::new()) {
            loaded.diagnose(
                Severity::Error,
                Origin::new(path.as_path().into(), None),
                message,
            );
            continue;
        }
        for file in files {
            load_file(&file, &mut loaded, &mut duplicates);
        }
    }
    loaded
}

/// Loads one in-memory file (stdin, tests, fuzzing) as if read from `name`.
pub fn load_bytes(name: &Path, bytes: &[u8]) -> Loaded {
    let mut loaded = Loaded::default();
    load_text(
        Arc::from(name),
        bytes,
        &mut loaded,
        &mut Duplicates::default(),
    );
    loaded
}

fn collect(
    path: &Path,
    files: &mut Vec<PathBuf>,
    seen: &mut HashSet<PathBuf>,
) -> Result<(), String> {
    let meta = fs::metadata(path).map_err(|e| format!("cannot read: {e}"))?;
    if !meta.is_dir() {
        files.push(path.to_path_buf());
        return Ok(());
    }
    // A symlink cycle would otherwise walk forever.
    let real = fs::canonicalize(path).map_err(|e| format!("cannot read: {e}"))?;
    if !seen.insert(real) {
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = fs::read_dir(path)
        .map_err(|e| format!("cannot read directory: {e}"))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for entry in entries {
        let name = entry
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name.starts_with('.') {
            continue;
        }
        if entry.is_dir() {
            collect(&entry, files, seen)?;
        } else if entry
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| EXTENSIONS.contains(&e))
        {
            files.push(entry);
        }
    }
    Ok(())
}

fn load_file(file: &Path, loaded: &mut Loaded, duplicates: &mut Duplicates) {
    let name: Arc<Path> = Arc::from(file);
    match fs::read(file) {
        Ok(bytes) => load_text(name, &bytes, loaded, duplicates),
        Err(e) => loaded.diagnose(
            Severity::Error,
            Origin::new(name, None),
            format!("cannot read: {e}"),
        ),
    }
}

fn load_text(file: Arc<Path>, bytes: &[u8], loaded: &mut Loaded, duplicates: &mut Duplicates) {
    let origin = Origin::new(file, None);
    let text = match document::as_text(bytes) {
        Ok(text) => text,
        Err(e) => return loaded.diagnose(Severity::Error, origin, e.to_string()),
    };
    let mut documents = 0;
    for parsed in document::parse_stream(text) {
        match parsed {
            Parsed::Empty => {}
            Parsed::Malformed { line, message } => {
                documents += 1;
                loaded.diagnose(Severity::Error, origin.at_line(line), message);
            }
            Parsed::Document(tree) => {
                documents += 1;
                load_document(tree, &origin, loaded, duplicates);
            }
        }
    }
    if documents == 0 {
        loaded.diagnose(Severity::Error, origin, "empty file: no objects in it");
    }
}

fn load_document(
    tree: crate::node::Node,
    origin: &Origin,
    loaded: &mut Loaded,
    duplicates: &mut Duplicates,
) {
    let decoded = decode::decode(tree, origin);
    for located in decoded.findings {
        loaded
            .diagnostics
            .push(place(origin, located.line, located.object, located.finding));
    }
    for sourced in decoded.objects {
        let object = &sourced.object;
        let findings = validation::validate(object);
        let failed = sourced.rejected || findings.iter().any(|f| f.severity == Severity::Error);
        for finding in findings {
            let line = sourced.tree.line_of(&finding.path);
            loaded
                .diagnostics
                .push(place(origin, line, Some(object.reference()), finding));
        }
        if let Some(diagnostic) = duplicates.check(&sourced) {
            loaded.diagnostics.push(diagnostic);
        }
        if !failed {
            loaded.objects.push(sourced);
        }
    }
}

fn place(origin: &Origin, line: u32, object: Option<ObjectRef>, finding: Finding) -> Diagnostic {
    Diagnostic {
        severity: finding.severity,
        origin: origin.at_line(line),
        object,
        path: finding.path,
        message: finding.message,
        code: finding.code,
    }
}

/// Tracks where each object was first defined in the file being read. Two
/// definitions in one file are an error; across files the later one replaces the
/// earlier, as `kubectl apply` would, which is how sample directories are laid out.
#[derive(Default)]
struct Duplicates {
    first: HashMap<ObjectRef, Origin>,
}

impl Duplicates {
    fn check(&mut self, sourced: &Sourced) -> Option<Diagnostic> {
        let object = &sourced.object;
        let reference = object.reference();
        match self.first.get(&reference) {
            Some(earlier) if earlier.file == object.origin.file => Some(Diagnostic {
                severity: Severity::Error,
                origin: object.origin.clone(),
                object: Some(reference),
                path: FieldPath::root(),
                message: format!("duplicate object: already defined at {earlier}"),
                code: None,
            }),
            _ => {
                self.first.insert(reference, object.origin.clone());
                None
            }
        }
    }
}

//! Istio's own validation corpus (`../shared/conformance/istio`), document by
//! document: every `*-valid.yaml` document passes, every `*-invalid.yaml` document
//! fails with an error that means what its `_err:` line says.

use std::path::{Path, PathBuf};

use oxmesh_config::load::load_bytes;
use oxmesh_config::{Diagnostic, Severity};

fn conformance_dir() -> PathBuf {
    std::env::var_os("OXMESH_CONFORMANCE_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/conformance/istio"),
        PathBuf::from,
    )
}

/// One test document and the error Istio expects for it, if any.
struct Case {
    file: String,
    line: usize,
    expected: Option<String>,
    text: String,
}

fn cases(suffix: &str) -> Vec<Case> {
    let dir = conformance_dir().join("validation");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no *{suffix} in {}", dir.display());
    let mut cases = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("readable test file");
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut start = 1;
        let mut current: Vec<&str> = Vec::new();
        for (i, line) in text.lines().chain(std::iter::once("---")).enumerate() {
            if line.starts_with("---") {
                push_case(&mut cases, &name, start, &current);
                current.clear();
                start = i + 2;
            } else {
                current.push(line);
            }
        }
    }
    cases
}

fn push_case(cases: &mut Vec<Case>, file: &str, line: usize, lines: &[&str]) {
    let mut expected = None;
    let mut body = Vec::new();
    for l in lines {
        match l.strip_prefix("_err:") {
            Some(err) => {
                expected = Some(
                    err.trim()
                        .trim_matches(|c| c == '\'' || c == '"')
                        .to_owned(),
                )
            }
            None => body.push(*l),
        }
    }
    let text = body.join("\n");
    let has_content = text
        .lines()
        .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'));
    if has_content {
        cases.push(Case {
            file: file.to_owned(),
            line,
            expected,
            text,
        });
    }
}

fn errors(case: &Case) -> Vec<Diagnostic> {
    load_bytes(Path::new(&case.file), case.text.as_bytes())
        .diagnostics
        .into_iter()
        .filter(|d| d.severity == Severity::Error)
        .collect()
}

/// What an `_err` line names: a field (as a path prefix when it starts at `spec`,
/// else as the end of a path) and/or the words of a message.
enum Expected {
    Field { path: String, rooted: bool },
    Message(String),
}

fn expectation(err: &str) -> Expected {
    let token_end = err.find([':', ' ']).unwrap_or(err.len());
    let token = &err[..token_end];
    let rest = &err[token_end..];
    let names_field = !token.is_empty()
        && token
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._[]".contains(c))
        && (rest.starts_with(':') || rest.starts_with(" in body"));
    if names_field {
        return Expected::Field {
            path: token.to_owned(),
            rooted: token.starts_with("spec"),
        };
    }
    Expected::Message(err.to_lowercase())
}

/// An error "means" `_err` when it is about the field `_err` names, or, when `_err`
/// names none, when it says the same words.
fn means(diagnostic: &Diagnostic, err: &str) -> bool {
    let path = diagnostic.path.to_string();
    match expectation(err) {
        Expected::Field {
            path: expected,
            rooted: true,
        } => path.starts_with(&expected),
        Expected::Field {
            path: expected,
            rooted: false,
        } => path.ends_with(&expected),
        Expected::Message(words) => diagnostic.to_string().to_lowercase().contains(&words),
    }
}

#[test]
fn valid_documents_pass() {
    let mut failures = Vec::new();
    let all = cases("-valid.yaml");
    for case in &all {
        let errors = errors(case);
        if !errors.is_empty() {
            let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
            failures.push(format!(
                "{}:{}:\n    {}",
                case.file,
                case.line,
                lines.join("\n    ")
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} valid documents fail:\n{}",
        failures.len(),
        all.len(),
        failures.join("\n")
    );
}

#[test]
fn invalid_documents_fail_for_the_stated_reason() {
    let mut failures = Vec::new();
    let all = cases("-invalid.yaml");
    for case in &all {
        let Some(expected) = &case.expected else {
            continue;
        };
        let errors = errors(case);
        if !errors.iter().any(|d| means(d, expected)) {
            let got: Vec<String> = errors.iter().map(ToString::to_string).collect();
            failures.push(format!(
                "{}:{}: expected {expected:?}, got:\n    {}",
                case.file,
                case.line,
                if got.is_empty() {
                    "no error".to_owned()
                } else {
                    got.join("\n    ")
                }
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} invalid documents not refused as Istio refuses them:\n{}",
        failures.len(),
        all.len(),
        failures.join("\n")
    );
}

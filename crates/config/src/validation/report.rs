//! Collects findings while an object is checked.

use crate::diagnostic::Finding;
use crate::path::FieldPath;
use crate::validation::syntax::Check;

pub struct Report {
    /// The namespace the object lives in (`exportTo: [.]` means this one).
    pub namespace: String,
    findings: Vec<Finding>,
}

impl Report {
    pub fn new(namespace: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            findings: Vec::new(),
        }
    }

    pub fn error(&mut self, at: &FieldPath, message: impl Into<String>) {
        self.findings.push(Finding::error(at.clone(), message));
    }

    pub fn warn(&mut self, at: &FieldPath, message: impl Into<String>) {
        self.findings.push(Finding::warning(at.clone(), message));
    }

    /// A warning that `oxmesh analyze` reports under an Istio analysis code.
    pub fn warn_coded(&mut self, at: &FieldPath, code: &'static str, message: impl Into<String>) {
        let mut finding = Finding::warning(at.clone(), message);
        finding.code = Some(code);
        self.findings.push(finding);
    }

    /// Records `check`'s error, if any, at `at`.
    pub fn check(&mut self, at: &FieldPath, check: Check) {
        if let Err(message) = check {
            self.error(at, message);
        }
    }

    pub fn has_errors(&self) -> bool {
        self.findings
            .iter()
            .any(|f| f.severity == crate::diagnostic::Severity::Error)
    }

    pub fn into_findings(self) -> Vec<Finding> {
        self.findings
    }
}

//! WasmPlugin rules.

use std::collections::HashSet;

use crate::path::FieldPath;
use crate::validation::Report;
use crate::validation::shared;
use crate::validation::syntax::Check;
use crate::wasm_plugin::{EnvValueSource, WasmPlugin};

const MIN_LENGTH: &str = "in body should be at least 1 chars long";

pub fn validate(w: &WasmPlugin, at: &FieldPath, report: &mut Report) {
    shared::policy_targets(
        w.selector.is_some(),
        w.target_ref.as_ref(),
        w.target_refs.as_ref(),
        at,
        report,
    );
    if let Some(selector) = &w.selector {
        shared::workload_selector(Some(selector), &at.field("selector"), report);
    }
    report.check(&at.field("url"), url(&w.url));
    if let Some(sha) = w.sha256.as_deref().filter(|s| !s.is_empty())
        && (sha.len() != 64
            || !sha
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
    {
        report.error(&at.field("sha256"), "in body should match '(^$|^[a-f0-9]{64}$)': sha256 field must be 64 lower-case hex characters");
    }
    for (field, value, max) in [
        ("imagePullSecret", &w.image_pull_secret, 253),
        ("pluginName", &w.plugin_name, 256),
    ] {
        match value.as_deref() {
            Some("") => report.error(&at.field(field), MIN_LENGTH),
            Some(v) if v.len() > max => report.error(
                &at.field(field),
                format!("{field} field must be at most {max} characters long"),
            ),
            _ => {}
        }
    }
    if let Some(vm) = &w.vm_config {
        let here = at.field("vmConfig").field("env");
        if vm.env.len() > 256 {
            report.error(&here, "must have at most 256 items");
        }
        let mut names = HashSet::new();
        for (i, env) in vm.env.iter().enumerate() {
            let env_at = here.index(i);
            if env.name.is_empty() {
                report.error(
                    &env_at.field("name"),
                    format!("{MIN_LENGTH}: spec.vmConfig.env invalid"),
                );
            } else if env.name.len() > 256 {
                report.error(
                    &env_at.field("name"),
                    "env.name field must be at most 256 characters long",
                );
            }
            if !names.insert(env.name.as_str()) {
                report.error(
                    &env_at.field("name"),
                    format!("Duplicate value: duplicate env {:?}", env.name),
                );
            }
            if env.value_from == Some(EnvValueSource::Host) && env.value.is_some() {
                report.error(
                    &env_at.field("value"),
                    "value may only be set when valueFrom is INLINE",
                );
            }
            if env.value.as_ref().is_some_and(|v| v.len() > 2048) {
                report.error(&env_at.field("value"), "must have at most 2048 characters");
            }
        }
    }
    for (i, selector) in w.matches.iter().enumerate() {
        let mut numbers = HashSet::new();
        for (j, port) in selector.ports.iter().enumerate() {
            let here = at
                .field("match")
                .index(i)
                .field("ports")
                .index(j)
                .field("number");
            if !(1..=65535).contains(&port.number) {
                report.error(
                    &here,
                    format!("port must be between 1-65535, got {}", port.number),
                );
            }
            if !numbers.insert(port.number) {
                report.error(&here, format!("Duplicate value: {}", port.number));
            }
        }
    }
}

/// An `http`, `https`, `oci` or `file` URL, or a path or host with no scheme.
fn url(url: &str) -> Check {
    if url.is_empty() {
        return Err(format!("{MIN_LENGTH}: url field needs to be set"));
    }
    let scheme = url
        .split_once("://")
        .map_or("", |(s, _)| s)
        .to_ascii_lowercase();
    let well_formed = scheme
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
        && !url.chars().any(char::is_whitespace)
        && percent_escapes_valid(url);
    if !well_formed || !matches!(scheme.as_str(), "" | "http" | "https" | "oci" | "file") {
        return Err(format!(
            "url must have schema one of [http, https, file, oci]: {url:?}"
        ));
    }
    Ok(())
}

fn percent_escapes_valid(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'%')
        .all(|(i, _)| {
            bytes
                .get(i + 1..i + 3)
                .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit))
        })
}

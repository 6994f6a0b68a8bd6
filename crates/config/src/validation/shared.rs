//! Checks shared by several kinds: metadata, selectors, policy targets, `exportTo`,
//! destinations, string matches and HTTP header operations.

use std::collections::{BTreeMap, HashSet};

use crate::networking::virtual_service::{Destination, HeaderOperations, Headers};
use crate::object::{Object, Resource};
use crate::path::FieldPath;
use crate::selector::{PolicyTargetReference, WorkloadSelector};
use crate::string_match::StringMatch;
use crate::validation::Report;
use crate::validation::syntax::{self, Check};

const DRY_RUN: &str = "istio.io/dry-run";
const INTERNAL_ANNOTATIONS: &[&str] = &[
    "internal.istio.io/webhook-always-reject",
    "internal.istio.io/parents",
    "internal.istio.io/parent-namespace",
];

pub fn metadata(object: &Object, report: &mut Report) {
    let meta = FieldPath::root().field("metadata");
    if let Some(name) = object.meta.name.as_deref().filter(|n| !n.is_empty()) {
        report.check(&meta.field("name"), syntax::kube_name(name));
    }
    if let Some(namespace) = &object.meta.namespace
        && !syntax::is_kube_label(namespace)
    {
        report.error(
            &meta.field("namespace"),
            format!("invalid namespace {namespace:?}: must be a lower-case DNS-1123 label"),
        );
    }
    let Some(annotations) = &object.meta.annotations else {
        return;
    };
    let at = meta.field("annotations");
    for key in INTERNAL_ANNOTATIONS
        .iter()
        .filter(|k| annotations.contains_key(**k))
    {
        report.error(
            &at,
            format!("{key:?} annotation found, this may not be set by users"),
        );
    }
    if let Some(value) = annotations.get(DRY_RUN) {
        dry_run(object, value, &at, report);
    }
}

fn dry_run(object: &Object, value: &str, at: &FieldPath, report: &mut Report) {
    use crate::security::authorization_policy::Action;
    let Resource::AuthorizationPolicy(policy) = &object.resource else {
        report.error(
            at,
            format!("{DRY_RUN} is only supported on AuthorizationPolicy; remove the annotation"),
        );
        return;
    };
    if !matches!(policy.action, Action::Allow | Action::Deny) {
        report.error(at, format!("the annotation {DRY_RUN} currently only supports action ALLOW/DENY, found action {:?}", policy.action));
    } else if !matches!(
        value,
        "1" | "t" | "T" | "TRUE" | "true" | "True" | "0" | "f" | "F" | "FALSE" | "false" | "False"
    ) {
        report.error(
            at,
            format!("annotation {DRY_RUN} has invalid value ({value}): must be true or false"),
        );
    }
}

/// `selector.matchLabels` (security and telemetry kinds, ProxyConfig, WasmPlugin).
pub fn workload_selector(selector: Option<&WorkloadSelector>, at: &FieldPath, report: &mut Report) {
    let Some(selector) = selector else { return };
    let at = at.field("matchLabels");
    if selector.match_labels.is_empty() {
        report.warn(&at, "workload selector specified without labels");
    }
    selector_labels(
        &selector.match_labels,
        &at,
        "wildcard not allowed in label",
        report,
    );
}

/// `workloadSelector.labels` (ServiceEntry, Sidecar, EnvoyFilter).
pub fn entry_selector_labels(
    labels: &BTreeMap<String, String>,
    at: &FieldPath,
    report: &mut Report,
) {
    selector_labels(labels, at, "wildcard is not supported in selector", report);
}

fn selector_labels(
    labels: &BTreeMap<String, String>,
    at: &FieldPath,
    wildcard: &str,
    report: &mut Report,
) {
    for (key, value) in labels {
        let here = at.field(key);
        if key.is_empty() {
            report.error(&here, format!("key must not be empty: \"={value}\""));
        } else if key.contains('*') {
            report.error(&here, format!("{wildcard} key match: \"{key}={value}\""));
        }
        if value.contains('*') {
            report.error(&here, format!("{wildcard} value match: \"{key}={value}\""));
        }
        if value.len() > 63 {
            report.error(&here, "label value must be no more than 63 characters");
        }
    }
}

/// At most one of `selector`, `targetRef` and `targetRefs`; each target well formed.
pub fn policy_targets(
    selector: bool,
    target_ref: Option<&PolicyTargetReference>,
    target_refs: Option<&Vec<PolicyTargetReference>>,
    at: &FieldPath,
    report: &mut Report,
) {
    let set = usize::from(selector)
        + usize::from(target_ref.is_some())
        + usize::from(target_refs.is_some());
    if set > 1 {
        report.error(at, "only one of targetRefs or selector can be set");
    }
    if let Some(target) = target_ref {
        policy_target(target, &at.field("targetRef"), report);
    }
    if let Some(targets) = target_refs {
        if targets.len() > 16 {
            report.error(&at.field("targetRefs"), "must have at most 16 items");
        }
        for (i, target) in targets.iter().enumerate() {
            policy_target(target, &at.field("targetRefs").index(i), report);
        }
    }
}

/// The kinds a policy may target, by (group, kind); `""` and `core` are the core group.
const TARGETABLE: &[(&str, &str)] = &[
    ("", "Service"),
    ("networking.istio.io", "ServiceEntry"),
    ("gateway.networking.k8s.io", "Gateway"),
    ("gateway.networking.k8s.io", "GatewayClass"),
];

fn policy_target(target: &PolicyTargetReference, at: &FieldPath, report: &mut Report) {
    target_ref_shape(target, at, report);
    let group = if target.group == "core" {
        ""
    } else {
        target.group.as_str()
    };
    if !target.kind.is_empty() && !TARGETABLE.contains(&(group, target.kind.as_str())) {
        report.error(
            &at.field("kind"),
            format!(
                "targetRef must be to one of Service, ServiceEntry, Gateway or GatewayClass but was {}/{}",
                target.group, target.kind
            ),
        );
    }
}

/// The schema of a target reference, as the CRD checks it.
pub fn target_ref_shape(target: &PolicyTargetReference, at: &FieldPath, report: &mut Report) {
    static GROUP: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(
            r"^$|^[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*$",
        )
        .unwrap_or_else(|e| panic!("{e}"))
    });
    static KIND: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r"^[a-zA-Z](?:[-a-zA-Z0-9]*[a-zA-Z0-9])?$")
            .unwrap_or_else(|e| panic!("{e}"))
    });
    if target.group.len() > 253 || !GROUP.is_match(&target.group) {
        report.error(
            &at.field("group"),
            "in body should match a DNS subdomain (lower case letters, digits, '-' and '.')",
        );
    }
    if target.kind.is_empty() || target.kind.len() > 63 || !KIND.is_match(&target.kind) {
        report.error(
            &at.field("kind"),
            "in body should match '^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$' (1 to 63 characters)",
        );
    }
    if target.name.is_empty() || target.name.len() > 253 {
        report.error(
            &at.field("name"),
            "in body should be at least 1 chars long and at most 253: targetRef name must be set",
        );
    }
    if !target.namespace.is_empty() {
        report.error(
            &at.field("namespace"),
            "cross namespace referencing is not currently supported",
        );
    }
}

/// `exportTo`: `.`, `*`, `~` (ServiceEntry only) or namespace names, without duplicates.
pub fn export_to(
    entries: &[String],
    at: &FieldPath,
    service_entry: bool,
    report: &mut Report,
) -> HashSet<String> {
    let mut seen = HashSet::new();
    for (i, entry) in entries.iter().enumerate() {
        let here = at.index(i);
        let key = if entry == "." {
            report.namespace.clone()
        } else {
            entry.clone()
        };
        if !seen.insert(key.clone()) {
            if key == *entry {
                report.error(
                    &here,
                    format!("duplicate entries in exportTo for entry {entry}"),
                );
            } else {
                report.error(
                    &here,
                    format!("duplicate entries in exportTo: . and current namespace {key}"),
                );
            }
            continue;
        }
        match entry.as_str() {
            "." | "*" => {}
            "~" if service_entry => {}
            "~" => report.error(
                &here,
                "exportTo ~ (none) is not allowed for Istio configuration objects",
            ),
            _ if syntax::is_dns1123_label(entry) => {}
            _ => report.error(
                &here,
                "only .,*,~, or a valid DNS 1123 label is allowed as exportTo entry",
            ),
        }
    }
    if seen.contains("*") && entries.len() > 1 {
        report.error(
            at,
            "cannot have both public (*) and non-public exportTo values for a resource",
        );
    }
    if seen.contains("~") && entries.len() > 1 {
        report.error(at, "cannot export service entry to no one (~) and someone");
    }
    seen
}

/// A route's or mirror's destination: a host, an optional subset and port.
pub fn destination(d: &Destination, at: &FieldPath, report: &mut Report) {
    if d.host == "*" {
        report.error(&at.field("host"), "invalid destination host *");
    } else {
        report.check(&at.field("host"), syntax::wildcard_domain(&d.host));
    }
    if !d.subset.is_empty() {
        report.check(&at.field("subset"), subset_name(&d.subset));
    }
    if let Some(port) = d.port {
        report.check(&at.field("port").field("number"), syntax::port(port.number));
    }
}

pub fn subset_name(name: &str) -> Check {
    if name.is_empty() {
        return Err("subset name cannot be empty".to_owned());
    }
    if !syntax::is_dns1123_label(name) {
        return Err(format!("subset name is invalid: {name}"));
    }
    Ok(())
}

/// A StringMatch in a route: prefix and regex must not be empty, and regexes must be
/// valid RE2 (the `Pattern` type already compiled them).
pub fn string_match(m: &StringMatch, at: &FieldPath, what: &str, report: &mut Report) {
    match m {
        StringMatch::Prefix(p) if p.is_empty() => report.error(
            &at.field("prefix"),
            format!("{what:?}: prefix string match should not be empty"),
        ),
        StringMatch::Regex(r) if r.as_str().is_empty() => report.error(
            &at.field("regex"),
            format!("{what:?}: regex string match should not be empty"),
        ),
        StringMatch::Regex(r) => report.check(&at.field("regex"), syntax::regex(r.as_str(), what)),
        _ => {}
    }
}

/// Request and response header operations of a route or destination.
pub fn headers(h: &Headers, at: &FieldPath, report: &mut Report) {
    if let Some(request) = &h.request {
        header_operations(request, &at.field("request"), true, report);
    }
    if let Some(response) = &h.response {
        header_operations(response, &at.field("response"), false, report);
    }
}

fn header_operations(ops: &HeaderOperations, at: &FieldPath, request: bool, report: &mut Report) {
    for (field, map) in [("set", &ops.set), ("add", &ops.add)] {
        for (name, value) in map {
            let here = at.field(field).field(name);
            let name_check = if request {
                request_header_name(name)
            } else {
                header_operation_name(name)
            };
            report.check(&here, name_check);
            report.check(&here, header_value(value));
        }
    }
    for (i, name) in ops.remove.iter().enumerate() {
        report.check(&at.field("remove").index(i), header_operation_name(name));
    }
}

/// Request headers may also set the authority (`:authority` or `host`).
fn request_header_name(name: &str) -> Check {
    if name.is_empty() {
        return Err("invalid header: name cannot be empty".to_owned());
    }
    let lower = name.to_ascii_lowercase();
    if name.starts_with(':') && lower != ":authority" {
        return Err(format!(
            "invalid header {name:?}: header cannot have \":\" prefix"
        ));
    }
    Ok(())
}

fn header_operation_name(name: &str) -> Check {
    if name.is_empty() {
        return Err("invalid header: name cannot be empty".to_owned());
    }
    if name.eq_ignore_ascii_case("host") {
        return Err(format!("invalid header {name:?}: cannot set Host header"));
    }
    if name.starts_with(':') {
        return Err(format!(
            "invalid header {name:?}: header cannot have \":\" prefix"
        ));
    }
    Ok(())
}

/// Header values may hold Envoy's `%VARIABLE%` substitutions; `%%` is a literal `%`.
pub fn header_value(value: &str) -> Check {
    if value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(format!("header value configuration {value:?} is invalid"));
    }
    let mut rest = value;
    while let Some(at) = rest.find('%') {
        let after = &rest[at + 1..];
        if let Some(next) = after.strip_prefix('%') {
            rest = next;
            continue;
        }
        let Some(end) = after.find('%') else {
            return Err(
                "header value configuration: invalid header configuration. Un-escaped %".to_owned(),
            );
        };
        let variable = &after[..end];
        let name_end = variable.find('(').unwrap_or(variable.len());
        if name_end == 0
            || !variable[..name_end]
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(format!(
                "header value configuration: invalid header configuration. Un-terminated variable expression '{variable}'"
            ));
        }
        if name_end < variable.len() && !variable.ends_with(')') {
            return Err(format!(
                "header value configuration: invalid header configuration. Expecting ')' in '{variable}'"
            ));
        }
        rest = &after[end + 1..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values() {
        for ok in ["foo", "%HOSTNAME%", "100%%", "%REQ(x-foo)%", "a\tb"] {
            assert_eq!(header_value(ok), Ok(()), "{ok}");
        }
        for bad in ["abc%123", "%START_TIME%%", "a\nb", "%%%"] {
            assert!(header_value(bad).is_err(), "{bad}");
        }
    }
}

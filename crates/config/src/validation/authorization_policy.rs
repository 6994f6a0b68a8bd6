//! AuthorizationPolicy rules.

use crate::path::FieldPath;
use crate::security::authorization_policy::{
    Action, AuthorizationPolicy, Condition, Operation, Source,
};
use crate::validation::Report;
use crate::validation::shared;
use crate::validation::syntax::{self, Check};

pub fn validate(ap: &AuthorizationPolicy, at: &FieldPath, report: &mut Report) {
    shared::policy_targets(
        ap.selector.is_some(),
        ap.target_ref.as_ref(),
        ap.target_refs.as_ref(),
        at,
        report,
    );
    shared::workload_selector(ap.selector.as_ref(), &at.field("selector"), report);
    action(ap, at, report);
    let Some(rules) = &ap.rules else { return };
    if rules.len() > 512 {
        report.error(&at.field("rules"), "must have at most 512 items");
    }
    for (i, rule) in rules.iter().enumerate() {
        let here = at.field("rules").index(i);
        for (j, from) in rule.from.iter().enumerate() {
            let from_at = here.field("from").index(j);
            match &from.source {
                None => report.error(
                    &from_at.field("source"),
                    format!("`from.source` must not be nil, found at rule {i}"),
                ),
                Some(source) => {
                    self::source(source, i, ap.action, &from_at.field("source"), report)
                }
            }
        }
        for (j, to) in rule.to.iter().enumerate() {
            let to_at = here.field("to").index(j);
            match &to.operation {
                None => report.error(
                    &to_at.field("operation"),
                    format!("`to.operation` must not be nil, found at rule {i}"),
                ),
                Some(operation) => self::operation(operation, i, &to_at.field("operation"), report),
            }
        }
        for (j, condition) in rule.when.iter().enumerate() {
            self::condition(condition, ap.action, &here.field("when").index(j), report);
        }
        if ap.action == Action::Deny && only_http_attributes(rule) {
            report.warn(&here, "configured AuthorizationPolicy will deny all traffic to TCP ports under its scope due to the use of only HTTP attributes in a DENY rule; it is recommended to explicitly specify the port");
        }
    }
}

fn action(ap: &AuthorizationPolicy, at: &FieldPath, report: &mut Report) {
    match ap.action {
        Action::Custom => {
            if ap.rules.is_none() {
                report.error(&at.field("rules"), "CUSTOM action without `rules` is meaningless as it will never be triggered, add an empty rule `{}` if you want it be triggered for every request");
            } else if ap.provider.as_ref().is_none_or(|p| p.name.is_empty()) {
                report.error(
                    &at.field("provider").field("name"),
                    "`provider.name` must not be empty",
                );
            }
        }
        Action::Deny if ap.rules.is_none() => {
            report.error(&at.field("rules"), "DENY action without `rules` is meaningless as it will never be triggered, add an empty rule `{}` if you want it be triggered for every request");
        }
        _ => {}
    }
    if ap.provider.is_some() && ap.action != Action::Custom {
        report.error(
            &at.field("provider"),
            format!(
                "`provider` must not be with non CUSTOM action, found {:?}",
                ap.action
            ),
        );
    }
}

fn source(s: &Source, rule: usize, action: Action, at: &FieldPath, report: &mut Report) {
    let identity = !s.principals.is_empty()
        || !s.not_principals.is_empty()
        || !s.namespaces.is_empty()
        || !s.not_namespaces.is_empty();
    let accounts = !s.service_accounts.is_empty() || !s.not_service_accounts.is_empty();
    if identity && accounts {
        report.error(
            at,
            format!(
                "Cannot set serviceAccounts with namespaces or principals, found at rule {rule}"
            ),
        );
    }
    let lists: [(&str, &Vec<String>); 14] = [
        ("principals", &s.principals),
        ("notPrincipals", &s.not_principals),
        ("requestPrincipals", &s.request_principals),
        ("notRequestPrincipals", &s.not_request_principals),
        ("namespaces", &s.namespaces),
        ("notNamespaces", &s.not_namespaces),
        ("serviceAccounts", &s.service_accounts),
        ("notServiceAccounts", &s.not_service_accounts),
        ("ipBlocks", &s.ip_blocks),
        ("notIpBlocks", &s.not_ip_blocks),
        ("remoteIpBlocks", &s.remote_ip_blocks),
        ("notRemoteIpBlocks", &s.not_remote_ip_blocks),
        ("trustDomains", &s.trust_domains),
        ("notTrustDomains", &s.not_trust_domains),
    ];
    if lists.iter().all(|(_, l)| l.is_empty()) {
        report.error(
            at,
            format!("`from.source` must not be empty, found at rule {rule}"),
        );
    }
    for (field, list) in lists {
        let here = at.field(field);
        if list.iter().any(String::is_empty) {
            report.error(&here, format!("empty value not allowed, found in {field}"));
        }
        match field {
            "ipBlocks" | "notIpBlocks" | "remoteIpBlocks" | "notRemoteIpBlocks" => {
                for (i, ip) in list.iter().enumerate().filter(|(_, ip)| !ip.is_empty()) {
                    report.check(&here.index(i), ip_or_cidr(ip));
                }
            }
            "serviceAccounts" | "notServiceAccounts" => {
                service_accounts(list, field, &here, report)
            }
            _ => {}
        }
        let custom_forbidden = matches!(
            field,
            "principals"
                | "notPrincipals"
                | "requestPrincipals"
                | "notRequestPrincipals"
                | "namespaces"
                | "notNamespaces"
                | "serviceAccounts"
                | "notServiceAccounts"
        );
        if action == Action::Custom && custom_forbidden && !list.is_empty() {
            report.error(
                &here,
                format!("{field} is currently not supported with CUSTOM action"),
            );
        }
    }
}

fn ip_or_cidr(value: &str) -> Check {
    if value.contains('/') {
        syntax::ip_subnet(value).map_err(|_| format!("bad CIDR range ({value})"))
    } else {
        syntax::ip_address(value).map_err(|_| format!("bad IP address ({value})"))
    }
}

/// `serviceAccount` or `namespace/serviceAccount`, no wildcards, at most 16 of them.
fn service_accounts(list: &[String], field: &str, at: &FieldPath, report: &mut Report) {
    if list.len() > 16 {
        report.error(at, "may not have more than 16 values");
    }
    for (i, account) in list.iter().enumerate().filter(|(_, a)| !a.is_empty()) {
        report.check(&at.index(i), service_account(account, field));
    }
}

fn service_account(account: &str, field: &str) -> Check {
    if account.contains('*') {
        return Err(format!("wildcard not allowed, found in {field}"));
    }
    if account.matches('/').count() > 1 {
        return Err(format!(
            "expected format 'serviceAccount' or 'namespace/serviceAccount', found {account:?} in {field}"
        ));
    }
    if account.len() > 320 {
        return Err(format!(
            "value cannot exceed 320 characters, found {account:?} in {field}"
        ));
    }
    match account.split_once('/') {
        Some(("", _)) => Err(format!(
            "expected format 'serviceAccount' or 'namespace/serviceAccount', found empty namespace {account:?} in {field}"
        )),
        Some((_, "")) => Err(format!(
            "expected format 'serviceAccount' or 'namespace/serviceAccount', found empty serviceAccount {account:?} in {field}"
        )),
        _ => Ok(()),
    }
}

fn operation(op: &Operation, rule: usize, at: &FieldPath, report: &mut Report) {
    let lists: [(&str, &Vec<String>); 8] = [
        ("hosts", &op.hosts),
        ("notHosts", &op.not_hosts),
        ("ports", &op.ports),
        ("notPorts", &op.not_ports),
        ("methods", &op.methods),
        ("notMethods", &op.not_methods),
        ("paths", &op.paths),
        ("notPaths", &op.not_paths),
    ];
    if lists.iter().all(|(_, l)| l.is_empty()) {
        report.error(
            at,
            format!("`to.operation` must not be empty, found at rule {rule}"),
        );
    }
    for (field, list) in lists {
        let here = at.field(field);
        if list.iter().any(String::is_empty) {
            report.error(&here, format!("empty value not allowed, found in {field}"));
        }
        for (i, value) in list.iter().enumerate().filter(|(_, v)| !v.is_empty()) {
            match field {
                "ports" | "notPorts" => report.check(&here.index(i), policy_port(value)),
                "paths" | "notPaths" => report.check(&here.index(i), path_template(value, field)),
                _ => {}
            }
        }
    }
}

fn policy_port(port: &str) -> Check {
    match port.parse::<u32>() {
        Ok(p) if p <= 65535 && !port.starts_with('+') => Ok(()),
        _ => Err(format!(
            "bad port ({port}): must be a number from 0 to 65535"
        )),
    }
}

/// Paths with `{*}` (one segment) and `{**}` (the rest) templates.
fn path_template(path: &str, field: &str) -> Check {
    let templated = path.contains("{*}") || path.contains("{**}");
    let trimmed = path.trim_matches('/');
    let mut seen_any = false;
    for glob in trimmed.split('/') {
        match glob {
            "{*}" | "{**}" if seen_any => {
                return Err(format!(
                    "invalid or unsupported path {trimmed}, found in {field}. {{**}} is not the last operator"
                ));
            }
            "{*}" => continue,
            "{**}" => {
                seen_any = true;
                continue;
            }
            _ => {}
        }
        if glob.contains(['{', '}']) {
            return Err(format!(
                "invalid or unsupported path {trimmed}, found in {field}. Contains '{{' or '}}' beyond a supported path template"
            ));
        }
        let literal = !glob.is_empty()
            && glob
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~%!$&'()+,;:@=".contains(&b));
        if templated && !literal {
            return Err(format!(
                "invalid or unsupported path {trimmed}, found in {field}. Contains segment {glob} with invalid string literal"
            ));
        }
    }
    Ok(())
}

fn condition(c: &Condition, action: Action, at: &FieldPath, report: &mut Report) {
    if c.key.is_empty() {
        report.error(&at.field("key"), "`key` must not be empty");
        return;
    }
    if c.values.is_empty() && c.not_values.is_empty() {
        report.error(
            at,
            format!(
                "at least one of `values` or `notValues` must be set for key {}",
                c.key
            ),
        );
        return;
    }
    for (field, list, what) in [
        ("values", &c.values, "value"),
        ("notValues", &c.not_values, "notValue"),
    ] {
        if let Err(e) = attribute(&c.key, list) {
            report.error(
                &at.field(field),
                format!("invalid `{what}` for `key` {}: {e}", c.key),
            );
        }
    }
    let custom_forbidden = matches!(
        c.key.as_str(),
        "source.namespace" | "source.serviceAccount" | "source.principal"
    ) || c.key.starts_with("request.auth.");
    if action == Action::Custom && custom_forbidden {
        report.error(
            &at.field("key"),
            format!("{} is currently not supported with CUSTOM action", c.key),
        );
    }
}

/// The `when` keys Istio knows, and what their values must look like.
fn attribute(key: &str, values: &[String]) -> Check {
    if values.iter().any(String::is_empty) {
        return Err(format!("empty value not allowed, found in {key}"));
    }
    let each = |check: fn(&str) -> Check| values.iter().try_for_each(|v| check(v));
    if key.starts_with("request.headers")
        || key.starts_with("request.experimental.inline.headers")
        || key.starts_with("request.auth.claims")
        || key.starts_with("experimental.envoy.filters.")
    {
        return map_key(key);
    }
    match key {
        "source.ip" | "remote.ip" | "destination.ip" => each(ip_or_cidr),
        "destination.port" => each(policy_port),
        "source.serviceAccount" => each(|v| service_account(v, "source.serviceAccount")),
        "source.namespace"
        | "source.principal"
        | "source.trustDomain"
        | "request.auth.principal"
        | "request.auth.audiences"
        | "request.auth.presenter"
        | "connection.sni" => Ok(()),
        "destination.namespace" => Err(format!(
            "attribute {key} is replaced by the metadata.namespace"
        )),
        k if k.starts_with("destination.labels") => Err(format!(
            "attribute {key} is replaced by the workload selector"
        )),
        "destination.name" | "destination.user" => Err(format!(
            "deprecated attribute {key}: only supported in v1alpha1"
        )),
        _ => Err(format!("unknown attribute: {key}")),
    }
}

/// `name[key]`: something between the brackets.
fn map_key(key: &str) -> Check {
    let ok = key
        .find('[')
        .is_some_and(|open| key.ends_with(']') && open > 0 && open < key.len() - 2);
    if ok {
        Ok(())
    } else {
        Err(format!("bad key ({key}): should have format a[b]"))
    }
}

/// A DENY rule that only names HTTP attributes also matches every TCP connection.
fn only_http_attributes(rule: &crate::security::authorization_policy::Rule) -> bool {
    let from_exists = rule.from.iter().any(|f| f.source.is_some());
    let to_exists = rule.to.iter().any(|t| t.operation.is_some());
    let tcp_in_from = rule.from.iter().filter_map(|f| f.source.as_ref()).any(|s| {
        [
            &s.principals,
            &s.not_principals,
            &s.ip_blocks,
            &s.not_ip_blocks,
            &s.namespaces,
            &s.not_namespaces,
            &s.remote_ip_blocks,
            &s.not_remote_ip_blocks,
            &s.service_accounts,
            &s.not_service_accounts,
        ]
        .iter()
        .any(|l| !l.is_empty())
    });
    let tcp_in_to = rule
        .to
        .iter()
        .filter_map(|t| t.operation.as_ref())
        .any(|o| !o.ports.is_empty() || !o.not_ports.is_empty());
    (from_exists && !to_exists && !tcp_in_from) || (to_exists && !tcp_in_to)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_templates() {
        for ok in [
            "/exact",
            "/prefix/*",
            "*/suffix",
            "*",
            "/path/template/{*}",
            "/{**}/path/template",
            "/a/{*}/b/{**}",
        ] {
            assert_eq!(path_template(ok, "paths"), Ok(()), "{ok}");
        }
        for bad in ["/{**}/{*}", "/a{b}", "/{*}//a", "/foo/*/{**}"] {
            assert!(path_template(bad, "paths").is_err(), "{bad}");
        }
    }

    #[test]
    fn when_keys() {
        let v = |s: &str| vec![s.to_owned()];
        assert_eq!(attribute("request.headers[X-header]", &v("x")), Ok(()));
        assert!(attribute("request.headers[]", &v("x")).is_err());
        assert_eq!(attribute("source.ip", &v("10.0.0.0/8")), Ok(()));
        assert!(attribute("source.ip", &v("10.0.0.0/99")).is_err());
        assert!(attribute("destination.namespace", &v("x")).is_err());
        assert!(attribute("no.such.key", &v("x")).is_err());
    }
}

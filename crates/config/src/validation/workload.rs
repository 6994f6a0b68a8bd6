//! WorkloadEntry and WorkloadGroup rules; ServiceEntry endpoints reuse the entry rules.

use std::collections::BTreeMap;

use crate::networking::workload_entry::{ReadinessProbe, WorkloadEntry, WorkloadGroup};
use crate::path::FieldPath;
use crate::validation::Report;
use crate::validation::syntax;

pub fn validate_entry(we: &WorkloadEntry, at: &FieldPath, report: &mut Report) {
    if we.address.is_empty() && we.network.is_empty() {
        report.error(
            &at.field("address"),
            "Address is required: address is required",
        );
        return;
    }
    entry(we, EntryUse::WorkloadEntry, at, report);
}

/// Where an entry is used: the rules for its address differ.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum EntryUse<'a> {
    WorkloadEntry,
    /// A ServiceEntry endpoint: its ports must be the service's; `static_only`
    /// for `resolution: STATIC`, where the address must be an IP.
    ServiceEndpoint {
        service_ports: &'a [&'a str],
        static_only: bool,
    },
    Template,
}

pub fn entry(we: &WorkloadEntry, used_as: EntryUse<'_>, at: &FieldPath, report: &mut Report) {
    let address_at = at.field("address");
    if we.address.len() > 256 {
        report.error(&address_at, "must have at most 256 characters");
    }
    if we.address.is_empty() {
        if used_as != EntryUse::Template && !we.network.is_empty() {
            report.warn(
                &address_at,
                format!("address is unset with network {:?}", we.network),
            );
        }
    } else if let Some(path) = we.address.strip_prefix("unix://") {
        unix_address(path, &address_at, report);
        if !we.ports.is_empty() {
            report.error(
                &at.field("ports"),
                format!(
                    "UDS may not include ports: unix endpoint {} must not include ports",
                    we.address
                ),
            );
        }
        if let EntryUse::ServiceEndpoint { service_ports, .. } = used_as
            && service_ports.len() != 1
        {
            report.error(
                &address_at,
                "exactly 1 service port required for unix endpoints",
            );
        }
    } else if !syntax::is_ip(&we.address) {
        match used_as {
            EntryUse::ServiceEndpoint {
                static_only: true, ..
            } => report.error(
                &address_at,
                format!(
                    "endpoint address {:?} is not a valid IP address",
                    we.address
                ),
            ),
            _ if syntax::fqdn(&we.address).is_err() => report.error(
                &address_at,
                format!(
                    "endpoint address {:?} is not a valid FQDN or an IP address",
                    we.address
                ),
            ),
            _ => {}
        }
    }
    ports(&we.ports, used_as, &at.field("ports"), report);
    for e in syntax::labels(&we.labels) {
        report.error(&at.field("labels"), e);
    }
    if we.service_account.len() > 253 {
        report.error(
            &at.field("serviceAccount"),
            "must have at most 253 characters",
        );
    }
}

fn unix_address(path: &str, at: &FieldPath, report: &mut Report) {
    if !(path.starts_with('/') || path.starts_with('@')) {
        report.error(at, "UDS must be an absolute path or abstract socket");
    } else if path.ends_with('/') {
        report.error(at, "UDS may not be a dir");
    } else {
        report.check(at, syntax::unix_address(path));
    }
}

fn ports(
    ports: &BTreeMap<String, u32>,
    used_as: EntryUse<'_>,
    at: &FieldPath,
    report: &mut Report,
) {
    if ports.len() > 128 {
        report.error(at, "must have at most 128 properties");
    }
    for (name, number) in ports {
        let here = at.field(name);
        if let EntryUse::ServiceEndpoint { service_ports, .. } = used_as
            && !service_ports.contains(&name.as_str())
        {
            report.error(
                &here,
                format!("endpoint port {name} is not defined by the service entry"),
            );
        }
        if name.len() >= 63 || !syntax::is_dns1123_label(name) {
            report.error(
                at,
                format!("Invalid value: port name must be valid: invalid port name: {name}"),
            );
        }
        if syntax::port(*number).is_err() {
            report.error(&here, format!("port must be between 1-65535, got {number}"));
        }
    }
}

pub fn validate_group(wg: &WorkloadGroup, at: &FieldPath, report: &mut Report) {
    if let Some(meta) = &wg.metadata {
        for e in syntax::labels(&meta.labels) {
            report.error(
                &at.field("metadata").field("labels"),
                format!("invalid labels: {e}"),
            );
        }
    }
    entry(
        &wg.template,
        EntryUse::Template,
        &at.field("template"),
        report,
    );
    if let Some(probe) = &wg.probe {
        readiness_probe(probe, &at.field("probe"), report);
    }
}

fn readiness_probe(probe: &ReadinessProbe, at: &FieldPath, report: &mut Report) {
    let counters = [
        ("periodSeconds", probe.period_seconds),
        ("initialDelaySeconds", probe.initial_delay_seconds),
        ("timeoutSeconds", probe.timeout_seconds),
        ("successThreshold", probe.success_threshold),
        ("failureThreshold", probe.failure_threshold),
    ];
    for (field, value) in counters {
        if value < 0 {
            report.error(&at.field(field), format!("{field} must be non-negative"));
        }
    }
    let methods = [
        probe.http_get.is_some(),
        probe.tcp_socket.is_some(),
        probe.exec.is_some(),
        probe.grpc.is_some(),
    ];
    match methods.iter().filter(|m| **m).count() {
        0 => report.error(
            at,
            "unknown health check method: set one of httpGet, tcpSocket, exec or grpc",
        ),
        1 => {}
        _ => report.error(
            at,
            "only one of httpGet, tcpSocket, exec or grpc may be set",
        ),
    }
    if let Some(http) = &probe.http_get {
        let here = at.field("httpGet");
        probe_port(http.port, &here.field("port"), report);
        if !matches!(http.scheme.as_str(), "" | "HTTP" | "HTTPS") {
            report.error(
                &here.field("scheme"),
                "httpGet.scheme must be one of \"HTTPS\", \"HTTP\"",
            );
        }
        for (i, header) in http.http_headers.iter().enumerate() {
            let valid = !header.name.is_empty()
                && header
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !valid {
                report.error(
                    &here.field("httpHeaders").index(i).field("name"),
                    "in body should match '^[-_A-Za-z0-9]+$'",
                );
            }
        }
    }
    if let Some(tcp) = &probe.tcp_socket {
        probe_port(tcp.port, &at.field("tcpSocket").field("port"), report);
    }
    if let Some(grpc) = &probe.grpc {
        probe_port(grpc.port, &at.field("grpc").field("port"), report);
    }
    if let Some(exec) = &probe.exec {
        if exec.command.is_empty() {
            report.error(
                &at.field("exec").field("command"),
                "exec.command is required",
            );
        }
        if exec.command.iter().any(String::is_empty) {
            report.error(
                &at.field("exec").field("command"),
                "in body should be at least 1 chars long",
            );
        }
    }
}

fn probe_port(port: u32, at: &FieldPath, report: &mut Report) {
    if syntax::port(port).is_err() {
        report.error(at, format!("port must be between 1-65535, got {port}"));
    }
}

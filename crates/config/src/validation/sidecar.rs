//! Sidecar rules.

use std::collections::HashSet;

use crate::networking::gateway::ServerTlsMode;
use crate::networking::sidecar::{
    CaptureMode, IstioEgressListener, IstioIngressListener, OutboundMode, Sidecar,
};
use crate::path::FieldPath;
use crate::validation::Report;
use crate::validation::syntax;
use crate::validation::{destination_rule, gateway, shared};

pub fn validate(sc: &Sidecar, at: &FieldPath, report: &mut Report) {
    if let Some(selector) = &sc.workload_selector {
        let here = at.field("workloadSelector").field("labels");
        if selector.labels.is_empty() {
            report.warn(&here, "sidecar: workload selector specified without labels, will be applied to all services in namespace");
        }
        shared::entry_selector_labels(&selector.labels, &here, report);
    }
    if sc.egress.is_empty()
        && sc.ingress.is_empty()
        && sc.outbound_traffic_policy.is_none()
        && sc.inbound_connection_pool.is_none()
    {
        report.error(at, "sidecar: empty configuration provided");
        return;
    }
    let mut ingress_ports = HashSet::new();
    for (i, listener) in sc.ingress.iter().enumerate() {
        ingress(
            listener,
            &mut ingress_ports,
            &at.field("ingress").index(i),
            report,
        );
    }
    if let Some(pool) = &sc.inbound_connection_pool {
        destination_rule::connection_pool(pool, &at.field("inboundConnectionPool"), report);
    }
    egress(&sc.egress, &at.field("egress"), report);
    if let Some(policy) = &sc.outbound_traffic_policy
        && let Some(proxy) = &policy.egress_proxy
    {
        let here = at.field("outboundTrafficPolicy").field("egressProxy");
        if policy.mode != OutboundMode::AllowAny {
            report.error(&here, "sidecar: egress_proxy must be set only with ALLOW_ANY outbound_traffic_policy mode");
            return;
        }
        report.check(&here.field("host"), syntax::fqdn(&proxy.host));
        if proxy.port.is_none() {
            report.error(
                &here.field("port"),
                "sidecar: egress_proxy port must be non-nil",
            );
            return;
        }
        shared::destination(proxy, &here, report);
    }
}

fn ingress(
    listener: &IstioIngressListener,
    seen: &mut HashSet<u32>,
    at: &FieldPath,
    report: &mut Report,
) {
    let port = &listener.port;
    let port_at = at.field("port");
    if port.target_port > 0 {
        report.error(
            &port_at.field("targetPort"),
            "targetPort has no impact on Sidecars",
        );
    }
    if !port.name.is_empty() {
        report.check(&port_at.field("name"), syntax::port_name(&port.name));
    }
    report.check(
        &port_at.field("protocol"),
        syntax::optional_protocol(&port.protocol),
    );
    report.check(&port_at.field("number"), syntax::port(port.number));
    if !listener.bind.is_empty() {
        report.check(&at.field("bind"), syntax::ip_address(&listener.bind));
    }
    if !seen.insert(port.number) {
        report.error(
            &port_at.field("number"),
            "sidecar: ports on IP bound listeners must be unique",
        );
    }
    if !listener.default_endpoint.is_empty() {
        report.check(
            &at.field("defaultEndpoint"),
            default_endpoint(&listener.default_endpoint),
        );
    }
    let protocol = syntax::protocol(&port.protocol);
    if let Some(tls) = &listener.tls {
        let here = at.field("tls");
        let unsupported = [
            (
                !tls.subject_alt_names.is_empty(),
                "sidecar: subjectAltNames is not supported in ingress tls",
            ),
            (
                tls.https_redirect,
                "sidecar: httpsRedirect is not supported",
            ),
            (
                !tls.credential_name.is_empty(),
                "sidecar: credentialName is not currently supported",
            ),
            (
                !tls.credential_names.is_empty(),
                "sidecar: credentialNames is not currently supported",
            ),
            (
                !tls.tls_certificates.is_empty(),
                "sidecar: tls_certificates is not currently supported",
            ),
        ];
        for (_, message) in unsupported.iter().filter(|(bad, _)| *bad) {
            report.error(&here, *message);
        }
        if matches!(
            tls.mode,
            ServerTlsMode::IstioMutual | ServerTlsMode::AutoPassthrough
        ) {
            report.error(
                &here.field("mode"),
                format!(
                    "cannot set mode to {} in sidecar ingress tls",
                    gateway::server_tls_mode_name(tls.mode)
                ),
            );
        }
        if !protocol.is_some_and(|p| p.is_tls()) {
            report.error(
                &here,
                "server cannot have TLS settings for non HTTPS/TLS ports",
            );
        }
        gateway::tls_options(tls, &here, report);
    }
    if let Some(pool) = &listener.connection_pool {
        destination_rule::connection_pool(pool, &at.field("connectionPool"), report);
        if pool.http.is_some() && !protocol.is_some_and(|p| p.is_http()) {
            report.warn(
                &at.field("connectionPool").field("http"),
                format!(
                    "sidecar: HTTP connection pool settings are configured for port {} ({:?}) but its protocol is not HTTP ({}); only TCP settings will apply",
                    port.number, port.name, port.protocol
                ),
            );
        }
    }
}

/// `127.0.0.1:<port>`, `0.0.0.0:<port>`, `[::1]:<port>`, `[::]:<port>` or `unix://<path>`.
fn default_endpoint(endpoint: &str) -> syntax::Check {
    if let Some(path) = endpoint.strip_prefix("unix://") {
        return syntax::unix_address(path);
    }
    let (host, port) = endpoint
        .rsplit_once(':')
        .ok_or_else(|| format!("address {endpoint}: missing port in address"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if !matches!(host, "" | "127.0.0.1" | "0.0.0.0" | "::1" | "::") {
        return Err("sidecar: defaultEndpoint must be of form 127.0.0.1:<port>,0.0.0.0:<port>,[::1]:port,[::]:port,unix://filepath or unset".to_owned());
    }
    let number: u32 = port
        .parse()
        .map_err(|e| format!("sidecar: defaultEndpoint port ({port}) is not a number: {e}"))?;
    syntax::port(number)
}

fn egress(listeners: &[IstioEgressListener], at: &FieldPath, report: &mut Report) {
    let mut ports = HashSet::new();
    let mut sockets = HashSet::new();
    let mut portless = 0;
    for (i, listener) in listeners.iter().enumerate() {
        let here = at.index(i);
        match &listener.port {
            None => {
                portless += 1;
                if portless > 1 {
                    report.error(
                        &here,
                        "sidecar: egress can have only one listener with empty port",
                    );
                } else if i + 1 != listeners.len() {
                    report.error(&here, "sidecar: the egress listener with empty port should be the last listener in the list");
                }
            }
            Some(port) => {
                let port_at = here.field("port");
                if port.target_port > 0 {
                    report.error(
                        &port_at.field("targetPort"),
                        "targetPort has no impact on Sidecars",
                    );
                }
                if !port.name.is_empty() {
                    report.check(&port_at.field("name"), syntax::port_name(&port.name));
                }
                report.check(
                    &port_at.field("protocol"),
                    syntax::optional_protocol(&port.protocol),
                );
                if port.number == 0 {
                    unix_listener(listener, &mut sockets, &here, report);
                } else {
                    report.check(&port_at.field("number"), syntax::port(port.number));
                    if !listener.bind.is_empty() {
                        report.check(&here.field("bind"), syntax::ip_address(&listener.bind));
                    }
                    if !ports.insert(port.number) {
                        report.error(
                            &port_at.field("number"),
                            "sidecar: ports on IP bound listeners must be unique",
                        );
                    }
                }
            }
        }
        egress_hosts(&listener.hosts, &here.field("hosts"), report);
    }
}

fn unix_listener(
    listener: &IstioEgressListener,
    sockets: &mut HashSet<String>,
    at: &FieldPath,
    report: &mut Report,
) {
    match listener.bind.strip_prefix("unix://") {
        None => report.error(
            &at.field("bind"),
            "sidecar: ports with 0 value must have a unix domain socket bind address",
        ),
        Some(path) => {
            report.check(&at.field("bind"), syntax::unix_address(path));
            if !sockets.insert(listener.bind.clone()) {
                report.error(
                    &at.field("bind"),
                    "sidecar: unix domain socket values for listeners must be unique",
                );
            }
        }
    }
    if !matches!(
        listener.capture_mode,
        None | Some(CaptureMode::Default | CaptureMode::None)
    ) {
        report.error(
            &at.field("captureMode"),
            "sidecar: captureMode must be DEFAULT/NONE for unix domain socket listeners",
        );
    }
}

fn egress_hosts(hosts: &[String], at: &FieldPath, report: &mut Report) {
    if hosts.is_empty() {
        report.error(
            at,
            "sidecar: egress listener must contain at least one host",
        );
    }
    let mut seen = HashSet::new();
    for (i, host) in hosts.iter().enumerate() {
        let here = at.index(i);
        let mut errors = gateway::namespace_slash_host(host, false, false);
        errors.dedup();
        for e in errors {
            report.error(&here, e);
        }
        if !seen.insert(host.as_str()) {
            report.warn(&here, format!("duplicated egress host: {host}"));
        }
    }
    if hosts.iter().any(|h| h == "*/*") && hosts.iter().any(|h| !h.starts_with("*/")) {
        report.warn(
            at,
            "`*/*` host select all resources, no other hosts can be added",
        );
    }
}

//! ServiceEntry rules.

use std::collections::HashSet;

use crate::networking::service_entry::{Resolution, ServiceEntry};
use crate::object::Object;
use crate::path::FieldPath;
use crate::validation::Report;
use crate::validation::shared;
use crate::validation::syntax;
use crate::validation::workload::{self, EntryUse};

const AUTO_ALLOCATE_LABEL: &str = "networking.istio.io/enable-autoallocate-ip";

pub fn validate(se: &ServiceEntry, object: &Object, at: &FieldPath, report: &mut Report) {
    if let Some(selector) = &se.workload_selector {
        let here = at.field("workloadSelector").field("labels");
        if selector.labels.is_empty() {
            report.warn(&here, "service entry: workload selector specified without labels, will be applied to all services in namespace");
        }
        shared::entry_selector_labels(&selector.labels, &here, report);
        if !se.endpoints.is_empty() {
            report.error(at, "only one of WorkloadSelector or Endpoints can be set");
        }
    }
    hosts(se, at, report);
    addresses(se, at, report);
    let auto_allocate = se.resolution != Resolution::None
        && se.addresses.is_empty()
        && !object
            .meta
            .labels
            .as_ref()
            .and_then(|l| l.get(AUTO_ALLOCATE_LABEL))
            .is_some_and(|v| v.eq_ignore_ascii_case("false"));
    ports(se, auto_allocate, at, report);
    let port_names: Vec<&str> = se.ports.iter().map(|p| p.name.as_str()).collect();
    resolution(se, &port_names, at, report);
    shared::export_to(&se.export_to, &at.field("exportTo"), true, report);
}

fn hosts(se: &ServiceEntry, at: &FieldPath, report: &mut Report) {
    if se.hosts.is_empty() {
        report.error(
            &at.field("hosts"),
            "service entry must have at least one host",
        );
    }
    if se.hosts.len() > 256 {
        report.error(&at.field("hosts"), "must have at most 256 items");
    }
    for (i, host) in se.hosts.iter().enumerate() {
        let here = at.field("hosts").index(i);
        if host == "*" {
            report.error(&here, "hostname cannot be wildcard: invalid host *");
            continue;
        }
        report.check(&here, syntax::wildcard_domain(host));
        if let Err(e) = syntax::partial_wildcard(host) {
            report.warn(&here, e);
        }
    }
}

fn addresses(se: &ServiceEntry, at: &FieldPath, report: &mut Report) {
    let mut cidr = false;
    for (i, address) in se.addresses.iter().enumerate() {
        let here = at.field("addresses").index(i);
        if address.len() > 64 {
            report.error(&here, "must have at most 64 characters");
        }
        report.check(&here, syntax::ip_subnet(address));
        cidr |= address.contains('/');
    }
    if cidr && !matches!(se.resolution, Resolution::None | Resolution::Static) {
        report.error(
            &at.field("addresses"),
            "CIDR addresses are allowed only for NONE/STATIC resolution types",
        );
    }
}

fn ports(se: &ServiceEntry, auto_allocate: bool, at: &FieldPath, report: &mut Report) {
    let mut names = HashSet::new();
    let mut numbers = HashSet::new();
    for (i, port) in se.ports.iter().enumerate() {
        let here = at.field("ports").index(i);
        if !names.insert(port.name.as_str()) {
            report.error(
                &here.field("name"),
                format!(
                    "Duplicate value: service entry port name {:?} already defined",
                    port.name
                ),
            );
        }
        if !numbers.insert(port.number) {
            report.error(
                &here.field("number"),
                format!(
                    "port number cannot be duplicated: service entry port {} already defined",
                    port.number
                ),
            );
        }
        if syntax::port(port.number).is_err() {
            report.error(
                &here.field("number"),
                format!("port must be between 1-65535, got {}", port.number),
            );
        }
        if port.target_port != 0 && syntax::port(port.target_port).is_err() {
            report.error(
                &here.field("targetPort"),
                format!("port must be between 1-65535, got {}", port.target_port),
            );
        }
        if se.addresses.is_empty()
            && !auto_allocate
            && (port.protocol.is_empty() || port.protocol == "TCP")
        {
            report.warn(&here, "addresses are required for ports serving TCP (or unset) protocol when IP Autoallocation is not enabled");
        }
        report.check(&here.field("name"), syntax::port_name(&port.name));
        report.check(
            &here.field("protocol"),
            syntax::optional_protocol(&port.protocol),
        );
    }
}

fn resolution(se: &ServiceEntry, port_names: &[&str], at: &FieldPath, report: &mut Report) {
    let endpoints = at.field("endpoints");
    match se.resolution {
        Resolution::None => {
            if !se.endpoints.is_empty() {
                report.error(&endpoints, "NONE mode cannot set endpoints: no endpoints should be provided for resolution type none");
            }
            if se.workload_selector.is_some() {
                report.warn(
                    &at.field("workloadSelector"),
                    "workloadSelector should not be set when resolution mode is NONE",
                );
            }
        }
        Resolution::Static => {
            for (i, ep) in se.endpoints.iter().enumerate() {
                let used_as = EntryUse::ServiceEndpoint {
                    service_ports: port_names,
                    static_only: true,
                };
                endpoint(ep, used_as, &endpoints.index(i), report);
            }
        }
        Resolution::Dns | Resolution::DnsRoundRobin | Resolution::DynamicDns => {
            if se.endpoints.is_empty() && se.resolution != Resolution::DynamicDns {
                for (i, host) in se.hosts.iter().enumerate() {
                    if syntax::fqdn(host).is_err() {
                        report.error(&at.field("hosts").index(i), "hosts must be FQDN if no endpoints are provided for resolution mode DNS");
                    }
                }
            }
            if se.resolution == Resolution::DnsRoundRobin && se.endpoints.len() > 1 {
                report.error(&endpoints, "DNS_ROUND_ROBIN mode cannot have multiple endpoints: there must only be 0 or 1 endpoint for resolution mode DNS_ROUND_ROBIN");
            }
            for (i, ep) in se.endpoints.iter().enumerate() {
                let used_as = EntryUse::ServiceEndpoint {
                    service_ports: port_names,
                    static_only: false,
                };
                endpoint(ep, used_as, &endpoints.index(i), report);
            }
            if se.workload_selector.is_some() {
                report.warn(
                    &at.field("workloadSelector"),
                    "workloadSelector should not be set when resolution mode is DNS",
                );
            }
            let tcp = se
                .ports
                .iter()
                .any(|p| syntax::protocol(&p.protocol).is_some_and(|p| p.is_tcp()));
            if !se.addresses.is_empty() && tcp && se.hosts.len() > 1 {
                report.warn(at, "service entry can not have more than one host specified simultaneously with address and tcp port");
            }
        }
    }
    if se.resolution != Resolution::None && se.hosts.len() > 1 {
        let opaque = se
            .ports
            .iter()
            .any(|p| syntax::protocol(&p.protocol).is_none_or(|p| !p.is_http() && !p.is_tls()));
        if opaque {
            report.error(
                &at.field("hosts"),
                "multiple hosts provided with non-HTTP, non-TLS ports",
            );
        }
    }
}

fn endpoint(
    ep: &crate::networking::workload_entry::WorkloadEntry,
    used_as: EntryUse<'_>,
    at: &FieldPath,
    report: &mut Report,
) {
    if ep.address.is_empty() && ep.network.is_empty() {
        report.error(&at.field("address"), "Address is required");
        return;
    }
    workload::entry(ep, used_as, at, report);
}

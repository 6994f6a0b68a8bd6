//! DestinationRule rules, and the traffic-policy pieces Sidecars reuse.

use std::collections::HashSet;

use crate::networking::destination_rule::{
    ClientTlsMode, ClientTlsSettings, ConnectionPoolSettings, DestinationRule, H2UpgradePolicy,
    LoadBalancerSettings, LocalityLbSetting, OutlierDetection, PortTrafficPolicy, TrafficPolicy,
};
use crate::path::FieldPath;
use crate::validation::Report;
use crate::validation::shared;
use crate::validation::syntax::{self, Check};

pub fn validate(dr: &DestinationRule, at: &FieldPath, report: &mut Report) {
    report.check(&at.field("host"), syntax::wildcard_domain(&dr.host));
    if let Some(policy) = &dr.traffic_policy {
        traffic_policy(policy, &at.field("trafficPolicy"), report);
    }
    let mut names = HashSet::new();
    for (i, subset) in dr.subsets.iter().enumerate() {
        let here = at.field("subsets").index(i);
        if !names.insert(subset.name.as_str()) {
            report.error(
                &here.field("name"),
                format!("duplicate subset names: {}", subset.name),
            );
        }
        report.check(&here.field("name"), shared::subset_name(&subset.name));
        for e in syntax::labels(&subset.labels) {
            report.error(&here.field("labels"), e);
        }
        if let Some(policy) = &subset.traffic_policy {
            traffic_policy(policy, &here.field("trafficPolicy"), report);
        }
    }
    let exported = shared::export_to(&dr.export_to, &at.field("exportTo"), false, report);
    if let Some(selector) = &dr.workload_selector {
        let here = at.field("workloadSelector");
        shared::workload_selector(Some(selector), &here, report);
        if !dr.export_to.is_empty() {
            if !exported.contains(&report.namespace) {
                report.error(&at.field("exportTo"), "destination rule with workload selector cannot have exportTo beyond current namespace");
            } else if exported.len() > 1 {
                report.error(&at.field("exportTo"), "destination rule with workload selector cannot have multiple entries in exportTo");
            }
        }
    }
}

fn traffic_policy(p: &TrafficPolicy, at: &FieldPath, report: &mut Report) {
    let empty = p.outlier_detection.is_none()
        && p.connection_pool.is_none()
        && p.load_balancer.is_none()
        && p.tls.is_none()
        && p.port_level_settings.is_empty()
        && p.tunnel.is_none()
        && p.proxy_protocol.is_none()
        && p.retry_budget.is_none();
    if empty {
        report.error(at, "traffic policy must have at least one field");
        return;
    }
    if p.tunnel.is_some() && p.proxy_protocol.is_some() {
        report.error(at, "tunnel and proxyProtocol must not be set together");
        return;
    }
    policy_parts(
        p.outlier_detection.as_ref(),
        p.connection_pool.as_ref(),
        p.load_balancer.as_ref(),
        p.tls.as_ref(),
        at,
        report,
    );
    for (i, port_policy) in p.port_level_settings.iter().enumerate() {
        port_traffic_policy(port_policy, &at.field("portLevelSettings").index(i), report);
    }
    if p.port_level_settings.len() > 4096 {
        report.error(
            &at.field("portLevelSettings"),
            "must have at most 4096 items",
        );
    }
    if let Some(tunnel) = &p.tunnel {
        let here = at.field("tunnel");
        if !matches!(tunnel.protocol.as_str(), "" | "CONNECT" | "POST") {
            report.error(
                &here.field("protocol"),
                "tunnel protocol must be \"CONNECT\" or \"POST\"",
            );
        }
        if syntax::fqdn(&tunnel.target_host).is_err() && !syntax::is_ip(&tunnel.target_host) {
            report.error(
                &here.field("targetHost"),
                "tunnel target host must be valid FQDN or IP address",
            );
        }
        if let Err(e) = syntax::port(tunnel.target_port) {
            report.error(
                &here.field("targetPort"),
                format!("tunnel target port is invalid: {e}"),
            );
        }
    }
    if let Some(budget) = &p.retry_budget {
        let here = at.field("retryBudget");
        if budget.percent.is_some_and(|v| !(0.0..=100.0).contains(&v)) {
            report.error(
                &here.field("percent"),
                "Invalid value: must be between 0 and 100",
            );
        }
        if let Some(interval) = budget
            .budget_interval
            .filter(|d| *d != crate::duration::Duration::ZERO)
        {
            report.check(&here.field("budgetInterval"), syntax::duration(interval));
        }
    }
}

fn policy_parts(
    outlier: Option<&OutlierDetection>,
    pool: Option<&ConnectionPoolSettings>,
    lb: Option<&LoadBalancerSettings>,
    tls: Option<&ClientTlsSettings>,
    at: &FieldPath,
    report: &mut Report,
) {
    if let Some(outlier) = outlier {
        outlier_detection(outlier, &at.field("outlierDetection"), report);
    }
    if let Some(pool) = pool {
        connection_pool(pool, &at.field("connectionPool"), report);
    }
    if let Some(lb) = lb {
        load_balancer(lb, outlier.is_some(), &at.field("loadBalancer"), report);
    }
    if let Some(tls) = tls {
        client_tls(tls, &at.field("tls"), report);
    }
}

fn port_traffic_policy(p: &PortTrafficPolicy, at: &FieldPath, report: &mut Report) {
    if p.port.is_none() {
        report.error(&at.field("port"), "portTrafficPolicy must have valid port");
    }
    if p.outlier_detection.is_none()
        && p.connection_pool.is_none()
        && p.load_balancer.is_none()
        && p.tls.is_none()
    {
        report.error(at, "port traffic policy must have at least one field");
        return;
    }
    policy_parts(
        p.outlier_detection.as_ref(),
        p.connection_pool.as_ref(),
        p.load_balancer.as_ref(),
        p.tls.as_ref(),
        at,
        report,
    );
}

fn outlier_detection(o: &OutlierDetection, at: &FieldPath, report: &mut Report) {
    for (field, d) in [
        ("baseEjectionTime", o.base_ejection_time),
        ("interval", o.interval),
    ] {
        if let Some(d) = d {
            report.check(&at.field(field), syntax::duration(d));
        }
    }
    if o.consecutive_errors.is_some_and(|n| n != 0) {
        report.warn(&at.field("consecutiveErrors"), "outlier detection consecutive errors is deprecated, use consecutiveGatewayErrors or consecutive5xxErrors instead");
    }
    if o.consecutive_local_origin_failures.is_some_and(|n| n > 0)
        && o.split_external_local_origin_errors != Some(true)
    {
        report.error(&at.field("consecutiveLocalOriginFailures"), "outlier detection consecutive local origin failures is specified, but split external local origin errors is set to false");
    }
    for (field, v) in [
        ("maxEjectionPercent", o.max_ejection_percent),
        ("minHealthPercent", o.min_health_percent),
    ] {
        if let Some(v) = v.filter(|v| !(0..=100).contains(v)) {
            report.error(
                &at.field(field),
                format!("percentage {v} is not in range 0..100"),
            );
        }
    }
}

/// Connection pool limits: used by DestinationRules and Sidecar inbound settings.
pub fn connection_pool(pool: &ConnectionPoolSettings, at: &FieldPath, report: &mut Report) {
    if pool.http.is_none() && pool.tcp.is_none() {
        report.error(at, "connection pool must have at least one field");
        return;
    }
    if let Some(http) = &pool.http {
        let here = at.field("http");
        let counters = [
            (
                "http1MaxPendingRequests",
                http.http1_max_pending_requests,
                "http1 max pending requests must be non-negative",
            ),
            (
                "http2MaxRequests",
                http.http2_max_requests,
                "http2 max requests must be non-negative",
            ),
            (
                "maxRequestsPerConnection",
                http.max_requests_per_connection,
                "max requests per connection must be non-negative",
            ),
            (
                "maxRetries",
                http.max_retries,
                "max retries must be non-negative",
            ),
            (
                "maxConcurrentStreams",
                http.max_concurrent_streams,
                "max concurrent streams must be non-negative",
            ),
        ];
        for (field, value, message) in counters {
            if value < 0 {
                report.error(&here.field(field), message);
            }
        }
        if let Some(d) = http.idle_timeout {
            report.check(&here.field("idleTimeout"), syntax::duration(d));
        }
        if http.h2_upgrade_policy == Some(H2UpgradePolicy::Upgrade) && http.use_client_protocol {
            report.error(
                &here,
                "use client protocol must not be true when H2UpgradePolicy is UPGRADE",
            );
        }
        if let Some(keepalive) = &http.http2_keep_alive {
            for (field, d) in [
                ("interval", keepalive.interval),
                ("timeout", keepalive.timeout),
            ] {
                if let Some(d) = d {
                    report.check(
                        &here.field("http2KeepAlive").field(field),
                        syntax::duration(d),
                    );
                }
            }
        }
    }
    if let Some(tcp) = &pool.tcp {
        let here = at.field("tcp");
        if tcp.max_connections < 0 {
            report.error(
                &here.field("maxConnections"),
                "max connections must be non-negative",
            );
        }
        for (field, d) in [
            ("connectTimeout", tcp.connect_timeout),
            ("maxConnectionDuration", tcp.max_connection_duration),
        ] {
            if let Some(d) = d {
                report.check(&here.field(field), syntax::duration(d));
            }
        }
        // An idle timeout of 0 turns idle closing off.
        if let Some(d) = tcp
            .idle_timeout
            .filter(|d| *d != crate::duration::Duration::ZERO)
        {
            report.check(&here.field("idleTimeout"), syntax::duration(d));
        }
        if let Some(keepalive) = &tcp.tcp_keepalive {
            for (field, d) in [("time", keepalive.time), ("interval", keepalive.interval)] {
                if let Some(d) = d {
                    report.check(
                        &here.field("tcpKeepalive").field(field),
                        syntax::duration(d),
                    );
                }
            }
        }
    }
}

fn load_balancer(
    lb: &LoadBalancerSettings,
    has_outlier: bool,
    at: &FieldPath,
    report: &mut Report,
) {
    if lb.simple.is_some() && lb.consistent_hash.is_some() {
        report.error(at, "only one of simple or consistentHash may be set");
    }
    if let Some(hash) = &lb.consistent_hash {
        let here = at.field("consistentHash");
        let keys = [
            hash.http_header_name.is_some(),
            hash.http_cookie.is_some(),
            hash.use_source_ip.is_some(),
            hash.http_query_parameter_name.is_some(),
        ];
        if keys.iter().filter(|k| **k).count() > 1 {
            report.error(&here, "only one of httpHeaderName, httpCookie, useSourceIp or httpQueryParameterName may be set");
        }
        if hash.ring_hash.is_some() && hash.maglev.is_some() {
            report.error(&here, "only one of ringHash or maglev may be set");
        }
        if hash.http_cookie.as_ref().is_some_and(|c| c.name.is_empty()) {
            report.error(
                &here.field("httpCookie").field("name"),
                "name required for HttpCookie",
            );
        }
        if hash.minimum_ring_size.is_some_and(|n| n != 0) {
            report.warn(&here.field("minimumRingSize"), "consistent hash MinimumRingSize is deprecated, use ConsistentHashLB's RingHash configuration instead");
            if hash.ring_hash.is_some() || hash.maglev.is_some() {
                report.error(
                    &here,
                    "only one of MinimumRingSize or Maglev/Ringhash can be specified",
                );
            }
        }
        if let Some(maglev) = &hash.maglev {
            report.check(
                &here.field("maglev").field("tableSize"),
                maglev_table_size(maglev.table_size),
            );
        }
    }
    if let Some(locality) = &lb.locality_lb_setting {
        locality_lb(
            locality,
            has_outlier,
            &at.field("localityLbSetting"),
            report,
        );
    }
    if let Some(warmup) = &lb.warmup {
        let here = at.field("warmup");
        report.check(&here.field("duration"), syntax::duration(warmup.duration));
        if warmup
            .minimum_percent
            .is_some_and(|p| !(0.0..=100.0).contains(&p))
        {
            report.error(&here.field("minimumPercent"), "Invalid value: minimumPercent value should be less than or equal to 100 and not negative");
        }
        if let Some(aggression) = warmup.aggression
            && aggression < 1.0
        {
            report.error(
                &here.field("aggression"),
                "Invalid value: aggression should be greater than or equal to 1",
            );
        }
    }
    if let Some(d) = lb.warmup_duration_secs {
        report.check(&at.field("warmupDurationSecs"), syntax::duration(d));
    }
}

fn maglev_table_size(size: u64) -> Check {
    if size == 0 {
        return Err("tableSize must be set for maglev".to_owned());
    }
    if size >= 5_000_011 {
        return Err("tableSize must be less than 5000011 for maglev".to_owned());
    }
    let prime = size < 4
        || (!size.is_multiple_of(2)
            && (3..)
                .step_by(2)
                .take_while(|d| d * d <= size)
                .all(|d| !size.is_multiple_of(d)));
    if !prime {
        return Err("tableSize must be a prime number for maglev".to_owned());
    }
    Ok(())
}

const TOPOLOGY_LABELS: &[&str] = &[
    "topology.kubernetes.io/region",
    "topology.kubernetes.io/zone",
    "topology.istio.io/subzone",
];

/// The mesh config's `localityLbSetting`, checked as a DestinationRule's:
/// the first error, naming the field.
pub fn mesh_locality_lb(lb: &LocalityLbSetting) -> Result<(), String> {
    let mut report = Report::new("");
    // Outlier detection is per DestinationRule: not the mesh setting's to need.
    locality_lb(
        lb,
        true,
        &FieldPath::root().field("localityLbSetting"),
        &mut report,
    );
    match report
        .into_findings()
        .into_iter()
        .find(|f| f.severity == crate::diagnostic::Severity::Error)
    {
        Some(f) => Err(format!("{}: {}", f.path, f.message)),
        None => Ok(()),
    }
}

fn locality_lb(lb: &LocalityLbSetting, has_outlier: bool, at: &FieldPath, report: &mut Report) {
    if !lb.distribute.is_empty() && !lb.failover.is_empty() {
        report.error(
            at,
            "can not simultaneously specify 'distribute' and 'failover'",
        );
        return;
    }
    if !lb.failover.is_empty()
        && let Some(label) = lb
            .failover_priority
            .iter()
            .find(|l| TOPOLOGY_LABELS.contains(&l.as_str()))
    {
        report.error(at, format!("can not simultaneously set 'failover' and topology label '{label}' in 'failover_priority'"));
        return;
    }
    let mut froms = Vec::new();
    for (i, distribute) in lb.distribute.iter().enumerate() {
        let here = at.field("distribute").index(i);
        if distribute.to.values().any(|w| !(1..=100).contains(w)) {
            report.error(
                &here.field("to"),
                "locality weight must be in range [1, 100]",
            );
            return;
        }
        let total: u32 = distribute.to.values().sum();
        if total != 100 {
            report.error(
                &here.field("to"),
                format!("total locality weight {total} != 100"),
            );
            return;
        }
        let targets: Vec<&str> = distribute.to.keys().map(String::as_str).collect();
        report.check(&here.field("to"), localities(&targets));
        froms.push(distribute.from.as_str());
    }
    report.check(&at.field("distribute"), localities(&froms));
    if (!lb.failover.is_empty() || !lb.failover_priority.is_empty()) && !has_outlier {
        report.warn(at, "outlier detection policy must be provided for failover");
    }
    for (i, failover) in lb.failover.iter().enumerate() {
        let here = at.field("failover").index(i);
        if failover.from == failover.to {
            report.error(
                &here,
                "locality lb failover settings must specify different regions",
            );
        }
        if failover.from.contains('/') || failover.to.contains('/') {
            report.error(&here, "locality lb failover only specify region");
        }
        if failover.from.contains('*') || failover.to.contains('*') {
            report.error(
                &here,
                "locality lb failover region should not contain '*' wildcard",
            );
        }
    }
}

/// `region/zone/subzone` patterns, `*` only last, none covering another.
fn localities(list: &[&str]) -> Check {
    let mut previous: Vec<Vec<&str>> = Vec::new();
    for locality in list {
        if locality.matches('*').count() > 1 || (locality.contains('*') && !locality.ends_with('*'))
        {
            return Err(format!(
                "locality {locality} wildcard '*' number can not exceed 1 and must be in the end"
            ));
        }
        let parts: Vec<&str> = locality.splitn(3, '/').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(format!(
                "locality {locality} must not contain empty region/zone/subzone info"
            ));
        }
        let overlaps = previous.iter().any(|p| {
            p.iter()
                .zip(parts.iter())
                .all(|(a, b)| a == b || *a == "*" || *b == "*")
                && (p.len() == parts.len() || p.last() == Some(&"*") || parts.last() == Some(&"*"))
        });
        if overlaps {
            return Err(format!(
                "locality {locality} overlap with previous specified ones"
            ));
        }
        previous.push(parts);
    }
    Ok(())
}

/// Client TLS settings (`ClientTLSSettings`), for DestinationRules.
fn client_tls(tls: &ClientTlsSettings, at: &FieldPath, report: &mut Report) {
    if let Some(name) = tls
        .credential_name
        .as_deref()
        .filter(|n| n.starts_with("configmap://"))
    {
        let namespace = name
            .trim_start_matches("configmap://")
            .split('/')
            .next()
            .unwrap_or_default();
        if namespace.is_empty() || namespace != report.namespace {
            let message = format!(
                "invalid configmap:// credentialName: namespace must match the configuration namespace {:?}",
                report.namespace
            );
            report.error(&at.field("credentialName"), message);
        }
    }
    let set = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.is_empty());
    if tls.insecure_skip_verify == Some(true) {
        let verification = set(&tls.ca_certificates) || !tls.subject_alt_names.is_empty();
        match tls.mode {
            ClientTlsMode::Simple if verification || set(&tls.credential_name) => report.error(
                at,
                "cannot specify CaCertificates or CredentialName or SubjectAltNames when InsecureSkipVerify is set true",
            ),
            ClientTlsMode::Mutual if verification => {
                report.error(at, "cannot specify CaCertificates or SubjectAltNames when InsecureSkipVerify is set true")
            }
            _ => {}
        }
    }
    let files = set(&tls.client_certificate)
        || set(&tls.ca_certificates)
        || set(&tls.private_key)
        || set(&tls.ca_crl);
    if matches!(tls.mode, ClientTlsMode::Simple | ClientTlsMode::Mutual)
        && set(&tls.credential_name)
    {
        if files {
            report.error(at, "cannot specify client certificates or CA certificate or CA CRL If credentialName is set");
        }
        return;
    }
    if tls.mode == ClientTlsMode::Mutual {
        if !set(&tls.client_certificate) {
            report.error(
                &at.field("clientCertificate"),
                "client certificate required for mutual tls",
            );
        }
        if !set(&tls.private_key) {
            report.error(
                &at.field("privateKey"),
                "private key required for mutual tls",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maglev_sizes() {
        assert_eq!(maglev_table_size(65537), Ok(()));
        assert!(maglev_table_size(65536).is_err());
        assert!(maglev_table_size(0).is_err());
        assert!(maglev_table_size(5_000_011).is_err());
    }

    #[test]
    fn locality_overlap() {
        assert_eq!(localities(&["us-east/zone1", "us-east/zone2"]), Ok(()));
        assert!(localities(&["us-east/*", "us-east/zone2"]).is_err());
        assert!(localities(&["us-*/zone"]).is_err());
        assert!(localities(&["us-east//x"]).is_err());
    }
}

//! EnvoyFilter rules. The patch values are Envoy's own schema and are not checked
//! here beyond being objects.

use crate::networking::envoy_filter::{
    ApplyTo, EnvoyConfigObjectPatch, EnvoyFilter, Operation, PatchContext,
};
use crate::path::FieldPath;
use crate::validation::Report;
use crate::validation::shared;
use crate::validation::syntax;

const HCM: &str = "envoy.filters.network.http_connection_manager";
const HCM_LEGACY: &str = "envoy.http_connection_manager";

pub fn validate(ef: &EnvoyFilter, at: &FieldPath, report: &mut Report) {
    if ef.workload_selector.is_some() && !ef.target_refs.is_empty() {
        report.error(at, "only one of targetRefs or workloadSelector can be set");
    }
    for (i, target) in ef.target_refs.iter().enumerate() {
        shared::target_ref_shape(target, &at.field("targetRefs").index(i), report);
    }
    if let Some(selector) = &ef.workload_selector {
        let here = at.field("workloadSelector").field("labels");
        let before = report.has_errors();
        shared::entry_selector_labels(&selector.labels, &here, report);
        if !before && report.has_errors() {
            return;
        }
        if selector.labels.is_empty() {
            report.warn(&here, "Envoy filter: workload selector specified without labels, will be applied to all services in namespace");
        }
    }
    report.warn(at, "EnvoyFilter exposes internal implementation details that may change at any time. Prefer other APIs if possible, and exercise extreme caution, especially around upgrades.");
    for (i, patch) in ef.config_patches.iter().enumerate() {
        config_patch(patch, &at.field("configPatches").index(i), report);
    }
    if !ef.target_refs.is_empty() {
        report.warn(
            &at.field("targetRefs"),
            "oxmesh does not apply EnvoyFilters by targetRefs yet; this EnvoyFilter is not applied",
        );
    }
    for (i, patch) in ef.config_patches.iter().enumerate() {
        if let Some(why) = patch.unsupported_by_oxmesh() {
            report.warn(
                &at.field("configPatches").index(i),
                format!("{why}; this EnvoyFilter is not applied"),
            );
        }
    }
}

fn config_patch(p: &EnvoyConfigObjectPatch, at: &FieldPath, report: &mut Report) {
    let match_at = at.field("match");
    if let Some(m) = &p.matches {
        let waypoint_context = m.context == Some(PatchContext::Waypoint);
        if waypoint_context != m.waypoint.is_some() {
            report.error(
                &match_at,
                "Invalid value: \"object\": only support waypointMatch when context is WAYPOINT",
            );
        }
        let kinds = [
            m.listener.is_some(),
            m.route_configuration.is_some(),
            m.cluster.is_some(),
            m.waypoint.is_some(),
        ];
        if kinds.iter().filter(|k| **k).count() > 1 {
            report.error(
                &match_at,
                "only one of listener, routeConfiguration, cluster or waypoint may be set",
            );
        }
        if let Some(port) = m
            .waypoint
            .as_ref()
            .map(|w| w.port_number)
            .filter(|p| *p != 0)
            && syntax::port(port).is_err()
        {
            report.error(
                &match_at.field("waypoint").field("portNumber"),
                "Invalid value: \"integer\": port must be between 1-65535",
            );
        }
    }
    let Some(apply_to) = p.apply_to.filter(|a| *a != ApplyTo::Invalid) else {
        report.error(&at.field("applyTo"), "Envoy filter: missing applyTo");
        return;
    };
    let Some(patch) = &p.patch else {
        report.error(&at.field("patch"), "Envoy filter: missing patch");
        return;
    };
    let Some(operation) = patch.operation.filter(|o| *o != Operation::Invalid) else {
        report.error(
            &at.field("patch").field("operation"),
            "Envoy filter: missing patch operation",
        );
        return;
    };
    if operation != Operation::Remove && patch.value.is_none() {
        report.error(
            &at.field("patch").field("value"),
            "Envoy filter: missing patch value for non-remove operation",
        );
        return;
    }
    let Some(m) = &p.matches else { return };
    if let Some(version) = m
        .proxy
        .as_ref()
        .map(|p| p.proxy_version.as_str())
        .filter(|v| !v.is_empty())
        && regex::Regex::new(version).is_err()
    {
        report.error(
            &match_at.field("proxy").field("proxyVersion"),
            format!("Envoy filter: invalid regex for proxy version, [{version}]"),
        );
    }
    match_kind(apply_to, m, &match_at, report);
}

fn match_kind(
    apply_to: ApplyTo,
    m: &crate::networking::envoy_filter::EnvoyConfigObjectMatch,
    at: &FieldPath,
    report: &mut Report,
) {
    let other = m.route_configuration.is_some() || m.cluster.is_some();
    match apply_to {
        ApplyTo::Listener | ApplyTo::FilterChain | ApplyTo::NetworkFilter | ApplyTo::HttpFilter
            if other =>
        {
            report.error(
                at,
                "Envoy filter: applyTo for listener class objects cannot have non listener match",
            );
        }
        ApplyTo::RouteConfiguration | ApplyTo::VirtualHost | ApplyTo::HttpRoute
            if m.listener.is_some() || m.cluster.is_some() =>
        {
            report.error(at, "Envoy filter: applyTo for http route class objects cannot have non route configuration match");
        }
        ApplyTo::Cluster if m.listener.is_some() || m.route_configuration.is_some() => {
            report.error(
                at,
                "Envoy filter: applyTo for cluster class objects cannot have non cluster match",
            );
        }
        _ => {}
    }
    let Some(filter) = m
        .listener
        .as_ref()
        .and_then(|l| l.filter_chain.as_ref())
        .and_then(|c| c.filter.as_ref())
    else {
        return;
    };
    let filter_at = at.field("listener").field("filterChain").field("filter");
    if matches!(apply_to, ApplyTo::Listener | ApplyTo::FilterChain) {
        report.warn(
            &filter_at,
            format!("Envoy filter: filter match has no effect when used with {apply_to:?}"),
        );
    }
    if filter.name.is_empty() {
        report.error(
            &filter_at.field("name"),
            "Envoy filter: filter match has no name to match on",
        );
        return;
    }
    if filter.name == HCM_LEGACY {
        report.warn(
            &filter_at.field("name"),
            format!("using deprecated filter name {HCM_LEGACY:?}; use {HCM:?} instead"),
        );
    }
    let Some(sub) = &filter.sub_filter else {
        return;
    };
    if apply_to != ApplyTo::HttpFilter {
        report.error(
            &filter_at.field("subFilter"),
            "Envoy filter: subfilter match can be used with applyTo HTTP_FILTER only",
        );
    } else if filter.name != HCM && filter.name != HCM_LEGACY {
        report.error(&filter_at.field("subFilter"), "Envoy filter: subfilter match requires filter match with envoy.filters.network.http_connection_manager");
    } else if sub.name.is_empty() {
        report.error(
            &filter_at.field("subFilter").field("name"),
            "Envoy filter: subfilter match has no name to match on",
        );
    }
}

//! Per-object checks, as Istio's validating webhook and its CRD schemas make them.
//!
//! Istio checks an object in two layers: the CRD schema (types, enums, ranges and
//! CEL rules, enforced by the API server) and Go code in its webhook. oxmesh runs
//! both at once; where the two disagree, docs/compatibility.md says which wins.

mod authorization_policy;
pub(crate) mod destination_rule;
mod envoy_filter;
mod gateway;
mod gateway_api;
mod peer_authentication;
mod proxy_config;
mod report;
mod request_authentication;
mod service_entry;
mod shared;
mod sidecar;
pub mod syntax;
mod telemetry;
mod unreachable_rules;
mod virtual_service;
mod wasm_plugin;
mod workload;

use crate::diagnostic::Finding;
use crate::object::{Object, Resource};
use crate::path::FieldPath;

pub(crate) use report::Report;

/// Every error and warning about one object.
pub fn validate(object: &Object) -> Vec<Finding> {
    let mut report = Report::new(object.namespace().unwrap_or_default());
    shared::metadata(object, &mut report);
    let spec = FieldPath::root().field("spec");
    let r = &mut report;
    match &object.resource {
        Resource::VirtualService(vs) => virtual_service::validate(vs, object, &spec, r),
        Resource::DestinationRule(dr) => destination_rule::validate(dr, &spec, r),
        Resource::Gateway(gw) => gateway::validate(gw, object, &spec, r),
        Resource::ServiceEntry(se) => service_entry::validate(se, object, &spec, r),
        Resource::Sidecar(sc) => sidecar::validate(sc, &spec, r),
        Resource::WorkloadEntry(we) => workload::validate_entry(we, &spec, r),
        Resource::WorkloadGroup(wg) => workload::validate_group(wg, &spec, r),
        Resource::EnvoyFilter(ef) => envoy_filter::validate(ef, &spec, r),
        Resource::ProxyConfig(pc) => proxy_config::validate(pc, &spec, r),
        Resource::PeerAuthentication(pa) => peer_authentication::validate(pa, &spec, r),
        Resource::RequestAuthentication(ra) => request_authentication::validate(ra, &spec, r),
        Resource::AuthorizationPolicy(ap) => authorization_policy::validate(ap, &spec, r),
        Resource::Telemetry(t) => telemetry::validate(t, &spec, r),
        Resource::WasmPlugin(w) => wasm_plugin::validate(w, &spec, r),
        Resource::GatewayClass(c) => gateway_api::validate_gateway_class(c, &spec, r),
        Resource::KubernetesGateway(g) => gateway_api::validate_gateway(g, &spec, r),
        Resource::HttpRoute(h) => gateway_api::validate_http_route(h, &spec, r),
        Resource::GrpcRoute(g) => gateway_api::validate_grpc_route(g, &spec, r),
        Resource::TcpRoute(t) => gateway_api::validate_tcp_route(t, &spec, r),
        Resource::TlsRoute(t) => gateway_api::validate_tls_route(t, &spec, r),
        Resource::ReferenceGrant(g) => gateway_api::validate_reference_grant(g, &spec, r),
        // Istio's mesh config, where istiod reads it by default.
        Resource::ConfigMap(_) if object.namespace() == Some("istio-system") => {
            if let Some(Err(e)) = crate::mesh::text_of(object).map(crate::mesh::parse) {
                r.error(&FieldPath::root().field("data").field("mesh"), e);
            }
        }
        _ => {}
    }
    report.into_findings()
}

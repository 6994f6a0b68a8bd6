//! Tracing as istiod writes it: Istio's sampling and tags with no Telemetry
//! (`enableTracing`), off with `enableTracing: false`, and Telemetry
//! `tracing` naming `opentelemetry` and `zipkin` extension providers at mesh,
//! namespace and workload level, with `match.mode`, sampling, custom tags and
//! `disableSpanReporting`; span names from route decorators.

use std::collections::HashMap;

use envoy_types::pb::envoy::config::core::v3::grpc_service;
use envoy_types::pb::envoy::config::listener::v3::{Listener, filter};
use envoy_types::pb::envoy::config::trace::v3::{
    OpenTelemetryConfig, ZipkinConfig, tracing::http::ConfigType,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::Tracing;
use envoy_types::pb::envoy::r#type::tracing::v3::custom_tag;
use oxmesh_control::push_context::PushContext;
use prost::Message;

mod policy;

const WORKLOADS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: httpbin, namespace: foo}
spec:
  selector: {app: httpbin}
  ports: [{name: http, port: 8000, targetPort: 80}]
---
apiVersion: v1
kind: Pod
metadata: {name: httpbin-1, namespace: foo, labels: {app: httpbin, service.istio.io/canonical-name: httpbin}}
spec:
  containers: [{name: httpbin, image: httpbin}]
status: {podIP: 198.18.20.9}
---
apiVersion: v1
kind: Service
metadata: {name: otel-collector, namespace: observability}
spec:
  ports: [{name: grpc-otlp, port: 4317}, {name: http-otlp, port: 4318}]
---
apiVersion: v1
kind: Service
metadata: {name: zipkin, namespace: istio-system}
spec:
  ports: [{name: http, port: 9411}]
"#;

const PROVIDERS: &str = r#"extensionProviders:
- name: otel
  opentelemetry: {service: observability/otel-collector.observability.svc.cluster.local, port: 4317}
- name: otel-http
  opentelemetry:
    service: otel-collector.observability.svc.cluster.local
    port: 4318
    http: {path: /v1/traces, timeout: 2s}
- name: zipkin
  zipkin: {service: zipkin.istio-system.svc.cluster.local, port: 9411}
"#;

fn context(extra: &str) -> PushContext {
    policy::context_of("tracing.yaml", &format!("{WORKLOADS}---\n{extra}"))
}

/// The mesh config's tracing providers and `telemetry`.
fn with_providers(telemetry: &str) -> PushContext {
    context(&format!(
        "{}---\n{telemetry}",
        policy::mesh_config_map(PROVIDERS)
    ))
}

/// The tracing of every connection manager of the listener.
fn tracings(listener: &Listener) -> Vec<Option<Tracing>> {
    listener
        .filter_chains
        .iter()
        .flat_map(|c| &c.filters)
        .filter_map(|f| match &f.config_type {
            Some(filter::ConfigType::TypedConfig(any))
                if any.type_url.ends_with("HttpConnectionManager") =>
            {
                Some(
                    HttpConnectionManager::decode(any.value.as_slice())
                        .expect("hcm")
                        .tracing,
                )
            }
            _ => None,
        })
        .collect()
}

/// The sidecar's outbound and inbound tracing (each the same on every
/// connection manager of its listener).
fn sidecar(ctx: &PushContext) -> (Option<Tracing>, Option<Tracing>) {
    let proxy = policy::proxy(
        "sidecar",
        "httpbin-1",
        "foo",
        &[
            ("app", "httpbin"),
            ("service.istio.io/canonical-name", "httpbin"),
        ],
    );
    let listeners = policy::listeners(ctx, &proxy);
    let one = |name: &str| {
        let all = tracings(policy::named(&listeners, name));
        assert!(!all.is_empty(), "{name} has connection managers");
        assert!(all.windows(2).all(|w| w[0] == w[1]), "{name}: {all:?}");
        all.into_iter().next().flatten()
    };
    (one("virtualOutbound"), one("virtualInbound"))
}

fn tags(t: &Tracing) -> HashMap<String, String> {
    t.custom_tags
        .iter()
        .map(|tag| {
            let value = match &tag.r#type {
                Some(custom_tag::Type::Literal(l)) => l.value.clone(),
                Some(custom_tag::Type::RequestHeader(h)) => format!("header:{}", h.name),
                Some(custom_tag::Type::Environment(e)) => format!("env:{}", e.name),
                other => format!("{other:?}"),
            };
            (tag.tag.clone(), value)
        })
        .collect()
}

fn opentelemetry(t: &Tracing) -> OpenTelemetryConfig {
    let provider = t.provider.as_ref().expect("a provider");
    assert_eq!(provider.name, "envoy.tracers.opentelemetry");
    let Some(ConfigType::TypedConfig(any)) = &provider.config_type else {
        panic!("typed config");
    };
    OpenTelemetryConfig::decode(any.value.as_slice()).expect("OpenTelemetryConfig")
}

#[test]
fn without_telemetry_requests_are_sampled_at_one_percent_with_istio_tags_and_no_tracer() {
    let (outbound, inbound) = sidecar(&context(""));
    let outbound = outbound.expect("enableTracing is on by default");
    assert_eq!(outbound.random_sampling.map(|p| p.value), Some(1.0));
    assert_eq!(outbound.overall_sampling.map(|p| p.value), Some(100.0));
    assert!(outbound.provider.is_none());
    let istio = tags(&outbound);
    assert_eq!(istio["istio.canonical_service"], "httpbin");
    assert_eq!(istio["istio.canonical_revision"], "latest");
    assert_eq!(istio["istio.namespace"], "foo");
    assert_eq!(istio["istio.mesh_id"], "cluster.local");
    assert_eq!(inbound, Some(outbound));

    let sampled = context(&policy::mesh_config_map(
        "defaultConfig:\n  tracing:\n    sampling: 25\n    customTags:\n      team: {literal: {value: payments}}",
    ));
    let (outbound, _) = sidecar(&sampled);
    let outbound = outbound.expect("tracing");
    assert_eq!(outbound.random_sampling.map(|p| p.value), Some(25.0));
    assert_eq!(tags(&outbound)["team"], "payments");

    let off = context(&policy::mesh_config_map("enableTracing: false"));
    assert_eq!(sidecar(&off), (None, None));
}

#[test]
fn a_mesh_wide_telemetry_sends_spans_to_an_opentelemetry_collector() {
    let telemetry = r#"
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  tracing:
  - providers: [{name: otel}]
    randomSamplingPercentage: 100
    customTags:
      team: {header: {name: x-team}}
"#;
    let ctx = with_providers(telemetry);
    let (outbound, inbound) = sidecar(&ctx);
    let outbound = outbound.expect("tracing");
    assert_eq!(outbound.random_sampling.map(|p| p.value), Some(100.0));
    let config = opentelemetry(&outbound);
    assert_eq!(config.service_name, "httpbin.foo");
    let Some(grpc_service::TargetSpecifier::EnvoyGrpc(grpc)) = config
        .grpc_service
        .as_ref()
        .and_then(|g| g.target_specifier.as_ref())
    else {
        panic!("an envoy_grpc service: {config:?}");
    };
    assert_eq!(
        grpc.cluster_name,
        "outbound|4317||otel-collector.observability.svc.cluster.local"
    );
    assert_eq!(
        grpc.authority,
        "otel-collector.observability.svc.cluster.local"
    );
    let tags = tags(&outbound);
    assert_eq!(tags["team"], "header:x-team");
    assert_eq!(tags["istio.canonical_service"], "httpbin");
    assert_eq!(inbound, Some(outbound));
}

#[test]
fn namespace_and_workload_levels_override_by_mode_and_can_turn_spans_off() {
    let telemetries = r#"
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  tracing:
  - providers: [{name: otel}]
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: foo-http, namespace: foo}
spec:
  tracing:
  - match: {mode: CLIENT}
    providers: [{name: otel-http}]
    randomSamplingPercentage: 10
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: httpbin-server-quiet, namespace: foo}
spec:
  selector: {matchLabels: {app: httpbin}}
  tracing:
  - match: {mode: SERVER}
    disableSpanReporting: true
"#;
    let ctx = with_providers(telemetries);
    let (outbound, inbound) = sidecar(&ctx);
    let outbound = outbound.expect("the client's tracing");
    assert_eq!(outbound.random_sampling.map(|p| p.value), Some(10.0));
    let http = opentelemetry(&outbound)
        .http_service
        .and_then(|s| s.http_uri)
        .expect("an OTLP/HTTP service");
    assert_eq!(
        http.uri,
        "otel-collector.observability.svc.cluster.local/v1/traces"
    );
    assert_eq!(http.timeout.map(|t| t.seconds), Some(2));
    assert!(inbound.is_none(), "the server's spans are off");
}

#[test]
fn zipkin_is_b3_json_to_its_outbound_cluster_and_an_unknown_provider_disables() {
    let zipkin = r#"
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  tracing:
  - providers: [{name: zipkin}]
"#;
    let ctx = with_providers(zipkin);
    let (outbound, _) = sidecar(&ctx);
    let outbound = outbound.expect("tracing");
    let provider = outbound.provider.expect("a provider");
    assert_eq!(provider.name, "envoy.tracers.zipkin");
    let Some(ConfigType::TypedConfig(any)) = &provider.config_type else {
        panic!("typed config");
    };
    let config = ZipkinConfig::decode(any.value.as_slice()).expect("ZipkinConfig");
    assert_eq!(
        config.collector_cluster,
        "outbound|9411||zipkin.istio-system.svc.cluster.local"
    );
    assert_eq!(config.collector_endpoint, "/api/v2/spans");
    assert_eq!(
        config.collector_hostname,
        "zipkin.istio-system.svc.cluster.local"
    );
    assert!(config.trace_id_128bit);

    let unknown = zipkin.replace("{name: zipkin}", "{name: jaeger}");
    let ctx = with_providers(&unknown);
    assert_eq!(sidecar(&ctx), (None, None), "a Telemetry without a tracer");
}

#[test]
fn routes_to_a_service_are_named_for_its_host_port_and_path() {
    let ctx = context("");
    let proxy = policy::proxy("sidecar", "httpbin-1", "foo", &[("app", "httpbin")]);
    let routes = oxmesh_control::generate::route::generate(&ctx, &proxy.class());
    let mut named = routes;
    oxmesh_control::generate::decorator::decorate(&mut named);
    let operations: Vec<String> = named
        .iter()
        .flat_map(|c| &c.virtual_hosts)
        .flat_map(|v| &v.routes)
        .filter_map(|r| r.decorator.as_ref().map(|d| d.operation.clone()))
        .collect();
    assert!(
        operations.contains(&"httpbin.foo.svc.cluster.local:8000/*".to_owned()),
        "{operations:?}"
    );
}

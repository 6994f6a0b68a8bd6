//! Tracing on every connection manager, as istiod writes it: from the
//! Telemetry API's `tracing` (mesh, namespace, workload; CLIENT for outbound
//! and gateways, SERVER for inbound) and the mesh's
//! `defaultProviders.tracing`, the tracer an `opentelemetry` or `zipkin`
//! extension provider reached through its service's outbound cluster; with
//! no Telemetry, `enableTracing` keeps sampling (Istio's 1 % unless
//! `defaultConfig.tracing.sampling`) and tags without a tracer.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::{
    GrpcService, HeaderValue, HeaderValueOption, HttpService, HttpUri,
    grpc_service, http_uri,
};
use envoy_types::pb::envoy::config::listener::v3::{Filter, Listener, filter};
use envoy_types::pb::envoy::config::trace::v3::{
    OpenTelemetryConfig, ZipkinConfig, tracing::Http as TracerProvider, tracing::http,
    zipkin_config,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::Tracing;
use envoy_types::pb::envoy::r#type::tracing::v3::{CustomTag as EnvoyTag, custom_tag};
use envoy_types::pb::envoy::r#type::v3::Percent;
use envoy_types::pb::google::protobuf::{BoolValue, UInt32Value};
use envoy_types::util::pack_any;
use oxmesh_config::extension_provider::{
    CollectorHeader, ExtensionProvider, OpenTelemetryTracing, ProviderKind, ZipkinTracing,
};
use oxmesh_config::telemetry::{CustomTag, Telemetry, WorkloadMode};
use prost::Message;

use super::wire;
use crate::proxy::{ProxyClass, ProxyKind};
use crate::push_context::{PushContext, Scoped};

const HCM: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
/// istiod's `PILOT_TRACE_SAMPLING` default, in percent.
const DEFAULT_SAMPLING: f64 = 1.0;

/// Puts tracing on each connection manager of `listeners` that has none.
pub fn attach(ctx: &PushContext, proxy: &ProxyClass, listeners: &mut [Listener]) {
    if proxy.is_grpc() {
        return;
    }
    let telemetries = ctx.telemetries_for(proxy);
    let client = tracing_for(ctx, proxy, &telemetries, WorkloadMode::Client);
    let server = tracing_for(ctx, proxy, &telemetries, WorkloadMode::Server);
    super::listener::each_filter_by_mode(proxy, listeners, |filter, mode| {
        let tracing = if mode == WorkloadMode::Server {
            &server
        } else {
            &client
        };
        if let Some(tracing) = tracing {
            add_to(filter, tracing);
        }
    });
}

fn add_to(filter: &mut Filter, tracing: &Tracing) {
    let Some(filter::ConfigType::TypedConfig(any)) = &mut filter.config_type else {
        return;
    };
    if any.type_url != HCM {
        return;
    }
    if let Ok(mut hcm) = HttpConnectionManager::decode(any.value.as_slice())
        && hcm.tracing.is_none()
    {
        hcm.tracing = Some(tracing.clone());
        any.value = hcm.encode_to_vec();
    }
}

/// One mode's tracing after every level had its say (istiod's
/// `Telemetries.Tracing`): the first provider named last wins, and so do
/// the sampling percentage, the custom tags (the whole map) and the switches.
#[derive(Debug, Default)]
struct Spec<'a> {
    provider: Option<&'a ExtensionProvider>,
    disabled: bool,
    sampling: Option<f64>,
    custom_tags: Option<&'a BTreeMap<String, CustomTag>>,
    istio_tags: bool,
}

fn tracing_for(
    ctx: &PushContext,
    proxy: &ProxyClass,
    telemetries: &[&Scoped<Telemetry>],
    mode: WorkloadMode,
) -> Option<Tracing> {
    let defaults = &ctx.mesh.default_tracing;
    if telemetries.iter().all(|t| t.spec.tracing.is_empty()) && defaults.is_empty() {
        return ctx.mesh.enable_tracing.then(|| legacy(ctx, proxy));
    }
    let mut spec = Spec {
        // Only the first default provider counts, as istiod's.
        provider: defaults.first().and_then(|name| provider(ctx, name)),
        istio_tags: true,
        ..Spec::default()
    };
    for entry in telemetries.iter().flat_map(|t| &t.spec.tracing) {
        let applies = match entry.selector.as_ref().and_then(|s| s.mode) {
            None | Some(WorkloadMode::ClientAndServer) => true,
            Some(m) => m == mode,
        };
        if !applies {
            continue;
        }
        if let Some(first) = entry.providers.first() {
            spec.provider = provider(ctx, &first.name);
        }
        if let Some(disabled) = entry.disable_span_reporting {
            spec.disabled = disabled;
        }
        if !entry.custom_tags.is_empty() {
            spec.custom_tags = Some(&entry.custom_tags);
        }
        if let Some(share) = entry.random_sampling_percentage {
            spec.sampling = Some(share);
        }
        if let Some(istio_tags) = entry.enable_istio_tags {
            spec.istio_tags = istio_tags;
        }
    }
    if spec.disabled {
        return None;
    }
    let tracer = match spec.provider.map(|p| (p, tracer(ctx, proxy, p))) {
        Some((_, Ok(tracer))) => tracer,
        Some((p, Err(e))) => {
            ::tracing::warn!(provider = %p.name, error = %e, "tracing provider left out");
            return None;
        }
        None => return None,
    };
    let mut tags = if spec.istio_tags {
        istio_tags(ctx, proxy)
    } else {
        Vec::new()
    };
    let custom = spec
        .custom_tags
        .unwrap_or(&ctx.mesh.proxy_tracing.custom_tags);
    tags.extend(custom_tags(custom));
    tags.sort_by(|a, b| a.tag.cmp(&b.tag));
    let max_tag_length = match &spec.provider.map(|p| &p.kind) {
        Some(ProviderKind::OpenTelemetry(o)) => o.max_tag_length,
        Some(ProviderKind::Zipkin(z)) => z.max_tag_length,
        _ => 0,
    };
    Some(Tracing {
        random_sampling: Some(percent(
            spec.sampling.unwrap_or_else(|| default_sampling(ctx)),
        )),
        client_sampling: Some(percent(100.0)),
        overall_sampling: Some(percent(100.0)),
        custom_tags: tags,
        max_path_tag_length: max_path(ctx, max_tag_length),
        provider: Some(tracer),
        // A gateway's request span gets a child for its upstream call.
        spawn_upstream_span: (proxy.kind != ProxyKind::Sidecar)
            .then_some(BoolValue { value: true }),
        ..Default::default()
    })
}

/// No Telemetry and no default provider: requests are sampled and tagged,
/// and no tracer is set (Istio's bootstrap has none unless a Zipkin address
/// is configured).
fn legacy(ctx: &PushContext, proxy: &ProxyClass) -> Tracing {
    let mut tags = istio_tags(ctx, proxy);
    tags.extend(custom_tags(&ctx.mesh.proxy_tracing.custom_tags));
    tags.sort_by(|a, b| a.tag.cmp(&b.tag));
    Tracing {
        random_sampling: Some(percent(default_sampling(ctx))),
        client_sampling: Some(percent(100.0)),
        overall_sampling: Some(percent(100.0)),
        custom_tags: tags,
        max_path_tag_length: max_path(ctx, 0),
        ..Default::default()
    }
}

fn default_sampling(ctx: &PushContext) -> f64 {
    match ctx.mesh.proxy_tracing.sampling {
        s if s > 0.0 => s,
        _ => DEFAULT_SAMPLING,
    }
}

fn max_path(ctx: &PushContext, provider: u32) -> Option<UInt32Value> {
    let value = if provider > 0 {
        provider
    } else {
        ctx.mesh.proxy_tracing.max_path_tag_length
    };
    (value > 0).then_some(UInt32Value { value })
}

fn percent(value: f64) -> Percent {
    Percent { value }
}

/// A provider by name, case-insensitive as istiod; only tracers count.
fn provider<'a>(ctx: &'a PushContext, name: &str) -> Option<&'a ExtensionProvider> {
    ctx.mesh.extension_provider(name).filter(|p| {
        matches!(
            p.kind,
            ProviderKind::OpenTelemetry(_) | ProviderKind::Zipkin(_)
        )
    })
}

fn tracer(
    ctx: &PushContext,
    proxy: &ProxyClass,
    provider: &ExtensionProvider,
) -> Result<TracerProvider, String> {
    let (name, any) = match &provider.kind {
        ProviderKind::OpenTelemetry(o) => (
            "envoy.tracers.opentelemetry",
            pack_any(opentelemetry(ctx, proxy, o)?),
        ),
        ProviderKind::Zipkin(z) => ("envoy.tracers.zipkin", pack_any(zipkin(ctx, z)?)),
        _ => return Err("not a tracing provider".to_owned()),
    };
    Ok(TracerProvider {
        name: name.to_owned(),
        config_type: Some(http::ConfigType::TypedConfig(any)),
    })
}

/// The collector's host and its outbound cluster.
fn collector(ctx: &PushContext, service: &str, port: u32) -> Result<(String, String), String> {
    let host = ctx.provider_host(service)?;
    let cluster = format!("outbound|{port}||{host}");
    Ok((host, cluster))
}

fn opentelemetry(
    ctx: &PushContext,
    proxy: &ProxyClass,
    o: &OpenTelemetryTracing,
) -> Result<OpenTelemetryConfig, String> {
    let (host, cluster) = collector(ctx, &o.service, o.port)?;
    let mut config = OpenTelemetryConfig {
        service_name: service_cluster(proxy),
        ..Default::default()
    };
    match &o.http {
        Some(h) => {
            let path = if h.path.starts_with('/') || h.path.is_empty() {
                h.path.clone()
            } else {
                format!("/{}", h.path)
            };
            config.http_service = Some(HttpService {
                http_uri: Some(HttpUri {
                    uri: format!("{host}{path}"),
                    timeout: h.timeout.map(|t| wire::duration(t.as_std())),
                    http_upstream_type: Some(http_uri::HttpUpstreamType::Cluster(cluster)),
                }),
                request_headers_to_add: headers(&h.headers),
                ..Default::default()
            });
        }
        None => {
            let grpc = o.grpc.as_ref();
            config.grpc_service = Some(GrpcService {
                target_specifier: Some(grpc_service::TargetSpecifier::EnvoyGrpc(
                    grpc_service::EnvoyGrpc {
                        cluster_name: cluster,
                        authority: host,
                        ..Default::default()
                    },
                )),
                timeout: grpc
                    .and_then(|g| g.timeout)
                    .map(|t| wire::duration(t.as_std())),
                initial_metadata: grpc
                    .map(|g| {
                        headers(&g.initial_metadata)
                            .into_iter()
                            .filter_map(|o| o.header)
                            .collect()
                    })
                    .unwrap_or_default(),
                ..Default::default()
            });
        }
    }
    Ok(config)
}

fn zipkin(ctx: &PushContext, z: &ZipkinTracing) -> Result<ZipkinConfig, String> {
    let (host, cluster) = collector(ctx, &z.service, z.port)?;
    let option = if z.trace_context_option == "USE_B3_WITH_W3C_PROPAGATION" {
        zipkin_config::TraceContextOption::UseB3WithW3cPropagation
    } else {
        zipkin_config::TraceContextOption::UseB3
    };
    Ok(ZipkinConfig {
        collector_cluster: cluster,
        collector_endpoint: if z.path.is_empty() {
            "/api/v2/spans".to_owned()
        } else {
            z.path.clone()
        },
        collector_hostname: host,
        collector_endpoint_version: zipkin_config::CollectorEndpointVersion::HttpJson as i32,
        trace_id_128bit: !z.enable_64bit_trace_id,
        shared_span_context: Some(BoolValue { value: false }),
        trace_context_option: option as i32,
        ..Default::default()
    })
}

/// Report headers: a value, or an environment variable's read by the control
/// plane, as istiod does.
fn headers(list: &[CollectorHeader]) -> Vec<HeaderValueOption> {
    list.iter()
        .map(|h| {
            let value = if h.env_name.is_empty() {
                h.value.clone()
            } else {
                std::env::var(&h.env_name).unwrap_or_default()
            };
            HeaderValueOption {
                header: Some(HeaderValue {
                    key: h.name.clone(),
                    value,
                    ..Default::default()
                }),
                ..Default::default()
            }
        })
        .collect()
}

/// istiod's service cluster (`tracingServiceName: APP_LABEL_AND_NAMESPACE`):
/// `<app>.<namespace>`.
fn service_cluster(proxy: &ProxyClass) -> String {
    let app = [
        "app",
        "app.kubernetes.io/name",
        "service.istio.io/canonical-name",
    ]
    .iter()
    .find_map(|key| proxy.labels.get(*key).filter(|v| !v.is_empty()))
    .map_or("istio-proxy", String::as_str);
    format!("{app}.{}", proxy.namespace)
}

/// The tags istiod puts on every span of a proxy, as literals.
fn istio_tags(ctx: &PushContext, proxy: &ProxyClass) -> Vec<EnvoyTag> {
    // Istio's canonical service labels, with its fallbacks.
    let label = |keys: &[&str], default: &str| {
        keys.iter()
            .find_map(|key| proxy.labels.get(*key).filter(|v| !v.is_empty()))
            .map_or_else(|| default.to_owned(), String::clone)
    };
    [
        (
            "istio.canonical_revision",
            label(&oxmesh_identity::canonical::REVISION_LABELS, "latest"),
        ),
        (
            "istio.canonical_service",
            label(&oxmesh_identity::canonical::SERVICE_LABELS, "unknown"),
        ),
        ("istio.mesh_id", ctx.mesh.trust_domain.to_string()),
        ("istio.namespace", proxy.namespace.clone()),
    ]
    .into_iter()
    .map(|(tag, value)| literal(tag, value))
    .collect()
}

fn literal(tag: &str, value: String) -> EnvoyTag {
    EnvoyTag {
        tag: tag.to_owned(),
        r#type: Some(custom_tag::Type::Literal(custom_tag::Literal { value })),
    }
}

/// Telemetry's (or `defaultConfig.tracing`'s) custom tags; formatter tags
/// are left out (the proxy does not evaluate them yet).
fn custom_tags(tags: &BTreeMap<String, CustomTag>) -> Vec<EnvoyTag> {
    tags.iter()
        .filter_map(|(tag, t)| {
            let kind = if let Some(l) = &t.literal {
                custom_tag::Type::Literal(custom_tag::Literal {
                    value: l.value.clone(),
                })
            } else if let Some(e) = &t.environment {
                custom_tag::Type::Environment(custom_tag::Environment {
                    name: e.name.clone(),
                    default_value: e.default_value.clone(),
                })
            } else if let Some(h) = &t.header {
                custom_tag::Type::RequestHeader(custom_tag::Header {
                    name: h.name.clone(),
                    default_value: h.default_value.clone(),
                })
            } else {
                return None;
            };
            Some(EnvoyTag {
                tag: tag.clone(),
                r#type: Some(kind),
            })
        })
        .collect()
}

//! Istio's standard metrics as istiod configures them: the stats filter
//! (`istio.stats`, `stats.PluginConfig`) on every connection manager, before
//! the router, and before every TCP proxy, for each `prometheus` provider
//! the Telemetry API (and `defaultProviders.metrics`, Istio's `prometheus`)
//! leaves in scope; inbound listeners take the SERVER overrides, outbound
//! listeners and gateways the CLIENT ones, as istiod's `mergeMetrics` and
//! `generateStatsConfig` make them.
//!
//! One difference: where istiod leaves the filter out (metrics disabled, or
//! no provider), oxmesh's proxy would count its standard metrics anyway, so
//! the filter is there and drops every metric.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener, filter};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, http_filter,
};
use envoy_types::pb::google::protobuf::Any;
use oxmesh_config::extension_provider::ProviderKind;
use oxmesh_config::telemetry::{
    IstioMetric, MetricSelector, Metrics, TagOperation, TagOverride, WorkloadMode,
};
use oxmesh_xds::stats::{FILTER_NAME, MetricConfig, PLUGIN_CONFIG_TYPE, PluginConfig};
use prost::Message;

use crate::proxy::{ProxyClass, ProxyKind};
use crate::push_context::PushContext;

const HCM: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const TCP_PROXY: &str =
    "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";
const ROUTER: &str = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";

/// Istio's metric names (`MetricSelector.IstioMetric`, but `ALL_METRICS`),
/// sorted, with the names its stats filter gives them.
const METRICS: [(&str, &str); 10] = [
    ("GRPC_REQUEST_MESSAGES", "request_messages_total"),
    ("GRPC_RESPONSE_MESSAGES", "response_messages_total"),
    ("REQUEST_COUNT", "requests_total"),
    ("REQUEST_DURATION", "request_duration_milliseconds"),
    ("REQUEST_SIZE", "request_bytes"),
    ("RESPONSE_SIZE", "response_bytes"),
    ("TCP_CLOSED_CONNECTIONS", "tcp_connections_closed_total"),
    ("TCP_OPENED_CONNECTIONS", "tcp_connections_opened_total"),
    ("TCP_RECEIVED_BYTES", "tcp_received_bytes_total"),
    ("TCP_SENT_BYTES", "tcp_sent_bytes_total"),
];

/// Puts the stats filters on `listeners`' chains.
pub fn attach(ctx: &PushContext, proxy: &ProxyClass, listeners: &mut [Listener]) {
    if proxy.is_grpc() {
        return;
    }
    let telemetries = ctx.telemetries_for(proxy);
    let metrics: Vec<&Metrics> = telemetries
        .iter()
        .flat_map(|t| t.spec.metrics.iter())
        .collect();
    let providers: Vec<ProviderMetrics> = merge(&metrics, &ctx.mesh.default_metrics)
        .into_iter()
        .filter(|(name, _)| is_prometheus(ctx, name))
        .map(|(_, config)| config)
        .collect();
    let gateway = proxy.kind == ProxyKind::Router;
    super::listener::each_chain_by_mode(proxy, listeners, |chain, mode| {
        let configs: Vec<PluginConfig> = providers
            .iter()
            .filter_map(|p| p.plugin_config(mode, gateway))
            .collect();
        if configs.is_empty() {
            add_to(chain, &drop_all());
        }
        for config in &configs {
            add_to(chain, config);
        }
    });
}

/// A provider by name: the mesh config's, else Istio's built-in
/// `prometheus`.
fn is_prometheus(ctx: &PushContext, name: &str) -> bool {
    match ctx.mesh.extension_provider(name) {
        Some(p) => matches!(p.kind, ProviderKind::Prometheus),
        None => name.eq_ignore_ascii_case("prometheus"),
    }
}

/// One metric's override after every level: disabled or not, and its tags.
#[derive(Clone, Debug, Default)]
struct Override {
    disabled: Option<bool>,
    tags: BTreeMap<String, TagOverride>,
}

/// One mode's overrides, by metric (Istio's name or a custom metric's).
#[derive(Clone, Debug, Default)]
struct ModeMetrics {
    /// Every metric disabled (`ALL_METRICS` with `disabled: true`): no filter.
    disabled: bool,
    overrides: BTreeMap<String, Override>,
}

/// One provider's merged metrics config.
#[derive(Clone, Debug, Default)]
struct ProviderMetrics {
    client: ModeMetrics,
    server: ModeMetrics,
    reporting_interval: Option<std::time::Duration>,
}

impl ProviderMetrics {
    fn mode(&mut self, mode: WorkloadMode) -> &mut ModeMetrics {
        match mode {
            WorkloadMode::Server => &mut self.server,
            _ => &mut self.client,
        }
    }

    /// The filter's config for a chain of `mode` (gateways count as
    /// clients), or none when that mode's metrics are all disabled.
    fn plugin_config(&self, mode: WorkloadMode, gateway: bool) -> Option<PluginConfig> {
        let chosen = match mode {
            WorkloadMode::Server => &self.server,
            _ => &self.client,
        };
        if chosen.disabled {
            return None;
        }
        let metrics = chosen
            .overrides
            .iter()
            .map(|(name, o)| metric_config(name, o))
            .collect();
        Some(PluginConfig {
            // The Host header comes from outside the mesh on inbound
            // listeners and at gateways.
            disable_host_header_fallback: mode == WorkloadMode::Server || gateway,
            tcp_reporting_duration: self.reporting_interval.map(|d| prost_types::Duration {
                seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
            }),
            metrics,
            ..Default::default()
        })
    }
}

fn metric_config(name: &str, o: &Override) -> MetricConfig {
    let stat = METRICS
        .iter()
        .find(|(istio, _)| *istio == name)
        .map_or(name, |(_, stat)| stat);
    let mut config = MetricConfig {
        name: stat.to_owned(),
        drop: o.disabled == Some(true),
        ..Default::default()
    };
    for (tag, value) in &o.tags {
        match value.operation {
            TagOperation::Remove => config.tags_to_remove.push(tag.clone()),
            TagOperation::Upsert => {
                config
                    .dimensions
                    .insert(tag.clone(), value.value.clone().unwrap_or_default());
            }
        }
    }
    config
}

/// Every metric dropped: what a chain gets where istiod puts no filter.
fn drop_all() -> PluginConfig {
    PluginConfig {
        metrics: vec![MetricConfig {
            drop: true,
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// istiod's `mergeMetrics`: the most specific level naming providers decides
/// which are in scope (entries without providers take the level above's);
/// each entry's overrides apply in order to its metrics and modes, later
/// ones over earlier; `ALL_METRICS` disabled turns a mode off until a later
/// override of that mode turns it back on.
fn merge(metrics: &[&Metrics], defaults: &[String]) -> BTreeMap<String, ProviderMetrics> {
    let mut providers: BTreeMap<String, ProviderMetrics> = BTreeMap::new();
    if metrics.is_empty() {
        for name in defaults {
            providers.insert(name.clone(), ProviderMetrics::default());
        }
        return providers;
    }
    let names =
        |m: &Metrics| -> Vec<String> { m.providers.iter().map(|p| p.name.clone()).collect() };
    let in_scope = metrics
        .iter()
        .map(|m| names(m))
        .rfind(|n| !n.is_empty())
        .unwrap_or_else(|| defaults.to_vec());
    let mut parent = defaults.to_vec();
    for m in metrics {
        let mut these = names(m);
        if these.is_empty() {
            these = parent.clone();
        }
        parent = these.clone();
        for name in these.into_iter().filter(|n| in_scope.contains(n)) {
            let provider = providers.entry(name).or_default();
            if let Some(interval) = m.reporting_interval {
                provider.reporting_interval = Some(interval.as_std());
            }
            for o in &m.overrides {
                let selector = o.selector.as_ref();
                for mode in modes(selector) {
                    let target = provider.mode(mode);
                    if all_metrics(selector) && o.disabled == Some(true) {
                        target.disabled = true;
                        continue;
                    }
                    target.disabled = false;
                    for metric in matches(selector) {
                        let entry = target.overrides.entry(metric).or_default();
                        if o.disabled.is_some() {
                            entry.disabled = o.disabled;
                        }
                        for (tag, value) in &o.tag_overrides {
                            entry.tags.insert(tag.clone(), value.clone());
                        }
                    }
                }
            }
        }
    }
    providers
}

fn modes(selector: Option<&MetricSelector>) -> Vec<WorkloadMode> {
    match selector.and_then(|s| s.mode) {
        Some(WorkloadMode::Client) => vec![WorkloadMode::Client],
        Some(WorkloadMode::Server) => vec![WorkloadMode::Server],
        _ => vec![WorkloadMode::Client, WorkloadMode::Server],
    }
}

/// A selector naming no metric, or `ALL_METRICS`.
fn all_metrics(selector: Option<&MetricSelector>) -> bool {
    match selector {
        Some(s) if s.custom_metric.is_some() => false,
        Some(s) => s.metric.is_none_or(|m| m == IstioMetric::AllMetrics),
        None => true,
    }
}

/// The metrics a selector names, as istiod normalizes them.
fn matches(selector: Option<&MetricSelector>) -> Vec<String> {
    if let Some(custom) = selector.and_then(|s| s.custom_metric.as_ref()) {
        return vec![custom.clone()];
    }
    match selector.and_then(|s| s.metric) {
        Some(metric) if metric != IstioMetric::AllMetrics => vec![istio_name(metric).to_owned()],
        _ => METRICS.iter().map(|(name, _)| (*name).to_owned()).collect(),
    }
}

fn istio_name(metric: IstioMetric) -> &'static str {
    match metric {
        IstioMetric::AllMetrics => "ALL_METRICS",
        IstioMetric::RequestCount => "REQUEST_COUNT",
        IstioMetric::RequestDuration => "REQUEST_DURATION",
        IstioMetric::RequestSize => "REQUEST_SIZE",
        IstioMetric::ResponseSize => "RESPONSE_SIZE",
        IstioMetric::TcpOpenedConnections => "TCP_OPENED_CONNECTIONS",
        IstioMetric::TcpClosedConnections => "TCP_CLOSED_CONNECTIONS",
        IstioMetric::TcpSentBytes => "TCP_SENT_BYTES",
        IstioMetric::TcpReceivedBytes => "TCP_RECEIVED_BYTES",
        IstioMetric::GrpcRequestMessages => "GRPC_REQUEST_MESSAGES",
        IstioMetric::GrpcResponseMessages => "GRPC_RESPONSE_MESSAGES",
    }
}

/// The filter on a chain: in a connection manager before its router, or
/// before the chain's TCP proxy.
fn add_to(chain: &mut FilterChain, config: &PluginConfig) {
    let any = Any {
        type_url: PLUGIN_CONFIG_TYPE.to_owned(),
        value: config.encode_to_vec(),
    };
    for f in &mut chain.filters {
        let Some(filter::ConfigType::TypedConfig(typed)) = &mut f.config_type else {
            continue;
        };
        if typed.type_url != HCM {
            continue;
        }
        let Ok(mut hcm) = HttpConnectionManager::decode(typed.value.as_slice()) else {
            return;
        };
        let router = hcm.http_filters.iter().position(|h| {
            matches!(&h.config_type, Some(http_filter::ConfigType::TypedConfig(a)) if a.type_url == ROUTER)
        });
        let at = router.unwrap_or(hcm.http_filters.len());
        hcm.http_filters.insert(
            at,
            HttpFilter {
                name: FILTER_NAME.to_owned(),
                config_type: Some(http_filter::ConfigType::TypedConfig(any)),
                ..Default::default()
            },
        );
        typed.value = hcm.encode_to_vec();
        return;
    }
    let tcp = chain.filters.iter().position(|f| {
        matches!(&f.config_type, Some(filter::ConfigType::TypedConfig(a)) if a.type_url == TCP_PROXY)
    });
    if let Some(at) = tcp {
        chain.filters.insert(
            at,
            Filter {
                name: FILTER_NAME.to_owned(),
                config_type: Some(filter::ConfigType::TypedConfig(any)),
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oxmesh_config::telemetry::{MetricsOverrides, ProviderRef};

    fn telemetry(yaml: &str) -> Metrics {
        serde_saphyr::from_str(yaml).expect("Telemetry metrics")
    }

    #[test]
    fn overrides_merge_as_istiods() {
        let root = telemetry(
            "providers: [{name: prometheus}]\nreportingInterval: 30s\noverrides:\n- match: {metric: REQUEST_COUNT}\n  tagOverrides: {request_host: {value: request.host}}\n- match: {metric: ALL_METRICS, mode: SERVER}\n  disabled: true\n",
        );
        let namespace = telemetry(
            "overrides:\n- match: {metric: REQUEST_DURATION, mode: CLIENT}\n  disabled: true\n- match: {metric: REQUEST_COUNT}\n  tagOverrides: {response_flags: {operation: REMOVE}}\n",
        );
        let merged = merge(&[&root, &namespace], &["prometheus".to_owned()]);
        let prometheus = merged.get("prometheus").expect("in scope");
        // The namespace's REQUEST_COUNT override turned the server back on.
        assert!(!prometheus.server.disabled);
        let client = prometheus
            .plugin_config(WorkloadMode::Client, false)
            .expect("client metrics");
        let requests = client
            .metrics
            .iter()
            .find(|m| m.name == "requests_total")
            .expect("requests_total");
        assert_eq!(
            requests.dimensions.get("request_host").map(String::as_str),
            Some("request.host")
        );
        assert_eq!(requests.tags_to_remove, ["response_flags"]);
        assert!(
            client
                .metrics
                .iter()
                .any(|m| m.name == "request_duration_milliseconds" && m.drop)
        );
        assert!(!client.disable_host_header_fallback);
        assert_eq!(client.tcp_reporting_duration.map(|d| d.seconds), Some(30));
        let server = prometheus
            .plugin_config(WorkloadMode::Server, false)
            .expect("server metrics");
        assert!(server.disable_host_header_fallback);
        assert!(!server.metrics.iter().any(|m| m.drop));
    }

    #[test]
    fn no_telemetry_is_the_default_provider_unchanged_and_all_disabled_is_none() {
        let merged = merge(&[], &["prometheus".to_owned()]);
        let config = merged["prometheus"]
            .plugin_config(WorkloadMode::Client, true)
            .expect("metrics");
        assert!(config.metrics.is_empty());
        assert!(config.disable_host_header_fallback);
        let off = Metrics {
            providers: vec![ProviderRef {
                name: "prometheus".into(),
            }],
            overrides: vec![MetricsOverrides {
                disabled: Some(true),
                ..Default::default()
            }],
            reporting_interval: None,
        };
        let merged = merge(&[&off], &["prometheus".to_owned()]);
        assert!(
            merged["prometheus"]
                .plugin_config(WorkloadMode::Server, false)
                .is_none()
        );
    }
}

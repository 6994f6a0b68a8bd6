//! Istio's stats filter (`istio.stats`, `stats.PluginConfig`), which istiod
//! writes on connection managers and TCP chains from Telemetry `metrics`:
//! per standard metric, whether it is reported, the tags it loses
//! (`tags_to_remove`) and the tags it gains or whose value changes
//! (`dimensions`: a CEL expression per tag). A chain without the filter
//! reports Istio's standard metrics unchanged.

use std::sync::Arc;

use envoy_types::pb::google::protobuf::Any;
use oxmesh_xds::stats::{MetricConfig, PluginConfig};
use prost::Message;

use crate::access_log::Entry;
use crate::access_log::cel::{self, CelExpression};
use crate::metrics::Custom;

pub const TYPE: &str = oxmesh_xds::stats::PLUGIN_CONFIG_TYPE;

/// The metrics an override can name, by the names Istio's filter gives them
/// (without the `istio_` prefix).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StandardMetric {
    Requests,
    Duration,
    RequestBytes,
    ResponseBytes,
    TcpSent,
    TcpReceived,
    TcpOpened,
    TcpClosed,
}

impl StandardMetric {
    pub const ALL: [StandardMetric; 8] = [
        StandardMetric::Requests,
        StandardMetric::Duration,
        StandardMetric::RequestBytes,
        StandardMetric::ResponseBytes,
        StandardMetric::TcpSent,
        StandardMetric::TcpReceived,
        StandardMetric::TcpOpened,
        StandardMetric::TcpClosed,
    ];
    /// The HTTP ones, in the order a request records them.
    pub const HTTP: [StandardMetric; 4] = [
        StandardMetric::Requests,
        StandardMetric::Duration,
        StandardMetric::RequestBytes,
        StandardMetric::ResponseBytes,
    ];
    /// The TCP ones, in the order a connection records them.
    pub const TCP: [StandardMetric; 4] = [
        StandardMetric::TcpOpened,
        StandardMetric::TcpClosed,
        StandardMetric::TcpSent,
        StandardMetric::TcpReceived,
    ];

    pub fn name(self) -> &'static str {
        match self {
            StandardMetric::Requests => "requests_total",
            StandardMetric::Duration => "request_duration_milliseconds",
            StandardMetric::RequestBytes => "request_bytes",
            StandardMetric::ResponseBytes => "response_bytes",
            StandardMetric::TcpSent => "tcp_sent_bytes_total",
            StandardMetric::TcpReceived => "tcp_received_bytes_total",
            StandardMetric::TcpOpened => "tcp_connections_opened_total",
            StandardMetric::TcpClosed => "tcp_connections_closed_total",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// What the overrides make of one metric.
#[derive(Debug, Default, Clone)]
pub struct MetricShape {
    /// Not reported at all.
    pub drop: bool,
    /// Tags taken off (standard or added ones).
    pub removed: Vec<Arc<str>>,
    /// Tags set from an expression (by its place in
    /// [`StatsConfig::expressions`]): a standard tag's value is replaced,
    /// others are added. In the order first named.
    pub set: Vec<(Arc<str>, usize)>,
}

/// What a request or connection reports for one metric.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Shaped<L> {
    /// Istio's standard labels, unchanged.
    Standard,
    /// Not reported.
    Dropped,
    Custom(L),
}

impl MetricShape {
    /// Reported as Istio's standard metric, unchanged.
    pub fn is_standard(&self) -> bool {
        !self.drop && self.removed.is_empty() && self.set.is_empty()
    }

    /// The labels' changes for one request or connection, given every
    /// expression's value (`None`: it failed, reported as `unknown`, as
    /// Istio's filter does).
    fn custom(&self, values: &[Option<String>]) -> Custom {
        Custom {
            removed: self.removed.clone(),
            set: self
                .set
                .iter()
                .map(|(tag, i)| {
                    let value = values.get(*i).cloned().flatten();
                    (tag.clone(), value.unwrap_or_else(|| "unknown".to_owned()))
                })
                .collect(),
        }
    }

    fn remove(&mut self, tag: &str) {
        self.set.retain(|(t, _)| &**t != tag);
        if !self.removed.iter().any(|t| &**t == tag) {
            self.removed.push(Arc::from(tag));
        }
    }

    fn put(&mut self, tag: &str, expression: usize) {
        self.removed.retain(|t| &**t != tag);
        match self.set.iter_mut().find(|(t, _)| &**t == tag) {
            Some((_, e)) => *e = expression,
            None => self.set.push((Arc::from(tag), expression)),
        }
    }
}

/// One `istio.stats` filter's effect on the standard metrics.
#[derive(Debug, Default, Clone)]
pub struct StatsConfig {
    shapes: [MetricShape; 8],
    /// Every dimension's expression, each evaluated once per request.
    expressions: Vec<Arc<CelExpression>>,
    /// Some expression reads the request (its headers or other attributes):
    /// requests keep their head for it.
    pub reads_request: bool,
    /// Some expression reads the response: its headers are kept for it.
    pub reads_response: bool,
}

impl StatsConfig {
    pub fn shape(&self, metric: StandardMetric) -> &MetricShape {
        &self.shapes[metric.index()]
    }

    /// What each of `metrics` reports for one request or connection: its
    /// expressions are evaluated once over `entry`, and only the metrics
    /// they change get labels of their own.
    pub fn shaped<L: Clone>(
        &self,
        metrics: [StandardMetric; 4],
        labels: &L,
        entry: &Entry<'_>,
        with: impl Fn(L, Custom) -> L,
    ) -> [Shaped<L>; 4] {
        let values = if self.expressions.is_empty() {
            Vec::new()
        } else {
            cel::texts(&self.expressions, entry)
        };
        metrics.map(|m| {
            let shape = self.shape(m);
            if shape.drop {
                Shaped::Dropped
            } else if shape.is_standard() {
                Shaped::Standard
            } else {
                Shaped::Custom(with(labels.clone(), shape.custom(&values)))
            }
        })
    }

    /// Whether any of `metrics` is changed.
    pub fn changes(&self, metrics: &[StandardMetric]) -> bool {
        metrics.iter().any(|m| !self.shape(*m).is_standard())
    }
}

/// The filter's config, from its `Any`; an expression that does not compile
/// or a tag that is not a Prometheus label name refuses it.
pub fn convert(any: &Any) -> Result<StatsConfig, String> {
    let config = PluginConfig::decode(any.value.as_slice()).map_err(|e| e.to_string())?;
    let mut stats = StatsConfig::default();
    for (i, metric) in config.metrics.iter().enumerate() {
        apply(&mut stats, metric).map_err(|e| format!("metrics[{i}]: {e}"))?;
    }
    Ok(stats)
}

/// One override, on its metric (or on all when it names none). Metrics this
/// proxy does not make (gRPC message counts, custom metrics) are passed over.
fn apply(stats: &mut StatsConfig, metric: &MetricConfig) -> Result<(), String> {
    let targets: Vec<StandardMetric> = StandardMetric::ALL
        .into_iter()
        .filter(|m| metric.name.is_empty() || m.name() == metric.name)
        .collect();
    let mut compiled = Vec::new();
    // Sorted: a map's order is not the config's, and the result must not
    // depend on it.
    let mut dimensions: Vec<(&String, &String)> = metric.dimensions.iter().collect();
    dimensions.sort();
    for (tag, source) in dimensions {
        check_tag(tag)?;
        let expression = cel::compile(source)
            .map_err(|e| format!("dimensions[{tag}]: {source:?} is not CEL: {e}"))?;
        stats.reads_request |= expression.reads_request();
        stats.reads_response |= expression.reads_response();
        stats.expressions.push(expression);
        compiled.push((tag.as_str(), stats.expressions.len() - 1));
    }
    for tag in &metric.tags_to_remove {
        check_tag(tag)?;
    }
    for target in targets {
        let shape = &mut stats.shapes[target.index()];
        shape.drop |= metric.drop;
        for (tag, expression) in &compiled {
            shape.put(tag, *expression);
        }
        for tag in &metric.tags_to_remove {
            shape.remove(tag);
        }
    }
    Ok(())
}

/// Prometheus's label names: `[a-zA-Z_][a-zA-Z0-9_]*`.
fn check_tag(tag: &str) -> Result<(), String> {
    let mut chars = tag.chars();
    let valid = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if valid {
        Ok(())
    } else {
        Err(format!("{tag:?} is not a metric label name"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(metrics: Vec<MetricConfig>) -> Any {
        Any {
            type_url: TYPE.to_owned(),
            value: PluginConfig {
                metrics,
                ..Default::default()
            }
            .encode_to_vec(),
        }
    }

    fn metric(
        name: &str,
        dimensions: &[(&str, &str)],
        remove: &[&str],
        drop: bool,
    ) -> MetricConfig {
        MetricConfig {
            name: name.to_owned(),
            dimensions: dimensions
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            tags_to_remove: remove.iter().map(|t| (*t).to_owned()).collect(),
            drop,
            ..Default::default()
        }
    }

    #[test]
    fn overrides_apply_in_order_to_their_metrics() {
        let stats = convert(&config(vec![
            metric("", &[], &["response_flags"], false),
            metric(
                "requests_total",
                &[("request_host", "request.host")],
                &[],
                false,
            ),
            metric("request_duration_milliseconds", &[], &[], true),
            metric("", &[("response_flags", "'-'")], &[], false),
        ]))
        .expect("converts");
        let requests = stats.shape(StandardMetric::Requests);
        assert!(!requests.drop);
        assert!(requests.removed.is_empty(), "put back by the last override");
        let tags: Vec<&str> = requests.set.iter().map(|(t, _)| &**t).collect();
        assert_eq!(stats.expressions.len(), 2, "each compiled once");
        assert_eq!(tags, ["request_host", "response_flags"]);
        assert!(stats.shape(StandardMetric::Duration).drop);
        assert!(stats.reads_request);
        assert!(stats.changes(&StandardMetric::TCP));
    }

    #[test]
    fn a_bad_expression_or_tag_is_refused_by_name() {
        let bad = convert(&config(vec![metric(
            "",
            &[("host", "request.host ==")],
            &[],
            false,
        )]));
        assert!(
            bad.as_ref()
                .is_err_and(|e| e.starts_with("metrics[0]: dimensions[host]:")),
            "{bad:?}"
        );
        let tag = convert(&config(vec![metric("", &[], &["bad-tag"], false)]));
        assert!(tag.is_err_and(|e| e.contains("\"bad-tag\" is not a metric label name")));
    }

    #[test]
    fn no_override_leaves_the_standard_metrics() {
        let stats = convert(&config(Vec::new())).expect("converts");
        assert!(!stats.changes(&StandardMetric::ALL));
        assert!(!stats.reads_request);
    }
}

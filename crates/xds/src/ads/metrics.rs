//! The ADS server's Prometheus metrics, under Istio's names. Counters carry the
//! OpenMetrics `_total` suffix (`pilot_xds_pushes_total`), which Istio's
//! exposition omits; queries written for Istio need it added.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::types;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabel {
    /// `cds`, `eds`, `lds`, `rds`, `sds`, `wds`, `wads`, as Istio labels them.
    pub r#type: &'static str,
}

impl TypeLabel {
    pub fn of(type_url: &str) -> Self {
        let short = match type_url {
            types::CLUSTER => "cds",
            types::ENDPOINT => "eds",
            types::LISTENER => "lds",
            types::ROUTE => "rds",
            types::SECRET => "sds",
            types::ADDRESS => "wds",
            types::AUTHORIZATION => "wads",
            _ => "other",
        };
        Self { r#type: short }
    }
}

#[derive(Debug)]
pub struct AdsMetrics {
    /// `pilot_xds_pushes`: responses sent.
    pub pushes: Family<TypeLabel, Counter>,
    /// `pilot_total_xds_rejects`: NACKs received.
    pub rejects: Family<TypeLabel, Counter>,
    /// `pilot_xds`: connected proxies.
    pub connected: Gauge,
    /// `pilot_xds_push_time`: generating and queueing one response.
    pub push_time: Family<TypeLabel, Histogram>,
    /// `pilot_proxy_convergence_time`: from a config change reaching a connection
    /// to every changed type being queued for it.
    pub convergence: Histogram,
}

fn seconds_buckets() -> Histogram {
    Histogram::new([0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 3.0, 5.0, 10.0])
}

impl Default for AdsMetrics {
    fn default() -> Self {
        Self {
            pushes: Family::default(),
            rejects: Family::default(),
            connected: Gauge::default(),
            push_time: Family::new_with_constructor(seconds_buckets),
            convergence: seconds_buckets(),
        }
    }
}

impl AdsMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "pilot_xds_pushes",
            "xDS responses sent, by type",
            self.pushes.clone(),
        );
        registry.register(
            "pilot_total_xds_rejects",
            "xDS responses a proxy rejected (NACK), by type",
            self.rejects.clone(),
        );
        registry.register("pilot_xds", "Connected xDS clients", self.connected.clone());
        registry.register(
            "pilot_xds_push_time",
            "Seconds to generate and queue one xDS response",
            self.push_time.clone(),
        );
        registry.register(
            "pilot_proxy_convergence_time",
            "Seconds from a config change to every changed type being queued for a proxy",
            self.convergence.clone(),
        );
    }

    pub fn pushed(&self, type_url: &str, took: Duration) {
        let label = TypeLabel::of(type_url);
        self.push_time
            .get_or_create(&label)
            .observe(took.as_secs_f64());
        self.pushes.get_or_create(&label).inc();
    }

    pub fn rejected(&self, type_url: &str) {
        self.rejects.get_or_create(&TypeLabel::of(type_url)).inc();
    }
}

//! Istio's standard metrics, with Istio's names and labels, so dashboards and alerts
//! written for Istio work unchanged: `istio_requests_total`,
//! `istio_request_duration_milliseconds`, `istio_request_bytes`,
//! `istio_response_bytes`, and the `istio_tcp_*` family; and the Envoy stats
//! Istio's tasks read (RBAC decisions, circuit-breaker overflows).

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::{EncodeLabel, EncodeLabelSet, LabelSetEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::breaker::Resource;
use crate::config::stats::Shaped;

/// One side of a connection, as telemetry names it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Peer {
    pub workload: String,
    pub namespace: String,
    pub principal: String,
    pub app: String,
    pub version: String,
    /// Istio's canonical service and revision (see
    /// [`crate::workload::canonical_service`]).
    pub canonical_service: String,
    pub canonical_revision: String,
    pub cluster: String,
}

impl Peer {
    pub fn unknown() -> Self {
        Self {
            workload: "unknown".into(),
            namespace: "unknown".into(),
            principal: "unknown".into(),
            app: "unknown".into(),
            version: "unknown".into(),
            canonical_service: "unknown".into(),
            canonical_revision: "unknown".into(),
            cluster: "unknown".into(),
        }
    }
}

/// The destination service: `reviews.default.svc.cluster.local`, its short name and
/// namespace.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServiceLabels {
    pub host: String,
    pub name: String,
    pub namespace: String,
}

impl ServiceLabels {
    pub fn unknown() -> Self {
        Self {
            host: "unknown".into(),
            name: "unknown".into(),
            namespace: "unknown".into(),
        }
    }

    /// From a cluster name: `outbound|9080|v1|reviews.default.svc.cluster.local`.
    pub fn from_cluster(cluster: &str) -> Option<Self> {
        let host = cluster.split('|').nth(3).filter(|h| !h.is_empty())?;
        Some(Self::from_host(host))
    }

    /// From a service host: `reviews.default.svc.cluster.local`.
    pub fn from_host(host: &str) -> Self {
        let mut parts = host.split('.');
        let name = parts.next().unwrap_or(host).to_owned();
        let namespace = parts.next().unwrap_or("unknown").to_owned();
        Self {
            host: host.to_owned(),
            name,
            namespace,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reporter {
    Source,
    Destination,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct RequestLabels {
    pub reporter: &'static str,
    pub source_workload: String,
    pub source_canonical_service: String,
    pub source_canonical_revision: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub source_app: String,
    pub source_version: String,
    pub source_cluster: String,
    pub destination_workload: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    pub destination_app: String,
    pub destination_version: String,
    pub destination_service: String,
    pub destination_canonical_service: String,
    pub destination_canonical_revision: String,
    pub destination_service_name: String,
    pub destination_service_namespace: String,
    pub destination_cluster: String,
    pub request_protocol: &'static str,
    pub response_code: u16,
    pub grpc_response_status: String,
    pub response_flags: String,
    pub connection_security_policy: &'static str,
    /// What a Telemetry's overrides changed.
    pub custom: Custom,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct TcpLabels {
    pub reporter: &'static str,
    pub source_workload: String,
    pub source_canonical_service: String,
    pub source_canonical_revision: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub source_app: String,
    pub source_version: String,
    pub source_cluster: String,
    pub destination_workload: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    pub destination_app: String,
    pub destination_version: String,
    pub destination_service: String,
    pub destination_canonical_service: String,
    pub destination_canonical_revision: String,
    pub destination_service_name: String,
    pub destination_service_namespace: String,
    pub destination_cluster: String,
    pub request_protocol: &'static str,
    pub response_flags: String,
    pub connection_security_policy: &'static str,
    /// What a Telemetry's overrides changed.
    pub custom: Custom,
}

/// A Telemetry's changes to one metric's labels (`istio.stats` overrides):
/// labels taken off, and labels set (a standard one's value replaced, or a
/// new one). Empty for Istio's standard labels.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq)]
pub struct Custom {
    pub removed: Vec<Arc<str>>,
    pub set: Vec<(Arc<str>, String)>,
}

impl Custom {
    fn hides(&self, label: &str) -> bool {
        self.removed.iter().any(|r| &**r == label) || self.set.iter().any(|(l, _)| &**l == label)
    }

    /// Encodes the standard labels it leaves, then the ones it sets.
    fn encode<'a>(
        &self,
        standard: impl IntoIterator<Item = (&'a str, &'a str)>,
        encoder: &mut LabelSetEncoder,
    ) -> Result<(), std::fmt::Error> {
        for (label, value) in standard {
            if !self.hides(label) {
                (label, value).encode(encoder.encode_label())?;
            }
        }
        for (label, value) in &self.set {
            (&**label, value.as_str()).encode(encoder.encode_label())?;
        }
        Ok(())
    }
}

/// The labels requests and connections share, in Istio's order, up to
/// `request_protocol`.
macro_rules! peer_labels {
    ($l:expr) => {
        [
            ("reporter", $l.reporter),
            ("source_workload", $l.source_workload.as_str()),
            ("source_canonical_service", &$l.source_canonical_service),
            ("source_canonical_revision", &$l.source_canonical_revision),
            ("source_workload_namespace", &$l.source_workload_namespace),
            ("source_principal", &$l.source_principal),
            ("source_app", &$l.source_app),
            ("source_version", &$l.source_version),
            ("source_cluster", &$l.source_cluster),
            ("destination_workload", &$l.destination_workload),
            (
                "destination_workload_namespace",
                &$l.destination_workload_namespace,
            ),
            ("destination_principal", &$l.destination_principal),
            ("destination_app", &$l.destination_app),
            ("destination_version", &$l.destination_version),
            ("destination_service", &$l.destination_service),
            (
                "destination_canonical_service",
                &$l.destination_canonical_service,
            ),
            (
                "destination_canonical_revision",
                &$l.destination_canonical_revision,
            ),
            ("destination_service_name", &$l.destination_service_name),
            (
                "destination_service_namespace",
                &$l.destination_service_namespace,
            ),
            ("destination_cluster", &$l.destination_cluster),
            ("request_protocol", $l.request_protocol),
        ]
    };
}

impl EncodeLabelSet for RequestLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        let code = self.response_code.to_string();
        let own = [
            ("response_code", code.as_str()),
            ("grpc_response_status", &self.grpc_response_status),
            ("response_flags", &self.response_flags),
            (
                "connection_security_policy",
                self.connection_security_policy,
            ),
        ];
        self.custom
            .encode(peer_labels!(self).into_iter().chain(own), encoder)
    }
}

impl EncodeLabelSet for TcpLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        let own = [
            ("response_flags", self.response_flags.as_str()),
            (
                "connection_security_policy",
                self.connection_security_policy,
            ),
        ];
        self.custom
            .encode(peer_labels!(self).into_iter().chain(own), encoder)
    }
}

/// What a finished exchange reports, before it becomes labels.
pub struct Exchange<'a> {
    pub reporter: Reporter,
    pub source: &'a Peer,
    pub destination: &'a Peer,
    pub service: &'a ServiceLabels,
    pub protocol: &'static str,
    pub mutual_tls: bool,
}

impl Exchange<'_> {
    fn reporter(&self) -> &'static str {
        match self.reporter {
            Reporter::Source => "source",
            Reporter::Destination => "destination",
        }
    }

    fn security(&self) -> &'static str {
        match (self.reporter, self.mutual_tls) {
            // The client side cannot know what the server enforced: Istio says unknown.
            (Reporter::Source, _) => "unknown",
            (Reporter::Destination, true) => "mutual_tls",
            (Reporter::Destination, false) => "none",
        }
    }

    pub fn request_labels(&self, code: u16, flags: &str) -> RequestLabels {
        let (s, d) = (self.source, self.destination);
        RequestLabels {
            reporter: self.reporter(),
            source_workload: s.workload.clone(),
            source_canonical_service: s.canonical_service.clone(),
            source_canonical_revision: s.canonical_revision.clone(),
            source_workload_namespace: s.namespace.clone(),
            source_principal: s.principal.clone(),
            source_app: s.app.clone(),
            source_version: s.version.clone(),
            source_cluster: s.cluster.clone(),
            destination_workload: d.workload.clone(),
            destination_workload_namespace: d.namespace.clone(),
            destination_principal: d.principal.clone(),
            destination_app: d.app.clone(),
            destination_version: d.version.clone(),
            destination_service: self.service.host.clone(),
            destination_canonical_service: d.canonical_service.clone(),
            destination_canonical_revision: d.canonical_revision.clone(),
            destination_service_name: self.service.name.clone(),
            destination_service_namespace: self.service.namespace.clone(),
            destination_cluster: d.cluster.clone(),
            request_protocol: self.protocol,
            response_code: code,
            grpc_response_status: String::new(),
            response_flags: flags_label(flags),
            connection_security_policy: self.security(),
            custom: Custom::default(),
        }
    }

    pub fn tcp_labels(&self, flags: &str) -> TcpLabels {
        let (s, d) = (self.source, self.destination);
        TcpLabels {
            reporter: self.reporter(),
            source_workload: s.workload.clone(),
            source_canonical_service: s.canonical_service.clone(),
            source_canonical_revision: s.canonical_revision.clone(),
            source_workload_namespace: s.namespace.clone(),
            source_principal: s.principal.clone(),
            source_app: s.app.clone(),
            source_version: s.version.clone(),
            source_cluster: s.cluster.clone(),
            destination_workload: d.workload.clone(),
            destination_workload_namespace: d.namespace.clone(),
            destination_principal: d.principal.clone(),
            destination_app: d.app.clone(),
            destination_version: d.version.clone(),
            destination_service: self.service.host.clone(),
            destination_canonical_service: d.canonical_service.clone(),
            destination_canonical_revision: d.canonical_revision.clone(),
            destination_service_name: self.service.name.clone(),
            destination_service_namespace: self.service.namespace.clone(),
            destination_cluster: d.cluster.clone(),
            request_protocol: "tcp",
            response_flags: flags_label(flags),
            connection_security_policy: self.security(),
            custom: Custom::default(),
        }
    }
}

/// Envoy writes `-` when no flag is set.
fn flags_label(flags: &str) -> String {
    if flags.is_empty() {
        "-".to_owned()
    } else {
        flags.to_owned()
    }
}

/// Envoy's RBAC filter stats, by connection manager (HTTP) or not (TCP).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RbacLabels {
    pub envoy_http_conn_manager_prefix: String,
    /// `allowed`, `denied`, `shadow_allowed`, `shadow_denied`, `logged`.
    pub decision: &'static str,
    /// The shadow engine's stat prefix (`istio_dry_run_allow_`), for shadow
    /// decisions.
    pub shadow_rules_prefix: String,
}

/// Envoy's cluster stats are labelled by the cluster's name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabels {
    pub cluster_name: String,
}

/// The local rate-limit filter's stats are labelled by its stat prefix.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LocalRateLimitLabels {
    pub envoy_http_local_rate_limit_prefix: String,
}

/// The local rate-limit filter's stats, as Envoy names them.
pub const LOCAL_RATE_LIMIT_STATS: [&str; 4] = ["enabled", "ok", "rate_limited", "enforced"];
/// The global rate-limit filter's, per cluster of the limited request's route.
pub const GLOBAL_RATE_LIMIT_STATS: [&str; 3] = ["ok", "over_limit", "error"];

pub struct Metrics {
    /// Tells this instance's handles apart in the workers' caches.
    id: u64,
    local_rate_limit: [Family<LocalRateLimitLabels, Counter>; 4],
    global_rate_limit: [Family<ClusterLabels, Counter>; 3],
    /// Circuit-breaker overflows, by Envoy's stat name.
    overflows: [(&'static str, Family<ClusterLabels, Counter>); 3],
    /// `envoy_http_rbac` and `envoy_tcp_rbac`: what the RBAC filters decided.
    pub rbac_http: Family<RbacLabels, Counter>,
    pub rbac_tcp: Family<RbacLabels, Counter>,
    pub registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub duration_ms: Family<RequestLabels, Histogram>,
    pub request_bytes: Family<RequestLabels, Histogram>,
    pub response_bytes: Family<RequestLabels, Histogram>,
    pub tcp_sent: Family<TcpLabels, Counter>,
    pub tcp_received: Family<TcpLabels, Counter>,
    pub tcp_opened: Family<TcpLabels, Counter>,
    pub tcp_closed: Family<TcpLabels, Counter>,
    /// The tracers' reports, by tracer and [`TraceStat`].
    tracing: [[Counter; 3]; 2],
}

/// The tracer a reporter sends for, as Envoy's stats name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tracer {
    OpenTelemetry,
    Zipkin,
}

impl Tracer {
    const ALL: [Tracer; 2] = [Tracer::OpenTelemetry, Tracer::Zipkin];

    fn stat_name(self) -> &'static str {
        match self {
            Tracer::OpenTelemetry => "opentelemetry",
            Tracer::Zipkin => "zipkin",
        }
    }
}

/// What became of spans: sent, dropped (queue full or the report failed),
/// and reports that failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TraceStat {
    SpansSent,
    SpansDropped,
    ReportsFailed,
}

impl TraceStat {
    const ALL: [TraceStat; 3] = [
        TraceStat::SpansSent,
        TraceStat::SpansDropped,
        TraceStat::ReportsFailed,
    ];

    fn help(self) -> &'static str {
        match self {
            TraceStat::SpansSent => "Spans the collector took",
            TraceStat::SpansDropped => "Spans dropped: the queue was full or the report failed",
            TraceStat::ReportsFailed => "Reports the collector did not take",
        }
    }

    fn stat_name(self) -> &'static str {
        match self {
            TraceStat::SpansSent => "spans_sent",
            TraceStat::SpansDropped => "spans_dropped",
            TraceStat::ReportsFailed => "reports_failed",
        }
    }
}

/// Istio's default buckets for durations (ms) and sizes (bytes).
const DURATION_BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];
const SIZE_BUCKETS: [f64; 8] = [
    1.0, 10.0, 100.0, 1000.0, 10000.0, 100000.0, 1000000.0, 10000000.0,
];

impl Default for Metrics {
    fn default() -> Self {
        let duration: fn() -> Histogram = || Histogram::new(DURATION_BUCKETS);
        let size: fn() -> Histogram = || Histogram::new(SIZE_BUCKETS);
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        let mut m = Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            registry: Registry::default(),
            requests: Family::default(),
            duration_ms: Family::new_with_constructor(duration),
            request_bytes: Family::new_with_constructor(size),
            response_bytes: Family::new_with_constructor(size),
            tcp_sent: Family::default(),
            tcp_received: Family::default(),
            tcp_opened: Family::default(),
            tcp_closed: Family::default(),
            rbac_http: Family::default(),
            rbac_tcp: Family::default(),
            overflows: [Resource::Connection, Resource::Pending, Resource::Retry]
                .map(|r| (r.overflow_stat(), Family::default())),
            local_rate_limit: Default::default(),
            global_rate_limit: Default::default(),
            tracing: Default::default(),
        };
        let r = &mut m.registry;
        for (tracer, counters) in Tracer::ALL.iter().zip(&m.tracing) {
            for (stat, counter) in TraceStat::ALL.iter().zip(counters) {
                r.register(
                    format!("envoy_tracing_{}_{}", tracer.stat_name(), stat.stat_name()),
                    stat.help(),
                    counter.clone(),
                );
            }
        }
        for (stat, family) in LOCAL_RATE_LIMIT_STATS.iter().zip(&m.local_rate_limit) {
            r.register(
                format!("envoy_http_local_rate_limit_{stat}"),
                "Requests the local rate-limit filters saw",
                family.clone(),
            );
        }
        for (stat, family) in GLOBAL_RATE_LIMIT_STATS.iter().zip(&m.global_rate_limit) {
            r.register(
                format!("envoy_cluster_ratelimit_{stat}"),
                "Answers of the rate limit service",
                family.clone(),
            );
        }
        for (name, family) in &m.overflows {
            r.register(*name, "Circuit-breaker overflows", family.clone());
        }
        r.register(
            "envoy_http_rbac",
            "HTTP requests the RBAC filters decided on",
            m.rbac_http.clone(),
        );
        r.register(
            "envoy_tcp_rbac",
            "TCP connections the RBAC filters decided on",
            m.rbac_tcp.clone(),
        );
        r.register(
            "istio_requests",
            "Requests, by Istio's standard labels",
            m.requests.clone(),
        );
        r.register(
            "istio_request_duration_milliseconds",
            "Request duration",
            m.duration_ms.clone(),
        );
        r.register(
            "istio_request_bytes",
            "Request body sizes",
            m.request_bytes.clone(),
        );
        r.register(
            "istio_response_bytes",
            "Response body sizes",
            m.response_bytes.clone(),
        );
        r.register(
            "istio_tcp_sent_bytes",
            "Bytes sent to the peer",
            m.tcp_sent.clone(),
        );
        r.register(
            "istio_tcp_received_bytes",
            "Bytes received from the peer",
            m.tcp_received.clone(),
        );
        r.register(
            "istio_tcp_connections_opened",
            "TCP connections opened",
            m.tcp_opened.clone(),
        );
        r.register(
            "istio_tcp_connections_closed",
            "TCP connections closed",
            m.tcp_closed.clone(),
        );
        m
    }
}

/// One label set's request metrics, cloned out of the families (each is a
/// shared handle to the same counter or histogram).
struct RequestHandles {
    requests: Counter,
    duration_ms: Histogram,
    request_bytes: Histogram,
    response_bytes: Histogram,
}

thread_local! {
    /// Each worker's handles to the request metrics it has recorded, by
    /// `Metrics` instance and label set: a request then costs one lookup in a
    /// map no other thread touches, instead of four lookups in the shared
    /// families, each behind a lock.
    static REQUEST_HANDLES: RefCell<HashMap<u64, HashMap<RequestLabels, RequestHandles>>> =
        RefCell::new(HashMap::new());
}

/// One request metric's handle, for reshaped metrics.
enum Handle {
    Counter(Counter),
    Histogram(Histogram),
}

thread_local! {
    /// As [`REQUEST_HANDLES`], per metric, for metrics a Telemetry reshaped
    /// (each may have its own labels).
    static SHAPED_HANDLES: RefCell<HashMap<(u64, usize), HashMap<RequestLabels, Handle>>> =
        RefCell::new(HashMap::new());
}

impl Metrics {
    /// The counter of one RBAC decision on an HTTP connection manager.
    pub fn rbac_http(&self, prefix: &str, decision: &'static str, shadow: &str) -> Counter {
        self.rbac_http
            .get_or_create(&RbacLabels {
                envoy_http_conn_manager_prefix: prefix.to_owned(),
                decision,
                shadow_rules_prefix: shadow.to_owned(),
            })
            .clone()
    }

    /// The counter of one RBAC decision on a TCP connection.
    pub fn rbac_tcp(&self, decision: &'static str, shadow: &str) -> Counter {
        self.rbac_tcp
            .get_or_create(&RbacLabels {
                envoy_http_conn_manager_prefix: String::new(),
                decision,
                shadow_rules_prefix: shadow.to_owned(),
            })
            .clone()
    }

    pub fn record_request(&self, labels: &RequestLabels, millis: f64, sent: u64, received: u64) {
        REQUEST_HANDLES.with(|cache| {
            let mut cache = cache.borrow_mut();
            let mine = cache.entry(self.id).or_default();
            let record = |handles: &RequestHandles| {
                handles.requests.inc();
                handles.duration_ms.observe(millis);
                handles.request_bytes.observe(sent as f64);
                handles.response_bytes.observe(received as f64);
            };
            match mine.get(labels) {
                Some(handles) => record(handles),
                None => {
                    let handles = self.handles(labels);
                    record(&handles);
                    mine.insert(labels.clone(), handles);
                }
            }
        });
    }

    /// Records a request whose metrics a Telemetry reshaped: per metric
    /// (requests, duration, request and response sizes) the standard
    /// `labels`, none, or labels of its own.
    pub fn record_request_shaped(
        &self,
        labels: &RequestLabels,
        shaped: &[Shaped<RequestLabels>; 4],
        millis: f64,
        sent: u64,
        received: u64,
    ) {
        let value = |i: usize| match i {
            1 => millis,
            2 => sent as f64,
            _ => received as f64,
        };
        let record = |i: usize, handle: &Handle| match handle {
            Handle::Counter(c) => {
                c.inc();
            }
            Handle::Histogram(h) => h.observe(value(i)),
        };
        // Per metric, so a dropped one gets no series at all.
        SHAPED_HANDLES.with(|cache| {
            let mut cache = cache.borrow_mut();
            for (i, shape) in shaped.iter().enumerate() {
                let labels = match shape {
                    Shaped::Standard => labels,
                    Shaped::Custom(custom) => custom,
                    Shaped::Dropped => continue,
                };
                let mine = cache.entry((self.id, i)).or_default();
                if let Some(handle) = mine.get(labels) {
                    record(i, handle);
                } else {
                    let handle = self.handle(i, labels);
                    record(i, &handle);
                    mine.insert(labels.clone(), handle);
                }
            }
        });
    }

    /// The `i`th request metric's handle for `labels`.
    fn handle(&self, i: usize, labels: &RequestLabels) -> Handle {
        match i {
            0 => Handle::Counter(self.requests.get_or_create(labels).clone()),
            1 => Handle::Histogram(self.duration_ms.get_or_create(labels).clone()),
            2 => Handle::Histogram(self.request_bytes.get_or_create(labels).clone()),
            _ => Handle::Histogram(self.response_bytes.get_or_create(labels).clone()),
        }
    }

    fn handles(&self, labels: &RequestLabels) -> RequestHandles {
        RequestHandles {
            requests: self.requests.get_or_create(labels).clone(),
            duration_ms: self.duration_ms.get_or_create(labels).clone(),
            request_bytes: self.request_bytes.get_or_create(labels).clone(),
            response_bytes: self.response_bytes.get_or_create(labels).clone(),
        }
    }

    /// The counters of a local rate-limit filter with stat prefix `prefix`,
    /// in the order of [`LOCAL_RATE_LIMIT_STATS`]: looked up once per
    /// config, then bumped without a lookup.
    pub fn local_rate_limit(&self, prefix: &str) -> [Counter; 4] {
        let labels = LocalRateLimitLabels {
            envoy_http_local_rate_limit_prefix: prefix.to_owned(),
        };
        std::array::from_fn(|i| self.local_rate_limit[i].get_or_create(&labels).clone())
    }

    /// Counts one of [`GLOBAL_RATE_LIMIT_STATS`] for `cluster`.
    pub fn global_rate_limit(&self, cluster: &str, stat: &str) {
        if let Some(i) = GLOBAL_RATE_LIMIT_STATS.iter().position(|s| *s == stat) {
            self.global_rate_limit[i]
                .get_or_create(&ClusterLabels {
                    cluster_name: cluster.to_owned(),
                })
                .inc();
        }
    }

    /// Counts `n` of a tracer's `stat`.
    pub fn traced(&self, tracer: Tracer, stat: TraceStat, n: u64) {
        self.tracing[tracer as usize][stat as usize].inc_by(n);
    }

    /// Counts a circuit-breaker overflow on `cluster` (not a hot path: only
    /// refused work comes here).
    pub fn overflowed(&self, cluster: &str, resource: Resource) {
        let stat = resource.overflow_stat();
        if let Some((_, family)) = self.overflows.iter().find(|(name, _)| *name == stat) {
            family
                .get_or_create(&ClusterLabels {
                    cluster_name: cluster.to_owned(),
                })
                .inc();
        }
    }

    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            text.clear();
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_istios_in_order_and_a_telemetry_changes_them() {
        let metrics = Metrics::default();
        let peer = Peer::unknown();
        let service = ServiceLabels::from_host("reviews.default.svc.cluster.local");
        let exchange = Exchange {
            reporter: Reporter::Destination,
            source: &peer,
            destination: &peer,
            service: &service,
            protocol: "http",
            mutual_tls: true,
        };
        let standard = exchange.request_labels(200, "");
        let custom = RequestLabels {
            custom: Custom {
                removed: vec![Arc::from("response_flags")],
                set: vec![
                    (Arc::from("request_host"), "reviews:9080".to_owned()),
                    (Arc::from("source_app"), "curl".to_owned()),
                ],
            },
            ..standard.clone()
        };
        metrics.record_request(&standard, 1.0, 0, 0);
        metrics.record_request(&custom, 1.0, 0, 0);
        let text = metrics.encode();
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("istio_requests_total{"))
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        let names = |line: &str| -> Vec<String> {
            line.split(['{', ','])
                .skip(1)
                .filter_map(|pair| pair.split_once('=').map(|(k, _)| k.to_owned()))
                .collect()
        };
        let istio = [
            "reporter",
            "source_workload",
            "source_canonical_service",
            "source_canonical_revision",
            "source_workload_namespace",
            "source_principal",
            "source_app",
            "source_version",
            "source_cluster",
            "destination_workload",
            "destination_workload_namespace",
            "destination_principal",
            "destination_app",
            "destination_version",
            "destination_service",
            "destination_canonical_service",
            "destination_canonical_revision",
            "destination_service_name",
            "destination_service_namespace",
            "destination_cluster",
            "request_protocol",
            "response_code",
            "grpc_response_status",
            "response_flags",
            "connection_security_policy",
        ];
        let plain = lines
            .iter()
            .find(|l| !l.contains("request_host"))
            .expect("standard");
        assert_eq!(names(plain), istio);
        let changed = lines
            .iter()
            .find(|l| l.contains("request_host"))
            .expect("custom");
        assert!(!changed.contains("response_flags="), "{changed}");
        assert!(changed.contains("source_app=\"curl\""), "{changed}");
        assert_eq!(changed.matches("source_app=").count(), 1, "{changed}");
    }

    #[test]
    fn service_labels_come_from_the_cluster_name() {
        let s = ServiceLabels::from_cluster("outbound|9080|v1|reviews.default.svc.cluster.local")
            .expect("outbound cluster");
        assert_eq!(
            (s.host.as_str(), s.name.as_str(), s.namespace.as_str()),
            ("reviews.default.svc.cluster.local", "reviews", "default")
        );
        assert!(ServiceLabels::from_cluster("PassthroughCluster").is_none());
        assert!(ServiceLabels::from_cluster("inbound|9080||").is_none());
    }
}

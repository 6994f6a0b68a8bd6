//! The mesh's traffic as the proxies count it: per edge (the caller's
//! canonical service to the callee's, `productpage.default` →
//! `reviews.default`) and per reporter, the totals of Istio's standard
//! metrics; and, from the growth between two readings, what the dashboard
//! shows on each edge: request rate, error rate, p99, bytes, mTLS.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::exposition::{self, Sample};

/// Which proxy counted: the caller's or the callee's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reporter {
    Source,
    Destination,
}

/// Caller and callee, each `<canonical service>.<namespace>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EdgeKey {
    pub source: String,
    pub destination: String,
}

/// What one reporter counted on one edge.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EdgeTotals {
    pub requests: f64,
    /// 5xx answers, and requests that got none (code 0).
    pub errors: f64,
    /// Requests and connections under mutual TLS (as the callee saw them).
    pub mutual_tls: f64,
    pub connections: f64,
    /// TCP bytes both ways.
    pub bytes: f64,
    /// The request-duration histogram: cumulative counts by upper bound (ms).
    pub buckets: Vec<(f64, f64)>,
    pub grpc: bool,
}

impl EdgeTotals {
    fn active(&self) -> bool {
        self.requests > 0.0 || self.connections > 0.0 || self.bytes > 0.0
    }

    pub fn add(&mut self, other: &EdgeTotals) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.mutual_tls += other.mutual_tls;
        self.connections += other.connections;
        self.bytes += other.bytes;
        for &(le, count) in &other.buckets {
            self.add_bucket(le, count);
        }
        self.grpc |= other.grpc;
    }

    fn add_bucket(&mut self, le: f64, count: f64) {
        match self.buckets.iter_mut().find(|(l, _)| *l == le) {
            Some((_, c)) => *c += count,
            None => {
                self.buckets.push((le, count));
                self.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            }
        }
    }

    /// The growth since `earlier`; a counter that went down was reset (its
    /// proxy restarted) and counts from zero.
    fn since(&self, earlier: &EdgeTotals) -> EdgeTotals {
        let grown = |now: f64, then: f64| if now >= then { now - then } else { now };
        let then_bucket = |le: f64| {
            earlier
                .buckets
                .iter()
                .find(|(l, _)| *l == le)
                .map_or(0.0, |(_, c)| *c)
        };
        EdgeTotals {
            requests: grown(self.requests, earlier.requests),
            errors: grown(self.errors, earlier.errors),
            mutual_tls: grown(self.mutual_tls, earlier.mutual_tls),
            connections: grown(self.connections, earlier.connections),
            bytes: grown(self.bytes, earlier.bytes),
            buckets: self
                .buckets
                .iter()
                .map(|&(le, c)| (le, grown(c, then_bucket(le))))
                .collect(),
            grpc: self.grpc,
        }
    }

    /// The `q` quantile of request duration, interpolated within its bucket
    /// as Prometheus's `histogram_quantile` does.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.buckets.last()?.1;
        if total <= 0.0 {
            return None;
        }
        let rank = q * total;
        let mut lower = (0.0, 0.0);
        for &(le, count) in &self.buckets {
            if count >= rank {
                if le.is_infinite() {
                    // Beyond the last finite bound: that bound is the answer.
                    return Some(lower.0);
                }
                let within = count - lower.1;
                let share = if within > 0.0 {
                    (rank - lower.1) / within
                } else {
                    1.0
                };
                return Some(lower.0 + (le - lower.0) * share);
            }
            lower = (le, count);
        }
        Some(lower.0)
    }
}

/// Every edge's totals, by reporter.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Totals {
    pub edges: BTreeMap<(Reporter, EdgeKey), EdgeTotals>,
}

impl Totals {
    /// One proxy's `/stats/prometheus`.
    pub fn read(text: &str) -> Self {
        let mut totals = Self::default();
        for sample in exposition::samples(text, "istio_") {
            totals.add(&sample);
        }
        totals
    }

    /// Counts one sample of Istio's metrics (others are ignored).
    pub fn add(&mut self, sample: &Sample) {
        let Some(reporter) = reporter(sample) else {
            return;
        };
        let entry = self.edges.entry((reporter, edge_key(sample))).or_default();
        let mutual_tls = sample.label("connection_security_policy") == "mutual_tls";
        let value = sample.value;
        match sample.name {
            "istio_requests_total" => {
                entry.requests += value;
                let code = sample.label("response_code");
                if code.starts_with('5') || code == "0" {
                    entry.errors += value;
                }
                if mutual_tls {
                    entry.mutual_tls += value;
                }
                entry.grpc |= sample.label("request_protocol") == "grpc";
            }
            "istio_request_duration_milliseconds_bucket" => {
                if let Some(le) = bound(sample.label("le")) {
                    entry.add_bucket(le, value);
                }
            }
            "istio_tcp_connections_opened_total" => {
                entry.connections += value;
                if mutual_tls {
                    entry.mutual_tls += value;
                }
            }
            "istio_tcp_sent_bytes_total" | "istio_tcp_received_bytes_total" => {
                entry.bytes += value;
            }
            _ => {}
        }
    }

    /// Adds another proxy's totals (or growth).
    pub fn merge(&mut self, other: &Totals) {
        for (key, totals) in &other.edges {
            self.edges.entry(key.clone()).or_default().add(totals);
        }
    }

    /// The growth since `earlier` (the same proxy's older reading; `None`
    /// when it was not read then, so all of it is new).
    pub fn since(&self, earlier: Option<&Totals>) -> Totals {
        let Some(earlier) = earlier else {
            return self.clone();
        };
        let edges = self
            .edges
            .iter()
            .map(|(key, now)| {
                let grown = match earlier.edges.get(key) {
                    Some(then) => now.since(then),
                    None => now.clone(),
                };
                (key.clone(), grown)
            })
            .collect();
        Totals { edges }
    }

    /// Per edge, the growth one reporter saw: the callee's where it counted
    /// (it knows the mTLS the connection had), else the caller's (a callee
    /// without a proxy).
    pub fn by_edge(&self) -> BTreeMap<EdgeKey, &EdgeTotals> {
        let mut edges = BTreeMap::new();
        for reporter in [Reporter::Source, Reporter::Destination] {
            for ((r, key), totals) in &self.edges {
                if *r == reporter && totals.active() {
                    edges.insert(key.clone(), totals);
                }
            }
        }
        edges
    }
}

/// One edge as the dashboard and `/api/graph` show it, from the growth over
/// `seconds`.
pub fn edge_json(key: &EdgeKey, grown: &EdgeTotals, seconds: f64) -> Value {
    let seconds = seconds.max(f64::EPSILON);
    let protocol = match (grown.requests > 0.0, grown.grpc) {
        (true, true) => "grpc",
        (true, false) => "http",
        (false, _) => "tcp",
    };
    let carried = grown.requests.max(grown.connections);
    json!({
        "source": key.source,
        "destination": key.destination,
        "protocol": protocol,
        "requestsPerSecond": round(grown.requests / seconds),
        "errorRate": if grown.requests > 0.0 { round(grown.errors / grown.requests) } else { 0.0 },
        "p99Ms": grown.quantile(0.99).map(round),
        "bytesPerSecond": round(grown.bytes / seconds),
        "mtls": carried > 0.0 && grown.mutual_tls >= carried,
    })
}

fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn reporter(sample: &Sample) -> Option<Reporter> {
    match sample.label("reporter") {
        "source" => Some(Reporter::Source),
        "destination" => Some(Reporter::Destination),
        _ => None,
    }
}

/// Caller and callee as canonical services. A callee without a proxy is its
/// Service (`name.namespace`), or the host it was called by.
fn edge_key(sample: &Sample) -> EdgeKey {
    let known = |v: &str| !v.is_empty() && v != "unknown";
    let node = |service: &str, namespace: &str| match (known(service), known(namespace)) {
        (true, true) => Some(format!("{service}.{namespace}")),
        _ => None,
    };
    let source = node(
        sample.label("source_canonical_service"),
        sample.label("source_workload_namespace"),
    )
    .unwrap_or_else(|| "unknown".to_owned());
    let destination = node(
        sample.label("destination_canonical_service"),
        sample.label("destination_workload_namespace"),
    )
    .or_else(|| {
        node(
            sample.label("destination_service_name"),
            sample.label("destination_service_namespace"),
        )
    })
    .or_else(|| Some(sample.label("destination_service").to_owned()).filter(|s| known(s)))
    .unwrap_or_else(|| "unknown".to_owned());
    EdgeKey {
        source,
        destination,
    }
}

/// A bucket's `le`: a number or `+Inf`.
fn bound(le: &str) -> Option<f64> {
    match le {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        other => other.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LABELS: &str = r#"reporter="destination",source_canonical_service="productpage",source_workload_namespace="default",destination_canonical_service="reviews",destination_workload_namespace="default",destination_service_name="reviews",destination_service_namespace="default",connection_security_policy="mutual_tls""#;

    fn exposition(ok: u32, failed: u32, fast: u32, slow: u32) -> String {
        let total = fast + slow;
        format!(
            "istio_requests_total{{{LABELS},response_code=\"200\"}} {ok}\n\
             istio_requests_total{{{LABELS},response_code=\"503\"}} {failed}\n\
             istio_request_duration_milliseconds_bucket{{{LABELS},le=\"5\"}} {fast}\n\
             istio_request_duration_milliseconds_bucket{{{LABELS},le=\"1000\"}} {fast}\n\
             istio_request_duration_milliseconds_bucket{{{LABELS},le=\"2500\"}} {total}\n\
             istio_request_duration_milliseconds_bucket{{{LABELS},le=\"+Inf\"}} {total}\n"
        )
    }

    #[test]
    fn an_edge_shows_the_growth_between_two_readings() {
        let before = Totals::read(&exposition(10, 0, 10, 0));
        let after = Totals::read(&exposition(30, 10, 20, 20));
        let grown = after.since(Some(&before));
        let edges = grown.by_edge();
        let (key, totals) = edges.iter().next().expect("one edge");
        assert_eq!(key.source, "productpage.default");
        assert_eq!(key.destination, "reviews.default");
        let edge = edge_json(key, totals, 10.0);
        assert_eq!(edge["requestsPerSecond"], 3.0);
        assert_eq!(edge["errorRate"], 0.333);
        assert_eq!(edge["mtls"], true);
        assert_eq!(edge["protocol"], "http");
        // 10 fast and 20 slow since: p99 is in (1000, 2500].
        let p99 = edge["p99Ms"].as_f64().expect("p99");
        assert!((p99 - 2477.5).abs() < 0.01, "{p99}");
    }

    #[test]
    fn a_restarted_proxy_counts_from_zero() {
        let before = Totals::read(&exposition(100, 0, 100, 0));
        let after = Totals::read(&exposition(5, 0, 5, 0));
        let grown = after.since(Some(&before));
        let edges = grown.by_edge();
        assert_eq!(edges.values().next().map(|t| t.requests), Some(5.0));
    }

    #[test]
    fn a_callee_without_a_proxy_is_its_service() {
        let text = r#"istio_requests_total{reporter="source",source_canonical_service="curl",source_workload_namespace="default",destination_canonical_service="unknown",destination_workload_namespace="unknown",destination_service_name="httpbin",destination_service_namespace="legacy",destination_service="httpbin.legacy.svc.cluster.local",connection_security_policy="unknown",response_code="200"} 4"#;
        let totals = Totals::read(text);
        let edges = totals.by_edge();
        let (key, edge) = edges.iter().next().expect("edge");
        assert_eq!(key.destination, "httpbin.legacy");
        assert_eq!(edge_json(key, edge, 1.0)["mtls"], false);
    }
}

//! The mesh dashboard, served by the control plane on its monitoring port
//! (15014) and reached with `oxmesh dashboard`: a page (`/`) and the JSON it
//! reads, which scripts may read too:
//! - `/api/graph`: the service graph over the last minute, nodes named
//!   `<canonical service>.<namespace>`, each edge with its request rate,
//!   error rate, p99 and whether it carried mutual TLS;
//! - `/api/workloads`: every connected proxy and its sync status (SYNCED,
//!   STALE, NACK with the proxy's reason);
//! - `/api/findings`: what the analyzers and validation found in the config
//!   serving;
//! - `/api/service?id=<node>`: one service's golden signals over the last
//!   ten minutes, its edges, and its recent traces when the mesh has a
//!   Zipkin provider ([`traces`]).
//!
//! Traffic comes from the proxies' own metrics ([`collector`]), or, when a
//! Prometheus is given, from Istio's standard metrics there ([`prometheus`]).

pub mod collector;
pub mod exposition;
pub mod prometheus;
pub mod traces;
pub mod traffic;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use envoy_types::pb::google::protobuf::{Struct, value::Kind};
use http::{Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Bytes;
use oxmesh_identity::canonical;
use oxmesh_xds::ads::status::{ProxyStatus, StatusRegistry};
use serde_json::{Value, json};

use crate::discovery::Discovery;
use crate::reply;
use collector::{Collector, Reading};
use traffic::{EdgeKey, EdgeTotals, Totals, edge_json};

/// The page: one file, no outside scripts or fonts.
const PAGE: &str = include_str!("dashboard/page.html");
/// The graph's window, as Kiali's default.
const WINDOW: Duration = Duration::from_secs(60);

pub struct Dashboard {
    discovery: Arc<Discovery>,
    status: StatusRegistry,
    collector: Arc<Collector>,
    /// `--prometheus`: where Istio's metrics are, instead of the proxies.
    prometheus: Option<String>,
}

impl Dashboard {
    pub fn new(
        discovery: Arc<Discovery>,
        status: StatusRegistry,
        prometheus: Option<String>,
    ) -> Self {
        Self {
            discovery,
            collector: Collector::new(status.clone()),
            status,
            prometheus,
        }
    }

    /// The answer for a dashboard path, or `None` for any other path.
    pub async fn answer(&self, path: &str, query: &str) -> Option<Response<Full<Bytes>>> {
        let param = |name: &str| crate::monitoring::parameter(query, name);
        let prometheus = param("prometheus").or_else(|| self.prometheus.clone());
        let answer = match path {
            "/" | "/dashboard" | "/dashboard/" => page(),
            "/api/graph" => match self.traffic(prometheus.as_deref()).await {
                Ok(traffic) => self.graph_json(&traffic),
                Err(e) => reply::json(StatusCode::BAD_GATEWAY, &json!({"error": e})),
            },
            "/api/workloads" => reply::json(StatusCode::OK, &self.workloads()),
            "/api/findings" => reply::json(StatusCode::OK, &self.findings()),
            "/api/service" => match param("id") {
                Some(id) => match self.service(&id, prometheus.as_deref()).await {
                    Ok(body) => reply::json(StatusCode::OK, &body),
                    Err(e) => reply::json(StatusCode::BAD_GATEWAY, &json!({"error": e})),
                },
                None => reply::json(StatusCode::BAD_REQUEST, &json!({"error": "id is required"})),
            },
            _ => return None,
        };
        Some(answer)
    }

    /// The last minute's traffic, from Prometheus when one is given.
    async fn traffic(&self, prometheus: Option<&str>) -> Result<Traffic, String> {
        let Some(url) = prometheus else {
            return Ok(self.proxies_traffic());
        };
        Ok(Traffic {
            grown: prometheus::graph(url, WINDOW).await?,
            seconds: WINDOW.as_secs_f64(),
            collecting: false,
            source: "prometheus",
        })
    }

    /// The growth over the last minute of readings, and how long it spans.
    fn proxies_traffic(&self) -> Traffic {
        self.collector.wanted();
        let readings = self.collector.readings();
        let Some(newest) = readings.last() else {
            return Traffic::collecting();
        };
        let Some(oldest) = readings
            .iter()
            .find(|r| newest.seconds_since(r) <= WINDOW.as_secs_f64())
            .filter(|r| !Arc::ptr_eq(r, newest))
        else {
            return Traffic::collecting();
        };
        Traffic {
            grown: newest.since(oldest),
            seconds: newest.seconds_since(oldest),
            collecting: false,
            source: "proxies",
        }
    }

    fn graph_json(&self, traffic: &Traffic) -> Response<Full<Bytes>> {
        let edges = traffic.grown.by_edge();
        let proxies = self.status.snapshot();
        let mut nodes: BTreeMap<String, Node> = BTreeMap::new();
        for proxy in &proxies {
            let about = About::of(proxy);
            let node = nodes
                .entry(about.node_id())
                .or_insert_with(|| Node::new(&about.node_id()));
            node.workloads.insert(about.workload.clone());
            node.gateway |= about.gateway;
            node.proxies += 1;
        }
        for key in edges.keys() {
            for id in [&key.source, &key.destination] {
                nodes.entry(id.clone()).or_insert_with(|| Node::new(id));
            }
        }
        let edges: Vec<Value> = edges
            .iter()
            .map(|(key, grown)| edge_json(key, grown, traffic.seconds))
            .collect();
        let nodes: Vec<Value> = nodes.values().map(Node::json).collect();
        reply::json(
            StatusCode::OK,
            &json!({
                "source": traffic.source,
                "windowSeconds": traffic.seconds.round(),
                "collecting": traffic.collecting,
                "nodes": nodes,
                "edges": edges,
            }),
        )
    }

    fn workloads(&self) -> Value {
        let workloads: Vec<Value> = self
            .status
            .snapshot()
            .iter()
            .map(|proxy| {
                let about = About::of(proxy);
                let (status, reason) = sync_status(proxy);
                json!({
                    "proxy": proxy.proxy,
                    "pod": about.pod,
                    "namespace": about.namespace,
                    "workload": about.workload,
                    "service": about.node_id(),
                    "type": if about.gateway { "gateway" } else { "sidecar" },
                    "status": status,
                    "reason": reason,
                })
            })
            .collect();
        json!({ "workloads": workloads })
    }

    fn findings(&self) -> Value {
        let config = self.discovery.config();
        let analysis = config.analysis.iter().map(|m| {
            json!({"level": m.level().to_string(), "code": m.code.name(), "message": m.to_string()})
        });
        let refused = config.diagnostics.iter().map(|d| {
            let level = if d.is_error() { "Error" } else { "Warning" };
            json!({"level": level, "code": "", "message": d.to_string()})
        });
        let findings: Vec<Value> = refused.chain(analysis).collect();
        json!({ "findings": findings })
    }

    /// One node's golden signals over the last ten minutes (per reading of
    /// the proxies, or from Prometheus), and its edges over the last minute.
    async fn service(&self, id: &str, prometheus: Option<&str>) -> Result<Value, String> {
        let series = match prometheus {
            Some(url) => prometheus::series(url, id).await?,
            None => {
                self.collector.wanted();
                let readings = self.collector.readings();
                readings
                    .windows(2)
                    .map(|pair| point(&pair[0], &pair[1], id))
                    .collect()
            }
        };
        let traffic = self.traffic(prometheus).await?;
        let edges = traffic.grown.by_edge();
        let side = |pick: fn(&EdgeKey) -> &String| -> Vec<Value> {
            edges
                .iter()
                .filter(|(key, _)| pick(key) == id)
                .map(|(key, grown)| edge_json(key, grown, traffic.seconds))
                .collect()
        };
        // Recent traces when the mesh has a Zipkin to ask; none is not an
        // error, an unreachable one is said.
        let zipkin = traces::zipkin_url(&self.discovery.current().mesh);
        let (traces, traces_error) = match &zipkin {
            Some(url) => match traces::recent(url, id).await {
                Ok(found) => (found, None),
                Err(e) => (Vec::new(), Some(e)),
            },
            None => (Vec::new(), None),
        };
        Ok(json!({
            "id": id,
            "series": series,
            "inbound": side(|k| &k.destination),
            "outbound": side(|k| &k.source),
            "tracing": zipkin,
            "traces": traces,
            "tracesError": traces_error,
        }))
    }
}

/// What the graph is drawn from.
struct Traffic {
    grown: Totals,
    seconds: f64,
    /// Fewer than two readings yet: no rates to show.
    collecting: bool,
    /// `proxies` or `prometheus`.
    source: &'static str,
}

impl Traffic {
    fn collecting() -> Self {
        Self {
            grown: Totals::default(),
            seconds: 0.0,
            collecting: true,
            source: "proxies",
        }
    }
}

/// The requests `id` answered between two readings.
fn point(older: &Reading, newer: &Reading, id: &str) -> Value {
    let grown = newer.since(older);
    let mut inbound = EdgeTotals::default();
    for (key, totals) in grown.by_edge() {
        if key.destination == id {
            inbound.add(totals);
        }
    }
    let seconds = newer.seconds_since(older).max(f64::EPSILON);
    let at = newer
        .at
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    json!({
        "t": at,
        "requestsPerSecond": inbound.requests / seconds,
        "errorRate": if inbound.requests > 0.0 { inbound.errors / inbound.requests } else { 0.0 },
        "p99Ms": inbound.quantile(0.99),
    })
}

struct Node {
    id: String,
    workloads: BTreeSet<String>,
    gateway: bool,
    proxies: usize,
}

impl Node {
    fn new(id: &str) -> Self {
        Self {
            id: id.to_owned(),
            workloads: BTreeSet::new(),
            gateway: false,
            proxies: 0,
        }
    }

    fn json(&self) -> Value {
        let (name, namespace) = self.id.rsplit_once('.').unwrap_or((&self.id, ""));
        let kind = match (self.gateway, self.proxies) {
            (true, _) => "gateway",
            (false, 0) => "no-proxy",
            _ => "service",
        };
        json!({
            "id": self.id,
            "name": name,
            "namespace": namespace,
            "kind": kind,
            "workloads": self.workloads,
            "proxies": self.proxies,
        })
    }
}

/// A connected proxy as its node metadata describes it.
struct About {
    pod: String,
    namespace: String,
    workload: String,
    service: String,
    gateway: bool,
}

impl About {
    fn of(proxy: &ProxyStatus) -> Self {
        let metadata = proxy.node.metadata.as_ref();
        let field = |name: &str| text(metadata, name).unwrap_or_default().to_owned();
        let labels = match metadata
            .and_then(|m| m.fields.get("LABELS"))
            .and_then(|v| v.kind.as_ref())
        {
            Some(Kind::StructValue(labels)) => Some(labels),
            _ => None,
        };
        let workload = field("WORKLOAD_NAME");
        let service = canonical::service(|k| text(labels, k))
            .unwrap_or(&workload)
            .to_owned();
        Self {
            pod: field("NAME"),
            namespace: field("NAMESPACE"),
            gateway: proxy.node.id.starts_with("router~"),
            workload,
            service,
        }
    }

    fn node_id(&self) -> String {
        format!("{}.{}", self.service, self.namespace)
    }
}

fn text<'a>(s: Option<&'a Struct>, name: &str) -> Option<&'a str> {
    match s?.fields.get(name)?.kind.as_ref()? {
        Kind::StringValue(v) => Some(v.as_str()),
        _ => None,
    }
}

/// SYNCED, STALE or NACK (with the proxy's reason) over every type pushed.
fn sync_status(proxy: &ProxyStatus) -> (&'static str, Option<String>) {
    if let Some((type_url, nack)) = proxy
        .types
        .iter()
        .find_map(|(t, s)| s.nack.as_ref().map(|n| (t, n)))
    {
        let short = type_url.rsplit('.').next().unwrap_or(type_url);
        return ("NACK", Some(format!("{short}: {nack}")));
    }
    if proxy.types.values().any(|s| s.state() == "STALE") {
        return ("STALE", None);
    }
    ("SYNCED", None)
}

fn page() -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(PAGE.as_bytes())));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    response
}

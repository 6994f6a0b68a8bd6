//! The monitoring port (15014): Prometheus `/metrics`, and the debug endpoints
//! Istio users reach for: `/debug/syncz` (what each proxy was sent and ACKed),
//! `/debug/configz` (the config serving, what was refused, what the analyzers
//! found) and `/debug/config_dump?proxyID=<id>&type=<cds|eds|lds|rds|sds|all>`
//! (a connected proxy's resources, generated from the current config); and
//! the mesh dashboard (`/`, `/api/*`, see [`crate::dashboard`]).

use std::convert::Infallible;
use std::sync::Arc;

use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use oxmesh_xds::ads::metrics::AdsMetrics;
use oxmesh_xds::ads::status::StatusRegistry;
use oxmesh_xds::ads::{Generator, types};
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::dashboard::Dashboard;
use crate::discovery::Discovery;
use crate::generate;
use crate::reply;

/// What the endpoints read.
pub struct Monitoring {
    pub discovery: Arc<Discovery>,
    pub status: StatusRegistry,
    pub registry: Registry,
    dashboard: Dashboard,
}

impl Monitoring {
    /// `prometheus`: where the dashboard reads traffic, instead of the
    /// proxies' own metrics.
    pub fn new(
        discovery: Arc<Discovery>,
        status: StatusRegistry,
        ads: &AdsMetrics,
        prometheus: Option<String>,
    ) -> Self {
        let mut registry = Registry::default();
        ads.register(&mut registry);
        Self {
            dashboard: Dashboard::new(discovery.clone(), status.clone(), prometheus),
            discovery,
            status,
            registry,
        }
    }

    /// Serves until `shutdown` completes.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        loop {
            let (stream, _) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed on the monitoring port");
                        continue;
                    }
                },
                () = &mut shutdown => return,
            };
            let this = self.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let this = this.clone();
                    async move { Ok::<_, Infallible>(this.answer(&request).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    }

    async fn answer(&self, request: &Request<Incoming>) -> Response<Full<Bytes>> {
        let query = request.uri().query().unwrap_or_default();
        let path = request.uri().path();
        if let Some(answer) = self.dashboard.answer(path, query).await {
            return answer;
        }
        match path {
            "/metrics" => self.metrics(),
            // Nothing on this port is answered before the first full config
            // is read (earlier connections wait), so an answer means ready
            // (istiod's `/ready`).
            "/ready" => reply::text(StatusCode::OK, "ready\n"),
            "/debug/syncz" => reply::json(StatusCode::OK, &self.syncz()),
            "/debug/configz" => reply::json(StatusCode::OK, &self.configz()),
            "/debug/config_dump" => match self.config_dump(query) {
                Ok(body) => reply::json(StatusCode::OK, &body),
                Err((status, message)) => reply::json(status, &json!({ "error": message })),
            },
            _ => reply::text(
                StatusCode::NOT_FOUND,
                "not found: try / (the dashboard), /metrics, /debug/syncz, /debug/configz, /debug/config_dump?proxyID=<id>\n",
            ),
        }
    }

    fn metrics(&self) -> Response<Full<Bytes>> {
        let mut text = String::new();
        let context = self.discovery.current();
        text.push_str(&format!(
            "# HELP pilot_services Services known to the control plane.\n# TYPE pilot_services gauge\npilot_services {}\n",
            context.registry.services.len()
        ));
        let refused = self
            .discovery
            .config()
            .diagnostics
            .iter()
            .filter(|d| d.is_error())
            .count();
        text.push_str(&format!(
            "# HELP oxmesh_config_refused Config errors currently refused (their objects keep their last good version).\n# TYPE oxmesh_config_refused gauge\noxmesh_config_refused {refused}\n"
        ));
        if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            return reply::text(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("encoding metrics: {e}\n"),
            );
        }
        let mut response = Response::new(Full::new(Bytes::from(text)));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        response
    }

    /// Each connected proxy and, per type, SYNCED / STALE / NOT SENT.
    fn syncz(&self) -> Value {
        let version = self.discovery.current().version;
        let proxies: Vec<Value> = self
            .status
            .snapshot()
            .into_iter()
            .map(|p| {
                let per_type: serde_json::Map<String, Value> = types::ORDER
                    .iter()
                    .map(|t| {
                        let status = p.types.get(*t).cloned().unwrap_or_default();
                        let entry = json!({
                            "state": status.state(),
                            "sent": status.sent_version,
                            "acked": status.acked_version,
                            "nack": status.nack,
                        });
                        (short(t).to_owned(), entry)
                    })
                    .collect();
                let connected = p
                    .connected_at
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                json!({ "proxy": p.proxy, "connected_at": connected, "types": per_type })
            })
            .collect();
        let unapplied = self.discovery.current().envoy_filters_unapplied();
        json!({
            "control_plane_version": version.to_string(),
            "proxies": proxies,
            "envoy_filters_unapplied": unapplied,
        })
    }

    fn configz(&self) -> Value {
        let config = self.discovery.config();
        let objects: Vec<Value> = config
            .objects
            .iter()
            .map(|o| json!({ "kind": o.kind.to_string(), "namespace": o.namespace(), "name": o.name(), "origin": o.origin.to_string() }))
            .collect();
        let refused: Vec<String> = config
            .diagnostics
            .iter()
            .filter(|d| d.is_error())
            .map(ToString::to_string)
            .collect();
        let warnings: Vec<String> = config
            .diagnostics
            .iter()
            .filter(|d| !d.is_error())
            .map(ToString::to_string)
            .collect();
        let analysis: Vec<String> = config.analysis.iter().map(ToString::to_string).collect();
        json!({
            "generation": config.generation,
            "objects": objects,
            "refused": refused,
            "warnings": warnings,
            "analysis": analysis,
            "envoy_filters_unapplied": self.discovery.current().envoy_filters_unapplied(),
        })
    }

    fn config_dump(&self, query: &str) -> Result<Value, (StatusCode, String)> {
        let id = parameter(query, "proxyID")
            .ok_or((StatusCode::BAD_REQUEST, "proxyID is required".to_owned()))?;
        let wanted = parameter(query, "type").unwrap_or_else(|| "all".to_owned());
        let type_urls: Vec<&str> = match wanted.as_str() {
            "all" => types::ORDER.to_vec(),
            short_name => {
                vec![
                    types::ORDER
                        .iter()
                        .copied()
                        .find(|t| short(t) == short_name)
                        .ok_or((
                            StatusCode::BAD_REQUEST,
                            format!(
                                "type {short_name:?} is not one of cds, eds, lds, rds, sds, wds, wads, all"
                            ),
                        ))?,
                ]
            }
        };
        let node = self
            .status
            .snapshot()
            .into_iter()
            .find(|p| p.proxy == id)
            .map(|p| p.node)
            .ok_or((StatusCode::NOT_FOUND, format!("no connected proxy {id:?}")))?;
        // As an unproven caller: what it shows never includes a Secret's key.
        let proxy = self
            .discovery
            .connect(&node, None)
            .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e))?;
        let context = self.discovery.current();
        let mut dump = serde_json::Map::new();
        for type_url in type_urls {
            let resources: Result<Vec<Value>, String> =
                generate::resources(&context, &proxy, type_url)
                    .iter()
                    .map(|r| oxmesh_xds::json::to_json(&r.resource).map_err(|e| e.to_string()))
                    .collect();
            let resources = resources.map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e))?;
            dump.insert(short(type_url).to_owned(), Value::Array(resources));
        }
        Ok(json!({ "proxy": id, "version": context.version.to_string(), "resources": dump }))
    }
}

/// `cds`, `eds`, `lds`, `rds`, `sds`.
pub fn short(type_url: &str) -> &'static str {
    oxmesh_xds::ads::metrics::TypeLabel::of(type_url).r#type
}

/// One query parameter, percent-decoded.
pub(crate) fn parameter(query: &str, name: &str) -> Option<String> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| percent_decode(value))
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_query_parameters() {
        let query = "proxyID=reviews-v1%2Dabc.default&type=cds";
        assert_eq!(
            parameter(query, "proxyID").as_deref(),
            Some("reviews-v1-abc.default")
        );
        assert_eq!(parameter(query, "type").as_deref(), Some("cds"));
        assert_eq!(parameter(query, "missing"), None);
        assert_eq!(percent_decode("a%zzb"), "a%zzb");
    }
}

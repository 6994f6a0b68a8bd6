//! The app's own Prometheus metrics, served with the proxy's on 15020, as
//! Istio's metrics merging does: injection points the pod's `prometheus.io/*`
//! annotations at the proxy and passes the app's originals in
//! `ISTIO_PROMETHEUS_ANNOTATIONS`; a scrape of 15020 gets the proxy's metrics
//! followed by the app's.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use serde_json::Value;

use crate::app_probe::Get;

/// A slow app must not make the proxy's own metrics late.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_BODY: usize = 64 << 20;
/// Istio's agent port, where the merged metrics are served.
const STATUS_PORT: u16 = 15020;

#[derive(Debug, thiserror::Error)]
#[error("ISTIO_PROMETHEUS_ANNOTATIONS: {0}")]
pub struct AnnotationsError(String);

/// Where the app serves its metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppMetrics {
    target: SocketAddr,
    path: String,
}

impl AppMetrics {
    /// From the app's original annotations (`{"scrape":"true","port":"8080",
    /// "path":"/metrics"}`); `None` when the app asked not to be scraped.
    pub fn parse(json: &str, destination: IpAddr) -> Result<Option<Self>, AnnotationsError> {
        let notes: Value =
            serde_json::from_str(json).map_err(|e| AnnotationsError(e.to_string()))?;
        let text = |key: &str| notes.get(key).and_then(Value::as_str);
        if text("scrape").is_some_and(|s| !s.eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        // Prometheus' own default when the pod names no port.
        let port = text("port").unwrap_or("80");
        let port: u16 = port
            .parse()
            .map_err(|_| AnnotationsError(format!("port {port:?} is not a port number")))?;
        if port == STATUS_PORT {
            // The proxy's own port: scraping it from itself would never end.
            return Ok(None);
        }
        let mut path = text("path").unwrap_or("/metrics").to_owned();
        if !path.starts_with('/') {
            path.insert(0, '/');
        }
        Ok(Some(Self {
            target: SocketAddr::new(destination, port),
            path,
        }))
    }

    /// The app's metrics text, ready to follow the proxy's; nothing when the
    /// app does not answer well (the proxy's own metrics still go out).
    pub async fn scrape(&self) -> Option<Bytes> {
        let incoming = HeaderMap::new();
        let get = Get {
            target: self.target,
            path: &self.path,
            https: false,
            headers: &[],
            incoming: &incoming,
            limit: MAX_BODY,
        };
        match tokio::time::timeout(SCRAPE_TIMEOUT, get.send()).await {
            Ok(Ok((status, body))) if status.is_success() => Some(strip_eof(body)),
            Ok(Ok((status, _))) => {
                tracing::debug!(%status, "the app's metrics endpoint refused the scrape");
                None
            }
            Ok(Err(reason)) => {
                tracing::debug!(%reason, "cannot scrape the app's metrics");
                None
            }
            Err(_) => None,
        }
    }
}

/// OpenMetrics ends with `# EOF`; merged text must not end twice.
fn strip_eof(body: Bytes) -> Bytes {
    let text = body.as_ref();
    let trimmed = text.trim_ascii_end();
    match trimmed.strip_suffix(b"# EOF") {
        Some(rest) => body.slice(..rest.len()),
        None => body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn annotations_name_the_apps_endpoint() {
        let ip = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 9));
        let found = AppMetrics::parse(r#"{"scrape":"true","port":"8080"}"#, ip).expect("parses");
        assert_eq!(
            found,
            Some(AppMetrics {
                target: SocketAddr::new(ip, 8080),
                path: "/metrics".into()
            })
        );
        assert_eq!(
            AppMetrics::parse(r#"{"scrape":"false","port":"8080"}"#, ip).expect("parses"),
            None
        );
        assert!(AppMetrics::parse(r#"{"port":"http"}"#, ip).is_err());
        assert_eq!(
            AppMetrics::parse(r#"{"port":"15020"}"#, ip).expect("parses"),
            None
        );
        let default_port = AppMetrics::parse(r#"{"scrape":"true"}"#, ip).expect("parses");
        assert_eq!(default_port.map(|m| m.target.port()), Some(80));
        assert_eq!(
            strip_eof(Bytes::from_static(b"a 1\n# EOF\n")),
            Bytes::from_static(b"a 1\n")
        );
    }
}

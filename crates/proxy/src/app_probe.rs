//! Kubelet's probes of the app, taken over by the proxy as Istio's agent does.
//! Injection points each app probe at `/app-health/<container>/<kind>` on 15020
//! and hands the original to the proxy in `ISTIO_KUBE_APP_PROBERS`; the proxy
//! probes the app itself (HTTP, HTTPS without verification as kubelet does,
//! TCP, or gRPC health) from 127.0.0.6, which interception lets through, so
//! probes work under STRICT mTLS.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::net::{TcpSocket, TcpStream};

/// Kubelet's default probe timeout.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
/// How much of the app's answer is passed back (kubelet reads 10 KiB).
const MAX_BODY: usize = 10 * 1024;

#[derive(Debug, thiserror::Error)]
#[error("ISTIO_KUBE_APP_PROBERS: {0}")]
pub struct ProbersError(String);

#[derive(Clone, Debug)]
enum Action {
    Http {
        port: u16,
        path: String,
        https: bool,
        headers: Vec<(HeaderName, HeaderValue)>,
    },
    Tcp {
        port: u16,
    },
    Grpc {
        port: u16,
        service: String,
    },
}

#[derive(Clone, Debug)]
struct Prober {
    action: Action,
    timeout: Duration,
}

/// The app probes this proxy answers, by their `/app-health/...` path.
#[derive(Clone, Debug, Default)]
pub struct AppProbers {
    probers: BTreeMap<String, Prober>,
    /// The pod's IP; the app may not listen on localhost.
    destination: Option<IpAddr>,
}

impl AppProbers {
    /// From `ISTIO_KUBE_APP_PROBERS`'s JSON; the app is reached at `destination`.
    pub fn parse(json: &str, destination: IpAddr) -> Result<Self, ProbersError> {
        let map: BTreeMap<String, Value> =
            serde_json::from_str(json).map_err(|e| ProbersError(e.to_string()))?;
        let mut probers = BTreeMap::new();
        for (path, spec) in map {
            let prober = prober(&spec).map_err(|e| ProbersError(format!("{path}: {e}")))?;
            probers.insert(path, prober);
        }
        Ok(Self {
            probers,
            destination: Some(destination),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.probers.is_empty()
    }

    /// Runs the probe behind `path`, answering as kubelet expects: the app's
    /// status (a redirect becomes 200), or 500 when it cannot be reached.
    pub async fn probe(&self, path: &str, incoming: &HeaderMap) -> (StatusCode, Bytes) {
        let Some(prober) = self.probers.get(path) else {
            let text = format!("no app probe is configured for {path}\n");
            return (StatusCode::BAD_REQUEST, Bytes::from(text));
        };
        let destination = self.destination.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let attempt = async {
            match &prober.action {
                Action::Http {
                    port,
                    path,
                    https,
                    headers,
                } => {
                    let target = SocketAddr::new(destination, *port);
                    let request = Get {
                        target,
                        path,
                        https: *https,
                        headers,
                        incoming,
                        limit: MAX_BODY,
                    };
                    let (status, body) = request.send().await?;
                    // Kubelet takes a redirect as success; so must its stand-in.
                    let status = if status.is_redirection() {
                        StatusCode::OK
                    } else {
                        status
                    };
                    Ok((status, body))
                }
                Action::Tcp { port } => connect(SocketAddr::new(destination, *port))
                    .await
                    .map(|_| (StatusCode::OK, Bytes::new())),
                Action::Grpc { port, service } => {
                    grpc_probe(SocketAddr::new(destination, *port), service).await
                }
            }
        };
        match tokio::time::timeout(prober.timeout, attempt).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(reason)) => {
                tracing::debug!(probe = path, %reason, "app probe failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    Bytes::from(reason + "\n"),
                )
            }
            Err(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                Bytes::from(format!("no answer within {:?}\n", prober.timeout)),
            ),
        }
    }
}

fn prober(spec: &Value) -> Result<Prober, String> {
    let timeout = spec
        .get("timeoutSeconds")
        .and_then(Value::as_u64)
        .filter(|s| *s > 0)
        .map_or(DEFAULT_TIMEOUT, Duration::from_secs);
    let action = if let Some(http) = spec.get("httpGet") {
        let mut path = http
            .get("path")
            .and_then(Value::as_str)
            .unwrap_or("/")
            .to_owned();
        if !path.starts_with('/') {
            path.insert(0, '/');
        }
        let scheme = http.get("scheme").and_then(Value::as_str).unwrap_or("HTTP");
        Action::Http {
            port: port(http)?,
            path,
            https: scheme.eq_ignore_ascii_case("HTTPS"),
            headers: headers(http)?,
        }
    } else if let Some(tcp) = spec.get("tcpSocket") {
        Action::Tcp { port: port(tcp)? }
    } else if let Some(grpc) = spec.get("grpc") {
        let service = grpc.get("service").and_then(Value::as_str).unwrap_or("");
        Action::Grpc {
            port: port(grpc)?,
            service: service.to_owned(),
        }
    } else {
        return Err("neither httpGet, tcpSocket nor grpc".into());
    };
    Ok(Prober { action, timeout })
}

/// A probe's port: a number, or a number in a string (injection resolves names).
fn port(action: &Value) -> Result<u16, String> {
    let port = &action["port"];
    port.as_u64()
        .or_else(|| port.as_str().and_then(|s| s.parse().ok()))
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("port {port} is not a port number"))
}

fn headers(http: &Value) -> Result<Vec<(HeaderName, HeaderValue)>, String> {
    let list = http.get("httpHeaders").and_then(Value::as_array);
    list.into_iter()
        .flatten()
        .map(|h| {
            let name = h["name"].as_str().unwrap_or_default();
            let value = h["value"].as_str().unwrap_or_default();
            let name = HeaderName::try_from(name).map_err(|e| format!("header {name:?}: {e}"))?;
            let value = HeaderValue::try_from(value).map_err(|e| format!("header {name}: {e}"))?;
            Ok((name, value))
        })
        .collect()
}

/// Connects from the inbound passthrough address, which interception never
/// captures; where it cannot be bound, from any address.
async fn connect(target: SocketAddr) -> Result<TcpStream, String> {
    let (socket, source) = match target {
        SocketAddr::V4(_) => (TcpSocket::new_v4(), IpAddr::V4(Ipv4Addr::new(127, 0, 0, 6))),
        SocketAddr::V6(_) => (
            TcpSocket::new_v6(),
            IpAddr::V6(Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 6)),
        ),
    };
    let socket = socket.map_err(|e| e.to_string())?;
    // ::6 is not local unless interception set it up; 127.0.0.6 always is.
    if target.is_ipv4() || !target.ip().is_loopback() {
        let _ = socket.bind(SocketAddr::new(source, 0));
    }
    socket
        .connect(target)
        .await
        .map_err(|e| format!("cannot connect to {target}: {e}"))
}

/// A GET to the app, as the proxy sends it for a probe or a metrics scrape.
pub(crate) struct Get<'a> {
    pub target: SocketAddr,
    pub path: &'a str,
    pub https: bool,
    pub headers: &'a [(HeaderName, HeaderValue)],
    /// The caller's headers, passed on (kubelet's User-Agent and Accept).
    pub incoming: &'a HeaderMap,
    /// The most of the answer's body that is read.
    pub limit: usize,
}

impl Get<'_> {
    pub async fn send(&self) -> Result<(StatusCode, Bytes), String> {
        let tcp = connect(self.target).await?;
        let mut request = Request::get(self.path)
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        for (name, value) in self.incoming {
            if name != http::header::HOST && name != http::header::CONNECTION {
                request.headers_mut().append(name, value.clone());
            }
        }
        let host = HeaderValue::try_from(self.target.to_string()).map_err(|e| e.to_string())?;
        request.headers_mut().insert(http::header::HOST, host);
        // The probe's own headers win over the caller's.
        for (name, value) in self.headers {
            request.headers_mut().insert(name, value.clone());
        }
        let response = if self.https {
            let name = rustls::pki_types::ServerName::IpAddress(self.target.ip().into());
            // Kubelet does not verify the app's certificate; neither does its stand-in.
            let config =
                crate::origination::client_config(None, &[], None).map_err(|e| e.to_string())?;
            let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS with {}: {e}", self.target))?;
            send(TokioIo::new(tls), request).await?
        } else {
            send(TokioIo::new(tcp), request).await?
        };
        let status = response.status();
        let body = http_body_util::Limited::new(response.into_body(), self.limit)
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        Ok((status, body))
    }
}

async fn send<S>(
    io: TokioIo<S>,
    request: Request<Full<Bytes>>,
) -> Result<http::Response<hyper::body::Incoming>, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())
}

/// gRPC health checking (`grpc.health.v1.Health/Check`), as kubelet's gRPC
/// probe asks it: SERVING passes, anything else fails.
async fn grpc_probe(target: SocketAddr, service: &str) -> Result<(StatusCode, Bytes), String> {
    let tcp = connect(target).await?;
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .map_err(|e| format!("HTTP/2 with {target}: {e}"))?;
    tokio::spawn(connection);
    let request = Request::post(format!("http://{target}/grpc.health.v1.Health/Check"))
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers")
        .body(Full::new(health_request(service)))
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let head_status = grpc_status(response.headers());
    let collected = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    let status = collected
        .trailers()
        .and_then(grpc_status)
        .or(head_status)
        .unwrap_or_default();
    if status != "0" {
        return Err(format!("the health check failed with grpc-status {status}"));
    }
    match serving_status(&collected.to_bytes()) {
        Some(1) => Ok((StatusCode::OK, Bytes::new())),
        other => Err(format!("the service is not SERVING ({other:?})")),
    }
}

fn grpc_status(headers: &HeaderMap) -> Option<String> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// One gRPC message: `HealthCheckRequest { service = 1 }`.
fn health_request(service: &str) -> Bytes {
    let mut message = Vec::with_capacity(service.len() + 3);
    if !service.is_empty() {
        message.push(0x0a);
        put_varint(&mut message, service.len() as u64);
        message.extend_from_slice(service.as_bytes());
    }
    let mut frame = Vec::with_capacity(message.len() + 5);
    frame.push(0);
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(&message);
    Bytes::from(frame)
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// `HealthCheckResponse.status` (field 1) from one gRPC message; absent is 0.
fn serving_status(frame: &[u8]) -> Option<u64> {
    let message = frame.get(5..)?;
    let mut rest = message;
    while let Some((&tag, tail)) = rest.split_first() {
        let (value, tail) = varint(tail)?;
        if tag == 0x08 {
            return Some(value);
        }
        // Only varint fields are expected in this message.
        if tag & 0x07 != 0 {
            return None;
        }
        rest = tail;
    }
    Some(0)
}

fn varint(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let mut value = 0u64;
    for (i, byte) in bytes.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, &bytes[i + 1..]));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_parse_as_injection_writes_them() {
        let json = r#"{
            "/app-health/hello/livez": {"httpGet": {"path": "healthz", "port": 8080, "scheme": "HTTPS",
                "httpHeaders": [{"name": "X-Probe", "value": "1"}]}, "timeoutSeconds": 3},
            "/app-health/hello/readyz": {"tcpSocket": {"port": "3333"}},
            "/app-health/hello/startupz": {"grpc": {"port": 9090, "service": "hello"}}
        }"#;
        let probers = AppProbers::parse(json, IpAddr::V4(Ipv4Addr::LOCALHOST)).expect("parses");
        let live = &probers.probers["/app-health/hello/livez"];
        assert_eq!(live.timeout, Duration::from_secs(3));
        assert!(
            matches!(&live.action, Action::Http { port: 8080, path, https: true, headers } if path == "/healthz" && headers.len() == 1)
        );
        assert!(matches!(
            probers.probers["/app-health/hello/readyz"].action,
            Action::Tcp { port: 3333 }
        ));
        assert_eq!(
            probers.probers["/app-health/hello/readyz"].timeout,
            DEFAULT_TIMEOUT
        );
        let bad = AppProbers::parse(
            r#"{"/app-health/x/livez": {"tcpSocket": {"port": "http"}}}"#,
            IpAddr::V4(Ipv4Addr::LOCALHOST),
        )
        .expect_err("a name is not a port");
        assert!(bad.to_string().contains("/app-health/x/livez"), "{bad}");
    }

    #[test]
    fn health_messages_round_trip() {
        let request = health_request("hello");
        assert_eq!(&request[..5], &[0, 0, 0, 0, 7]);
        assert_eq!(&request[5..], b"\x0a\x05hello");
        assert_eq!(serving_status(&[0, 0, 0, 0, 2, 0x08, 0x01]), Some(1));
        assert_eq!(
            serving_status(&[0, 0, 0, 0, 0]),
            Some(0),
            "UNKNOWN by default"
        );
    }
}

//! A load client for the end-to-end tests, in the spirit of Istio's fortio: a
//! fixed request rate (or, with rate 0, each connection as fast as answers
//! come, as `fortio load -qps 0`) for a fixed time or number of requests over
//! HTTP/1.1 keep-alive connections,
//! a new connection per request, or HTTP/2 streams; it stops by itself and
//! reports every status, every failure (when and on which connection) and,
//! with `marker`, which backend answered, so a test can tell that a route
//! change reached the connections already open.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::TcpStream;

/// How requests travel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// HTTP/1.1, each connection reused for as long as the server keeps it.
    KeepAlive,
    /// HTTP/1.1, a new connection per request.
    NewConnection,
    /// HTTP/2 (cleartext, prior knowledge), each connection carrying streams.
    Http2,
}

impl std::str::FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "keepalive" | "keep-alive" => Ok(Self::KeepAlive),
            "new" | "new-connection" => Ok(Self::NewConnection),
            "http2" | "h2" | "h2c" => Ok(Self::Http2),
            other => Err(format!("{other:?}: use keepalive, new-connection or http2")),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Options {
    pub url: Uri,
    /// Requests per second, over all connections; 0: no pause between them.
    pub rate: f64,
    pub duration: Duration,
    /// Stop after this many requests over all connections (fortio's `-n`).
    pub requests: Option<u64>,
    pub connections: usize,
    pub mode: Mode,
    /// A top-level string field of a JSON answer that names the backend.
    pub marker: Option<String>,
    /// How long one request may take.
    pub timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{0}: the URL needs a host")]
    NoHost(Uri),
    #[error("{url}: cannot resolve {host}: {reason}")]
    Resolve {
        url: Uri,
        host: String,
        reason: String,
    },
    #[error("--rate must be a finite number of at least 0, --connections above 0")]
    Rate,
    #[error("a connection's task failed: {0}")]
    Task(String),
}

/// What one connection saw.
#[derive(Default)]
struct Tally {
    requests: u64,
    statuses: BTreeMap<u16, u64>,
    errors: BTreeMap<String, u64>,
    markers: BTreeMap<String, u64>,
    /// Times the marker changed from one answer to the next.
    switches: u64,
    last_marker: Option<String>,
    /// The first failures, for the report.
    failures: Vec<Value>,
    latencies_us: Vec<u64>,
    /// When the marker changed (milliseconds since the Unix epoch), and to what.
    changes: Vec<(u64, String)>,
}

const FAILURES_KEPT: usize = 50;
const CHANGES_KEPT: usize = 2000;

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Tally {
    fn answered(&mut self, status: u16, marker: Option<String>, latency: Duration) {
        self.requests += 1;
        *self.statuses.entry(status).or_default() += 1;
        self.latencies_us
            .push(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX));
        if let Some(marker) = marker {
            if self.last_marker.as_ref().is_some_and(|m| *m != marker) {
                self.switches += 1;
            }
            if self.last_marker.as_ref() != Some(&marker) && self.changes.len() < CHANGES_KEPT {
                self.changes.push((unix_ms(), marker.clone()));
            }
            *self.markers.entry(marker.clone()).or_default() += 1;
            self.last_marker = Some(marker);
        }
    }

    fn failed(&mut self, at: Duration, connection: usize, what: String) {
        self.requests += 1;
        *self.errors.entry(what.clone()).or_default() += 1;
        if self.failures.len() < FAILURES_KEPT {
            self.failures.push(json!({
                "atMs": at.as_millis() as u64,
                "connection": connection,
                "error": what,
            }));
        }
    }
}

/// Runs the load and returns the report as JSON.
pub async fn run(options: Options) -> Result<Value, LoadError> {
    if !(options.rate.is_finite() && options.rate >= 0.0) || options.connections == 0 {
        return Err(LoadError::Rate);
    }
    let host = options
        .url
        .host()
        .ok_or_else(|| LoadError::NoHost(options.url.clone()))?
        .to_owned();
    let port = options.url.port_u16().unwrap_or(80);
    let address = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|e| e.to_string())
        .and_then(|mut a| a.next().ok_or_else(|| "no address".to_owned()))
        .map_err(|reason| LoadError::Resolve {
            url: options.url.clone(),
            host: host.clone(),
            reason,
        })?;
    let started = Instant::now();
    let shared = Arc::new(options);
    let issued = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..shared.connections)
        .map(|n| {
            let start = Start {
                address,
                n,
                started,
                issued: issued.clone(),
            };
            tokio::spawn(connection(shared.clone(), start))
        })
        .collect();
    let mut tallies = Vec::new();
    for worker in workers {
        // A lost task would lose its failures: the run fails instead.
        tallies.push(worker.await.map_err(|e| LoadError::Task(e.to_string()))?);
    }
    Ok(report(&shared, &tallies, started.elapsed()))
}

/// Where a connection starts: its number, and the run's start and count of
/// requests issued.
struct Start {
    address: SocketAddr,
    n: usize,
    started: Instant,
    issued: Arc<AtomicU64>,
}

/// One connection's worth of the rate, until the duration is up or the
/// requests are all issued.
async fn connection(options: Arc<Options>, start: Start) -> Tally {
    let Start {
        address,
        n,
        started,
        issued,
    } = start;
    let mut ticks = (options.rate > 0.0).then(|| {
        let period = Duration::from_secs_f64(options.connections as f64 / options.rate);
        // Connections start spread over one period, not all at once.
        let offset = period.mul_f64(n as f64 / options.connections as f64);
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks
    });
    let mut client: Option<Client> = None;
    let mut tally = Tally::default();
    loop {
        if let Some(ticks) = &mut ticks {
            ticks.tick().await;
        }
        if started.elapsed() >= options.duration {
            return tally;
        }
        if options
            .requests
            .is_some_and(|all| issued.fetch_add(1, Ordering::Relaxed) >= all)
        {
            return tally;
        }
        let sent = Instant::now();
        let outcome =
            tokio::time::timeout(options.timeout, one_request(&options, address, &mut client))
                .await
                .unwrap_or_else(|_| {
                    client = None;
                    Err("timed out".to_owned())
                });
        match outcome {
            Ok((status, marker)) => tally.answered(status, marker, sent.elapsed()),
            Err(what) => tally.failed(started.elapsed(), n, what),
        }
        if options.mode == Mode::NewConnection {
            client = None;
        }
    }
}

enum Client {
    Http1(http1::SendRequest<Empty<Bytes>>),
    Http2(http2::SendRequest<Empty<Bytes>>),
}

impl Client {
    fn usable(&self) -> bool {
        match self {
            Client::Http1(s) => !s.is_closed() && s.is_ready(),
            Client::Http2(s) => !s.is_closed() && s.is_ready(),
        }
    }
}

async fn connect(address: SocketAddr, mode: Mode) -> Result<Client, String> {
    let stream = TcpStream::connect(address)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let io = TokioIo::new(stream);
    if mode == Mode::Http2 {
        let (sender, conn) = http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|e| format!("h2 handshake: {e}"))?;
        tokio::spawn(conn);
        Ok(Client::Http2(sender))
    } else {
        let (sender, conn) = http1::handshake(io)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(conn);
        Ok(Client::Http1(sender))
    }
}

/// One request on the connection kept in `client` (made anew when the server
/// closed it, as any HTTP client does); the status and the marker.
async fn one_request(
    options: &Options,
    address: SocketAddr,
    client: &mut Option<Client>,
) -> Result<(u16, Option<String>), String> {
    if !client.as_ref().is_some_and(Client::usable) {
        *client = Some(connect(address, options.mode).await?);
    }
    let Some(live) = client.as_mut() else {
        return Err("no connection".to_owned());
    };
    let authority = options
        .url
        .authority()
        .map_or_else(String::new, |a| a.as_str().to_owned());
    let path = options.url.path_and_query().map_or("/", |p| p.as_str());
    let answer = match live {
        Client::Http1(sender) => {
            let request = Request::get(path)
                .header(http::header::HOST, &authority)
                .body(Empty::new())
                .map_err(|e| e.to_string())?;
            sender.send_request(request).await
        }
        Client::Http2(sender) => {
            let request = Request::get(format!("http://{authority}{path}"))
                .version(http::Version::HTTP_2)
                .body(Empty::new())
                .map_err(|e| e.to_string())?;
            sender.send_request(request).await
        }
    };
    let response = answer.map_err(|e| {
        *client = None;
        format!("request: {e}")
    })?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| {
            *client = None;
            format!("body: {e}")
        })?
        .to_bytes();
    let marker = options.marker.as_deref().and_then(|field| {
        serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v[field].as_str().map(str::to_owned))
    });
    Ok((status, marker))
}

fn report(options: &Options, tallies: &[Tally], elapsed: Duration) -> Value {
    let mut total = Tally::default();
    let mut switches = Vec::new();
    let mut changes = Vec::new();
    for (connection, t) in tallies.iter().enumerate() {
        changes.extend(
            t.changes
                .iter()
                .map(|(at, to)| json!({"atUnixMs": at, "connection": connection, "to": to})),
        );
        total.requests += t.requests;
        for (k, v) in &t.statuses {
            *total.statuses.entry(*k).or_default() += v;
        }
        for (k, v) in &t.errors {
            *total.errors.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &t.markers {
            *total.markers.entry(k.clone()).or_default() += v;
        }
        total.failures.extend(t.failures.iter().cloned());
        total.latencies_us.extend(&t.latencies_us);
        switches.push(t.switches);
    }
    total.latencies_us.sort_unstable();
    let percentile = |p: f64| {
        let n = total.latencies_us.len();
        if n == 0 {
            return 0.0;
        }
        let i = ((n as f64 * p).ceil() as usize).clamp(1, n) - 1;
        total.latencies_us[i] as f64 / 1000.0
    };
    let failed: u64 = total.errors.values().sum::<u64>()
        + total
            .statuses
            .iter()
            .filter(|(s, _)| !(200..400).contains(*s))
            .map(|(_, n)| n)
            .sum::<u64>();
    json!({
        "url": options.url.to_string(),
        "mode": format!("{:?}", options.mode),
        "seconds": elapsed.as_secs_f64(),
        "requests": total.requests,
        "failed": failed,
        "statuses": total.statuses.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "errors": total.errors,
        "markers": total.markers,
        "switchesPerConnection": switches,
        "changes": changes,
        "failures": total.failures,
        "latencyMs": {"p50": percentile(0.5), "p90": percentile(0.9), "p99": percentile(0.99)},
    })
}

//! What one request or connection left for its access log line, and what
//! each command operator reads from it.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderName, HeaderValue};

use super::format::{HeaderKey, HeaderOp, Operator};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value<'a> {
    Absent,
    Text(Cow<'a, str>),
    Number(u64),
}

/// The parts of a request head a log may print: kept only when a log is on,
/// and only the headers its formats name.
#[derive(Debug, Default, Clone)]
pub struct RequestHead {
    pub method: String,
    /// Path and query, as the client sent them.
    pub path: String,
    pub authority: Option<String>,
    pub scheme: Option<&'static str>,
    pub protocol: &'static str,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl RequestHead {
    /// Keeps from `headers` those in `wanted`.
    pub fn keep(headers: &HeaderMap, wanted: &[HeaderName]) -> Vec<(HeaderName, HeaderValue)> {
        wanted
            .iter()
            .filter_map(|name| Some((name.clone(), headers.get(name)?.clone())))
            .collect()
    }
}

/// One log entry. HTTP requests have a `request`; TCP connections do not,
/// and their response code is 0, as Envoy's.
#[derive(Debug)]
pub struct Entry<'a> {
    pub start: SystemTime,
    pub duration: Duration,
    pub request: Option<&'a RequestHead>,
    pub response_headers: &'a [(HeaderName, HeaderValue)],
    pub response_code: u16,
    pub flags: &'a str,
    pub details: Option<&'a str>,
    pub termination_details: Option<&'a str>,
    pub transport_failure: Option<&'a str>,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub upstream_host: Option<SocketAddr>,
    pub upstream_local: Option<SocketAddr>,
    pub upstream_cluster: Option<&'a str>,
    pub upstream_peer_uri: Option<&'a str>,
    /// The address the client connected to (the original destination).
    pub downstream_local: SocketAddr,
    /// The client, as `x-forwarded-for` and trusted hops make it out.
    pub downstream_remote: SocketAddr,
    /// The peer of the connection itself.
    pub downstream_direct: SocketAddr,
    pub downstream_peer_uri: Option<&'a str>,
    pub local_uri: Option<&'a str>,
    pub sni: Option<&'a str>,
    pub route_name: Option<&'a str>,
}

fn text(s: Option<&str>) -> Value<'_> {
    match s {
        Some(s) if !s.is_empty() => Value::Text(Cow::Borrowed(s)),
        _ => Value::Absent,
    }
}

fn owned(s: String) -> Value<'static> {
    Value::Text(Cow::Owned(s))
}

impl Entry<'_> {
    pub fn value(&self, op: &Operator) -> Value<'_> {
        use Operator::*;
        match op {
            StartTime(format) => owned(format.render(self.start)),
            Request(h) => self.request_header(h),
            RequestWithoutQuery(h) => match self.request_header(h) {
                Value::Text(t) => match t.split_once('?') {
                    Some((path, _)) => owned(path.to_owned()),
                    None => Value::Text(t),
                },
                other => other,
            },
            Response(h) => self.response_header(h),
            Protocol => text(self.request.map(|r| r.protocol)),
            ResponseCode => Value::Number(u64::from(self.response_code)),
            ResponseFlags => match self.flags {
                "" => Value::Text(Cow::Borrowed("-")),
                flags => Value::Text(Cow::Borrowed(flags)),
            },
            ResponseCodeDetails => text(self.details),
            ConnectionTerminationDetails => text(self.termination_details),
            UpstreamTransportFailureReason => text(self.transport_failure),
            BytesReceived => Value::Number(self.bytes_received),
            BytesSent => Value::Number(self.bytes_sent),
            Duration => Value::Number(self.duration.as_millis() as u64),
            UpstreamHost => address(self.upstream_host),
            UpstreamLocalAddress => address(self.upstream_local),
            UpstreamCluster | UpstreamClusterRaw => text(self.upstream_cluster),
            UpstreamPeerUriSan => text(self.upstream_peer_uri),
            DownstreamLocalAddress => address(Some(self.downstream_local)),
            DownstreamLocalAddressWithoutPort => owned(self.downstream_local.ip().to_string()),
            DownstreamLocalPort => Value::Number(u64::from(self.downstream_local.port())),
            DownstreamRemoteAddress => address(Some(self.downstream_remote)),
            DownstreamRemoteAddressWithoutPort => owned(self.downstream_remote.ip().to_string()),
            DownstreamRemotePort => Value::Number(u64::from(self.downstream_remote.port())),
            DownstreamDirectRemoteAddress => address(Some(self.downstream_direct)),
            DownstreamDirectRemoteAddressWithoutPort => {
                owned(self.downstream_direct.ip().to_string())
            }
            DownstreamPeerUriSan => text(self.downstream_peer_uri),
            DownstreamLocalUriSan => text(self.local_uri),
            RequestedServerName => text(self.sni),
            RouteName => text(self.route_name),
            Hostname => text(Some(hostname())),
            Environment(value) => value.clone().map_or(Value::Absent, owned),
            NotKept(_) => Value::Absent,
        }
    }

    fn request_header(&self, op: &HeaderOp) -> Value<'_> {
        let Some(request) = self.request else {
            return Value::Absent;
        };
        op.first(|key| match key {
            HeaderKey::Method => text(Some(&request.method)),
            HeaderKey::Path => text(Some(&request.path)),
            HeaderKey::Authority => text(request.authority.as_deref()),
            HeaderKey::Scheme => text(request.scheme),
            HeaderKey::Header(name) => header(&request.headers, name),
        })
    }

    fn response_header(&self, op: &HeaderOp) -> Value<'_> {
        op.first(|key| match key {
            HeaderKey::Header(name) => header(self.response_headers, name),
            _ => Value::Absent,
        })
    }
}

impl HeaderOp {
    /// The main header's value, else the alternative's.
    fn first<'a>(&self, value: impl Fn(&HeaderKey) -> Value<'a>) -> Value<'a> {
        match value(&self.main) {
            Value::Absent => self.alt.as_ref().map_or(Value::Absent, value),
            found => found,
        }
    }
}

/// A header's value in a kept list, if present and not empty.
pub fn header<'a>(headers: &'a [(HeaderName, HeaderValue)], name: &HeaderName) -> Value<'a> {
    let value = headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| String::from_utf8_lossy(v.as_bytes()));
    match value {
        Some(v) if !v.is_empty() => Value::Text(v),
        _ => Value::Absent,
    }
}

fn address(address: Option<SocketAddr>) -> Value<'static> {
    address.map_or(Value::Absent, |a| owned(a.to_string()))
}

fn hostname() -> &'static str {
    static HOSTNAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HOSTNAME.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_default()
    })
}

/// Envoy's `%RESPONSE_CODE_DETAILS%` for an answer the proxy made itself
/// and gave no more precise reason for, by its response flag.
pub fn details_for(flags: &str, from_upstream: bool) -> Option<&'static str> {
    Some(match flags {
        // Retries spent (URX) on upstream 5xx: the last answer is the upstream's.
        "" | "DI" | "URX" if from_upstream => "via_upstream",
        "NR" => "route_not_found",
        "NC" => "cluster_not_found",
        "UH" => "no_healthy_upstream",
        "UF" | "URX" => "upstream_reset_before_response_started{connection_failure}",
        "UT" => "upstream_response_timeout",
        "UO" => "upstream_reset_before_response_started{overflow}",
        "FI" | "DI,FI" => "fault_filter_abort",
        "RL" => "request_rate_limited",
        "DC" => "downstream_remote_disconnect",
        _ => return None,
    })
}

/// What a request keeps until its response ends, when the duration and
/// bytes sent are known: for its log line, or for the metric tags a
/// Telemetry sets from expressions.
#[derive(Debug)]
pub struct Pending {
    /// The logs the line goes to; `None` when kept for the tags alone.
    pub logs: Option<std::sync::Arc<super::AccessLogs>>,
    pub start: SystemTime,
    pub request: RequestHead,
    pub response_headers: Vec<(HeaderName, HeaderValue)>,
    pub response_code: u16,
    pub flags: &'static str,
    pub details: Option<String>,
    pub upstream_host: Option<SocketAddr>,
    pub upstream_local: Option<SocketAddr>,
    pub upstream_cluster: Option<String>,
    pub upstream_peer_uri: Option<String>,
    pub downstream_local: SocketAddr,
    pub downstream_remote: SocketAddr,
    pub downstream_direct: SocketAddr,
    pub downstream_peer_uri: Option<String>,
    pub local_uri: Option<std::sync::Arc<str>>,
    pub sni: Option<std::sync::Arc<str>>,
    pub route_name: Option<String>,
}

impl Pending {
    /// Writes the line, now that the exchange is over.
    pub fn write(&self, duration: Duration, bytes_received: u64, bytes_sent: u64) {
        if let Some(logs) = &self.logs {
            logs.write(&self.entry(duration, bytes_received, bytes_sent));
        }
    }

    /// The exchange's attributes, as the log formats and expressions read them.
    pub fn entry(&self, duration: Duration, bytes_received: u64, bytes_sent: u64) -> Entry<'_> {
        Entry {
            start: self.start,
            duration,
            request: Some(&self.request),
            response_headers: &self.response_headers,
            response_code: self.response_code,
            flags: self.flags,
            details: self.details.as_deref(),
            termination_details: None,
            transport_failure: None,
            bytes_received,
            bytes_sent,
            upstream_host: self.upstream_host,
            upstream_local: self.upstream_local,
            upstream_cluster: self.upstream_cluster.as_deref(),
            upstream_peer_uri: self.upstream_peer_uri.as_deref(),
            downstream_local: self.downstream_local,
            downstream_remote: self.downstream_remote,
            downstream_direct: self.downstream_direct,
            downstream_peer_uri: self.downstream_peer_uri.as_deref(),
            local_uri: self.local_uri.as_deref(),
            sni: self.sni.as_deref(),
            route_name: self.route_name.as_deref(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::details_for;

    #[test]
    fn details_follow_envoys_for_the_flags_and_whether_the_upstream_answered() {
        let cases = [
            ("", true, Some("via_upstream")),
            ("URX", true, Some("via_upstream")),
            (
                "URX",
                false,
                Some("upstream_reset_before_response_started{connection_failure}"),
            ),
            ("NR", false, Some("route_not_found")),
            ("UT", true, Some("upstream_response_timeout")),
            ("", false, None),
        ];
        for (flags, from_upstream, details) in cases {
            assert_eq!(
                details_for(flags, from_upstream),
                details,
                "{flags} {from_upstream}"
            );
        }
    }
}

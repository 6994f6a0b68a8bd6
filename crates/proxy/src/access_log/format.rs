//! Envoy's substitution format strings: text with `%OPERATOR(args):N%`
//! command operators, or a JSON object whose string values are such texts.
//! Parsed once when the config arrives (an unknown operator refuses the
//! config, as Envoy does), rendered per request into one line.

use std::fmt::Write as _;

use http::HeaderName;

use super::entry::{Entry, Value};
use super::start_time::TimeFormat;

/// A header a `REQ`/`RESP` operator reads, or the pseudo-header it stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderKey {
    Method,
    Path,
    Authority,
    Scheme,
    Header(HeaderName),
}

/// `REQ(main?alt)`: `alt` when `main` is absent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderOp {
    pub main: HeaderKey,
    pub alt: Option<HeaderKey>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operator {
    StartTime(TimeFormat),
    Request(HeaderOp),
    RequestWithoutQuery(HeaderOp),
    Response(HeaderOp),
    Protocol,
    ResponseCode,
    ResponseFlags,
    ResponseCodeDetails,
    ConnectionTerminationDetails,
    UpstreamTransportFailureReason,
    BytesReceived,
    BytesSent,
    Duration,
    UpstreamHost,
    UpstreamCluster,
    UpstreamClusterRaw,
    UpstreamLocalAddress,
    DownstreamLocalAddress,
    DownstreamLocalAddressWithoutPort,
    DownstreamLocalPort,
    DownstreamRemoteAddress,
    DownstreamRemoteAddressWithoutPort,
    DownstreamRemotePort,
    DownstreamDirectRemoteAddress,
    DownstreamDirectRemoteAddressWithoutPort,
    DownstreamPeerUriSan,
    DownstreamLocalUriSan,
    UpstreamPeerUriSan,
    RequestedServerName,
    RouteName,
    Hostname,
    /// `ENVIRONMENT(NAME)`: the variable's value, read once when the config
    /// arrives.
    Environment(Option<String>),
    /// An operator Envoy knows that this proxy has no value for yet
    /// (`GRPC_STATUS`, `DYNAMIC_METADATA(...)`...): printed as absent, so a
    /// format Envoy takes is never refused for it.
    NotKept(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Text(String),
    Operator { op: Operator, max: Option<usize> },
}

/// One format string, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template(Vec<Piece>);

#[derive(Debug, Clone, PartialEq)]
pub enum Format {
    Text(Template),
    /// Keys in the order written, each with its template.
    Json(Vec<(String, Template)>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct LogFormat {
    pub format: Format,
    /// Fields whose value is absent are left out (`omit_empty_values`).
    pub omit_empty: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    #[error("unclosed command operator at byte {0} (a literal % is written %%)")]
    Unclosed(usize),
    #[error("unknown command operator %{0}%")]
    Unknown(String),
    #[error("%{0}% needs an argument, as %{0}(...)%")]
    MissingArgument(String),
    #[error("%{0}% takes no argument")]
    UnexpectedArgument(String),
    #[error("%{op}%: {reason}")]
    Invalid { op: String, reason: String },
}

impl Template {
    pub fn parse(text: &str) -> Result<Self, FormatError> {
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        let mut offset = 0;
        while let Some(at) = rest.find('%') {
            literal.push_str(&rest[..at]);
            let after = &rest[at + 1..];
            if let Some(tail) = after.strip_prefix('%') {
                literal.push('%');
                offset += at + 2;
                rest = tail;
                continue;
            }
            let end = operator_end(after).ok_or(FormatError::Unclosed(offset + at))?;
            if !literal.is_empty() {
                pieces.push(Piece::Text(std::mem::take(&mut literal)));
            }
            pieces.push(parse_operator(&after[..end])?);
            offset += at + end + 2;
            rest = &after[end + 1..];
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            pieces.push(Piece::Text(literal));
        }
        Ok(Self(pieces))
    }

    pub fn pieces(&self) -> &[Piece] {
        &self.0
    }

    /// Appends the rendering to `out`; absent values print as `-` (as
    /// nothing with `omit_empty_values`).
    pub fn render_text(&self, entry: &Entry<'_>, out: &mut String) {
        self.render_with(entry, out, "-");
    }

    fn render_with(&self, entry: &Entry<'_>, out: &mut String, absent: &str) {
        for piece in &self.0 {
            match piece {
                Piece::Text(text) => out.push_str(text),
                Piece::Operator { op, max } => match entry.value(op) {
                    Value::Absent => out.push_str(absent),
                    value => push_value(out, &value, *max),
                },
            }
        }
    }

    /// A JSON value: one operator alone keeps its type (a number, or null
    /// when absent), as Envoy's JSON formatter does; anything else a string.
    fn json_value(&self, entry: &Entry<'_>) -> serde_json::Value {
        if let [Piece::Operator { op, max }] = self.0.as_slice() {
            return match entry.value(op) {
                Value::Absent => serde_json::Value::Null,
                Value::Number(n) => serde_json::Value::from(n),
                value => {
                    let mut text = String::new();
                    push_value(&mut text, &value, *max);
                    serde_json::Value::String(text)
                }
            };
        }
        let mut text = String::new();
        self.render_text(entry, &mut text);
        serde_json::Value::String(text)
    }
}

impl LogFormat {
    /// One log line, ending in a newline.
    pub fn render(&self, entry: &Entry<'_>) -> String {
        let mut out = String::with_capacity(256);
        match &self.format {
            Format::Text(template) => {
                let absent = if self.omit_empty { "" } else { "-" };
                template.render_with(entry, &mut out, absent);
                if !out.ends_with('\n') {
                    out.push('\n');
                }
            }
            Format::Json(fields) => {
                let mut object = serde_json::Map::with_capacity(fields.len());
                for (key, template) in fields {
                    let value = template.json_value(entry);
                    if !(self.omit_empty && value.is_null()) {
                        object.insert(key.clone(), value);
                    }
                }
                out = serde_json::Value::Object(object).to_string();
                out.push('\n');
            }
        }
        out
    }

    /// Every template, for what the request must keep for the log.
    pub fn templates(&self) -> Vec<&Template> {
        match &self.format {
            Format::Text(t) => vec![t],
            Format::Json(fields) => fields.iter().map(|(_, t)| t).collect(),
        }
    }
}

/// Where the operator that begins `text` (after its `%`) ends: the next `%`
/// outside parentheses (an argument may hold `%`, as START_TIME's does).
fn operator_end(text: &str) -> Option<usize> {
    let mut depth = 0usize;
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            '%' if depth == 0 => return Some(i),
            _ => {}
        }
    }
    None
}

/// `NAME`, `NAME(arg)`, either with `:N` (the most characters printed).
fn parse_operator(text: &str) -> Result<Piece, FormatError> {
    let (body, max) = match text.rsplit_once(':') {
        Some((body, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
            let max = n.parse().map_err(|_| FormatError::Invalid {
                op: text.to_owned(),
                reason: "length out of range".to_owned(),
            })?;
            (body, Some(max))
        }
        _ => (text, None),
    };
    let (name, argument) = match body.split_once('(') {
        Some((name, arg)) => {
            let arg = arg.strip_suffix(')').ok_or_else(|| FormatError::Invalid {
                op: text.to_owned(),
                reason: "the argument's ) is missing".to_owned(),
            })?;
            (name, Some(arg))
        }
        None => (body, None),
    };
    let op = operator(name, argument)?;
    Ok(Piece::Operator { op, max })
}

fn operator(name: &str, argument: Option<&str>) -> Result<Operator, FormatError> {
    let needs = |arg: Option<&str>| {
        arg.filter(|a| !a.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| FormatError::MissingArgument(name.to_owned()))
    };
    match name {
        "START_TIME" => {
            let format = argument.filter(|a| !a.is_empty());
            TimeFormat::parse(format)
                .map(Operator::StartTime)
                .map_err(|reason| FormatError::Invalid {
                    op: name.to_owned(),
                    reason,
                })
        }
        "REQ" => header_op(name, &needs(argument)?).map(Operator::Request),
        "REQ_WITHOUT_QUERY" => {
            header_op(name, &needs(argument)?).map(Operator::RequestWithoutQuery)
        }
        "RESP" => header_op(name, &needs(argument)?).map(Operator::Response),
        "ENVIRONMENT" => Ok(Operator::Environment(std::env::var(needs(argument)?).ok())),
        _ if ENVOY_WITH_ARGUMENT.contains(&name) => {
            needs(argument)?;
            Ok(Operator::NotKept(name.to_owned()))
        }
        _ if argument.is_some() => Err(FormatError::UnexpectedArgument(name.to_owned())),
        _ if ENVOY_PLAIN.contains(&name) => Ok(Operator::NotKept(name.to_owned())),
        _ => plain(name).ok_or_else(|| FormatError::Unknown(name.to_owned())),
    }
}

/// Envoy's operators with an argument that have no value here yet.
const ENVOY_WITH_ARGUMENT: [&str; 8] = [
    "DYNAMIC_METADATA",
    "CLUSTER_METADATA",
    "UPSTREAM_METADATA",
    "FILTER_STATE",
    "UPSTREAM_FILTER_STATE",
    "TRAILER",
    "METADATA",
    "CEL",
];

/// Envoy's plain operators that have no value here yet.
const ENVOY_PLAIN: [&str; 24] = [
    "GRPC_STATUS",
    "GRPC_STATUS_NUMBER",
    "REQUEST_DURATION",
    "REQUEST_TX_DURATION",
    "RESPONSE_DURATION",
    "RESPONSE_TX_DURATION",
    "ROUNDTRIP_DURATION",
    "RESPONSE_FLAGS_LONG",
    "REQUEST_HEADERS_BYTES",
    "RESPONSE_HEADERS_BYTES",
    "RESPONSE_TRAILERS_BYTES",
    "UPSTREAM_WIRE_BYTES_SENT",
    "UPSTREAM_WIRE_BYTES_RECEIVED",
    "DOWNSTREAM_WIRE_BYTES_SENT",
    "DOWNSTREAM_WIRE_BYTES_RECEIVED",
    "UPSTREAM_REQUEST_ATTEMPT_COUNT",
    "CONNECTION_ID",
    "STREAM_ID",
    "UPSTREAM_CONNECTION_ID",
    "DOWNSTREAM_TLS_VERSION",
    "DOWNSTREAM_TLS_CIPHER",
    "DOWNSTREAM_PEER_SUBJECT",
    "DOWNSTREAM_PEER_FINGERPRINT_256",
    "VIRTUAL_CLUSTER_NAME",
];

fn plain(name: &str) -> Option<Operator> {
    use Operator::*;
    Some(match name {
        "PROTOCOL" => Protocol,
        "RESPONSE_CODE" => ResponseCode,
        "RESPONSE_FLAGS" => ResponseFlags,
        "RESPONSE_CODE_DETAILS" => ResponseCodeDetails,
        "CONNECTION_TERMINATION_DETAILS" => ConnectionTerminationDetails,
        "UPSTREAM_TRANSPORT_FAILURE_REASON" => UpstreamTransportFailureReason,
        "BYTES_RECEIVED" => BytesReceived,
        "BYTES_SENT" => BytesSent,
        "DURATION" => Duration,
        "UPSTREAM_HOST" | "UPSTREAM_REMOTE_ADDRESS" => UpstreamHost,
        "UPSTREAM_CLUSTER" => UpstreamCluster,
        "UPSTREAM_CLUSTER_RAW" => UpstreamClusterRaw,
        "UPSTREAM_LOCAL_ADDRESS" => UpstreamLocalAddress,
        "DOWNSTREAM_LOCAL_ADDRESS" => DownstreamLocalAddress,
        "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT" => DownstreamLocalAddressWithoutPort,
        "DOWNSTREAM_LOCAL_PORT" => DownstreamLocalPort,
        "DOWNSTREAM_REMOTE_ADDRESS" => DownstreamRemoteAddress,
        "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT" => DownstreamRemoteAddressWithoutPort,
        "DOWNSTREAM_REMOTE_PORT" => DownstreamRemotePort,
        "DOWNSTREAM_DIRECT_REMOTE_ADDRESS" => DownstreamDirectRemoteAddress,
        "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT" => DownstreamDirectRemoteAddressWithoutPort,
        "DOWNSTREAM_PEER_URI_SAN" => DownstreamPeerUriSan,
        "DOWNSTREAM_LOCAL_URI_SAN" => DownstreamLocalUriSan,
        "UPSTREAM_PEER_URI_SAN" => UpstreamPeerUriSan,
        "REQUESTED_SERVER_NAME" => RequestedServerName,
        "ROUTE_NAME" => RouteName,
        "HOSTNAME" => Hostname,
        _ => return None,
    })
}

/// `main` or `main?alt`: header names, or `:method`, `:path`,
/// `:authority` (`host` too) and `:scheme`.
fn header_op(name: &str, argument: &str) -> Result<HeaderOp, FormatError> {
    let (main, alt) = match argument.split_once('?') {
        Some((main, alt)) => (main, Some(alt)),
        None => (argument, None),
    };
    let key = |text: &str| {
        header_key(text).ok_or_else(|| FormatError::Invalid {
            op: name.to_owned(),
            reason: format!("{text:?} is not a header name"),
        })
    };
    Ok(HeaderOp {
        main: key(main)?,
        alt: alt.map(key).transpose()?,
    })
}

fn header_key(text: &str) -> Option<HeaderKey> {
    let lower = text.to_ascii_lowercase();
    Some(match lower.as_str() {
        ":method" => HeaderKey::Method,
        ":path" => HeaderKey::Path,
        ":authority" | "host" => HeaderKey::Authority,
        ":scheme" => HeaderKey::Scheme,
        _ => HeaderKey::Header(HeaderName::from_bytes(lower.as_bytes()).ok()?),
    })
}

fn push_value(out: &mut String, value: &Value<'_>, max: Option<usize>) {
    let start = out.len();
    match value {
        Value::Absent => out.push('-'),
        Value::Text(text) => out.push_str(text),
        Value::Number(n) => {
            let _ = write!(out, "{n}");
        }
    }
    if let Some(max) = max {
        let end = out[start..]
            .char_indices()
            .nth(max)
            .map_or(out.len(), |(i, _)| start + i);
        out.truncate(end);
    }
}

#[cfg(test)]
mod tests;

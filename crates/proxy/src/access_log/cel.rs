//! CEL expressions over Envoy's request attributes, compiled by the `cel`
//! crate when the config arrives and evaluated per request or connection:
//! Envoy's CEL access-log filter (`envoy.access_loggers.extension_filters.cel`,
//! what a Telemetry `accessLogging[].filter.expression` becomes), which logs
//! an entry when the expression is `true` (an error or any other value does
//! not log it); and the values of the metric tags a Telemetry
//! `tagOverrides` sets (`istio.stats` dimensions).

use std::collections::HashMap;
use std::sync::Arc;

use cel::objects::Map;
use cel::{Context, Program, Value};

use super::entry::Entry;

/// The attribute roots Envoy offers an access-log expression.
const ROOTS: [&str; 7] = [
    "request",
    "response",
    "connection",
    "source",
    "destination",
    "upstream",
    "xds",
];

pub struct CelExpression {
    source: String,
    program: Program,
    /// Which of [`ROOTS`] the expression reads: only those are built.
    reads: [bool; ROOTS.len()],
    /// It reads request or response headers: keep them all for it.
    pub reads_headers: bool,
}

impl std::fmt::Debug for CelExpression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("CelExpression").field(&self.source).finish()
    }
}

impl PartialEq for CelExpression {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for CelExpression {}

/// Compiles `source`; the error is the parser's, with where it went wrong.
pub fn compile(source: &str) -> Result<Arc<CelExpression>, String> {
    let program = Program::compile(source).map_err(|e| e.to_string())?;
    let references = program.references();
    let reads = ROOTS.map(|root| references.has_variable(root));
    // The attribute maps are built per entry; the headers in them are kept
    // per request only for an expression that reads them.
    let reads_headers = (reads[0] || reads[1]) && source.contains("headers");
    Ok(Arc::new(CelExpression {
        source: source.to_owned(),
        program,
        reads,
        reads_headers,
    }))
}

impl CelExpression {
    pub fn source(&self) -> &str {
        &self.source
    }

    /// It reads the request's attributes: the request's head must be kept.
    pub fn reads_request(&self) -> bool {
        self.reads[0]
    }

    /// It reads the response's attributes.
    pub fn reads_response(&self) -> bool {
        self.reads[1]
    }

    pub fn admits(&self, entry: &Entry<'_>) -> bool {
        matches!(self.evaluate(entry), Some(Value::Bool(true)))
    }

    fn evaluate(&self, entry: &Entry<'_>) -> Option<Value> {
        // The standard functions are registered once per worker thread;
        // each entry's attributes go in a scope of their own.
        thread_local! {
            static STANDARD: Context<'static, 'static> = Context::default();
        }
        STANDARD.with(|standard| {
            let mut context = standard.new_inner_scope();
            for (root, read) in ROOTS.iter().zip(self.reads) {
                if read {
                    context.add_variable_from_value(*root, attributes(root, entry));
                }
            }
            self.program.execute(&context).ok()
        })
    }
}

/// Each expression's value as a metric tag (see [`CelExpression::text`]),
/// the attributes they read built once.
pub fn texts(expressions: &[Arc<CelExpression>], entry: &Entry<'_>) -> Vec<Option<String>> {
    thread_local! {
        static STANDARD: Context<'static, 'static> = Context::default();
    }
    STANDARD.with(|standard| {
        let mut context = standard.new_inner_scope();
        for (i, root) in ROOTS.iter().enumerate() {
            if expressions.iter().any(|e| e.reads[i]) {
                context.add_variable_from_value(*root, attributes(root, entry));
            }
        }
        expressions
            .iter()
            .map(|e| tag_text(e.program.execute(&context).ok()?))
            .collect()
    })
}

/// A value as a metric tag: strings as they are, numbers and booleans
/// printed; `None` for a value of another kind.
fn tag_text(value: Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.to_string()),
        Value::Int(n) => Some(n.to_string()),
        Value::UInt(n) => Some(n.to_string()),
        Value::Float(x) => Some(x.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn map(entries: Vec<(&'static str, Value)>) -> Value {
    let fields: HashMap<String, Value> = entries
        .into_iter()
        .filter(|(_, v)| !matches!(v, Value::Null))
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    Value::Map(Map::from(fields))
}

fn string(s: Option<&str>) -> Value {
    s.map_or(Value::Null, |s| Value::String(Arc::new(s.to_owned())))
}

fn headers(list: &[(http::HeaderName, http::HeaderValue)]) -> Value {
    let fields: HashMap<String, Value> = list
        .iter()
        .map(|(name, value)| {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            (name.as_str().to_owned(), Value::String(Arc::new(value)))
        })
        .collect();
    Value::Map(Map::from(fields))
}

fn address(a: Option<std::net::SocketAddr>) -> [(&'static str, Value); 2] {
    [
        ("address", string(a.map(|a| a.to_string()).as_deref())),
        (
            "port",
            a.map_or(Value::Null, |a| Value::Int(i64::from(a.port()))),
        ),
    ]
}

/// Envoy's attributes under `root`, as far as the entry knows them.
fn attributes(root: &str, e: &Entry<'_>) -> Value {
    match root {
        "request" => request(e),
        "response" => map(vec![
            ("code", Value::Int(i64::from(e.response_code))),
            ("code_details", string(e.details)),
            ("headers", headers(e.response_headers)),
            ("size", Value::Int(e.bytes_sent as i64)),
        ]),
        "connection" => map(vec![
            ("mtls", Value::Bool(e.downstream_peer_uri.is_some())),
            ("requested_server_name", string(e.sni)),
            ("termination_details", string(e.termination_details)),
        ]),
        "source" => map(address(Some(e.downstream_remote)).to_vec()),
        "destination" => map(address(Some(e.downstream_local)).to_vec()),
        "upstream" => {
            let mut fields = address(e.upstream_host).to_vec();
            fields.push((
                "local_address",
                string(e.upstream_local.map(|a| a.to_string()).as_deref()),
            ));
            fields.push(("transport_failure_reason", string(e.transport_failure)));
            map(fields)
        }
        _ => map(vec![
            ("cluster_name", string(e.upstream_cluster)),
            ("route_name", string(e.route_name)),
        ]),
    }
}

fn request(e: &Entry<'_>) -> Value {
    let Some(r) = e.request else {
        return map(Vec::new());
    };
    let header = |name: &str| {
        r.headers
            .iter()
            .find(|(n, _)| n.as_str() == name)
            .and_then(|(_, v)| v.to_str().ok())
    };
    let (url_path, query) = match r.path.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (r.path.as_str(), None),
    };
    map(vec![
        ("path", string(Some(&r.path))),
        ("url_path", string(Some(url_path))),
        ("query", string(query)),
        ("host", string(r.authority.as_deref())),
        ("scheme", string(r.scheme)),
        ("method", string(Some(&r.method))),
        ("protocol", string(Some(r.protocol))),
        ("headers", headers(&r.headers)),
        ("useragent", string(header("user-agent"))),
        ("referer", string(header("referer"))),
        ("id", string(header("x-request-id"))),
        ("size", Value::Int(e.bytes_received as i64)),
    ])
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::access_log::RequestHead;

    fn entry<'a>(request: &'a RequestHead, code: u16) -> Entry<'a> {
        Entry {
            start: UNIX_EPOCH,
            duration: Duration::from_millis(3),
            request: Some(request),
            response_headers: &[],
            response_code: code,
            flags: "",
            details: Some("via_upstream"),
            termination_details: None,
            transport_failure: None,
            bytes_received: 0,
            bytes_sent: 10,
            upstream_host: None,
            upstream_local: None,
            upstream_cluster: Some("outbound|8000||httpbin.foo.svc.cluster.local"),
            upstream_peer_uri: None,
            downstream_local: "10.0.0.1:8000".parse().expect("address"),
            downstream_remote: "10.0.0.2:40000".parse().expect("address"),
            downstream_direct: "10.0.0.2:40000".parse().expect("address"),
            downstream_peer_uri: Some("spiffe://cluster.local/ns/foo/sa/sleep"),
            local_uri: None,
            sni: None,
            route_name: Some("default"),
        }
    }

    fn head() -> RequestHead {
        RequestHead {
            method: "GET".to_owned(),
            path: "/login?next=/".to_owned(),
            authority: Some("httpbin:8000".to_owned()),
            scheme: Some("http"),
            protocol: "HTTP/1.1",
            headers: vec![(
                http::HeaderName::from_static("x-debug"),
                http::HeaderValue::from_static("on"),
            )],
        }
    }

    #[test]
    fn the_expressions_istio_users_write_decide_as_envoy() {
        let request = head();
        let cases = [
            ("response.code >= 400", 404, true),
            ("response.code >= 400", 200, false),
            ("request.url_path.startsWith('/login')", 200, true),
            ("request.headers['x-debug'] == 'on'", 200, true),
            ("'x-missing' in request.headers", 200, false),
            (
                "connection.mtls && xds.cluster_name.startsWith('outbound|8000')",
                200,
                true,
            ),
            ("response.code >= 500 || request.method == 'GET'", 200, true),
            // Not a boolean, or an error: not logged.
            ("response.code", 200, false),
            ("request.headers['x-missing'] == 'on'", 200, false),
        ];
        for (source, code, logged) in cases {
            let filter = compile(source).expect(source);
            assert_eq!(
                filter.admits(&entry(&request, code)),
                logged,
                "{source} at {code}"
            );
        }
    }

    #[test]
    fn an_expression_that_does_not_parse_says_where() {
        let error = compile("response.code >=").expect_err("refused");
        assert!(!error.is_empty());
    }
}

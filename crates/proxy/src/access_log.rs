//! Access logs as Envoy writes them: the `access_log` of connection
//! managers, TCP proxies and listeners, each a format (text or JSON with
//! Envoy's command operators), an optional filter, and a file (`/dev/stdout`
//! in Istio's setups). Nothing is kept per request unless a log is on.

pub mod cel;
pub mod entry;
pub mod filter;
pub mod format;
pub mod sink;
pub mod start_time;

use std::sync::{Arc, OnceLock};

use http::HeaderName;

pub use entry::{Entry, Pending, RequestHead, details_for};
use filter::Filter;
use format::{HeaderKey, HeaderOp, LogFormat, Operator, Piece};
use sink::Sink;

/// One `access_log` entry. Converting the config only reads it; the file
/// is opened by [`AccessLogs::open`] when the config is applied.
#[derive(Debug)]
pub struct AccessLog {
    /// `access_log[<i>] (<name>)`, for errors.
    pub label: String,
    pub path: String,
    pub format: LogFormat,
    pub filter: Option<Filter>,
    pub sink: OnceLock<Arc<Sink>>,
}

/// The access logs of one connection manager, TCP proxy or listener, with
/// the headers their formats print (kept from each request, and nothing else).
#[derive(Debug, Default)]
pub struct AccessLogs {
    logs: Vec<AccessLog>,
    request_headers: Vec<HeaderName>,
    response_headers: Vec<HeaderName>,
    /// A filter may read any header: every one is kept.
    all_headers: bool,
}

impl AccessLogs {
    pub fn new(logs: Vec<AccessLog>) -> Self {
        let mut request_headers = Vec::new();
        let mut response_headers = Vec::new();
        let all_headers = logs
            .iter()
            .filter_map(|l| l.filter.as_ref())
            .any(Filter::reads_all_headers);
        for log in &logs {
            for template in log.format.templates() {
                for piece in template.pieces() {
                    let Piece::Operator { op, .. } = piece else {
                        continue;
                    };
                    match op {
                        Operator::Request(h) | Operator::RequestWithoutQuery(h) => {
                            add_headers(&mut request_headers, h);
                        }
                        Operator::Response(h) => add_headers(&mut response_headers, h),
                        _ => {}
                    }
                }
            }
            if let Some(filter) = &log.filter {
                filter.add_headers(&mut request_headers);
            }
        }
        Self {
            logs,
            request_headers,
            response_headers,
            all_headers,
        }
    }

    /// What a request keeps of its headers for the logs.
    pub fn keep_request(&self, headers: &http::HeaderMap) -> Vec<(HeaderName, http::HeaderValue)> {
        self.keep(headers, &self.request_headers)
    }

    /// What a response keeps of its headers for the logs.
    pub fn keep_response(&self, headers: &http::HeaderMap) -> Vec<(HeaderName, http::HeaderValue)> {
        self.keep(headers, &self.response_headers)
    }

    fn keep(
        &self,
        headers: &http::HeaderMap,
        named: &[HeaderName],
    ) -> Vec<(HeaderName, http::HeaderValue)> {
        if self.all_headers {
            return headers
                .iter()
                .map(|(n, v)| (n.clone(), v.clone()))
                .collect();
        }
        RequestHead::keep(headers, named)
    }

    pub fn is_empty(&self) -> bool {
        self.logs.is_empty()
    }

    /// Opens every log's file (shared with any log already writing there):
    /// a path that cannot be written refuses the config that names it.
    pub fn open(&self) -> Result<(), String> {
        for log in &self.logs {
            if log.sink.get().is_some() {
                continue;
            }
            let sink = Sink::for_path(&log.path)
                .map_err(|e| format!("{}: cannot open {}: {e}", log.label, log.path))?;
            let _ = log.sink.set(sink);
        }
        Ok(())
    }

    pub fn request_headers(&self) -> &[HeaderName] {
        &self.request_headers
    }

    pub fn response_headers(&self) -> &[HeaderName] {
        &self.response_headers
    }

    /// Writes `entry` to every log whose filter lets it through.
    pub fn write(&self, entry: &Entry<'_>) {
        for log in &self.logs {
            if let Some(sink) = log.sink.get()
                && log.filter.as_ref().is_none_or(|f| f.admits(entry))
            {
                sink.write(log.format.render(entry));
            }
        }
    }

    pub fn logs(&self) -> &[AccessLog] {
        &self.logs
    }
}

fn add_headers(names: &mut Vec<HeaderName>, op: &HeaderOp) {
    for key in std::iter::once(&op.main).chain(op.alt.as_ref()) {
        if let HeaderKey::Header(name) = key
            && !names.contains(name)
        {
            names.push(name.clone());
        }
    }
}

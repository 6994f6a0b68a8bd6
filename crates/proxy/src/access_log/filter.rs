//! Access-log filters: which requests a log writes (Envoy's
//! `AccessLogFilter`: status code, duration, response flags, headers, and
//! their and/or).

use std::sync::Arc;

use http::HeaderName;

use super::cel::CelExpression;
use super::entry::Entry;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compare {
    Eq,
    Ge,
    Le,
    Ne,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    StatusCode(Compare, u64),
    /// Milliseconds.
    Duration(Compare, u64),
    /// Any of these flags; empty: any flag at all.
    ResponseFlags(Vec<String>),
    /// Without a health-check filter nothing is a health check.
    NotHealthCheck,
    /// The request header is present (and, with a value, equal to it).
    Header(HeaderName, Option<String>, bool),
    And(Vec<Filter>),
    Or(Vec<Filter>),
    /// Envoy's CEL extension filter.
    Cel(Arc<CelExpression>),
}

impl Compare {
    fn holds(self, actual: u64, value: u64) -> bool {
        match self {
            Compare::Eq => actual == value,
            Compare::Ge => actual >= value,
            Compare::Le => actual <= value,
            Compare::Ne => actual != value,
        }
    }
}

impl Filter {
    pub fn admits(&self, entry: &Entry<'_>) -> bool {
        match self {
            Filter::StatusCode(op, value) => op.holds(u64::from(entry.response_code), *value),
            Filter::Duration(op, value) => op.holds(entry.duration.as_millis() as u64, *value),
            Filter::ResponseFlags(flags) if flags.is_empty() => !entry.flags.is_empty(),
            Filter::ResponseFlags(flags) => entry
                .flags
                .split(',')
                .any(|flag| flags.iter().any(|f| f == flag)),
            Filter::NotHealthCheck => true,
            Filter::Header(name, value, invert) => {
                let found = entry
                    .request
                    .and_then(|r| r.headers.iter().find(|(n, _)| n == name))
                    .is_some_and(|(_, v)| value.as_ref().is_none_or(|want| v == want.as_str()));
                found != *invert
            }
            Filter::And(all) => all.iter().all(|f| f.admits(entry)),
            Filter::Or(any) => any.iter().any(|f| f.admits(entry)),
            Filter::Cel(cel) => cel.admits(entry),
        }
    }

    /// It may read any header (a CEL expression): keep them all.
    pub fn reads_all_headers(&self) -> bool {
        match self {
            Filter::Cel(cel) => cel.reads_headers,
            Filter::And(all) | Filter::Or(all) => all.iter().any(Filter::reads_all_headers),
            _ => false,
        }
    }

    /// The request headers this filter reads.
    pub fn add_headers(&self, names: &mut Vec<HeaderName>) {
        match self {
            Filter::Header(name, ..) if !names.contains(name) => names.push(name.clone()),
            Filter::And(all) | Filter::Or(all) => all.iter().for_each(|f| f.add_headers(names)),
            _ => {}
        }
    }
}

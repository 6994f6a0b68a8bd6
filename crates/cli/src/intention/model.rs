//! Intentions as Consul defines them, on Istio's identities: a source
//! (`ns/sa`, `ns/*` or `*`), a destination Service, an action, and optionally
//! the requests they are about (port, path, method). The most specific
//! intention that matches a request decides it; with none, the destination
//! namespace's default does (allow unless set to deny).

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Deny,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
        })
    }
}

/// Who an intention is about: a service account, every one of a namespace,
/// or anyone (plaintext callers included).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum Source {
    Account { namespace: String, name: String },
    Namespace(String),
    Any,
}

impl Source {
    pub fn parse(text: &str) -> Result<Self, String> {
        if text == "*" {
            return Ok(Source::Any);
        }
        let (namespace, name) = text
            .split_once('/')
            .ok_or_else(|| format!("source {text:?}: write ns/serviceaccount, ns/* or *"))?;
        if namespace.is_empty() || namespace.contains('*') || name.is_empty() {
            return Err(format!(
                "source {text:?}: write ns/serviceaccount, ns/* or *"
            ));
        }
        Ok(match name {
            "*" => Source::Namespace(namespace.to_owned()),
            _ if name.contains('*') || name.contains('/') => {
                return Err(format!(
                    "source {text:?}: a service account is a name, or * for the whole namespace"
                ));
            }
            _ => Source::Account {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            },
        })
    }

    /// Consul's precedence: an exact source before a namespace wildcard
    /// before `*`.
    pub fn rank(&self) -> u8 {
        match self {
            Source::Account { .. } => 3,
            Source::Namespace(_) => 2,
            Source::Any => 1,
        }
    }

    pub fn matches(&self, caller: Option<&Caller>) -> bool {
        match (self, caller) {
            (Source::Any, _) => true,
            (Source::Namespace(ns), Some(c)) => &c.namespace == ns,
            (Source::Account { namespace, name }, Some(c)) => {
                &c.namespace == namespace && &c.account == name
            }
            (_, None) => false,
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Account { namespace, name } => write!(f, "{namespace}/{name}"),
            Source::Namespace(ns) => write!(f, "{ns}/*"),
            Source::Any => f.write_str("*"),
        }
    }
}

impl From<Source> for String {
    fn from(s: Source) -> String {
        s.to_string()
    }
}

impl TryFrom<String> for Source {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Source::parse(&s)
    }
}

/// A Service: `ns/name`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Destination {
    pub namespace: String,
    pub name: String,
}

impl Destination {
    pub fn parse(text: &str) -> Result<Self, String> {
        match text.split_once('/') {
            Some((ns, name))
                if !ns.is_empty() && !name.is_empty() && !name.contains(['/', '*']) =>
            {
                Ok(Self {
                    namespace: ns.to_owned(),
                    name: name.to_owned(),
                })
            }
            _ => Err(format!("destination {text:?}: write namespace/service")),
        }
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The requests an intention is about; nothing set: all of them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Requests {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Exact, or a prefix ending in `*`, as AuthorizationPolicy paths.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}

impl Requests {
    pub fn count(&self) -> usize {
        usize::from(self.port.is_some())
            + usize::from(self.path.is_some())
            + usize::from(self.method.is_some())
    }

    pub fn matches(&self, r: &Request) -> bool {
        self.port.is_none_or(|p| p == r.port)
            && self
                .path
                .as_deref()
                .is_none_or(|p| path_matches(p, &r.path))
            && self.method.as_deref().is_none_or(|m| m == r.method)
    }
}

impl fmt::Display for Requests {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(p) = self.port {
            parts.push(format!("port {p}"));
        }
        if let Some(m) = &self.method {
            parts.push(m.clone());
        }
        if let Some(p) = &self.path {
            parts.push(p.clone());
        }
        f.write_str(&parts.join(" "))
    }
}

/// AuthorizationPolicy's path matching: exact, or a prefix before `*`.
pub fn path_matches(pattern: &str, path: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => path.starts_with(prefix),
        None => pattern == path,
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Intention {
    pub source: Source,
    pub destination: Destination,
    pub action: Action,
    #[serde(default, skip_serializing_if = "is_default")]
    pub requests: Requests,
}

fn is_default(r: &Requests) -> bool {
    *r == Requests::default()
}

impl Intention {
    /// Same source, destination and requests: a new one replaces it.
    pub fn same_subject(&self, other: &Intention) -> bool {
        self.source == other.source
            && self.destination == other.destination
            && self.requests == other.requests
    }
}

impl fmt::Display for Intention {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} -> {}", self.action, self.source, self.destination)?;
        if !is_default(&self.requests) {
            write!(f, " ({})", self.requests)?;
        }
        Ok(())
    }
}

/// Who calls: a workload's identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub namespace: String,
    pub account: String,
}

/// What a check is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// `None`: a caller without a mesh identity (plaintext).
    pub caller: Option<Caller>,
    /// The workload's port (targetPort), as AuthorizationPolicy sees it.
    pub port: u16,
    pub path: String,
    pub method: String,
}

/// The intentions of one destination, most specific first: exact source,
/// then namespace, then `*`; among equals, more request conditions first,
/// then the order they were made in.
pub fn by_precedence<'a>(
    intentions: impl IntoIterator<Item = &'a Intention>,
) -> Vec<&'a Intention> {
    let mut sorted: Vec<&Intention> = intentions.into_iter().collect();
    sorted.sort_by_key(|i| {
        (
            std::cmp::Reverse(i.source.rank()),
            std::cmp::Reverse(i.requests.count()),
        )
    });
    sorted
}

/// What the intentions say of `request`: the deciding intention, if any,
/// and the outcome (`default_allow` when none matches).
pub fn decide<'a>(
    intentions: &[&'a Intention],
    default_allow: bool,
    request: &Request,
) -> (Option<&'a Intention>, bool) {
    let deciding = intentions
        .iter()
        .find(|i| i.source.matches(request.caller.as_ref()) && i.requests.matches(request));
    match deciding {
        Some(i) => (Some(i), i.action == Action::Allow),
        None => (None, default_allow),
    }
}

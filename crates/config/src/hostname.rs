//! Host names as Istio compares them: exact, or with a leading `*` wildcard.

use std::fmt;
use std::sync::Arc;

/// A service host name (`reviews.default.svc.cluster.local`, `*.example.com`, `*`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Hostname(Arc<str>);

impl Hostname {
    pub fn new(name: &str) -> Self {
        Self(Arc::from(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_wildcard(&self) -> bool {
        self.0.starts_with('*')
    }

    /// Whether the two names select at least one host in common.
    pub fn matches(&self, other: &Hostname) -> bool {
        match (self.0.strip_prefix('*'), other.0.strip_prefix('*')) {
            (Some(a), Some(b)) => a.ends_with(b) || b.ends_with(a),
            (Some(a), None) => other.0.ends_with(a),
            (None, Some(b)) => self.0.ends_with(b),
            (None, None) => self.0 == other.0,
        }
    }

    /// Whether every host this name selects is also selected by `other`.
    pub fn subset_of(&self, other: &Hostname) -> bool {
        match (self.0.strip_prefix('*'), other.0.strip_prefix('*')) {
            (Some(a), Some(b)) => a.len() >= b.len() && a.ends_with(b),
            (Some(_), None) => false,
            (None, Some(b)) => self.0.ends_with(b),
            (None, None) => self.0 == other.0,
        }
    }
}

impl fmt::Display for Hostname {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for Hostname {
    fn from(s: &str) -> Self {
        Self::new(s)
    }
}

/// Expands a short host as Istio does for objects in `namespace`: `reviews` becomes
/// `reviews.<namespace>.svc.<domain>`; names with a dot, and wildcards, are kept.
pub fn resolve_short_name(host: &str, namespace: &str, domain: &str) -> Hostname {
    if host.contains('.') || host.starts_with('*') {
        Hostname::new(host)
    } else {
        Hostname::new(&format!("{host}.{namespace}.svc.{domain}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Hostname {
        Hostname::new(s)
    }

    #[test]
    fn matching_and_subsets() {
        assert!(h("*").matches(&h("a.com")));
        assert!(h("*.a.com").matches(&h("b.a.com")));
        assert!(!h("*.a.com").matches(&h("a.com")));
        assert!(h("*.a.com").matches(&h("*.b.a.com")));
        assert!(h("b.a.com").subset_of(&h("*.a.com")));
        assert!(!h("*.a.com").subset_of(&h("b.a.com")));
        assert!(h("*.b.a.com").subset_of(&h("*.a.com")));
        assert!(!h("*.a.com").subset_of(&h("*.b.a.com")));
    }

    #[test]
    fn short_names_expand_in_their_namespace() {
        assert_eq!(
            resolve_short_name("reviews", "bookinfo", "cluster.local").as_str(),
            "reviews.bookinfo.svc.cluster.local"
        );
        assert_eq!(
            resolve_short_name("reviews.other", "bookinfo", "cluster.local").as_str(),
            "reviews.other"
        );
        assert_eq!(
            resolve_short_name("*", "bookinfo", "cluster.local").as_str(),
            "*"
        );
    }
}

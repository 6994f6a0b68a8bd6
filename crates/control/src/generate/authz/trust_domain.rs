//! Trust-domain aliases in authorization policies: a principal or trust domain
//! written for the local trust domain (or `cluster.local`, which means "the
//! local one") also matches every alias, so a mesh can move to a new trust domain
//! while peers still hold certificates of the old one.

/// Istio's name for "the local trust domain", whatever it really is.
const CLUSTER_LOCAL: &str = "cluster.local";

/// The local trust domain first, then its aliases (meshConfig
/// `trustDomainAliases`), in the order written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TrustDomains(Vec<String>);

impl TrustDomains {
    pub(crate) fn new(local: &str, aliases: &[String]) -> Self {
        Self(
            std::iter::once(local.to_owned())
                .chain(aliases.iter().cloned())
                .collect(),
        )
    }

    /// Principals (`<td>/ns/<ns>/sa/<sa>`) whose trust domain is a local one
    /// (or `cluster.local`) become one principal per local trust domain. A
    /// wildcard trust domain (`*-td`) stays as written for the trust domains it
    /// already matches. Anything else, `*/ns/...` included, is kept.
    pub(crate) fn replace_aliases(&self, principals: &[String]) -> Vec<String> {
        let mut out = Vec::with_capacity(principals.len());
        for principal in principals {
            let parts: Vec<&str> = principal.split('/').collect();
            let (trust_domain, rest) = match parts.as_slice() {
                [td, rest @ ..] if rest.len() == 4 && *td != "*" => (*td, rest.join("/")),
                _ => {
                    out.push(principal.clone());
                    continue;
                }
            };
            let local = self.0.iter().any(|t| patterns_match(trust_domain, t));
            if !(local || trust_domain == CLUSTER_LOCAL) {
                // Another mesh's identity: left alone.
                out.push(principal.clone());
                continue;
            }
            // Duplicates are dropped per principal only, as Istio does.
            let mut expanded: Vec<String> = Vec::with_capacity(self.0.len());
            for local in &self.0 {
                let rewritten = if suffix_matches(local, trust_domain) {
                    principal.clone()
                } else {
                    format!("{local}/{rest}")
                };
                if !expanded.contains(&rewritten) {
                    expanded.push(rewritten);
                }
            }
            out.extend(expanded);
        }
        out
    }

    /// Trust domains (`trustDomains`, `source.trustDomain`): a value naming a
    /// local trust domain stands for all of them. Duplicates are dropped.
    pub(crate) fn expand(&self, values: &[String]) -> Vec<String> {
        let mut out: Vec<String> = Vec::with_capacity(values.len());
        for value in values {
            let expanded = if self.0.contains(value) {
                self.0.as_slice()
            } else {
                std::slice::from_ref(value)
            };
            for v in expanded {
                if !out.contains(v) {
                    out.push(v.clone());
                }
            }
        }
        out
    }
}

/// Whether two trust domains match, either side possibly a pattern (`*`,
/// `abc*`, `*abc`).
fn patterns_match(a: &str, b: &str) -> bool {
    a == b
        || b == "*"
        || prefix_matches(a, b)
        || prefix_matches(b, a)
        || suffix_matches(a, b)
        || suffix_matches(b, a)
}

/// Whether `pattern` is `abc*` and `text` starts with `abc`.
fn prefix_matches(text: &str, pattern: &str) -> bool {
    pattern
        .strip_suffix('*')
        .is_some_and(|p| text.starts_with(p))
}

/// Whether `pattern` is `*abc` and `text` ends with `abc`.
fn suffix_matches(text: &str, pattern: &str) -> bool {
    pattern.strip_prefix('*').is_some_and(|p| text.ends_with(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(values: &[&str]) -> Vec<String> {
        values.iter().map(|v| (*v).to_owned()).collect()
    }

    #[test]
    fn the_default_domain_keeps_principals() {
        let bundle = TrustDomains::new("cluster.local", &[]);
        let principals = strings(&["cluster.local/ns/a/sa/b", "other/ns/a/sa/b", "a/b"]);
        assert_eq!(bundle.replace_aliases(&principals), principals);
    }

    #[test]
    fn cluster_local_means_the_local_domain() {
        let bundle = TrustDomains::new("td1", &[]);
        assert_eq!(
            bundle.replace_aliases(&strings(&["cluster.local/ns/a/sa/b"])),
            strings(&["td1/ns/a/sa/b"])
        );
    }

    #[test]
    fn aliases_multiply_local_principals() {
        let bundle = TrustDomains::new("td1", &strings(&["cluster.local", "some-td"]));
        assert_eq!(
            bundle.replace_aliases(&strings(&["some-td/ns/a/sa/b", "foreign/ns/a/sa/b"])),
            strings(&[
                "td1/ns/a/sa/b",
                "cluster.local/ns/a/sa/b",
                "some-td/ns/a/sa/b",
                "foreign/ns/a/sa/b",
            ])
        );
    }

    #[test]
    fn wildcards() {
        let bundle = TrustDomains::new("td1", &strings(&["foobar"]));
        assert_eq!(
            bundle.replace_aliases(&strings(&["*", "*/ns/foo/sa/x", "*bar/ns/foo/sa/x"])),
            strings(&["*", "*/ns/foo/sa/x", "td1/ns/foo/sa/x", "*bar/ns/foo/sa/x"])
        );
        // A pattern matching no local domain is someone else's.
        assert_eq!(
            bundle.replace_aliases(&strings(&["*-td/ns/foo/sa/x"])),
            strings(&["*-td/ns/foo/sa/x"])
        );
    }

    #[test]
    fn trust_domain_values_expand() {
        let bundle = TrustDomains::new("td1", &strings(&["old"]));
        assert_eq!(
            bundle.expand(&strings(&["old", "other", "td1", "x*"])),
            strings(&["td1", "old", "other", "x*"])
        );
    }
}

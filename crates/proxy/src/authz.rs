//! Authorization decisions: Envoy's RBAC engines ([`crate::config::rbac`])
//! evaluated against what is known of a connection, and for HTTP of the
//! request. Nothing here allocates unless a header has several values.
//!
//! An enforced ALLOW engine allows what one of its policies matches and denies
//! the rest; a DENY engine denies what one matches; a LOG engine (Istio's
//! AUDIT) never denies and only marks a match. Shadow engines (Istio's
//! dry-run) are evaluated and reported, never enforced.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::{HeaderMap, Method, Uri};

use crate::config::rbac::{
    Engine, EngineAction, MetadataMatch, Permission, Policy, Principal, RbacFilter,
    TemplateSegment, UriTemplate, ValueMatch,
};
use crate::config::route::{HeaderMatch, ValueTest};

/// The body Envoy answers a denied request with.
pub const DENIED_BODY: &str = "RBAC: access denied";

/// What a decision may look at.
pub struct Facts<'a> {
    /// Where the connection came from.
    pub direct_remote: SocketAddr,
    /// The client as forwarded through trusted hops (the same as
    /// `direct_remote` unless a gateway trusts `x-forwarded-for`).
    pub remote_ip: IpAddr,
    /// Where the client connected to (the workload's port).
    pub destination: SocketAddr,
    /// Whether the peer presented a certificate, and its identity (URI SAN).
    pub peer: Option<Option<&'a str>>,
    pub sni: Option<&'a str>,
    pub request: Option<RequestFacts<'a>>,
    /// Dynamic metadata earlier filters wrote (the JWT payload).
    pub metadata: &'a Metadata,
}

pub struct RequestFacts<'a> {
    pub method: &'a Method,
    pub uri: &'a Uri,
    pub headers: &'a HeaderMap,
    pub authority: &'a str,
}

/// Dynamic metadata, by filter name, as JSON.
#[derive(Debug, Default)]
pub struct Metadata {
    pub entries: Vec<(&'static str, serde_json::Value)>,
}

impl Metadata {
    /// Sets `key` in `filter`'s namespace; a later token's payload replaces
    /// an earlier one's, as in Envoy.
    pub fn insert(&mut self, filter: &'static str, key: &str, value: serde_json::Value) {
        let position = self.entries.iter().position(|(name, _)| *name == filter);
        let index = position.unwrap_or_else(|| {
            self.entries
                .push((filter, serde_json::Value::Object(Default::default())));
            self.entries.len() - 1
        });
        if let serde_json::Value::Object(map) = &mut self.entries[index].1 {
            map.insert(key.to_owned(), value);
        }
    }

    fn get(&self, filter: &str) -> Option<&serde_json::Value> {
        self.entries
            .iter()
            .find(|(name, _)| *name == filter)
            .map(|(_, v)| v)
    }
}

/// One filter's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// `Some(policy)` when denied: the DENY policy that matched, or `None`
    /// for an ALLOW engine no policy of which matched (Envoy's `[none]`).
    pub denied: Option<Option<Arc<str>>>,
    /// A LOG engine's policy matched (AUDIT): the request is marked for the
    /// access log.
    pub logged: bool,
    /// What the shadow engine would have decided, and the policy that decided.
    pub shadow: Option<ShadowResult>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShadowResult {
    pub allowed: bool,
    pub policy: Option<Arc<str>>,
}

impl Verdict {
    /// What the RBAC filter's stats count for this verdict, as Envoy names
    /// them, each with whether it is the shadow engine's (its counter carries
    /// the shadow prefix).
    pub fn decisions(&self) -> impl Iterator<Item = (&'static str, bool)> {
        let enforced = if self.denied.is_some() {
            "denied"
        } else {
            "allowed"
        };
        let shadow = self.shadow.as_ref().map(|s| {
            let decision = if s.allowed {
                "shadow_allowed"
            } else {
                "shadow_denied"
            };
            (decision, true)
        });
        std::iter::once((enforced, false))
            .chain(shadow)
            .chain(self.logged.then_some(("logged", false)))
    }

    /// Writes what the shadow engine decided where Envoy does, in
    /// `namespace` under `prefix`: the matched policy
    /// (`<prefix>shadow_effective_policy_id`, only when one matched) and
    /// `<prefix>shadow_engine_result` (`allowed` or `denied`). CUSTOM's
    /// ext_authz filter is enabled by the first.
    pub fn leave_shadow_result(
        &self,
        namespace: &'static str,
        prefix: &str,
        metadata: &mut Metadata,
    ) {
        let Some(shadow) = &self.shadow else {
            return;
        };
        if let Some(policy) = &shadow.policy {
            let key = format!("{prefix}shadow_effective_policy_id");
            metadata.insert(
                namespace,
                &key,
                serde_json::Value::String(policy.to_string()),
            );
        }
        let result = if shadow.allowed { "allowed" } else { "denied" };
        let key = format!("{prefix}shadow_engine_result");
        metadata.insert(
            namespace,
            &key,
            serde_json::Value::String(result.to_owned()),
        );
    }

    /// Envoy's `%RESPONSE_CODE_DETAILS%` for a denial.
    pub fn details(&self) -> Option<String> {
        self.denied.as_ref().map(|policy| {
            let name = policy.as_deref().unwrap_or("none").replace(' ', "_");
            format!("rbac_access_denied_matched_policy[{name}]")
        })
    }
}

impl RbacFilter {
    pub fn check(&self, facts: &Facts<'_>) -> Verdict {
        let mut verdict = Verdict {
            denied: None,
            logged: false,
            shadow: None,
        };
        if let Some(engine) = &self.enforced {
            let matched = engine.first_match(facts);
            match engine.action {
                EngineAction::Allow if matched.is_none() => verdict.denied = Some(None),
                EngineAction::Deny if matched.is_some() => verdict.denied = Some(matched),
                EngineAction::Log => verdict.logged = matched.is_some(),
                _ => {}
            }
        }
        if let Some(engine) = &self.shadow {
            let matched = engine.first_match(facts);
            let allowed = match engine.action {
                EngineAction::Allow => matched.is_some(),
                EngineAction::Deny => matched.is_none(),
                EngineAction::Log => true,
            };
            verdict.shadow = Some(ShadowResult {
                allowed,
                policy: matched,
            });
        }
        verdict
    }
}

impl Engine {
    /// The first policy, in name order, that matches.
    fn first_match(&self, facts: &Facts<'_>) -> Option<Arc<str>> {
        self.policies
            .iter()
            .find(|p| p.matches(facts))
            .map(|p| p.name.clone())
    }
}

impl Policy {
    fn matches(&self, facts: &Facts<'_>) -> bool {
        self.permissions.iter().any(|p| p.matches(facts))
            && self.principals.iter().any(|p| p.matches(facts))
    }
}

impl Permission {
    fn matches(&self, facts: &Facts<'_>) -> bool {
        match self {
            Permission::Any => true,
            Permission::And(all) => all.iter().all(|p| p.matches(facts)),
            Permission::Or(any) => any.iter().any(|p| p.matches(facts)),
            Permission::Not(inner) => !inner.matches(facts),
            Permission::Header(h) => header_matches(h, facts),
            Permission::UrlPath(m) => facts
                .request
                .as_ref()
                .is_some_and(|r| m.matches(r.uri.path())),
            Permission::UriTemplate(t) => facts
                .request
                .as_ref()
                .is_some_and(|r| template_matches(t, r.uri.path())),
            Permission::DestinationIp(net) => net.contains(&facts.destination.ip()),
            Permission::DestinationPort(port) => facts.destination.port() == *port,
            Permission::DestinationPortRange(start, end) => {
                (*start..*end).contains(&facts.destination.port())
            }
            Permission::Metadata(m) => metadata_matches(m, facts.metadata),
            Permission::RequestedServerName(m) => m.matches(facts.sni.unwrap_or_default()),
        }
    }
}

impl Principal {
    fn matches(&self, facts: &Facts<'_>) -> bool {
        match self {
            Principal::Any => true,
            Principal::And(all) => all.iter().all(|p| p.matches(facts)),
            Principal::Or(any) => any.iter().any(|p| p.matches(facts)),
            Principal::Not(inner) => !inner.matches(facts),
            Principal::Authenticated(None) => facts.peer.is_some(),
            Principal::Authenticated(Some(m)) => {
                facts.peer.flatten().is_some_and(|id| m.matches(id))
            }
            Principal::DirectRemoteIp(net) => net.contains(&facts.direct_remote.ip()),
            Principal::RemoteIp(net) => net.contains(&facts.remote_ip),
            Principal::Header(h) => header_matches(h, facts),
            Principal::UrlPath(m) => facts
                .request
                .as_ref()
                .is_some_and(|r| m.matches(r.uri.path())),
            Principal::Metadata(m) => metadata_matches(m, facts.metadata),
            // Filter state (`io.istio.peer_principal`) is what HBONE sets: the
            // peer's identity.
            Principal::FilterState { key, matcher } => {
                key == "io.istio.peer_principal"
                    && facts.peer.flatten().is_some_and(|id| matcher.matches(id))
            }
        }
    }
}

/// A header (or pseudo-header) as Envoy's HeaderMatcher sees it: several
/// values joined with commas; absent on a connection without a request.
fn header_matches(h: &HeaderMatch, facts: &Facts<'_>) -> bool {
    let Some(request) = &facts.request else {
        return false;
    };
    let value: Option<Cow<'_, str>> = match h.name.as_str() {
        ":method" => Some(Cow::Borrowed(request.method.as_str())),
        ":authority" => Some(Cow::Borrowed(request.authority)),
        ":path" => request
            .uri
            .path_and_query()
            .map(|p| Cow::Borrowed(p.as_str())),
        ":scheme" => Some(Cow::Borrowed(request.uri.scheme_str().unwrap_or("http"))),
        name => {
            let mut values = request
                .headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok());
            match (values.next(), values.next()) {
                (None, _) => None,
                (Some(one), None) => Some(Cow::Borrowed(one)),
                (Some(first), Some(second)) => {
                    let mut joined = format!("{first},{second}");
                    for more in values {
                        joined.push(',');
                        joined.push_str(more);
                    }
                    Some(Cow::Owned(joined))
                }
            }
        }
    };
    let found = match &h.test {
        ValueTest::Present(want) => value.is_some() == *want,
        ValueTest::Matches(m) => value.is_some_and(|v| m.matches(&v)),
    };
    found != h.invert
}

impl MetadataMatch {
    /// Whether the request's metadata holds a matching value at this path.
    pub fn matches(&self, metadata: &Metadata) -> bool {
        metadata_matches(self, metadata)
    }
}

fn metadata_matches(m: &MetadataMatch, metadata: &Metadata) -> bool {
    let mut value = metadata.get(&m.filter);
    for key in &m.path {
        value = value.and_then(|v| v.get(key));
    }
    value_matches(&m.value, value) != m.invert
}

fn value_matches(m: &ValueMatch, value: Option<&serde_json::Value>) -> bool {
    use serde_json::Value;
    match (m, value) {
        (ValueMatch::Present(want), v) => v.is_some() == *want,
        (ValueMatch::Null, Some(Value::Null)) => true,
        (ValueMatch::String(matcher), Some(Value::String(s))) => matcher.matches(s),
        (ValueMatch::Bool(want), Some(Value::Bool(b))) => b == want,
        (ValueMatch::ListOneOf(inner), Some(Value::Array(items))) => {
            items.iter().any(|item| value_matches(inner, Some(item)))
        }
        (ValueMatch::Or(any), v) => any.iter().any(|m| value_matches(m, v)),
        _ => false,
    }
}

/// `path` (without its query) against a template of literals, `*` and `**`.
fn template_matches(template: &UriTemplate, path: &str) -> bool {
    let Some(rest) = path.strip_prefix('/') else {
        return false;
    };
    let parts: Vec<&str> = rest.split('/').collect();
    segments_match(&template.segments, &parts)
}

fn segments_match(template: &[TemplateSegment], parts: &[&str]) -> bool {
    match template.split_first() {
        None => parts.is_empty(),
        Some((TemplateSegment::Rest, after)) => {
            (0..=parts.len()).any(|skip| segments_match(after, &parts[skip..]))
        }
        Some((segment, after)) => match parts.split_first() {
            Some((part, remaining)) => {
                let ok = match segment {
                    TemplateSegment::One => !part.is_empty(),
                    TemplateSegment::Literal(literal) => part == literal,
                    TemplateSegment::Rest => false,
                };
                ok && segments_match(after, remaining)
            }
            None => false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::rbac::parse_template;

    #[test]
    fn templates_match_one_segment_or_many() {
        let t =
            |text: &str, path: &str| template_matches(&parse_template(text).expect("valid"), path);
        assert!(t("/books/*", "/books/1"));
        assert!(!t("/books/*", "/books/1/pages"));
        assert!(!t("/books/*", "/books/"), "* is one non-empty segment");
        assert!(t("/books/**", "/books/1/pages/2"));
        assert!(t("/books/**", "/books"), "** may be empty");
        assert!(t("/**/edit", "/a/b/edit"));
        assert!(!t("/**/edit", "/a/b/view"));
    }
}

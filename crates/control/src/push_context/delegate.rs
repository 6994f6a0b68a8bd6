//! Delegate VirtualServices, merged into their roots as istiod merges them:
//! a root's `http` rule that names a `delegate` is replaced, in place, by
//! the delegate's rules, each narrowed by the root rule's match and given
//! the root rule's settings where it has none of its own. A delegate (a
//! VirtualService without hosts) never routes on its own; one that is
//! missing or not exported to the root's namespace drops only the rule that
//! names it, as in Istio.

use std::collections::BTreeMap;

use oxmesh_config::hostname::resolve_short_name;
use oxmesh_config::networking::virtual_service::{HttpMatchRequest, HttpRoute, VirtualService};
use oxmesh_config::string_match::StringMatch;

use super::Scoped;

/// `services` with every root merged and the delegates taken out.
pub fn merge(services: Vec<Scoped<VirtualService>>, domain: &str) -> Vec<Scoped<VirtualService>> {
    let (delegates, rest): (Vec<_>, Vec<_>) = services
        .into_iter()
        .partition(|vs| vs.spec.hosts.is_empty());
    let delegates: BTreeMap<(&str, &str), &Scoped<VirtualService>> = delegates
        .iter()
        .map(|d| ((d.namespace.as_str(), d.name.as_str()), d))
        .collect();
    rest.into_iter()
        .map(|mut root| {
            if root.spec.http.iter().any(|h| h.delegate.is_some()) {
                root.spec.http = merged_rules(&root, &delegates, domain);
            }
            root
        })
        .collect()
}

fn merged_rules(
    root: &Scoped<VirtualService>,
    delegates: &BTreeMap<(&str, &str), &Scoped<VirtualService>>,
    domain: &str,
) -> Vec<HttpRoute> {
    let mut out = Vec::new();
    for rule in &root.spec.http {
        let Some(named) = &rule.delegate else {
            out.push(rule.clone());
            continue;
        };
        let namespace = if named.namespace.is_empty() {
            root.namespace.as_str()
        } else {
            named.namespace.as_str()
        };
        let Some(delegate) = delegates.get(&(namespace, named.name.as_str())) else {
            tracing::warn!(
                "VirtualService {}/{}: delegate {namespace}/{} not found; its rule is left out",
                root.namespace,
                root.name,
                named.name
            );
            continue;
        };
        if !delegate.export_to.visible_in(&root.namespace) {
            tracing::warn!(
                "VirtualService {}/{}: delegate {namespace}/{} is not exported to {}; its rule is left out",
                root.namespace,
                root.name,
                named.name,
                root.namespace
            );
            continue;
        }
        let mut rule = rule.clone();
        full_gateways(&mut rule, &root.namespace);
        for sub in &delegate.spec.http {
            let sub = resolved(sub, &delegate.namespace, domain);
            match merge_rule(&rule, sub) {
                Some(merged) => out.push(merged),
                None => tracing::warn!(
                    "VirtualService {}/{}: a rule of delegate {namespace}/{} conflicts with the root's match; left out",
                    root.namespace,
                    root.name,
                    named.name
                ),
            }
        }
    }
    out
}

/// A delegate's rule with its hosts and gateways named in full from its own
/// namespace, as istiod resolves every VirtualService before merging.
fn resolved(rule: &HttpRoute, namespace: &str, domain: &str) -> HttpRoute {
    let mut rule = rule.clone();
    let full = |host: &mut String| *host = resolve_short_name(host, namespace, domain).to_string();
    for destination in &mut rule.route {
        full(&mut destination.destination.host);
    }
    if let Some(mirror) = &mut rule.mirror {
        full(&mut mirror.host);
    }
    for mirror in &mut rule.mirrors {
        full(&mut mirror.destination.host);
    }
    full_gateways(&mut rule, namespace);
    rule
}

/// A rule's match gateways as `<namespace>/<name>`, read from `namespace`
/// as istiod resolves them, so a root's and a delegate's compare.
fn full_gateways(rule: &mut HttpRoute, namespace: &str) {
    for gateway in rule.matches.iter_mut().flat_map(|m| m.gateways.iter_mut()) {
        *gateway = gateway_name(gateway, namespace);
    }
}

fn gateway_name(gateway: &str, namespace: &str) -> String {
    if gateway == "mesh" {
        return gateway.to_owned();
    }
    match gateway.split_once('/') {
        Some((".", name)) => format!("{namespace}/{name}"),
        Some(_) => gateway.to_owned(),
        // Legacy `name.namespace[.svc...]`.
        None => match gateway.split_once('.') {
            Some((name, rest)) => {
                let ns = rest.split('.').next().unwrap_or(namespace);
                format!("{ns}/{name}")
            }
            None => format!("{namespace}/{gateway}"),
        },
    }
}

/// istiod's `mergeHTTPRoute`: the delegate's rule under the root's match;
/// `None` when a delegate match fits none of the root's.
fn merge_rule(root: &HttpRoute, mut sub: HttpRoute) -> Option<HttpRoute> {
    sub.matches = merge_matches(&root.matches, std::mem::take(&mut sub.matches))?;
    sub.name = joined(&root.name, &sub.name);
    sub.delegate = None;
    inherit(&mut sub.rewrite, &root.rewrite);
    inherit(&mut sub.direct_response, &root.direct_response);
    inherit(&mut sub.timeout, &root.timeout);
    inherit(&mut sub.retries, &root.retries);
    inherit(&mut sub.fault, &root.fault);
    inherit(&mut sub.mirror, &root.mirror);
    inherit(&mut sub.mirror_percent, &root.mirror_percent);
    inherit(&mut sub.mirror_percent_snake, &root.mirror_percent_snake);
    inherit(&mut sub.mirror_percentage, &root.mirror_percentage);
    inherit(&mut sub.cors_policy, &root.cors_policy);
    if sub.mirrors.is_empty() {
        sub.mirrors = root.mirrors.clone();
    }
    inherit(&mut sub.headers, &root.headers);
    Some(sub)
}

fn inherit<T: Clone>(own: &mut Option<T>, root: &Option<T>) {
    if own.is_none() {
        own.clone_from(root);
    }
}

/// `root-sub`, or whichever is set.
fn joined(root: &str, sub: &str) -> String {
    match (root.is_empty(), sub.is_empty()) {
        (_, true) => root.to_owned(),
        (true, false) => sub.to_owned(),
        (false, false) => format!("{root}-{sub}"),
    }
}

/// Each delegate match merged with every root match it does not conflict
/// with; `None` when one fits none (the whole rule is dropped).
fn merge_matches(
    root: &[HttpMatchRequest],
    sub: Vec<HttpMatchRequest>,
) -> Option<Vec<HttpMatchRequest>> {
    if root.is_empty() {
        return Some(sub);
    }
    if sub.is_empty() {
        return Some(root.to_vec());
    }
    let mut out = Vec::new();
    for leaf in &sub {
        let fitting: Vec<&HttpMatchRequest> = root.iter().filter(|r| !conflicts(r, leaf)).collect();
        if fitting.is_empty() {
            return None;
        }
        out.extend(fitting.into_iter().map(|r| merge_match(r, leaf)));
    }
    Some(out)
}

/// istiod's `mergeHTTPMatchRequest`: the delegate's conditions, the root's
/// where it sets none; maps joined, the delegate's entries winning.
fn merge_match(root: &HttpMatchRequest, leaf: &HttpMatchRequest) -> HttpMatchRequest {
    let mut out = leaf.clone();
    out.name = joined(&root.name, &leaf.name);
    inherit(&mut out.uri, &root.uri);
    inherit(&mut out.scheme, &root.scheme);
    inherit(&mut out.method, &root.method);
    inherit(&mut out.authority, &root.authority);
    out.headers = joined_map(&root.headers, &leaf.headers);
    out.without_headers = joined_map(&root.without_headers, &leaf.without_headers);
    out.query_params = joined_map(&root.query_params, &leaf.query_params);
    if out.port == 0 {
        out.port = root.port;
    }
    out.source_labels = joined_map(&root.source_labels, &leaf.source_labels);
    if out.source_namespace.is_empty() {
        out.source_namespace.clone_from(&root.source_namespace);
    }
    if out.gateways.is_empty() {
        out.gateways.clone_from(&root.gateways);
    }
    if out.stat_prefix.is_empty() {
        out.stat_prefix.clone_from(&root.stat_prefix);
    }
    out
}

fn joined_map<V: Clone>(
    root: &BTreeMap<String, V>,
    leaf: &BTreeMap<String, V>,
) -> BTreeMap<String, V> {
    let mut out = root.clone();
    out.extend(leaf.iter().map(|(k, v)| (k.clone(), v.clone())));
    out
}

/// istiod's `hasConflict`: whether `leaf` asks for something outside `root`.
fn conflicts(root: &HttpMatchRequest, leaf: &HttpMatchRequest) -> bool {
    let pairs = [
        (&root.uri, &leaf.uri),
        (&root.scheme, &leaf.scheme),
        (&root.method, &leaf.method),
        (&root.authority, &leaf.authority),
    ];
    if pairs
        .iter()
        .any(|(r, l)| string_conflict(r.as_ref(), l.as_ref()))
    {
        return true;
    }
    let map_conflict = |r: &BTreeMap<String, StringMatch>, l: &BTreeMap<String, StringMatch>| {
        l.iter()
            .any(|(key, value)| string_conflict(r.get(key), Some(value)))
    };
    if map_conflict(&root.headers, &leaf.headers)
        || map_conflict(&root.without_headers, &leaf.without_headers)
        || map_conflict(&root.query_params, &leaf.query_params)
    {
        return true;
    }
    if root.ignore_uri_case != leaf.ignore_uri_case
        || (root.port > 0 && leaf.port > 0 && root.port != leaf.port)
        || (!root.source_namespace.is_empty() && leaf.source_namespace != root.source_namespace)
    {
        return true;
    }
    if leaf
        .source_labels
        .iter()
        .any(|(k, v)| root.source_labels.get(k).is_some_and(|r| r != v))
    {
        return true;
    }
    !root.gateways.is_empty()
        && !leaf.gateways.is_empty()
        && leaf.gateways.iter().any(|g| !root.gateways.contains(g))
}

/// istiod's `stringMatchConflict`: a leaf must narrow its root, with an
/// exact value equal to the root's or under its prefix, or a prefix under
/// it; anything else (regexes, presence-only matches) conflicts.
fn string_conflict(root: Option<&StringMatch>, leaf: Option<&StringMatch>) -> bool {
    let (Some(root), Some(leaf)) = (root, leaf) else {
        return false;
    };
    match (root, leaf) {
        (StringMatch::Exact(r), StringMatch::Exact(l)) => r != l,
        (StringMatch::Prefix(r), StringMatch::Prefix(l) | StringMatch::Exact(l)) => {
            !l.starts_with(r.as_str())
        }
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oxmesh_config::service::ExportTo;

    fn vs(namespace: &str, name: &str, yaml: &str) -> Scoped<VirtualService> {
        let spec: VirtualService = serde_saphyr::from_str(yaml).expect("a VirtualService");
        Scoped {
            export_to: ExportTo::parse(spec.export_to.iter().map(String::as_str), namespace),
            namespace: namespace.into(),
            name: name.into(),
            spec,
        }
    }

    fn merged(services: Vec<Scoped<VirtualService>>) -> Vec<HttpRoute> {
        let out = merge(services, "cluster.local");
        assert_eq!(out.len(), 1, "the delegates are taken out");
        out.into_iter()
            .next()
            .map(|v| v.spec.http)
            .unwrap_or_default()
    }

    const ROOT: &str = "
hosts: [bookinfo.com]
http:
- name: pp
  match: [{uri: {prefix: /productpage}}]
  timeout: 5s
  headers: {request: {set: {x-root: yes}}}
  delegate: {name: productpage, namespace: team-a}
- route: [{destination: {host: fallback}}]
";

    #[test]
    fn delegate_rules_take_the_roots_place_narrowed_and_inheriting() {
        let delegate = vs(
            "team-a",
            "productpage",
            "
http:
- name: v1
  match: [{uri: {prefix: /productpage/v1}}]
  route: [{destination: {host: productpage-v1}}]
- match: [{uri: {exact: /other}}]
  route: [{destination: {host: other}}]
- headers: {request: {set: {x-own: yes}}}
  route: [{destination: {host: productpage}}]
",
        );
        let http = merged(vec![vs("default", "bookinfo", ROOT), delegate]);
        let names: Vec<&str> = http.iter().map(|r| r.name.as_str()).collect();
        // /other is outside /productpage: that rule is dropped.
        assert_eq!(names, ["pp-v1", "pp", ""]);
        assert_eq!(
            http[0].matches[0].uri,
            Some(StringMatch::Prefix("/productpage/v1".into()))
        );
        assert_eq!(
            http[1].matches[0].uri,
            Some(StringMatch::Prefix("/productpage".into())),
            "no match of its own: the root's"
        );
        // Hosts resolve from the delegate's namespace.
        assert_eq!(
            http[0].route[0].destination.host,
            "productpage-v1.team-a.svc.cluster.local"
        );
        assert!(http.iter().take(2).all(|r| r.timeout.is_some()));
        assert!(
            http[0]
                .headers
                .as_ref()
                .is_some_and(|h| h.request.is_some())
        );
        let own = http[1].headers.as_ref().and_then(|h| h.request.as_ref());
        assert!(own.is_some_and(|r| r.set.contains_key("x-own") && !r.set.contains_key("x-root")));
        assert_eq!(http[2].route[0].destination.host, "fallback");
    }

    #[test]
    fn a_missing_or_hidden_delegate_drops_only_its_rule() {
        let hidden = vs(
            "team-a",
            "productpage",
            "exportTo: [.]\nhttp:\n- route: [{destination: {host: productpage}}]\n",
        );
        for others in [vec![], vec![hidden]] {
            let mut services = vec![vs("default", "bookinfo", ROOT)];
            services.extend(others);
            let http = merged(services);
            assert_eq!(http.len(), 1);
            assert_eq!(http[0].route[0].destination.host, "fallback");
        }
    }

    #[test]
    fn conflicts_follow_istio() {
        let m = |yaml: &str| -> HttpMatchRequest { serde_saphyr::from_str(yaml).expect("a match") };
        let root = m("uri: {prefix: /a}\nheaders: {x: {exact: '1'}}\n");
        assert!(!conflicts(&root, &m("uri: {prefix: /a/b}")));
        assert!(!conflicts(&root, &m("uri: {exact: /a/c}")));
        assert!(conflicts(&root, &m("uri: {prefix: /b}")));
        assert!(conflicts(&root, &m("uri: {regex: /a.*}")));
        assert!(conflicts(&root, &m("headers: {x: {exact: '2'}}")));
        assert!(!conflicts(
            &root,
            &m("headers: {x: {exact: '1'}, y: {exact: '2'}}")
        ));
        assert!(conflicts(&root, &m("ignoreUriCase: true")));
        assert!(conflicts(&m("port: 80"), &m("port: 81")));
        assert!(conflicts(&m("gateways: [a]"), &m("gateways: [a, b]")));
    }

    /// Gateways compare resolved: a root rule's `gw` (its namespace's) and
    /// a delegate's own-namespace `gw` are one gateway.
    #[test]
    fn gateways_resolve_before_they_compare() {
        let root = vs(
            "default",
            "front",
            "hosts: [a.com]\ngateways: [gw]\nhttp:\n- match: [{gateways: [gw]}]\n  delegate: {name: d}\n",
        );
        let delegate = vs(
            "default",
            "d",
            "http:\n- match: [{gateways: [gw], uri: {prefix: /x}}]\n  route: [{destination: {host: x}}]\n",
        );
        let http = merged(vec![root, delegate]);
        assert_eq!(http.len(), 1, "the delegate's rule fits the root's");
        assert_eq!(http[0].matches[0].gateways, ["default/gw"]);
        assert_eq!(
            gateway_name("gw.istio-system.svc.cluster.local", "x"),
            "istio-system/gw"
        );
        assert_eq!(gateway_name("./gw", "x"), "x/gw");
    }
}
